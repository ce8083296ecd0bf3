//! Keeping the device policy applied, end to end: gpuvirtd on a private bus against the
//! FUSE-simulated kernel. Applied from scratch through the Manager (and nothing to do the
//! second time), a hot-added matching card applied with no client call while a non-matching
//! one is left alone, drift corrected in `enforce` mode and only reported in `monitor` mode,
//! an invalid reload (SIGHUP and `ReloadPolicy`) rejected with the old rules still enforced,
//! and a write failing mid-apply leaving a consistent state that a later reconcile finishes.
//!
//! Every wait has a deadline and prints the daemon's log when it runs out. These need
//! `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fuse_available, Bus};
use gpuvirt_api as api;
use gpuvirt_core::ledger::LedgerStore;
use gpuvirt_sim::fixture::{Fixture, GroupSpec, PciSpec};
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Tree, Uevent};
use zbus::zvariant::OwnedValue;

const EXAMPLE: &str = include_str!("../../../config/policy.toml");
const V100: &str = "0000:41:00.0";

/// Generous: the machine is shared and compiles meanwhile.
const DEADLINE: Duration = Duration::from_secs(40);

/// A write the simulated kernel will fail: the `skip + 1`th write to a path ending in
/// `suffix` returns `errno` (once).
struct Fault {
    suffix: String,
    skip: usize,
    errno: i32,
}

/// The simulated kernel with a one-shot fault in front of its write path.
struct Faulty {
    kernel: Kernel,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl Backend for Faulty {
    fn tree(&self) -> &Tree {
        self.kernel.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        let mut fault = self.fault.lock().unwrap();
        if let Some(f) = fault.as_mut().filter(|f| path.ends_with(&f.suffix)) {
            if f.skip == 0 {
                let errno = f.errno;
                *fault = None;
                return Err(errno);
            }
            f.skip -= 1;
        }
        drop(fault);
        self.kernel.write(path, data)
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        self.kernel.take_uevents()
    }
}

/// A simulated host mounted in a temp dir, with its uevent socket and fault hook.
struct Host {
    mount: SimMount<Faulty>,
    socket: PathBuf,
    fault: Arc<Mutex<Option<Fault>>>,
    dir: tempfile::TempDir,
}

impl Host {
    fn boot(kernel: Kernel) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let fault = Arc::new(Mutex::new(None));
        let backend = Faulty {
            kernel,
            fault: fault.clone(),
        };
        let mount =
            SimMount::mount(Arc::new(Mutex::new(backend)), &dir.path().join("root")).unwrap();
        let socket = dir.path().join("uevent.sock");
        mount.listen_uevents(&socket).unwrap();
        let host = Host {
            mount,
            socket,
            fault,
            dir,
        };
        install_initramfs_double(host.root());
        host
    }

    fn fixture(name: &str) -> Host {
        Self::boot(Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap())
    }

    fn root(&self) -> &Path {
        self.mount.root()
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes an attribute through the mount, as `echo` by someone else would.
    fn write(&self, rel: &str, data: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.root().join(rel))
            .and_then(|mut f| f.write_all(data.as_bytes()))
    }

    /// Runs `f` on the kernel, then publishes the uevents it produced.
    fn kernel<R>(&self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        let r = f(&mut lock_backend(self.mount.backend()).kernel);
        self.mount.publish_pending();
        r
    }

    /// Active mdevs as (uuid, parent), sorted.
    fn mdevs(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .kernel(|k| k.mdevs())
            .into_iter()
            .map(|(u, parent, _)| (u.to_string(), parent))
            .collect();
        v.sort();
        v
    }

    fn uuids(&self) -> Vec<String> {
        self.mdevs().into_iter().map(|(u, _)| u).collect()
    }

    fn driver(&self, address: &str) -> Option<String> {
        let a = address.parse().unwrap();
        self.kernel(|k| k.driver_of(a).map(str::to_owned))
    }

    fn fail_write(&self, suffix: &str, skip: usize, errno: i32) {
        *self.fault.lock().unwrap() = Some(Fault {
            suffix: suffix.to_owned(),
            skip,
            errno,
        });
    }

    fn fault_pending(&self) -> bool {
        self.fault.lock().unwrap().is_some()
    }

    /// The mdevs the ledger says gpuvirt created, sorted.
    fn ledger_mdevs(&self) -> Vec<String> {
        let ledger = LedgerStore::new(self.state()).load().unwrap();
        let mut v: Vec<String> = ledger
            .mdevs
            .iter()
            .filter(|(_, r)| r.created_by_gpuvirt)
            .map(|(u, _)| u.to_string())
            .collect();
        v.sort();
        v
    }
}

/// An `update-initramfs` double inside the simulated root (the example policy blacklists
/// nouveau, which regenerates the initramfs).
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

/// gpuvirtd with a policy and a state dir, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    async fn start(bus: &Bus, host: &Host) -> Daemon {
        let log = host.dir.path().join("gpuvirtd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(host.root())
            .args(["--bus-address", &bus.address])
            .arg("--events")
            .arg(format!("sim:{}", host.socket.display()))
            .arg("--policy")
            .arg(host.policy_path())
            .arg("--state-dir")
            .arg(host.state())
            .args(["--log", "gpuvirtd=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon { child, log };
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
        while !dbus.name_has_owner(name.clone()).await.unwrap() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("gpuvirtd exited with {status}: {}", d.log());
            }
            assert!(Instant::now() < deadline, "no name: {}", d.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sighup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds; panics with `what` and the daemon's log at the deadline.
async fn eventually<F, Fut>(what: &str, d: &Daemon, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Manager's methods and properties, with every call bounded.
struct Manager {
    proxy: zbus::Proxy<'static>,
    props: zbus::fdo::PropertiesProxy<'static>,
}

impl Manager {
    async fn new(conn: &zbus::Connection) -> Manager {
        let proxy = zbus::Proxy::new(
            conn,
            api::BUS_NAME,
            api::MANAGER_PATH,
            api::MANAGER_INTERFACE,
        )
        .await
        .unwrap();
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(api::BUS_NAME)
            .unwrap()
            .path(api::MANAGER_PATH)
            .unwrap()
            .build()
            .await
            .unwrap();
        Manager { proxy, props }
    }

    /// An uncached read: what the daemon serves now.
    async fn prop<T: TryFrom<OwnedValue>>(&self, d: &Daemon, name: &str) -> T
    where
        T::Error: std::fmt::Debug,
    {
        let iface = zbus::names::InterfaceName::try_from(api::MANAGER_INTERFACE).unwrap();
        let v = bounded(d, name, self.props.get(iface, name)).await.unwrap();
        T::try_from(v).unwrap()
    }

    async fn plan(&self, d: &Daemon) -> (String, String) {
        bounded(d, "PlanPolicy", self.proxy.call("PlanPolicy", &(opts(),)))
            .await
            .unwrap_or_else(|e| panic!("PlanPolicy: {e}: {}", d.log()))
    }

    async fn reconcile(&self, d: &Daemon) -> (bool, String) {
        bounded(d, "Reconcile", self.proxy.call("Reconcile", &(opts(),)))
            .await
            .unwrap_or_else(|e| panic!("Reconcile: {e}: {}", d.log()))
    }

    async fn reload(&self, d: &Daemon) -> zbus::Result<()> {
        bounded(
            d,
            "ReloadPolicy",
            self.proxy.call::<_, _, ()>("ReloadPolicy", &(opts(),)),
        )
        .await
    }
}

/// Awaits `fut` for at most the deadline; a method call that never returns is a hung daemon.
async fn bounded<T>(d: &Daemon, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return; daemon log:\n{}", d.log()),
    }
}

fn opts() -> HashMap<String, OwnedValue> {
    HashMap::new()
}

fn actions(json: &str) -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
    parsed["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].to_string())
        .collect()
}

/// The UUIDs the example's rule "vdi" gives the V100's two vGPUs.
fn vdi_uuids(parent: &str) -> Vec<String> {
    let mut v: Vec<String> = (0..2)
        .map(|i| gpuvirt_core::plan::mdev_uuid("vdi", parent, i).to_string())
        .collect();
    v.sort();
    v
}

fn example_in(mode: &str) -> String {
    EXAMPLE.replace(
        "enforcement = \"enforce\"",
        &format!("enforcement = \"{mode}\""),
    )
}

async fn start(host: &Host, policy: &str) -> (Bus, Daemon, Manager) {
    std::fs::write(host.policy_path(), policy).unwrap();
    let bus = Bus::start();
    let d = Daemon::start(&bus, host).await;
    let conn = bus.connect().await;
    let m = Manager::new(&conn).await;
    (bus, d, m)
}

/// Monitor mode: the plan lists the work, nothing is written until `Reconcile`; a second
/// `Reconcile` finds nothing to do and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_from_scratch_then_nothing_to_do() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    let (_bus, d, m) = start(&host, &example_in("monitor")).await;
    assert_eq!(m.prop::<String>(&d, "EnforcementMode").await, "monitor");

    // The start-up reconcile only reports in monitor mode: Drift names the two creations.
    eventually("Drift after the start-up plan", &d, || async {
        !m.prop::<Vec<String>>(&d, "Drift").await.is_empty()
    })
    .await;
    let drift: Vec<String> = m.prop(&d, "Drift").await;
    assert_eq!(
        drift
            .iter()
            .filter(|l| l.contains("nvidia-300") && l.contains("rule \"vdi\""))
            .count(),
        2,
        "{drift:#?}"
    );
    let (human, json) = m.plan(&d).await;
    let planned = actions(&json);
    assert!(
        planned.iter().filter(|a| a.contains("nvidia-300")).count() == 2,
        "{human}"
    );
    assert!(human.contains("why:"), "{human}");
    assert!(host.mdevs().is_empty(), "monitor mode wrote: {}", d.log());
    assert!(!host.root().join("etc/modprobe.d/gpuvirt.conf").exists());
    assert_eq!(m.prop::<String>(&d, "LastApply").await, "");

    // Applied by request.
    let (ok, report) = m.reconcile(&d).await;
    assert!(ok, "{report}: {}", d.log());
    assert_eq!(
        report.lines().filter(|l| l.starts_with("done: ")).count(),
        planned.len(),
        "{report}"
    );
    assert!(!report.contains("failed"), "{report}");
    assert_eq!(host.uuids(), vdi_uuids(V100));
    assert_eq!(host.ledger_mdevs(), vdi_uuids(V100));
    assert_eq!(m.prop::<String>(&d, "LastApply").await, report);
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());

    // Again: nothing to do, and nothing written.
    let writes_before = initramfs_runs(&host);
    let (human, json) = m.plan(&d).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    assert!(actions(&json).is_empty(), "{json}");
    let (ok, again) = m.reconcile(&d).await;
    assert!(ok && again.starts_with("Nothing to do"), "{again}");
    assert_eq!(host.uuids(), vdi_uuids(V100));
    assert_eq!(initramfs_runs(&host), writes_before);
    assert_eq!(m.prop::<String>(&d, "LastApply").await, report);
}

fn initramfs_runs(host: &Host) -> usize {
    std::fs::read_to_string(host.root().join("usr/sbin/initramfs.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The runbook host with a second V100 (0000:42:00.0, its own mdev parent) unplugged at
/// boot, so the test can plug it in under a running daemon.
fn two_v100_kernel() -> Kernel {
    let mut text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gpuvirt-sim/fixtures/runbook.toml"
    ))
    .unwrap();
    let types_start = text.find("types = [").unwrap();
    let types = text[types_start..].to_owned();
    text.push_str(&format!(
        r#"
[[pci]]
address = "0000:42:00.0"
class = 0x030200
id = "10de:1db4"
subsystem = "10de:1214"
revision = 0xa1
driver = "nvidia"
iommu_group = 67
numa_node = 1

[[mdev_parent]]
device = "0000:42:00.0"
module = "nvidia_vgpu_vfio"
pool = 16384
homogeneous = true
{types}"#
    ));
    let fixture = Fixture::parse(&text, "runbook-two-v100").unwrap();
    let mut kernel = Kernel::from_fixture(&fixture).unwrap();
    kernel.hot_remove("0000:42:00.0".parse().unwrap()).unwrap();
    let _ = kernel.take_uevents();
    kernel
}

/// A card matching a rule appears: applied with no client call. A card no rule matches is
/// left alone (the plan with it in the inventory is empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotplugged_matching_card_is_applied_other_left_alone() {
    if !fuse_available() {
        return;
    }
    let host = Host::boot(two_v100_kernel());
    // Every V100 by its ids, so a second one is governed too.
    let policy = EXAMPLE.replace(
        "match = { address = \"0000:41:00.0\" }",
        "match = { vendor = \"10de\", device = \"1db4\" }",
    );
    assert_ne!(policy, EXAMPLE);
    let (_bus, d, m) = start(&host, &policy).await;
    eventually("the first V100's vGPUs", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    eventually("the start-up apply's report", &d, || async {
        !m.prop::<String>(&d, "LastApply").await.is_empty()
    })
    .await;

    let second = "0000:42:00.0";
    host.kernel(|k| k.replug(second.parse().unwrap()).unwrap());
    let mut want = vdi_uuids(V100);
    want.extend(vdi_uuids(second));
    want.sort();
    eventually("the hot-added V100's vGPUs", &d, || async {
        host.uuids() == want
    })
    .await;
    let on_second: BTreeSet<String> = host
        .mdevs()
        .into_iter()
        .filter(|(_, p)| p == second)
        .map(|(u, _)| u)
        .collect();
    assert_eq!(on_second.len(), 2, "{:?}", host.mdevs());
    eventually("the ledger to record them", &d, || async {
        host.ledger_mdevs() == want
    })
    .await;
    assert!(
        d.log().contains("applied: create"),
        "no automatic apply logged: {}",
        d.log()
    );

    // A different NVIDIA card: no rule matches it, default_role is "unmanaged".
    let other = "0000:43:00.0";
    let mut spec = PciSpec::new(other.parse().unwrap(), 0x030000, "10de:2230");
    spec.iommu_group = GroupSpec::Number(90);
    host.kernel(|k| k.hot_add(&spec).unwrap());
    assert_eq!(host.driver(other).as_deref(), Some("nvidia"));
    let gpu_seen = || async {
        let r: zbus::Result<zbus::zvariant::OwnedObjectPath> =
            m.proxy.call("GetGpuByPciAddress", &(other,)).await;
        r.is_ok()
    };
    eventually("the daemon to export the new card", &d, gpu_seen).await;
    // The plan is computed from the inventory that holds the card: nothing for it.
    let (human, _) = m.plan(&d).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());
    assert_eq!(host.driver(other).as_deref(), Some("nvidia"));
    assert_eq!(host.uuids(), want);
    let ledger = LedgerStore::new(host.state()).load().unwrap();
    let ledger = serde_json::to_string(&ledger).unwrap();
    assert!(
        !ledger.contains(other),
        "the unmanaged card is in the ledger: {ledger}"
    );
}

/// Enforce mode: a policy vGPU removed behind the daemon's back is recreated (same UUID,
/// logged as drift), and the correction's own events do not start another round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_corrected_in_enforce_mode() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    let (_bus, d, m) = start(&host, EXAMPLE).await;
    eventually("the policy's vGPUs", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    eventually("the start-up apply's report", &d, || async {
        !m.prop::<String>(&d, "LastApply").await.is_empty()
    })
    .await;
    let first_report: String = m.prop(&d, "LastApply").await;

    for round in 0..3 {
        let victim = vdi_uuids(V100)[round % 2].clone();
        host.write(&format!("sys/bus/mdev/devices/{victim}/remove"), "1")
            .unwrap();
        assert!(!host.uuids().contains(&victim));
        eventually(
            &format!("round {round}: {victim} recreated"),
            &d,
            || async { host.uuids() == vdi_uuids(V100) },
        )
        .await;
    }
    eventually("the correction's report", &d, || async {
        let last: String = m.prop(&d, "LastApply").await;
        last != first_report && last.contains("done: create")
    })
    .await;
    let log = d.log();
    assert!(log.contains("drift:"), "{log}");
    // A reconcile from the correction's trailing events may still be running: Drift settles
    // empty once it has.
    eventually("Drift empty after the corrections", &d, || async {
        m.prop::<Vec<String>>(&d, "Drift").await.is_empty()
    })
    .await;
    assert_eq!(host.ledger_mdevs(), vdi_uuids(V100));

    // The correction's uevents re-plan once (nothing to do) and stop: the daemon answers,
    // applies nothing more, and the plan is empty.
    let (human, _) = m.plan(&d).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    let applied = |log: &str| log.matches("applied: ").count();
    let before = applied(&d.log());
    let (ok, report) = m.reconcile(&d).await;
    assert!(ok && report.starts_with("Nothing to do"), "{report}");
    assert_eq!(applied(&d.log()), before, "{}", d.log());

    // Someone unbinds the V100 from its vGPU driver (its vGPUs go with it) and binds it
    // again: the parent comes back empty and the policy refills it.
    host.write("sys/bus/pci/drivers/nvidia/unbind", V100)
        .unwrap();
    assert!(host.uuids().is_empty());
    // Left unbound, the card cannot be split: reported, not guessed at (gpuvirt did not
    // rebind it, so it knows no driver to give it back to).
    eventually("Drift to say the V100 cannot be split", &d, || async {
        m.prop::<Vec<String>>(&d, "Drift")
            .await
            .iter()
            .any(|l| l.contains(V100) && l.contains("cannot be split"))
    })
    .await;
    host.write("sys/bus/pci/drivers/nvidia/bind", V100).unwrap();
    eventually("the vGPUs back after the rebind", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    eventually("Drift cleared", &d, || async {
        m.prop::<Vec<String>>(&d, "Drift").await.is_empty()
    })
    .await;
    assert_eq!(host.ledger_mdevs(), vdi_uuids(V100));
}

/// Enforce mode on the workstation: the passthrough card rebound to its host driver behind
/// the daemon's back goes back to vfio-pci (both functions of its slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebound_passthrough_card_goes_back_to_vfio() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("workstation");
    host.kernel(|k| k.load_module("vfio_pci").unwrap());
    let gpu = "0000:01:00.0";
    let audio = "0000:01:00.1";
    let policy = r#"version = 1
enforcement = "enforce"

[[gpu]]
name = "vm-pool"
match = { vendor = "10de", device = "2206" }
role = "passthrough"
"#;
    let (_bus, d, m) = start(&host, policy).await;
    let on_vfio = || async {
        host.driver(gpu).as_deref() == Some("vfio-pci")
            && host.driver(audio).as_deref() == Some("vfio-pci")
    };
    eventually("the slot on vfio-pci", &d, on_vfio).await;
    eventually("the start-up apply's report", &d, || async {
        !m.prop::<String>(&d, "LastApply").await.is_empty()
    })
    .await;

    // Someone gives the GPU back to nouveau by hand.
    host.write("sys/bus/pci/drivers/vfio-pci/unbind", gpu)
        .unwrap();
    host.write(&format!("sys/bus/pci/devices/{gpu}/driver_override"), "\n")
        .unwrap();
    host.write("sys/bus/pci/drivers/nouveau/bind", gpu).unwrap();
    assert_eq!(host.driver(gpu).as_deref(), Some("nouveau"));
    eventually("the slot back on vfio-pci", &d, on_vfio).await;
    assert!(d.log().contains("drift:"), "{}", d.log());
    let (human, _) = m.plan(&d).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    // The ledger still names the drivers the daemon first found, not the drifted one's.
    let ledger = LedgerStore::new(host.state()).load().unwrap();
    let originals = ledger.original_drivers();
    assert_eq!(
        originals
            .get(&gpu.parse().unwrap())
            .cloned()
            .flatten()
            .as_deref(),
        Some("nouveau"),
        "{ledger:?}"
    );
    assert_eq!(
        originals
            .get(&audio.parse().unwrap())
            .cloned()
            .flatten()
            .as_deref(),
        Some("snd_hda_intel"),
        "{ledger:?}"
    );
}

/// Monitor mode: drift is reported in `Drift` (and the plan), nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_only_reported_in_monitor_mode() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    let (_bus, d, m) = start(&host, &example_in("monitor")).await;
    eventually("the start-up plan's report", &d, || async {
        !m.prop::<Vec<String>>(&d, "Drift").await.is_empty()
    })
    .await;
    let (ok, report) = m.reconcile(&d).await;
    assert!(ok, "{report}");
    assert_eq!(host.uuids(), vdi_uuids(V100));
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());
    let last: String = m.prop(&d, "LastApply").await;

    let victim = vdi_uuids(V100)[0].clone();
    host.write(&format!("sys/bus/mdev/devices/{victim}/remove"), "1")
        .unwrap();
    // The event-driven re-plan reports the missing vGPU without creating it.
    eventually("Drift to name the removed vGPU", &d, || async {
        m.prop::<Vec<String>>(&d, "Drift")
            .await
            .iter()
            .any(|l| l.contains(&victim))
    })
    .await;
    assert!(!host.uuids().contains(&victim), "{}", d.log());
    let (human, _) = m.plan(&d).await;
    assert!(human.contains(&victim), "{human}");
    assert_eq!(m.prop::<String>(&d, "LastApply").await, last);
    assert!(
        d.log().contains("host differs from the policy"),
        "{}",
        d.log()
    );
    assert!(!host.uuids().contains(&victim));

    // An explicit request still applies in monitor mode.
    let (ok, report) = m.reconcile(&d).await;
    assert!(ok && report.contains(&victim), "{report}");
    assert_eq!(host.uuids(), vdi_uuids(V100));
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());
}

/// A broken file on SIGHUP and on `ReloadPolicy` is rejected: `PolicyError` has its position,
/// the old rules are still enforced (a removed vGPU comes back), and a good reload clears the
/// error and applies the new rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_enforcing_the_old_policy() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    let (_bus, d, m) = start(&host, EXAMPLE).await;
    eventually("the policy's vGPUs", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    let path = host.policy_path().display().to_string();

    // SIGHUP with a broken file (line 5: a role that does not exist).
    std::fs::write(
        host.policy_path(),
        "version = 1\n\n[[gpu]]\nname = \"x\"\nrole = \"sideways\"\n",
    )
    .unwrap();
    d.sighup();
    eventually("PolicyError after SIGHUP", &d, || async {
        !m.prop::<String>(&d, "PolicyError").await.is_empty()
    })
    .await;
    let error: String = m.prop(&d, "PolicyError").await;
    assert!(error.contains(&format!("{path}:5:8")), "{error}");
    assert!(error.contains("sideways"), "{error}");
    assert_eq!(m.prop::<String>(&d, "EnforcementMode").await, "enforce");

    // The old rules still hold: a removed vGPU is recreated.
    let victim = vdi_uuids(V100)[1].clone();
    host.write(&format!("sys/bus/mdev/devices/{victim}/remove"), "1")
        .unwrap();
    eventually("the old policy to recreate the vGPU", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;

    // ReloadPolicy with another broken file: refused, PolicyError follows the file.
    std::fs::write(
        host.policy_path(),
        EXAMPLE.replace("count = 2", "count = \"lots\""),
    )
    .unwrap();
    let err = m.reload(&d).await.unwrap_err();
    let zbus::Error::MethodError(name, msg, _) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        name.as_str(),
        "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
        "{msg:?}"
    );
    let line = EXAMPLE
        .lines()
        .position(|l| l.contains("count = 2"))
        .unwrap()
        + 1;
    let error: String = m.prop(&d, "PolicyError").await;
    assert!(error.contains(&format!("{path}:{line}:")), "{error}");
    let (ok, report) = m.reconcile(&d).await;
    assert!(ok && report.starts_with("Nothing to do"), "{report}");

    // A good file: the error clears and its rules apply (one vGPU: the surplus one goes).
    std::fs::write(
        host.policy_path(),
        EXAMPLE.replace("count = 2", "count = 1"),
    )
    .unwrap();
    bounded(&d, "ReloadPolicy", m.reload(&d))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    assert_eq!(m.prop::<String>(&d, "PolicyError").await, "");
    let keep = gpuvirt_core::plan::mdev_uuid("vdi", V100, 0).to_string();
    eventually("one vGPU left", &d, || async {
        host.uuids() == vec![keep.clone()]
    })
    .await;
    assert_eq!(host.ledger_mdevs(), vec![keep.clone()]);

    // And SIGHUP with a broken file again, then a good one: the error comes and goes.
    std::fs::write(host.policy_path(), "version = 7\n").unwrap();
    d.sighup();
    eventually("PolicyError after the second SIGHUP", &d, || async {
        m.prop::<String>(&d, "PolicyError")
            .await
            .contains(&format!("{path}:1:"))
    })
    .await;
    std::fs::write(host.policy_path(), EXAMPLE).unwrap();
    d.sighup();
    eventually("PolicyError cleared and two vGPUs", &d, || async {
        m.prop::<String>(&d, "PolicyError").await.is_empty() && host.uuids() == vdi_uuids(V100)
    })
    .await;
}

/// The second vGPU's `create` fails (ENOSPC) during the start-up apply: the report says what
/// was done, what failed and what was not attempted; the ledger matches sysfs; the daemon
/// finishes the job on its own once the fault is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_mid_apply_leaves_a_consistent_state() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    host.fail_write(
        "mdev_supported_types/nvidia-300/create",
        1,
        nix::errno::Errno::ENOSPC as i32,
    );
    let (_bus, d, m) = start(&host, EXAMPLE).await;

    eventually("the failed apply's report", &d, || async {
        m.prop::<String>(&d, "LastApply").await.contains("failed: ")
    })
    .await;
    assert!(!host.fault_pending());
    let report: String = m.prop(&d, "LastApply").await;
    let lines: Vec<&str> = report.lines().collect();
    let done: Vec<&&str> = lines.iter().filter(|l| l.starts_with("done: ")).collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| l.starts_with("failed: ")).collect();
    let skipped: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("not attempted: "))
        .collect();
    assert_eq!(done.len(), 1, "{report}");
    assert!(done[0].contains("nvidia-300"), "{report}");
    assert_eq!(failed.len(), 1, "{report}");
    assert!(failed[0].contains("nvidia-300"), "{report}");
    // The boot files come after the creations in the plan.
    assert!(!skipped.is_empty(), "{report}");

    // The ledger is written before each kernel write (a crash must not lose what gpuvirt
    // created), so while the daemon's retry runs it may name one mdev more than sysfs; it
    // never misses one that exists. Once settled, they are equal.
    let covered = |host: &Host| {
        let ledger = host.ledger_mdevs();
        let missing: Vec<String> = host
            .uuids()
            .into_iter()
            .filter(|u| !ledger.contains(u))
            .collect();
        assert!(
            missing.is_empty(),
            "not in the ledger: {missing:?}: {}",
            d.log()
        );
    };
    covered(&host);
    let done_uuid = done[0].split_whitespace().nth(3).unwrap().to_owned();
    assert!(host.uuids().contains(&done_uuid), "{report}");
    // The daemon retries on its own (no client call) until the host matches.
    eventually("the retry to finish the job", &d, || async {
        covered(&host);
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    assert_eq!(host.ledger_mdevs(), host.uuids());
    eventually("a clean report", &d, || async {
        let last: String = m.prop(&d, "LastApply").await;
        !last.contains("failed") && last.contains("done: ")
    })
    .await;
    assert!(host.root().join("etc/modprobe.d/gpuvirt.conf").exists());
    let (human, _) = m.plan(&d).await;
    assert!(human.starts_with("Nothing to do"), "{human}");
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());
}

/// The very first write of the apply fails (EIO): nothing changed on the host, so no uevent
/// will ever ask for the same plan again. The daemon's own retry timer applies it once the
/// fault is gone, with no client call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_apply_with_no_change_is_retried() {
    if !fuse_available() {
        return;
    }
    let host = Host::fixture("runbook");
    host.fail_write(
        "mdev_supported_types/nvidia-300/create",
        0,
        nix::errno::Errno::EIO as i32,
    );
    let (_bus, d, m) = start(&host, EXAMPLE).await;
    eventually("the failed apply's report", &d, || async {
        m.prop::<String>(&d, "LastApply").await.contains("failed: ")
    })
    .await;
    let report: String = m.prop(&d, "LastApply").await;
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("done: ") && l.contains("nvidia-300")),
        "{report}"
    );
    assert!(report.contains("not attempted: "), "{report}");
    assert_eq!(host.ledger_mdevs(), host.uuids());
    eventually("the retry to finish the job", &d, || async {
        host.uuids() == vdi_uuids(V100)
    })
    .await;
    assert_eq!(host.ledger_mdevs(), vdi_uuids(V100));
    assert!(d.log().contains("trying again in"), "{}", d.log());
    eventually("a clean report", &d, || async {
        !m.prop::<String>(&d, "LastApply").await.contains("failed")
    })
    .await;
    assert!(m.prop::<Vec<String>>(&d, "Drift").await.is_empty());
}
