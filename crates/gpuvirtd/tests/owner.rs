//! One writer per device (issue 21 point 1): a card whose policy rule names another `owner`
//! is observed and reported, never changed, on every shard backend. On the FUSE-simulated
//! hosts and a private bus: the Gpu object says `Owner` and role `unmanaged`; every manual
//! mutator touching the card, its mdevs or its VFs (dry runs included) is refused with
//! `PolicyViolation` naming the owner; Reconcile leaves the card exactly as it is, another
//! engine's vGPUs included, while a gpuvirt-owned card in the same policy is still applied.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use common::{fuse_available, Bus, SimHost};
use gpuvirt_api as api;
use support::*;
use zbus::zvariant::Value;

const VIOLATION: &str = "org.gpuvirt.GpuVirt1.Error.PolicyViolation";

async fn daemon(bus: &Bus, host: &SimHost, policy: &str) -> Gpuvirtd {
    let file = host.dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    let state = host.dir.path().join("state");
    let events = format!("sim:{}", host.socket.display());
    Gpuvirtd::start(
        &bus.address,
        host.root(),
        &events,
        &state,
        &["--policy", file.to_str().unwrap()],
    )
    .await
}

async fn gpu_string(conn: &zbus::Connection, gpu: &str, name: &str) -> String {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(gpu_path(gpu))
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::GPU_INTERFACE).unwrap();
    String::try_from(props.get(iface, name).await.unwrap()).unwrap()
}

/// Waits until the Gpu object of `gpu` serves `Owner` = `owner` (the policy is in force).
async fn wait_owner(conn: &zbus::Connection, gpu: &str, owner: &str, d: &Gpuvirtd) {
    for _ in 0..150 {
        if gpu_string(conn, gpu, "Owner").await == owner {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{gpu} never served Owner {owner:?}: {}", d.log());
}

fn assert_owned_elsewhere<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, CallErr>,
    gpu: &str,
    owner: &str,
) {
    let (name, message) = result.expect_err(what);
    assert_eq!(name, VIOLATION, "{what}: {message}");
    assert!(
        message.contains(&format!("{gpu} is owned by {owner}"))
            && message.contains("never binds, creates or removes anything"),
        "{what}: {message}"
    );
}

/// Every manual mutator a card can be reached by, each refused naming `owner` (`kind`: a type
/// the card offers, so the arguments pass and the policy is what refuses).
async fn every_manual_operation_refused(
    conn: &zbus::Connection,
    gpu: &str,
    kind: &str,
    owner: &str,
) {
    let dry = opts(&[("dry-run", Value::Bool(true))]);
    for (what, method, dry_run) in [
        ("AssignPassthrough", "AssignPassthrough", false),
        ("AssignPassthrough dry-run", "AssignPassthrough", true),
        ("ReturnToHost", "ReturnToHost", false),
    ] {
        let o = if dry_run { dry.clone() } else { no_opts() };
        let r = call(conn, &gpu_path(gpu), api::GPU_INTERFACE, method, &(o,)).await;
        assert_owned_elsewhere(what, r, gpu, owner);
    }
    let r = call(
        conn,
        &gpu_path(gpu),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &(kind, "", no_opts()),
    )
    .await;
    assert_owned_elsewhere("CreateMdev", r, gpu, owner);
    let r = call(
        conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "DefineMdev",
        &(gpu, kind, "", no_opts()),
    )
    .await;
    assert_owned_elsewhere("DefineMdev", r, gpu, owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mdev_card_owned_by_kubevirt_is_only_observed() {
    if !fuse_available() {
        return;
    }
    const V100: &str = "0000:41:00.0";
    const THEIRS: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
    let host = SimHost::boot("runbook");
    // KubeVirt's virt-handler made a vGPU on the card before gpuvirtd started.
    std::fs::write(
        host.root().join(format!(
            "sys/bus/pci/devices/{V100}/mdev_supported_types/nvidia-300/create"
        )),
        THEIRS,
    )
    .unwrap();
    let bus = Bus::start();
    let d = daemon(
        &bus,
        &host,
        "version = 1\n[[gpu]]\nname = \"k8s\"\nmatch = { address = \"0000:41:00.0\" }\nowner = \"kubevirt\"\n",
    )
    .await;
    let conn = bus.connect().await;
    wait_owner(&conn, V100, "kubevirt", &d).await;
    assert_eq!(gpu_string(&conn, V100, "Role").await, "unmanaged");
    let seq = host.with_kernel_mut(|k| k.seqnum());
    let (ok, report) = reconcile(&conn).await;
    assert!(ok, "{report}\n{}", d.log());
    assert_eq!(
        host.with_kernel_mut(|k| k.seqnum()),
        seq,
        "Reconcile changed the host: {report}"
    );
    every_manual_operation_refused(&conn, V100, "nvidia-300", "kubevirt").await;
    // Their vGPU: not removable through gpuvirt, not even forced, and still there.
    let mdev = api::mdev_path(&THEIRS.parse().unwrap());
    let r = call(
        &conn,
        mdev.as_str(),
        api::MDEV_INTERFACE,
        "Remove",
        &(opts(&[("force", Value::Bool(true))]),),
    )
    .await;
    assert_owned_elsewhere("Remove --force", r, V100, "kubevirt");
    let r = call(
        &conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "StartMdev",
        &(THEIRS, no_opts()),
    )
    .await;
    assert!(r.is_err(), "StartMdev of an active foreign vGPU: {r:?}");
    assert!(host
        .root()
        .join(format!("sys/bus/mdev/devices/{THEIRS}"))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_per_vf_vgpus_of_a_nova_card_are_left_while_a_gpuvirt_card_is_sharded() {
    if !fuse_available() {
        return;
    }
    const NOVA: &str = "0000:18:00.0";
    const MINE: &str = "0000:9a:00.0";
    let host = SimHost::boot("hopper-sriov");
    let theirs = vgpus_of(&host, NOVA);
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    let bus = Bus::start();
    let d = daemon(
        &bus,
        &host,
        &format!(
            "version = 1\ndefault_role = \"unmanaged\"\n\n[[gpu]]\nname = \"nova\"\nmatch = {{ address = \"{NOVA}\" }}\nowner = \"nova\"\n\n[[gpu]]\nname = \"h100\"\nmatch = {{ address = \"{MINE}\" }}\nrole = \"shard\"\nshard = {{ type = \"1151\", count = 1 }}\n"
        ),
    )
    .await;
    let conn = bus.connect().await;
    wait_owner(&conn, NOVA, "nova", &d).await;
    assert_eq!(gpu_string(&conn, MINE, "Owner").await, "gpuvirt");
    eventually("the gpuvirt-owned card sharded", || {
        vgpus_of(&host, MINE).len() == 1
    })
    .await;
    let (ok, report) = reconcile(&conn).await;
    assert!(ok, "{report}\n{}", d.log());
    assert_eq!(
        vgpus_of(&host, NOVA),
        theirs,
        "nova's vGPUs untouched: {report}"
    );
    every_manual_operation_refused(&conn, NOVA, "1151", "nova").await;
    // A VF of the card is reached through its PF's rule.
    let vf = &theirs[0].0;
    let r = call(
        &conn,
        &gpu_path(vf),
        api::GPU_INTERFACE,
        "AssignPassthrough",
        &(no_opts(),),
    )
    .await;
    if let Err((name, message)) = &r {
        assert_eq!(name, VIOLATION, "{message}");
        assert!(message.contains("owned by nova"), "{message}");
    }
    assert_eq!(vgpus_of(&host, NOVA), theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sriov_card_owned_externally_keeps_its_vfs_off() {
    if !fuse_available() {
        return;
    }
    let host = sriov_host();
    assert_eq!(numvfs(&host), "0");
    let bus = Bus::start();
    let d = daemon(
        &bus,
        &host,
        &format!(
            "version = 1\ndefault_role = \"unmanaged\"\n\n[[gpu]]\nname = \"theirs\"\nmatch = {{ address = \"{SRIOV_PF}\" }}\nowner = \"external\"\n"
        ),
    )
    .await;
    let conn = bus.connect().await;
    wait_owner(&conn, SRIOV_PF, "external", &d).await;
    let seq = host.with_kernel_mut(|k| k.seqnum());
    let (ok, report) = reconcile(&conn).await;
    assert!(ok, "{report}\n{}", d.log());
    assert_eq!(host.with_kernel_mut(|k| k.seqnum()), seq, "{report}");
    every_manual_operation_refused(&conn, SRIOV_PF, "vf", "external").await;
    assert_eq!(numvfs(&host), "0");
}

/// The same card without `owner` (gpuvirt's, role unmanaged) takes manual operations: the
/// refusals above come from the owner, not from the role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_owner_the_same_unmanaged_card_takes_manual_operations() {
    if !fuse_available() {
        return;
    }
    const V100: &str = "0000:41:00.0";
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let d = daemon(
        &bus,
        &host,
        "version = 1\n[[gpu]]\nname = \"k8s\"\nmatch = { address = \"0000:41:00.0\" }\nrole = \"unmanaged\"\nresource = \"example.com/vdi-v100\"\n",
    )
    .await;
    let conn = bus.connect().await;
    wait_owner(&conn, V100, "gpuvirt", &d).await;
    // The device plugin's name for the card, from the rule.
    assert_eq!(
        gpu_string(&conn, V100, "ResourceName").await,
        "example.com/vdi-v100"
    );
    let r = call(
        &conn,
        &gpu_path(V100),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &("nvidia-300", "", no_opts()),
    )
    .await;
    assert!(r.is_ok(), "{r:?}\n{}", d.log());
}
