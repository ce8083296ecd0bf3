//! Path safety of the executor: hostile names in actions and in the ledger are refused before
//! any I/O, and nothing outside the root (nor anything the action does not own inside it) is
//! ever created, changed or removed.
//!
//! Each case builds a small host (the runbook's V100 with its mdev parent) in `<tmp>/root`,
//! canary files next to it in `<tmp>/canary` and inside it at `<root>/canary`, and compares a
//! snapshot of the whole `<tmp>` before and after running one action.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used)]

mod fuzz_support;
use fuzz_support::Fuzz;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use gpuvirt_core::exec::{ExecError, Executor};
use gpuvirt_core::ledger::{FunctionRecord, Ledger, LedgerStore, SlotRecord, SlotState};
use gpuvirt_core::pathsafe;
use gpuvirt_core::plan::action::SlotReturn;
use gpuvirt_core::plan::Action;
use gpuvirt_core::testing::{PciDev, TreeBuilder, TypeSpec};
use gpuvirt_core::{PciAddress, Root};
use proptest::prelude::*;
use uuid::Uuid;

const GPU: &str = "0000:41:00.0";

/// What one path holds: file contents, a link target, or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Link(PathBuf),
    Dir,
}

/// Every path below `dir` (links not followed), relative to `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(base, &path, out);
            } else {
                out.insert(rel, Node::File(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A host with one V100 (bound to vfio-pci, mdev parent offering `nvidia-300`), canaries
/// inside and outside the root, and a state directory for the ledger.
struct Host {
    tmp: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let t = TreeBuilder::new(tmp.path().join("root"));
        let gpu = PciDev::new(GPU, "pci0000:40/0000:40:03.1", 0x030200, 0x10de, 0x1db4)
            .driver("vfio-pci")
            .group(66);
        let dir = t.pci(&gpu);
        t.mdev_parent(
            GPU,
            dir.strip_prefix("sys").unwrap(),
            &[TypeSpec::new("nvidia-300", "GRID V100-8C", None, 2)],
        );
        t.module("vfio_pci");
        t.file("canary", "inside the root");
        t.file("etc/modprobe.d/foreign.conf", "options nouveau modeset=0\n");
        for name in ["canary/create", "canary/unbind", "canary/bind", "canary/x"] {
            let p = tmp.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "outside the root").unwrap();
        }
        fs::create_dir_all(tmp.path().join("state")).unwrap();
        Self { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn store(&self) -> LedgerStore {
        LedgerStore::new(self.tmp.path().join("state"))
    }

    fn executor(&self) -> Executor {
        Executor::open(Root::new(self.root()), self.store())
            .unwrap()
            .0
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, Node> {
        snapshot(self.tmp.path())
    }
}

/// Every difference between two snapshots is a change to a file that already existed below
/// `root/<inside>`, or anything in the state directory; nothing else appeared, changed or went.
fn assert_changes_confined(
    before: &BTreeMap<PathBuf, Node>,
    after: &BTreeMap<PathBuf, Node>,
    inside: &[&str],
) {
    let allowed = |p: &Path| {
        p.starts_with("state")
            || inside
                .iter()
                .any(|i| p.starts_with(Path::new("root").join(i)))
    };
    for (p, node) in after {
        match before.get(p) {
            Some(old) if old == node => {}
            Some(_) => assert!(allowed(p), "{} changed", p.display()),
            None => assert!(
                allowed(p) && !p.starts_with("root/sys"),
                "{} was created",
                p.display()
            ),
        }
    }
    for p in before.keys() {
        assert!(
            after.contains_key(p) || (allowed(p) && !p.starts_with("root/sys")),
            "{} was removed",
            p.display()
        );
    }
    for canary in ["canary/create", "canary/unbind", "canary/x", "root/canary"] {
        assert_eq!(before.get(Path::new(canary)), after.get(Path::new(canary)));
    }
}

/// Strings that try to climb out, or to become options.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../../../canary".to_string()),
        Just("../../../../../canary/x".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("/".to_string()),
        Just("-r".to_string()),
        Just("nvidia-300/../../../../../../../canary".to_string()),
        Just("vfio-pci\0".to_string()),
        Just("a".repeat(4096)),
        Just(GPU.to_string()),
        Just("nvidia-300".to_string()),
        "[a-z0-9./_-]{0,24}",
        "(\\.\\./){1,8}canary(/[a-z]{1,6})?",
        ".{0,32}",
    ]
}

fn hostile_path() -> impl Strategy<Value = PathBuf> {
    prop_oneof![
        Just(PathBuf::from("etc/../../canary/x")),
        Just(PathBuf::from("/etc/modprobe.d/../../../canary/x")),
        Just(PathBuf::from("etc/modprobe.d/./../../canary/x")),
        Just(PathBuf::from("../canary/x")),
        Just(PathBuf::from("/canary/x")),
        Just(PathBuf::from("canary")),
        Just(PathBuf::from("etc")),
        Just(PathBuf::from("etc/modprobe.d/foreign.conf")),
        Just(PathBuf::from("etc/modprobe.d/gpuvirt.conf")),
        "(/?)(etc|\\.\\.|\\.|usr|canary)(/(\\.\\.|\\.|etc|modprobe\\.d|canary|x|[a-z]{1,4})){0,5}"
            .prop_map(PathBuf::from),
    ]
}

/// Runs `action` and checks what it did: an invalid name fails with `InvalidName` having done
/// nothing at all (no step, no ledger write), and anything else stays inside `inside`.
fn run_confined(host: &Host, action: &Action, names_valid: bool, inside: &[&str]) {
    let before = host.snapshot();
    let mut exec = host.executor();
    let report = exec.run(action, Some("fuzz"));
    let after = host.snapshot();
    if !names_valid {
        match &report.error {
            Some(ExecError::InvalidName(e)) => {
                assert!(e.to_string().contains("is not acceptable"), "{e}")
            }
            other => panic!("{action:?} was not refused as a bad name: {other:?}"),
        }
        assert!(report.steps.is_empty(), "steps ran: {:?}", report.steps);
        assert_eq!(before, after, "a refused action touched the filesystem");
    }
    assert_changes_confined(&before, &after, inside);
}

#[test]
fn create_mdev_with_hostile_names() {
    let fuzz = Fuzz::new(file!(), "create_mdev_with_hostile_names", 64);
    proptest!(fuzz.config(), |(parent in hostile_name(), type_id in hostile_name())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let host = Host::new();
        let valid = pathsafe::mdev_parent(&parent).is_ok() && pathsafe::mdev_type(&type_id).is_ok();
        let action = Action::CreateMdev {
            parent,
            type_id,
            type_name: None,
            uuid: Uuid::from_u128(0x1234),
        };
        run_confined(&host, &action, valid, &["sys/devices"]);
    });
    fuzz.report();
}

#[test]
fn load_module_with_hostile_names() {
    let fuzz = Fuzz::new(file!(), "load_module_with_hostile_names", 64);
    proptest!(fuzz.config(), |(module in hostile_name())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let host = Host::new();
        let valid = pathsafe::module(&module).is_ok();
        run_confined(&host, &Action::LoadModule { module }, valid, &[]);
    });
    fuzz.report();
}

#[test]
fn boot_files_with_hostile_paths() {
    let fuzz = Fuzz::new(file!(), "boot_files_with_hostile_paths", 64);
    proptest!(fuzz.config(), |(path in hostile_path(), remove in any::<bool>())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let host = Host::new();
        let valid = gpuvirt_core::exec::names::boot_file(&path).is_ok();
        let action = if remove {
            Action::RemoveBootFile { path }
        } else {
            Action::WriteBootFile { path, contents: "blacklist nouveau\n".into() }
        };
        run_confined(&host, &action, valid, &["etc"]);
        // A file gpuvirt does not own is never overwritten or removed.
        prop_assert_eq!(
            fs::read_to_string(host.root().join("etc/modprobe.d/foreign.conf")).unwrap(),
            "options nouveau modeset=0\n"
        );
    });
    fuzz.report();
}

/// A corrupted or forged ledger names the driver to return a card to: a hostile name is
/// refused before it is joined onto `sys/bus/pci/drivers`.
#[test]
fn return_to_a_hostile_original_driver() {
    let fuzz = Fuzz::new(file!(), "return_to_a_hostile_original_driver", 64);
    proptest!(fuzz.config(), |(original in hostile_name())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let host = Host::new();
        let address: PciAddress = GPU.parse().unwrap();
        let mut ledger = Ledger::default();
        ledger.slots.insert(Ledger::slot_key(address.slot()), SlotRecord {
            functions: vec![FunctionRecord { address, original_driver: Some(original.clone()) }],
            rule: None,
            state: SlotState::Assigned,
            removal: None,
        });
        host.store().save(&ledger).unwrap();
        let before = host.snapshot();
        let mut exec = host.executor();
        let action = Action::ReturnSlotToHost {
            slot: address.slot(),
            functions: vec![SlotReturn {
                address,
                driver: Some("vfio-pci".into()),
                original_driver: Some(original.clone()),
            }],
        };
        let report = exec.run(&action, None);
        let after = host.snapshot();
        // Only the device's own attributes (driver_override) and the ledger may change.
        assert_changes_confined(&before, &after, &["sys/devices"]);
        if pathsafe::driver(&original).is_err() {
            prop_assert!(report.error.is_some());
            let bound_to_bad_name = report
                .steps
                .iter()
                .filter_map(|s| s.path.as_deref())
                .any(|p| p.starts_with("sys/bus/pci/drivers") && !p.starts_with("sys/bus/pci/drivers/vfio-pci"));
            prop_assert!(!bound_to_bad_name, "{:?}", report.steps);
        }
    });
    fuzz.report();
}

/// An mdev type id whose `create` resolves (through the parent's link) to `<tmp>/canary/create`.
const AIMED_AT_CANARY: &str = "nvidia-300/../../../../../../../../canary";

/// The hand-picked traversal attempts, each checked explicitly (so a reader sees them).
#[test]
fn classic_traversal_attempts_are_refused_before_any_io() {
    let attempts = [
        Action::CreateMdev {
            parent: "../../../../canary".into(),
            type_id: "x".into(),
            type_name: None,
            uuid: Uuid::nil(),
        },
        Action::CreateMdev {
            parent: GPU.into(),
            type_id: "../../../../../../../canary".into(),
            type_name: None,
            uuid: Uuid::nil(),
        },
        Action::CreateMdev {
            parent: GPU.into(),
            type_id: AIMED_AT_CANARY.into(),
            type_name: None,
            uuid: Uuid::nil(),
        },
        Action::LoadModule {
            module: "-v".into(),
        },
        Action::LoadModule {
            module: "../../canary/x".into(),
        },
        Action::WriteBootFile {
            path: "etc/../../canary/x".into(),
            contents: "x".into(),
        },
        Action::RemoveBootFile {
            path: "/etc/modprobe.d/../../../canary/x".into(),
        },
    ];
    let host = Host::new();
    // Without the check, this type id's `create` would be the canary outside the root.
    let aimed = host
        .root()
        .join("sys/class/mdev_bus")
        .join(GPU)
        .join("mdev_supported_types")
        .join(AIMED_AT_CANARY)
        .join("create");
    assert_eq!(
        fs::canonicalize(aimed).unwrap(),
        fs::canonicalize(host.tmp.path().join("canary/create")).unwrap()
    );
    for action in &attempts {
        run_confined(&host, action, false, &[]);
    }
}
