//! Wire forms of the big read replies (`GetManagedObjects`, `GetObjects`, `ListMdevs`),
//! serialised straight from the tree's shared properties: no variant maps are built.
//! May import: crate::tree.

use std::collections::HashMap;
use std::sync::Arc;

use gpuvirt_api as api;
use zbus::zvariant::OwnedObjectPath;

use crate::tree::{GpuProps, MdevProps, ObjectSpec};

/// Served objects as `GetManagedObjects` returns them (`a{oa{sa{sv}}}`: path, interface,
/// property), serialised straight from the tree's properties: no variant maps are built, so
/// a reply for thousands of objects costs its message and little more.
#[derive(Debug, Default)]
pub struct ObjectsReply {
    /// The Manager object and its properties, when the reply includes it (GetManagedObjects).
    pub manager: Option<(OwnedObjectPath, HashMap<String, zbus::zvariant::OwnedValue>)>,
    pub objects: Vec<(OwnedObjectPath, ObjectSpec)>,
}

impl zbus::zvariant::Type for ObjectsReply {
    // `a{oa{sa{sv}}}`, spelled through types that have it (every props struct is `a{sv}`).
    const SIGNATURE: &'static zbus::zvariant::Signature =
        <HashMap<OwnedObjectPath, HashMap<String, GpuProps>> as zbus::zvariant::Type>::SIGNATURE;
}

impl serde::Serialize for ObjectsReply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let count = self.objects.len() + usize::from(self.manager.is_some());
        let mut map = serializer.serialize_map(Some(count))?;
        if let Some((path, props)) = &self.manager {
            map.serialize_entry(path, &HashMap::from([(api::MANAGER_INTERFACE, props)]))?;
        }
        for (path, spec) in &self.objects {
            map.serialize_entry(path, &InterfacesOf(spec))?;
        }
        map.end()
    }
}

/// `Manager.ListMdevs`'s reply (`a(ososssbsi)`, rows of [`api::MdevRowWire`]), serialised
/// straight from the tree's Mdev properties: a typed row per mdev carries no variant, which
/// the daemon, the bus and the client each pay for per property in `GetObjects`.
#[derive(Debug, Default)]
pub struct MdevRows(pub Vec<(OwnedObjectPath, Arc<MdevProps>)>);

impl zbus::zvariant::Type for MdevRows {
    const SIGNATURE: &'static zbus::zvariant::Signature =
        <Vec<api::MdevRowWire> as zbus::zvariant::Type>::SIGNATURE;
}

impl serde::Serialize for MdevRows {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (path, p) in &self.0 {
            // The fields of api::MdevRowWire, borrowed.
            seq.serialize_element(&(
                path,
                &p.uuid,
                &p.parent,
                &p.parent_name,
                &p.type_id,
                &p.type_name,
                p.active,
                &p.driver,
                p.iommu_group_id,
            ))?;
        }
        seq.end()
    }
}

/// One object's interfaces (`a{sa{sv}}`) for [`ObjectsReply`].
struct InterfacesOf<'a>(&'a ObjectSpec);

impl serde::Serialize for InterfacesOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let spec = self.0;
        let count = [
            spec.gpu.is_some(),
            spec.shard_parent.is_some(),
            spec.iommu_group.is_some(),
            spec.mdev.is_some(),
        ]
        .iter()
        .filter(|p| **p)
        .count();
        let mut map = serializer.serialize_map(Some(count))?;
        if let Some(p) = &spec.gpu {
            map.serialize_entry(api::GPU_INTERFACE, &**p)?;
        }
        if let Some(p) = &spec.shard_parent {
            map.serialize_entry(api::SHARD_PARENT_INTERFACE, &**p)?;
        }
        if let Some(p) = &spec.iommu_group {
            map.serialize_entry(api::IOMMU_GROUP_INTERFACE, &**p)?;
        }
        if let Some(p) = &spec.mdev {
            map.serialize_entry(api::MDEV_INTERFACE, &**p)?;
        }
        map.end()
    }
}
