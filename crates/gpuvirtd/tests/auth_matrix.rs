//! The authorization matrix, generated from the introspection XML: every method of
//! `dbus/org.gpuvirt.GpuVirt1.xml` must be in gpuvirt-api's `METHODS`, every mutating one must
//! have a case here, and each mutating case, called with valid arguments on a simulated host
//! while polkit says no, fails with `org.freedesktop.DBus.Error.AccessDenied` (arguments,
//! policy and state are checked first, so the arguments are valid and not a no-op). Reads and
//! dry runs succeed for the same refused caller. A new mutating method without a polkit
//! action, or without a case here, fails this test.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use gpuvirt_api as api;
use support::*;
use zbus::zvariant::{OwnedValue, Value};

const V100: &str = "0000:41:00.0";
const GPU_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const MANAGER: &str = "/org/gpuvirt/GpuVirt1/Manager";
const U1: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const U2: &str = "b6e2ae8c-3f1c-4b7a-9b4d-3f2f3a1e8c01";
const U1_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123";
const IMPORT: &str = "{\"mdev_type\": \"nvidia-300\", \"start\": \"manual\", \"attrs\": []}";

/// A polkit authority that answers every CheckAuthorization with `allow`.
struct FakePolkit {
    allow: Arc<AtomicBool>,
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakePolkit {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        _subject: (String, HashMap<String, OwnedValue>),
        _action: String,
        _details: HashMap<String, String>,
        _flags: u32,
        _cancellation: String,
    ) -> (bool, bool, HashMap<String, String>) {
        (self.allow.load(Ordering::SeqCst), false, HashMap::new())
    }
}

/// `(interface, method)` of every method the XML declares.
fn xml_methods() -> Vec<(String, String)> {
    let xml = include_str!("../../../dbus/org.gpuvirt.GpuVirt1.xml");
    let mut out = Vec::new();
    let mut interface = String::new();
    for line in xml.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("<interface name=\"") {
            interface = rest.split('"').next().unwrap().to_owned();
        } else if let Some(rest) = line.strip_prefix("<method name=\"") {
            out.push((
                interface.clone(),
                rest.split('"').next().unwrap().to_owned(),
            ));
        }
    }
    assert!(
        out.len() > 10,
        "the XML parse found too few methods: {out:?}"
    );
    out
}

fn o(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
    opts(pairs)
}

/// Calls `interface.method` with the valid arguments of its case; `None` when this test has
/// no case for it. The reply's body is not read: only success or the error name counts.
async fn call_case(
    conn: &zbus::Connection,
    interface: &str,
    method: &str,
    dry_run: bool,
) -> Option<Result<(), (String, String)>> {
    let short = interface
        .strip_prefix("org.gpuvirt.GpuVirt1.")
        .unwrap_or(interface);
    let dry = if dry_run {
        o(&[("dry-run", Value::Bool(true))])
    } else {
        no_opts()
    };
    let r = match (short, method) {
        ("Gpu", "AssignPassthrough" | "ReturnToHost") => {
            call(conn, GPU_PATH, interface, method, &(dry,)).await
        }
        ("ShardParent", "CreateMdev") => {
            call(
                conn,
                GPU_PATH,
                interface,
                method,
                &("nvidia-300", "", no_opts()),
            )
            .await
        }
        ("Mdev", "Remove") => call(conn, U1_PATH, interface, method, &(no_opts(),)).await,
        ("Manager", "DefineMdev") => {
            let args = (V100, "nvidia-300", "", no_opts());
            call(conn, MANAGER, interface, method, &args).await
        }
        ("Manager", "ImportMdevDefinition") => {
            call(
                conn,
                MANAGER,
                interface,
                method,
                &(V100, "", IMPORT, no_opts()),
            )
            .await
        }
        ("Manager", "UndefineMdev" | "StartMdev") => {
            call(conn, MANAGER, interface, method, &(U2, no_opts())).await
        }
        ("Manager", "StopMdev") => call(conn, MANAGER, interface, method, &(U1, no_opts())).await,
        // U2 is defined manual: making it auto is a change (no change is answered unasked).
        ("Manager", "ModifyMdev") => {
            let args = (U2, o(&[("auto", Value::Bool(true))]));
            call(conn, MANAGER, interface, method, &args).await
        }
        ("Manager", "ReloadPolicy" | "Reconcile") => {
            call(conn, MANAGER, interface, method, &(no_opts(),)).await
        }
        // Reads.
        ("Manager", "GetGpuByPciAddress") => call(conn, MANAGER, interface, method, &(V100,)).await,
        ("Manager", "GetMdevByUuid") => call(conn, MANAGER, interface, method, &(U1,)).await,
        ("Manager", "GetObjects") => {
            call(
                conn,
                MANAGER,
                interface,
                method,
                &(Vec::<String>::new(), no_opts()),
            )
            .await
        }
        ("Manager", "ListMdevs" | "ListMdevDefinitions") => {
            call(conn, MANAGER, interface, method, &(no_opts(),)).await
        }
        ("Manager", "ValidatePolicy") => call(conn, MANAGER, interface, method, &("",)).await,
        // With no policy in force the plan is PolicyInvalid: still answered unauthorised.
        ("Manager", "PlanPolicy") => call(conn, MANAGER, interface, method, &(no_opts(),)).await,
        ("Manager", "RenderHostdev") => {
            call(conn, MANAGER, interface, method, &(V100, no_opts())).await
        }
        ("Manager", "CanPassthrough" | "CanShard" | "CanManagePolicy") => {
            call(conn, MANAGER, interface, method, &()).await
        }
        _ => return None,
    };
    Some(r.map(drop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_method_is_denied_and_reads_and_dry_runs_are_open() {
    // The table first: it needs no host.
    let methods = xml_methods();
    let mut mutating = Vec::new();
    let mut reads = Vec::new();
    let mut owned = Vec::new();
    for (interface, name) in &methods {
        let info = api::method(interface, name).unwrap_or_else(|| {
            panic!("{interface}.{name} is in the XML but not in gpuvirt_api::METHODS")
        });
        match (info.mutating, info.action) {
            (true, Some(_)) => mutating.push((interface.clone(), name.clone())),
            (false, None) => reads.push((interface.clone(), name.clone())),
            // Checked by ownership: only the caller that started a job may cancel it.
            (true, None) if interface == api::JOB_INTERFACE => owned.push(name.clone()),
            _ => panic!("{interface}.{name} mutates without a polkit action"),
        }
    }
    assert!(!mutating.is_empty() && !reads.is_empty());

    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let allow = Arc::new(AtomicBool::new(true));
    let _polkit = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.PolicyKit1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/PolicyKit1/Authority",
            FakePolkit {
                allow: allow.clone(),
            },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let denied = |r: Option<Result<(), (String, String)>>, what: &str| {
        let r = r.unwrap_or_else(|| panic!("{what} has no case in auth_matrix.rs"));
        let (name, message) = r.expect_err(what);
        assert_eq!(
            name,
            "org.freedesktop.DBus.Error.AccessDenied",
            "{what}: {message}\n{}",
            d.log()
        );
        assert!(
            message.contains("polkit does not allow"),
            "{what}: {message}"
        );
    };
    let mut tested = BTreeSet::new();

    // ReturnToHost needs an assigned card (on the host it is a no-op, answered first).
    let (job, _) = passthrough(&conn, V100, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    assert!(wait_job(&conn, job.as_str()).await.0, "{}", d.log());
    // A job is cancelled only by the caller that started it (no polkit action to grant it).
    assert_eq!(owned, ["Cancel"]);
    let other = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let (name, message) = call(&other, job.as_str(), api::JOB_INTERFACE, "Cancel", &())
        .await
        .expect_err("Job.Cancel by another caller");
    assert_eq!(name, "org.freedesktop.DBus.Error.AccessDenied", "{message}");
    allow.store(false, Ordering::SeqCst);
    denied(
        call_case(&conn, api::GPU_INTERFACE, "ReturnToHost", false).await,
        "Gpu.ReturnToHost",
    );
    tested.insert("Gpu.ReturnToHost".to_owned());
    allow.store(true, Ordering::SeqCst);
    let (job, _) = passthrough(&conn, V100, "ReturnToHost", no_opts())
        .await
        .unwrap();
    assert!(wait_job(&conn, job.as_str()).await.0, "{}", d.log());

    // The mdev methods need an active mdev (U1) and an inactive definition (U2).
    call(
        &conn,
        GPU_PATH,
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &("nvidia-300", U1, no_opts()),
    )
    .await
    .unwrap();
    call(
        &conn,
        MANAGER,
        api::MANAGER_INTERFACE,
        "DefineMdev",
        &(V100, "nvidia-300", U2, o(&[("auto", Value::Bool(false))])),
    )
    .await
    .unwrap();

    // polkit says no: every other mutating method is denied.
    allow.store(false, Ordering::SeqCst);
    for (interface, name) in &mutating {
        let short = format!(
            "{}.{name}",
            interface.strip_prefix("org.gpuvirt.GpuVirt1.").unwrap()
        );
        if tested.contains(&short) {
            continue;
        }
        denied(call_case(&conn, interface, name, false).await, &short);
        tested.insert(short);
    }
    assert_eq!(tested.len(), mutating.len());

    // Reads and dry runs stay open to the same caller.
    for (interface, name) in &reads {
        let r = call_case(&conn, interface, name, false)
            .await
            .unwrap_or_else(|| panic!("{interface}.{name} (a read) has no case in auth_matrix.rs"));
        if let Err((error, message)) = r {
            assert!(
                name == "PlanPolicy" && error == "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
                "{name} refused: {error}: {message}"
            );
        }
    }
    for method in ["AssignPassthrough"] {
        call_case(&conn, api::GPU_INTERFACE, method, true)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("dry-run {method}: {e:?}"));
    }
}
