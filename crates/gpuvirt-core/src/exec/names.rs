//! Validation of every value that becomes a path component or a command argument, done before
//! any I/O: a driver, module, mdev parent or type name from a caller (or read back from sysfs)
//! can never climb out of the directory it is joined to, nor be taken as a command option.

use std::path::{Component, Path, PathBuf};

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

const MAX_NAME: usize = 128;

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
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for d in [
            "vfio-pci",
            "snd_hda_intel",
            "nvidia",
            "xhci_hcd",
            "pcieport",
        ] {
            driver(d).unwrap();
        }
        for t in ["nvidia-300", "mbochs-small", "i915-GVTg_V5_4", "mtty-2"] {
            mdev_type(t).unwrap();
        }
        mdev_parent("0000:41:00.0").unwrap();
        mdev_parent("mbochs").unwrap();
        module("vfio-pci").unwrap();
        assert_eq!(module_dir("vfio-pci"), "vfio_pci");
    }

    #[test]
    fn rejects_traversal_and_options() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a\0b", "-r", ".hidden", "a b", "a\nb",
        ] {
            assert!(driver(bad).is_err(), "{bad:?}");
            assert!(mdev_type(bad).is_err(), "{bad:?}");
            assert!(module(bad).is_err(), "{bad:?}");
        }
        assert!(module("a:b").is_err());
        assert!(driver(&"x".repeat(200)).is_err());
    }

    #[test]
    fn boot_files_stay_under_etc() {
        assert_eq!(
            boot_file(Path::new("etc/modprobe.d/gpuvirt.conf")).unwrap(),
            PathBuf::from("etc/modprobe.d/gpuvirt.conf")
        );
        assert_eq!(
            boot_file(Path::new("/etc/modprobe.d/gpuvirt.conf")).unwrap(),
            PathBuf::from("etc/modprobe.d/gpuvirt.conf")
        );
        for bad in ["etc/../root/.ssh/authorized_keys", "usr/lib/x", "etc", ""] {
            assert!(boot_file(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
