//! Property tests for the daemon's own uevent parser (`events::parse_wire`) and the mapping
//! from an event to what is re-read (`events::targets`), compiled straight from the daemon's
//! source (gpuvirtd is a binary, so its modules are not importable).
//!
//! Properties: any bytes parse without a panic; the simulated kernel's events parse to the
//! same action, devpath, subsystem, driver, MDEV_STATE and seqnum; the targets of any event
//! never panic, and every mdev parent name they hand the scanner is one plain path component.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used, dead_code)]

#[path = "../src/events.rs"]
mod events;

#[path = "../../gpuvirt-core/tests/fuzz_support/mod.rs"]
mod fuzz_support;
use fuzz_support::Fuzz;
use std::path::{Component, Path};

use events::{parse_wire, targets, KernelEvent, Target};
use gpuvirt_sim::Uevent;
use proptest::prelude::*;

fn devpath() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("devices".to_string()),
        Just("pci0000:40".to_string()),
        Just("0000:41:00.0".to_string()),
        Just("c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4".to_string()),
        Just("virtual".to_string()),
        Just("mbochs".to_string()),
        Just("vfio".to_string()),
        Just("66".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        "[ -~]{0,12}".prop_filter("no separator", |s| !s.contains('/')),
    ];
    proptest::collection::vec(part, 0..7).prop_map(|parts| format!("/{}", parts.join("/")))
}

fn uevent() -> impl Strategy<Value = Uevent> {
    (
        prop_oneof![
            Just("add"),
            Just("remove"),
            Just("change"),
            Just("bind"),
            Just("unbind"),
            Just("move")
        ],
        devpath(),
        prop_oneof![
            Just("pci"),
            Just("mdev"),
            Just("vfio"),
            Just("module"),
            Just("drm"),
            Just("mdev_bus"),
            Just("x")
        ],
        proptest::option::of("[a-z_-]{1,12}"),
        proptest::option::of(prop_oneof![Just("registered"), Just("unregistered")]),
        any::<u64>(),
    )
        .prop_map(|(action, devpath, subsystem, driver, state, seqnum)| {
            let mut ev = Uevent::new(action, &devpath, subsystem);
            if let Some(d) = driver {
                ev = ev.with("DRIVER", d);
            }
            if let Some(s) = state {
                ev = ev.with("MDEV_STATE", s);
            }
            ev.seqnum = seqnum;
            ev
        })
}

fn check_targets(ev: &KernelEvent) {
    let out = targets(ev);
    assert!(!out.is_empty(), "no target for {ev:?}");
    for t in out {
        if let Target::MdevParent(name) = t {
            let parts: Vec<Component<'_>> = Path::new(&name).components().collect();
            assert_eq!(
                parts,
                [Component::Normal(name.as_ref())],
                "mdev parent {name:?} from {ev:?}"
            );
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let fuzz = Fuzz::new(file!(), "arbitrary_bytes_never_panic", 256);
    proptest!(fuzz.config(), |(buf in proptest::collection::vec(any::<u8>(), 0..512))| {
        if !fuzz.hit() {
            return Ok(());
        }
        if let Some(ev) = parse_wire(&buf) {
            prop_assert!(ev.devpath.starts_with('/'));
            check_targets(&ev);
        }
    });
    fuzz.report();
}

#[test]
fn agrees_with_the_simulated_kernel() {
    let fuzz = Fuzz::new(file!(), "agrees_with_the_simulated_kernel", 256);
    proptest!(fuzz.config(), |(ev in uevent())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let parsed = parse_wire(&ev.to_wire()).unwrap();
        prop_assert_eq!(&parsed.action, &ev.action);
        prop_assert_eq!(&parsed.devpath, &ev.devpath);
        prop_assert_eq!(&parsed.subsystem, &ev.subsystem);
        prop_assert_eq!(parsed.driver.as_deref(), ev.get("DRIVER"));
        prop_assert_eq!(parsed.mdev_state.as_deref(), ev.get("MDEV_STATE"));
        prop_assert_eq!(parsed.seqnum, Some(ev.seqnum));
        check_targets(&parsed);
    });
    fuzz.report();
}

/// Spliced-in separators, NULs, duplicated or contradicting keys.
#[test]
fn damaged_messages_never_panic() {
    let fuzz = Fuzz::new(file!(), "damaged_messages_never_panic", 256);
    proptest!(fuzz.config(), |(
        ev in uevent(),
        cut in any::<prop::sample::Index>(),
        junk in proptest::collection::vec(any::<u8>(), 0..32),
    )| {
        if !fuzz.hit() {
            return Ok(());
        }
        let mut buf = ev.to_wire();
        let i = cut.index(buf.len() + 1);
        buf.splice(i..i, junk);
        if let Some(parsed) = parse_wire(&buf) {
            check_targets(&parsed);
        }
    });
    fuzz.report();
}

/// The hostile parent names the mapping refuses to hand on, explicitly.
#[test]
fn traversal_in_an_mdev_parent_event_means_a_full_rescan() {
    for devpath in [
        "/devices/virtual/..",
        "/devices/virtual/.",
        "/devices/virtual/",
    ] {
        let ev = KernelEvent {
            action: "change".into(),
            devpath: devpath.into(),
            subsystem: "mdev_bus".into(),
            driver: None,
            mdev_state: Some("registered".into()),
            seqnum: None,
        };
        assert_eq!(targets(&ev), vec![Target::All], "{devpath}");
    }
}
