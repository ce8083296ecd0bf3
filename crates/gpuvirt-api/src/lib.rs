//! The gpuvirt D-Bus contract: names, object paths, error names, wire types and proxies.
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

use std::collections::HashMap;

use gpuvirt_types::PciAddress;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

mod props;
pub use props::*;

/// The well-known bus name gpuvirtd owns.
pub const BUS_NAME: &str = "org.gpuvirt.GpuVirt1";
/// The ObjectManager root; every other object lives below it.
pub const ROOT_PATH: &str = "/org/gpuvirt/GpuVirt1";
/// The one Manager object.
pub const MANAGER_PATH: &str = "/org/gpuvirt/GpuVirt1/Manager";
/// Parent of the GPU objects.
pub const GPUS_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus";
/// Parent of the IOMMU group objects.
pub const IOMMU_GROUPS_PATH: &str = "/org/gpuvirt/GpuVirt1/iommu_groups";
/// Parent of the mdev objects.
pub const MDEVS_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs";
/// Parent of mdev parents that are not GPUs.
pub const PARENTS_PATH: &str = "/org/gpuvirt/GpuVirt1/parents";

pub const MANAGER_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Manager";
pub const GPU_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Gpu";
pub const SHARD_PARENT_INTERFACE: &str = "org.gpuvirt.GpuVirt1.ShardParent";
pub const IOMMU_GROUP_INTERFACE: &str = "org.gpuvirt.GpuVirt1.IommuGroup";
pub const MDEV_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Mdev";
/// Jobs of long operations (`/org/gpuvirt/GpuVirt1/jobs/<n>`): `Operation`, `Objects`,
/// `Progress`, `Finished`, `Success`, `ErrorName`, `Message`, `Cancel()`, signal
/// `Completed(b success, s message)`. Not in [`INTERFACES`]: jobs exist only while one runs.
pub const JOB_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Job";
/// Parent of the job objects.
pub const JOBS_PATH: &str = "/org/gpuvirt/GpuVirt1/jobs";
/// Every interface gpuvirtd serves, in a stable order.
pub const INTERFACES: [&str; 5] = [
    MANAGER_INTERFACE,
    GPU_INTERFACE,
    SHARD_PARENT_INTERFACE,
    IOMMU_GROUP_INTERFACE,
    MDEV_INTERFACE,
];

/// The prefix of every gpuvirt error name.
pub const ERROR_PREFIX: &str = "org.gpuvirt.GpuVirt1.Error";
/// The standard error for a malformed argument; its message names the argument.
pub const INVALID_ARGS_ERROR: &str = "org.freedesktop.DBus.Error.InvalidArgs";

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

/// One mdev (or vGPU) type on the wire: `(name, description, device_api, available_instances)`;
/// absent strings are empty. The `Types` property maps type id → this.
pub type TypeInfoWire = (String, String, String, u32);

/// One IOMMU group member on the wire: `(name, class, driver)`; `name` is a PCI address or
/// another device name, `class` is 0 when unknown, `driver` empty when unbound.
pub type GroupMemberWire = (String, u32, String);

/// One mdev on the wire (`Manager.ListMdevs`): `(object, uuid, parent object, parent name,
/// type, type name, active, driver, IOMMU group id)`. These are the Mdev interface's properties
/// in its order, less `IommuGroup` (always `/`: an mdev's own group is not an object); the
/// group id is -1 when the mdev has none.
pub type MdevRowWire = (
    OwnedObjectPath,
    String,
    OwnedObjectPath,
    String,
    String,
    String,
    bool,
    String,
    i32,
);

/// One persistent mdev definition on the wire (`Manager.ListMdevDefinitions`):
/// `(uuid, parent, type, owner, start, attrs, active)`. `owner` is `gpuvirt` or `mdevctl`,
/// `start` is `auto` or `manual`, `attrs` the `(name, value)` pairs in write order (mdevctl's
/// ordered list), `active` whether a device with the UUID exists now.
pub type MdevDefinitionWire = (
    String,
    String,
    String,
    String,
    String,
    Vec<(String, String)>,
    bool,
);

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

/// mdevctl's definition format (files in `/etc/mdevctl.d`, `mdevctl list --dumpjson`), for the
/// CLI's import and export: the same code the daemon validates imports with.
pub use gpuvirt_types::mdevctl;
/// A definition's start mode, as [`mdevctl::MdevctlConfig`] holds it.
pub use gpuvirt_types::MdevStart;
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

/// A readable view of [`TypeInfoWire`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    pub device_api: String,
    pub available_instances: u32,
}

impl TypeInfo {
    /// Sorted by id, the order in which the CLI shows them.
    pub fn from_wire(types: HashMap<String, TypeInfoWire>) -> Vec<TypeInfo> {
        let mut out: Vec<TypeInfo> = types
            .into_iter()
            .map(
                |(id, (name, description, device_api, available_instances))| TypeInfo {
                    id,
                    name,
                    description,
                    device_api,
                    available_instances,
                },
            )
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// gpuvirt's own D-Bus errors, `org.gpuvirt.GpuVirt1.Error.<Variant>`; the string is the
/// human-readable message. Error names are API: never rename a variant.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.gpuvirt.GpuVirt1.Error")]
pub enum Error {
    /// A transport or protocol error, not one of gpuvirt's own.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No such GPU, mdev, group or type.
    NoSuchDevice(String),
    /// The device policy forbids the operation.
    PolicyViolation(String),
    /// The policy file does not validate.
    PolicyInvalid(String),
    /// The device is in use (holders, EBUSY) or another operation is running on it.
    Busy(String),
    /// The IOMMU group holds members the host still uses.
    GroupNotViable(String),
    /// The operation would take the boot/console GPU away from the host.
    BootVga(String),
    /// The device or kernel cannot do this.
    NotSupported(String),
    /// The parent offers no such type.
    UnknownType(String),
    /// No instances of the type are left.
    NoCapacity(String),
    /// An mdev with that UUID exists already.
    AlreadyExists(String),
    /// The kernel did not finish in time.
    TimedOut(String),
    /// Binding or unbinding a driver failed.
    DriverBind(String),
}

/// What a gpuvirtd method can fail with: one of gpuvirt's errors or a standard
/// `org.freedesktop.DBus.Error.*` one (InvalidArgs for a malformed argument, AccessDenied).
#[derive(Debug)]
pub enum CallError {
    Api(Error),
    Fdo(zbus::fdo::Error),
}

impl CallError {
    /// `org.freedesktop.DBus.Error.InvalidArgs` whose message names the argument.
    pub fn invalid_arg(argument: &str, problem: impl std::fmt::Display) -> Self {
        CallError::Fdo(zbus::fdo::Error::InvalidArgs(format!(
            "argument '{argument}': {problem}"
        )))
    }

    /// `org.gpuvirt.GpuVirt1.Error.NoSuchDevice`.
    pub fn no_such_device(message: impl Into<String>) -> Self {
        CallError::Api(Error::NoSuchDevice(message.into()))
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Api(e)
    }
}

impl From<zbus::fdo::Error> for CallError {
    fn from(e: zbus::fdo::Error) -> Self {
        CallError::Fdo(e)
    }
}

impl From<zbus::Error> for CallError {
    fn from(e: zbus::Error) -> Self {
        CallError::Api(Error::ZBus(e))
    }
}

impl zbus::DBusError for CallError {
    fn name(&self) -> zbus::names::ErrorName<'_> {
        match self {
            CallError::Api(e) => e.name(),
            CallError::Fdo(e) => e.name(),
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            CallError::Api(e) => e.description(),
            CallError::Fdo(e) => e.description(),
        }
    }

    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        match self {
            CallError::Api(e) => e.create_reply(call),
            CallError::Fdo(e) => e.create_reply(call),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => e.fmt(f),
            CallError::Fdo(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CallError {}

/// The Manager: host-wide facts and lookups.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.Manager",
    default_service = "org.gpuvirt.GpuVirt1",
    default_path = "/org/gpuvirt/GpuVirt1/Manager"
)]
pub trait Manager {
    /// The object of the GPU whose display function is `address` (`DDDD:BB:DD.F`).
    fn get_gpu_by_pci_address(&self, address: &str) -> Result<OwnedObjectPath, Error>;
    /// The object of the mdev `uuid`.
    fn get_mdev_by_uuid(&self, uuid: &str) -> Result<OwnedObjectPath, Error>;
    /// The objects carrying any of `interfaces` (all when empty) with every interface's
    /// properties, in the form of `GetManagedObjects`; no options are defined yet.
    fn get_objects(
        &self,
        interfaces: &[&str],
        options: std::collections::HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> Result<zbus::fdo::ManagedObjects, Error>;
    /// Every mdev as one typed row each, sorted by object path; no options are defined yet.
    fn list_mdevs(
        &self,
        options: std::collections::HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> Result<Vec<MdevRowWire>, Error>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn kernel_release(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn iommu_enabled(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn iommu_reasons(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn vfio_available(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn mdev_available(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn scan_warnings(&self) -> zbus::Result<Vec<String>>;
}

/// A GPU: its display function's facts and the other functions of its slot.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.Gpu",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait Gpu {
    #[zbus(property)]
    fn pci_address(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn vendor_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn device_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn subsystem_vendor_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn subsystem_device_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn vendor_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn product_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn subsystem_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn class_code(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn driver_override(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn kernel_modules(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn boot_vga(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn numa_node(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn reset_methods(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn iommu_group(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn companions(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn physical_function(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn virtual_functions(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn sriov_total_vfs(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn sriov_num_vfs(&self) -> zbus::Result<u32>;
}

/// Something that can be split into vGPUs: an mdev parent, an NVIDIA per-VF vGPU card or a
/// plain SR-IOV card.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.ShardParent",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait ShardParent {
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn types(&self) -> zbus::Result<HashMap<String, TypeInfoWire>>;
    #[zbus(property)]
    fn children(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// An IOMMU group, its members and whether it can go to a VM as a whole.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.IommuGroup",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait IommuGroup {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn members(&self) -> zbus::Result<Vec<GroupMemberWire>>;
    #[zbus(property)]
    fn viable(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn viability_problems(&self) -> zbus::Result<Vec<String>>;
}

/// A mediated device.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.Mdev",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait Mdev {
    #[zbus(property)]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn parent(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn parent_name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Type")]
    fn type_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn type_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn iommu_group(&self) -> zbus::Result<OwnedObjectPath>;
    /// The number of the mdev's own IOMMU group, -1 when it has none.
    #[zbus(property)]
    fn iommu_group_id(&self) -> zbus::Result<i32>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn paths_follow_the_documented_shape() {
        let a: PciAddress = "0000:41:00.0".parse().unwrap();
        assert_eq!(
            gpu_path(&a).as_str(),
            "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"
        );
        assert_eq!(address_from_gpu_path(gpu_path(&a).as_str()), Some(a));
        assert_eq!(address_from_gpu_path("/org/gpuvirt/GpuVirt1/gpus/x"), None);
        assert_eq!(
            iommu_group_path(66).as_str(),
            "/org/gpuvirt/GpuVirt1/iommu_groups/66"
        );
        assert_eq!(group_id_from_path(iommu_group_path(66).as_str()), Some(66));
        let u: Uuid = "a0b1c2d3-0000-4000-8000-000000000001".parse().unwrap();
        assert_eq!(
            mdev_path(&u).as_str(),
            "/org/gpuvirt/GpuVirt1/mdevs/a0b1c2d3_0000_4000_8000_000000000001"
        );
    }

    #[test]
    fn parent_names_escape_without_collisions() {
        assert_eq!(
            parent_path("mbochs").as_str(),
            "/org/gpuvirt/GpuVirt1/parents/mbochs"
        );
        assert_eq!(
            parent_path("0000:03:00.0").as_str(),
            "/org/gpuvirt/GpuVirt1/parents/0000_03_00_0"
        );
        assert_eq!(escape_path_element("a-b"), "a_2db");
        assert_ne!(escape_path_element("a_b"), escape_path_element("a-b"));
        assert_eq!(escape_path_element(""), "_");
        // Escaped elements are always valid in a path.
        for name in ["x/y", "../..", "ünï", "a b\0c"] {
            assert_ne!(parent_path(name).as_str(), "/", "{name:?}");
        }
    }

    #[test]
    fn error_names_are_the_documented_ones() {
        assert_eq!(
            Error::NoSuchDevice("x".into()).name().as_str(),
            "org.gpuvirt.GpuVirt1.Error.NoSuchDevice"
        );
        assert_eq!(
            Error::DriverBind("x".into()).name().as_str(),
            "org.gpuvirt.GpuVirt1.Error.DriverBind"
        );
        let e = CallError::invalid_arg("address", "not a PCI address");
        assert_eq!(e.name().as_str(), INVALID_ARGS_ERROR);
        assert_eq!(
            e.description(),
            Some("argument 'address': not a PCI address")
        );
    }
}
