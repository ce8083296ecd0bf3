//! The hook with vGPUs, run as libvirtd runs it (its arguments, the domain XML on stdin, only
//! libvirt's environment) against gpuvirtd on the simulated runbook host: a domain without
//! gpuvirt devices never touches the bus; a defined, inactive vGPU is started at `prepare
//! begin` and stopped at `release end`; one that was already active is left alone; a domain
//! asking for more vGPUs than the parent holds starts none; a stalled daemon fails the start
//! within the deadline; no daemon at all leaves the domain to libvirt.
//!
//! These need `/dev/fuse` and root (the FUSE host); the bus-only ones run everywhere.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use gpuvirt_api as api;
use support::*;
use zbus::zvariant::Value;

const V100: &str = "0000:41:00.0";
const U1: &str = "b2e1c4a6-3f0d-4d7e-9a51-6c2f8e0d1a33";
const U2: &str = "c3f2d5b7-4a1e-4e8f-8b62-7d309f1e2b44";
const U3: &str = "d4a3e6c8-5b2f-4f90-9c73-8e41a02f3c55";

fn no_opts() -> HashMap<&'static str, Value<'static>> {
    HashMap::new()
}

async fn manager(conn: &zbus::Connection) -> api::ManagerProxy<'static> {
    api::ManagerProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

async fn define(conn: &zbus::Connection, uuid: &str) {
    let m = manager(conn).await;
    // Manual, as `mdevctl define` makes it: defined, not started.
    let opts = HashMap::from([("auto", Value::from(false))]);
    m.define_mdev(V100, "nvidia-300", uuid, opts).await.unwrap();
}

/// The definitions gpuvirtd lists, by UUID.
async fn defined(conn: &zbus::Connection) -> Vec<String> {
    let m = manager(conn).await;
    let mut v: Vec<String> = m
        .list_mdev_definitions(no_opts())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.0)
        .collect();
    v.sort();
    v
}

#[test]
fn a_domain_without_gpuvirt_devices_never_touches_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    // A socket that would see any connection the hook made.
    let socket = dir.path().join("bus");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = format!("unix:path={}", socket.display());
    let state = dir.path().join("state");
    let usb = "    <hostdev mode='subsystem' type='usb'>\n      <source><vendor id='0x1234'/>\
               <product id='0xbeef'/></source>\n    </hostdev>";
    for (args, xml) in [
        (["vm", "prepare", "begin"], domain_xml("vm", "")),
        (["vm", "prepare", "begin"], domain_xml("vm", usb)),
        (
            ["vm", "start", "begin"],
            domain_xml("vm", &mdev_hostdev(U1)),
        ),
        (
            ["vm", "started", "begin"],
            domain_xml("vm", &mdev_hostdev(U1)),
        ),
        (
            ["vm", "stopped", "end"],
            domain_xml("vm", &mdev_hostdev(U1)),
        ),
        // No record: release has nothing to undo.
        (
            ["vm", "release", "end"],
            domain_xml("vm", &mdev_hostdev(U1)),
        ),
    ] {
        let run = run_hook(&address, &state, args, &xml, &[]);
        assert_eq!(
            (run.code, run.stderr.as_str(), run.stdout.as_str()),
            (0, "", ""),
            "{args:?}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the hook connected to the bus for a domain without gpuvirt devices"
    );
    assert!(!state.exists(), "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defined_inactive_vgpu_is_started_at_prepare_and_stopped_at_release() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, None).await;
    let conn = bus.connect().await;
    define(&conn, U1).await;
    assert!(!host.mdev_exists(U1));
    let state = host.hook_state();
    let xml = domain_xml("vdi-1", &mdev_hostdev(U1));

    let run = run_hook(
        &bus.address,
        &state,
        ["vdi-1", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", d.log());
    assert_eq!(
        run.stdout, "",
        "nothing on stdout (libvirt reads it as XML at restore)"
    );
    assert!(
        run.stderr.contains(&format!("started vGPU {U1}")),
        "{run:?}"
    );
    assert!(host.mdev_exists(U1), "prepare started the vGPU");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("vdi-1.json")).unwrap()).unwrap();
    assert_eq!(record["started_mdevs"], serde_json::json!([U1]));

    // The guest runs; QEMU goes; libvirt says stopped, then release.
    let run = run_hook(&bus.address, &state, ["vdi-1", "stopped", "end"], &xml, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(host.mdev_exists(U1), "stopped end changes nothing");
    let run = run_hook(&bus.address, &state, ["vdi-1", "release", "end"], &xml, &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", d.log());
    assert!(!host.mdev_exists(U1), "release stopped the vGPU it started");
    assert_eq!(
        defined(&conn).await,
        vec![U1.to_owned()],
        "the definition stays"
    );
    assert!(!state.join("vdi-1.json").exists(), "the record is dropped");

    // A restore starts it again, as prepare does.
    let run = run_hook(
        &bus.address,
        &state,
        ["vdi-1", "restore", "begin"],
        &xml,
        &[],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert!(host.mdev_exists(U1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_active_vgpu_is_left_alone_at_release() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _d = Daemon::start(&bus, &host, None).await;
    let conn = bus.connect().await;
    define(&conn, U1).await;
    define(&conn, U2).await;
    manager(&conn)
        .await
        .start_mdev(U1, no_opts())
        .await
        .unwrap();
    let state = host.hook_state();
    let hostdevs = format!("{}\n{}", mdev_hostdev(U1), mdev_hostdev(U2));
    let xml = domain_xml("vdi-2", &hostdevs);

    let run = run_hook(
        &bus.address,
        &state,
        ["vdi-2", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stderr.contains(U1),
        "nothing done to the active one: {run:?}"
    );
    assert!(host.mdev_exists(U1) && host.mdev_exists(U2));
    let run = run_hook(&bus.address, &state, ["vdi-2", "release", "end"], &xml, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        host.mdev_exists(U1),
        "release keeps what was active before the domain"
    );
    assert!(!host.mdev_exists(U2), "release stops what the hook started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_needing_more_vgpus_than_the_card_holds_starts_none() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _d = Daemon::start(&bus, &host, None).await;
    let conn = bus.connect().await;
    for u in [U1, U2, U3] {
        define(&conn, u).await;
    }
    let state = host.hook_state();
    let hostdevs = [U1, U2, U3].map(mdev_hostdev).join("\n");
    let xml = domain_xml("big", &hostdevs);
    let run = run_hook(&bus.address, &state, ["big", "prepare", "begin"], &xml, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no capacity for vGPU")
            && run
                .stderr
                .contains("nvidia-300 (GRID V100-8C) left and this domain needs 3"),
        "{run:?}"
    );
    for u in [U1, U2, U3] {
        assert!(
            !host.mdev_exists(u),
            "checked before the first change: {u} started"
        );
    }
    assert!(!state.join("big.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_daemon_fails_the_start_within_the_deadline() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, None).await;
    let conn = bus.connect().await;
    define(&conn, U1).await;
    // gpuvirtd owns its name but answers nothing.
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let xml = domain_xml("stuck", &mdev_hostdev(U1));
    let run = run_hook(
        &bus.address,
        &host.hook_state(),
        ["stuck", "prepare", "begin"],
        &xml,
        &["--timeout", "1.5"],
    );
    d.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("did not answer within the hook's 1.5 s deadline"),
        "{run:?}"
    );
    assert!(
        run.took < Duration::from_millis(2500),
        "took {:?}",
        run.took
    );
    assert!(!host.mdev_exists(U1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gpuvirtd_the_domain_is_left_to_libvirt() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let xml = domain_xml("vm", &mdev_hostdev(U1));
    let run = run_hook(
        &bus.address,
        dir.path(),
        ["vm", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("cannot connect to gpuvirtd")
            && run
                .stderr
                .contains("leaving the domain's hostdevs to libvirt"),
        "{run:?}"
    );
}
