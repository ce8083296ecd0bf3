//! The gpuvirt D-Bus contract: names, object paths, error names, wire types and proxies. May
//! import: its own modules (this file only declares and re-exports them), and gpuvirt_types
//! for PciAddress and mdevctl.
//!
//! Both `gpuvirtd` (which serves it) and `gpuvirtctl` (which calls it) build on this crate, so a
//! name changed here changes on both sides at once. Names are API: never rename one; add.
//!
//! Object tree (all under [`ROOT_PATH`], which carries `org.freedesktop.DBus.ObjectManager`):
//!
//! | path | interfaces |
//! |---|---|
//! | `/org/gpuvirt/GpuVirt1/Manager` | [`MANAGER_INTERFACE`] |
//! | `/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0` | [`GPU_INTERFACE`] (+ [`SHARD_PARENT_INTERFACE`] when it can be sharded) |
//! | `/org/gpuvirt/GpuVirt1/iommu_groups/66` | [`IOMMU_GROUP_INTERFACE`] |
//! | `/org/gpuvirt/GpuVirt1/mdevs/<uuid, - as _>` | [`MDEV_INTERFACE`] |
//! | `/org/gpuvirt/GpuVirt1/parents/<escaped name>` | [`SHARD_PARENT_INTERFACE`] for mdev parents that are not GPUs (mbochs, mtty, a non-display PCI device) |
//!
//! Only IOMMU groups that hold a GPU, one of its slot companions, one of its virtual functions
//! or an mdev parent are exported: those are the groups gpuvirt can act on. An mdev's own group
//! (vfio makes one per mdev, holding only it) is not an object: the Mdev's `IommuGroupId` has
//! its number and its `IommuGroup` is `/`.
//!
//! Enumerations travel as lowercase strings; "absent" strings are empty, an absent object
//! reference is `/`.

pub mod backend;
mod definition;
mod error;
mod methods;
mod names;
mod paths;
mod props;
mod proxies;
pub mod state;
mod wire;
pub use definition::*;
pub use error::*;
pub use methods::*;
pub use names::*;
pub use paths::*;
pub use props::*;
pub use proxies::*;
pub use wire::*;

/// mdevctl's definition format (files in `/etc/mdevctl.d`, `mdevctl list --dumpjson`), for the
/// CLI's import and export: the same code the daemon validates imports with.
pub use gpuvirt_types::mdevctl;
/// A definition's start mode, as [`mdevctl::MdevctlConfig`] holds it.
pub use gpuvirt_types::MdevStart;
/// The UUIDs the definitions and mdev paths use.
pub use uuid::Uuid;

#[cfg(test)]
mod tests;
