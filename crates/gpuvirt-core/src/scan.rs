//! The inventory scan: reads PCI functions, IOMMU groups, mdev parents and mdevs from a root,
//! and refreshes single devices in place after a uevent.
//!
//! The scan is GPU-scoped. Every PCI function costs one `uevent` read (its class); only the
//! functions that matter to GPUs are read in full: display functions (and functions whose
//! class the uevent does not tell), the other functions of display functions' slots, their
//! SR-IOV VFs, mdev parents' functions ("core"), and every member of the
//! IOMMU groups of core functions and of mdevs (so a group's members, drivers and what they
//! back stay exact). Only those groups are read; the others are counted from one listing of
//! `/sys/kernel/iommu_groups`. [`Scanner::refresh`] re-reads what an event touched and then
//! settles the scope the same way, so it always gives what a fresh scan gives.
//!
//! Cost model (issue 2): a function read in full costs one `readlink` of its bus link, one
//! listing of its directory (which says which optional attributes exist, so missing files are
//! never opened), one `uevent` read instead of six id files, and one read per remaining
//! attribute. Links are read once and resolved lexically, never canonicalised. All file calls
//! are libc-level (`std::fs`), so an `LD_PRELOAD` redirection (umockdev) sees them.
//!
//! Layout: `scanner` holds the [`Scanner`] and its databases; `full` the full scan and the
//! scope settling; `refresh` the per-uevent refresh; `device` one PCI function's directory;
//! `drm` its DRM nodes;
//! `mdev` mdev parents and mdevs; `scope` what a refresh covered; `read` the shared reading
//! helpers and paths. May import: crate::host, crate::model, crate::iommu, crate::modalias,
//! crate::pciids, crate::error.

mod counts;
mod device;
mod drm;
mod full;
mod mdev;
mod read;
mod refresh;
mod scanner;
mod scope;

use crate::host::root::Root;
use crate::model::Inventory;

pub use refresh::RefreshTarget;
pub use scanner::Scanner;
pub use scope::RefreshScope;

/// A scan of the whole host under `root` (loads the databases each time; keep a [`Scanner`]
/// to scan repeatedly).
pub fn scan(root: &Root) -> Inventory {
    Scanner::new(root.clone()).scan()
}
