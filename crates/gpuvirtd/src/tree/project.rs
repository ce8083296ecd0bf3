//! The served tree as a pure function of an [`Inventory`]: which objects exist and the
//! properties each one shows, plus the policy's verdicts on the GPUs.
//! May import: tree/types.rs, tree/diff.rs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gpuvirt_api as api;
use gpuvirt_api::TypeInfoWire;
use gpuvirt_core::{DrmNodes, Inventory, MdevParent, PciAddress, PciFunction};
use zbus::zvariant::OwnedObjectPath;

use super::types::{
    Change, GpuProps, Iface, IommuGroupProps, ManagerProps, MdevProps, ObjectKey, ObjectSpec,
    ObjectTree, PolicyFacts, ShardParentProps,
};

/// Puts `facts` (none: "") into a Gpu object's properties.
pub(super) fn with_policy_facts(spec: &mut ObjectSpec, facts: Option<&PolicyFacts>) {
    let Some(gpu) = spec.gpu.as_mut() else {
        return;
    };
    let empty = PolicyFacts::default();
    let f = facts.unwrap_or(&empty);
    if gpu.role != f.role
        || gpu.policy_rule != f.rule
        || gpu.on_demand != f.on_demand
        || gpu.owner != f.owner
        || gpu.resource_name != f.resource_name
    {
        let props = Arc::make_mut(gpu);
        props.role = f.role.clone();
        props.policy_rule = f.rule.clone();
        props.on_demand = f.on_demand;
        props.owner = f.owner.clone();
        props.resource_name = f.resource_name.clone();
    }
}

/// Replaces the policy's verdicts (after a policy load or reload, or an inventory change that
/// may change what matches) and returns the Gpu objects whose `Role`/`PolicyRule` changed.
pub fn set_policy_facts(
    tree: &mut ObjectTree,
    facts: BTreeMap<PciAddress, PolicyFacts>,
) -> Vec<Change> {
    if tree.policy_facts == facts {
        return Vec::new();
    }
    let mut changes = Vec::new();
    for (path, spec) in &mut tree.objects {
        let Some(old) = spec.gpu.clone() else {
            continue;
        };
        let Ok(address) = old.pci_address.parse::<PciAddress>() else {
            continue;
        };
        with_policy_facts(spec, facts.get(&address));
        if let Some(new) = &spec.gpu {
            let changed = old.changed(new);
            if !changed.is_empty() {
                changes.push(Change::Updated {
                    path: path.clone(),
                    iface: Iface::Gpu(new.clone()),
                    changed,
                });
            }
        }
    }
    tree.policy_facts = facts;
    changes
}

/// The IOMMU groups that get an object: those holding a GPU, a slot companion, a VF of a GPU
/// or a PCI mdev parent.
pub fn exported_groups(inv: &Inventory) -> BTreeSet<u32> {
    let group_of = |a: &PciAddress| inv.functions.get(a).and_then(|f| f.iommu_group);
    // Gathered in a Vec and built in one go (sorted bulk load): inserting one by one costs
    // a tree search per mdev, and this runs on every event.
    let mut out = Vec::with_capacity(inv.gpus.len() + inv.mdev_parents.len());
    for gpu in inv.gpus.values() {
        out.extend(group_of(&gpu.address));
        out.extend(gpu.companions.iter().filter_map(group_of));
        if let Some(sriov) = inv
            .functions
            .get(&gpu.address)
            .and_then(|f| f.sriov.as_ref())
        {
            out.extend(sriov.vfs.iter().filter_map(group_of));
        }
    }
    for parent in inv.mdev_parents.values() {
        out.extend(parent.pci_address.as_ref().and_then(group_of));
    }
    // Not an mdev's own group: vfio makes one per mdev, holding only it; gpuvirt never acts
    // on it, and on a host with thousands of vGPUs those objects were half the tree (and half
    // the daemon's memory for zbus's nodes). The Mdev carries its number (IommuGroupId).
    out.into_iter().collect()
}

/// The object `key` names in `inv`, `None` when it has none.
pub fn spec_of(inv: &Inventory, key: &ObjectKey, exported: &BTreeSet<u32>) -> Option<ObjectSpec> {
    match key {
        ObjectKey::Gpu(a) => {
            let gpu = inv.gpus.get(a)?;
            let function = inv.functions.get(a)?;
            Some(ObjectSpec {
                gpu: Some(Arc::new(gpu_props(function, &gpu.companions))),
                shard_parent: shard_parent_of(inv, function).map(Arc::new),
                ..ObjectSpec::default()
            })
        }
        ObjectKey::Parent(name) => {
            let parent = inv.mdev_parents.get(name)?;
            if parent_is_gpu(inv, parent) {
                return None;
            }
            Some(ObjectSpec {
                shard_parent: Some(Arc::new(mdev_parent_props(inv, parent))),
                ..ObjectSpec::default()
            })
        }
        ObjectKey::Mdev(uuid) => {
            let mdev = inv.mdevs.get(uuid)?;
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
            Some(ObjectSpec {
                mdev: Some(Arc::new(MdevProps {
                    uuid: mdev.uuid.hyphenated().to_string(),
                    parent: parent_path,
                    parent_name: mdev.parent.clone(),
                    type_id: mdev.type_id.clone().unwrap_or_default(),
                    type_name,
                    active: true,
                    driver: mdev.driver.clone().unwrap_or_default(),
                    // An mdev's own group holds only the mdev and is not an object (see
                    // exported_groups); its number is IommuGroupId.
                    iommu_group: api::no_object(),
                    iommu_group_id: mdev
                        .iommu_group
                        .and_then(|g| i32::try_from(g).ok())
                        .unwrap_or(-1),
                })),
                ..ObjectSpec::default()
            })
        }
        ObjectKey::Group(id) => {
            if !exported.contains(id) {
                return None;
            }
            let group = inv.groups.get(id)?;
            Some(ObjectSpec {
                iommu_group: Some(Arc::new(IommuGroupProps {
                    id: *id,
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
                })),
                ..ObjectSpec::default()
            })
        }
    }
}

/// Builds the tree `inv` implies (see the gpuvirt-api crate docs for the layout).
pub fn build(inv: &Inventory) -> ObjectTree {
    let exported = exported_groups(inv);
    let keys = inv
        .gpus
        .keys()
        .map(|a| ObjectKey::Gpu(*a))
        .chain(
            inv.mdev_parents
                .keys()
                .map(|n| ObjectKey::Parent(n.clone())),
        )
        .chain(inv.mdevs.keys().map(|u| ObjectKey::Mdev(*u)))
        .chain(exported.iter().map(|g| ObjectKey::Group(*g)));
    let objects = keys
        .filter_map(|k| spec_of(inv, &k, &exported).map(|s| (k.path(), s)))
        .collect();
    ObjectTree {
        manager: manager_props(inv),
        objects,
        exported_groups: exported,
        policy_facts: BTreeMap::new(),
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
        // The policy's verdict, filled in by `with_policy_facts`.
        role: String::new(),
        policy_rule: String::new(),
        on_demand: false,
        owner: String::new(),
        resource_name: String::new(),
        physical_function: f.physfn.map(|a| a.to_string()).unwrap_or_default(),
        virtual_functions: f
            .sriov
            .as_ref()
            .map(|s| s.vfs.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        sriov_total_vfs: f.sriov.as_ref().map_or(0, |s| s.total_vfs),
        sriov_num_vfs: f.sriov.as_ref().map_or(0, |s| s.num_vfs),
        drm_card: drm_path(f, |d| &d.card),
        drm_render_node: drm_path(f, |d| &d.render),
        drm_card_by_path: drm_path(f, |d| &d.card_by_path),
        drm_render_node_by_path: drm_path(f, |d| &d.render_by_path),
    }
}

/// One of `f`'s DRM node paths, empty when it has none.
fn drm_path(f: &PciFunction, which: impl Fn(&DrmNodes) -> &Option<String>) -> String {
    f.drm
        .as_ref()
        .and_then(|d| which(d).clone())
        .unwrap_or_default()
}

fn mdev_parent_props(inv: &Inventory, parent: &MdevParent) -> ShardParentProps {
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
        children: inv
            .mdevs
            .values()
            .filter(|m| m.parent == parent.name)
            .map(|m| api::mdev_path(&m.uuid))
            .collect(),
    }
}

/// The ShardParent a GPU carries: its mdev parent if it is one; else NVIDIA per-VF vGPU when
/// any enabled VF has the `nvidia/` files; else plain SR-IOV when it can have VFs.
fn shard_parent_of(inv: &Inventory, f: &PciFunction) -> Option<ShardParentProps> {
    if let Some(parent) = inv
        .mdev_parents
        .values()
        .find(|p| p.pci_address == Some(f.address))
    {
        return Some(mdev_parent_props(inv, parent));
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
        // The core's reading of the card (as the policy and CreateMdev see it): every type a
        // free VF can create, with how many VFs can, and every type in use (0 available),
        // named from the VFs' lists or, once none lists it, from the remembered names.
        let types: HashMap<String, TypeInfoWire> = gpuvirt_core::shard::sriov_parent(inv, f)
            .map(|p| p.types)
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let name = t.name.unwrap_or_default();
                (t.id, (name, String::new(), String::new(), t.available))
            })
            .collect();
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
        // One type, the VF itself (the id the policy's `type = "vf"` names); what is left to
        // enable is its available count.
        types: HashMap::from([(
            gpuvirt_core::policy::shard::SRIOV_VF_TYPE.to_owned(),
            (
                "SR-IOV VF".to_owned(),
                format!(
                    "virtual function, {} of {} enabled",
                    sriov.num_vfs, sriov.total_vfs
                ),
                "vfio-pci".to_owned(),
                sriov.total_vfs.saturating_sub(sriov.num_vfs),
            ),
        )]),
        children: vfs.iter().filter_map(|vf| vf_path(vf)).collect(),
    })
}
