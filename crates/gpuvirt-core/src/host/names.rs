//! Whether a value may become a path component or a command argument, decided before any
//! I/O. The rules live in the leaf crate gpuvirt-types (`gpuvirt_types::names`, with their
//! tests); this module keeps the core's paths to them (`host::names`, `exec::names`,
//! `pathsafe`). May import: gpuvirt-types only.

pub use gpuvirt_types::names::{
    attribute, boot_file, driver, is_safe_component, mdev_parent, mdev_type, module, module_dir,
    pci_address, uuid, NameError, MAX_COMPONENT,
};
