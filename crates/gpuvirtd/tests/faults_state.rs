//! Faults around the daemon's own state and a parent that vanishes mid-create, on the runbook's
//! V100 in the FUSE-simulated kernel: the state directory turned read-only while serving, the
//! state directory full (ENOSPC on the ledger's temporary file), and the parent hot-removed from
//! inside the sysfs `create` write (of a definition, a CreateMdev and the policy's start-up
//! apply). After each the daemon keeps serving, sysfs holds no mdev the ledger does not record,
//! and once the fault is gone the same call succeeds or the same UUIDs come back.
//!
//! The mounts (bind read-only, tmpfs) are made on this test's temp dir only; run as root in a
//! private mount namespace (`unshare -m --propagation private cargo test ...`). Needs
//! `/dev/fuse` and root; skips with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fuse_available, Bus};
use gpuvirt_api as api;
use gpuvirt_core::ledger::{Ledger, LedgerStore, LEDGER_FILE};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Tree, Uevent};
use support::*;
use zbus::zvariant::OwnedObjectPath;

const V100: &str = "0000:41:00.0";
const U1: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const U2: &str = "b6e2ae8c-3f1c-4b7a-9b4d-3f2f3a1e8c01";
const U3: &str = "c0ffee00-3f1c-4b7a-9b4d-3f2f3a1e8c02";

/// The simulated kernel with a trap on the V100's `create` attribute: when `creates_left`
/// reaches zero, the next create write hot-removes the parent first, so the write meets a
/// device that is gone (as when the card drops off the bus while the daemon writes).
struct Vanish {
    kernel: Kernel,
    creates_left: Arc<AtomicUsize>,
}

impl Backend for Vanish {
    fn tree(&self) -> &Tree {
        self.kernel.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        let is_create = path.contains(V100) && path.ends_with("/create");
        if is_create {
            let was = self
                .creates_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n != usize::MAX && n > 0).then(|| n - 1)
                });
            if was == Err(0) {
                // Fire once: disarm, then pull the card before the write lands.
                self.creates_left.store(usize::MAX, Ordering::SeqCst);
                self.kernel.hot_remove(V100.parse().unwrap()).unwrap();
                return Err(nix::errno::Errno::ENODEV as i32);
            }
        }
        self.kernel.write(path, data)
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        self.kernel.take_uevents()
    }
}

struct Host {
    mount: SimMount<Vanish>,
    socket: PathBuf,
    creates_left: Arc<AtomicUsize>,
    dir: tempfile::TempDir,
}

impl Host {
    fn boot() -> Host {
        let mut kernel = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
        kernel.load_module("vfio_pci").unwrap();
        let _ = kernel.take_uevents();
        let creates_left = Arc::new(AtomicUsize::new(usize::MAX));
        let dir = tempfile::tempdir().unwrap();
        let backend = Vanish {
            kernel,
            creates_left: creates_left.clone(),
        };
        let mount =
            SimMount::mount(Arc::new(Mutex::new(backend)), &dir.path().join("root")).unwrap();
        let socket = dir.path().join("uevent.sock");
        mount.listen_uevents(&socket).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        Host {
            mount,
            socket,
            creates_left,
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.mount.root()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn daemon(&self, bus: &Bus) -> Gpuvirtd {
        Gpuvirtd::start(
            &bus.address,
            self.root(),
            &format!("sim:{}", self.socket.display()),
            &self.state(),
            &[],
        )
        .await
    }

    fn with_kernel_mut<R>(&self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        let r = f(&mut lock_backend(self.mount.backend()).kernel);
        self.mount.publish_pending();
        r
    }

    /// The mdevs sysfs holds.
    fn sysfs_mdevs(&self) -> Vec<uuid::Uuid> {
        let mut out: Vec<uuid::Uuid> = std::fs::read_dir(self.root().join("sys/bus/mdev/devices"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn active(&self, uuid: &str) -> bool {
        self.root()
            .join(format!("sys/bus/mdev/devices/{uuid}"))
            .exists()
    }

    fn ledger(&self) -> Ledger {
        LedgerStore::new(self.state()).load().unwrap()
    }

    fn driver(&self) -> Option<String> {
        driver(self.root(), V100)
    }
}

/// A method error a client can act on: a D-Bus error (not a dropped connection), gpuvirt's own
/// or `Failed` (the design maps an unwritable ledger to `Failed` with the reason).
fn assert_clear_error(name: &str, msg: &str) {
    assert!(
        name.starts_with(api::ERROR_PREFIX) || name == "org.freedesktop.DBus.Error.Failed",
        "{name}: {msg}"
    );
    assert!(!msg.is_empty(), "{name} without a message");
}

/// Waits until `f` holds, or panics with the daemon's log.
async fn wait_for(d: &Gpuvirtd, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- gpuvirtd log ---\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A call with a deadline: a hang is a failure with the daemon's log, never a stuck test.
async fn bounded<T>(d: &Gpuvirtd, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} hung\n--- gpuvirtd log ---\n{}", d.log()),
    }
}

async fn create(conn: &zbus::Connection, uuid: &str) -> Result<OwnedObjectPath, CallErr> {
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

async fn define(conn: &zbus::Connection, uuid: &str) -> Result<zbus::Message, CallErr> {
    call(
        conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "DefineMdev",
        &(V100, "nvidia-300", uuid, no_opts()),
    )
    .await
}

/// AssignPassthrough, through its job when it gets one: Ok(()) on success, the error as text.
async fn assign(d: &Gpuvirtd, conn: &zbus::Connection) -> Result<(), String> {
    match bounded(
        d,
        "AssignPassthrough",
        passthrough(conn, V100, "AssignPassthrough", no_opts()),
    )
    .await
    {
        Err((name, msg)) => Err(format!("{name}: {msg}")),
        Ok((job, plan)) if job.as_str() == "/" => Err(format!("no job: {plan}")),
        Ok((job, _)) => {
            let (ok, name, msg) = bounded(d, "the assign job", wait_job(conn, job.as_str())).await;
            if ok {
                Ok(())
            } else {
                Err(format!("{name}: {msg}"))
            }
        }
    }
}

/// Reads still served: the manager answers and the V100's object is there.
async fn still_serving(d: &Gpuvirtd, conn: &zbus::Connection) {
    let r = bounded(
        d,
        "GetGpus",
        call(
            conn,
            api::MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &(api::MANAGER_INTERFACE,),
        ),
    )
    .await;
    assert!(
        r.is_ok(),
        "manager properties not served: {r:?}\n{}",
        d.log()
    );
    let r = bounded(
        d,
        "the V100's properties",
        call(
            conn,
            &gpu_path(V100),
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &(api::GPU_INTERFACE,),
        ),
    )
    .await;
    assert!(r.is_ok(), "V100 not served: {r:?}\n{}", d.log());
}

/// Sysfs and the ledger agree: every mdev in sysfs (only the daemon creates any here) is
/// recorded, and every recorded transient mdev exists.
fn check_consistent(host: &Host, d: &Gpuvirtd) {
    let ledger = host.ledger();
    for u in host.sysfs_mdevs() {
        assert!(
            ledger.mdevs.contains_key(&u),
            "mdev {u} in sysfs but not in the ledger {ledger:#?}\n{}",
            d.log()
        );
    }
    for (u, rec) in &ledger.mdevs {
        if !rec.defined {
            assert!(
                host.active(&u.to_string()),
                "transient mdev {u} recorded but absent from sysfs\n{}",
                d.log()
            );
        }
    }
}

/// A mount on a directory inside this test's temp dir, undone on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn run(args: &[&str], dir: &Path) {
        let st = Command::new("mount").args(args).arg(dir).status().unwrap();
        assert!(st.success(), "mount {args:?} {} failed", dir.display());
    }

    /// `dir` bound onto itself, read-only.
    fn read_only(dir: &Path) -> Mounted {
        let st = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "bind mount failed");
        let guard = Mounted(dir.to_owned());
        Self::run(&["-o", "remount,bind,ro"], dir);
        guard
    }

    /// A tmpfs of `size` on `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Mounted {
        Self::run(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        );
        Mounted(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_turned_read_only_refuses_cleanly_then_recovers() {
    if !fuse_available() {
        return;
    }
    let host = Host::boot();
    let bus = Bus::start();
    let d = host.daemon(&bus).await;
    let conn = bus.connect().await;
    // A first create with a writable state dir: the ledger exists and records it.
    bounded(&d, "CreateMdev U1", create(&conn, U1))
        .await
        .unwrap();
    assert!(host.active(U1));
    let before = std::fs::read(host.state().join(LEDGER_FILE)).unwrap();
    let driver_before = host.driver();

    let ro = Mounted::read_only(&host.state());
    assert!(
        std::fs::write(host.state().join("probe"), b"x").is_err(),
        "not read-only"
    );
    let (name, msg) = bounded(&d, "CreateMdev on a read-only state dir", create(&conn, U2))
        .await
        .unwrap_err();
    eprintln!("faults: read-only CreateMdev -> {name}: {msg}");
    assert_clear_error(&name, &msg);
    assert!(
        msg.contains("read-only") || msg.contains("ledger") || msg.contains("state"),
        "unclear: {name}: {msg}"
    );
    assert!(
        !host.active(U2),
        "created with no ledger record\n{}",
        d.log()
    );
    check_consistent(&host, &d);

    let refused = assign(&d, &conn).await.unwrap_err();
    eprintln!("faults: read-only AssignPassthrough -> {refused}");
    assert_eq!(host.driver(), driver_before, "slot touched: {refused}");
    assert_eq!(
        std::fs::read(host.state().join(LEDGER_FILE)).unwrap(),
        before,
        "ledger changed on a read-only dir"
    );
    still_serving(&d, &conn).await;

    drop(ro);
    bounded(&d, "CreateMdev U2 once writable", create(&conn, U2))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(host.active(U2));
    assert!(host.ledger().mdevs.contains_key(&U2.parse().unwrap()));
    check_consistent(&host, &d);
    // The V100 holds mdevs now; passthrough is the other way to use it once they are gone.
    for u in [U1, U2] {
        let path = api::mdev_path(&u.parse().unwrap());
        bounded(
            &d,
            "Remove",
            call(
                &conn,
                path.as_str(),
                api::MDEV_INTERFACE,
                "Remove",
                &(no_opts(),),
            ),
        )
        .await
        .unwrap();
    }
    assign(&d, &conn)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert_eq!(host.driver().as_deref(), Some("vfio-pci"));
    assert!(host.ledger().function(V100.parse().unwrap()).is_some());
}

/// Fills the filesystem holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = [0u8; 512];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Short files under the page size may still fit in the last page: take them too.
    for i in 0.. {
        let p = dir.join(format!("filler{i}"));
        match std::fs::write(&p, [0u8; 64]) {
            Ok(()) => {}
            Err(_) => break,
        }
    }
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_full_refuses_cleanly_and_keeps_the_old_ledger() {
    if !fuse_available() {
        return;
    }
    let host = Host::boot();
    let _tmpfs = Mounted::tmpfs(&host.state(), "16k");
    let bus = Bus::start();
    let d = host.daemon(&bus).await;
    let conn = bus.connect().await;
    bounded(&d, "CreateMdev U1", create(&conn, U1))
        .await
        .unwrap();
    let driver_before = host.driver();
    let ledger_path = host.state().join(LEDGER_FILE);
    let before = std::fs::read(&ledger_path).unwrap();

    let filler = fill(&host.state());
    let (name, msg) = bounded(&d, "CreateMdev on a full state dir", create(&conn, U2))
        .await
        .unwrap_err();
    eprintln!("faults: full CreateMdev -> {name}: {msg}");
    assert_clear_error(&name, &msg);
    assert!(
        msg.contains("space") || msg.contains("ledger") || msg.contains("state"),
        "unclear: {name}: {msg}"
    );
    assert!(
        !host.active(U2),
        "created with no ledger record\n{}",
        d.log()
    );
    let refused = assign(&d, &conn).await.unwrap_err();
    eprintln!("faults: full AssignPassthrough -> {refused}");
    assert_eq!(host.driver(), driver_before, "slot touched: {refused}");
    // Atomic write: the old file is untouched and parses, and no temporary is left behind.
    assert_eq!(std::fs::read(&ledger_path).unwrap(), before);
    assert!(host.ledger().mdevs.contains_key(&U1.parse().unwrap()));
    assert!(!host.state().join("ledger.json.tmp").exists());
    check_consistent(&host, &d);
    still_serving(&d, &conn).await;

    for e in std::fs::read_dir(host.state()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("filler")
        {
            std::fs::remove_file(&p).unwrap();
        }
    }
    assert!(!filler.exists());
    bounded(&d, "CreateMdev U2 with space again", create(&conn, U2))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(host.active(U2));
    assert!(host.ledger().mdevs.contains_key(&U2.parse().unwrap()));
    check_consistent(&host, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_vanishing_during_create_then_replug_restores_definitions() {
    if !fuse_available() {
        return;
    }
    let host = Host::boot();
    let bus = Bus::start();
    let d = host.daemon(&bus).await;
    let conn = bus.connect().await;
    // One create goes through, the next finds the card gone.
    host.creates_left.store(1, Ordering::SeqCst);
    let first = bounded(&d, "DefineMdev U1", define(&conn, U1)).await;
    assert!(first.is_ok(), "{first:?}\n{}", d.log());
    wait_for(&d, "U1 active", || host.active(U1)).await;
    let second = bounded(&d, "DefineMdev U2", define(&conn, U2)).await;
    eprintln!("faults: parent gone during create -> {second:?}");
    let gone = !host
        .root()
        .join(format!("sys/bus/pci/devices/{V100}"))
        .exists();
    assert!(gone, "the trap never fired\n{}", d.log());
    if let Err((name, msg)) = &second {
        assert_clear_error(name, msg);
    }
    wait_for(&d, "U1 gone with its parent", || !host.active(U1)).await;
    // A define that succeeded reports its failed start in the log (the call itself only
    // records the definition).
    if second.is_ok() {
        wait_for(&d, "the failed start logged", || {
            d.log()
                .lines()
                .any(|l| l.contains(U2) && l.contains(&format!("{V100} is gone")))
        })
        .await;
    }
    still_serving_without_v100(&d, &conn).await;
    // Both definitions are kept for the card's return (U2's define is recorded even though
    // its start met ENODEV), or U2's define was refused and is not recorded.
    let ledger = host.ledger();
    assert!(ledger.mdevs.get(&U1.parse().unwrap()).unwrap().defined);
    let u2_recorded = ledger.mdevs.contains_key(&U2.parse().unwrap());
    assert_eq!(
        u2_recorded,
        second.is_ok(),
        "ledger vs reply disagree on U2: {second:?} {ledger:#?}"
    );
    check_consistent(&host, &d);

    host.with_kernel_mut(|k| k.replug(V100.parse().unwrap()).unwrap());
    wait_for(&d, "U1 recreated after replug", || host.active(U1)).await;
    if second.is_ok() {
        wait_for(&d, "U2 recreated after replug", || host.active(U2)).await;
    } else {
        // Refused while the card was gone; defining it now works.
        bounded(&d, "DefineMdev U2 again", define(&conn, U2))
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
        wait_for(&d, "U2 active", || host.active(U2)).await;
    }
    check_consistent(&host, &d);
    still_serving(&d, &conn).await;

    // A synchronous CreateMdev that meets the vanishing card fails with the reason, records
    // nothing, and the definition comes back again with the card. U2 makes room first (the
    // V100 holds two of this type).
    bounded(
        &d,
        "UndefineMdev U2",
        call(
            &conn,
            api::MANAGER_PATH,
            api::MANAGER_INTERFACE,
            "UndefineMdev",
            &(U2, no_opts()),
        ),
    )
    .await
    .unwrap();
    let u2_path = api::mdev_path(&U2.parse().unwrap());
    bounded(
        &d,
        "Remove U2",
        call(
            &conn,
            u2_path.as_str(),
            api::MDEV_INTERFACE,
            "Remove",
            &(no_opts(),),
        ),
    )
    .await
    .unwrap();
    assert!(!host.active(U2));
    host.creates_left.store(0, Ordering::SeqCst);
    let (name, msg) = bounded(&d, "CreateMdev U3 as the card vanishes", create(&conn, U3))
        .await
        .unwrap_err();
    eprintln!("faults: CreateMdev as the parent vanishes -> {name}: {msg}");
    assert_clear_error(&name, &msg);
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.NoSuchDevice", "{msg}");
    assert!(
        msg.contains(&format!("{V100} is gone")),
        "the reason is not named: {name}: {msg}"
    );
    wait_for(&d, "U1 gone with its parent again", || !host.active(U1)).await;
    assert!(!host.active(U3));
    assert!(
        !host.ledger().mdevs.contains_key(&U3.parse().unwrap()),
        "U3 recorded though its create failed\n{}",
        d.log()
    );
    check_consistent(&host, &d);
    still_serving_without_v100(&d, &conn).await;
    host.with_kernel_mut(|k| k.replug(V100.parse().unwrap()).unwrap());
    wait_for(&d, "U1 recreated after the second replug", || {
        host.active(U1)
    })
    .await;
    assert!(!host.active(U3), "a failed transient create came back");
    assert!(!host.active(U2), "an undefined, removed mdev came back");
    check_consistent(&host, &d);
    still_serving(&d, &conn).await;
}

/// Reads served while the V100 is gone: the manager still answers.
async fn still_serving_without_v100(d: &Gpuvirtd, conn: &zbus::Connection) {
    let r = bounded(
        d,
        "manager properties",
        call(
            conn,
            api::MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &(api::MANAGER_INTERFACE,),
        ),
    )
    .await;
    assert!(r.is_ok(), "manager not served: {r:?}\n{}", d.log());
}

const EXAMPLE_POLICY: &str = include_str!("../../../config/policy.toml");

/// The Manager's `LastApply`.
async fn last_apply(d: &Gpuvirtd, conn: &zbus::Connection) -> String {
    let r = bounded(
        d,
        "LastApply",
        call(
            conn,
            api::MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            &(api::MANAGER_INTERFACE, "LastApply"),
        ),
    )
    .await
    .unwrap();
    let v: zbus::zvariant::OwnedValue = r.body().deserialize().unwrap();
    String::try_from(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_vanishing_during_policy_apply_then_replug_converges() {
    if !fuse_available() {
        return;
    }
    let host = Host::boot();
    // The start-up apply creates the policy's two vGPUs; the card drops off at the second.
    host.creates_left.store(1, Ordering::SeqCst);
    let policy = host.dir.path().join("policy.toml");
    std::fs::write(&policy, EXAMPLE_POLICY).unwrap();
    let bus = Bus::start();
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.state(),
        &["--policy", policy.to_str().unwrap()],
    )
    .await;
    let conn = bus.connect().await;
    let want: Vec<uuid::Uuid> = {
        let mut v: Vec<uuid::Uuid> = (0..2)
            .map(|i| gpuvirt_core::plan::mdev_uuid("vdi", V100, i))
            .collect();
        v.sort();
        v
    };
    wait_for(&d, "the trap to fire", || {
        host.creates_left.load(Ordering::SeqCst) == usize::MAX
    })
    .await;
    let device = host.root().join(format!("sys/bus/pci/devices/{V100}"));
    assert!(!device.exists(), "the card is still there\n{}", d.log());
    wait_for(&d, "the apply reported", || {
        d.log().contains("ENODEV") || d.log().contains("is gone")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let report = loop {
        let r = last_apply(&d, &conn).await;
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "no LastApply\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("faults: policy apply as the parent vanishes -> LastApply:\n{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("failed: ") && l.contains(&format!("{V100} is gone"))),
        "the failure is not reported: {report}"
    );
    wait_for(&d, "mdevs gone with their parent", || {
        host.sysfs_mdevs().is_empty()
    })
    .await;
    // Whatever the ledger keeps for the vanished card names only the policy's UUIDs.
    let ledger = host.ledger();
    for u in ledger.mdevs.keys() {
        assert!(want.contains(u), "unexpected ledger mdev {u}: {ledger:#?}");
    }
    still_serving_without_v100(&d, &conn).await;

    host.with_kernel_mut(|k| k.replug(V100.parse().unwrap()).unwrap());
    wait_for(&d, "the policy's two vGPUs back with their UUIDs", || {
        host.sysfs_mdevs() == want
    })
    .await;
    wait_for(&d, "the ledger records both", || {
        let l = host.ledger();
        want.iter().all(|u| l.mdevs.contains_key(u))
    })
    .await;
    check_consistent(&host, &d);
    still_serving(&d, &conn).await;
    // The steps the failure left unattempted are done too: a later apply converged and
    // LastApply says so (the runbook fixture has no initramfs tool, so that step may fail).
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let r = last_apply(&d, &conn).await;
        if r.contains("done: write /etc/modprobe.d/gpuvirt.conf") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no converging apply; LastApply: {r}\n--- log ---\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("faults: LastApply after replug:\n{after}");
    assert!(!after.contains("failed: create mdev"), "{after}");
    assert!(host.root().join("etc/modprobe.d/gpuvirt.conf").exists());
}
