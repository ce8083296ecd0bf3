//! The object interfaces' properties as plain structs, listed once for both sides: gpuvirtd
//! serves them (its zbus interfaces are generated from the same lists) and gpuvirtctl decodes
//! `Manager.GetObjects` replies straight into them, without a variant map per object. May
//! import: crate::wire (its tests also the names and paths).

use std::collections::HashMap;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use zbus::zvariant::{OwnedObjectPath, Signature, Type, Value};

use crate::wire::{GroupMemberWire, TypeInfoWire};

/// Properties that changed: D-Bus name and new value.
pub type ChangedProperties = Vec<(&'static str, Value<'static>)>;

/// Calls `$callback! { GpuProps, "org.gpuvirt.GpuVirt1.Gpu" { field: Type => "DBusName", ... }
/// $rest }`: the Gpu interface's property list, for gpuvirtd to build its zbus interface from.
#[macro_export]
macro_rules! gpu_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            GpuProps, "org.gpuvirt.GpuVirt1.Gpu" {
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
                role: String => "Role",
                policy_rule: String => "PolicyRule",
                /// Whether the governing rule passes the card through on demand
                /// (`on_demand = true`): it stays with the host until a VM that uses it starts,
                /// and AssignPassthrough/ReturnToHost are allowed on it (the libvirt hook calls
                /// them at the domain's prepare and release); false otherwise and with no policy.
                on_demand: bool => "OnDemand",
                /// Who writes to the card, from its governing rule's `owner`: `gpuvirt`, or an
                /// engine that manages it itself (`kubevirt`, `nova`, `proxmox`, `external`),
                /// in which case gpuvirt only observes it and refuses every manual operation
                /// with PolicyViolation naming the owner; empty with no policy in force.
                owner: String => "Owner",
                /// The governing rule's `resource`: the Kubernetes extended resource name the
                /// device plugin advertises the card (a passthrough card) or its vGPUs under;
                /// empty for the plugin's default (NVIDIA's plugin's naming).
                resource_name: String => "ResourceName",
                physical_function: String => "PhysicalFunction",
                virtual_functions: Vec<String> => "VirtualFunctions",
                sriov_total_vfs: u32 => "SriovTotalVfs",
                sriov_num_vfs: u32 => "SriovNumVfs",
                /// The DRM primary (KMS) node its driver registered, e.g. `/dev/dri/card1`
                /// (from sysfs `<device>/drm/card*`); empty when it has none (no DRM driver
                /// bound: on vfio-pci, or a driver without DRM such as nvidia without nvidia-drm).
                drm_card: String => "DrmCard",
                /// The DRM render node, e.g. `/dev/dri/renderD129` (sysfs `<device>/drm/renderD*`),
                /// which virtio-gpu/virgl renders with; empty when none (KMS-only drivers such
                /// as ast or bochs have none). The minor follows probe order and may change.
                drm_render_node: String => "DrmRenderNode",
                /// udev's stable name of the card node, `/dev/dri/by-path/pci-<address>-card`,
                /// when that link exists and points at `DrmCard`; else empty (no udev, or not
                /// made yet).
                drm_card_by_path: String => "DrmCardByPath",
                /// udev's stable name of the render node, `/dev/dri/by-path/pci-<address>-render`,
                /// when that link exists and points at `DrmRenderNode`; else empty. The name a
                /// VM definition should use: it follows the PCI address, not probe order.
                drm_render_node_by_path: String => "DrmRenderNodeByPath",
            }
            $($rest)*
        }
    };
}

/// The ShardParent interface's property list; see [`gpu_properties!`].
#[macro_export]
macro_rules! shard_parent_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            ShardParentProps, "org.gpuvirt.GpuVirt1.ShardParent" {
                name: String => "Name",
                backend: String => "Backend",
                types: HashMap<String, TypeInfoWire> => "Types",
                children: Vec<OwnedObjectPath> => "Children",
            }
            $($rest)*
        }
    };
}

/// The IommuGroup interface's property list; see [`gpu_properties!`].
#[macro_export]
macro_rules! iommu_group_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            IommuGroupProps, "org.gpuvirt.GpuVirt1.IommuGroup" {
                id: u32 => "Id",
                members: Vec<GroupMemberWire> => "Members",
                viable: bool => "Viable",
                viability_problems: Vec<String> => "ViabilityProblems",
            }
            $($rest)*
        }
    };
}

/// The Mdev interface's property list; see [`gpu_properties!`].
#[macro_export]
macro_rules! mdev_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            MdevProps, "org.gpuvirt.GpuVirt1.Mdev" {
                uuid: String => "Uuid",
                parent: OwnedObjectPath => "Parent",
                parent_name: String => "ParentName",
                type_id: String => "Type",
                type_name: String => "TypeName",
                active: bool => "Active",
                driver: String => "Driver",
                iommu_group: OwnedObjectPath => "IommuGroup",
                iommu_group_id: i32 => "IommuGroupId",
            }
            $($rest)*
        }
    };
}

/// The Manager interface's property list; see [`gpu_properties!`]. gpuvirtd keeps its own
/// struct for them (with its update logic); callers read them with
/// [`read_manager_properties`](crate::read_manager_properties).
#[macro_export]
macro_rules! manager_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            ManagerProps, "org.gpuvirt.GpuVirt1.Manager" {
                version: String => "Version",
                kernel_release: String => "KernelRelease",
                iommu_enabled: bool => "IommuEnabled",
                iommu_reasons: Vec<String> => "IommuReasons",
                vfio_available: bool => "VfioAvailable",
                mdev_available: bool => "MdevAvailable",
                scan_warnings: Vec<String> => "ScanWarnings",
                nvidia_vgpu_manager: String => "NvidiaVgpuManager",
                policy_path: String => "PolicyPath",
                policy_error: String => "PolicyError",
                enforcement_mode: String => "EnforcementMode",
                reboot_required: bool => "RebootRequired",
                reboot_reasons: Vec<String> => "RebootReasons",
                drift: Vec<String> => "Drift",
                last_apply: String => "LastApply",
            }
            $($rest)*
        }
    };
}

/// The Job interface's property list; see [`gpu_properties!`].
#[macro_export]
macro_rules! job_properties {
    ($callback:ident { $($rest:tt)* }) => {
        $callback! {
            JobProps, "org.gpuvirt.GpuVirt1.Job" {
                operation: String => "Operation",
                objects: Vec<OwnedObjectPath> => "Objects",
                progress: f64 => "Progress",
                finished: bool => "Finished",
                success: bool => "Success",
                error_name: String => "ErrorName",
                message: String => "Message",
            }
            $($rest)*
        }
    };
}

/// Defines one interface's properties struct. It (de)serialises as the `a{sv}` that `GetAll`
/// returns, straight from and into the fields: a property the reader does not know is skipped,
/// one the sender left out keeps its default, one of another type is an error.
macro_rules! properties_struct {
    ($props:ident, $name:tt { $( $(#[$meta:meta])* $field:ident : $ty:ty => $dbus:tt ),* $(,)? }) => {
        #[doc = concat!("The properties of `", $name, "`.")]
        #[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize, Type)]
        #[zvariant(signature = "a{sv}")]
        #[serde(default)]
        pub struct $props {
            $(
                $(#[$meta])*
                #[serde(rename = $dbus, with = "zbus::zvariant::as_value")]
                pub $field: $ty,
            )*
        }

        impl $props {
            /// The interface these are the properties of.
            pub const INTERFACE: &'static str = $name;

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
    };
}

gpu_properties!(properties_struct {});
shard_parent_properties!(properties_struct {});
iommu_group_properties!(properties_struct {});
mdev_properties!(properties_struct {});
manager_properties!(properties_struct {});
job_properties!(properties_struct {});

/// One object's interfaces as `Manager.GetObjects` (and `GetManagedObjects`) sends them
/// (`a{sa{sv}}`), decoded straight into the property structs. Interfaces other than these four
/// (the standard ones, or one a newer daemon adds) are skipped. Boxed: an object is one of a
/// few thousand in a reply, and carries one or two of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectInterfaces {
    pub gpu: Option<Box<GpuProps>>,
    pub shard_parent: Option<Box<ShardParentProps>>,
    pub iommu_group: Option<Box<IommuGroupProps>>,
    pub mdev: Option<Box<MdevProps>>,
}

impl Type for ObjectInterfaces {
    const SIGNATURE: &'static Signature = <HashMap<String, GpuProps> as Type>::SIGNATURE;
}

impl<'de> serde::Deserialize<'de> for ObjectInterfaces {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InterfacesVisitor;

        impl<'de> Visitor<'de> for InterfacesVisitor {
            type Value = ObjectInterfaces;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of interface names to their properties")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = ObjectInterfaces::default();
                while let Some(name) = map.next_key::<&str>()? {
                    match name {
                        GpuProps::INTERFACE => out.gpu = Some(map.next_value()?),
                        ShardParentProps::INTERFACE => out.shard_parent = Some(map.next_value()?),
                        IommuGroupProps::INTERFACE => out.iommu_group = Some(map.next_value()?),
                        MdevProps::INTERFACE => out.mdev = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }

        deserializer.deserialize_map(InterfacesVisitor)
    }
}

/// A `Manager.GetObjects` (or `GetManagedObjects`) reply: each object path with its
/// interfaces, in the order sent (decoded into a list: nothing here looks a path up, and a
/// hash map of thousands of objects cost more to build than the rest of the decoding).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Objects(pub Vec<(OwnedObjectPath, ObjectInterfaces)>);

impl Objects {
    /// The interfaces of the object at `path`.
    pub fn get(&self, path: &str) -> Option<&ObjectInterfaces> {
        self.0
            .iter()
            .find(|(p, _)| p.as_str() == path)
            .map(|(_, i)| i)
    }
}

impl Type for Objects {
    const SIGNATURE: &'static Signature =
        <HashMap<OwnedObjectPath, ObjectInterfaces> as Type>::SIGNATURE;
}

impl<'de> serde::Deserialize<'de> for Objects {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectsVisitor;

        impl<'de> Visitor<'de> for ObjectsVisitor {
            type Value = Objects;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of object paths to their interfaces")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Objects(out))
            }
        }

        deserializer.deserialize_map(ObjectsVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use zbus::zvariant::serialized::Context;
    use zbus::zvariant::{to_bytes, OwnedValue, LE};

    fn gpu() -> GpuProps {
        GpuProps {
            pci_address: "0000:41:00.0".into(),
            vendor_id: 0x10de,
            kernel_modules: vec!["nvidia".into(), "nouveau".into()],
            numa_node: -1,
            iommu_group: crate::iommu_group_path(66),
            sriov_num_vfs: 4,
            ..GpuProps::default()
        }
    }

    #[test]
    fn properties_round_trip_through_the_get_all_form() {
        let ctx = Context::new_dbus(LE, 0);
        let bytes = to_bytes(ctx, &gpu()).unwrap();
        // The bytes are an a{sv} a variant-map reader understands...
        let generic: HashMap<String, OwnedValue> = bytes.deserialize().unwrap().0;
        assert_eq!(generic.len(), 31);
        assert_eq!(u16::try_from(&generic["VendorId"]).unwrap(), 0x10de);
        // ... and the struct reads back equal.
        let back: GpuProps = bytes.deserialize().unwrap().0;
        assert_eq!(back, gpu());
    }

    #[test]
    fn unknown_properties_are_skipped_and_missing_ones_default() {
        let ctx = Context::new_dbus(LE, 0);
        let mut sent: HashMap<&str, Value<'_>> = HashMap::new();
        sent.insert("PciAddress", Value::from("0000:01:00.0"));
        sent.insert("SomethingNewer", Value::from(vec![1u64, 2, 3]));
        sent.insert("NumaNode", Value::from(1i32));
        let bytes = to_bytes(ctx, &sent).unwrap();
        let read: GpuProps = bytes.deserialize().unwrap().0;
        assert_eq!(read.pci_address, "0000:01:00.0");
        assert_eq!(read.numa_node, 1);
        assert_eq!(read.driver, "");
    }

    #[test]
    fn a_property_of_another_type_is_an_error() {
        let ctx = Context::new_dbus(LE, 0);
        let mut sent: HashMap<&str, Value<'_>> = HashMap::new();
        sent.insert("VendorId", Value::from("10de"));
        let bytes = to_bytes(ctx, &sent).unwrap();
        let err = bytes.deserialize::<GpuProps>().unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");
    }

    /// `props` as the generic `a{sv}` a variant-map writer sends.
    fn generic<P: serde::Serialize + Type>(props: &P) -> HashMap<String, OwnedValue> {
        let ctx = Context::new_dbus(LE, 0);
        to_bytes(ctx, props).unwrap().deserialize().unwrap().0
    }

    #[test]
    fn object_interfaces_pick_the_known_ones() {
        let mdev = MdevProps {
            uuid: "5f6a0b3e-0000-4000-8000-000000000001".into(),
            active: true,
            ..MdevProps::default()
        };
        let mut newer = HashMap::new();
        newer.insert("Anything".to_owned(), OwnedValue::from(7u8));
        let sent: HashMap<&str, HashMap<String, OwnedValue>> = HashMap::from([
            (crate::GPU_INTERFACE, generic(&gpu())),
            (crate::MDEV_INTERFACE, generic(&mdev)),
            ("org.freedesktop.DBus.Properties", HashMap::new()),
            ("org.example.Newer", newer),
        ]);
        let bytes = to_bytes(Context::new_dbus(LE, 0), &sent).unwrap();
        let read: ObjectInterfaces = bytes.deserialize().unwrap().0;
        assert_eq!(read.gpu, Some(Box::new(gpu())));
        assert_eq!(read.mdev, Some(Box::new(mdev)));
        assert_eq!(read.shard_parent, None);
        assert_eq!(read.iommu_group, None);
    }

    #[test]
    fn objects_keep_every_path_with_its_interfaces() {
        let mdev = MdevProps {
            uuid: "5f6a0b3e-0000-4000-8000-000000000001".into(),
            ..MdevProps::default()
        };
        let paths = [
            "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0",
            "/org/gpuvirt/GpuVirt1/mdevs/x",
        ];
        let sent: HashMap<OwnedObjectPath, HashMap<&str, HashMap<String, OwnedValue>>> =
            HashMap::from([
                (
                    OwnedObjectPath::try_from(paths[0]).unwrap(),
                    HashMap::from([(crate::GPU_INTERFACE, generic(&gpu()))]),
                ),
                (
                    OwnedObjectPath::try_from(paths[1]).unwrap(),
                    HashMap::from([(crate::MDEV_INTERFACE, generic(&mdev))]),
                ),
            ]);
        let bytes = to_bytes(Context::new_dbus(LE, 0), &sent).unwrap();
        let read: Objects = bytes.deserialize().unwrap().0;
        assert_eq!(read.0.len(), 2);
        assert_eq!(read.get(paths[0]).unwrap().gpu.as_deref(), Some(&gpu()));
        assert_eq!(read.get(paths[1]).unwrap().mdev.as_deref(), Some(&mdev));
        assert!(read.get("/nowhere").is_none());
    }
}
