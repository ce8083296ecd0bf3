//! The ledger's two files: records of mdevs without a definition go to the transient file
//! (replaced atomically, not synced), everything else to the durable main file, which is not
//! rewritten when only transient records change. Records moving between them are never absent
//! from both; a failed save leaves the ledger as it loaded before; an unusable transient file
//! is a warning, never a lost main ledger.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;

use gpuvirt_core::ledger::{
    FunctionRecord, Ledger, LedgerError, LedgerStore, MdevRecord, MdevStart, SlotRecord, SlotState,
    LEDGER_TRANSIENT_FILE,
};
use uuid::Uuid;

const RUNNING: Uuid = Uuid::from_u128(0xaaaa);
const DEFINED: Uuid = Uuid::from_u128(0xbbbb);

fn mdev(defined: bool) -> MdevRecord {
    MdevRecord {
        parent: "0000:00:02.0".to_string(),
        type_id: "i915-GVTg_V5_4".to_string(),
        start: MdevStart::Manual,
        attrs: Vec::new(),
        rule: None,
        defined,
        created_by_gpuvirt: true,
    }
}

/// A ledger with one passed-through slot and one defined mdev: the main file's content.
fn durable() -> Ledger {
    let mut l = Ledger::default();
    l.slots.insert(
        "0000:01:00".to_string(),
        SlotRecord {
            functions: vec![FunctionRecord {
                address: "0000:01:00.0".parse().unwrap(),
                original_driver: Some("amdgpu".to_string()),
            }],
            rule: None,
            state: SlotState::Assigned,
            removal: None,
        },
    );
    l.mdevs.insert(DEFINED, mdev(true));
    l
}

fn with_running(mut l: Ledger) -> Ledger {
    l.mdevs.insert(RUNNING, mdev(false));
    l
}

/// The main file's identity and content: a rewrite changes the inode.
fn main_file(store: &LedgerStore) -> (u64, Vec<u8>) {
    let meta = fs::metadata(store.path()).unwrap();
    (meta.ino(), fs::read(store.path()).unwrap())
}

fn main_ledger(store: &LedgerStore) -> Ledger {
    serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap()
}

fn transient_uuids(store: &LedgerStore) -> Vec<Uuid> {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(store.transient_path()).unwrap()).unwrap();
    v["mdevs"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

#[test]
fn a_transient_record_is_saved_without_touching_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&durable()).unwrap();
    assert!(!store.transient_path().exists(), "no transient record yet");
    let before = main_file(&store);

    store.save(&with_running(durable())).unwrap();
    assert_eq!(main_file(&store), before, "main file rewritten");
    assert!(!store.prev_path().exists(), "a generation was rotated");
    assert_eq!(transient_uuids(&store), [RUNNING]);
    assert_eq!(store.load().unwrap(), with_running(durable()));
    assert_eq!(
        store.transient_path().file_name().unwrap(),
        LEDGER_TRANSIENT_FILE
    );

    // Removing it rewrites the transient file only.
    store.save(&durable()).unwrap();
    assert_eq!(main_file(&store), before, "main file rewritten");
    assert!(transient_uuids(&store).is_empty());
    assert_eq!(store.load().unwrap(), durable());
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ledger-transient.json", "ledger.json"],
        "temporaries left"
    );
}

#[test]
fn defining_a_running_mdev_moves_its_record_into_the_main_file_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&with_running(durable())).unwrap();

    let mut defined = durable();
    defined.mdevs.insert(RUNNING, mdev(true));
    store.save(&defined).unwrap();
    assert!(main_ledger(&store).mdevs.contains_key(&RUNNING));
    assert!(transient_uuids(&store).is_empty());
    assert_eq!(store.load().unwrap(), defined);

    // Undefining it while it runs: back to the transient file.
    store.save(&with_running(durable())).unwrap();
    assert!(!main_ledger(&store).mdevs.contains_key(&RUNNING));
    assert_eq!(transient_uuids(&store), [RUNNING]);
    assert_eq!(store.load().unwrap(), with_running(durable()));
}

#[test]
fn the_main_file_wins_where_both_hold_a_uuid() {
    // What a crash between the two writes of a definition leaves: the record is in both.
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&with_running(durable())).unwrap();
    let mut defined = durable();
    let mut record = mdev(true);
    record.parent = "0000:00:03.0".to_string();
    defined.mdevs.insert(RUNNING, record.clone());
    let transient_before = fs::read(store.transient_path()).unwrap();
    store.save(&defined).unwrap();
    fs::write(store.transient_path(), transient_before).unwrap();
    assert_eq!(store.load().unwrap().mdevs[&RUNNING], record);
}

#[test]
fn an_unusable_transient_file_is_a_warning_and_the_main_ledger_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&with_running(durable())).unwrap();
    fs::write(store.transient_path(), b"{ torn").unwrap();
    let loaded = store.load_reporting().unwrap();
    assert_eq!(loaded.ledger, durable());
    let warning = loaded.warning.unwrap();
    assert!(
        warning.contains("transient ledger") && warning.contains("another tool's"),
        "{warning}"
    );
    // The next save writes a good file again.
    store.save(&durable()).unwrap();
    let loaded = store.load_reporting().unwrap();
    assert_eq!(loaded.ledger, durable());
    assert!(loaded.warning.is_none(), "{:?}", loaded.warning);
}

#[test]
fn a_main_file_of_the_one_file_format_moves_its_transient_records_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    // What gpuvirt wrote before the split: every record in ledger.json.
    let mut text = serde_json::to_vec_pretty(&with_running(durable())).unwrap();
    text.push(b'\n');
    fs::write(store.path(), text).unwrap();
    assert_eq!(store.load().unwrap(), with_running(durable()));

    store.save(&with_running(durable())).unwrap();
    assert!(!main_ledger(&store).mdevs.contains_key(&RUNNING));
    assert_eq!(transient_uuids(&store), [RUNNING]);
    assert_eq!(store.load().unwrap(), with_running(durable()));
}

#[test]
fn a_failed_main_write_puts_the_transient_file_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&durable()).unwrap();
    // The main file's temporary name is taken by a non-empty directory: its write fails.
    fs::create_dir_all(dir.path().join("ledger.json.tmp/x")).unwrap();
    let mut both = with_running(durable());
    both.slots.clear();
    let err = store.save(&both).unwrap_err();
    assert!(matches!(err, LedgerError::Write { .. }), "{err:?}");
    assert_eq!(store.load().unwrap(), durable(), "half a save is in force");
    assert!(!store.transient_path().exists());

    // Same with a transient file there before.
    fs::remove_dir_all(dir.path().join("ledger.json.tmp")).unwrap();
    store.save(&with_running(durable())).unwrap();
    let transient_before = fs::read(store.transient_path()).unwrap();
    fs::create_dir_all(dir.path().join("ledger.json.tmp/x")).unwrap();
    let mut other = both.clone();
    other.mdevs.remove(&RUNNING);
    other.mdevs.insert(Uuid::from_u128(0xcccc), mdev(false));
    store.save(&other).unwrap_err();
    assert_eq!(store.load().unwrap(), with_running(durable()));
    assert_eq!(fs::read(store.transient_path()).unwrap(), transient_before);
}
