//! The exported object tree as a pure function of an [`Inventory`], and the diff of two trees.
//!
//! The daemon never patches D-Bus objects by hand: after every change it builds the tree the
//! new inventory implies and [`diff`]s it with the one it exported, which yields exactly the
//! InterfacesAdded/Removed and PropertiesChanged to emit. A duplicate event therefore changes
//! nothing and emits nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gpuvirt_api as api;
use gpuvirt_api::{GroupMemberWire, TypeInfoWire};
use gpuvirt_core::{Inventory, MdevParent, PciAddress, PciFunction, RefreshScope};
use uuid::Uuid;
use zbus::zvariant::{OwnedObjectPath, Value};

pub use api::{ChangedProperties, GpuProps, IommuGroupProps, MdevProps, ShardParentProps};

/// Defines the zbus interface serving one of gpuvirt-api's properties structs, from the
/// property list that defines the struct (`api::gpu_properties!` and its siblings), so the
/// list exists exactly once for the daemon and the CLI.
macro_rules! read_only_interface {
    (
        $props:ident, $name:tt {
            $( $field:ident : $ty:ty => $dbus:tt ),* $(,)?
        }
        $(#[$doc:meta])*
        $iface:ident
        $( methods { $($methods:tt)* } )?
    ) => {
        $(#[$doc])*
        ///
        /// The served object; the actor replaces the properties and then emits
        /// PropertiesChanged. The properties are shared with the actor's tree, not copied.
        /// They sit behind their own lock so that replacing them needs only zbus's shared
        /// (read) lock on the interface: a method call that waits (polkit, a job) holds that
        /// lock too, and an exclusive lock here would stall the actor behind it (or deadlock,
        /// if the method waits for the actor).
        #[derive(Debug)]
        pub struct $iface(std::sync::RwLock<Arc<$props>>);

        impl $iface {
            pub fn new(props: Arc<$props>) -> Self {
                Self(std::sync::RwLock::new(props))
            }

            /// The properties served now.
            pub fn props(&self) -> Arc<$props> {
                // A writer only swaps an Arc and cannot panic half-way: a poisoned lock
                // still holds whole properties.
                self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
            }

            pub fn replace(&self, props: Arc<$props>) {
                *self.0.write().unwrap_or_else(|e| e.into_inner()) = props;
            }
        }

        #[zbus::interface(name = $name)]
        impl $iface {
            $(
                #[zbus(property(emits_changed_signal = "true"), name = $dbus)]
                fn $field(&self) -> $ty {
                    self.props().$field.clone()
                }
            )*
            $( $($methods)* )?
        }
    };
}

api::gpu_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.Gpu`: a display function and its slot.
    GpuInterface
    methods {
        /// Gives every function of the card's slot to vfio-pci, as a job: returns (job, plan).
        /// Option `dry-run`: only the plan, job `/`. A card already assigned also answers job
        /// `/` and says so in the plan. See crate::mutate.
        async fn assign_passthrough(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(OwnedObjectPath, String), api::CallError> {
            let address = self.props().pci_address.clone();
            crate::mutate::assign_passthrough(&address, &header, options).await
        }

        /// Returns the slot's functions to the drivers gpuvirt found on them, as a job:
        /// returns (job, plan); `dry-run` as for AssignPassthrough.
        async fn return_to_host(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(OwnedObjectPath, String), api::CallError> {
            let address = self.props().pci_address.clone();
            crate::mutate::return_to_host(&address, &header, options).await
        }
    }
});

api::shard_parent_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.ShardParent`: what a card can be split into and its children.
    ShardParentInterface
    methods {
        /// Creates an mdev of `type` (id or name) with `uuid` (empty: generated) and returns
        /// its object path.
        async fn create_mdev(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            mdev_type: &str,
            uuid: &str,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<OwnedObjectPath, api::CallError> {
            let parent = self.props().name.clone();
            crate::mutate::create_mdev(&parent, mdev_type, uuid, &header, options).await
        }
    }
});

api::iommu_group_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.IommuGroup`.
    IommuGroupInterface
});

api::mdev_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.Mdev`.
    MdevInterface
    methods {
        /// Removes the mdev. Option `force`: also one gpuvirt did not create.
        async fn remove(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(), api::CallError> {
            let uuid = self.props().uuid.clone();
            crate::mutate::remove_mdev(&uuid, &header, options).await
        }
    }
});

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
}

/// Puts `facts` (none: "") into a Gpu object's properties.
fn with_policy_facts(spec: &mut ObjectSpec, facts: Option<&PolicyFacts>) {
    let Some(gpu) = spec.gpu.as_mut() else {
        return;
    };
    let (role, rule) = facts.map_or(("", ""), |f| (f.role.as_str(), f.rule.as_str()));
    if gpu.role != role || gpu.policy_rule != rule {
        let props = Arc::make_mut(gpu);
        props.role = role.to_owned();
        props.policy_rule = rule.to_owned();
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

/// One interface's properties, tagged with which interface it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Iface {
    Manager(ManagerProps),
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
/// added after what they refer to.
pub fn diff(old: &ObjectTree, new: &ObjectTree) -> Vec<Change> {
    let mut changes = Changes::default();
    changes.manager(&old.manager, &new.manager);
    let paths: BTreeSet<&String> = old.objects.keys().chain(new.objects.keys()).collect();
    for path in paths {
        changes.object(path, old.objects.get(path), new.objects.get(path));
    }
    changes.into_ordered()
}

/// Changes collected per kind, ordered at the end.
#[derive(Default)]
struct Changes {
    removed: Vec<Change>,
    added: Vec<Change>,
    updated: Vec<Change>,
}

impl Changes {
    fn manager(&mut self, old: &ManagerProps, new: &ManagerProps) {
        let changed = old.changed(new);
        if !changed.is_empty() {
            self.updated.push(Change::Updated {
                path: api::MANAGER_PATH.to_owned(),
                iface: Iface::Manager(new.clone()),
                changed,
            });
        }
    }

    fn object(&mut self, path: &str, before: Option<&ObjectSpec>, after: Option<&ObjectSpec>) {
        let empty = ObjectSpec::default();
        let before = before.unwrap_or(&empty);
        let after = after.unwrap_or(&empty);
        if before == after {
            return;
        }
        macro_rules! slot {
            ($field:ident, $variant:ident) => {
                match (&before.$field, &after.$field) {
                    (None, None) => {}
                    (Some(_), None) => self.removed.push(Change::Removed {
                        path: path.to_owned(),
                        kind: Kind::$variant,
                    }),
                    (None, Some(n)) => self.added.push(Change::Added {
                        path: path.to_owned(),
                        iface: Iface::$variant(n.clone()),
                    }),
                    (Some(o), Some(n)) => {
                        let changed = o.changed(n);
                        if !changed.is_empty() {
                            self.updated.push(Change::Updated {
                                path: path.to_owned(),
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

    fn into_ordered(self) -> Vec<Change> {
        let Changes {
            mut removed,
            mut added,
            updated,
        } = self;
        // Referrers go before what they refer to (an mdev names its parent and group, a GPU
        // its group), and come after it: a client never follows a reference to a missing
        // object. The sorts are stable, so paths stay in order within a kind.
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

/// Brings `tree` up to date with `inv` for the objects in `synced.dirty` (plus the Manager and
/// any group whose export changed) and returns exactly what changed. Objects not named there
/// must not depend on anything that changed; [`sync_inventory`] computes such a set.
pub fn update(tree: &mut ObjectTree, inv: &Inventory, synced: Synced) -> Vec<Change> {
    let Synced {
        mut dirty,
        exported,
    } = synced;
    let mut changes = Changes::default();
    let manager = manager_props(inv);
    changes.manager(&tree.manager, &manager);
    tree.manager = manager;
    if exported != tree.exported_groups {
        dirty.extend(
            exported
                .symmetric_difference(&tree.exported_groups)
                .map(|g| ObjectKey::Group(*g)),
        );
        tree.exported_groups = exported;
    }
    for key in dirty {
        let path = key.path();
        let mut new = spec_of(inv, &key, &tree.exported_groups);
        if let (ObjectKey::Gpu(address), Some(spec)) = (&key, new.as_mut()) {
            with_policy_facts(spec, tree.policy_facts.get(address));
        }
        changes.object(&path, tree.objects.get(&path), new.as_ref());
        match new {
            Some(spec) => {
                tree.objects.insert(path, spec);
            }
            None => {
                tree.objects.remove(&path);
            }
        }
    }
    changes.into_ordered()
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

/// Keys of `a` and `b` whose entries differ (present in one only, or unequal), walking both
/// sorted maps once without allocating per entry.
pub fn changed_keys<K: Ord + Clone, V: PartialEq>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) -> Vec<K> {
    changed_keys_by(a, b, |x, y| x == y)
}

/// [`changed_keys`] with `same` deciding whether two entries are equal.
fn changed_keys_by<K: Ord + Clone, V>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) -> Vec<K> {
    let mut out = Vec::new();
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                out.push((*k).clone());
                ia.next();
            }
            (None, Some((k, _))) => {
                out.push((*k).clone());
                ib.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push((*ka).clone());
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((*kb).clone());
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    if !same(va, vb) {
                        out.push((*ka).clone());
                    }
                    ia.next();
                    ib.next();
                }
            },
        }
    }
    out
}

/// Whether two records of one function are equal, as `==` says, but fast: every event
/// compares every function of the host, and the derived `==` compares `sysfs_path`
/// component by component (parsing both paths each time). Here the path is compared as bytes
/// (stricter: a path spelt differently counts as changed, which costs a rebuild, never a
/// missed change) and the scalars go first, so that a differing record stops early.
/// The pattern names every field: a field added to the model does not compile until it is
/// compared here.
fn same_function(a: &PciFunction, b: &PciFunction) -> bool {
    let PciFunction {
        address,
        sysfs_path,
        class,
        revision,
        ids,
        vendor_name,
        device_name,
        subsystem_name,
        driver,
        driver_override,
        boot_vga,
        numa_node,
        reset_methods,
        modalias,
        kernel_modules,
        iommu_group,
        sriov,
        physfn,
        nvidia_vgpu,
    } = a;
    *address == b.address
        && *class == b.class
        && *revision == b.revision
        && *ids == b.ids
        && *boot_vga == b.boot_vga
        && *numa_node == b.numa_node
        && *iommu_group == b.iommu_group
        && *physfn == b.physfn
        && *driver == b.driver
        && *driver_override == b.driver_override
        && sysfs_path.as_os_str() == b.sysfs_path.as_os_str()
        && *sriov == b.sriov
        && *nvidia_vgpu == b.nvidia_vgpu
        && *reset_methods == b.reset_methods
        && *kernel_modules == b.kernel_modules
        && *modalias == b.modalias
        && *vendor_name == b.vendor_name
        && *device_name == b.device_name
        && *subsystem_name == b.subsystem_name
}

/// The functions some object shows: GPUs, their slot companions and VFs, and PCI mdev
/// parents. No object reads any other function (see [`spec_of`] and [`exported_groups`]).
pub fn shown_functions(inv: &Inventory) -> BTreeSet<PciAddress> {
    let mut out = Vec::with_capacity(inv.gpus.len() * 2 + inv.mdev_parents.len());
    for gpu in inv.gpus.values() {
        out.push(gpu.address);
        out.extend(gpu.companions.iter().copied());
        if let Some(sriov) = inv
            .functions
            .get(&gpu.address)
            .and_then(|f| f.sriov.as_ref())
        {
            out.extend(sriov.vfs.iter().copied());
        }
    }
    out.extend(inv.mdev_parents.values().filter_map(|p| p.pci_address));
    out.into_iter().collect()
}

/// What the served tree is built from: `inv` without the functions and IOMMU groups no object
/// shows (on a large host, most of them). The actor keeps this beside the complete inventory
/// to see what an event changed, so that second copy stays small.
///
/// `inv` is borrowed mutably only to copy everything but its per-device maps in one step (the
/// maps are set aside meanwhile and put back).
pub fn served_part(inv: &mut Inventory) -> Inventory {
    let shown = shown_functions(inv);
    let exported = exported_groups(inv);
    let maps = DeviceMaps::take(inv);
    let mut served = inv.clone();
    served.functions = maps
        .functions
        .iter()
        .filter(|(a, _)| shown.contains(a))
        .map(|(a, f)| (*a, f.clone()))
        .collect();
    served.groups = maps
        .groups
        .iter()
        .filter(|(g, _)| exported.contains(g))
        .map(|(g, v)| (*g, v.clone()))
        .collect();
    served.gpus = maps.gpus.clone();
    served.mdev_parents = maps.mdev_parents.clone();
    served.mdevs = maps.mdevs.clone();
    maps.put_back(inv);
    served
}

/// Brings `served` (a [`served_part`]) up to date with the complete inventory `inv`, copying
/// only the entries that differ, and returns the object keys whose objects may have changed
/// with them. `scope` is what the refresh since the last sync may have changed (see
/// [`RefreshScope`]): only those entries, and those that entered or left what objects show,
/// are compared, so an event costs O(what it touched + GPUs + parents), not O(every function,
/// group and mdev of the host). Debug builds check that nothing outside the scope changed.
///
/// `inv` is borrowed mutably only to compare what is not a per-device map in one step (its
/// maps are set aside meanwhile and put back before returning): host-wide facts and any field
/// the model gains are then synced without being named here.
pub fn sync_inventory(old: &mut Inventory, new: &mut Inventory, scope: &RefreshScope) -> Synced {
    let mut dirty = BTreeSet::new();
    let mut parents_touched: BTreeSet<String> = BTreeSet::new();

    let shown = shown_functions(new);
    let exported = exported_groups(new);
    #[cfg(debug_assertions)]
    check_scope(old, new, &shown, &exported, scope);
    for a in candidates(&shown, &old.functions, &scope.functions, scope.everything) {
        let now = new.functions.get(&a).filter(|_| shown.contains(&a));
        let same = match (old.functions.get(&a), now) {
            (Some(x), Some(y)) => same_function(x, y),
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        dirty.insert(ObjectKey::Gpu(a));
        // A VF's state shows in its PF's ShardParent (nvidia-vf, sriov backends).
        for f in [old.functions.get(&a), now].into_iter().flatten() {
            if let Some(pf) = f.physfn {
                dirty.insert(ObjectKey::Gpu(pf));
            }
        }
        sync_entry(&mut old.functions, now, a);
    }
    for a in changed_keys(&old.gpus, &new.gpus) {
        dirty.insert(ObjectKey::Gpu(a));
        // Whether a parent is a GPU decides its path and its mdevs' Parent.
        for p in old.mdev_parents.values().chain(new.mdev_parents.values()) {
            if p.pci_address == Some(a) {
                parents_touched.insert(p.name.clone());
            }
        }
        sync_entry(&mut old.gpus, new.gpus.get(&a), a);
    }
    for g in candidates(&exported, &old.groups, &scope.groups, scope.everything) {
        let now = new.groups.get(&g).filter(|_| exported.contains(&g));
        if old.groups.get(&g) != now {
            dirty.insert(ObjectKey::Group(g));
            sync_entry(&mut old.groups, now, g);
        }
    }
    let mdevs = if scope.everything {
        changed_keys(&old.mdevs, &new.mdevs)
    } else {
        changed_among(&old.mdevs, &new.mdevs, &scope.mdevs)
    };
    for u in mdevs {
        dirty.insert(ObjectKey::Mdev(u));
        for m in [old.mdevs.get(&u), new.mdevs.get(&u)].into_iter().flatten() {
            parents_touched.insert(m.parent.clone());
        }
        sync_entry(&mut old.mdevs, new.mdevs.get(&u), u);
    }
    parents_touched.extend(if scope.everything {
        changed_keys(&old.mdev_parents, &new.mdev_parents)
    } else {
        changed_among(&old.mdev_parents, &new.mdev_parents, &scope.parents)
    });
    for name in &parents_touched {
        for p in [old.mdev_parents.get(name), new.mdev_parents.get(name)]
            .into_iter()
            .flatten()
        {
            dirty.insert(ObjectKey::Parent(p.name.clone()));
            if let Some(a) = p.pci_address {
                dirty.insert(ObjectKey::Gpu(a));
            }
        }
        sync_entry(
            &mut old.mdev_parents,
            new.mdev_parents.get(name),
            name.clone(),
        );
    }
    // An mdev shows its parent's type name and path: a changed parent touches its mdevs.
    if !parents_touched.is_empty() {
        for m in new.mdevs.values() {
            if parents_touched.contains(&m.parent) {
                dirty.insert(ObjectKey::Mdev(m.uuid));
            }
        }
    }
    // Remembered vGPU type names show in the Types of NVIDIA per-VF parents (SR-IOV GPUs).
    if old.vgpu_type_names != new.vgpu_type_names {
        for a in new.gpus.keys() {
            if new.functions.get(a).is_some_and(|f| f.sriov.is_some()) {
                dirty.insert(ObjectKey::Gpu(*a));
            }
        }
    }
    sync_remainder(old, new);
    Synced { dirty, exported }
}

/// What [`sync_inventory`] found, for [`update`].
#[derive(Debug)]
pub struct Synced {
    /// The objects that may have changed.
    pub dirty: BTreeSet<ObjectKey>,
    /// The IOMMU groups that get an object now ([`exported_groups`] of the new inventory).
    pub exported: BTreeSet<u32>,
}

/// The keys to compare for one map of the served part: with `everything`, every key either
/// side has; otherwise those that entered or left `wanted` (what objects show now) and those
/// in `scope` (what the refresh may have changed).
fn candidates<K: Ord + Copy, V>(
    wanted: &BTreeSet<K>,
    served: &BTreeMap<K, V>,
    scope: &BTreeSet<K>,
    everything: bool,
) -> BTreeSet<K> {
    if everything {
        return wanted.iter().chain(served.keys()).copied().collect();
    }
    // One walk over both sorted key sequences (no lookup per key).
    let mut out: Vec<K> = Vec::new();
    let mut w = wanted.iter().peekable();
    let mut s = served.keys().peekable();
    loop {
        match (w.peek(), s.peek()) {
            (Some(a), Some(b)) => match a.cmp(b) {
                std::cmp::Ordering::Less => out.extend(w.next().copied()),
                std::cmp::Ordering::Greater => out.extend(s.next().copied()),
                std::cmp::Ordering::Equal => {
                    w.next();
                    s.next();
                }
            },
            (Some(_), None) => out.extend(w.next().copied()),
            (None, Some(_)) => out.extend(s.next().copied()),
            (None, None) => break,
        }
    }
    out.extend(
        scope
            .iter()
            .filter(|k| wanted.contains(k) || served.contains_key(k)),
    );
    out.into_iter().collect()
}

/// The keys of `keys` whose entries differ between `a` and `b`.
fn changed_among<K: Ord + Clone, V: PartialEq>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    keys: &BTreeSet<K>,
) -> Vec<K> {
    keys.iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Panics when an entry the objects show changed outside `scope`: the scanner's scope
/// missed a change, and the served tree would keep the stale entry.
#[cfg(debug_assertions)]
fn check_scope(
    old: &Inventory,
    new: &Inventory,
    shown: &BTreeSet<PciAddress>,
    exported: &BTreeSet<u32>,
    scope: &RefreshScope,
) {
    if scope.everything {
        return;
    }
    for a in shown.iter().filter(|a| !scope.functions.contains(a)) {
        if let (Some(x), Some(y)) = (old.functions.get(a), new.functions.get(a)) {
            assert!(
                same_function(x, y),
                "function {a} changed outside {scope:?}"
            );
        }
    }
    for g in exported.iter().filter(|g| !scope.groups.contains(g)) {
        if let (Some(x), Some(y)) = (old.groups.get(g), new.groups.get(g)) {
            assert!(x == y, "IOMMU group {g} changed outside {scope:?}");
        }
    }
    for (u, m) in old.mdevs.iter().filter(|(u, _)| !scope.mdevs.contains(u)) {
        assert!(
            new.mdevs.get(u) == Some(m),
            "mdev {u} changed outside {scope:?}"
        );
    }
    for u in new.mdevs.keys().filter(|u| !scope.mdevs.contains(u)) {
        assert!(
            old.mdevs.contains_key(u),
            "mdev {u} appeared outside {scope:?}"
        );
    }
    let parents = old.mdev_parents.keys().chain(new.mdev_parents.keys());
    for p in parents.filter(|p| !scope.parents.contains(*p)) {
        assert!(
            old.mdev_parents.get(p) == new.mdev_parents.get(p),
            "mdev parent {p} changed outside {scope:?}"
        );
    }
}

/// The per-device maps [`sync_inventory`] syncs entry by entry, and the scanner's per-device
/// bookkeeping no object shows (every function's class, every group's number: on a large
/// host, thousands of entries), which the served part does not hold at all.
#[derive(Default)]
struct DeviceMaps {
    functions: BTreeMap<PciAddress, PciFunction>,
    gpus: BTreeMap<PciAddress, gpuvirt_core::Gpu>,
    groups: BTreeMap<u32, gpuvirt_core::IommuGroup>,
    mdev_parents: BTreeMap<String, MdevParent>,
    mdevs: BTreeMap<Uuid, gpuvirt_core::Mdev>,
    pci_classes: BTreeMap<PciAddress, Option<u32>>,
    group_ids: BTreeSet<u32>,
}

impl DeviceMaps {
    fn take(inv: &mut Inventory) -> Self {
        DeviceMaps {
            functions: std::mem::take(&mut inv.functions),
            gpus: std::mem::take(&mut inv.gpus),
            groups: std::mem::take(&mut inv.groups),
            mdev_parents: std::mem::take(&mut inv.mdev_parents),
            mdevs: std::mem::take(&mut inv.mdevs),
            pci_classes: std::mem::take(&mut inv.pci_classes),
            group_ids: std::mem::take(&mut inv.group_ids),
        }
    }

    fn put_back(self, inv: &mut Inventory) {
        inv.functions = self.functions;
        inv.gpus = self.gpus;
        inv.groups = self.groups;
        inv.mdev_parents = self.mdev_parents;
        inv.mdevs = self.mdevs;
        inv.pci_classes = self.pci_classes;
        inv.group_ids = self.group_ids;
    }
}

/// Copies everything but the per-device maps when it differs: with those maps set aside,
/// comparing and cloning the rest is cheap.
fn sync_remainder(old: &mut Inventory, new: &mut Inventory) {
    let old_maps = DeviceMaps::take(old);
    let new_maps = DeviceMaps::take(new);
    if *old != *new {
        old.clone_from(new);
    }
    old_maps.put_back(old);
    new_maps.put_back(new);
}

fn sync_entry<K: Ord, V: Clone>(map: &mut BTreeMap<K, V>, new: Option<&V>, key: K) {
    match new {
        Some(v) => {
            map.insert(key, v.clone());
        }
        None => {
            map.remove(&key);
        }
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
                "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123",
            ],
            "the NIC's group 12 and the mdev's own group 67 are not exported"
        );
        let mdev = tree.objects["/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"]
            .mdev
            .clone()
            .unwrap();
        assert_eq!((mdev.iommu_group.as_str(), mdev.iommu_group_id), ("/", 67));
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
        assert_eq!(changes.len(), 2, "{changes:#?}");
        assert!(
            matches!(&changes[0], Change::Removed { path, kind: Kind::Mdev }
            if path.as_str().ends_with("aa618089_8b16_4d01_a136_25a0f3c73123"))
        );
        let Change::Updated { changed, .. } = &changes[1] else {
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
            ]
        );
    }

    /// Incremental update (compare inventories, rebuild dirty objects) must give the same tree
    /// and the same changes as rebuilding everything.
    #[test]
    fn incremental_update_equals_full_rebuild() {
        let base = runbook_inventory();
        let gpu: PciAddress = "0000:41:00.0".parse().unwrap();
        let uuid: Uuid = "aa618089-8b16-4d01-a136-25a0f3c73123".parse().unwrap();
        type Mutation = Box<dyn Fn(&mut Inventory)>;
        let mutations: Vec<(&str, Mutation)> = vec![
            (
                "unbind",
                Box::new(move |inv: &mut Inventory| {
                    inv.functions.get_mut(&gpu).unwrap().driver = None;
                }),
            ),
            (
                "mdev removed",
                Box::new(move |inv: &mut Inventory| {
                    inv.mdevs.remove(&uuid);
                    inv.groups.remove(&67);
                }),
            ),
            (
                "parent types renamed",
                Box::new(|inv: &mut Inventory| {
                    inv.mdev_parents.get_mut("0000:41:00.0").unwrap().types[0].name =
                        Some("renamed".into());
                }),
            ),
            (
                "parent unregistered",
                Box::new(|inv: &mut Inventory| {
                    inv.mdev_parents.clear();
                }),
            ),
            (
                "gpu gone",
                Box::new(move |inv: &mut Inventory| {
                    inv.gpus.remove(&gpu);
                }),
            ),
            (
                "modules",
                Box::new(|inv: &mut Inventory| {
                    inv.modules.vfio_pci = false;
                }),
            ),
            (
                "driver override",
                Box::new(move |inv: &mut Inventory| {
                    inv.functions.get_mut(&gpu).unwrap().driver_override = Some("vfio-pci".into());
                }),
            ),
            (
                "kernel release and a warning",
                Box::new(|inv: &mut Inventory| {
                    inv.kernel_release = Some("6.2.0-test".into());
                    inv.warnings.push(gpuvirt_core::ScanWarning {
                        path: "sys/bus/pci/devices/0000:41:00.0/numa_node".into(),
                        message: "the file is empty".into(),
                    });
                }),
            ),
            (
                "a function no object shows rebinds",
                Box::new(|inv: &mut Inventory| {
                    let nic: PciAddress = "0000:01:00.0".parse().unwrap();
                    inv.functions.get_mut(&nic).unwrap().driver = Some("vfio-pci".into());
                    inv.groups.get_mut(&12).unwrap().members[0].driver = Some("vfio-pci".into());
                }),
            ),
            ("nothing", Box::new(|_: &mut Inventory| {})),
        ];
        for (name, mutate) in &mutations {
            let mut new = base.clone();
            mutate(&mut new);
            let expected_changes = diff(&build(&base), &build(&new));
            // After a full scan, and after a refresh that names exactly what it changed.
            for scope in [RefreshScope::everything(), exact_scope(&base, &new)] {
                let mut current = served_part(&mut base.clone());
                let mut tree = build(&base);
                let synced = sync_inventory(&mut current, &mut new, &scope);
                assert_eq!(current, served_part(&mut new), "{name}: inventories synced");
                let changes = update(&mut tree, &new, synced);
                assert_eq!(tree, build(&new), "{name}: tree ({scope:?})");
                assert_eq!(changes, expected_changes, "{name}: changes ({scope:?})");
            }
        }
    }

    /// The narrowest scope that covers every per-device difference between `a` and `b`.
    fn exact_scope(a: &Inventory, b: &Inventory) -> RefreshScope {
        fn differ<K: Ord + Clone, V: PartialEq>(
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> BTreeSet<K> {
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect()
        }
        RefreshScope {
            everything: false,
            functions: differ(&a.functions, &b.functions),
            groups: differ(&a.groups, &b.groups),
            mdevs: differ(&a.mdevs, &b.mdevs),
            parents: differ(&a.mdev_parents, &b.mdev_parents),
        }
    }

    /// A scope that misses a change is a scanner bug the served tree would hide (it keeps
    /// the stale entry): debug builds stop on it.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "changed outside")]
    fn a_change_outside_the_scope_is_caught() {
        let base = runbook_inventory();
        let mut new = base.clone();
        let gpu: PciAddress = "0000:41:00.0".parse().unwrap();
        new.functions.get_mut(&gpu).unwrap().driver = Some("vfio-pci".into());
        let mut current = served_part(&mut base.clone());
        sync_inventory(&mut current, &mut new, &RefreshScope::default());
    }

    /// The actor's second copy holds only what objects show: not the NIC, nor its group.
    #[test]
    fn served_part_leaves_out_what_no_object_shows() {
        let mut inv = runbook_inventory();
        let served = served_part(&mut inv);
        assert_eq!(inv, runbook_inventory(), "the inventory is put back whole");
        let nic: PciAddress = "0000:01:00.0".parse().unwrap();
        assert!(!served.functions.contains_key(&nic));
        assert!(!served.groups.contains_key(&12));
        assert_eq!(served.groups.keys().copied().collect::<Vec<_>>(), [66]);
        assert_eq!(served.mdevs, inv.mdevs);
        assert_eq!(served.kernel_release, inv.kernel_release);
        assert_eq!(build(&served), build(&inv));
    }

    /// The fast comparison says "same" exactly when `==` does, field by field.
    #[test]
    fn same_function_agrees_with_eq() {
        let base = function("0000:41:00.0", 0x030200, Some("nvidia"), 66);
        type Edit = fn(&mut PciFunction);
        let edits: [(&str, Edit); 19] = [
            ("address", |f| f.address = "0000:42:00.0".parse().unwrap()),
            ("sysfs_path", |f| f.sysfs_path = "devices/x".into()),
            ("class", |f| f.class = 0x030000),
            ("revision", |f| f.revision = None),
            ("ids", |f| f.ids.subsystem_device = 1),
            ("vendor_name", |f| f.vendor_name = None),
            ("device_name", |f| f.device_name = Some("x".into())),
            ("subsystem_name", |f| f.subsystem_name = Some("x".into())),
            ("driver", |f| f.driver = None),
            ("driver_override", |f| {
                f.driver_override = Some("vfio-pci".into())
            }),
            ("boot_vga", |f| f.boot_vga = Some(true)),
            ("numa_node", |f| f.numa_node = Some(1)),
            ("reset_methods", |f| f.reset_methods.pop().map_or((), drop)),
            ("modalias", |f| f.modalias = Some("pci:v000010DE".into())),
            ("kernel_modules", |f| f.kernel_modules.push("x".into())),
            ("iommu_group", |f| f.iommu_group = Some(1)),
            ("sriov", |f| {
                f.sriov = Some(Sriov {
                    total_vfs: 4,
                    num_vfs: 0,
                    vfs: vec![],
                })
            }),
            ("physfn", |f| {
                f.physfn = Some("0000:40:00.0".parse().unwrap())
            }),
            ("nvidia_vgpu", |f| {
                f.nvidia_vgpu = Some(NvidiaVfVgpu {
                    creatable_types: vec![],
                    current_type: None,
                })
            }),
        ];
        assert!(same_function(&base, &base.clone()));
        for (field, edit) in edits {
            let mut other = base.clone();
            edit(&mut other);
            assert_ne!(base, other, "{field}: the edit changes the record");
            assert!(!same_function(&base, &other), "{field}");
            assert!(!same_function(&other, &base), "{field}");
        }
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
        // One more can be created: VF 5 is free; VF 4 holds one (a VF takes one vGPU, whatever
        // its list says), as the policy and CreateMdev count them.
        assert_eq!(
            shard.types["558"],
            ("NVIDIA L40S-24Q".into(), String::new(), String::new(), 1)
        );
        assert_eq!(
            shard.children,
            [path("/org/gpuvirt/GpuVirt1/gpus/0000_c1_00_4")]
        );
    }
}
