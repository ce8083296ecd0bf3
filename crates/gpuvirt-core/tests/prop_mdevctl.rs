//! Property tests for mdevctl definition import: any text, JSON of any shape and random
//! `mdevctl.d` trees are read without a panic; every definition accepted carries an mdev type
//! and attribute names that are plain path components; accepted definitions round-trip.
//!
//! 256 cases per property by default (64 for the tree property); `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used)]

mod fuzz_support;
use fuzz_support::Fuzz;
use std::fs;
use std::path::Path;

use gpuvirt_core::ledger::{Ledger, MdevStart};
use gpuvirt_core::mdevctl::{import, parse_config, read_all, MdevctlConfig, MdevctlError};
use gpuvirt_core::{pathsafe, Root};
use proptest::prelude::*;
use uuid::Uuid;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("nvidia-300".to_string()),
            Just("auto".to_string()),
            Just("manual".to_string()),
            Just("../../../x".to_string()),
            Just("a/b".to_string()),
            Just("".to_string()),
            ".{0,12}"
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("mdev_type".to_string()),
                    Just("start".to_string()),
                    Just("attrs".to_string()),
                    "[a-z_./]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A definition with some fields spliced from hostile values.
fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        json_value().prop_map(|v| v.to_string()),
        (
            prop_oneof![Just("nvidia-300".to_string()), Just("../../etc".to_string()), ".{0,20}"],
            prop_oneof![Just("auto"), Just("manual"), Just("sometimes")],
            proptest::collection::vec(
                (
                    prop_oneof![Just("assign_adapter".to_string()), Just("../remove".to_string()), ".{0,10}"],
                    ".{0,10}"
                ),
                0..4
            ),
        )
            .prop_map(|(t, start, attrs)| {
                serde_json::json!({
                    "mdev_type": t,
                    "start": start,
                    "attrs": attrs.into_iter().map(|(k, v)| serde_json::json!({ k: v })).collect::<Vec<_>>(),
                })
                .to_string()
            }),
    ]
}

fn check_accepted(c: &MdevctlConfig) {
    pathsafe::mdev_type(&c.mdev_type).unwrap();
    for (name, _) in &c.attrs {
        pathsafe::attribute(name).unwrap();
    }
}

#[test]
fn parse_never_panics_and_accepts_only_safe_names() {
    let fuzz = Fuzz::new(
        file!(),
        "parse_never_panics_and_accepts_only_safe_names",
        256,
    );
    proptest!(fuzz.config(), |(text in config_text())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let uuid = Uuid::from_u128(7);
        match parse_config(Path::new("etc/mdevctl.d/0000:41:00.0/x"), "0000:41:00.0", uuid, &text) {
            Ok(c) => {
                check_accepted(&c);
                // What gpuvirt writes back parses to the same definition.
                let again = parse_config(Path::new("x"), &c.parent, uuid, &c.to_json()).unwrap();
                prop_assert_eq!(again, c);
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("mdevctl config") || msg.contains("mdev parent"), "{}", msg);
            }
        }
    });
    fuzz.report();
}

#[test]
fn hostile_parent_names_are_refused() {
    let fuzz = Fuzz::new(file!(), "hostile_parent_names_are_refused", 256);
    proptest!(fuzz.config(), |(parent in prop_oneof![Just("..".to_string()), Just("a/b".to_string()), Just("".to_string()), ".{0,20}"])| {
        if !fuzz.hit() {
            return Ok(());
        }
        let text = r#"{"mdev_type":"nvidia-300","start":"auto","attrs":[]}"#;
        match parse_config(Path::new("x"), &parent, Uuid::nil(), text) {
            Ok(c) => {
                prop_assert!(!c.parent.is_empty() && c.parent != ".." && !c.parent.contains('/'));
            }
            Err(e) => prop_assert!(matches!(e, MdevctlError::BadParentName { .. }), "{}", e),
        }
    });
    fuzz.report();
}

/// Random trees: files with random names and contents, directories where files belong,
/// links; every entry is either a definition or an error, never a panic, and import keeps
/// what gpuvirt created.
#[test]
fn random_trees_are_read() {
    let fuzz = Fuzz::new(file!(), "random_trees_are_read", 64);
    proptest!(fuzz.config(), |(entries in proptest::collection::vec(
        (
            prop_oneof![Just("0000:41:00.0".to_string()), Just("mbochs".to_string()), Just("scripts.d".to_string()), "[a-z0-9:][a-z0-9:.]{0,11}"],
            prop_oneof![Just("c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4".to_string()), Just(".tmp".to_string()), "[a-f0-9-]{1,36}"],
            config_text(),
            0u8..4,
        ),
        0..8,
    ))| {
        if !fuzz.hit() {
            return Ok(());
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc/mdevctl.d");
        fs::create_dir_all(&dir).unwrap();
        let mut files = 0;
        for (parent, name, text, kind) in &entries {
            let pdir = dir.join(parent);
            if pdir.exists() && !pdir.is_dir() {
                continue;
            }
            fs::create_dir_all(&pdir).unwrap();
            let path = pdir.join(name);
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            match kind {
                0 => fs::create_dir_all(&path).unwrap(),
                1 => std::os::unix::fs::symlink("/nonexistent", &path).unwrap(),
                2 => fs::write(&path, [0xff, 0xfe, 0x00]).unwrap(),
                _ => fs::write(&path, text).unwrap(),
            }
            if !name.starts_with('.') && parent != "scripts.d" {
                files += 1;
            }
        }
        let scan = read_all(&Root::new(tmp.path()));
        prop_assert_eq!(scan.configs.len() + scan.errors.len(), files);
        for c in &scan.configs {
            check_accepted(c);
        }
        let mut ledger = Ledger::default();
        let report = import(&mut ledger, &scan.configs);
        prop_assert_eq!(report.imported.len(), scan.configs.len());
        for c in &scan.configs {
            let r = &ledger.mdevs[&c.uuid];
            prop_assert!(!r.created_by_gpuvirt);
            prop_assert!(matches!(r.start, MdevStart::Auto | MdevStart::Manual));
        }
    });
    fuzz.report();
}
