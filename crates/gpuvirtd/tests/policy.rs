//! The policy runtime end to end: gpuvirtd on a private bus with the simulated runbook host
//! and the example policy. Applied from scratch at start, nothing to do the second time, an
//! invalid reload rejected with the previous policy still in force, `ValidatePolicy`
//! diagnostics with positions, an invalid file at start reported in `PolicyError`, a missing
//! one "observe only" (INFO, `PolicyError` empty).
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fuse_available, Bus, SimHost};
use gpuvirt_api as api;
use gpuvirt_sim::fuse::lock_backend;
use zbus::zvariant::OwnedValue;

const EXAMPLE: &str = include_str!("../../../config/policy.toml");

/// gpuvirtd with a policy and a state dir, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    async fn start(bus: &Bus, host: &SimHost, policy: &Path, state: &Path) -> Daemon {
        let log = host.dir.path().join("gpuvirtd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(host.root())
            .args(["--bus-address", &bus.address])
            .arg("--events")
            .arg(format!("sim:{}", host.socket.display()))
            .arg("--policy")
            .arg(policy)
            .arg("--state-dir")
            .arg(state)
            .args(["--log", "gpuvirtd=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
        while !dbus.name_has_owner(name.clone()).await.unwrap() {
            assert!(Instant::now() < deadline, "no name: {}", d.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `update-initramfs` double inside the simulated root (the example policy blacklists
/// nouveau, which regenerates the initramfs).
fn install_initramfs_double(root: &Path) {
    let path = root.join("usr/sbin/update-initramfs");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/initramfs.log\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn manager(conn: &zbus::Connection) -> zbus::Proxy<'static> {
    zbus::Proxy::new(
        conn,
        api::BUS_NAME,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
    )
    .await
    .unwrap()
}

fn no_options() -> HashMap<String, OwnedValue> {
    HashMap::new()
}

fn mdevs(host: &SimHost) -> Vec<String> {
    let mut v: Vec<String> = lock_backend(host.mount.backend())
        .inner()
        .mdevs()
        .into_iter()
        .map(|(u, _, _)| u.to_string())
        .collect();
    v.sort();
    v
}

async fn wait_for<F: FnMut() -> bool>(what: &str, d: &Daemon, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn prop<T: TryFrom<OwnedValue>>(m: &zbus::Proxy<'_>, name: &str) -> T
where
    T::Error: Into<zbus::Error>,
{
    // Uncached read: the test asserts what the daemon serves now.
    let props = zbus::fdo::PropertiesProxy::builder(m.connection())
        .destination(api::BUS_NAME)
        .unwrap()
        .path(api::MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::MANAGER_INTERFACE).unwrap();
    let v = props.get(iface, name).await.unwrap();
    T::try_from(v).map_err(Into::into).unwrap()
}

async fn plan_text(m: &zbus::Proxy<'_>) -> (String, String) {
    m.call("PlanPolicy", &(no_options(),)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_policy_applied_kept_and_reloaded() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    install_initramfs_double(host.root());
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, EXAMPLE).unwrap();
    let state = host.dir.path().join("state");
    assert!(mdevs(&host).is_empty());

    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, &policy, &state).await;
    let conn = bus.connect().await;
    let m = manager(&conn).await;

    // Applied from scratch at start: the V100 sharded into 2 × GRID V100-8C.
    wait_for("two mdevs", &d, || mdevs(&host).len() == 2).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while prop::<String>(&m, "LastApply").await.is_empty() {
        assert!(Instant::now() < deadline, "no apply report: {}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last: String = prop(&m, "LastApply").await;
    assert!(
        last.contains("done: ") && !last.contains("failed"),
        "{last}"
    );
    let first = mdevs(&host);
    assert_eq!(prop::<String>(&m, "EnforcementMode").await, "enforce");
    assert_eq!(prop::<String>(&m, "PolicyError").await, "");
    assert_eq!(
        prop::<String>(&m, "PolicyPath").await,
        policy.display().to_string()
    );
    let modprobe_d = std::fs::read_to_string(host.root().join("etc/modprobe.d/gpuvirt.conf"))
        .unwrap_or_else(|e| panic!("boot file: {e}: {}", d.log()));
    assert!(modprobe_d.contains("blacklist nouveau"), "{modprobe_d}");
    let reasons: Vec<String> = prop(&m, "RebootReasons").await;
    assert!(prop::<bool>(&m, "RebootRequired").await, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("modprobe.d")),
        "{reasons:?}"
    );

    // Apply again: nothing to do.
    let (human, json) = plan_text(&m).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["actions"].as_array().unwrap().len(), 0, "{json}");
    let (ok, report): (bool, String) = m.call("Reconcile", &(no_options(),)).await.unwrap();
    assert!(ok && report.starts_with("Nothing to do"), "{report}");
    assert_eq!(mdevs(&host), first);

    // An invalid reload is rejected; the previous policy stays in force.
    std::fs::write(
        &policy,
        "version = 1\n[[gpu]]\nname = \"x\"\nrole = \"sideways\"\n",
    )
    .unwrap();
    let err = m
        .call::<_, _, ()>("ReloadPolicy", &(no_options(),))
        .await
        .unwrap_err();
    let zbus::Error::MethodError(name, msg, _) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        name.as_str(),
        "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
        "{msg:?}"
    );
    let error: String = prop(&m, "PolicyError").await;
    assert!(error.contains(":4:"), "{error}");
    assert_eq!(prop::<String>(&m, "EnforcementMode").await, "enforce");
    let (ok, report): (bool, String) = m.call("Reconcile", &(no_options(),)).await.unwrap();
    assert!(ok && report.starts_with("Nothing to do"), "{report}");
    assert_eq!(mdevs(&host), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_policy_reports_positions() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, "version = 1\nbogus = 3\n").unwrap();
    let state = host.dir.path().join("state");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, &policy, &state).await;
    let conn = bus.connect().await;
    let m = manager(&conn).await;

    // Started without a policy in force, saying why.
    let error: String = prop(&m, "PolicyError").await;
    assert!(
        error.contains("policy.toml:2:1: error"),
        "{error}: {}",
        d.log()
    );
    let err = m
        .call::<_, _, (String, String)>("PlanPolicy", &(no_options(),))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("PolicyInvalid"), "{err:?}");

    let ok: Vec<String> = m.call("ValidatePolicy", &(EXAMPLE,)).await.unwrap();
    assert!(ok.iter().all(|d| !d.contains(": error:")), "{ok:?}");
    let bad = EXAMPLE.replace("count = 2", "count = 9");
    let diags: Vec<String> = m.call("ValidatePolicy", &(bad.as_str(),)).await.unwrap();
    let line = bad.lines().position(|l| l.contains("count = 9")).unwrap() + 1;
    assert!(
        diags
            .iter()
            .any(|d| d.starts_with(&format!("policy.toml:{line}:")) && d.contains("error")),
        "{diags:?}"
    );
}

/// A manual operation and a policy apply at the same time both write the ownership ledger;
/// neither may save over the other's records (they share one ledger lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_defines_and_reconcile_keep_every_ledger_record() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    install_initramfs_double(host.root());
    let policy = host.dir.path().join("policy.toml");
    // Monitor mode: nothing is applied until the Reconcile below.
    std::fs::write(
        &policy,
        EXAMPLE.replace("enforcement = \"enforce\"", "enforcement = \"monitor\""),
    )
    .unwrap();
    let state = host.dir.path().join("state");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, &policy, &state).await;
    let conn = bus.connect().await;
    let m = manager(&conn).await;
    assert_eq!(prop::<String>(&m, "EnforcementMode").await, "monitor");
    assert!(mdevs(&host).is_empty());

    // Definitions for a parent that is not plugged in (allowed: no rule manages it), sent
    // while the apply runs.
    let defined: Vec<String> = (0..12)
        .map(|i| format!("5d1c0c1e-0000-4000-8000-{i:012}"))
        .collect();
    let reconcile = async {
        let r: (bool, String) = m.call("Reconcile", &(no_options(),)).await.unwrap();
        r
    };
    let defines = async {
        let tasks: Vec<_> = defined
            .iter()
            .map(|uuid| {
                let m = m.clone();
                let uuid = uuid.clone();
                tokio::spawn(async move {
                    let r: String = m
                        .call(
                            "DefineMdev",
                            &("0000:99:00.0", "nvidia-300", uuid.as_str(), no_options()),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("DefineMdev {uuid}: {e}"));
                    r
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    };
    let ((ok, report), answers) = tokio::join!(reconcile, defines);
    assert!(ok, "{report}: {}", d.log());
    assert_eq!(answers, defined);
    assert_eq!(mdevs(&host).len(), 2, "{}", d.log());

    let ledger = gpuvirt_core::ledger::LedgerStore::new(&state)
        .load()
        .unwrap();
    let by_policy: Vec<String> = ledger
        .mdevs
        .iter()
        .filter(|(_, r)| r.rule.as_deref() == Some("vdi"))
        .map(|(u, _)| u.to_string())
        .collect();
    assert_eq!(by_policy, mdevs(&host), "{ledger:?}");
    for uuid in &defined {
        let record = ledger
            .mdevs
            .get(&uuid.parse().unwrap())
            .unwrap_or_else(|| panic!("the definition of {uuid} was lost: {ledger:?}"));
        assert!(
            record.defined && record.parent == "0000:99:00.0",
            "{record:?}"
        );
    }
}

/// A fresh install has no policy file: that is "observe only", said once at INFO, with an
/// empty `PolicyError` and no ERROR in the log; a reload that still finds none leaves
/// `PolicyError` empty too. Only a file that exists and is broken is an error (above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_policy_file_is_observe_only_not_an_error() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let policy = host.dir.path().join("etc-gpuvirt/policy.toml");
    assert!(!policy.exists());
    let state = host.dir.path().join("state");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, &policy, &state).await;
    let conn = bus.connect().await;
    let m = manager(&conn).await;
    assert_eq!(prop::<String>(&m, "PolicyError").await, "", "{}", d.log());
    assert_eq!(prop::<String>(&m, "EnforcementMode").await, "");
    let log = d.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no policy file at"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("INFO"), "{log}");
    assert!(said[0].contains("observing only"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!log.contains("no policy in force"), "{log}");
    // Nothing happened to the host: observing.
    assert!(mdevs(&host).is_empty());

    // A reload that still finds no file is refused, and is no broken policy either.
    let err = m
        .call::<_, _, ()>("ReloadPolicy", &(no_options(),))
        .await
        .unwrap_err();
    let zbus::Error::MethodError(name, _, _) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(name.as_str(), "org.gpuvirt.GpuVirt1.Error.PolicyInvalid");
    assert_eq!(prop::<String>(&m, "PolicyError").await, "", "{}", d.log());
    assert!(!d.log().contains("ERROR"), "{}", d.log());
}
