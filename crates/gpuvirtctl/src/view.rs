//! What the CLI shows, read with `Manager.GetObjects` (every object, or only those a command
//! needs: [`fetch_objects`]) in the `GetManagedObjects` form; the views are plain serialisable
//! values so `--json` and the tables share them.

use std::collections::HashMap;

use gpuvirt_api::{self as api, GroupMemberWire, TypeInfo, TypeInfoWire};
use serde::Serialize;
use zbus::fdo::ManagedObjects;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

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

type Props = HashMap<String, OwnedValue>;

/// The objects carrying any of `interfaces` (every object when empty), with all their
/// interfaces (a GPU's ShardParent comes with it), read with one `Manager.GetObjects` call:
/// gpuvirtd answers from its own tree. `GetManagedObjects` would make it gather every object
/// of the host (on a 5000-function host most of them IOMMU groups nobody asked for), and a
/// `GetAll` per object costs a bus round trip each (a stock system bus lets one connection
/// await only 128 replies).
pub async fn fetch_objects(
    connection: &zbus::Connection,
    interfaces: &[&str],
) -> zbus::Result<Host> {
    let options: HashMap<&str, zbus::zvariant::Value<'_>> = HashMap::new();
    let reply = connection
        .call_method(
            Some(api::BUS_NAME),
            api::MANAGER_PATH,
            Some(api::MANAGER_INTERFACE),
            "GetObjects",
            &(interfaces, options),
        )
        .await?;
    let objects: ManagedObjects = reply.body().deserialize()?;
    Ok(Host::from_managed_objects(objects))
}

fn get<T: TryFrom<OwnedValue>>(props: &Props, name: &str) -> Option<T> {
    props
        .get(name)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

fn string(props: &Props, name: &str) -> String {
    get(props, name).unwrap_or_default()
}

fn hex4(props: &Props, name: &str) -> String {
    format!("{:04x}", get::<u16>(props, name).unwrap_or(0))
}

fn group_id(props: &Props, name: &str) -> Option<u32> {
    get::<OwnedObjectPath>(props, name).and_then(|p| api::group_id_from_path(p.as_str()))
}

fn shard(path: &str, props: &Props) -> ShardView {
    let types: HashMap<String, TypeInfoWire> = get(props, "Types").unwrap_or_default();
    let mut children: Vec<String> = get::<Vec<OwnedObjectPath>>(props, "Children")
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    children.sort();
    ShardView {
        path: path.to_owned(),
        name: string(props, "Name"),
        backend: string(props, "Backend"),
        types: TypeInfo::from_wire(types),
        children,
    }
}

impl Host {
    pub fn from_managed_objects(objects: ManagedObjects) -> Host {
        let mut host = Host::default();
        for (path, interfaces) in objects {
            let path = path.as_str();
            let iface = |name: &str| {
                interfaces
                    .iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, p)| p)
            };
            if let Some(p) = iface(api::GPU_INTERFACE) {
                host.gpus.push(GpuView {
                    path: path.to_owned(),
                    pci_address: string(p, "PciAddress"),
                    vendor_id: hex4(p, "VendorId"),
                    device_id: hex4(p, "DeviceId"),
                    subsystem_vendor_id: hex4(p, "SubsystemVendorId"),
                    subsystem_device_id: hex4(p, "SubsystemDeviceId"),
                    vendor_name: string(p, "VendorName"),
                    product_name: string(p, "ProductName"),
                    subsystem_name: string(p, "SubsystemName"),
                    class_code: format!("{:06x}", get::<u32>(p, "ClassCode").unwrap_or(0)),
                    driver: string(p, "Driver"),
                    driver_override: string(p, "DriverOverride"),
                    kernel_modules: get(p, "KernelModules").unwrap_or_default(),
                    boot_vga: get(p, "BootVga").unwrap_or(false),
                    numa_node: get(p, "NumaNode").unwrap_or(-1),
                    reset_methods: get(p, "ResetMethods").unwrap_or_default(),
                    iommu_group: group_id(p, "IommuGroup"),
                    companions: get(p, "Companions").unwrap_or_default(),
                    state: string(p, "State"),
                    physical_function: string(p, "PhysicalFunction"),
                    virtual_functions: get(p, "VirtualFunctions").unwrap_or_default(),
                    sriov_total_vfs: get(p, "SriovTotalVfs").unwrap_or(0),
                    sriov_num_vfs: get(p, "SriovNumVfs").unwrap_or(0),
                    shard: iface(api::SHARD_PARENT_INTERFACE).map(|s| shard(path, s)),
                });
            } else if let Some(p) = iface(api::SHARD_PARENT_INTERFACE) {
                host.other_parents.push(shard(path, p));
            }
            if let Some(p) = iface(api::IOMMU_GROUP_INTERFACE) {
                let members: Vec<GroupMemberWire> = get(p, "Members").unwrap_or_default();
                host.groups.push(GroupView {
                    path: path.to_owned(),
                    id: get(p, "Id").unwrap_or(0),
                    viable: get(p, "Viable").unwrap_or(false),
                    members: members
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
                    viability_problems: get(p, "ViabilityProblems").unwrap_or_default(),
                });
            }
            if let Some(p) = iface(api::MDEV_INTERFACE) {
                host.mdevs.push(MdevView {
                    path: path.to_owned(),
                    uuid: string(p, "Uuid"),
                    parent: string(p, "ParentName"),
                    type_id: string(p, "Type"),
                    type_name: string(p, "TypeName"),
                    active: get(p, "Active").unwrap_or(false),
                    driver: string(p, "Driver"),
                    iommu_group: group_id(p, "IommuGroup"),
                });
            }
        }
        host.gpus.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
        host.other_parents.sort_by(|a, b| a.name.cmp(&b.name));
        host.groups.sort_by_key(|g| g.id);
        host.mdevs
            .sort_by(|a, b| (&a.parent, &a.uuid).cmp(&(&b.parent, &b.uuid)));
        host
    }
}
