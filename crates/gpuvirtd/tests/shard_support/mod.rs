//! Helpers for the mutating-API tests (passthrough, shard, auth): gpuvirtd with its own state
//! directory and extra arguments, raw method calls that keep the D-Bus error name, and jobs.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpuvirt_api as api;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// gpuvirtd as a child process with `--state-dir` and extra arguments.
pub struct Gpuvirtd {
    child: Child,
    pub log_path: PathBuf,
}

impl Gpuvirtd {
    pub async fn start(
        address: &str,
        root: &Path,
        events: &str,
        state: &Path,
        extra: &[&str],
    ) -> Gpuvirtd {
        let log_path = state.with_extension(format!(
            "log{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(root)
            .arg("--state-dir")
            .arg(state)
            .args(["--bus-address", address, "--events", events])
            // A test that brings its own policy names it in `extra`.
            .args(if extra.contains(&"--policy") {
                &[][..]
            } else {
                &["--policy", "/nonexistent/gpuvirt-test-policy.toml"][..]
            })
            .args(["--log", "gpuvirtd=debug"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let mut d = Gpuvirtd { child, log_path };
        let conn = zbus::connection::Builder::address(address)
            .unwrap()
            .build()
            .await
            .unwrap();
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
            if dbus.name_has_owner(name).await.unwrap() {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("gpuvirtd exited with {status}: {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "gpuvirtd never took its name: {}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gpuvirtd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// gpuvirtd on `host`'s simulated kernel and its uevents, its state in `<host dir>/state`,
/// with `extra` arguments; also a connection to `bus` and the state directory.
pub async fn start_on(
    host: &crate::common::SimHost,
    bus: &crate::common::Bus,
    extra: &[&str],
) -> (Gpuvirtd, zbus::Connection, PathBuf) {
    let state = host.dir.path().join("state");
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &state,
        extra,
    )
    .await;
    (d, bus.connect().await, state)
}

/// A method error as (name, message).
pub type CallErr = (String, String);

pub async fn call<B>(
    conn: &zbus::Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> Result<zbus::Message, CallErr>
where
    B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(Some(api::BUS_NAME), path, Some(iface), method, body)
        .await
        .map_err(|e| match e {
            zbus::Error::MethodError(name, msg, _) => (name.to_string(), msg.unwrap_or_default()),
            other => ("transport".to_string(), other.to_string()),
        })
}

pub fn opts(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v.clone()).unwrap()))
        .collect()
}

pub fn no_opts() -> HashMap<String, OwnedValue> {
    HashMap::new()
}

pub fn gpu_path(address: &str) -> String {
    api::gpu_path(&address.parse().unwrap()).to_string()
}

/// Calls AssignPassthrough/ReturnToHost: (job, plan).
pub async fn passthrough(
    conn: &zbus::Connection,
    address: &str,
    method: &str,
    options: HashMap<String, OwnedValue>,
) -> Result<(OwnedObjectPath, String), CallErr> {
    let reply = call(
        conn,
        &gpu_path(address),
        api::GPU_INTERFACE,
        method,
        &(options,),
    )
    .await?;
    Ok(reply.body().deserialize().unwrap())
}

/// Waits for a job to finish: (success, error name, message).
pub async fn wait_job(conn: &zbus::Connection, job: &str) -> (bool, String, String) {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(job.to_string())
        .unwrap()
        .build()
        .await
        .unwrap();
    let iface = zbus::names::InterfaceName::try_from(api::JOB_INTERFACE).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = props.get_all(iface.clone()).await.unwrap();
        let get = |k: &str| all.get(k).unwrap().clone();
        if bool::try_from(get("Finished")).unwrap() {
            return (
                bool::try_from(get("Success")).unwrap(),
                String::try_from(get("ErrorName")).unwrap(),
                String::try_from(get("Message")).unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "job {job} never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The driver bound to `address` under `root`, read from sysfs.
pub fn driver(root: &Path, address: &str) -> Option<String> {
    std::fs::read_link(root.join(format!("sys/bus/pci/devices/{address}/driver")))
        .ok()
        .map(|t| t.file_name().unwrap().to_str().unwrap().to_string())
}

/// Waits until `f` holds (the tree follows sysfs through uevents).
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Manager's `LastApply` (the last policy apply's report).
pub async fn last_apply(conn: &zbus::Connection) -> String {
    let reply = call(
        conn,
        api::MANAGER_PATH,
        "org.freedesktop.DBus.Properties",
        "Get",
        &(api::MANAGER_INTERFACE, "LastApply"),
    )
    .await
    .unwrap();
    String::try_from(reply.body().deserialize::<OwnedValue>().unwrap()).unwrap()
}

/// `(VF, current_vgpu_type)` of every VF of `pf` that carries a vGPU, read from the sim.
pub fn vgpus_of(host: &crate::common::SimHost, pf: &str) -> Vec<(String, String)> {
    let prefix = &pf[..pf.len() - 4];
    let mut out: Vec<(String, String)> = std::fs::read_dir(host.root().join("sys/bus/pci/devices"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|a| a.starts_with(prefix) && a != pf)
        .filter_map(|a| {
            let t = std::fs::read_to_string(
                host.root()
                    .join(format!("sys/bus/pci/devices/{a}/nvidia/current_vgpu_type")),
            )
            .ok()?;
            let t = t.trim().to_string();
            (t != "0").then_some((a, t))
        })
        .collect();
    out.sort();
    out
}

/// The plain SR-IOV GPU of [`sriov_host`].
pub const SRIOV_PF: &str = "0000:9a:00.0";

/// The Hopper host's second card as a plain SR-IOV GPU (an AMD id, no NVIDIA vGPU files):
/// 32 VFs possible, none enabled, on an SR-IOV-capable driver of its own (which probes it
/// again when the card returns from a hot-unplug).
pub fn sriov_host() -> crate::common::SimHost {
    let mut fixture = gpuvirt_sim::fixture::Fixture::bundled("hopper-sriov").unwrap();
    let spec = fixture
        .devices
        .iter_mut()
        .find(|d| d.address.to_string() == SRIOV_PF)
        .unwrap();
    spec.id = "1002:74a1".into();
    spec.nvidia_vgpu = None;
    spec.driver = Some("amdgpu".into());
    fixture.drivers.push(gpuvirt_sim::fixture::DriverSpec {
        name: "amdgpu".into(),
        module: None,
        builtin: true,
        ids: vec!["1002:*".into()],
        override_only: false,
        modules_alias: true,
        sriov: true,
        drm: gpuvirt_sim::fixture::DrmSupport::Render,
    });
    crate::common::SimHost::with_kernel(
        gpuvirt_sim::kernel::Kernel::from_fixture(&fixture).unwrap(),
    )
}

/// The [`SRIOV_PF`]'s `sriov_numvfs`, "" while the card is gone.
pub fn numvfs(host: &crate::common::SimHost) -> String {
    std::fs::read_to_string(
        host.root()
            .join(format!("sys/bus/pci/devices/{SRIOV_PF}/sriov_numvfs")),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

/// `Manager.Reconcile`'s (success, report).
pub async fn reconcile(conn: &zbus::Connection) -> (bool, String) {
    let reply = call(
        conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "Reconcile",
        &(no_opts(),),
    )
    .await
    .unwrap();
    reply.body().deserialize().unwrap()
}
