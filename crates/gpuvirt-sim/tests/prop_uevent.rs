//! Property tests for the simulated kernel's uevent wire format: any bytes parse without a
//! panic, and every event the simulated kernel can emit survives `to_wire` → `from_wire`.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used)]

#[path = "../../gpuvirt-core/tests/fuzz_support/mod.rs"]
mod fuzz_support;
use fuzz_support::Fuzz;
use gpuvirt_sim::Uevent;
use proptest::prelude::*;

/// Text without NUL (the wire separator) and, for keys, without `=`.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "[^\\x00]{0,20}",
        Just("../../..".to_string())
    ]
}

fn key() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,15}".prop_filter("reserved keys are not in env", |k| {
        !matches!(k.as_str(), "ACTION" | "DEVPATH" | "SUBSYSTEM" | "SEQNUM")
    })
}

fn event() -> impl Strategy<Value = Uevent> {
    (
        "[a-z]{1,8}",
        "(/[a-z0-9:._-]{1,16}){1,6}",
        "[a-z_]{1,10}",
        proptest::collection::vec((key(), value()), 0..6),
        any::<u64>(),
    )
        .prop_map(|(action, devpath, subsystem, env, seqnum)| {
            let mut ev = Uevent::new(&action, &devpath, &subsystem);
            ev.env = env;
            ev.seqnum = seqnum;
            ev
        })
}

/// Byte-level damage to a valid message: flips, truncation, inserted NULs and `=`/`@`.
fn damaged(wire: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut out = wire;
    for (at, op, byte) in edits {
        let i = at.index(out.len() + 1);
        match op % 4 {
            0 if i < out.len() => out[i] ^= byte | 1,
            1 => out.truncate(i),
            2 => out.insert(i, [0u8, b'=', b'@', 0xff][usize::from(*byte % 4)]),
            _ => out.insert(i, *byte),
        }
    }
    out
}

#[test]
fn arbitrary_bytes_never_panic() {
    let fuzz = Fuzz::new(file!(), "arbitrary_bytes_never_panic", 256);
    proptest!(fuzz.config(), |(buf in proptest::collection::vec(any::<u8>(), 0..512))| {
        if !fuzz.hit() {
            return Ok(());
        }
        if let Some(ev) = Uevent::from_wire(&buf) {
            // Whatever is accepted is a well-formed event.
            prop_assert!(ev.devpath.starts_with('/'));
            prop_assert!(!ev.subsystem.is_empty());
            let _ = ev.to_string();
        }
    });
    fuzz.report();
}

#[test]
fn wire_round_trips() {
    let fuzz = Fuzz::new(file!(), "wire_round_trips", 256);
    proptest!(fuzz.config(), |(ev in event())| {
        if !fuzz.hit() {
            return Ok(());
        }
        prop_assert_eq!(Uevent::from_wire(&ev.to_wire()), Some(ev));
    });
    fuzz.report();
}

#[test]
fn damaged_messages_never_panic() {
    let fuzz = Fuzz::new(file!(), "damaged_messages_never_panic", 256);
    proptest!(fuzz.config(), |(
        ev in event(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..6),
    )| {
        if !fuzz.hit() {
            return Ok(());
        }
        let buf = damaged(ev.to_wire(), &edits);
        if let Some(parsed) = Uevent::from_wire(&buf) {
            prop_assert!(parsed.devpath.starts_with('/'));
            prop_assert!(!parsed.subsystem.is_empty());
        }
    });
    fuzz.report();
}
