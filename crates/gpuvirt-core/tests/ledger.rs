//! The ownership ledger on disk: round trips, atomic replacement, recovery from a corrupted,
//! truncated or empty main file through the previous generation, refusal to guess when both are
//! bad, and typed errors (with the old ledger intact) on a full or read-only file system.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use gpuvirt_core::ledger::{
    FunctionRecord, Ledger, LedgerError, LedgerSource, LedgerStore, MdevRecord, MdevStart,
    SlotRecord, SlotState, SriovRecord, VgpuRecord, LEDGER_VERSION,
};
use gpuvirt_core::PciAddress;
use uuid::Uuid;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn sample(generation: u32) -> Ledger {
    let mut l = Ledger::default();
    l.slots.insert(
        "0000:01:00".to_string(),
        SlotRecord {
            functions: vec![
                FunctionRecord {
                    address: addr("0000:01:00.0"),
                    original_driver: Some("amdgpu".to_string()),
                },
                FunctionRecord {
                    address: addr("0000:01:00.1"),
                    original_driver: Some("snd_hda_intel".to_string()),
                },
                FunctionRecord {
                    address: addr("0000:01:00.2"),
                    original_driver: None,
                },
            ],
            rule: Some(format!("vm-pool-{generation}")),
            state: SlotState::Assigned,
            removal: None,
        },
    );
    l.mdevs.insert(
        Uuid::from_u128(0x1234 + u128::from(generation)),
        MdevRecord {
            parent: "0000:41:00.0".to_string(),
            type_id: "nvidia-300".to_string(),
            start: MdevStart::Manual,
            attrs: vec![("a".to_string(), "1".to_string())],
            rule: None,
            defined: true,
            created_by_gpuvirt: true,
        },
    );
    l.vgpus.insert(
        addr("0000:c1:00.4"),
        VgpuRecord {
            type_id: 42 + generation,
            rule: Some("h100".to_string()),
        },
    );
    l.sriov.insert(
        addr("0000:c1:00.0"),
        SriovRecord {
            num_vfs: 4,
            original_num_vfs: 0,
            rule: None,
        },
    );
    l
}

#[test]
fn missing_ledger_loads_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path().join("state"));
    let loaded = store.load_reporting().unwrap();
    assert_eq!(loaded.source, LedgerSource::Empty);
    assert_eq!(loaded.ledger, Ledger::default());
    assert_eq!(loaded.ledger.version, LEDGER_VERSION);
    assert!(loaded.warning.is_none());
}

#[test]
fn round_trip_and_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    // The state directory does not exist yet: save creates it.
    let store = LedgerStore::new(dir.path().join("state"));
    store.save(&sample(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample(1));
    assert!(!store.prev_path().exists());

    store.save(&sample(2)).unwrap();
    let loaded = store.load_reporting().unwrap();
    assert_eq!(loaded.source, LedgerSource::Main);
    assert_eq!(loaded.ledger, sample(2));
    let prev: Ledger = serde_json::from_slice(&fs::read(store.prev_path()).unwrap()).unwrap();
    assert_eq!(prev, sample(1));
    // No temporaries left behind.
    let mut names: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ledger.json", "ledger.json.prev"]);

    let l = store.load().unwrap();
    assert_eq!(
        l.original_drivers().get(&addr("0000:01:00.1")),
        Some(&Some("snd_hda_intel".to_string()))
    );
    assert_eq!(l.function(addr("0000:01:00.2")).map(|(_, d)| d), Some(None));
    assert!(l.function(addr("0000:01:00.3")).is_none());
    assert!(l.owns_mdev(&Uuid::from_u128(0x1236)));
    assert!(!l.owns_mdev(&Uuid::from_u128(0x1)));
}

#[test]
fn json_keys_are_readable_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&sample(0)).unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("\"0000:01:00\""), "{text}");
    assert!(text.contains("\"0000:c1:00.4\""), "{text}");
    assert!(text.contains("\"state\": \"assigned\""), "{text}");
    assert!(text.contains("\"start\": \"manual\""), "{text}");
}

fn corrupt_main_falls_back(damage: impl Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&sample(1)).unwrap();
    store.save(&sample(2)).unwrap();
    damage(&store.path());
    let loaded = store.load_reporting().unwrap();
    assert_eq!(loaded.source, LedgerSource::Previous);
    assert_eq!(loaded.ledger, sample(1));
    let warning = loaded.warning.unwrap();
    assert!(warning.contains("previous generation"), "{warning}");
    // The next save replaces the broken main file and keeps the recovered one as .prev.
    store.save(&sample(3)).unwrap();
    assert_eq!(store.load_reporting().unwrap().source, LedgerSource::Main);
}

#[test]
fn truncated_main_falls_back_to_previous() {
    corrupt_main_falls_back(|p| {
        let text = fs::read(p).unwrap();
        fs::write(p, &text[..text.len() / 2]).unwrap();
    });
}

#[test]
fn empty_main_falls_back_to_previous() {
    corrupt_main_falls_back(|p| fs::write(p, b"").unwrap());
}

#[test]
fn garbage_main_falls_back_to_previous() {
    corrupt_main_falls_back(|p| fs::write(p, b"\x00\xff not json").unwrap());
}

#[test]
fn semantically_bad_main_falls_back_to_previous() {
    // Valid JSON, but a slot key that is a path and a function from another slot.
    corrupt_main_falls_back(|p| {
        fs::write(
            p,
            r#"{"version":1,"slots":{"../../etc":{"functions":[],"rule":null,"state":"pending"}}}"#,
        )
        .unwrap()
    });
    corrupt_main_falls_back(|p| {
        fs::write(
            p,
            r#"{"version":1,"slots":{"0000:01:00":{"functions":[{"address":"0000:02:00.0","original_driver":"nvidia"}],"rule":null,"state":"pending"}}}"#,
        )
        .unwrap()
    });
}

#[test]
fn deleted_main_falls_back_to_previous() {
    corrupt_main_falls_back(|p| fs::remove_file(p).unwrap());
}

#[test]
fn newer_format_is_not_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    fs::write(store.path(), r#"{"version":99}"#).unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn both_generations_corrupt_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&sample(1)).unwrap();
    store.save(&sample(2)).unwrap();
    fs::write(store.path(), b"{\"version\": 1, \"slots\": {").unwrap();
    fs::write(store.prev_path(), b"").unwrap();
    let err = store.load().unwrap_err();
    let LedgerError::Corrupt { main, prev, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(main.contains("not a valid ledger"), "{main}");
    assert!(prev.contains("empty"), "{prev}");
    let text = err.to_string();
    assert!(text.contains("will not guess"), "{text}");

    // Only the main file, corrupt, and no previous one: still an error, not an empty ledger.
    fs::remove_file(store.prev_path()).unwrap();
    assert!(matches!(
        store.load().unwrap_err(),
        LedgerError::Corrupt { .. }
    ));
}

#[test]
fn unreadable_ledger_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    // A directory where the file should be cannot be read.
    fs::create_dir(store.path()).unwrap();
    assert!(matches!(
        store.load().unwrap_err(),
        LedgerError::Read { .. }
    ));
}

#[test]
fn failed_save_leaves_the_old_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&sample(1)).unwrap();
    // The temporary's name is taken by a non-empty directory: creating it fails.
    fs::create_dir_all(dir.path().join("ledger.json.tmp/x")).unwrap();
    let err = store.save(&sample(2)).unwrap_err();
    assert!(matches!(err, LedgerError::Write { .. }), "{err:?}");
    assert_eq!(store.load().unwrap(), sample(1));
}

const CHILD_ENV: &str = "GPUVIRT_LEDGER_TEST_IN_NAMESPACE";

/// Runs the named test of this binary again inside a private mount namespace (it mounts
/// tmpfs file systems there). Returns false (skipping) when that is not possible here.
fn rerun_in_mount_namespace(test: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .status();
    match status {
        Ok(s) if s.success() => false,
        Ok(s) => panic!("{test} failed inside the mount namespace: {s}"),
        Err(e) => {
            eprintln!("skipping {test}: cannot run unshare ({e})");
            false
        }
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "gpuvirt-test"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn full_file_system_is_a_typed_error_and_keeps_the_old_ledger() {
    if !rerun_in_mount_namespace("full_file_system_is_a_typed_error_and_keeps_the_old_ledger") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(mount_tmpfs(dir.path(), "64k"), "mount tmpfs");
    let store = LedgerStore::new(dir.path());
    store.save(&sample(1)).unwrap();
    // Fill the file system, then a bigger ledger cannot be written.
    let filler = vec![0u8; 4096];
    let mut f = fs::File::create(dir.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut f, &filler).is_ok() {}
    drop(f);
    let mut big = sample(2);
    for i in 0..200 {
        big.sriov.insert(
            PciAddress::new(1, i, 0, 0),
            SriovRecord {
                num_vfs: 1,
                original_num_vfs: 0,
                rule: Some("x".repeat(64)),
            },
        );
    }
    let err = store.save(&big).unwrap_err();
    assert!(matches!(err, LedgerError::NoSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("no space"), "{err}");
    assert_eq!(store.load().unwrap(), sample(1));
    assert!(!dir.path().join("ledger.json.tmp").exists());
    Command::new("umount").arg(dir.path()).status().unwrap();
}

#[test]
fn read_only_file_system_is_a_typed_error_and_keeps_the_old_ledger() {
    if !rerun_in_mount_namespace("read_only_file_system_is_a_typed_error_and_keeps_the_old_ledger")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(mount_tmpfs(dir.path(), "1m"), "mount tmpfs");
    let store = LedgerStore::new(dir.path());
    store.save(&sample(1)).unwrap();
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(remount.success());
    let err = store.save(&sample(2)).unwrap_err();
    assert!(matches!(err, LedgerError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(store.load().unwrap(), sample(1));
    Command::new("umount").arg(dir.path()).status().unwrap();
}
