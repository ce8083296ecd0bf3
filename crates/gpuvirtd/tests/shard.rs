//! Sharding through the daemon on a private bus against the FUSE-simulated kernel: the
//! runbook's V100 to capacity and past it, duplicate UUIDs, unknown types listing the choices,
//! EBUSY on remove, another tool's mdev left alone, mdevctl-style definitions recreated with
//! the same UUIDs after a hot-unplug and once only across a restart, and the render method
//! against golden files (`GPUVIRT_BLESS=1` rewrites them).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::PathBuf;

use common::*;
use gpuvirt_api as api;
use support::*;
use zbus::zvariant::{OwnedObjectPath, Value};

const V100: &str = "0000:41:00.0";
const U1: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const U2: &str = "b6e2ae8c-3f1c-4b7a-9b4d-3f2f3a1e8c01";
const U3: &str = "c0ffee00-3f1c-4b7a-9b4d-3f2f3a1e8c02";

async fn create(
    conn: &zbus::Connection,
    mdev_type: &str,
    uuid: &str,
) -> Result<OwnedObjectPath, CallErr> {
    let r = call(
        conn,
        &gpu_path(V100),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &(mdev_type, uuid, no_opts()),
    )
    .await?;
    Ok(r.body().deserialize().unwrap())
}

async fn remove(conn: &zbus::Connection, uuid: &str, force: bool) -> Result<(), CallErr> {
    let path = api::mdev_path(&uuid.parse().unwrap());
    let o = if force {
        opts(&[("force", Value::Bool(true))])
    } else {
        no_opts()
    };
    call(conn, path.as_str(), api::MDEV_INTERFACE, "Remove", &(o,))
        .await
        .map(|_| ())
}

async fn manager<B>(
    conn: &zbus::Connection,
    method: &str,
    body: &B,
) -> Result<zbus::Message, CallErr>
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
}

fn active(host: &SimHost, uuid: &str) -> bool {
    host.root()
        .join(format!("sys/bus/mdev/devices/{uuid}"))
        .exists()
}

async fn runbook() -> (SimHost, Bus, Gpuvirtd, zbus::Connection, PathBuf) {
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let state = host.dir.path().join("state");
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &state,
        &[],
    )
    .await;
    let conn = bus.connect().await;
    (host, bus, d, conn, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_to_capacity_then_refusals() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn, _state) = runbook().await;
    // By name, with a UUID; by id, generated UUID.
    let p1 = create(&conn, "GRID V100-8C", U1).await.unwrap();
    assert_eq!(p1, api::mdev_path(&U1.parse().unwrap()));
    assert!(active(&host, U1));
    // The object exists when the call returns.
    let r = manager(&conn, "GetMdevByUuid", &(U1,)).await.unwrap();
    let found: OwnedObjectPath = r.body().deserialize().unwrap();
    assert_eq!(found, p1);
    let p2 = create(&conn, "nvidia-300", "").await.unwrap();
    let generated = p2.as_str().rsplit('/').next().unwrap().replace('_', "-");
    assert!(active(&host, &generated), "{generated}\n{}", d.log());

    let (name, message) = create(&conn, "nvidia-300", U3).await.unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoCapacity", "{message}");
    assert!(message.contains("2 instances"), "{message}");
    let (name, message) = create(&conn, "nvidia-300", U1).await.unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.AlreadyExists",
        "{message}"
    );
    let (name, message) = create(&conn, "GRID V100-99Q", "").await.unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.UnknownType", "{message}");
    assert!(
        message.contains("nvidia-300 (GRID V100-8C)"),
        "the choices are listed: {message}"
    );
    let (name, message) = create(&conn, "nvidia-300", "not-a-uuid").await.unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);
    assert!(message.contains("'uuid'"), "{message}");

    // EBUSY on remove: a VM holds it.
    host.with_kernel_mut(|k| assert!(k.set_mdev_busy(U1.parse().unwrap(), true)));
    let (name, message) = remove(&conn, U1, false).await.unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.Busy", "{message}");
    assert!(active(&host, U1));
    host.with_kernel_mut(|k| assert!(k.set_mdev_busy(U1.parse().unwrap(), false)));
    remove(&conn, U1, false).await.unwrap();
    assert!(!active(&host, U1));
    remove(&conn, &generated, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tools_mdev_is_left_alone_unless_forced() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    // Made by hand (or libvirt) before gpuvirtd runs.
    host.write(
        &format!("sys/bus/pci/devices/{V100}/mdev_supported_types/nvidia-300/create"),
        U2,
    )
    .unwrap();
    let bus = Bus::start();
    let _d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let conn = bus.connect().await;
    let (name, message) = remove(&conn, U2, false).await.unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.PolicyViolation",
        "{message}"
    );
    assert!(message.contains("not gpuvirt"), "{message}");
    assert!(active(&host, U2));
    let (name, _) = manager(&conn, "StopMdev", &(U2, no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.PolicyViolation");
    remove(&conn, U2, true).await.unwrap();
    assert!(!active(&host, U2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn definitions_survive_unplug_and_restart_with_the_same_uuids_once() {
    if !fuse_available() {
        return;
    }
    let (host, bus, d, conn, state) = runbook().await;
    for u in [U1, U2] {
        let r = manager(&conn, "DefineMdev", &(V100, "V100-8C", u, no_opts()))
            .await
            .unwrap();
        let uuid: String = r.body().deserialize().unwrap();
        assert_eq!(uuid, u);
    }
    // Auto definitions on a present parent start at once.
    eventually("both defined mdevs active", || {
        active(&host, U1) && active(&host, U2)
    })
    .await;
    let (name, _) = manager(&conn, "DefineMdev", &(V100, "nvidia-300", U1, no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.AlreadyExists");

    // Stop keeps the definition; start brings the same UUID back.
    manager(&conn, "StopMdev", &(U1, no_opts())).await.unwrap();
    assert!(!active(&host, U1));
    manager(&conn, "StartMdev", &(U1, no_opts())).await.unwrap();
    assert!(active(&host, U1));

    // Surprise removal of the card and its return: the same UUIDs, recreated by the daemon.
    let gpu: gpuvirt_core::PciAddress = V100.parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(gpu).unwrap());
    eventually("mdevs gone with their parent", || {
        !active(&host, U1) && !active(&host, U2)
    })
    .await;
    host.with_kernel_mut(|k| k.replug(gpu).unwrap());
    eventually("defined mdevs recreated after replug", || {
        active(&host, U1) && active(&host, U2)
    })
    .await;

    // Restart: nothing created twice (a second create would fail with EEXIST and log it).
    drop(d);
    let d2 = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &state,
        &[],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!d2.log().contains("recreated:"), "{}", d2.log());
    assert!(!d2.log().contains("recreating:"), "{}", d2.log());
    let conn = bus.connect().await;

    // Undefine leaves the active device as a transient one that Remove then takes.
    manager(&conn, "UndefineMdev", &(U2, no_opts()))
        .await
        .unwrap();
    assert!(active(&host, U2));
    let (name, _) = manager(&conn, "StartMdev", &(U2, no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoSuchDevice");
    remove(&conn, U2, false).await.unwrap();
    let (name, message) = manager(&conn, "DefineMdev", &(V100, "nope", "", no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.UnknownType", "{message}");
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/shard_golden")
        .join(name);
    if std::env::var_os("GPUVIRT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        expected,
        actual,
        "{} differs; rerun with GPUVIRT_BLESS=1 if intended",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_hostdev_matches_golden_files() {
    if !fuse_available() {
        return;
    }
    let (_host, _bus, _d, conn, _state) = runbook().await;
    create(&conn, "nvidia-300", U1).await.unwrap();
    for (target, file) in [(V100, "card"), (U1, "mdev")] {
        let r = manager(&conn, "RenderHostdev", &(target, no_opts()))
            .await
            .unwrap();
        let (xml, args): (String, Vec<String>) = r.body().deserialize().unwrap();
        golden(&format!("{file}.xml"), &xml);
        golden(&format!("{file}.qemu"), &(args.join(" ") + "\n"));
    }
    let (name, _) = manager(&conn, "RenderHostdev", &("0000:99:00.0", no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoSuchDevice");
    let (name, _) = manager(&conn, "RenderHostdev", &("bogus", no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);
}
