//! The gpuvirt D-Bus contract: names, object paths, error names, wire types and proxies. May
//! import: its own modules (re-exported here), and gpuvirt_core for PciAddress and mdevctl.
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

use gpuvirt_core::PciAddress;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

mod error;
mod methods;
mod names;
mod props;
mod proxies;
mod wire;
pub use error::*;
pub use methods::*;
pub use names::*;
pub use props::*;
pub use proxies::*;
pub use wire::*;

/// Observed state of a GPU function (the `State` property).
pub mod state {
    /// No driver bound.
    pub const UNBOUND: &str = "unbound";
    /// Bound to a VFIO driver (or pci-stub): ready for a VM.
    pub const VFIO: &str = "vfio";
    /// Bound to any other (host) driver.
    pub const HOST: &str = "host";
}

/// How a card is split (the ShardParent `Backend` property).
pub mod backend {
    /// Mediated devices: `mdev_supported_types/<type>/create`.
    pub const MDEV: &str = "mdev";
    /// NVIDIA's per-VF vGPU interface (`<VF>/nvidia/current_vgpu_type`).
    pub const NVIDIA_VF: &str = "nvidia-vf";
    /// Plain SR-IOV virtual functions (`sriov_numvfs`).
    pub const SRIOV: &str = "sriov";
}

/// The object path of the GPU whose display function is `address`.
pub fn gpu_path(address: &PciAddress) -> OwnedObjectPath {
    owned_path(format!("{GPUS_PATH}/{}", address.object_path_element()))
}

/// The object path of IOMMU group `id`.
pub fn iommu_group_path(id: u32) -> OwnedObjectPath {
    owned_path(format!("{IOMMU_GROUPS_PATH}/{id}"))
}

/// The object path of the mdev `uuid` (hyphens become underscores).
pub fn mdev_path(uuid: &Uuid) -> OwnedObjectPath {
    owned_path(format!(
        "{MDEVS_PATH}/{}",
        uuid.hyphenated().to_string().replace('-', "_")
    ))
}

/// The object path of an mdev parent that is not a GPU; `name` is its `mdev_bus` entry.
///
/// A PCI address keeps the `0000_41_00_0` form of GPU paths; any other name keeps ASCII
/// letters and digits and writes every other byte as `_xx` (lowercase hex), so distinct names
/// never collide and the element is always a valid path element.
pub fn parent_path(name: &str) -> OwnedObjectPath {
    let element = match name.parse::<PciAddress>() {
        Ok(address) => address.object_path_element(),
        Err(_) => escape_path_element(name),
    };
    owned_path(format!("{PARENTS_PATH}/{element}"))
}

/// The root path, used where a reference is absent (D-Bus has no null object path).
pub fn no_object() -> OwnedObjectPath {
    owned_path("/".to_owned())
}

/// Escapes an arbitrary name into one object path element (see [`parent_path`]).
pub fn escape_path_element(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The PCI address a GPU object path names, `None` for any other path.
pub fn address_from_gpu_path(path: &str) -> Option<PciAddress> {
    let element = path.strip_prefix(GPUS_PATH)?.strip_prefix('/')?;
    let mut parts = element.split('_');
    let (domain, bus, device, function) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    format!("{domain}:{bus}:{device}.{function}").parse().ok()
}

/// The IOMMU group id an IOMMU group object path names.
pub fn group_id_from_path(path: &str) -> Option<u32> {
    path.strip_prefix(IOMMU_GROUPS_PATH)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

fn owned_path(s: String) -> OwnedObjectPath {
    // Every caller builds the path from constants and already-validated or escaped elements,
    // so a failure here is a bug in this module; fall back to "/" rather than panic a daemon.
    ObjectPath::try_from(s)
        .map(OwnedObjectPath::from)
        .unwrap_or_else(|_| OwnedObjectPath::from(ObjectPath::from_static_str_unchecked("/")))
}

/// A readable view of [`MdevDefinitionWire`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MdevDefinition {
    pub uuid: String,
    pub parent: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub owner: String,
    pub start: String,
    /// As mdevctl writes them: a list of one-entry objects, `[{"name": "value"}, ...]`.
    #[serde(serialize_with = "attrs_as_objects")]
    pub attrs: Vec<(String, String)>,
    pub active: bool,
}

/// A definition's start mode, as [`mdevctl::MdevctlConfig`] holds it.
pub use gpuvirt_core::ledger::MdevStart;
/// mdevctl's definition format (files in `/etc/mdevctl.d`, `mdevctl list --dumpjson`), for the
/// CLI's import and export: the same code the daemon validates imports with.
pub use gpuvirt_core::mdevctl;
/// The UUIDs the definitions and mdev paths use.
pub use uuid::Uuid;

impl MdevDefinition {
    /// The definition in mdevctl's terms; `None` when the daemon sent a malformed UUID or an
    /// unknown start mode.
    pub fn to_mdevctl(&self) -> Option<mdevctl::MdevctlConfig> {
        Some(mdevctl::MdevctlConfig {
            uuid: self.uuid.parse().ok()?,
            parent: self.parent.clone(),
            mdev_type: self.type_id.clone(),
            start: match self.start.as_str() {
                "auto" => MdevStart::Auto,
                "manual" => MdevStart::Manual,
                _ => return None,
            },
            attrs: self.attrs.clone(),
        })
    }
}

fn attrs_as_objects<S: serde::Serializer>(
    attrs: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    struct One<'a>(&'a str, &'a str);
    impl serde::Serialize for One<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(self.0, self.1)?;
            map.end()
        }
    }
    s.collect_seq(attrs.iter().map(|(k, v)| One(k, v)))
}

impl From<MdevDefinitionWire> for MdevDefinition {
    fn from((uuid, parent, type_id, owner, start, attrs, active): MdevDefinitionWire) -> Self {
        Self {
            uuid,
            parent,
            type_id,
            owner,
            start,
            attrs,
            active,
        }
    }
}

#[cfg(test)]
mod tests;
