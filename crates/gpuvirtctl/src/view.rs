//! What the CLI shows, read from a `GetManagedObjects` reply or from only the objects a
//! command needs ([`fetch_scoped`]); the views are plain serialisable values so `--json` and
//! the tables share them.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Which objects a read command needs: every child of `node`, read with `GetAll` of
/// `interface` (a child without it is skipped: it went away meanwhile) and of `optional` (some
/// children lack it, such as a GPU that cannot be sharded).
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub node: &'static str,
    pub interface: &'static str,
    pub optional: Option<&'static str>,
}

/// GPUs with their sharding.
pub const GPUS: Scope = Scope {
    node: api::GPUS_PATH,
    interface: api::GPU_INTERFACE,
    optional: Some(api::SHARD_PARENT_INTERFACE),
};
/// mdev parents that are not GPUs.
pub const OTHER_PARENTS: Scope = Scope {
    node: api::PARENTS_PATH,
    interface: api::SHARD_PARENT_INTERFACE,
    optional: None,
};
/// Mediated devices.
pub const MDEVS: Scope = Scope {
    node: api::MDEVS_PATH,
    interface: api::MDEV_INTERFACE,
    optional: None,
};

/// Most `GetAll` calls [`fetch_scoped`] keeps in flight: well under the 128 pending replies a
/// stock system bus allows one connection.
const MAX_CALLS_IN_FLIGHT: u32 = 64;

/// Reads only the objects under `scopes`: the children of each node (one `Introspect`), then
/// their properties with pipelined `GetAll` calls on the one connection. `GetManagedObjects`
/// would make gpuvirtd gather every object of the host (on a 5000-function host most of them
/// IOMMU groups nobody asked for) and is the bulk of a read command's time there.
pub async fn fetch_scoped(connection: &zbus::Connection, scopes: &[Scope]) -> zbus::Result<Host> {
    let mut paths: Vec<(String, Scope)> = Vec::new();
    for scope in scopes {
        let reply = connection
            .call_method(
                Some(api::BUS_NAME),
                scope.node,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await;
        let xml: String = match reply {
            Ok(m) => m.body().deserialize()?,
            // The node exists only while it has children (no GPUs, no mdevs...).
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject" =>
            {
                String::new()
            }
            Err(e) => return Err(e),
        };
        paths.extend(
            child_nodes(&xml)
                .into_iter()
                .map(|name| (format!("{}/{name}", scope.node), *scope)),
        );
    }
    let get_all = |path: &str, interface: &'static str| {
        let connection = connection.clone();
        let path = path.to_owned();
        async move {
            let reply = connection
                .call_method(
                    Some(api::BUS_NAME),
                    path.as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "GetAll",
                    &(interface,),
                )
                .await?;
            reply.body().deserialize::<Props>()
        }
    };
    // Many calls in flight at once: the bus and gpuvirtd answer them in order, so the cost is
    // one round trip plus the work, not one round trip per object. Bounded, because the bus
    // caps the replies one connection may await (dbus-daemon's max_replies_per_connection:
    // 128 on a system bus whose configuration does not raise it); past the cap every further
    // call fails with LimitsExceeded.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for (path, scope) in paths {
        let main = get_all(&path, scope.interface);
        let extra = scope.optional.map(|i| (i, get_all(&path, i)));
        // One permit per call this task makes.
        let calls = if extra.is_some() { 2 } else { 1 };
        let permit = in_flight
            .clone()
            .acquire_many_owned(calls)
            .await
            .map_err(|_| zbus::Error::Failure("the call limiter closed".into()))?;
        tasks.spawn(async move {
            let _permit = permit;
            let (main, extra) = match extra {
                Some((name, call)) => {
                    let (main, extra) = tokio::join!(main, call);
                    // Only some objects have the optional interface.
                    (main, extra.ok().map(|props| (name, props)))
                }
                None => (main.await, None),
            };
            (path, scope.interface, main, extra)
        });
    }
    let mut objects = ManagedObjects::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((path, interface, main, extra)) = joined else {
            continue;
        };
        let props = match main {
            Ok(p) => p,
            // Removed between the listing and the read: simply gone.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject"
                    || name.as_str() == "org.freedesktop.DBus.Error.UnknownInterface" =>
            {
                continue
            }
            Err(zbus::Error::FDO(e))
                if matches!(
                    *e,
                    zbus::fdo::Error::UnknownObject(_) | zbus::fdo::Error::UnknownInterface(_)
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let mut interfaces = HashMap::new();
        interfaces.insert(zbus::names::OwnedInterfaceName::try_from(interface)?, props);
        if let Some((name, props)) = extra {
            interfaces.insert(zbus::names::OwnedInterfaceName::try_from(name)?, props);
        }
        objects.insert(OwnedObjectPath::try_from(path)?, interfaces);
    }
    if objects.is_empty() {
        // An empty answer must still come from a running daemon.
        api::ManagerProxy::new(connection).await?.version().await?;
    }
    Ok(Host::from_managed_objects(objects))
}

/// The names of the `<node name="..."/>` children in an introspection document.
pub fn child_nodes(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<node name=\"") {
        rest = &rest[i + "<node name=\"".len()..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_child_nodes() {
        let xml = "<node>\n <interface name=\"x\"/>\n <node name=\"0000_41_00_0\"/>\n <node name=\"0000_42_00_0\"/>\n</node>";
        assert_eq!(child_nodes(xml), ["0000_41_00_0", "0000_42_00_0"]);
        assert!(child_nodes("<node/>").is_empty());
    }
}
