//! Keeping the served tree in step with the inventory cheaply: the served part of the
//! inventory, what a refresh may have changed, and the update of only those objects.
//! May import: tree/types.rs, tree/diff.rs, tree/project.rs.

use std::collections::{BTreeMap, BTreeSet};

use gpuvirt_core::{Inventory, MdevParent, PciAddress, PciFunction, RefreshScope};
use uuid::Uuid;

use super::diff::Changes;
use super::project::{exported_groups, manager_props, spec_of, with_policy_facts};
use super::types::{Change, ObjectKey, ObjectTree};

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
pub(super) fn same_function(a: &PciFunction, b: &PciFunction) -> bool {
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
        drm,
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
        && *drm == b.drm
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
