//! A card whose passthrough rule says `on_demand = true`, on the private bus and the
//! FUSE-simulated runbook host: the policy leaves it on its host driver, the Gpu object says
//! `OnDemand`, AssignPassthrough and ReturnToHost by hand (what the libvirt hook does) are
//! allowed, and a Reconcile while it is assigned finds nothing to correct; without on_demand
//! the same manual calls are refused with `PolicyViolation`.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fuse_available, Bus, SimHost};
use gpuvirt_api as api;
use support::{call, gpu_path, no_opts, opts, passthrough, wait_job, Gpuvirtd as Daemon};
use zbus::zvariant::Value;

const V100: &str = "0000:41:00.0";
const VIOLATION: &str = "org.gpuvirt.GpuVirt1.Error.PolicyViolation";

const ON_DEMAND: &str = r#"version = 1
[[gpu]]
name = "vm-card"
match = { address = "0000:41:00.0" }
role = "passthrough"
on_demand = true
"#;

/// The same rule without on_demand, in monitor mode (so the policy does not bind the card
/// itself while the test looks at the manual calls).
const EAGER_MONITOR: &str = r#"version = 1
enforcement = "monitor"
[[gpu]]
name = "vm-card"
match = { address = "0000:41:00.0" }
role = "passthrough"
"#;

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

async fn gpu_property(conn: &zbus::Connection, name: &str) -> zbus::zvariant::OwnedValue {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(gpu_path(V100))
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::GPU_INTERFACE).unwrap();
    props.get(iface, name).await.unwrap()
}

/// Waits until the Gpu object serves `OnDemand` = `want` with role passthrough.
async fn wait_on_demand(conn: &zbus::Connection, want: bool, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let on_demand = bool::try_from(gpu_property(conn, "OnDemand").await).unwrap();
        let role = String::try_from(gpu_property(conn, "Role").await).unwrap();
        if on_demand == want && role == "passthrough" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "OnDemand {on_demand}, Role {role:?}, want {want}/passthrough: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn manager_call(conn: &zbus::Connection, method: &str) -> (bool, String) {
    let reply = call(
        conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        method,
        &(no_opts(),),
    )
    .await
    .unwrap_or_else(|e| panic!("{method}: {e:?}"));
    if method == "Reconcile" {
        reply.body().deserialize().unwrap()
    } else {
        (true, String::new())
    }
}

async fn drift(conn: &zbus::Connection) -> Vec<String> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(api::MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::MANAGER_INTERFACE).unwrap();
    Vec::<String>::try_from(props.get(iface, "Drift").await.unwrap()).unwrap()
}

/// Runs AssignPassthrough/ReturnToHost to the job's end.
async fn run_slot(conn: &zbus::Connection, method: &str, d: &Daemon) {
    let (job, _plan) = passthrough(conn, V100, method, no_opts())
        .await
        .unwrap_or_else(|e| panic!("{method}: {e:?}\n{}", d.log()));
    let (ok, name, message) = wait_job(conn, job.as_str()).await;
    assert!(ok, "{method}: {name}: {message}\n{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_card_is_moved_by_hand_and_the_policy_does_not_fight_it() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    // vfio-pci loaded already: the root has no modprobe to load it with.
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, ON_DEMAND).unwrap();
    let bus = Bus::start();
    let d = start_daemon(&bus, &host, &policy).await;
    let conn = bus.connect().await;
    wait_on_demand(&conn, true, &d).await;

    // The policy leaves it with the host: nothing to do, nothing drifted.
    let (ok, report) = manager_call(&conn, "Reconcile").await;
    assert!(ok, "{report}");
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("nvidia")
    );
    assert!(drift(&conn).await.is_empty(), "{:?}", drift(&conn).await);

    // Assigned by hand (the hook's call): allowed, and the policy keeps it there.
    run_slot(&conn, "AssignPassthrough", &d).await;
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("vfio-pci")
    );
    let (ok, report) = manager_call(&conn, "Reconcile").await;
    assert!(ok, "{report}\n{}", d.log());
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("vfio-pci"),
        "the policy took the card back: {report}"
    );
    assert!(drift(&conn).await.is_empty(), "{:?}", drift(&conn).await);
    wait_on_demand(&conn, true, &d).await;

    // Returned by hand: allowed, back on its host driver.
    run_slot(&conn, "ReturnToHost", &d).await;
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("nvidia")
    );

    // Without on_demand the rule manages the card: the same calls are refused.
    std::fs::write(&policy, EAGER_MONITOR).unwrap();
    manager_call(&conn, "ReloadPolicy").await;
    wait_on_demand(&conn, false, &d).await;
    for (method, options) in [
        ("AssignPassthrough", opts(&[("dry-run", Value::Bool(true))])),
        ("AssignPassthrough", no_opts()),
        ("ReturnToHost", no_opts()),
    ] {
        let (name, message) = passthrough(&conn, V100, method, options)
            .await
            .expect_err(method);
        assert_eq!(name, VIOLATION, "{method}: {message}");
        assert!(message.contains("\"vm-card\""), "{message}");
    }
    assert_eq!(
        support::driver(host.root(), V100).as_deref(),
        Some("nvidia")
    );
}
