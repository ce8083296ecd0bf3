//! The executor's file side against a tempdir root: boot files with gpuvirt's header (and
//! refusal to touch files it did not write), the initramfs tool detected and run as a test
//! double inside the root, the module loader's double, and input validated before any I/O.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gpuvirt_core::exec::{ErrorKind, ExecError, Executor, StepOutcome, OWNED_FILE_MARKER};
use gpuvirt_core::ledger::LedgerStore;
use gpuvirt_core::plan::Action;
use gpuvirt_core::{PciAddress, Root};
use uuid::Uuid;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/sys/bus/pci/devices")).unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn executor(&self) -> Executor {
        Executor::open(
            Root::new(self.root()),
            LedgerStore::new(self.dir.path().join("state")),
        )
        .unwrap()
        .0
    }

    /// A shell script under the root that logs its name and arguments, then exits `code`.
    fn double(&self, rel: &str, code: i32, extra: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let log = self.root().join("tools.log");
        fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{rel} $*\" >> {}\n{extra}\nexit {code}\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root().join("tools.log")).unwrap_or_default()
    }
}

fn write_file(path: &str, contents: &str) -> Action {
    Action::WriteBootFile {
        path: PathBuf::from(path),
        contents: contents.to_string(),
    }
}

#[test]
fn boot_files_carry_the_header_and_foreign_files_are_left_alone() {
    let s = Setup::new();
    let mut exec = s.executor();
    let conf = "etc/modprobe.d/gpuvirt.conf";
    let r = exec.run(&write_file(conf, "blacklist nouveau\n"), None);
    assert!(r.succeeded(), "{r}");
    let text = fs::read_to_string(s.root().join(conf)).unwrap();
    assert!(text.starts_with(OWNED_FILE_MARKER), "{text}");
    assert!(text.ends_with("blacklist nouveau\n"), "{text}");
    // The planner's own header is kept as is, not doubled.
    let planned = "# Written by gpuvirt from its device policy; edits are overwritten.\noptions nouveau modeset=0\n";
    assert!(exec.run(&write_file(conf, planned), None).succeeded());
    assert_eq!(fs::read_to_string(s.root().join(conf)).unwrap(), planned);
    // No temporaries left.
    let names: Vec<String> = fs::read_dir(s.root().join("etc/modprobe.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["gpuvirt.conf"]);

    // A file of the administrator's is neither overwritten nor removed.
    let theirs = "etc/modprobe.d/blacklist-nvidia.conf";
    fs::write(s.root().join(theirs), "blacklist nvidia\n").unwrap();
    let r = exec.run(&write_file(theirs, "x\n"), None);
    let err = r.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::ForeignFile { .. }), "{err:?}");
    assert!(err.to_string().contains("not written by gpuvirt"), "{err}");
    assert_eq!(err.kind(), ErrorKind::PolicyViolation);
    let r = exec.run(
        &Action::RemoveBootFile {
            path: PathBuf::from(theirs),
        },
        None,
    );
    assert!(matches!(r.error, Some(ExecError::ForeignFile { .. })));
    assert_eq!(
        fs::read_to_string(s.root().join(theirs)).unwrap(),
        "blacklist nvidia\n"
    );

    // Ours is removed; removing it again is a no-op.
    let rm = Action::RemoveBootFile {
        path: PathBuf::from(conf),
    };
    assert!(exec.run(&rm, None).succeeded());
    assert!(!s.root().join(conf).exists());
    let again = exec.run(&rm, None);
    assert!(again.succeeded());
    assert!(matches!(
        again.steps[0].outcome,
        StepOutcome::Skipped { .. }
    ));
}

#[test]
fn boot_file_paths_outside_etc_are_rejected_before_any_io() {
    let s = Setup::new();
    let mut exec = s.executor();
    for bad in [
        "etc/../../outside",
        "usr/lib/modprobe.d/x.conf",
        "etc/modprobe.d/\0x",
        "../etc/passwd",
    ] {
        let r = exec.run(&write_file(bad, "x"), None);
        assert!(
            matches!(r.error, Some(ExecError::InvalidName(_))),
            "{bad:?}: {r}"
        );
        assert!(r.steps.is_empty());
    }
    assert!(!s.dir.path().join("outside").exists());
}

#[test]
fn initramfs_tool_is_detected_under_the_root() {
    let s = Setup::new();
    let mut exec = s.executor();
    // Neither tool: a typed error that says what to run.
    let r = exec.run(&Action::RegenerateInitramfs, None);
    let err = r.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::ToolMissing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("update-initramfs -u") && text.contains("dracut -f"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::NotSupported);

    // dracut only.
    s.double("usr/bin/dracut", 0, "");
    assert!(exec.run(&Action::RegenerateInitramfs, None).succeeded());
    assert_eq!(s.log(), "usr/bin/dracut -f\n");

    // update-initramfs wins when both exist.
    s.double("usr/sbin/update-initramfs", 0, "");
    assert!(exec.run(&Action::RegenerateInitramfs, None).succeeded());
    assert_eq!(s.log(), "usr/bin/dracut -f\nusr/sbin/update-initramfs -u\n");

    // A failing tool reports its status and stderr.
    s.double(
        "usr/sbin/update-initramfs",
        3,
        "echo 'E: no space left on /boot' >&2",
    );
    let r = exec.run(&Action::RegenerateInitramfs, None);
    let err = r.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::ToolFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("no space left on /boot"), "{err}");
}

#[test]
fn module_loading_runs_modprobe_under_the_root_and_verifies() {
    let s = Setup::new();
    let mut exec = s
        .executor()
        .with_module_settle(std::time::Duration::from_millis(50));
    // No modprobe under the root: never the host's.
    let r = exec.run(
        &Action::LoadModule {
            module: "vfio-pci".into(),
        },
        None,
    );
    assert!(
        matches!(r.error, Some(ExecError::ToolMissing { .. })),
        "{r}"
    );

    // A double that "loads" by creating sys/module/<name>.
    let sys_module = s.root().join("sys/module");
    s.double(
        "sbin/modprobe",
        0,
        &format!("mkdir -p {}/$(echo \"$1\" | tr - _)", sys_module.display()),
    );
    let r = exec.run(
        &Action::LoadModule {
            module: "vfio-pci".into(),
        },
        None,
    );
    assert!(r.succeeded(), "{r}");
    assert!(sys_module.join("vfio_pci").is_dir());
    // Loaded already: modprobe is not run again.
    let r = exec.run(
        &Action::LoadModule {
            module: "vfio_pci".into(),
        },
        None,
    );
    assert!(r.succeeded());
    assert_eq!(s.log(), "sbin/modprobe vfio-pci\n");

    // modprobe says yes but the module does not appear.
    s.double("sbin/modprobe", 0, "");
    let r = exec.run(
        &Action::LoadModule {
            module: "mdev".into(),
        },
        None,
    );
    assert!(
        matches!(r.error, Some(ExecError::ModuleNotLoaded { .. })),
        "{r}"
    );
}

#[test]
fn mdev_names_are_validated_and_foreign_mdevs_are_not_removed() {
    let s = Setup::new();
    let mut exec = s.executor();
    let uuid = Uuid::from_u128(7);
    for (parent, type_id) in [
        ("../../../etc", "x"),
        ("0000:41:00.0", "../../remove"),
        ("0000:41:00.0", "a\0b"),
        ("-x", "nvidia-300"),
    ] {
        let r = exec.run(
            &Action::CreateMdev {
                parent: parent.into(),
                type_id: type_id.into(),
                type_name: None,
                uuid,
            },
            None,
        );
        let err = r.error.as_ref().unwrap();
        assert!(matches!(err, ExecError::InvalidName(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgs);
        assert!(r.steps.is_empty());
    }
    assert!(exec.ledger().mdevs.is_empty());
    assert!(!s.dir.path().join("state/ledger.json").exists());

    let r = exec.run(
        &Action::RemoveMdev {
            parent: "0000:41:00.0".into(),
            type_id: None,
            uuid,
        },
        None,
    );
    assert!(matches!(r.error, Some(ExecError::NotOwned { .. })), "{r}");
    let r = exec.run(
        &Action::ClearVgpuType {
            vf: PciAddress::new(0, 0xc1, 0, 4),
            type_id: 1,
        },
        None,
    );
    assert!(matches!(r.error, Some(ExecError::NotOwned { .. })), "{r}");
}

#[test]
fn write_attr_reports_the_errno() {
    let dir = tempfile::tempdir().unwrap();
    let err = gpuvirt_core::exec::write_attr(&dir.path().join("missing"), "1").unwrap_err();
    assert_eq!(err.errno, 2);
    assert!(err.to_string().contains("ENOENT"), "{err}");
    let file = dir.path().join("attr");
    fs::write(&file, "").unwrap();
    gpuvirt_core::exec::write_attr(&file, "vfio-pci").unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "vfio-pci");
    assert!(Path::new(&file).exists());
}
