//! The wire forms of the API's structured values (the tuples D-Bus carries) and their readable
//! views. May import: zbus, std.

use std::collections::HashMap;

use zbus::zvariant::OwnedObjectPath;

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
