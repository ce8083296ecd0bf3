//! The executor's sharding actions end to end through the simulated kernel behind FUSE: mdevs
//! on the runbook's V100 created to capacity then ENOSPC, EEXIST of gpuvirt's own mdev taken as
//! success and of a foreign one refused, a busy mdev not removed, a foreign mdev never removed;
//! SR-IOV and NVIDIA per-VF vGPUs on the Hopper host with ownership in the ledger.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gpuvirt_core::exec::{ErrorKind, ExecError, Executor, StepOutcome};
use gpuvirt_core::ledger::LedgerStore;
use gpuvirt_core::plan::Action;
use gpuvirt_core::{PciAddress, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;
use uuid::Uuid;

const PARENT: &str = "0000:41:00.0";
const TYPE: &str = "nvidia-300";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn mount(name: &str) -> (SimMount<Kernel>, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(kernel)), &dir.path().join("root")).unwrap();
    let state = dir.path().join("state");
    (mnt, state, dir)
}

fn executor(mnt: &SimMount<Kernel>, state: &Path) -> Executor {
    Executor::open(Root::new(mnt.root()), LedgerStore::new(state))
        .unwrap()
        .0
}

fn create(uuid: Uuid, type_id: &str) -> Action {
    Action::CreateMdev {
        parent: PARENT.into(),
        type_id: type_id.into(),
        type_name: None,
        uuid,
    }
}

fn remove(uuid: Uuid) -> Action {
    Action::RemoveMdev {
        parent: PARENT.into(),
        type_id: Some(TYPE.into()),
        uuid,
    }
}

fn available(mnt: &SimMount<Kernel>) -> String {
    fs::read_to_string(mnt.sys().join(format!(
        "class/mdev_bus/{PARENT}/mdev_supported_types/{TYPE}/available_instances"
    )))
    .unwrap()
    .trim()
    .to_string()
}

fn mdev_exists(mnt: &SimMount<Kernel>, uuid: Uuid) -> bool {
    mnt.sys().join(format!("bus/mdev/devices/{uuid}")).exists()
}

#[test]
fn mdevs_to_capacity_then_enospc_with_ownership_kept_straight() {
    if !fuse_available() {
        return;
    }
    let (mnt, state, _dir) = mount("runbook");
    let mut exec = executor(&mnt, &state);
    let u = |n: u128| Uuid::from_u128(0x6770_0000 + n);
    assert_eq!(available(&mnt), "2");
    for n in 1..=2 {
        let r = exec.run(&create(u(n), TYPE), Some("vdi"));
        assert!(r.succeeded(), "{r}");
        assert!(mdev_exists(&mnt, u(n)));
    }
    assert_eq!(available(&mnt), "0");
    let r = exec.run(&create(u(3), TYPE), Some("vdi"));
    let err = r.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::NoCapacity { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NoCapacity);
    assert!(err.to_string().contains("0000:41:00.0"), "{err}");
    assert!(!mdev_exists(&mnt, u(3)));
    // The ledger (in memory and on disk) has exactly the two gpuvirt made.
    let on_disk = executor(&mnt, &state);
    for l in [exec.ledger(), on_disk.ledger()] {
        let owned: Vec<Uuid> = l.mdevs.keys().copied().collect();
        assert_eq!(owned, [u(1), u(2)]);
        assert!(l.mdevs.values().all(|m| m.created_by_gpuvirt
            && m.type_id == TYPE
            && m.rule.as_deref() == Some("vdi")));
    }

    // Creating one of ours again: EEXIST with the right type is success.
    let again = exec.run(&create(u(1), TYPE), Some("vdi"));
    assert!(again.succeeded(), "{again}");
    assert!(again.steps.iter().any(
        |s| matches!(&s.outcome, StepOutcome::Skipped { why } if why.contains("already exists"))
    ));

    // A busy mdev (a VM has it open) is not removed, and stays owned.
    lock_backend(mnt.backend()).set_mdev_busy(u(1), true);
    let r = exec.run(&remove(u(1)), None);
    let err = r.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("VM"), "{err}");
    assert!(mdev_exists(&mnt, u(1)));
    assert!(exec.ledger().owns_mdev(&u(1)));
    lock_backend(mnt.backend()).set_mdev_busy(u(1), false);
    assert!(exec.run(&remove(u(1)), None).succeeded());
    assert!(!mdev_exists(&mnt, u(1)));
    assert!(!exec.ledger().owns_mdev(&u(1)));

    // Another tool's mdev (written straight to create, as mdevctl does) is never removed, and
    // creating over its UUID is AlreadyExists.
    let foreign = Uuid::from_u128(0xf0f0);
    OpenOptions::new()
        .write(true)
        .open(mnt.sys().join(format!(
            "class/mdev_bus/{PARENT}/mdev_supported_types/{TYPE}/create"
        )))
        .unwrap()
        .write_all(foreign.to_string().as_bytes())
        .unwrap();
    let r = exec.run(&remove(foreign), None);
    assert!(matches!(r.error, Some(ExecError::NotOwned { .. })), "{r}");
    assert!(mdev_exists(&mnt, foreign));
    let r = exec.run(&create(foreign, TYPE), None);
    let err = r.error.as_ref().unwrap();
    assert!(
        matches!(err, ExecError::AlreadyExists { existing_type: Some(t), .. } if t == TYPE),
        "{err:?}"
    );
    assert!(!exec.ledger().mdevs.contains_key(&foreign));

    // Unknown types and parents are refused before any write.
    let r = exec.run(&create(u(9), "nvidia-999"), None);
    assert!(
        matches!(r.error, Some(ExecError::UnknownType { .. })),
        "{r}"
    );
    assert!(r.steps.is_empty());
    let r = exec.run(
        &Action::CreateMdev {
            parent: "0000:99:00.0".into(),
            type_id: TYPE.into(),
            type_name: None,
            uuid: u(9),
        },
        None,
    );
    let err = r.error.unwrap();
    assert!(matches!(err, ExecError::NoSuchParent { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NoSuchDevice);
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn vgpu(mnt: &SimMount<Kernel>, vf: &str) -> String {
    fs::read_to_string(
        mnt.sys()
            .join(format!("bus/pci/devices/{vf}/nvidia/current_vgpu_type")),
    )
    .unwrap()
    .trim()
    .to_string()
}

#[test]
fn sriov_and_nvidia_vgpus_on_the_hopper_host() {
    if !fuse_available() {
        return;
    }
    let (mnt, state, _dir) = mount("hopper-sriov");
    let mut exec = executor(&mnt, &state);
    let pf = addr("0000:9a:00.0");
    let numvfs = |mnt: &SimMount<Kernel>| {
        fs::read_to_string(mnt.sys().join(format!("bus/pci/devices/{pf}/sriov_numvfs")))
            .unwrap()
            .trim()
            .to_string()
    };
    let set = |to| Action::SetSriovNumVfs { pf, from: 0, to };
    let r = exec.run(&set(4), Some("h100"));
    assert!(r.succeeded(), "{r}");
    assert_eq!(numvfs(&mnt), "4");
    assert!(mnt.sys().join("bus/pci/devices/0000:9a:00.7").exists());
    let rec = &exec.ledger().sriov[&pf];
    assert_eq!((rec.num_vfs, rec.original_num_vfs), (4, 0));

    // Two 40C vGPUs fill the card; a third is not creatable.
    for vf in ["0000:9a:00.4", "0000:9a:00.5"] {
        let r = exec.run(
            &Action::SetVgpuType {
                vf: addr(vf),
                type_id: 1151,
                type_name: None,
            },
            Some("h100"),
        );
        assert!(r.succeeded(), "{r}");
        assert_eq!(vgpu(&mnt, vf), "1151");
    }
    let r = exec.run(
        &Action::SetVgpuType {
            vf: addr("0000:9a:00.6"),
            type_id: 1151,
            type_name: None,
        },
        None,
    );
    assert!(
        matches!(r.error, Some(ExecError::UnknownType { .. })),
        "{r}"
    );
    assert_eq!(vgpu(&mnt, "0000:9a:00.6"), "0");
    let owned: Vec<PciAddress> = exec.ledger().vgpus.keys().copied().collect();
    assert_eq!(owned, [addr("0000:9a:00.4"), addr("0000:9a:00.5")]);

    // The vGPUs on the other card were not made by gpuvirt.
    let r = exec.run(
        &Action::ClearVgpuType {
            vf: addr("0000:18:00.4"),
            type_id: 1151,
        },
        None,
    );
    assert!(matches!(r.error, Some(ExecError::NotOwned { .. })), "{r}");
    assert_eq!(vgpu(&mnt, "0000:18:00.4"), "1151");

    for vf in ["0000:9a:00.4", "0000:9a:00.5"] {
        let r = exec.run(
            &Action::ClearVgpuType {
                vf: addr(vf),
                type_id: 1151,
            },
            None,
        );
        assert!(r.succeeded(), "{r}");
        assert_eq!(vgpu(&mnt, vf), "0");
    }
    assert!(exec.ledger().vgpus.is_empty());

    // 4 -> 2 goes through 0 (the kernel refuses non-zero to non-zero).
    let r = exec.run(&set(2), Some("h100"));
    assert!(r.succeeded(), "{r}");
    let writes: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.description.starts_with("write"))
        .map(|s| s.description.as_str())
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes[0].starts_with("write 0 to"), "{writes:?}");
    assert_eq!(numvfs(&mnt), "2");
    assert_eq!(exec.ledger().sriov[&pf].original_num_vfs, 0);

    // Above sriov_totalvfs: ERANGE, typed.
    let r = exec.run(&set(64), None);
    assert!(matches!(r.error, Some(ExecError::TooManyVfs { .. })), "{r}");

    // Back to the original count: gpuvirt no longer owns anything on the PF.
    assert!(exec.run(&set(0), None).succeeded());
    assert_eq!(numvfs(&mnt), "0");
    assert!(exec.ledger().sriov.is_empty());
    assert!(executor(&mnt, &state).ledger().sriov.is_empty());
}

/// A definition's attributes (mdevctl's ordered `attrs`) are written to the new device after its
/// create, in order; the first that fails is the creation's error, the half-made device is
/// removed and the ledger holds the definition as before, not a running device.
#[test]
fn a_definitions_attributes_are_written_in_order_and_a_failed_one_removes_the_device() {
    if !fuse_available() {
        return;
    }
    use gpuvirt_core::ledger::{MdevRecord, MdevStart};
    let (mnt, state, _dir) = mount("runbook");
    let mut exec = executor(&mnt, &state);
    let define = |exec: &mut Executor, uuid: Uuid, attrs: &[(&str, &str)]| {
        exec.update_ledger(|l| {
            l.mdevs.insert(
                uuid,
                MdevRecord {
                    parent: PARENT.into(),
                    type_id: TYPE.into(),
                    start: MdevStart::Manual,
                    attrs: attrs
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    rule: None,
                    defined: true,
                    created_by_gpuvirt: false,
                },
            );
        })
        .unwrap();
    };
    // Written in order, after the create (`uevent` takes any write: "change" and "add" make
    // the kernel send that event).
    let good = Uuid::from_u128(0xa11);
    define(&mut exec, good, &[("uevent", "change"), ("uevent", "add")]);
    let r = exec.run(&create(good, TYPE), None);
    assert!(r.error.is_none(), "{r}");
    assert!(mdev_exists(&mnt, good));
    let writes: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.description.starts_with("write "))
        .map(|s| s.description.as_str())
        .collect();
    let attr = |v: &str| format!("write {v} to sys/bus/mdev/devices/{good}/uevent");
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert!(writes[0].ends_with("/create"), "{writes:?}");
    assert_eq!(writes[1..], [attr("change"), attr("add")], "{writes:?}");
    assert!(exec.ledger().owns_mdev(&good));

    // The second attribute does not exist: the creation fails naming it, the device is gone.
    let bad = Uuid::from_u128(0xbad);
    define(
        &mut exec,
        bad,
        &[("uevent", "x"), ("no_such_attribute", "1")],
    );
    let before = exec.ledger().mdevs[&bad].clone();
    let r = exec.run(&create(bad, TYPE), None);
    let err = r
        .error
        .as_ref()
        .expect("the failed attribute write is the error");
    let text = gpuvirt_core::error_chain(err);
    assert!(
        text.contains("no_such_attribute") && text.contains("removed"),
        "{text}"
    );
    assert!(
        !mdev_exists(&mnt, bad),
        "the half-made device was left behind"
    );
    assert_eq!(
        exec.ledger().mdevs[&bad],
        before,
        "the ledger kept the failed device"
    );

    // An attribute name that is not a file name is refused the same way.
    let odd = Uuid::from_u128(0x0dd);
    define(&mut exec, odd, &[("../remove", "1")]);
    let r = exec.run(&create(odd, TYPE), None);
    assert_eq!(
        r.error.as_ref().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgs),
        "{r}"
    );
    assert!(!mdev_exists(&mnt, odd));
}
