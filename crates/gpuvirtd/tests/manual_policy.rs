//! Manual D-Bus operations against the device policy, on the private bus and the
//! FUSE-simulated runbook host: with the V100's rule `unmanaged` every manual method works;
//! once a reload makes the rule `shard`, every mutator touching the card or its mdevs (dry
//! runs included) is refused with `PolicyViolation` naming the rule, the policy file and the
//! way out, while the policy's own apply still creates its mdev.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fuse_available, Bus, SignalRecorder, SimHost};
use gpuvirt_api as api;
use gpuvirt_sim::fuse::lock_backend;
use support::{call, gpu_path, no_opts, opts, passthrough, reconcile, CallErr, Gpuvirtd as Daemon};
use zbus::zvariant::{OwnedObjectPath, Value};

const V100: &str = "0000:41:00.0";
const MINE: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const DEFINED: &str = "b6e2ae8c-3f1c-4b7a-9b4d-3f2f3a1e8c01";
const VIOLATION: &str = "org.gpuvirt.GpuVirt1.Error.PolicyViolation";

const UNMANAGED: &str = r#"version = 1
[[gpu]]
name = "vdi"
match = { address = "0000:41:00.0" }
role = "unmanaged"
"#;

const SHARDED: &str = r#"version = 1
[[gpu]]
name = "vdi"
match = { address = "0000:41:00.0" }
role = "shard"
shard = { type = "nvidia-300", count = 1 }
"#;

/// gpuvirtd with `--policy` and the host's state dir (shard_support's daemon, killed on drop).
async fn start_daemon(bus: &Bus, host: &SimHost, policy: &Path) -> Daemon {
    Daemon::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &["--policy", policy.to_str().unwrap()],
    )
    .await
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

async fn create_mdev(conn: &zbus::Connection, uuid: &str) -> Result<OwnedObjectPath, CallErr> {
    let r = call(
        conn,
        &gpu_path(V100),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &("nvidia-300", uuid, no_opts()),
    )
    .await?;
    Ok(r.body().deserialize().unwrap())
}

async fn remove_mdev(conn: &zbus::Connection, uuid: &str) -> Result<(), CallErr> {
    let path = api::mdev_path(&uuid.parse().unwrap());
    call(
        conn,
        path.as_str(),
        api::MDEV_INTERFACE,
        "Remove",
        &(no_opts(),),
    )
    .await
    .map(|_| ())
}

async fn manager<B>(conn: &zbus::Connection, method: &str, body: &B) -> Result<(), CallErr>
where
    B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
{
    call(
        conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        method,
        body,
    )
    .await
    .map(|_| ())
}

/// The Gpu object's `Role` and `PolicyRule`, read now (uncached).
async fn policy_facts(conn: &zbus::Connection) -> (String, String) {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(gpu_path(V100))
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::GPU_INTERFACE).unwrap();
    let get = |v: zbus::zvariant::OwnedValue| String::try_from(v).unwrap();
    (
        get(props.get(iface.clone(), "Role").await.unwrap()),
        get(props.get(iface, "PolicyRule").await.unwrap()),
    )
}

/// Waits until the Gpu object serves `want` as (`Role`, `PolicyRule`).
async fn wait_facts(conn: &zbus::Connection, want: (&str, &str), d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (role, rule) = policy_facts(conn).await;
        if (role.as_str(), rule.as_str()) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Role/PolicyRule are {role:?}/{rule:?}, want {want:?}: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A refusal by the policy: the rule, the file and the way out are named.
fn assert_violation(what: &str, result: Result<impl std::fmt::Debug, CallErr>, policy: &Path) {
    let (name, message) = match result {
        Ok(v) => panic!("{what}: allowed ({v:?}), expected {VIOLATION}"),
        Err(e) => e,
    };
    assert_eq!(name, VIOLATION, "{what}: {message}");
    for needle in [
        "policy rule \"vdi\"",
        "role shard",
        &policy.display().to_string(),
        "role = \"unmanaged\"",
        V100,
    ] {
        assert!(
            message.contains(needle),
            "{what}: {needle:?} missing from {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_operations_follow_the_policy() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, UNMANAGED).unwrap();
    let bus = Bus::start();
    let d = start_daemon(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    wait_facts(&conn, ("unmanaged", "vdi"), &d).await;

    // `unmanaged`: every manual method works.
    create_mdev(&conn, MINE)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert_eq!(mdevs(&host), vec![MINE.to_string()]);
    remove_mdev(&conn, MINE).await.unwrap();
    assert!(mdevs(&host).is_empty());
    manager(
        &conn,
        "DefineMdev",
        &(
            V100,
            "nvidia-300",
            DEFINED,
            opts(&[("auto", Value::Bool(false))]),
        ),
    )
    .await
    .unwrap();
    let (job, plan) = passthrough(
        &conn,
        V100,
        "AssignPassthrough",
        opts(&[("dry-run", Value::Bool(true))]),
    )
    .await
    .unwrap();
    assert_eq!(job.as_str(), "/");
    assert!(plan.contains("driver_override"), "{plan}");

    // The rule becomes `shard`: the policy's apply creates its mdev (its own path is not a
    // manual operation)...
    std::fs::write(&policy, SHARDED).unwrap();
    let signals = SignalRecorder::start(&conn).await;
    manager(&conn, "ReloadPolicy", &(no_opts(),))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while mdevs(&host).len() != 1 {
        assert!(Instant::now() < deadline, "no policy mdev: {}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owned = mdevs(&host).remove(0);
    // The reload announced the card's new role with PropertiesChanged.
    let gpu = gpu_path(V100);
    let lines = signals
        .settle(
            |l| {
                l.iter().any(|s| {
                    s.starts_with(&format!("PropertiesChanged {gpu} {}", api::GPU_INTERFACE))
                        && s.contains("Role=\"shard\"")
                })
            },
            Duration::from_millis(100),
        )
        .await;
    assert!(
        !lines.iter().any(|s| s.contains("Role=\"\"")),
        "the role flickered: {lines:#?}"
    );
    assert_eq!(policy_facts(&conn).await, ("shard".into(), "vdi".into()));
    // ...and every manual one on the card is refused, before anything is written.
    assert_violation(
        "AssignPassthrough dry-run",
        passthrough(
            &conn,
            V100,
            "AssignPassthrough",
            opts(&[("dry-run", Value::Bool(true))]),
        )
        .await,
        &policy,
    );
    assert_violation(
        "AssignPassthrough",
        passthrough(&conn, V100, "AssignPassthrough", no_opts()).await,
        &policy,
    );
    assert_violation(
        "ReturnToHost",
        passthrough(&conn, V100, "ReturnToHost", no_opts()).await,
        &policy,
    );
    assert_violation("CreateMdev", create_mdev(&conn, MINE).await, &policy);
    assert_violation(
        "Remove of the policy's mdev",
        remove_mdev(&conn, &owned).await,
        &policy,
    );
    assert_violation(
        "DefineMdev",
        manager(&conn, "DefineMdev", &(V100, "nvidia-300", MINE, no_opts())).await,
        &policy,
    );
    assert_violation(
        "StartMdev",
        manager(&conn, "StartMdev", &(DEFINED, no_opts())).await,
        &policy,
    );
    assert_violation(
        "UndefineMdev",
        manager(&conn, "UndefineMdev", &(DEFINED, no_opts())).await,
        &policy,
    );
    assert_violation(
        "StopMdev of the policy's mdev",
        manager(&conn, "StopMdev", &(owned.as_str(), no_opts())).await,
        &policy,
    );
    assert_eq!(mdevs(&host), vec![owned.clone()]);
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("nvidia")
    );
    // Reads stay open.
    call(
        &conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "RenderHostdev",
        &(owned.as_str(), no_opts()),
    )
    .await
    .unwrap();

    // Back to `unmanaged`: allowed again (the policy's mdev is the user's to remove now).
    std::fs::write(&policy, UNMANAGED).unwrap();
    manager(&conn, "ReloadPolicy", &(no_opts(),)).await.unwrap();
    wait_facts(&conn, ("unmanaged", "vdi"), &d).await;
    manager(&conn, "UndefineMdev", &(DEFINED, no_opts()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    remove_mdev(&conn, &owned)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(mdevs(&host).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_facts_are_empty_without_a_policy_and_follow_the_default_role() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let policy = host.dir.path().join("policy.toml");
    let bus = Bus::start();
    // No policy file: no policy in force, the properties are "".
    let d = start_daemon(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    assert_eq!(policy_facts(&conn).await, (String::new(), String::new()));
    // A policy whose default role governs the card: its role, no rule name; and manual
    // operations refused, naming the default.
    std::fs::write(&policy, "version = 1\ndefault_role = \"host\"\n").unwrap();
    manager(&conn, "ReloadPolicy", &(no_opts(),))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    wait_facts(&conn, ("host", ""), &d).await;
    let (name, message) = create_mdev(&conn, MINE).await.unwrap_err();
    assert_eq!(name, VIOLATION, "{message}");
    assert!(message.contains("default_role = \\\"host\\\""), "{message}");
}

/// A Reconcile of creations only replies once the kernel listed every new mdev; the read-back
/// of the parent and the new mdevs runs right after the reply. It needs no uevent: with
/// `--events none` the objects still appear, with the parent's lowered instance count, and a
/// second Reconcile finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_of_creations_reads_back_after_replying_even_without_uevents() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        SHARDED
            .replacen(
                "version = 1\n",
                "version = 1\nenforcement = \"monitor\"\n",
                1,
            )
            .replace("count = 1", "count = 2"),
    )
    .unwrap();
    let bus = Bus::start();
    let d = Daemon::start(
        &bus.address,
        host.root(),
        "none",
        &host.dir.path().join("state"),
        &["--policy", policy.to_str().unwrap()],
    )
    .await;
    let conn = bus.connect().await;
    assert!(
        mdevs(&host).is_empty(),
        "monitor mode acts only on Reconcile"
    );
    let (ok, report) = reconcile(&conn).await;
    assert!(ok, "{report}\n{}", d.log());
    let made = mdevs(&host);
    assert_eq!(made.len(), 2, "{report}");
    let deadline = Instant::now() + Duration::from_secs(10);
    for uuid in &made {
        let path = api::mdev_path(&uuid.parse().unwrap());
        loop {
            let found = call(
                &conn,
                path.as_str(),
                "org.freedesktop.DBus.Properties",
                "Get",
                &(api::MDEV_INTERFACE, "Parent"),
            )
            .await
            .is_ok();
            if found {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mdev {uuid} never appeared without uevents\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (ok, report) = reconcile(&conn).await;
    assert!(ok && report.starts_with("Nothing to do"), "{report}");
    assert_eq!(mdevs(&host), made);
}
