//! The served tree's data: what each object carries (`ObjectSpec`), the tree itself, the keys
//! that name objects, the changes a diff yields, and the Manager's two sets of properties.
//! Pure data, no D-Bus server types. May import: gpuvirt-api (property structs, paths).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gpuvirt_api as api;
use gpuvirt_core::{Inventory, PciAddress};
use uuid::Uuid;

pub use api::{ChangedProperties, GpuProps, IommuGroupProps, MdevProps, ShardParentProps};

/// The properties of `$new` that differ from `$old`, as (D-Bus name, new value) pairs: the
/// one comparison behind every hand-written property set (the Manager's own and its policy
/// half; the object interfaces get theirs from gpuvirt-api's property lists).
macro_rules! changed_props {
    ($old:expr, $new:expr, { $($field:ident => $dbus:literal),* $(,)? }) => {{
        let mut out = ChangedProperties::new();
        $(
            if $old.$field != $new.$field {
                out.push(($dbus, zbus::zvariant::Value::from($new.$field.clone())));
            }
        )*
        out
    }};
}

/// `org.gpuvirt.GpuVirt1.Manager`'s properties read from the inventory (the interface itself,
/// with its methods, lives in `bus/manager.rs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManagerProps {
    pub version: String,
    pub kernel_release: String,
    pub iommu_enabled: bool,
    pub iommu_reasons: Vec<String>,
    pub vfio_available: bool,
    pub mdev_available: bool,
    pub scan_warnings: Vec<String>,
}

impl ManagerProps {
    pub fn changed(&self, new: &Self) -> ChangedProperties {
        changed_props!(self, new, {
            version => "Version",
            kernel_release => "KernelRelease",
            iommu_enabled => "IommuEnabled",
            iommu_reasons => "IommuReasons",
            vfio_available => "VfioAvailable",
            mdev_available => "MdevAvailable",
            scan_warnings => "ScanWarnings",
        })
    }
}

/// The Manager's policy properties, kept by the policy runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyProps {
    pub policy_path: String,
    pub policy_error: String,
    pub enforcement_mode: String,
    pub reboot_required: bool,
    pub reboot_reasons: Vec<String>,
    /// How the host differs from the policy while it is not corrected (monitor mode, or a
    /// failed correction).
    pub drift: Vec<String>,
    /// The last apply's report (done / failed / not attempted).
    pub last_apply: String,
}

impl PolicyProps {
    pub fn changed(&self, new: &Self) -> ChangedProperties {
        changed_props!(self, new, {
            policy_path => "PolicyPath",
            policy_error => "PolicyError",
            enforcement_mode => "EnforcementMode",
            reboot_required => "RebootRequired",
            reboot_reasons => "RebootReasons",
            drift => "Drift",
            last_apply => "LastApply",
        })
    }
}

/// The interfaces one object path carries (besides the Manager, which is separate).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectSpec {
    pub gpu: Option<Arc<GpuProps>>,
    pub shard_parent: Option<Arc<ShardParentProps>>,
    pub iommu_group: Option<Arc<IommuGroupProps>>,
    pub mdev: Option<Arc<MdevProps>>,
}

impl ObjectSpec {
    /// Whether the object carries `interface`.
    pub fn has(&self, interface: &str) -> bool {
        match interface {
            api::GPU_INTERFACE => self.gpu.is_some(),
            api::SHARD_PARENT_INTERFACE => self.shard_parent.is_some(),
            api::IOMMU_GROUP_INTERFACE => self.iommu_group.is_some(),
            api::MDEV_INTERFACE => self.mdev.is_some(),
            _ => false,
        }
    }
}

/// Everything gpuvirtd exports for one inventory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectTree {
    pub manager: ManagerProps,
    pub objects: BTreeMap<String, ObjectSpec>,
    /// The IOMMU groups that have an object (see [`exported_groups`]).
    pub exported_groups: BTreeSet<u32>,
    /// What the device policy says of each GPU (`Role`, `PolicyRule`). Kept here, not derived
    /// from the inventory, so a rebuilt Gpu object keeps them instead of flickering to "".
    pub policy_facts: BTreeMap<PciAddress, PolicyFacts>,
}

/// The device policy's verdict on one GPU, as the Gpu object serves it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyFacts {
    /// `host`, `passthrough`, `shard` or `unmanaged`.
    pub role: String,
    /// The governing rule's name; "" when the policy's default role applies.
    pub rule: String,
    /// The governing rule passes the card through on demand (and no other rule disagrees).
    pub on_demand: bool,
    /// The governing rule's `owner` (`gpuvirt` without one).
    pub owner: String,
    /// The governing rule's `resource` ("" without one).
    pub resource_name: String,
}

/// One interface's properties, tagged with which interface it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Iface {
    Manager(ManagerProps),
    /// The Manager's policy half, published by the policy runtime through the same route.
    Policy(PolicyProps),
    Gpu(Arc<GpuProps>),
    ShardParent(Arc<ShardParentProps>),
    IommuGroup(Arc<IommuGroupProps>),
    Mdev(Arc<MdevProps>),
}

impl Iface {
    /// Which interface, `None` for the Manager (never added or removed).
    #[cfg(test)]
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Iface::Manager(_) | Iface::Policy(_) => None,
            Iface::Gpu(_) => Some(Kind::Gpu),
            Iface::ShardParent(_) => Some(Kind::ShardParent),
            Iface::IommuGroup(_) => Some(Kind::IommuGroup),
            Iface::Mdev(_) => Some(Kind::Mdev),
        }
    }
}

/// Which interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Gpu,
    ShardParent,
    IommuGroup,
    Mdev,
}

/// One thing to do to the served tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Serve a new interface (zbus emits InterfacesAdded).
    Added { path: String, iface: Iface },
    /// Stop serving an interface (zbus emits InterfacesRemoved).
    Removed { path: String, kind: Kind },
    /// Replace an interface's properties and emit PropertiesChanged with `changed`.
    Updated {
        path: String,
        iface: Iface,
        changed: ChangedProperties,
    },
}

/// What one object path is built from. Every exported path has exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKey {
    Gpu(PciAddress),
    /// An mdev parent that is not a GPU.
    Parent(String),
    Mdev(Uuid),
    Group(u32),
}

impl ObjectKey {
    pub fn path(&self) -> String {
        match self {
            ObjectKey::Gpu(a) => api::gpu_path(a).to_string(),
            ObjectKey::Parent(n) => api::parent_path(n).to_string(),
            ObjectKey::Mdev(u) => api::mdev_path(u).to_string(),
            ObjectKey::Group(g) => api::iommu_group_path(*g).to_string(),
        }
    }
}

/// What the Manager's lookups need: which GPUs and mdevs have objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    pub gpus: BTreeSet<PciAddress>,
    pub mdevs: BTreeSet<Uuid>,
}

impl Lookup {
    pub fn of(inv: &Inventory) -> Self {
        Lookup {
            gpus: inv
                .gpus
                .keys()
                .filter(|a| inv.functions.contains_key(a))
                .copied()
                .collect(),
            mdevs: inv.mdevs.keys().copied().collect(),
        }
    }
}
