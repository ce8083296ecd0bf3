//! `RebootRequired` across daemon restarts and reboots, on the private bus and the
//! FUSE-simulated runbook host with the example policy: the apply writes the modprobe.d
//! blacklist and regenerates the initramfs (a test double under the root) → true, with those
//! changes as reasons; a daemon restart in the same boot → still true; a new boot id with
//! nouveau not loaded → false; a new boot that still loads nouveau → true, naming it.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fuse_available, Bus, SimHost};
use gpuvirt_api as api;
use support::Gpuvirtd as Daemon;
use zbus::zvariant::OwnedValue;

const EXAMPLE: &str = include_str!("../../../config/policy.toml");

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

/// Stops the daemon and waits until its bus name is gone.
async fn stop(mut d: Daemon, bus: &Bus) {
    d.kill();
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dbus.name_has_owner(name.clone()).await.unwrap() {
        assert!(Instant::now() < deadline, "the old daemon kept its name");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An `update-initramfs` double inside the simulated root, logging its arguments.
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

/// Stands for a reboot: a new `/proc/sys/kernel/random/boot_id` (the mount wrote `proc` as
/// plain files under the root).
fn reboot(host: &SimHost, boot_id: &str) {
    std::fs::write(
        host.root().join("proc/sys/kernel/random/boot_id"),
        format!("{boot_id}\n"),
    )
    .unwrap();
}

async fn manager_prop(conn: &zbus::Connection, name: &str) -> OwnedValue {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(api::MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::MANAGER_INTERFACE).unwrap();
    props.get(iface, name).await.unwrap()
}

/// (`RebootRequired`, `RebootReasons`) once the start-up reconcile has run (`LastApply` or
/// `Drift` set, or the plan is empty: the properties are published after it).
async fn reboot_state(conn: &zbus::Connection, d: &Daemon) -> (bool, Vec<String>) {
    let m = zbus::Proxy::new(
        conn,
        api::BUS_NAME,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
    )
    .await
    .unwrap();
    // Reconcile goes through the actor after the start-up pass: the properties are current.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: Result<(bool, String), _> = m
            .call(
                "Reconcile",
                &(std::collections::HashMap::<String, OwnedValue>::new(),),
            )
            .await;
        match r {
            Ok((true, report)) if report.starts_with("Nothing to do") => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the policy never settled: {other:?}\n{}",
                    d.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let required = bool::try_from(manager_prop(conn, "RebootRequired").await).unwrap();
    let reasons = Vec::<String>::try_from(manager_prop(conn, "RebootReasons").await).unwrap();
    (required, reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_required_survives_a_restart_and_clears_after_a_reboot() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    install_initramfs_double(host.root());
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, EXAMPLE).unwrap();
    let bus = Bus::start();
    let conn = bus.connect().await;
    let boot_id = std::fs::read_to_string(host.root().join("proc/sys/kernel/random/boot_id"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(boot_id.len(), 36, "{boot_id:?}");

    // The apply writes the blacklist and regenerates the initramfs: a reboot is needed.
    let d = start_daemon(&bus, &host, &policy).await;
    let (required, reasons) = reboot_state(&conn, &d).await;
    assert!(required, "{reasons:?}\n{}", d.log());
    let has = |reasons: &[String], needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(
        has(&reasons, "write /etc/modprobe.d/gpuvirt.conf"),
        "{reasons:#?}"
    );
    assert!(has(&reasons, "regenerate the initramfs"), "{reasons:#?}");
    let initramfs = std::fs::read_to_string(host.root().join("usr/sbin/initramfs.log")).unwrap();
    assert_eq!(initramfs, "-u\n");
    let record = host.dir.path().join("state/boot-changes.json");
    let saved = std::fs::read_to_string(&record).unwrap();
    assert!(saved.contains(&boot_id), "{saved}");

    // Restarted in the same boot: nothing to apply, and still a reboot to do.
    stop(d, &bus).await;
    let d = start_daemon(&bus, &host, &policy).await;
    let (required, after_restart) = reboot_state(&conn, &d).await;
    assert!(required, "{}", d.log());
    assert_eq!(after_restart, reasons);

    // A reboot that took effect: new boot id, nouveau not loaded (the runbook host runs the
    // nvidia driver), the file in place → no reboot required.
    stop(d, &bus).await;
    reboot(&host, "0b5e3c2a-9d8f-4e7a-b6c5-d4e3f2a1b0c9");
    let d = start_daemon(&bus, &host, &policy).await;
    let (required, reasons) = reboot_state(&conn, &d).await;
    assert!(!required, "{reasons:#?}\n{}", d.log());
    assert!(reasons.is_empty(), "{reasons:#?}");

    // A boot in which the blacklist did not take (nouveau loaded): required, naming it.
    stop(d, &bus).await;
    reboot(&host, "1c6f4d3b-ae90-4f8b-87d6-e5f4a3b2c1d0");
    host.with_kernel_mut(|k| k.load_module("nouveau").unwrap());
    let d = start_daemon(&bus, &host, &policy).await;
    let (required, reasons) = reboot_state(&conn, &d).await;
    assert!(required, "{}", d.log());
    assert_eq!(reasons.len(), 1, "{reasons:#?}");
    assert!(
        reasons[0].contains("nouveau is blacklisted by the policy but loaded"),
        "{reasons:#?}"
    );
}
