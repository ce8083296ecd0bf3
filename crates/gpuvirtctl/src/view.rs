//! What the CLI shows: plain serialisable views of gpuvirtd's objects (decoded from
//! `Manager.GetObjects` and `Manager.ListMdevs` by the client module), so `--json` and the tables
//! share them. May import: gpuvirt_api only (no D-Bus calls here).

use gpuvirt_api::{self as api, ShardParentProps, TypeInfo};
use serde::Serialize;
use zbus::zvariant::OwnedObjectPath;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuView {
    pub path: String,
    pub pci_address: String,
    pub vendor_id: String,
    pub device_id: String,
    pub subsystem_vendor_id: String,
    pub subsystem_device_id: String,
    pub vendor_name: String,
    pub product_name: String,
    pub subsystem_name: String,
    pub class_code: String,
    pub driver: String,
    pub driver_override: String,
    pub kernel_modules: Vec<String>,
    pub boot_vga: bool,
    pub numa_node: i32,
    pub reset_methods: Vec<String>,
    pub iommu_group: Option<u32>,
    pub companions: Vec<String>,
    pub state: String,
    pub physical_function: String,
    pub virtual_functions: Vec<String>,
    pub sriov_total_vfs: u32,
    pub sriov_num_vfs: u32,
    pub shard: Option<ShardView>,
    /// The DRM nodes (Gpu's `Drm*` properties); left out when the GPU has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drm: Option<DrmView>,
}

/// A GPU's DRM nodes, `/dev/dri` paths; a by-path name is empty where udev made none.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrmView {
    pub card: String,
    pub render_node: String,
    pub card_by_path: String,
    pub render_node_by_path: String,
}

impl DrmView {
    /// The view of `p`'s DRM properties, `None` when every one is empty.
    fn of(p: &api::GpuProps) -> Option<DrmView> {
        let view = DrmView {
            card: p.drm_card.clone(),
            render_node: p.drm_render_node.clone(),
            card_by_path: p.drm_card_by_path.clone(),
            render_node_by_path: p.drm_render_node_by_path.clone(),
        };
        (!(view.card.is_empty() && view.render_node.is_empty())).then_some(view)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShardView {
    pub path: String,
    pub name: String,
    pub backend: String,
    pub types: Vec<TypeInfo>,
    pub children: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberView {
    pub name: String,
    pub class: String,
    pub driver: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupView {
    pub path: String,
    pub id: u32,
    pub viable: bool,
    pub members: Vec<MemberView>,
    pub viability_problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MdevView {
    pub path: String,
    pub uuid: String,
    pub parent: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub type_name: String,
    pub active: bool,
    pub driver: String,
    pub iommu_group: Option<u32>,
}

/// The whole exported tree, sorted for stable output.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Host {
    pub gpus: Vec<GpuView>,
    /// mdev parents that are not GPUs (mbochs, mtty, ...).
    pub other_parents: Vec<ShardView>,
    pub groups: Vec<GroupView>,
    pub mdevs: Vec<MdevView>,
}

impl MdevView {
    /// The views of `Manager.ListMdevs`' typed rows, sorted by parent and UUID.
    pub fn from_rows(rows: Vec<api::MdevRowWire>) -> Vec<MdevView> {
        let mut mdevs: Vec<MdevView> = rows
            .into_iter()
            .map(
                |(path, uuid, _parent, parent_name, type_id, type_name, active, driver, group)| {
                    MdevView {
                        path: path.to_string(),
                        uuid,
                        parent: parent_name,
                        type_id,
                        type_name,
                        active,
                        driver,
                        iommu_group: u32::try_from(group).ok(),
                    }
                },
            )
            .collect();
        sort_mdevs(&mut mdevs);
        mdevs
    }
}

/// The order every listing of mdevs uses: by parent, then UUID.
fn sort_mdevs(mdevs: &mut [MdevView]) {
    mdevs.sort_by(|a, b| (&a.parent, &a.uuid).cmp(&(&b.parent, &b.uuid)));
}

fn hex4(value: u16) -> String {
    format!("{value:04x}")
}

fn group_id(path: &OwnedObjectPath) -> Option<u32> {
    api::group_id_from_path(path.as_str())
}

fn shard(path: &str, props: ShardParentProps) -> ShardView {
    let mut children: Vec<String> = props.children.into_iter().map(|p| p.to_string()).collect();
    children.sort();
    ShardView {
        path: path.to_owned(),
        name: props.name,
        backend: props.backend,
        types: TypeInfo::from_wire(props.types),
        children,
    }
}

impl Host {
    pub fn from_objects(objects: api::Objects) -> Host {
        let mut host = Host::default();
        for (path, interfaces) in objects.0 {
            let path = path.as_str();
            if let Some(p) = interfaces.gpu {
                host.gpus.push(GpuView {
                    path: path.to_owned(),
                    drm: DrmView::of(&p),
                    vendor_id: hex4(p.vendor_id),
                    device_id: hex4(p.device_id),
                    subsystem_vendor_id: hex4(p.subsystem_vendor_id),
                    subsystem_device_id: hex4(p.subsystem_device_id),
                    class_code: format!("{:06x}", p.class_code),
                    iommu_group: group_id(&p.iommu_group),
                    pci_address: p.pci_address,
                    vendor_name: p.vendor_name,
                    product_name: p.product_name,
                    subsystem_name: p.subsystem_name,
                    driver: p.driver,
                    driver_override: p.driver_override,
                    kernel_modules: p.kernel_modules,
                    boot_vga: p.boot_vga,
                    numa_node: p.numa_node,
                    reset_methods: p.reset_methods,
                    companions: p.companions,
                    state: p.state,
                    physical_function: p.physical_function,
                    virtual_functions: p.virtual_functions,
                    sriov_total_vfs: p.sriov_total_vfs,
                    sriov_num_vfs: p.sriov_num_vfs,
                    shard: interfaces.shard_parent.map(|s| shard(path, *s)),
                });
            } else if let Some(p) = interfaces.shard_parent {
                host.other_parents.push(shard(path, *p));
            }
            if let Some(p) = interfaces.iommu_group {
                host.groups.push(GroupView {
                    path: path.to_owned(),
                    id: p.id,
                    viable: p.viable,
                    members: p
                        .members
                        .into_iter()
                        .map(|(name, class, driver)| MemberView {
                            name,
                            class: if class == 0 {
                                String::new()
                            } else {
                                format!("{class:06x}")
                            },
                            driver,
                        })
                        .collect(),
                    viability_problems: p.viability_problems,
                });
            }
            if let Some(p) = interfaces.mdev {
                host.mdevs.push(MdevView {
                    path: path.to_owned(),
                    iommu_group: u32::try_from(p.iommu_group_id).ok(),
                    uuid: p.uuid,
                    parent: p.parent_name,
                    type_id: p.type_id,
                    type_name: p.type_name,
                    active: p.active,
                    driver: p.driver,
                });
            }
        }
        host.gpus.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
        host.other_parents.sort_by(|a, b| a.name.cmp(&b.name));
        host.groups.sort_by_key(|g| g.id);
        sort_mdevs(&mut host.mdevs);
        host
    }
}
