//! What a refresh covered ([`RefreshScope`], and the internal `Touched`), and the scope
//! bookkeeping: the core functions, forgetting what left the scope.
//! May import: crate::model, scan/read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use uuid::Uuid;

use super::read::{owned_by_function, IOMMU_GROUPS, PCI_DEVICES};
use crate::model::{Inventory, PciAddress};

/// What a refresh re-read: the functions and groups whose scope may have changed, and the
/// mdevs and parents it re-read.
#[derive(Debug, Default)]
pub(super) struct Touched {
    pub(super) addrs: BTreeSet<PciAddress>,
    pub(super) groups: BTreeSet<u32>,
    /// Touched functions that had a full record before the refresh: only they can be kept in
    /// scope by a group the refresh did not touch.
    pub(super) were_in_scope: BTreeSet<PciAddress>,
    pub(super) mdevs: BTreeSet<Uuid>,
    pub(super) parents: BTreeSet<String>,
}

/// The per-device entries a [`Scanner::refresh`](crate::scan::Scanner::refresh) may have changed: every entry of
/// `functions`, `groups`, `mdevs` and `mdev_parents` outside it is as it was before. `gpus`
/// and the host-wide fields are not covered (they are small; compare them whole).
///
/// A consumer that mirrors the inventory (gpuvirtd's served tree) compares only these
/// entries after an event instead of the whole host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshScope {
    /// Anything may have changed: a full scan, or a refresh that moved the set of functions
    /// the scan reads for their own sake.
    pub everything: bool,
    pub functions: BTreeSet<PciAddress>,
    pub groups: BTreeSet<u32>,
    pub mdevs: BTreeSet<Uuid>,
    pub parents: BTreeSet<String>,
}

impl RefreshScope {
    /// The scope of a full scan.
    pub fn everything() -> Self {
        RefreshScope {
            everything: true,
            ..RefreshScope::default()
        }
    }

    /// The first per-device entry that differs between `before` and `after` outside this
    /// scope, described; `None` when the scope covers every difference. For checks: a scope
    /// that misses a change would leave a mirror of the inventory stale.
    pub fn first_uncovered(&self, before: &Inventory, after: &Inventory) -> Option<String> {
        fn changed<'m, K: Ord, V: PartialEq>(
            a: &'m BTreeMap<K, V>,
            b: &'m BTreeMap<K, V>,
        ) -> impl Iterator<Item = &'m K> {
            a.keys()
                .chain(b.keys())
                .filter(move |k| a.get(*k) != b.get(*k))
        }
        if self.everything {
            return None;
        }
        let functions = changed(&before.functions, &after.functions)
            .find(|a| !self.functions.contains(a))
            .map(|a| format!("function {a}"));
        let groups = || {
            changed(&before.groups, &after.groups)
                .find(|g| !self.groups.contains(g))
                .map(|g| format!("IOMMU group {g}"))
        };
        let mdevs = || {
            changed(&before.mdevs, &after.mdevs)
                .find(|u| !self.mdevs.contains(u))
                .map(|u| format!("mdev {u}"))
        };
        let parents = || {
            changed(&before.mdev_parents, &after.mdev_parents)
                .find(|p| !self.parents.contains(*p))
                .map(|p| format!("mdev parent {p}"))
        };
        functions.or_else(groups).or_else(mdevs).or_else(parents)
    }

    /// Widens `self` to cover `other` as well.
    pub fn merge(&mut self, other: RefreshScope) {
        if self.everything || other.everything {
            *self = RefreshScope::everything();
            return;
        }
        self.functions.extend(other.functions);
        self.groups.extend(other.groups);
        self.mdevs.extend(other.mdevs);
        self.parents.extend(other.parents);
    }
}

/// Drops a group that left the scope, and its warnings.
pub(super) fn forget_group(inv: &mut Inventory, id: u32) {
    inv.groups.remove(&id);
    let prefix = Path::new(IOMMU_GROUPS).join(id.to_string());
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
}

/// Drops a function's full record (it left the scope; its class stays known), and its warnings.
pub(super) fn forget_function(inv: &mut Inventory, addr: PciAddress) {
    if let Some(f) = inv.functions.remove(&addr) {
        let link = Path::new(PCI_DEVICES).join(addr.to_string());
        let dir = Path::new("sys").join(&f.sysfs_path);
        inv.warnings
            .retain(|w| !(w.path == link || owned_by_function(&w.path, &dir)));
    }
}

/// The functions read in full for their own sake: display functions, every function of their
/// slots, their SR-IOV VFs, mdev parents' functions (all that exist on the host), and functions
/// whose class could not be read (any of them may be a GPU).
pub(super) fn core_functions(inv: &Inventory) -> BTreeSet<PciAddress> {
    let mut core: BTreeSet<PciAddress> = inv
        .functions
        .keys()
        .filter(|a| inv.pci_classes.get(a) == Some(&None))
        .copied()
        .collect();
    for f in inv.functions.values().filter(|f| f.is_display()) {
        let slot = f.address.slot();
        let first = PciAddress::new(slot.domain, slot.bus, slot.device, 0);
        let last = PciAddress::new(slot.domain, slot.bus, slot.device, 7);
        core.insert(f.address);
        core.extend(inv.pci_classes.range(first..=last).map(|(a, _)| *a));
        if let Some(sriov) = &f.sriov {
            core.extend(sriov.vfs.iter().filter(|a| inv.pci_classes.contains_key(a)));
        }
    }
    core.extend(
        inv.mdev_parents
            .values()
            .filter_map(|p| p.pci_address)
            .filter(|a| inv.pci_classes.contains_key(a)),
    );
    core
}
