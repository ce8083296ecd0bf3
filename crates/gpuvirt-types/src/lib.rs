//! gpuvirt's leaf vocabulary, shared by the core, the daemon, the bus contract and the CLI
//! without pulling in the sysfs, planner or executor code: PCI addresses ([`PciAddress`],
//! [`PciSlot`]), which names are safe path components ([`names`]), and mdevctl's definition
//! format ([`mdevctl`], with [`MdevStart`]). Nothing here does I/O.
//!
//! Layers, bottom up: `pci` (std and serde only), `names` (uses `pci`), `mdevctl` (uses
//! `names`). May import: std, serde, serde_json, uuid, thiserror; no other gpuvirt crate.

pub mod mdevctl;
pub mod names;
pub mod pci;

pub use mdevctl::MdevStart;
pub use pci::{PciAddress, PciAddressError, PciSlot};
