//! Property tests for every value that becomes a path component: PCI addresses, UUIDs, driver,
//! module, mdev parent and type names. Whatever the input, parsing never panics, and whatever
//! is accepted is one harmless path component.
//!
//! Cases per property: 256 by default; `PROPTEST_CASES=100000 cargo test -p gpuvirt-core --test
//! prop_pathsafe` for a longer run.

#![allow(clippy::unwrap_used)]

mod fuzz_support;
use fuzz_support::Fuzz;
use std::path::{Component, Path};

use gpuvirt_core::pathsafe;
use gpuvirt_core::PciAddress;
use proptest::prelude::*;

/// Strings biased towards what attackers and broken inputs send: traversal, separators, NUL,
/// control characters, multi-byte characters at awkward offsets, huge lengths.
fn hostile_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_string()),
        Just("/".to_string()),
        Just("\0".to_string()),
        Just(".".to_string()),
        Just("-".to_string()),
        Just(":".to_string()),
        Just("\n".to_string()),
        Just("é".to_string()),
        Just("\u{202e}".to_string()),
        Just("0000:41:00.0".to_string()),
        Just("c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4".to_string()),
        Just("nvidia-300".to_string()),
        "[0-9a-fA-F]{1,4}",
        "[a-z_]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        4 => proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        1 => ".*",
        1 => (1usize..5000).prop_map(|n| "a".repeat(n)),
    ]
}

/// Checks that a string is one harmless path component.
fn assert_component(value: &str) {
    assert!(!value.is_empty());
    assert!(value.len() <= pathsafe::MAX_COMPONENT, "{value:?}");
    assert!(!value.contains('/'), "{value:?}");
    assert!(!value.contains('\0'), "{value:?}");
    // Exactly one ordinary component: never `..`, `.`, a root or a separator. (`a..b` is one
    // ordinary name and stays allowed.)
    let parts: Vec<Component<'_>> = Path::new(value).components().collect();
    assert_eq!(parts, [Component::Normal(value.as_ref())], "{value:?}");
    assert!(
        !value.starts_with('.') && !value.starts_with('-'),
        "{value:?}"
    );
    assert!(value.chars().all(|c| c.is_ascii_graphic()), "{value:?}");
}

/// A well-formed address, in a random case and with or without a domain.
fn address_text() -> impl Strategy<Value = (String, PciAddress)> {
    (
        any::<u16>(),
        any::<u8>(),
        0u8..32,
        0u8..8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(domain, bus, device, function, upper, short)| {
            let a = PciAddress::new(if short { 0 } else { domain }, bus, device, function);
            let mut text = a.to_string();
            if short {
                text = text[5..].to_string();
            }
            if upper {
                text = text.to_uppercase();
            }
            (text, a)
        })
}

#[test]
fn pci_address_never_panics_and_accepts_only_safe_text() {
    let fuzz = Fuzz::new(
        file!(),
        "pci_address_never_panics_and_accepts_only_safe_text",
        256,
    );
    proptest!(fuzz.config(), |(s in hostile_string())| {
        if !fuzz.hit() {
            return Ok(());
        }
        if let Ok(a) = s.parse::<PciAddress>() {
            let shown = a.to_string();
            assert_component(&shown);
            prop_assert_eq!(shown.len(), 12);
            // The input itself must already have been an address, not text around one.
            prop_assert!(s.len() == 12 || s.len() == 7, "{:?}", s);
            prop_assert!(s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'));
        } else {
            let e = pathsafe::pci_address(&s).unwrap_err();
            prop_assert!(e.to_string().contains("PCI address"));
        }
    });
    fuzz.report();
}

/// Multi-byte characters at every offset of a 12-byte string: the parser slices by bytes.
#[test]
fn pci_address_with_multibyte_characters() {
    let fuzz = Fuzz::new(file!(), "pci_address_with_multibyte_characters", 256);
    proptest!(fuzz.config(), |(prefix in "[0-9:.]{0,11}", c in "[^\\x00-\\x7f]", suffix in "[0-9:.]{0,11}")| {
        if !fuzz.hit() {
            return Ok(());
        }
        let s = format!("{prefix}{c}{suffix}");
        prop_assert!(s.parse::<PciAddress>().is_err());
    });
    fuzz.report();
}

#[test]
fn pci_address_round_trips() {
    let fuzz = Fuzz::new(file!(), "pci_address_round_trips", 256);
    proptest!(fuzz.config(), |((text, address) in address_text())| {
        if !fuzz.hit() {
            return Ok(());
        }
        prop_assert_eq!(text.parse::<PciAddress>().unwrap(), address);
        prop_assert_eq!(pathsafe::pci_address(&address.to_string()).unwrap(), address);
    });
    fuzz.report();
}

#[test]
fn uuid_accepts_only_the_hyphenated_form() {
    let fuzz = Fuzz::new(file!(), "uuid_accepts_only_the_hyphenated_form", 256);
    proptest!(fuzz.config(), |(s in hostile_string())| {
        if !fuzz.hit() {
            return Ok(());
        }
        match pathsafe::uuid(&s) {
            Ok(u) => {
                prop_assert_eq!(u.hyphenated().to_string(), s.to_lowercase());
                assert_component(&s);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("mdev UUID")),
        }
    });
    fuzz.report();
}

#[test]
fn uuid_round_trips() {
    let fuzz = Fuzz::new(file!(), "uuid_round_trips", 256);
    proptest!(fuzz.config(), |(bytes in any::<[u8; 16]>(), upper in any::<bool>())| {
        if !fuzz.hit() {
            return Ok(());
        }
        let u = uuid::Uuid::from_bytes(bytes);
        let text = if upper { u.to_string().to_uppercase() } else { u.to_string() };
        prop_assert_eq!(pathsafe::uuid(&text).unwrap(), u);
    });
    fuzz.report();
}

#[test]
fn names_accepted_are_single_safe_components() {
    let fuzz = Fuzz::new(file!(), "names_accepted_are_single_safe_components", 256);
    proptest!(fuzz.config(), |(s in hostile_string())| {
        if !fuzz.hit() {
            return Ok(());
        }
        type Check = fn(&str) -> Result<&str, pathsafe::NameError>;
        let checks: [(&str, Check); 5] = [
            ("driver name", pathsafe::driver),
            ("module name", pathsafe::module),
            ("mdev parent", pathsafe::mdev_parent),
            ("mdev type id", pathsafe::mdev_type),
            ("attribute name", pathsafe::attribute),
        ];
        for (what, check) in checks {
            match check(&s) {
                Ok(v) => {
                    prop_assert_eq!(v, s.as_str());
                    assert_component(v);
                    prop_assert!(pathsafe::is_safe_component(v));
                }
                Err(e) => {
                    prop_assert_eq!(e.what, what);
                    // The message names the value (shortened) and why.
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with(what), "{}", msg);
                    prop_assert!(msg.contains(": it "), "{}", msg);
                    prop_assert!(e.shown.chars().count() <= 64);
                }
            }
        }
    });
    fuzz.report();
}

/// A legitimate name with traversal spliced in anywhere is refused.
#[test]
fn traversal_spliced_into_a_name_is_refused() {
    let fuzz = Fuzz::new(file!(), "traversal_spliced_into_a_name_is_refused", 256);
    proptest!(fuzz.config(), |(
        name in "[a-z][a-z0-9_-]{0,20}",
        evil in prop_oneof![Just("/"), Just("../"), Just("/.."), Just("\0"), Just("\n")],
        at in any::<prop::sample::Index>(),
    )| {
        if !fuzz.hit() {
            return Ok(());
        }
        let i = at.index(name.len() + 1);
        let s = format!("{}{}{}", &name[..i], evil, &name[i..]);
        prop_assert!(pathsafe::driver(&s).is_err());
        prop_assert!(pathsafe::mdev_type(&s).is_err());
        prop_assert!(pathsafe::mdev_parent(&s).is_err());
        prop_assert!(pathsafe::module(&s).is_err());
        prop_assert!(pathsafe::attribute(&s).is_err());
    });
    fuzz.report();
}
