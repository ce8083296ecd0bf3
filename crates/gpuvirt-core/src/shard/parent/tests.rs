//! Unit tests of `shard/parent.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;

fn parent(types: &[(&str, Option<&str>)]) -> ShardParent {
    ShardParent {
        name: "0000:41:00.0".into(),
        backend: Backend::Mdev,
        pci_address: None,
        types_known: true,
        types: types
            .iter()
            .map(|(id, name)| ShardType {
                id: id.to_string(),
                name: name.map(str::to_string),
                description: None,
                device_api: None,
                available: 1,
                in_use: 0,
            })
            .collect(),
        children: Vec::new(),
        total_vfs: 0,
        num_vfs: 0,
    }
}

#[test]
fn resolves_by_id_full_name_and_short_name() {
    let p = parent(&[
        ("nvidia-299", Some("GRID V100-16C")),
        ("nvidia-300", Some("GRID V100-8C")),
    ]);
    assert_eq!(p.resolve_type("nvidia-300").unwrap().id, "nvidia-300");
    assert_eq!(p.resolve_type("NVIDIA-300").unwrap().id, "nvidia-300");
    assert_eq!(p.resolve_type("GRID V100-8C").unwrap().id, "nvidia-300");
    assert_eq!(p.resolve_type("grid v100-8c").unwrap().id, "nvidia-300");
    assert_eq!(p.resolve_type("V100-8C").unwrap().id, "nvidia-300");
    assert_eq!(p.resolve_type("v100-16c").unwrap().id, "nvidia-299");
}

#[test]
fn unknown_type_lists_every_choice() {
    let p = parent(&[
        ("nvidia-299", Some("GRID V100-16C")),
        ("nvidia-300", Some("GRID V100-8C")),
        ("mtty-1", Some("mtty-1")),
    ]);
    let e = p.resolve_type("V100-4C").unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:41:00.0 offers no type \"V100-4C\"; valid types: nvidia-299 (GRID V100-16C), \
         nvidia-300 (GRID V100-8C), mtty-1"
    );
    assert_eq!(e.kind(), ErrorKind::UnknownType);
    // The vendor prefix alone names nothing.
    assert!(matches!(
        p.resolve_type("GRID"),
        Err(ShardError::UnknownType { .. })
    ));
}

#[test]
fn ambiguous_names_list_the_matches() {
    let p = parent(&[
        ("a-1", Some("GRID X-1")),
        ("b-1", Some("Other X-1")),
        ("c-1", Some("Single port serial")),
    ]);
    let e = p.resolve_type("x-1").unwrap_err();
    assert_eq!(
        e,
        ShardError::AmbiguousType {
            parent: "0000:41:00.0".into(),
            spec: "x-1".into(),
            matches: vec!["a-1 (GRID X-1)".into(), "b-1 (Other X-1)".into()],
        }
    );
    // A full name wins over a short one; prose names resolve whole.
    assert_eq!(p.resolve_type("GRID X-1").unwrap().id, "a-1");
    assert_eq!(p.resolve_type("single PORT serial").unwrap().id, "c-1");
    assert_eq!(p.resolve_type("port serial").unwrap().id, "c-1");
}

#[test]
fn types_of_an_unenabled_nvidia_card_are_unknown() {
    let mut p = parent(&[]);
    p.types_known = false;
    assert_eq!(
        p.resolve_type("1151").unwrap_err().to_string(),
        "the vGPU types of 0000:41:00.0 can only be read once its VFs are enabled (sriov_numvfs)"
    );
}
