//! Crash consistency: gpuvirtd SIGKILLed at every sysfs write of an apply and restarted on the
//! same state directory; a truncated or corrupt ledger and a read-only state directory at start.
//!
//! The kill is deterministic: the simulated kernel is wrapped in a backend that counts the
//! daemon's writes and kills it from inside write number N+1, before the kernel sees it.
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_core::ledger::{LedgerStore, LEDGER_FILE, LEDGER_PREV_FILE};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Tree, Uevent};
use support::*;

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const ORIGINAL: [(&str, &str); 2] = [(GPU, "nouveau"), (AUDIO, "snd_hda_intel")];

/// Shared between the test and the backend: the daemon's pid and when to kill it.
#[derive(Default)]
struct Trigger {
    pid: AtomicI32,
    /// Writes still allowed before the kill; `usize::MAX` = never.
    allowed: AtomicUsize,
    writes: AtomicUsize,
    fired: AtomicBool,
}

/// The simulated kernel, with a kill switch in front of its write path.
struct KillSwitch {
    kernel: Kernel,
    trigger: Arc<Trigger>,
}

impl Backend for KillSwitch {
    fn tree(&self) -> &Tree {
        self.kernel.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        let t = &self.trigger;
        if t.allowed.load(Ordering::SeqCst) == 0 && !t.fired.load(Ordering::SeqCst) {
            let pid = t.pid.load(Ordering::SeqCst);
            if pid > 0 {
                t.fired.store(true, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                // The writer is dead: this write never reaches the kernel.
                return Err(libc_eio());
            }
        }
        let _ = t
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n != usize::MAX).then(|| n.saturating_sub(1))
            });
        t.writes.fetch_add(1, Ordering::SeqCst);
        self.kernel.write(path, data)
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        self.kernel.take_uevents()
    }
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

struct Host {
    mount: SimMount<KillSwitch>,
    socket: std::path::PathBuf,
    trigger: Arc<Trigger>,
    dir: tempfile::TempDir,
}

fn boot(fixture: &str) -> Host {
    let mut kernel = Kernel::from_fixture(&Fixture::bundled(fixture).unwrap()).unwrap();
    kernel.load_module("vfio_pci").unwrap();
    let _ = kernel.take_uevents();
    let trigger = Arc::new(Trigger {
        allowed: AtomicUsize::new(usize::MAX),
        ..Trigger::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let backend = KillSwitch {
        kernel,
        trigger: trigger.clone(),
    };
    let mount = SimMount::mount(Arc::new(Mutex::new(backend)), &dir.path().join("root")).unwrap();
    let socket = dir.path().join("uevent.sock");
    mount.listen_uevents(&socket).unwrap();
    Host {
        mount,
        socket,
        trigger,
        dir,
    }
}

impl Host {
    fn root(&self) -> &Path {
        self.mount.root()
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    async fn daemon(&self, bus: &Bus) -> Gpuvirtd {
        let d = Gpuvirtd::start(
            &bus.address,
            self.root(),
            &format!("sim:{}", self.socket.display()),
            &self.state(),
            &[],
        )
        .await;
        self.trigger.pid.store(d_pid(&d), Ordering::SeqCst);
        d
    }

    fn drivers(&self) -> Vec<Option<String>> {
        ORIGINAL
            .iter()
            .map(|(a, _)| {
                lock_backend(self.mount.backend())
                    .kernel
                    .driver_of(a.parse().unwrap())
                    .map(str::to_owned)
            })
            .collect()
    }
}

fn d_pid(d: &Gpuvirtd) -> i32 {
    d.pid() as i32
}

/// The invariants after any restart: the ledger parses, both functions of the slot are on the
/// same side, and a ledger entry (if any) still names the original drivers.
fn check_consistent(host: &Host, n: usize, log: &str) {
    let ledger = LedgerStore::new(host.state())
        .load()
        .unwrap_or_else(|e| panic!("kill after {n} writes: ledger unreadable: {e}\n{log}"));
    let drivers = host.drivers();
    let on_vfio = drivers
        .iter()
        .filter(|d| d.as_deref() == Some("vfio-pci"))
        .count();
    let on_original = ORIGINAL
        .iter()
        .zip(&drivers)
        .filter(|((_, orig), d)| d.as_deref() == Some(*orig))
        .count();
    assert!(
        on_vfio == 2 || on_original == 2,
        "kill after {n} writes: slot half-bound after restart: {drivers:?}\n{log}"
    );
    if on_vfio == 2 {
        let slot = ledger
            .slot(GPU.parse::<gpuvirt_core::PciAddress>().unwrap().slot())
            .unwrap_or_else(|| panic!("kill after {n} writes: on vfio-pci without a ledger entry"));
        for (a, orig) in ORIGINAL {
            assert_eq!(
                slot.original_driver(a.parse().unwrap()),
                Some(Some(orig)),
                "kill after {n} writes: original driver of {a} forgotten"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_write_of_a_passthrough_recovers() {
    if !fuse_available() {
        return;
    }
    let mut n = 0usize;
    let mut completed_without_kill = false;
    while !completed_without_kill {
        assert!(n < 64, "the apply never finished within 64 writes");
        let host = boot("workstation");
        let bus = Bus::start();
        let mut d = host.daemon(&bus).await;
        let conn = bus.connect().await;
        host.trigger.writes.store(0, Ordering::SeqCst);
        host.trigger.allowed.store(n, Ordering::SeqCst);
        let (job, _) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
            .await
            .unwrap();
        // Either the job finishes (fewer than n+1 writes were needed) or the daemon dies.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if host.trigger.fired.load(Ordering::SeqCst) {
                break;
            }
            let finished = call(
                &conn,
                job.as_str(),
                "org.freedesktop.DBus.Properties",
                "Get",
                &(gpuvirt_api::JOB_INTERFACE, "Finished"),
            )
            .await
            .ok()
            .and_then(|m| m.body().deserialize::<zbus::zvariant::OwnedValue>().ok())
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false);
            if finished && !host.trigger.fired.load(Ordering::SeqCst) {
                completed_without_kill = true;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill after {n}: neither finished nor killed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        d.kill();
        drop(conn);
        host.trigger.allowed.store(usize::MAX, Ordering::SeqCst);
        host.trigger.pid.store(0, Ordering::SeqCst);

        // Restart on the same state dir (a fresh bus: the old name's owner is gone either way).
        let bus = Bus::start();
        let d = host.daemon(&bus).await;
        let conn = bus.connect().await;
        let log = d.log();
        check_consistent(&host, n, &log);
        // The daemon serves, and return-to-host restores the originals whatever state it found.
        let drivers = host.drivers();
        if drivers.iter().any(|d| d.as_deref() == Some("vfio-pci")) {
            let (job, _) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
                .await
                .unwrap_or_else(|e| panic!("kill after {n}: ReturnToHost refused: {e:?}\n{log}"));
            let (ok, name, msg) = wait_job(&conn, job.as_str()).await;
            assert!(
                ok,
                "kill after {n}: ReturnToHost failed: {name}: {msg}\n{}",
                d.log()
            );
        }
        let expected: Vec<Option<String>> =
            ORIGINAL.iter().map(|(_, o)| Some(o.to_string())).collect();
        assert_eq!(
            host.drivers(),
            expected,
            "kill after {n} writes\n{}",
            d.log()
        );
        assert!(
            LedgerStore::new(host.state())
                .load()
                .unwrap()
                .slots
                .is_empty(),
            "kill after {n}: ledger keeps a returned slot"
        );
        // State equals a fresh scan.
        let fresh_bus = Bus::start();
        let fresh = Gpuvirtd::start(
            &fresh_bus.address,
            host.root(),
            "none",
            &host.dir.path().join("fresh-state"),
            &[],
        )
        .await;
        let want = exported(&fresh_bus.connect().await).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Finished Job objects are this daemon's history, not host state.
            let mut now = exported(&conn).await;
            now.retain(|k, _| !k.starts_with(gpuvirt_api::JOBS_PATH));
            if now == want {
                break;
            }
            if Instant::now() > deadline {
                let diff: Vec<String> = want
                    .iter()
                    .filter(|(k, v)| now.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{k}: want {v:?}\n     got {:?}", now.get(k)))
                    .chain(
                        now.keys()
                            .filter(|k| !want.contains_key(*k))
                            .map(|k| format!("{k}: extra")),
                    )
                    .collect();
                panic!(
                    "kill after {n}: tree differs from a fresh scan:\n{}\n{}",
                    diff.join("\n"),
                    d.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(fresh);
        eprintln!(
            "crash: kill after {n} writes -> {}",
            if completed_without_kill {
                "apply completed (no kill)"
            } else {
                "killed, recovered, returned"
            }
        );
        n += 1;
    }
    eprintln!(
        "crash: passthrough apply has {} sysfs writes; killed at each",
        n - 1
    );
    assert!(
        n > 3,
        "the apply had too few writes to be a meaningful test"
    );
}

/// Starts the daemon on `state` and asserts it serves reads; returns it with its connection.
async fn serving(host: &Host, bus: &Bus) -> (Gpuvirtd, zbus::Connection) {
    let d = host.daemon(bus).await;
    let conn = bus.connect().await;
    let objects = exported(&conn).await;
    assert!(
        objects.keys().any(|k| k.contains("gpu")),
        "no GPU objects served: {objects:?}\n{}",
        d.log()
    );
    (d, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_ledger_at_start() {
    if !fuse_available() {
        return;
    }
    let host = boot("workstation");
    let state = host.state();
    let assign = || async {
        let bus = Bus::start();
        let _d = host.daemon(&bus).await;
        let conn = bus.connect().await;
        let (job, _) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
            .await
            .unwrap();
        assert!(wait_job(&conn, job.as_str()).await.0);
    };

    // The main file torn half-way, the previous generation as the daemon left it (one save
    // behind): the daemon falls back to it, and whatever it recovers to, the slot is whole and
    // ends on its original drivers.
    assign().await;
    let main = std::fs::read(state.join(LEDGER_FILE)).unwrap();
    std::fs::write(state.join(LEDGER_FILE), &main[..main.len() / 2]).unwrap();
    {
        let bus = Bus::start();
        let (d, conn) = serving(&host, &bus).await;
        check_consistent(&host, usize::MAX, &d.log());
        assert!(
            d.log().contains("previous"),
            "fallback not reported:\n{}",
            d.log()
        );
        eprintln!(
            "crash: torn ledger, natural previous generation -> slot on {:?} after start",
            host.drivers()
        );
        if host.drivers()[0].as_deref() == Some("vfio-pci") {
            let (job, _) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
                .await
                .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
            assert!(wait_job(&conn, job.as_str()).await.0);
        }
        assert_eq!(
            host.drivers(),
            vec![Some("nouveau".into()), Some("snd_hda_intel".into())],
            "{}",
            d.log()
        );
    }

    // The same, with the previous generation equal to the assigned ledger: ReturnToHost uses it.
    assign().await;
    let main = std::fs::read(state.join(LEDGER_FILE)).unwrap();
    std::fs::write(state.join(LEDGER_FILE), &main[..main.len() / 2]).unwrap();
    // The previous generation as a torn rewrite of the same content would leave it.
    std::fs::write(state.join(LEDGER_PREV_FILE), &main).unwrap();
    {
        let bus = Bus::start();
        let (d, conn) = serving(&host, &bus).await;
        let (job, plan) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
        eprintln!("crash: return after a truncated ledger: {plan}");
        let (ok, name, msg) = wait_job(&conn, job.as_str()).await;
        assert!(ok, "{name}: {msg}\n{}", d.log());
        assert_eq!(
            host.drivers(),
            vec![Some("nouveau".into()), Some("snd_hda_intel".into())]
        );
    }

    // Both generations garbage: the daemon serves reads and refuses mutators with a clear
    // error, never guessing (and never touching the card).
    std::fs::write(
        state.join(LEDGER_FILE),
        b"{\"slots\": {\"0000:01:00\": [garbage",
    )
    .unwrap();
    std::fs::write(state.join(LEDGER_PREV_FILE), b"\0\0\0").unwrap();
    let bus = Bus::start();
    let (d, conn) = serving(&host, &bus).await;
    let refused = match passthrough(&conn, GPU, "AssignPassthrough", no_opts()).await {
        Err((name, msg)) => format!("{name}: {msg}"),
        Ok((job, plan)) => {
            assert_ne!(job.as_str(), "/", "{plan}");
            let (ok, name, msg) = wait_job(&conn, job.as_str()).await;
            assert!(!ok, "assigned with an unreadable ledger\n{}", d.log());
            format!("{name}: {msg}")
        }
    };
    assert!(refused.contains("ledger"), "{refused}");
    assert_eq!(
        host.drivers(),
        vec![Some("nouveau".into()), Some("snd_hda_intel".into())]
    );
    eprintln!("crash: corrupt ledger -> {refused}");
}

/// A read-only bind mount of `dir` onto itself, undone on drop.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let st = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?} failed");
        };
        run(&["--bind"]);
        let guard = ReadOnly(dir.to_owned());
        let st = Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_state_dir_serves_and_refuses_mutators() {
    if !fuse_available() {
        return;
    }
    let host = boot("workstation");
    std::fs::create_dir_all(host.state()).unwrap();
    let _ro = ReadOnly::mount(&host.state());
    assert!(
        std::fs::write(host.state().join("probe"), b"x").is_err(),
        "not read-only"
    );
    let bus = Bus::start();
    let (d, conn) = serving(&host, &bus).await;
    let refused = match passthrough(&conn, GPU, "AssignPassthrough", no_opts()).await {
        Err((name, msg)) => format!("{name}: {msg}"),
        Ok((job, _)) => {
            let (ok, name, msg) = wait_job(&conn, job.as_str()).await;
            assert!(!ok, "assigned without a writable ledger\n{}", d.log());
            format!("{name}: {msg}")
        }
    };
    assert!(refused.contains("read-only"), "{refused}\n{}", d.log());
    // Refused before any write: the slot is untouched.
    assert_eq!(
        host.drivers(),
        vec![Some("nouveau".into()), Some("snd_hda_intel".into())]
    );
    eprintln!("crash: read-only state dir -> {refused}");
}

const EXAMPLE_POLICY: &str = include_str!("../../../config/policy.toml");

/// gpuvirtd with a policy (applied at start), its pid handed to the kill switch at spawn so
/// that a kill can land before the name is even taken.
struct PolicyDaemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl PolicyDaemon {
    fn spawn(host: &Host, bus: &Bus, policy: &Path) -> PolicyDaemon {
        let log = host.dir.path().join(format!(
            "gpuvirtd-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(host.root())
            .args(["--bus-address", &bus.address])
            .arg("--events")
            .arg(format!("sim:{}", host.socket.display()))
            .arg("--policy")
            .arg(policy)
            .arg("--state-dir")
            .arg(host.state())
            .args(["--log", "gpuvirtd=debug"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        host.trigger.pid.store(child.id() as i32, Ordering::SeqCst);
        PolicyDaemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PolicyDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Manager's `LastApply`, or "" while the daemon is not (yet) on the bus.
async fn last_apply(conn: &zbus::Connection) -> String {
    call(
        conn,
        gpuvirt_api::MANAGER_PATH,
        "org.freedesktop.DBus.Properties",
        "Get",
        &(gpuvirt_api::MANAGER_INTERFACE, "LastApply"),
    )
    .await
    .ok()
    .and_then(|m| m.body().deserialize::<zbus::zvariant::OwnedValue>().ok())
    .and_then(|v| String::try_from(v).ok())
    .unwrap_or_default()
}

/// The human text of `Manager.PlanPolicy`, or "" while the daemon is not (yet) on the bus.
async fn plan_policy(conn: &zbus::Connection) -> String {
    call(
        conn,
        gpuvirt_api::MANAGER_PATH,
        gpuvirt_api::MANAGER_INTERFACE,
        "PlanPolicy",
        &(no_opts(),),
    )
    .await
    .ok()
    .and_then(|m| m.body().deserialize::<(String, String)>().ok())
    .map(|(human, _)| human)
    .unwrap_or_default()
}

fn sim_mdevs(host: &Host) -> Vec<uuid::Uuid> {
    let mut v: Vec<uuid::Uuid> = lock_backend(host.mount.backend())
        .kernel
        .mdevs()
        .into_iter()
        .map(|(u, _, _)| u)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_write_of_a_policy_apply_with_mdevs_converges() {
    if !fuse_available() {
        return;
    }
    let mut n = 0usize;
    let mut completed_without_kill = false;
    while !completed_without_kill {
        assert!(n < 32, "the policy apply never finished within 32 writes");
        let host = boot("runbook");
        // The example policy blacklists nouveau, which regenerates the initramfs.
        let tool = host.root().join("usr/sbin/update-initramfs");
        std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
        std::fs::write(&tool, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let policy = host.dir.path().join("policy.toml");
        std::fs::write(&policy, EXAMPLE_POLICY).unwrap();

        host.trigger.allowed.store(n, Ordering::SeqCst);
        let bus = Bus::start();
        let conn = bus.connect().await;
        let d = PolicyDaemon::spawn(&host, &bus, &policy);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if host.trigger.fired.load(Ordering::SeqCst) {
                break;
            }
            if !last_apply(&conn).await.is_empty() && !host.trigger.fired.load(Ordering::SeqCst) {
                completed_without_kill = true;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill after {n}: neither applied nor killed\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(d);
        drop(conn);
        let writes_before = host.trigger.writes.load(Ordering::SeqCst);
        host.trigger.allowed.store(usize::MAX, Ordering::SeqCst);

        // Restart on the same state dir and policy: it converges to exactly the policy's mdevs,
        // all of them in the ledger, none twice.
        let bus = Bus::start();
        let conn = bus.connect().await;
        let d = PolicyDaemon::spawn(&host, &bus, &policy);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Settled: an apply report, or (when the kill came after the last change) a plan with
        // nothing to do.
        let report = loop {
            let r = last_apply(&conn).await;
            if !r.is_empty() {
                break r;
            }
            let plan = plan_policy(&conn).await;
            if plan.starts_with("Nothing to do") {
                break plan;
            }
            assert!(
                Instant::now() < deadline,
                "kill after {n}: no apply after restart\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            !report.contains("failed"),
            "kill after {n}: {report}\n{}",
            d.log()
        );
        let mdevs = sim_mdevs(&host);
        assert_eq!(
            mdevs.len(),
            2,
            "kill after {n}: {mdevs:?}\n{report}\n{}",
            d.log()
        );
        let ledger = LedgerStore::new(host.state())
            .load()
            .unwrap_or_else(|e| panic!("kill after {n}: ledger unreadable: {e}"));
        for u in &mdevs {
            assert!(
                ledger.owns_mdev(u),
                "kill after {n}: {u} not in the ledger: {ledger:?}"
            );
        }
        assert_eq!(
            ledger.mdevs.len(),
            2,
            "kill after {n}: ledger records other mdevs: {ledger:?}"
        );
        drop(d);

        // And once more: nothing to do, the same mdevs.
        let bus = Bus::start();
        let conn = bus.connect().await;
        let d = PolicyDaemon::spawn(&host, &bus, &policy);
        let deadline = Instant::now() + Duration::from_secs(30);
        let plan = loop {
            let plan = plan_policy(&conn).await;
            if !plan.is_empty() {
                break plan;
            }
            assert!(Instant::now() < deadline, "no plan\n{}", d.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(plan.starts_with("Nothing to do"), "kill after {n}: {plan}");
        assert_eq!(
            sim_mdevs(&host),
            mdevs,
            "kill after {n}: changed on a clean restart"
        );
        eprintln!(
            "crash: policy apply, kill after {n} writes -> {} ({writes_before} writes before the restart)",
            if completed_without_kill {
                "apply completed (no kill)"
            } else {
                "killed, restarted, converged"
            }
        );
        n += 1;
    }
    eprintln!(
        "crash: policy apply with mdevs has {} sysfs writes; killed at each",
        n - 1
    );
    assert!(
        n > 2,
        "the policy apply had too few writes to be a meaningful test"
    );
}
