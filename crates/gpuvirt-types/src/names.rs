//! Whether a value may become a path component or a command argument, decided before any
//! I/O: every name that comes from a caller, a policy, an mdevctl file, a uevent, sysfs or the
//! ledger is checked here before it is joined onto a sysfs or configuration path. May import:
//! crate::pci (the typed PciAddress), std and uuid.
//!
//! A value accepted here is a single, non-empty component of at most 128 bytes with no `/`, no
//! NUL, no control or non-ASCII characters, and it neither is nor starts with `.` (so never
//! `..`) nor starts with `-` (so it cannot be taken as a command option): a driver, module,
//! mdev parent or type name can never climb out of the directory it is joined to. PCI
//! addresses and UUIDs are parsed into typed values whose `Display` form is safe by
//! construction. (gpuvirt-core re-exports this module as `host::names`, `exec::names` and
//! `pathsafe`.)

use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use crate::pci::PciAddress;

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

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {shown:?} is not acceptable: {why}")]
pub struct NameError {
    /// What the value names ("driver name", "mdev type id", ...).
    pub what: &'static str,
    /// The value, shortened for display.
    pub shown: String,
    pub why: &'static str,
}

const MAX_NAME: usize = MAX_COMPONENT;

fn check(what: &'static str, value: &str, allowed: impl Fn(char) -> bool) -> Result<(), NameError> {
    let err = |why| NameError {
        what,
        shown: value.chars().take(64).collect(),
        why,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.len() > MAX_NAME {
        return Err(err("it is too long"));
    }
    if value.contains('\0') {
        return Err(err("it contains a NUL byte"));
    }
    if value.contains('/') {
        return Err(err("it contains '/'"));
    }
    if value == "." || value == ".." || value.starts_with('.') {
        return Err(err("it starts with '.'"));
    }
    if value.starts_with('-') {
        return Err(err("it starts with '-'"));
    }
    if !value.chars().all(allowed) {
        return Err(err(
            "it contains characters outside letters, digits and _ . : + -",
        ));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '+')
}

/// A PCI driver name (`vfio-pci`, `snd_hda_intel`), as under `/sys/bus/pci/drivers`.
pub fn driver(value: &str) -> Result<&str, NameError> {
    check("driver name", value, name_char).map(|()| value)
}

/// A kernel module name for `modprobe` (`vfio-pci`, `vfio_pci`); never an option.
pub fn module(value: &str) -> Result<&str, NameError> {
    check("module name", value, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
    })
    .map(|()| value)
}

/// An mdev parent's `mdev_bus` name (a PCI address or a virtual device such as `mbochs`).
pub fn mdev_parent(value: &str) -> Result<&str, NameError> {
    check("mdev parent", value, name_char).map(|()| value)
}

/// An mdev type id (`nvidia-300`, `mbochs-small`, `i915-GVTg_V5_4`).
pub fn mdev_type(value: &str) -> Result<&str, NameError> {
    check("mdev type id", value, name_char).map(|()| value)
}

/// The `/sys/module` directory name of a module: modprobe treats `-` and `_` alike, the kernel
/// lists the module with underscores.
pub fn module_dir(module: &str) -> String {
    module.replace('-', "_")
}

/// A boot-time file path relative to the root: plain components only, under `etc/`.
pub fn boot_file(path: &Path) -> Result<PathBuf, NameError> {
    let err = |why| NameError {
        what: "boot file path",
        shown: path.display().to_string().chars().take(64).collect(),
        why,
    };
    let text = path.to_str().ok_or_else(|| err("it is not UTF-8"))?;
    if text.contains('\0') {
        return Err(err("it contains a NUL byte"));
    }
    // Accept `/etc/...` as well as `etc/...`: both mean the same place under the root.
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            _ => return Err(err("it has '..', '.' or a prefix in it")),
        }
    }
    if parts.len() < 2 || parts[0] != "etc" {
        return Err(err("gpuvirt only writes files under etc/"));
    }
    Ok(parts.iter().collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
