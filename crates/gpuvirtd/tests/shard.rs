//! Sharding through the daemon on a private bus against the FUSE-simulated kernel: the
//! runbook's V100 to capacity and past it, duplicate UUIDs, unknown types listing the choices,
//! EBUSY on remove, another tool's mdev left alone, mdevctl-style definitions recreated with
//! the same UUIDs after a hot-unplug and once only across a restart, NVIDIA per-VF vGPUs and
//! plain SR-IOV VFs brought back by the policy after their card's removal and return and left
//! alone when the driver refuses (EBUSY), and the render method against golden files
//! (`GPUVIRT_BLESS=1` rewrites them).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use gpuvirt_api as api;
use gpuvirt_core::ledger::MdevStart;
use gpuvirt_core::mdevctl::MdevctlConfig;
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
    let (d, conn, state) = start_on(&host, &bus, &[]).await;
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

/// The runbook host with one mdevctl definition on the V100 (`/etc/mdevctl.d`, manual).
fn runbook_with_mdevctl_file(uuid: &str) -> SimHost {
    let mut fixture = gpuvirt_sim::fixture::Fixture::bundled("runbook").unwrap();
    fixture.mdevctl.push(gpuvirt_sim::fixture::MdevctlSpec {
        uuid: uuid.parse().unwrap(),
        parent: V100.into(),
        type_id: "nvidia-300".into(),
        start: "manual".into(),
        attrs: Vec::new(),
    });
    SimHost::with_kernel(gpuvirt_sim::kernel::Kernel::from_fixture(&fixture).unwrap())
}

fn mdevctl_json(start: MdevStart, attrs: &[(&str, &str)]) -> String {
    MdevctlConfig {
        uuid: uuid::Uuid::nil(),
        parent: V100.into(),
        mdev_type: "nvidia-300".into(),
        start,
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
    .to_json()
}

async fn definitions(conn: &zbus::Connection) -> Vec<api::MdevDefinitionWire> {
    manager(conn, "ListMdevDefinitions", &(no_opts(),))
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap()
}

fn definition(
    uuid: &str,
    owner: &str,
    start: &str,
    attrs: &[(&str, &str)],
    active: bool,
) -> api::MdevDefinitionWire {
    (
        uuid.into(),
        V100.into(),
        "nvidia-300".into(),
        owner.into(),
        start.into(),
        attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        active,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_listed_with_owners_and_round_trip_mdevctl_json() {
    if !fuse_available() {
        return;
    }
    let host = runbook_with_mdevctl_file(U3);
    let bus = Bus::start();
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    let d = Gpuvirtd::start(&bus.address, host.root(), &events, &state, &[]).await;
    let conn = bus.connect().await;
    // mdevctl's own file is reported as mdevctl's; gpuvirt does not start it.
    assert_eq!(
        definitions(&conn).await,
        vec![definition(U3, "mdevctl", "manual", &[], false)]
    );

    // Ordered attrs, a repeated name among them, and both start modes.
    let attrs = [("b", "2"), ("a", "1"), ("b", "3")];
    let manual = mdevctl_json(MdevStart::Manual, &attrs);
    let auto = mdevctl_json(MdevStart::Auto, &[]);
    for (uuid, json) in [(U1, &manual), (U2, &auto)] {
        let r = manager(
            &conn,
            "ImportMdevDefinition",
            &(V100, uuid, json.as_str(), no_opts()),
        )
        .await
        .unwrap();
        let defined: String = r.body().deserialize().unwrap();
        assert_eq!(defined, uuid);
    }
    // auto starts at once on a present parent; manual waits for StartMdev.
    eventually("the auto import is active", || active(&host, U2)).await;
    assert!(!active(&host, U1));
    let expected = vec![
        definition(U1, "gpuvirt", "manual", &attrs, false),
        definition(U2, "gpuvirt", "auto", &[], true),
        definition(U3, "mdevctl", "manual", &[], false),
    ];
    assert_eq!(definitions(&conn).await, expected, "{}", d.log());
    // Round trip: each listed definition in mdevctl's format is the text imported, byte for byte.
    for (def, json) in definitions(&conn).await.into_iter().zip([&manual, &auto]) {
        let config = api::MdevDefinition::from(def).to_mdevctl().unwrap();
        assert_eq!(&config.to_json(), json);
    }

    // Refusals, each before anything is recorded.
    let bad = [
        (
            r#"{"start": "auto"}"#,
            api::INVALID_ARGS_ERROR,
            "mdev_type is missing",
        ),
        (
            r#"{"mdev_type": "nvidia-300", "start": "sometimes"}"#,
            api::INVALID_ARGS_ERROR,
            "expected \"auto\" or \"manual\"",
        ),
        (
            r#"{"mdev_type": "nvidia-999", "start": "manual"}"#,
            "org.gpuvirt.GpuVirt1.Error.UnknownType",
            "nvidia-300 (GRID V100-8C)",
        ),
    ];
    for (json, want, says) in bad {
        let (name, message) = manager(&conn, "ImportMdevDefinition", &(V100, "", json, no_opts()))
            .await
            .unwrap_err();
        assert_eq!(name, want, "{json}: {message}");
        assert!(message.contains(says), "{json}: {message}");
    }
    let (name, _) = manager(
        &conn,
        "ImportMdevDefinition",
        &(V100, U1, auto.as_str(), no_opts()),
    )
    .await
    .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.AlreadyExists");
    let (name, _) = manager(
        &conn,
        "ListMdevDefinitions",
        &(opts(&[("x", Value::Bool(true))]),),
    )
    .await
    .unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);

    // StartMdev writes a definition's attributes after the create, in order, as mdevctl does;
    // the simulated V100's mdevs have no `b`, so the start fails naming it and leaves no
    // device behind. Everything survives a restart unchanged, and the restart starts nothing
    // (U2 is active, U1 manual).
    let (name, message) = manager(&conn, "StartMdev", &(U1, no_opts()))
        .await
        .unwrap_err();
    assert!(
        message.contains("attribute b=\"2\"") && message.contains("removed"),
        "{name}: {message}"
    );
    assert!(!active(&host, U1));
    assert_eq!(definitions(&conn).await, expected, "{}", d.log());
    drop(d);
    let d2 = Gpuvirtd::start(&bus.address, host.root(), &events, &state, &[]).await;
    let conn = bus.connect().await;
    assert_eq!(definitions(&conn).await, expected, "{}", d2.log());
    assert!(!d2.log().contains("recreated:"), "{}", d2.log());
    assert!(!d2.log().contains("recreating:"), "{}", d2.log());
}

/// `available_instances` of every type of `parent` as the daemon serves them.
async fn available(
    conn: &zbus::Connection,
    parent: &str,
) -> std::collections::BTreeMap<String, u32> {
    api::ShardParentProxy::builder(conn)
        .path(gpu_path(parent))
        .unwrap()
        .build()
        .await
        .unwrap()
        .types()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, t)| (id, t.3))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pool_types_lower_each_other_and_refuse_naming_the_capacity() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn, _state) = runbook().await;
    // The V100's types share its 16 GiB framebuffer and run one at a time.
    let before = available(&conn, V100).await;
    assert_eq!(before["nvidia-300"], 2);
    assert_eq!(before["nvidia-217"], 2);
    create(&conn, "nvidia-300", U1).await.unwrap();
    let after = available(&conn, V100).await;
    assert_eq!(after["nvidia-300"], 1, "{after:?}");
    let others: Vec<(&String, &u32)> = after
        .iter()
        .filter(|(id, n)| *id != "nvidia-300" && **n != 0)
        .collect();
    assert!(
        others.is_empty(),
        "every other type is used up: {others:?}\n{}",
        d.log()
    );
    // Another type of the same pool: refused before anything is written, naming its capacity.
    let (name, message) = create(&conn, "GRID V100-8Q", U2).await.unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoCapacity", "{message}");
    assert!(
        message.contains("GRID V100-8Q on 0000:41:00.0 has 0 instances"),
        "{message}"
    );
    assert!(!active(&host, U2));
    // Freeing the pool gives the other types back.
    remove(&conn, U1, false).await.unwrap();
    assert_eq!(available(&conn, V100).await, before);
    create(&conn, "nvidia-217", U2).await.unwrap();
    assert!(active(&host, U2));
    remove(&conn, U2, false).await.unwrap();
}

/// The 8-GPU mdev server: GPU 3 (0000:61:00.0) and GPU 4 (0000:81:00.0) carry no vGPUs.
const GPU3: &str = "0000:61:00.0";
const GPU4: &str = "0000:81:00.0";

async fn parent_served(conn: &zbus::Connection, parent: &str) -> bool {
    let Ok(p) = api::ShardParentProxy::builder(conn).path(gpu_path(parent)) else {
        return false;
    };
    match p.build().await {
        Ok(p) => p.types().await.is_ok_and(|t| !t.is_empty()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_definition_waits_through_unrelated_hotplug_but_returns_with_its_parent() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("mdev-server-8gpu");
    let foreign: Vec<String> =
        host.with_kernel_mut(|k| k.mdevs().into_iter().map(|m| m.0.to_string()).collect());
    assert!(!foreign.is_empty());
    let bus = Bus::start();
    let (d, conn, _) = start_on(&host, &bus, &[]).await;
    // U1 auto on GPU 3, started then stopped; U2 auto on GPU 3 and left running.
    for u in [U1, U2] {
        manager(&conn, "DefineMdev", &(GPU3, "GRID V100-8Q", u, no_opts()))
            .await
            .unwrap();
    }
    eventually("both definitions active", || {
        active(&host, U1) && active(&host, U2)
    })
    .await;
    manager(&conn, "StopMdev", &(U1, no_opts())).await.unwrap();
    assert!(!active(&host, U1));

    // Unrelated arrivals: another parent (GPU 4) unplugged and back, and a device that is no
    // parent at all. Each announces itself (add, bind, MDEV_STATE=registered for GPU 4).
    let gpu4: gpuvirt_core::PciAddress = GPU4.parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(gpu4).unwrap());
    let conn2 = conn.clone();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while parent_served(&conn2, GPU4).await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("GPU 4 left the tree");
    host.with_kernel_mut(|k| k.replug(gpu4).unwrap());
    let bridge: gpuvirt_core::PciAddress = "0000:80:00.2".parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(bridge).unwrap());
    host.with_kernel_mut(|k| k.replug(bridge).unwrap());
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !parent_served(&conn2, GPU4).await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("GPU 4 back in the tree");
    // Give a wrongly scoped recreate time to happen: it would run right after the events.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !active(&host, U1),
        "a stopped definition was restarted by another parent's event:\n{}",
        d.log()
    );
    assert!(active(&host, U2));

    // Its own parent unplugged and back: every auto definition on it returns, the stopped one
    // too (as mdevctl's udev rule starts auto definitions on the parent's add).
    let gpu3: gpuvirt_core::PciAddress = GPU3.parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(gpu3).unwrap());
    eventually("GPU 3's mdevs gone", || !active(&host, U2)).await;
    host.with_kernel_mut(|k| k.replug(gpu3).unwrap());
    eventually("both recreated with their UUIDs", || {
        active(&host, U1) && active(&host, U2)
    })
    .await;
    // Foreign (mdevctl-defined) mdevs on the other GPUs were neither removed nor made twice.
    let now: Vec<String> =
        host.with_kernel_mut(|k| k.mdevs().into_iter().map(|m| m.0.to_string()).collect());
    for f in &foreign {
        assert!(now.contains(f), "{f} vanished");
    }
    assert_eq!(now.len(), foreign.len() + 2, "{now:?}");
    assert!(
        !d.log().contains("recreating:"),
        "a create failed:\n{}",
        d.log()
    );
}

/// The Hopper host's GPU 1 sharded into `count` vGPUs of type 1151, named by id (by name:
/// `a_per_vf_type_named_by_name_stays_valid_on_a_full_card_across_restarts`).
fn hopper_policy(count: &str) -> String {
    format!(
        "version = 1\ndefault_role = \"unmanaged\"\n\n[[gpu]]\nname = \"h100\"\nmatch = {{ address = \"0000:9a:00.0\" }}\nrole = \"shard\"\nshard = {{ type = \"1151\", count = {count} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_per_vf_policy_fills_to_capacity_once_and_leaves_foreign_vgpus() {
    if !fuse_available() {
        return;
    }
    const GPU0: &str = "0000:18:00.0";
    const GPU1: &str = "0000:9a:00.0";
    let host = SimHost::boot("hopper-sriov");
    // GPU 0's two 40C vGPUs were made by another tool before gpuvirtd ran.
    let foreign = vgpus_of(&host, GPU0);
    assert_eq!(foreign.len(), 2, "{foreign:?}");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, hopper_policy("2")).unwrap();
    let bus = Bus::start();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    // Enabling the VFs comes first; their types can be read (and set) once they exist.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while vgpus_of(&host, GPU1).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            vgpus_of(&host, GPU1),
            d.log()
        );
        let _ = manager(&conn, "Reconcile", &(no_opts(),)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let made = vgpus_of(&host, GPU1);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().all(|(_, t)| t == "1151"), "{made:?}");
    assert_eq!(vgpus_of(&host, GPU0), foreign, "foreign vGPUs untouched");
    // Manual creation is the policy's on this backend.
    let (name, message) = call(
        &conn,
        &gpu_path(GPU1),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &("1151", "", no_opts()),
    )
    .await
    .unwrap_err();
    assert!(
        name.ends_with("NotSupported") || name.ends_with("PolicyViolation"),
        "{name}: {message}"
    );

    // Restart on the same state: nothing written (no uevent), the same two vGPUs.
    drop(d);
    let seq = host.with_kernel_mut(|k| k.seqnum());
    let d2 = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    let r = manager(&conn, "Reconcile", &(no_opts(),)).await.unwrap();
    let (ok, report): (bool, String) = r.body().deserialize().unwrap();
    assert!(ok, "{report}\n{}", d2.log());
    assert_eq!(
        host.with_kernel_mut(|k| k.seqnum()),
        seq,
        "{report}\n{}",
        d2.log()
    );
    assert_eq!(vgpus_of(&host, GPU1), made);
    assert_eq!(vgpus_of(&host, GPU0), foreign);

    // Beyond capacity: refused naming it, nothing changes.
    std::fs::write(&policy, hopper_policy("3")).unwrap();
    let (name, message) = manager(&conn, "ReloadPolicy", &(no_opts(),))
        .await
        .unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
        "{message}"
    );
    assert!(
        message.contains("count 3 is more than")
            && message.contains("can hold of 1151 (NVIDIA H100XM-40C): 2"),
        "{message}"
    );
    assert_eq!(vgpus_of(&host, GPU1), made);
    assert_eq!(vgpus_of(&host, GPU0), foreign);
}

/// GPU 1's `Types` as its ShardParent serves them: type id → name.
async fn served_type_names(conn: &zbus::Connection, gpu: &str) -> BTreeMap<String, String> {
    let opts: std::collections::HashMap<&str, Value<'_>> = Default::default();
    let reply = call_manager(
        conn,
        "GetObjects",
        &(&[api::SHARD_PARENT_INTERFACE][..], opts),
    )
    .await
    .unwrap();
    let objects: api::Objects = reply.body().deserialize().unwrap();
    let parent = objects
        .get(&gpu_path(gpu))
        .unwrap()
        .shard_parent
        .clone()
        .unwrap();
    parent
        .types
        .into_iter()
        .map(|(id, (name, ..))| (id, name))
        .collect()
}

/// The Manager's `PolicyError`.
async fn policy_error(conn: &zbus::Connection) -> String {
    let objects = managed_objects(conn).await;
    let manager = &objects[&OwnedObjectPath::try_from(api::MANAGER_PATH).unwrap()];
    let props = manager
        .iter()
        .find(|(i, _)| i.as_str() == api::MANAGER_INTERFACE)
        .unwrap()
        .1;
    String::try_from(props["PolicyError"].try_clone().unwrap()).unwrap()
}

/// NVIDIA's per-VF files name a type only while one more can be created. A policy naming the
/// type ("NVIDIA H100XM-40C", not 1151) fills the card, and stays valid on the full card after
/// a restart because gpuvirtd remembers the names it read (state dir `vgpu-type-names.json`).
/// Without that memory the restarted daemon cannot resolve the name: the test's control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_vf_type_named_by_name_stays_valid_on_a_full_card_across_restarts() {
    if !fuse_available() {
        return;
    }
    const GPU1: &str = "0000:9a:00.0";
    const NAME: &str = "NVIDIA H100XM-40C";
    let host = SimHost::boot("hopper-sriov");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        hopper_policy("2").replace("\"1151\"", &format!("\"{NAME}\"")),
    )
    .unwrap();
    let bus = Bus::start();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    reconcile_until(&conn, "GPU 1's two vGPUs", || {
        vgpus_of(&host, GPU1).len() >= 2
    })
    .await;
    let made = vgpus_of(&host, GPU1);
    assert!(made.iter().all(|(_, t)| t == "1151"), "{made:?}");
    // Full now: no VF lists 1151 any more, yet the served type keeps its name.
    let free_vf_lists: Vec<String> = (4..36)
        .filter_map(|i| {
            std::fs::read_to_string(host.root().join(format!(
                "sys/bus/pci/devices/0000:9a:{:02x}.{}/nvidia/creatable_vgpu_types",
                i / 8,
                i % 8
            )))
            .ok()
        })
        .collect();
    assert!(
        !free_vf_lists.is_empty() && free_vf_lists.iter().all(|t| !t.contains("1151")),
        "{free_vf_lists:?}"
    );
    // The daemon's tree follows the writes' uevents.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let served = served_type_names(&conn, GPU1).await;
        if served.get("1151").map(String::as_str) == Some(NAME) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{served:?}\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let state = host.dir.path().join("state");
    assert!(state.join("vgpu-type-names.json").exists());

    // Restart on the full card: the policy is valid and in force, nothing is written.
    drop(d);
    let seq = host.with_kernel_mut(|k| k.seqnum());
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    assert_eq!(policy_error(&conn).await, "", "{}", d.log());
    let r = manager(&conn, "Reconcile", &(no_opts(),)).await.unwrap();
    let (ok, report): (bool, String) = r.body().deserialize().unwrap();
    assert!(ok, "{report}\n{}", d.log());
    assert_eq!(host.with_kernel_mut(|k| k.seqnum()), seq, "{report}");
    assert_eq!(vgpus_of(&host, GPU1), made);
    assert_eq!(served_type_names(&conn, GPU1).await["1151"], NAME);

    // The control: without the saved names the full card names no type, and the policy is
    // refused with the reason (nothing is touched).
    drop(d);
    std::fs::remove_file(state.join("vgpu-type-names.json")).unwrap();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    let error = policy_error(&conn).await;
    assert!(error.contains(NAME), "{error}\n{}", d.log());
    assert_eq!(served_type_names(&conn, GPU1).await["1151"], "");
    assert_eq!(host.with_kernel_mut(|k| k.seqnum()), seq);
    assert_eq!(vgpus_of(&host, GPU1), made);
}

/// gpuvirtd on `host`'s uevents with the policy file `policy`, its state under the host's
/// directory (the same on a restart).
async fn gpuvirtd_with_policy(bus: &Bus, host: &SimHost, policy: &std::path::Path) -> Gpuvirtd {
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    let extra = ["--policy", policy.to_str().unwrap()];
    Gpuvirtd::start(&bus.address, host.root(), &events, &state, &extra).await
}

/// A policy that wants `count` VFs on [`SRIOV_PF`].
fn sriov_policy(count: u32) -> String {
    format!(
        "version = 1\ndefault_role = \"unmanaged\"\n\n[[gpu]]\nname = \"vfs\"\nmatch = {{ address = \"{SRIOV_PF}\" }}\nrole = \"shard\"\nshard = {{ type = \"vf\", count = {count} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sriov_policy_enables_vfs_once_and_refuses_beyond_totalvfs() {
    if !fuse_available() {
        return;
    }
    let host = sriov_host();
    let numvfs = || numvfs(&host);
    assert_eq!(numvfs(), "0");
    let policy = host.dir.path().join("policy.toml");
    let write_policy = |count: u32| std::fs::write(&policy, sriov_policy(count)).unwrap();
    write_policy(4);
    let bus = Bus::start();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    eventually("4 VFs enabled at start", || numvfs() == "4").await;
    let vfs: Vec<String> = (4..8).map(|f| format!("0000:9a:00.{f}")).collect();
    for vf in &vfs {
        eventually("the VF in the tree", || {
            host.root()
                .join(format!("sys/bus/pci/devices/{vf}"))
                .exists()
        })
        .await;
    }
    // The daemon serves the PF as an sriov parent whose children are the VFs.
    let parent = api::ShardParentProxy::builder(&conn)
        .path(gpu_path(SRIOV_PF))
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(parent.backend().await.unwrap(), "sriov", "{}", d.log());
    let conn2 = conn.clone();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let p = api::ShardParentProxy::builder(&conn2)
                .path(gpu_path(SRIOV_PF))
                .unwrap()
                .build()
                .await
                .unwrap();
            if p.children().await.unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the 4 VFs served as the parent's children");
    // Its one type is the VF, with what is left to enable as the available count.
    let p = api::ShardParentProxy::builder(&conn)
        .path(gpu_path(SRIOV_PF))
        .unwrap()
        .build()
        .await
        .unwrap();
    let types = p.types().await.unwrap();
    let (name, _, api_name, available) = types.get("vf").cloned().expect("a vf type");
    assert_eq!(
        (name.as_str(), api_name.as_str(), available),
        ("SR-IOV VF", "vfio-pci", 28)
    );

    // Restart: nothing written (no uevent), still 4.
    drop(d);
    let seq = host.with_kernel_mut(|k| k.seqnum());
    let d2 = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    let r = manager(&conn, "Reconcile", &(no_opts(),)).await.unwrap();
    let (ok, report): (bool, String) = r.body().deserialize().unwrap();
    assert!(ok, "{report}\n{}", d2.log());
    assert_eq!(
        host.with_kernel_mut(|k| k.seqnum()),
        seq,
        "{report}\n{}",
        d2.log()
    );
    assert_eq!(numvfs(), "4");

    // Beyond sriov_totalvfs: refused naming the capacity, nothing changes.
    write_policy(33);
    let (name, message) = manager(&conn, "ReloadPolicy", &(no_opts(),))
        .await
        .unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
        "{message}"
    );
    assert!(
        message.contains("count 33 is more than") && message.contains(": 32"),
        "{message}"
    );
    assert_eq!(numvfs(), "4");
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

/// Polls `Reconcile` until `done` holds (a per-VF apply takes passes: the VFs first, their
/// types once the VFs exist).
async fn reconcile_until(conn: &zbus::Connection, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            last_apply(conn).await
        );
        let _ = manager(conn, "Reconcile", &(no_opts(),)).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// NVIDIA per-VF: the card's surprise removal and return bring the policy's vGPUs back on
/// their own (enforce mode); lowering the count while a VM holds the vGPU to go (its
/// `current_vgpu_type` write fails with EBUSY) is reported and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_per_vf_vgpus_return_with_their_card_and_a_held_one_is_not_taken() {
    if !fuse_available() {
        return;
    }
    const GPU1: &str = "0000:9a:00.0";
    let host = SimHost::boot("hopper-sriov");
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, hopper_policy("2")).unwrap();
    let bus = Bus::start();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    reconcile_until(&conn, "two vGPUs", || vgpus_of(&host, GPU1).len() == 2).await;
    let made = vgpus_of(&host, GPU1);

    // Surprise removal: the VFs go with their PF. The return re-enumerates the PF with no
    // VFs; the policy enables them and sets the types again without being asked.
    let gpu: gpuvirt_core::PciAddress = GPU1.parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(gpu).unwrap());
    eventually("the vGPUs gone with their card", || {
        vgpus_of(&host, GPU1).is_empty()
    })
    .await;
    host.with_kernel_mut(|k| k.replug(gpu).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while vgpus_of(&host, GPU1) != made {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?} after the card returned, want {made:?}\n{}",
            vgpus_of(&host, GPU1),
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // One vGPU fewer, but a VM holds them: the driver refuses to clear the type.
    for (vf, _) in &made {
        host.fail_next_write(
            &format!("sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type"),
            libc::EBUSY,
        );
    }
    std::fs::write(&policy, hopper_policy("1")).unwrap();
    manager(&conn, "ReloadPolicy", &(no_opts(),)).await.unwrap();
    let report = last_apply(&conn).await;
    assert!(
        report.contains("EBUSY") || report.to_lowercase().contains("busy"),
        "{report}\n{}",
        d.log()
    );
    assert_eq!(vgpus_of(&host, GPU1), made, "nothing taken: {report}");
    // Once released (the fault was one write), an explicit Reconcile takes it.
    reconcile_until(&conn, "one vGPU", || vgpus_of(&host, GPU1).len() == 1).await;
}

/// Plain SR-IOV: the VFs come back after the card's surprise removal and return; lowering
/// the count while the VFs are held (`sriov_numvfs` refuses with EBUSY) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sriov_vfs_return_with_their_card_and_held_vfs_are_not_disabled() {
    if !fuse_available() {
        return;
    }
    let host = sriov_host();
    let numvfs_path = format!("sys/bus/pci/devices/{SRIOV_PF}/sriov_numvfs");
    let numvfs = || numvfs(&host);
    let policy = host.dir.path().join("policy.toml");
    let write_policy = |count: u32| std::fs::write(&policy, sriov_policy(count)).unwrap();
    write_policy(4);
    let bus = Bus::start();
    let d = gpuvirtd_with_policy(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    eventually("4 VFs enabled at start", || numvfs() == "4").await;

    let pf: gpuvirt_core::PciAddress = SRIOV_PF.parse().unwrap();
    host.with_kernel_mut(|k| k.hot_remove(pf).unwrap());
    eventually("the card gone", || numvfs().is_empty()).await;
    host.with_kernel_mut(|k| k.replug(pf).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while numvfs() != "4" {
        assert!(
            std::time::Instant::now() < deadline,
            "sriov_numvfs {} after the card returned\n{}",
            numvfs(),
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Two VFs fewer while a VM holds them: the driver refuses the change.
    host.fail_next_write(&numvfs_path, libc::EBUSY);
    write_policy(2);
    manager(&conn, "ReloadPolicy", &(no_opts(),)).await.unwrap();
    let report = last_apply(&conn).await;
    assert!(
        report.contains("EBUSY") || report.to_lowercase().contains("busy"),
        "{report}\n{}",
        d.log()
    );
    assert_eq!(numvfs(), "4", "nothing disabled: {report}");
    reconcile_until(&conn, "2 VFs", || numvfs() == "2").await;
}

/// mdevctl's files (path, bytes), the ledger's bytes, the active mdevs.
type ImportState = (Vec<(String, Vec<u8>)>, Vec<u8>, Vec<String>);

/// What a refused import must leave as it was: every file below `etc/mdevctl.d` (path and
/// bytes), the ledger's bytes, and the active mdevs.
fn import_state(host: &SimHost, state: &std::path::Path) -> ImportState {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(&host.root().join("etc/mdevctl.d"), &mut files);
    files.sort();
    let ledger = std::fs::read(state.join("ledger.json")).unwrap_or_default();
    let mut active: Vec<String> = std::fs::read_dir(host.root().join("sys/bus/mdev/devices"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    active.sort();
    (files, ledger, active)
}

/// The document corpus of gpuvirt-types (`tests/corpus/`): `(name, text, expect)`.
fn corpus() -> Vec<(String, String, String)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpuvirt-types/tests/corpus");
    let mut out: Vec<(String, String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let name = name.strip_suffix(".json")?.to_owned();
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let expect = std::fs::read_to_string(dir.join(format!("{name}.expect"))).unwrap();
            Some((name, text, expect))
        })
        .collect();
    out.sort();
    out
}

/// Import is all or nothing: `[]` is nothing to do; every malformed document of the corpus,
/// and a document whose late entry is defined already (AlreadyExists), is refused naming the
/// entry, and leaves mdevctl's files, the ledger's bytes and the active mdevs as they were.
/// A good document with one UUID under two parents then defines both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_all_or_nothing_and_empty_is_nothing_to_do() {
    if !fuse_available() {
        return;
    }
    let host = runbook_with_mdevctl_file(U3);
    let bus = Bus::start();
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    let d = Gpuvirtd::start(&bus.address, host.root(), &events, &state, &[]).await;
    let conn = bus.connect().await;
    let import = |parent: &'static str, uuid: &'static str, text: String| {
        let conn = conn.clone();
        async move {
            manager(
                &conn,
                "ImportMdevDefinition",
                &(parent, uuid, text.as_str(), no_opts()),
            )
            .await
            .map(|r| r.body().deserialize::<String>().unwrap())
        }
    };
    // One auto definition first, so that the ledger and an active mdev exist.
    let one = format!(
        "[\n  {{\n    \"{V100}\": [\n      {{\n        \"{U1}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"auto\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
    );
    assert_eq!(import("", "", one).await.unwrap(), U1, "{}", d.log());
    eventually("the auto import is active", || active(&host, U1)).await;

    let before = import_state(&host, &state);
    assert!(
        !before.1.is_empty() && before.2 == [U1.to_string()],
        "{before:?}"
    );
    // `mdevctl list --dumpjson` of an empty host: nothing to do.
    assert_eq!(import("", "", "[]".into()).await.unwrap(), "");
    assert_eq!(import_state(&host, &state), before);

    // Every malformed corpus document (one definition given its parent and UUID).
    let mut refused = 0;
    for (name, text, expect) in corpus() {
        let phrases: Vec<&str> = expect
            .lines()
            .filter_map(|l| l.strip_prefix("error: "))
            .filter(|p| !p.contains("file name"))
            .collect();
        // Refusals of how a file is named are the CLI's (it names the definition from the
        // path); the daemon is given parent and UUID.
        if !expect.lines().any(|l| l.starts_with("error: "))
            || expect.lines().any(|l| l.starts_with("file: "))
        {
            continue;
        }
        let (parent, uuid) = if text.trim_start().starts_with('[') {
            ("", "")
        } else {
            (V100, U2)
        };
        let (error, message) = import(parent, uuid, text).await.unwrap_err();
        assert_eq!(error, api::INVALID_ARGS_ERROR, "{name}: {message}");
        assert!(
            message.starts_with("argument 'config': "),
            "{name}: {message}"
        );
        assert!(
            !message.contains("mdevctl config"),
            "{name}: stutters: {message}"
        );
        for p in phrases
            .iter()
            .filter(|p| !p.contains("does not name") && !p.contains("neither"))
        {
            assert!(message.contains(p), "{name}: {message:?} lacks {p:?}");
        }
        assert_eq!(
            import_state(&host, &state),
            before,
            "{name} changed something"
        );
        refused += 1;
    }
    assert!(refused >= 16, "{refused}");

    // A late entry that is defined already: nothing of the document is defined.
    let late = format!(
        "[\n  {{\n    \"{V100}\": [\n      {{\n        \"{U2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"manual\",\n          \"attrs\": []\n        }}\n      }},\n      {{\n        \"{U1}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"manual\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
    );
    let (error, message) = import("", "", late).await.unwrap_err();
    assert_eq!(
        error, "org.gpuvirt.GpuVirt1.Error.AlreadyExists",
        "{message}"
    );
    assert!(
        message.contains(&format!("mdev {U1} is defined under {V100} already")),
        "{message}"
    );
    assert!(message.contains("nothing was defined"), "{message}");
    assert_eq!(import_state(&host, &state), before);
    assert_eq!(
        definitions(&conn).await.len(),
        2,
        "U1 and mdevctl's U3 only: {}",
        d.log()
    );

    // One UUID under two parents (one of them absent: the type is an id) is defined whole.
    let other = "0000:61:00.0";
    let two = format!(
        "[\n  {{\n    \"{V100}\": [\n      {{\n        \"{U2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"manual\",\n          \"attrs\": []\n        }}\n      }}\n    ],\n    \"{other}\": [\n      {{\n        \"{U2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"manual\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
    );
    assert_eq!(
        import("", "", two).await.unwrap(),
        format!("{U2}\n{U2}"),
        "{}",
        d.log()
    );
    let listed: Vec<(String, String)> = definitions(&conn)
        .await
        .into_iter()
        .map(|d| (d.0, d.1))
        .collect();
    assert!(
        listed.contains(&(U2.to_string(), V100.to_string())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(U2.to_string(), other.to_string())),
        "{listed:?}"
    );
    assert_eq!(
        import_state(&host, &state).0,
        before.0,
        "mdevctl's files untouched"
    );
}

/// One UUID defined under two present parents: StartMdev and UndefineMdev without a parent
/// are refused naming both; the `parent` option picks one; only one can be active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_under_two_parents_is_started_and_undefined_by_parent() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("mdev-server-8gpu");
    let bus = Bus::start();
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    let d = Gpuvirtd::start(&bus.address, host.root(), &events, &state, &[]).await;
    let conn = bus.connect().await;
    for parent in [GPU3, GPU4] {
        manager(
            &conn,
            "ImportMdevDefinition",
            &(
                parent,
                U1,
                mdevctl_json(MdevStart::Manual, &[]).as_str(),
                no_opts(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    }
    let parent = |p: &str| opts(&[("parent", Value::from(p.to_owned()))]);
    let under = |defs: Vec<api::MdevDefinitionWire>| -> Vec<(String, bool)> {
        defs.into_iter()
            .filter(|d| d.0 == U1)
            .map(|d| (d.1, d.6))
            .collect()
    };
    assert_eq!(
        under(definitions(&conn).await),
        [(GPU3.to_string(), false), (GPU4.to_string(), false)]
    );
    for method in ["StartMdev", "UndefineMdev"] {
        let (name, message) = manager(&conn, method, &(U1, no_opts())).await.unwrap_err();
        assert_eq!(name, api::INVALID_ARGS_ERROR, "{method}: {message}");
        assert!(
            message.contains(&format!("defined under 2 parents ({GPU3}, {GPU4})"))
                && message.contains("parent option"),
            "{method}: {message}"
        );
    }
    let (name, _) = manager(
        &conn,
        "StartMdev",
        &(U1, opts(&[("parent", Value::Bool(true))])),
    )
    .await
    .unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);
    manager(&conn, "StartMdev", &(U1, parent(GPU4)))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(active(&host, U1));
    assert_eq!(
        under(definitions(&conn).await),
        [(GPU3.to_string(), false), (GPU4.to_string(), true)]
    );
    let (name, message) = manager(&conn, "StartMdev", &(U1, parent(GPU3)))
        .await
        .unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.AlreadyExists",
        "{message}"
    );
    assert!(message.contains(&format!("active on {GPU4}")), "{message}");
    // Stopped, both definitions stay; then the other parent's starts.
    manager(&conn, "StopMdev", &(U1, no_opts())).await.unwrap();
    assert!(!active(&host, U1));
    manager(&conn, "StartMdev", &(U1, parent(GPU3)))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert_eq!(
        under(definitions(&conn).await),
        [(GPU3.to_string(), true), (GPU4.to_string(), false)]
    );
    // Undefining the inactive one leaves the active one, which then needs no parent.
    manager(&conn, "UndefineMdev", &(U1, parent(GPU4)))
        .await
        .unwrap();
    assert_eq!(under(definitions(&conn).await), [(GPU3.to_string(), true)]);
    let (name, _) = manager(&conn, "UndefineMdev", &(U1, parent(GPU4)))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoSuchDevice");
    manager(&conn, "UndefineMdev", &(U1, no_opts()))
        .await
        .unwrap();
    assert!(under(definitions(&conn).await).is_empty());
    assert!(active(&host, U1), "undefine leaves the device, transient");
}

/// `StartMdev` of a definition only mdevctl has (its file below `etc/mdevctl.d`, listed as
/// mdevctl's) starts it, as `mdevctl start -u` does, rather than saying it is not defined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_of_an_mdevctl_definition_starts_it() {
    if !fuse_available() {
        return;
    }
    let host = runbook_with_mdevctl_file(U3);
    let bus = Bus::start();
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    let d = Gpuvirtd::start(&bus.address, host.root(), &events, &state, &[]).await;
    let conn = bus.connect().await;
    assert_eq!(
        definitions(&conn).await,
        vec![definition(U3, "mdevctl", "manual", &[], false)]
    );
    manager(&conn, "StartMdev", &(U3, no_opts()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(active(&host, U3));
    assert_eq!(
        definitions(&conn).await,
        vec![definition(U3, "mdevctl", "manual", &[], true)]
    );
    // gpuvirt created the device, so it may stop it; the definition stays mdevctl's.
    manager(&conn, "StopMdev", &(U3, no_opts())).await.unwrap();
    assert!(!active(&host, U3));
    assert_eq!(
        definitions(&conn).await,
        vec![definition(U3, "mdevctl", "manual", &[], false)]
    );
    let (name, message) = manager(&conn, "StartMdev", &(U2, no_opts()))
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoSuchDevice", "{message}");
    assert!(message.contains("is defined"), "{message}");
}
