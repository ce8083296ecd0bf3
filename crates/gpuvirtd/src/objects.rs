//! The exported object tree as a pure function of an [`Inventory`], and the diff of two trees.
//!
//! The daemon never patches D-Bus objects by hand: after every change it builds the tree the
//! new inventory implies and [`diff`]s it with the one it exported, which yields exactly the
//! InterfacesAdded/Removed and PropertiesChanged to emit. A duplicate event therefore changes
//! nothing and emits nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gpuvirt_api as api;
use gpuvirt_api::{GroupMemberWire, TypeInfoWire};
use gpuvirt_core::{Inventory, MdevParent, PciAddress, PciFunction};
use zbus::zvariant::{OwnedObjectPath, Value};

/// Properties that changed: D-Bus name and new value.
pub type ChangedProperties = Vec<(&'static str, Value<'static>)>;

/// Defines one read-only interface: a plain properties struct (compared field by field) and
/// the zbus interface serving it, so the property list exists exactly once.
macro_rules! read_only_interface {
    (
        $(#[$doc:meta])*
        $iface:ident, $props:ident, $name:tt {
            $( $field:ident : $ty:ty => $dbus:tt ),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $props {
            $( pub $field: $ty, )*
        }

        impl $props {
            /// Properties whose value differs in `new`, with their new values.
            pub fn changed(&self, new: &Self) -> ChangedProperties {
                let mut out = ChangedProperties::new();
                $(
                    if self.$field != new.$field {
                        out.push(($dbus, Value::from(new.$field.clone())));
                    }
                )*
                out
            }
        }

        /// The served object; the actor replaces `.0` and then emits PropertiesChanged.
        #[derive(Debug)]
        pub struct $iface(pub $props);

        #[zbus::interface(name = $name)]
        impl $iface {
            $(
                #[zbus(property(emits_changed_signal = "true"), name = $dbus)]
                fn $field(&self) -> $ty {
                    self.0.$field.clone()
                }
            )*
        }
    };
}

read_only_interface! {
    /// `org.gpuvirt.GpuVirt1.Gpu`: a display function and its slot.
    GpuInterface, GpuProps, "org.gpuvirt.GpuVirt1.Gpu" {
        pci_address: String => "PciAddress",
        vendor_id: u16 => "VendorId",
        device_id: u16 => "DeviceId",
        subsystem_vendor_id: u16 => "SubsystemVendorId",
        subsystem_device_id: u16 => "SubsystemDeviceId",
        vendor_name: String => "VendorName",
        product_name: String => "ProductName",
        subsystem_name: String => "SubsystemName",
        class_code: u32 => "ClassCode",
        driver: String => "Driver",
        driver_override: String => "DriverOverride",
        kernel_modules: Vec<String> => "KernelModules",
        boot_vga: bool => "BootVga",
        numa_node: i32 => "NumaNode",
        reset_methods: Vec<String> => "ResetMethods",
        iommu_group: OwnedObjectPath => "IommuGroup",
        companions: Vec<String> => "Companions",
        state: String => "State",
        physical_function: String => "PhysicalFunction",
        virtual_functions: Vec<String> => "VirtualFunctions",
        sriov_total_vfs: u32 => "SriovTotalVfs",
        sriov_num_vfs: u32 => "SriovNumVfs",
    }
}

read_only_interface! {
    /// `org.gpuvirt.GpuVirt1.ShardParent`: what a card can be split into and its children.
    ShardParentInterface, ShardParentProps, "org.gpuvirt.GpuVirt1.ShardParent" {
        name: String => "Name",
        backend: String => "Backend",
        types: HashMap<String, TypeInfoWire> => "Types",
        children: Vec<OwnedObjectPath> => "Children",
    }
}

read_only_interface! {
    /// `org.gpuvirt.GpuVirt1.IommuGroup`.
    IommuGroupInterface, IommuGroupProps, "org.gpuvirt.GpuVirt1.IommuGroup" {
        id: u32 => "Id",
        members: Vec<GroupMemberWire> => "Members",
        viable: bool => "Viable",
        viability_problems: Vec<String> => "ViabilityProblems",
    }
}

read_only_interface! {
    /// `org.gpuvirt.GpuVirt1.Mdev`.
    MdevInterface, MdevProps, "org.gpuvirt.GpuVirt1.Mdev" {
        uuid: String => "Uuid",
        parent: OwnedObjectPath => "Parent",
        parent_name: String => "ParentName",
        type_id: String => "Type",
        type_name: String => "TypeName",
        active: bool => "Active",
        driver: String => "Driver",
        iommu_group: OwnedObjectPath => "IommuGroup",
    }
}

/// `org.gpuvirt.GpuVirt1.Manager`'s properties (the interface itself, with its methods, lives
/// in the `manager` module).
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
        let mut out = ChangedProperties::new();
        macro_rules! cmp {
            ($($field:ident => $dbus:literal),*) => {$(
                if self.$field != new.$field {
                    out.push(($dbus, Value::from(new.$field.clone())));
                }
            )*};
        }
        cmp!(
            version => "Version",
            kernel_release => "KernelRelease",
            iommu_enabled => "IommuEnabled",
            iommu_reasons => "IommuReasons",
            vfio_available => "VfioAvailable",
            mdev_available => "MdevAvailable",
            scan_warnings => "ScanWarnings"
        );
        out
    }
}

/// The interfaces one object path carries (besides the Manager, which is separate).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectSpec {
    pub gpu: Option<GpuProps>,
    pub shard_parent: Option<ShardParentProps>,
    pub iommu_group: Option<IommuGroupProps>,
    pub mdev: Option<MdevProps>,
}

/// Everything gpuvirtd exports for one inventory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectTree {
    pub manager: ManagerProps,
    pub objects: BTreeMap<String, ObjectSpec>,
}

/// One interface's properties, tagged with which interface it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Iface {
    Manager(ManagerProps),
    Gpu(GpuProps),
    ShardParent(ShardParentProps),
    IommuGroup(IommuGroupProps),
    Mdev(MdevProps),
}

impl Iface {
    /// Which interface, `None` for the Manager (never added or removed).
    #[cfg(test)]
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Iface::Manager(_) => None,
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

fn removal_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Mdev => 0,
        Kind::ShardParent => 1,
        Kind::Gpu => 2,
        Kind::IommuGroup => 3,
    }
}

fn iface_kind(iface: &Iface) -> Kind {
    match iface {
        Iface::Gpu(_) => Kind::Gpu,
        Iface::ShardParent(_) => Kind::ShardParent,
        Iface::IommuGroup(_) => Kind::IommuGroup,
        // Never added or removed; rank it with the leaves.
        Iface::Mdev(_) | Iface::Manager(_) => Kind::Mdev,
    }
}

/// What turns `old` into `new`: removals first, then additions (so that references in updated
/// properties point at objects that exist), then updates; referrers are removed before and
/// added after what they refer to. Nothing for equal trees.
pub fn diff(old: &ObjectTree, new: &ObjectTree) -> Vec<Change> {
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut updated = Vec::new();

    let manager_changes = old.manager.changed(&new.manager);
    if !manager_changes.is_empty() {
        updated.push(Change::Updated {
            path: api::MANAGER_PATH.to_owned(),
            iface: Iface::Manager(new.manager.clone()),
            changed: manager_changes,
        });
    }

    let empty = ObjectSpec::default();
    let paths: BTreeSet<&String> = old.objects.keys().chain(new.objects.keys()).collect();
    for path in paths {
        let before = old.objects.get(path).unwrap_or(&empty);
        let after = new.objects.get(path).unwrap_or(&empty);
        if before == after {
            continue;
        }
        macro_rules! slot {
            ($field:ident, $variant:ident) => {
                match (&before.$field, &after.$field) {
                    (None, None) => {}
                    (Some(_), None) => removed.push(Change::Removed {
                        path: path.clone(),
                        kind: Kind::$variant,
                    }),
                    (None, Some(n)) => added.push(Change::Added {
                        path: path.clone(),
                        iface: Iface::$variant(n.clone()),
                    }),
                    (Some(o), Some(n)) => {
                        let changed = o.changed(n);
                        if !changed.is_empty() {
                            updated.push(Change::Updated {
                                path: path.clone(),
                                iface: Iface::$variant(n.clone()),
                                changed,
                            });
                        }
                    }
                }
            };
        }
        slot!(gpu, Gpu);
        slot!(shard_parent, ShardParent);
        slot!(iommu_group, IommuGroup);
        slot!(mdev, Mdev);
    }
    // Referrers go before what they refer to (an mdev names its parent and group, a GPU its
    // group), and come after it: a client never follows a reference to a missing object.
    removed.sort_by_key(|c| match c {
        Change::Removed { kind, .. } => removal_rank(*kind),
        _ => 0,
    });
    added.sort_by_key(|c| match c {
        Change::Added { iface, .. } => 3 - removal_rank(iface_kind(iface)),
        _ => 0,
    });
    removed.extend(added);
    removed.extend(updated);
    removed
}

/// Builds the tree `inv` implies (see the gpuvirt-api crate docs for the layout).
pub fn build(inv: &Inventory) -> ObjectTree {
    let mut objects: BTreeMap<String, ObjectSpec> = BTreeMap::new();
    let parents_by_address: HashMap<PciAddress, &MdevParent> = inv
        .mdev_parents
        .values()
        .filter_map(|p| p.pci_address.map(|a| (a, p)))
        .collect();
    let mut children_by_parent: HashMap<&str, Vec<OwnedObjectPath>> = HashMap::new();
    for mdev in inv.mdevs.values() {
        children_by_parent
            .entry(mdev.parent.as_str())
            .or_default()
            .push(api::mdev_path(&mdev.uuid));
    }
    let mut exported_groups: BTreeSet<u32> = BTreeSet::new();
    let group_of = |a: &PciAddress| inv.functions.get(a).and_then(|f| f.iommu_group);

    for gpu in inv.gpus.values() {
        let Some(function) = inv.functions.get(&gpu.address) else {
            continue;
        };
        exported_groups.extend(function.iommu_group);
        exported_groups.extend(gpu.companions.iter().filter_map(group_of));
        if let Some(sriov) = &function.sriov {
            exported_groups.extend(sriov.vfs.iter().filter_map(group_of));
        }
        let path = api::gpu_path(&gpu.address).to_string();
        let shard_parent = shard_parent_of(inv, function, &parents_by_address, &children_by_parent);
        objects.insert(
            path,
            ObjectSpec {
                gpu: Some(gpu_props(function, &gpu.companions)),
                shard_parent,
                ..ObjectSpec::default()
            },
        );
    }

    for parent in inv.mdev_parents.values() {
        if let Some(group) = parent.pci_address.as_ref().and_then(group_of) {
            exported_groups.insert(group);
        }
        if parent_is_gpu(inv, parent) {
            continue;
        }
        objects
            .entry(api::parent_path(&parent.name).to_string())
            .or_default()
            .shard_parent = Some(mdev_parent_props(parent, &children_by_parent));
    }

    for mdev in inv.mdevs.values() {
        exported_groups.extend(mdev.iommu_group);
        let parent = inv.mdev_parents.get(&mdev.parent);
        let parent_path = match parent {
            Some(p) if parent_is_gpu(inv, p) => p
                .pci_address
                .map(|a| api::gpu_path(&a))
                .unwrap_or_else(api::no_object),
            Some(p) => api::parent_path(&p.name),
            None => api::no_object(),
        };
        let type_name = parent
            .zip(mdev.type_id.as_deref())
            .and_then(|(p, t)| p.types.iter().find(|ty| ty.id == t))
            .and_then(|ty| ty.name.clone())
            .unwrap_or_default();
        objects
            .entry(api::mdev_path(&mdev.uuid).to_string())
            .or_default()
            .mdev = Some(MdevProps {
            uuid: mdev.uuid.hyphenated().to_string(),
            parent: parent_path,
            parent_name: mdev.parent.clone(),
            type_id: mdev.type_id.clone().unwrap_or_default(),
            type_name,
            active: true,
            driver: mdev.driver.clone().unwrap_or_default(),
            iommu_group: group_path(mdev.iommu_group),
        });
    }

    for id in exported_groups {
        let Some(group) = inv.groups.get(&id) else {
            continue;
        };
        objects
            .entry(api::iommu_group_path(id).to_string())
            .or_default()
            .iommu_group = Some(IommuGroupProps {
            id,
            members: group
                .members
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        m.class.unwrap_or(0),
                        m.driver.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            viable: group.viable,
            viability_problems: group.problems.clone(),
        });
    }

    ObjectTree {
        manager: manager_props(inv),
        objects,
    }
}

/// The Manager's properties for `inv`.
pub fn manager_props(inv: &Inventory) -> ManagerProps {
    ManagerProps {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: inv.kernel_release.clone().unwrap_or_default(),
        iommu_enabled: inv.iommu.enabled,
        iommu_reasons: inv.iommu.reasons.clone(),
        vfio_available: inv.modules.vfio && inv.modules.vfio_pci,
        mdev_available: inv.modules.mdev,
        scan_warnings: inv
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.path.display(), w.message))
            .collect(),
    }
}

fn parent_is_gpu(inv: &Inventory, parent: &MdevParent) -> bool {
    parent
        .pci_address
        .is_some_and(|a| inv.gpus.contains_key(&a))
}

fn group_path(group: Option<u32>) -> OwnedObjectPath {
    group
        .map(api::iommu_group_path)
        .unwrap_or_else(api::no_object)
}

/// The observed state of a function, from its driver.
pub fn observed_state(driver: Option<&str>) -> &'static str {
    match driver {
        None => api::state::UNBOUND,
        Some(d) if d.contains("vfio") || d == "pci-stub" => api::state::VFIO,
        Some(_) => api::state::HOST,
    }
}

fn gpu_props(f: &PciFunction, companions: &[PciAddress]) -> GpuProps {
    GpuProps {
        pci_address: f.address.to_string(),
        vendor_id: f.ids.vendor,
        device_id: f.ids.device,
        subsystem_vendor_id: f.ids.subsystem_vendor,
        subsystem_device_id: f.ids.subsystem_device,
        vendor_name: f.vendor_name.clone().unwrap_or_default(),
        product_name: f.device_name.clone().unwrap_or_default(),
        subsystem_name: f.subsystem_name.clone().unwrap_or_default(),
        class_code: f.class,
        driver: f.driver.clone().unwrap_or_default(),
        driver_override: f.driver_override.clone().unwrap_or_default(),
        kernel_modules: f.kernel_modules.clone(),
        boot_vga: f.boot_vga.unwrap_or(false),
        numa_node: f.numa_node.unwrap_or(-1),
        reset_methods: f.reset_methods.clone(),
        iommu_group: group_path(f.iommu_group),
        companions: companions.iter().map(ToString::to_string).collect(),
        state: observed_state(f.driver.as_deref()).to_owned(),
        physical_function: f.physfn.map(|a| a.to_string()).unwrap_or_default(),
        virtual_functions: f
            .sriov
            .as_ref()
            .map(|s| s.vfs.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        sriov_total_vfs: f.sriov.as_ref().map_or(0, |s| s.total_vfs),
        sriov_num_vfs: f.sriov.as_ref().map_or(0, |s| s.num_vfs),
    }
}

fn mdev_parent_props(
    parent: &MdevParent,
    children_by_parent: &HashMap<&str, Vec<OwnedObjectPath>>,
) -> ShardParentProps {
    ShardParentProps {
        name: parent.name.clone(),
        backend: api::backend::MDEV.to_owned(),
        types: parent
            .types
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    (
                        t.name.clone().unwrap_or_default(),
                        t.description.clone().unwrap_or_default(),
                        t.device_api.clone().unwrap_or_default(),
                        t.available_instances.unwrap_or(0),
                    ),
                )
            })
            .collect(),
        children: children_by_parent
            .get(parent.name.as_str())
            .cloned()
            .unwrap_or_default(),
    }
}

/// The ShardParent a GPU carries: its mdev parent if it is one; else NVIDIA per-VF vGPU when
/// any enabled VF has the `nvidia/` files; else plain SR-IOV when it can have VFs.
fn shard_parent_of(
    inv: &Inventory,
    f: &PciFunction,
    parents_by_address: &HashMap<PciAddress, &MdevParent>,
    children_by_parent: &HashMap<&str, Vec<OwnedObjectPath>>,
) -> Option<ShardParentProps> {
    if let Some(parent) = parents_by_address.get(&f.address) {
        return Some(mdev_parent_props(parent, children_by_parent));
    }
    let sriov = f.sriov.as_ref().filter(|s| s.total_vfs > 0)?;
    let vfs: Vec<&PciFunction> = sriov
        .vfs
        .iter()
        .filter_map(|a| inv.functions.get(a))
        .collect();
    let vf_path = |vf: &PciFunction| {
        inv.gpus
            .contains_key(&vf.address)
            .then(|| api::gpu_path(&vf.address))
    };
    if vfs.iter().any(|vf| vf.nvidia_vgpu.is_some()) {
        let mut types: HashMap<String, TypeInfoWire> = HashMap::new();
        for offer in vfs
            .iter()
            .filter_map(|vf| vf.nvidia_vgpu.as_ref())
            .flat_map(|v| v.creatable_types.iter())
        {
            types
                .entry(offer.id.to_string())
                .or_insert_with(|| (offer.name.clone(), String::new(), String::new(), 0))
                .3 += 1;
        }
        return Some(ShardParentProps {
            name: f.address.to_string(),
            backend: api::backend::NVIDIA_VF.to_owned(),
            types,
            children: vfs
                .iter()
                .filter(|vf| {
                    vf.nvidia_vgpu
                        .as_ref()
                        .is_some_and(|v| v.current_type.is_some())
                })
                .filter_map(|vf| vf_path(vf))
                .collect(),
        });
    }
    Some(ShardParentProps {
        name: f.address.to_string(),
        backend: api::backend::SRIOV.to_owned(),
        types: HashMap::new(),
        children: vfs.iter().filter_map(|vf| vf_path(vf)).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use gpuvirt_core::{
        Gpu, GroupMember, IommuGroup, Mdev, MdevType, NvidiaVfVgpu, PciIds, Sriov, VgpuTypeOffer,
    };
    use uuid::Uuid;

    pub fn function(addr: &str, class: u32, driver: Option<&str>, group: u32) -> PciFunction {
        let address: PciAddress = addr.parse().unwrap();
        PciFunction {
            address,
            sysfs_path: format!("devices/pci0000:40/0000:40:01.1/{addr}").into(),
            class,
            revision: Some(0xa1),
            ids: PciIds {
                vendor: 0x10de,
                device: 0x1db4,
                subsystem_vendor: 0x10de,
                subsystem_device: 0x1214,
            },
            vendor_name: Some("NVIDIA Corporation".into()),
            device_name: Some("GV100GL [Tesla V100 PCIe 16GB]".into()),
            subsystem_name: None,
            driver: driver.map(Into::into),
            driver_override: None,
            boot_vga: (class >> 8 == 0x0300).then_some(false),
            numa_node: Some(0),
            reset_methods: vec!["flr".into(), "bus".into()],
            modalias: None,
            kernel_modules: vec!["nvidia".into(), "nouveau".into()],
            iommu_group: Some(group),
            sriov: None,
            physfn: None,
            nvidia_vgpu: None,
        }
    }

    /// The runbook's host: a V100 at 0000:41:00.0 in group 66 with type nvidia-300, one mdev.
    pub fn runbook_inventory() -> Inventory {
        let gpu = function("0000:41:00.0", 0x030200, Some("nvidia"), 66);
        let nic = function("0000:01:00.0", 0x020000, Some("igb"), 12);
        let mut inv = Inventory {
            kernel_release: Some("6.1.0-test".into()),
            ..Inventory::default()
        };
        inv.iommu.enabled = true;
        inv.iommu.reasons = vec!["2 IOMMU groups".into()];
        inv.modules.vfio = true;
        inv.modules.vfio_pci = true;
        inv.modules.mdev = true;
        for (id, f) in [(66, &gpu), (12, &nic)] {
            inv.groups.insert(
                id,
                IommuGroup {
                    id,
                    members: vec![GroupMember {
                        name: f.address.to_string(),
                        pci_address: Some(f.address),
                        class: Some(f.class),
                        driver: f.driver.clone(),
                    }],
                    viable: true,
                    problems: vec![],
                },
            );
        }
        inv.gpus.insert(
            gpu.address,
            Gpu {
                address: gpu.address,
                companions: vec![],
            },
        );
        inv.mdev_parents.insert(
            "0000:41:00.0".into(),
            MdevParent {
                name: "0000:41:00.0".into(),
                sysfs_path: gpu.sysfs_path.clone(),
                pci_address: Some(gpu.address),
                types: vec![MdevType {
                    id: "nvidia-300".into(),
                    name: Some("GRID V100-8C".into()),
                    description: Some("num_heads=1, frl_config=60".into()),
                    device_api: Some("vfio-pci".into()),
                    available_instances: Some(1),
                }],
            },
        );
        let uuid: Uuid = "aa618089-8b16-4d01-a136-25a0f3c73123".parse().unwrap();
        inv.mdevs.insert(
            uuid,
            Mdev {
                uuid,
                parent: "0000:41:00.0".into(),
                type_id: Some("nvidia-300".into()),
                driver: Some("vfio_mdev".into()),
                iommu_group: Some(67),
            },
        );
        inv.groups.insert(
            67,
            IommuGroup {
                id: 67,
                members: vec![GroupMember {
                    name: uuid.to_string(),
                    pci_address: None,
                    class: None,
                    driver: Some("vfio_mdev".into()),
                }],
                viable: true,
                problems: vec![],
            },
        );
        inv.functions.insert(gpu.address, gpu);
        inv.functions.insert(nic.address, nic);
        inv
    }

    fn path(s: &str) -> OwnedObjectPath {
        OwnedObjectPath::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn runbook_host_exports_the_documented_objects() {
        let tree = build(&runbook_inventory());
        let paths: Vec<&str> = tree.objects.keys().map(|p| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0",
                "/org/gpuvirt/GpuVirt1/iommu_groups/66",
                "/org/gpuvirt/GpuVirt1/iommu_groups/67",
                "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123",
            ],
            "the NIC's group 12 is not exported"
        );
        let gpu = &tree.objects["/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"];
        let g = gpu.gpu.as_ref().unwrap();
        assert_eq!(g.pci_address, "0000:41:00.0");
        assert_eq!(g.state, "host");
        assert_eq!(
            g.iommu_group.as_str(),
            "/org/gpuvirt/GpuVirt1/iommu_groups/66"
        );
        let shard = gpu.shard_parent.as_ref().unwrap();
        assert_eq!(shard.backend, "mdev");
        assert_eq!(
            shard.types["nvidia-300"],
            (
                "GRID V100-8C".to_owned(),
                "num_heads=1, frl_config=60".to_owned(),
                "vfio-pci".to_owned(),
                1
            )
        );
        assert_eq!(
            shard.children,
            [path(
                "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"
            )]
        );
        let mdev = tree.objects["/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"]
            .mdev
            .as_ref()
            .unwrap();
        assert_eq!(
            mdev.parent.as_str(),
            "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"
        );
        assert_eq!(mdev.type_name, "GRID V100-8C");
        assert!(tree.manager.vfio_available);
    }

    #[test]
    fn equal_inventories_give_no_changes() {
        let a = build(&runbook_inventory());
        assert_eq!(diff(&a, &a.clone()), vec![]);
    }

    #[test]
    fn driver_change_updates_only_changed_properties() {
        let old = runbook_inventory();
        let mut new = old.clone();
        let addr: PciAddress = "0000:41:00.0".parse().unwrap();
        new.functions.get_mut(&addr).unwrap().driver = Some("vfio-pci".into());
        new.groups.get_mut(&66).unwrap().members[0].driver = Some("vfio-pci".into());
        let changes = diff(&build(&old), &build(&new));
        let summary: Vec<(String, Vec<&str>)> = changes
            .iter()
            .map(|c| match c {
                Change::Updated { path, changed, .. } => {
                    (path.to_string(), changed.iter().map(|(n, _)| *n).collect())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0".to_owned(),
                    vec!["Driver", "State"]
                ),
                (
                    "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned(),
                    vec!["Members"]
                ),
            ]
        );
        let Change::Updated { changed, .. } = &changes[0] else {
            unreachable!()
        };
        assert_eq!(changed[0].1, Value::from("vfio-pci"));
    }

    #[test]
    fn mdev_removal_removes_object_and_updates_parent() {
        let old = runbook_inventory();
        let mut new = old.clone();
        new.mdevs.clear();
        new.groups.remove(&67);
        new.mdev_parents.get_mut("0000:41:00.0").unwrap().types[0].available_instances = Some(2);
        let changes = diff(&build(&old), &build(&new));
        assert_eq!(changes.len(), 3, "{changes:#?}");
        assert!(
            matches!(&changes[0], Change::Removed { path, kind: Kind::Mdev }
            if path.as_str().ends_with("aa618089_8b16_4d01_a136_25a0f3c73123"))
        );
        assert!(
            matches!(&changes[1], Change::Removed { path, kind: Kind::IommuGroup }
            if path.as_str().ends_with("/67"))
        );
        let Change::Updated { changed, .. } = &changes[2] else {
            panic!("{changes:#?}")
        };
        let names: Vec<&str> = changed.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["Types", "Children"]);
    }

    #[test]
    fn additions_put_referents_first_and_removals_referrers_first() {
        let tree = build(&runbook_inventory());
        let added: Vec<(Kind, String)> = diff(&ObjectTree::default(), &tree)
            .into_iter()
            .filter_map(|c| match c {
                Change::Added { path, iface } => iface.kind().map(|k| (k, path)),
                _ => None,
            })
            .collect();
        let gpu = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0".to_owned();
        let mdev = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123".to_owned();
        assert_eq!(
            added,
            [
                (
                    Kind::IommuGroup,
                    "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned()
                ),
                (
                    Kind::IommuGroup,
                    "/org/gpuvirt/GpuVirt1/iommu_groups/67".to_owned()
                ),
                (Kind::Gpu, gpu.clone()),
                (Kind::ShardParent, gpu.clone()),
                (Kind::Mdev, mdev.clone()),
            ]
        );
        let removed: Vec<(Kind, String)> = diff(&tree, &ObjectTree::default())
            .into_iter()
            .filter_map(|c| match c {
                Change::Removed { path, kind } => Some((kind, path)),
                _ => None,
            })
            .collect();
        assert_eq!(
            removed,
            [
                (Kind::Mdev, mdev),
                (Kind::ShardParent, gpu.clone()),
                (Kind::Gpu, gpu),
                (
                    Kind::IommuGroup,
                    "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned()
                ),
                (
                    Kind::IommuGroup,
                    "/org/gpuvirt/GpuVirt1/iommu_groups/67".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn non_pci_parent_gets_its_own_object() {
        let mut inv = Inventory::default();
        inv.mdev_parents.insert(
            "mbochs".into(),
            MdevParent {
                name: "mbochs".into(),
                sysfs_path: "devices/virtual/mbochs/mbochs".into(),
                pci_address: None,
                types: vec![MdevType {
                    id: "mbochs-1".into(),
                    name: Some("mbochs-small".into()),
                    description: None,
                    device_api: Some("vfio-pci".into()),
                    available_instances: Some(4),
                }],
            },
        );
        let tree = build(&inv);
        let spec = &tree.objects["/org/gpuvirt/GpuVirt1/parents/mbochs"];
        assert_eq!(spec.shard_parent.as_ref().unwrap().types["mbochs-1"].1, "");
        assert!(spec.gpu.is_none());
    }

    #[test]
    fn nvidia_vf_backend_counts_offers_and_children() {
        let mut inv = Inventory::default();
        let mut pf = function("0000:c1:00.0", 0x030200, Some("nvidia"), 80);
        let mut vfs = vec![];
        for (i, current) in [(4u8, Some(558)), (5, None)] {
            let mut vf = function(
                &format!("0000:c1:00.{i}"),
                0x030200,
                Some("nvidia"),
                80 + u32::from(i),
            );
            vf.physfn = Some(pf.address);
            vf.nvidia_vgpu = Some(NvidiaVfVgpu {
                creatable_types: vec![VgpuTypeOffer {
                    id: 558,
                    name: "NVIDIA L40S-24Q".into(),
                }],
                current_type: current,
            });
            vfs.push(vf);
        }
        pf.sriov = Some(Sriov {
            total_vfs: 32,
            num_vfs: 2,
            vfs: vfs.iter().map(|v| v.address).collect(),
        });
        for f in std::iter::once(pf).chain(vfs) {
            inv.gpus.insert(
                f.address,
                Gpu {
                    address: f.address,
                    companions: vec![],
                },
            );
            inv.functions.insert(f.address, f);
        }
        let tree = build(&inv);
        let shard = tree.objects["/org/gpuvirt/GpuVirt1/gpus/0000_c1_00_0"]
            .shard_parent
            .clone()
            .unwrap();
        assert_eq!(shard.backend, "nvidia-vf");
        assert_eq!(shard.types["558"].3, 2);
        assert_eq!(
            shard.children,
            [path("/org/gpuvirt/GpuVirt1/gpus/0000_c1_00_4")]
        );
    }
}
