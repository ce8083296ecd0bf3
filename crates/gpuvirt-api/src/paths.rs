//! Object paths: the path of each object gpuvirtd serves, built from its PCI address, IOMMU
//! group, UUID or parent name, and the way back. May import: crate::names.

use gpuvirt_types::PciAddress;
use uuid::Uuid;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::names::{GPUS_PATH, IOMMU_GROUPS_PATH, MDEVS_PATH, PARENTS_PATH};

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

/// `address` (`DDDD:BB:DD.F`, or `BB:DD.F` for domain 0, hex digits in any case) in the form
/// object names and `ShardParent.Name` use (`0000:41:00.0`); `None` when it is no PCI address.
pub fn canonical_pci_address(address: &str) -> Option<String> {
    address.parse::<PciAddress>().ok().map(|a| a.to_string())
}

/// The path `Manager.GetGpuByPciAddress(address)` answers with when there is such a GPU, so a
/// caller can call the GPU's method without that lookup; `None` when `address` does not parse
/// (the lookup says why).
pub fn gpu_path_for(address: &str) -> Option<OwnedObjectPath> {
    address.parse::<PciAddress>().ok().map(|a| gpu_path(&a))
}

/// The path `Manager.GetMdevByUuid(uuid)` answers with when there is such an mdev; `None` when
/// `uuid` does not parse (the lookup says why).
pub fn mdev_path_for(uuid: &str) -> Option<OwnedObjectPath> {
    uuid.parse::<Uuid>().ok().map(|u| mdev_path(&u))
}

/// The UUID an mdev object path names (the inverse of [`mdev_path`]), `None` for any other path.
pub fn uuid_from_mdev_path(path: &str) -> Option<Uuid> {
    let element = path.strip_prefix(MDEVS_PATH)?.strip_prefix('/')?;
    if element.len() != 36 || element.contains('-') {
        return None;
    }
    let uuid: Uuid = element.replace('_', "-").parse().ok()?;
    // Only the exact form mdev_path writes: no other spelling names the same object.
    (mdev_path(&uuid).as_str() == path).then_some(uuid)
}
