//! The one place that decides whether a value may become a path component: every name that
//! comes from a caller, a policy, an mdevctl file, a uevent or the ledger is checked here
//! before it is joined onto a sysfs or configuration path.
//!
//! A value accepted here is a single, non-empty component of at most 128 bytes with no `/`, no
//! NUL, no control or non-ASCII characters, and it neither is nor starts with `.` (so never
//! `..`) nor starts with `-` (so it cannot be taken as a command option). Driver, module, mdev
//! parent and type checks are the executor's own ([`crate::exec::names`]), re-exported here
//! so that the executor and everything upstream of it apply the same rule. PCI addresses and
//! UUIDs are parsed into typed values whose `Display` form is safe by construction.

use uuid::Uuid;

use crate::model::PciAddress;

pub use crate::exec::names::{driver, mdev_parent, mdev_type, module, module_dir, NameError};

/// The longest component accepted, in bytes (the kernel's own names are far shorter).
pub const MAX_COMPONENT: usize = 128;

/// A PCI address, `DDDD:BB:DD.F` (or `BB:DD.F`, domain 0). The parsed value displays as
/// exactly 12 hex digits and separators.
pub fn pci_address(value: &str) -> Result<PciAddress, NameError> {
    value.parse().map_err(|_| NameError {
        what: "PCI address",
        shown: shown(value),
        why: "it is not DDDD:BB:DD.F with hexadecimal digits (e.g. 0000:41:00.0)",
    })
}

/// An mdev UUID in the hyphenated form the kernel's `create` takes and `mdev_bus` lists
/// (`c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4`, any case). Braced, URN and unhyphenated forms are
/// refused: they are not what sysfs shows, so they would never match an existing mdev.
pub fn uuid(value: &str) -> Result<Uuid, NameError> {
    let err = |why| NameError {
        what: "mdev UUID",
        shown: shown(value),
        why,
    };
    if value.len() != 36 {
        return Err(err(
            "it is not 36 characters long (8-4-4-4-12 hexadecimal digits)",
        ));
    }
    let hyphens_in_place = value
        .char_indices()
        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    if !hyphens_in_place || !value.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()) {
        return Err(err("it is not 8-4-4-4-12 hexadecimal digits"));
    }
    Uuid::parse_str(value).map_err(|_| err("it is not 8-4-4-4-12 hexadecimal digits"))
}

/// A sysfs attribute name below a device (an mdevctl `attrs` entry, say): letters, digits and
/// `_ . : + -`, one component, not starting with `.` or `-`.
pub fn attribute(value: &str) -> Result<&str, NameError> {
    // Attribute names use the same alphabet as mdev type ids; only the label differs.
    mdev_type(value).map_err(|e| NameError {
        what: "attribute name",
        ..e
    })
}

/// Whether `value` is one safe path component by the rule above, whatever it names.
pub fn is_safe_component(value: &str) -> bool {
    mdev_type(value).is_ok()
}

fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_uuids() {
        assert_eq!(
            pci_address("0000:41:00.0").unwrap().to_string(),
            "0000:41:00.0"
        );
        assert_eq!(pci_address("41:00.0").unwrap().to_string(), "0000:41:00.0");
        for bad in [
            "",
            "0000:41:00.0/..",
            "../41:00.0",
            "0000:41:00.8",
            "0000:41:0\0.0",
        ] {
            assert!(pci_address(bad).is_err(), "{bad:?}");
        }
        let u = "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4";
        assert_eq!(uuid(u).unwrap().to_string(), u);
        assert_eq!(uuid(&u.to_uppercase()).unwrap().to_string(), u);
        for bad in [
            "",
            "c2a52d9af3c34ba38fb55a0e7ec1f7b4",
            "{c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4}",
            "urn:uuid:c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4",
            "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b/",
            "../../../../../../../../../../../../",
            "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7\0\0",
        ] {
            assert!(uuid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attribute_names() {
        assert_eq!(attribute("assign_adapter").unwrap(), "assign_adapter");
        let err = attribute("../remove").unwrap_err();
        assert_eq!(err.what, "attribute name");
        assert!(!is_safe_component(".."));
        assert!(is_safe_component("nvidia-300"));
    }
}
