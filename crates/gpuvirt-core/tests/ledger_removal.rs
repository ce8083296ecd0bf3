//! A slot record follows the hardware (issue 18 point 9): closed as `removed` when every
//! function left (originals, time and ids kept), then judged by the card that comes back:
//! dropped when it is with the host or is another card, `assigned` again when it came back on
//! vfio-pci; old ledgers without the new field still load, and `removed` round-trips.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gpuvirt_core::ledger::{
    FunctionRecord, Ledger, LedgerStore, PresentFunction, Returned, SlotRecord, SlotState,
};
use gpuvirt_core::PciAddress;

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn assigned() -> Ledger {
    let mut l = Ledger::default();
    l.slots.insert(
        "0000:01:00".to_string(),
        SlotRecord {
            functions: vec![
                FunctionRecord {
                    address: addr(GPU),
                    original_driver: Some("nouveau".to_string()),
                },
                FunctionRecord {
                    address: addr(AUDIO),
                    original_driver: Some("snd_hda_intel".to_string()),
                },
            ],
            rule: None,
            state: SlotState::Assigned,
            removal: None,
        },
    );
    l
}

fn ids() -> BTreeMap<PciAddress, (u16, u16)> {
    BTreeMap::from([
        (addr(GPU), (0x10de, 0x1eb8)),
        (addr(AUDIO), (0x10de, 0x10f8)),
    ])
}

fn present(a: &str, device: u16, driver: Option<&str>) -> PresentFunction {
    PresentFunction {
        address: addr(a),
        vendor: 0x10de,
        device,
        driver: driver.map(str::to_string),
    }
}

fn removed() -> Ledger {
    let mut l = assigned();
    assert!(l.close_removed_slot(addr(GPU).slot(), 1_700_000_000, &ids()));
    l
}

#[test]
fn a_removed_slot_is_closed_keeping_originals_time_and_ids() {
    let l = removed();
    let r = l.slot(addr(GPU).slot()).unwrap();
    assert_eq!(r.state, SlotState::Removed);
    assert_eq!(r.original_driver(addr(AUDIO)), Some(Some("snd_hda_intel")));
    let removal = r.removal.as_ref().unwrap();
    assert_eq!(removal.at, 1_700_000_000);
    assert_eq!(removal.was, SlotState::Assigned);
    assert_eq!(removal.ids[&addr(GPU)], "10de:1eb8");
    // Closing again changes nothing; the planner sees no originals for a removed slot.
    let mut again = l.clone();
    assert!(!again.close_removed_slot(addr(GPU).slot(), 1_800_000_000, &ids()));
    assert_eq!(again, l);
    assert!(l.original_drivers().is_empty());
    // No record: nothing to close.
    let mut empty = Ledger::default();
    assert!(!empty.close_removed_slot(addr(GPU).slot(), 1, &ids()));
}

#[test]
fn a_card_back_on_its_host_drivers_or_none_drops_the_record() {
    let mut l = removed();
    let back = [
        present(GPU, 0x1eb8, Some("nouveau")),
        present(AUDIO, 0x10f8, None),
    ];
    let verdict = l.card_returned(addr(GPU).slot(), &back).unwrap();
    assert!(matches!(verdict, Returned::OnHost(_)), "{verdict:?}");
    assert!(verdict.to_string().contains("0000:01:00.0 on nouveau"));
    assert!(verdict.to_string().contains("0000:01:00.1 unbound"));
    assert!(l.slots.is_empty());
}

#[test]
fn a_card_back_on_vfio_pci_is_assigned_again_with_its_originals() {
    let mut l = removed();
    let back = [
        present(GPU, 0x1eb8, Some("vfio-pci")),
        present(AUDIO, 0x10f8, Some("vfio-pci")),
    ];
    assert_eq!(
        l.card_returned(addr(GPU).slot(), &back),
        Some(Returned::Reassigned)
    );
    assert_eq!(l, assigned());
}

#[test]
fn another_card_drops_the_record() {
    let mut other_ids = removed();
    let back = [
        present(GPU, 0x2204, Some("vfio-pci")),
        present(AUDIO, 0x10f8, Some("vfio-pci")),
    ];
    let verdict = other_ids.card_returned(addr(GPU).slot(), &back).unwrap();
    assert!(
        matches!(&verdict, Returned::Different(why) if why.contains("10de:2204")),
        "{verdict:?}"
    );
    assert!(other_ids.slots.is_empty());

    let mut other_functions = removed();
    let back = [
        present(GPU, 0x1eb8, Some("nouveau")),
        present("0000:01:00.2", 0x1ad8, None),
    ];
    let verdict = other_functions
        .card_returned(addr(GPU).slot(), &back)
        .unwrap();
    assert!(matches!(verdict, Returned::Different(_)), "{verdict:?}");
    assert!(other_functions.slots.is_empty());
}

#[test]
fn a_card_not_fully_back_or_an_open_record_is_not_judged() {
    let mut l = removed();
    let half = [present(GPU, 0x1eb8, Some("vfio-pci"))];
    assert_eq!(l.card_returned(addr(GPU).slot(), &half), None);
    assert_eq!(l, removed());
    let mut open = assigned();
    let back = [
        present(GPU, 0x1eb8, Some("nouveau")),
        present(AUDIO, 0x10f8, Some("snd_hda_intel")),
    ];
    assert_eq!(open.card_returned(addr(GPU).slot(), &back), None);
    assert_eq!(open, assigned());
}

#[test]
fn removed_round_trips_and_old_ledgers_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = LedgerStore::new(dir.path());
    store.save(&removed()).unwrap();
    let text = std::fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("\"state\": \"removed\""), "{text}");
    assert!(text.contains("\"was\": \"assigned\""), "{text}");
    assert_eq!(store.load().unwrap(), removed());
    // An assigned record is written without the field, as before.
    store.save(&assigned()).unwrap();
    let text = std::fs::read_to_string(store.path()).unwrap();
    assert!(!text.contains("removal"), "{text}");
    let old = r#"{"version":1,"slots":{"0000:01:00":{"functions":[{"address":"0000:01:00.0",
        "original_driver":"nouveau"}],"rule":null,"state":"assigned"}}}"#;
    std::fs::write(store.path(), old).unwrap();
    let l = store.load().unwrap();
    assert_eq!(l.slot(addr(GPU).slot()).unwrap().removal, None);
}
