//! The per-uevent refresh: [`RefreshTarget`] and the `Scanner::refresh*` entry points, which
//! re-read what an event touched and settle the scope as a fresh scan would.
//! May import: crate::host, crate::model, scan/{scanner, read, scope, mdev}.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::mdev::{reload_instances, reload_parent, ParentReads};
use super::read::{
    normalise_warnings, owned_by_function, read_modules, recompute_iommu_status, PCI_DEVICES,
};
use super::scanner::Scanner;
use super::scope::{core_functions, RefreshScope, Touched};
use crate::host::sysfs::{Reader, ScanStats};
use crate::model::{Inventory, PciAddress, PciFunction};

/// What one uevent touched, i.e. what [`Scanner::refresh`] re-reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefreshTarget {
    /// A PCI function appeared, changed (bind/unbind, `sriov_numvfs`, vGPU type) or went away.
    Pci(PciAddress),
    /// An mdev was created, bound, unbound or removed.
    Mdev(Uuid),
    /// An mdev parent registered, unregistered or changed its types (`/sys/class/mdev_bus/<name>`).
    MdevParent(String),
    /// An mdev of this parent was created or removed: its types' instance counts changed, not
    /// their names, descriptions or device APIs (see [`Scanner::refresh`]).
    MdevInstances(String),
    /// An IOMMU group's membership changed.
    IommuGroup(u32),
    /// `vfio`, `vfio_pci` or `mdev` was loaded or unloaded.
    Modules,
    /// Anything else, or doubt (event overflow): a full rescan.
    All,
}

/// One refresh step: a target, or the mdevs of a batch together.
#[derive(Clone, Copy)]
pub(super) enum Step<'a> {
    One(&'a RefreshTarget),
    /// Mdevs, plus the parents whose instance counts and the groups a batch's events named
    /// (the mdevs' own parents and groups among them, as a new mdev's events name both): each
    /// is read once.
    Mdevs {
        uuids: &'a [Uuid],
        instances: &'a [String],
        groups: &'a [u32],
    },
}

impl Scanner {
    /// Re-reads only what `target` touches and recomputes the derived parts it affects, so that
    /// refreshing every touched target yields what a fresh [`Scanner::scan`] would.
    ///
    /// Returns the entries it may have changed.
    pub fn refresh(&self, inv: &mut Inventory, target: &RefreshTarget) -> RefreshScope {
        self.refresh_scoped(inv, target).1
    }

    /// [`Scanner::refresh`], returning the file operations it took.
    pub fn refresh_with_stats(&self, inv: &mut Inventory, target: &RefreshTarget) -> ScanStats {
        self.refresh_scoped(inv, target).0
    }

    /// [`Scanner::refresh`], returning the file operations it took and its scope.
    pub fn refresh_scoped(
        &self,
        inv: &mut Inventory,
        target: &RefreshTarget,
    ) -> (ScanStats, RefreshScope) {
        self.refresh_step(inv, Step::One(target))
    }

    /// Refreshes every target of one batch of events (in any order: each re-reads what is
    /// there now), and returns the file operations it took and the union of their scopes.
    ///
    /// The same as one [`Scanner::refresh`] per target, but the mdev targets are one step:
    /// a parent whose instance counts their creation or removal changed is read once, not
    /// once per mdev (a policy's 2048 creations on 64 parents: 64 reads of ~30 types each
    /// instead of 2048). A batch holding [`RefreshTarget::All`] is one full scan.
    pub fn refresh_batch<'t>(
        &self,
        inv: &mut Inventory,
        targets: impl IntoIterator<Item = &'t RefreshTarget>,
    ) -> (ScanStats, RefreshScope) {
        let targets: Vec<&RefreshTarget> = targets.into_iter().collect();
        if targets.contains(&&RefreshTarget::All) {
            return self.refresh_step(inv, Step::One(&RefreshTarget::All));
        }
        let mdevs: Vec<Uuid> = targets
            .iter()
            .filter_map(|t| match t {
                RefreshTarget::Mdev(uuid) => Some(*uuid),
                _ => None,
            })
            .collect();
        // With mdevs in the batch, their step also reads the instance counts and groups the
        // batch names (the usual batch of one creation names the parent and the new group).
        let (instances, groups): (Vec<String>, Vec<u32>) = if mdevs.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (
                targets
                    .iter()
                    .filter_map(|t| match t {
                        RefreshTarget::MdevInstances(name) => Some(name.clone()),
                        _ => None,
                    })
                    .collect(),
                targets
                    .iter()
                    .filter_map(|t| match t {
                        RefreshTarget::IommuGroup(id) => Some(*id),
                        _ => None,
                    })
                    .collect(),
            )
        };
        let mut stats = ScanStats::default();
        let mut scope = RefreshScope::default();
        let mut merge = |(s, sc): (ScanStats, RefreshScope)| {
            stats.add(&s);
            scope.merge(sc);
        };
        if !mdevs.is_empty() {
            merge(self.refresh_step(
                inv,
                Step::Mdevs {
                    uuids: &mdevs,
                    instances: &instances,
                    groups: &groups,
                },
            ));
        }
        for target in targets {
            let in_mdev_step = match target {
                RefreshTarget::Mdev(_) => true,
                RefreshTarget::MdevInstances(name) => instances.contains(name),
                RefreshTarget::IommuGroup(id) => groups.contains(id),
                _ => false,
            };
            if !in_mdev_step {
                merge(self.refresh_step(inv, Step::One(target)));
            }
        }
        (stats, scope)
    }

    pub(super) fn refresh_step(
        &self,
        inv: &mut Inventory,
        step: Step<'_>,
    ) -> (ScanStats, RefreshScope) {
        let mut r = Reader::new(&self.root);
        let core_before = core_functions(inv);
        let mut touched = Touched::default();
        // An mdev is read as a step of one, so that its parent is read the same way.
        let step = match step {
            Step::One(RefreshTarget::Mdev(uuid)) => Step::Mdevs {
                uuids: std::slice::from_ref(uuid),
                instances: &[],
                groups: &[],
            },
            other => other,
        };
        let target = match step {
            Step::Mdevs {
                uuids,
                instances,
                groups,
            } => {
                let mut parents = ParentReads::default();
                parents.instances.extend(instances.iter().cloned());
                parents.groups.extend(groups.iter().copied());
                touched.parents.extend(instances.iter().cloned());
                for uuid in uuids {
                    self.refresh_mdev(&mut r, inv, *uuid, &mut touched, &mut parents);
                }
                for p in &parents.whole {
                    reload_parent(&mut r, inv, p, &self.counts);
                }
                for p in parents.instances.difference(&parents.whole) {
                    reload_instances(&mut r, inv, p, &self.counts);
                }
                for g in parents.groups {
                    self.reload_group(&mut r, inv, g, &mut touched);
                }
                None
            }
            Step::One(target) => Some(target),
        };
        match target {
            // Read above, as a step of mdevs.
            None | Some(RefreshTarget::Mdev(_)) => {}
            Some(RefreshTarget::All) => {
                let (fresh, stats) = self.scan_with_stats();
                *inv = fresh;
                return (stats, RefreshScope::everything());
            }
            Some(RefreshTarget::Pci(addr)) => self.refresh_pci(&mut r, inv, *addr, &mut touched),
            Some(RefreshTarget::MdevParent(name)) => {
                touched.parents.insert(name.clone());
                reload_parent(&mut r, inv, name, &self.counts);
            }
            Some(RefreshTarget::MdevInstances(name)) => {
                touched.parents.insert(name.clone());
                reload_instances(&mut r, inv, name, &self.counts);
            }
            Some(RefreshTarget::IommuGroup(id)) => {
                self.reload_group(&mut r, inv, *id, &mut touched)
            }
            Some(RefreshTarget::Modules) => inv.modules = read_modules(&mut r),
        }
        let mut scope = RefreshScope::default();
        if target != Some(&RefreshTarget::Modules) {
            inv.warnings.append(&mut r.warnings);
            if core_functions(inv) == core_before {
                scope.functions = self.settle_touched(&mut r, inv, &core_before, &touched);
            } else {
                self.settle(&mut r, inv);
                scope = RefreshScope::everything();
            }
        }
        recompute_iommu_status(inv);
        inv.warnings.append(&mut r.warnings);
        normalise_warnings(&mut inv.warnings);
        if !scope.everything {
            scope.groups = touched.groups;
            scope.mdevs = touched.mdevs;
            scope.parents = touched.parents;
        }
        (r.stats, scope)
    }

    pub(super) fn refresh_pci(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        addr: PciAddress,
        touched: &mut Touched,
    ) {
        // (old, new) records of every function re-read, to find the groups and slots they touch.
        let mut reloaded: Vec<(Option<PciFunction>, Option<PciFunction>)> = Vec::new();
        // A function out of scope has no old record, but it existed: its appearance is no news.
        let existed = inv.pci_classes.contains_key(&addr);
        reloaded.push(self.reload_function(r, inv, addr));

        // SR-IOV links live on both ends: a VF's arrival or departure changes its PF's virtfn
        // links and sriov_numvfs; a PF's sriov_numvfs change adds or removes VFs. NVIDIA
        // per-VF vGPU creation changes the siblings' creatable types. A VF that merely changed
        // driver leaves its PF alone (re-reading a PF costs one readlink per VF).
        let mut extra: BTreeSet<PciAddress> = BTreeSet::new();
        let (old, new) = &reloaded[0];
        let appeared_or_went = existed != new.is_some();
        // Without an old record (the function was out of scope) nothing is known to have
        // changed but its presence; such a function is neither a GPU nor a GPU's VF, so its
        // PF and VFs matter only when they are in scope themselves (then they have records).
        let was_known = old.is_some() || !existed;
        let nvidia_changed = was_known
            && old.as_ref().and_then(|f| f.nvidia_vgpu.as_ref())
                != new.as_ref().and_then(|f| f.nvidia_vgpu.as_ref());
        let physfn_changed =
            was_known && old.as_ref().and_then(|f| f.physfn) != new.as_ref().and_then(|f| f.physfn);
        let mut nvidia_pfs = BTreeSet::new();
        for f in [old, new].into_iter().flatten() {
            if let Some(pf) = f.physfn {
                if (appeared_or_went || physfn_changed || nvidia_changed)
                    && inv.functions.contains_key(&pf)
                {
                    extra.insert(pf);
                }
                if nvidia_changed {
                    nvidia_pfs.insert(pf);
                }
            }
        }
        let vfs_of = |f: &Option<PciFunction>| -> BTreeSet<PciAddress> {
            f.as_ref()
                .and_then(|f| f.sriov.as_ref())
                .map(|s| s.vfs.iter().copied().collect())
                .unwrap_or_default()
        };
        let new_vfs = vfs_of(new);
        let old_vfs = if was_known {
            vfs_of(old)
        } else {
            new_vfs.clone()
        };
        extra.extend(old_vfs.symmetric_difference(&new_vfs));
        extra.remove(&addr);
        for a in &extra {
            reloaded.push(self.reload_function(r, inv, *a));
        }
        let mut siblings = BTreeSet::new();
        for pf in &nvidia_pfs {
            for (o, n) in reloaded
                .iter()
                .filter(|(o, n)| o.as_ref().or(n.as_ref()).map(|f| f.address) == Some(*pf))
            {
                siblings.extend(vfs_of(o));
                siblings.extend(vfs_of(n));
            }
        }
        for a in siblings {
            if a != addr && !extra.contains(&a) {
                reloaded.push(self.reload_function(r, inv, a));
            }
        }

        // The slots' GPU entries are rebuilt by `settle`.
        let mut groups = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for f in reloaded.iter().flat_map(|(o, n)| [o, n]).flatten() {
            groups.extend(f.iommu_group);
            addresses.insert(f.address);
        }
        addresses.insert(addr);
        touched.addrs.extend(&addresses);
        touched.were_in_scope.extend(
            reloaded
                .iter()
                .filter_map(|(o, _)| o.as_ref().map(|f| f.address)),
        );
        for id in groups {
            self.reload_group(r, inv, id, touched);
        }
        // Binding a driver registers (or unregisters) the device as an mdev parent.
        for a in addresses {
            let name = a.to_string();
            reload_parent(r, inv, &name, &self.counts);
            touched.parents.insert(name);
        }
    }

    /// Re-reads one function into the inventory (or removes it), replacing its warnings.
    /// Returns the old and new records.
    pub(super) fn reload_function(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        addr: PciAddress,
    ) -> (Option<PciFunction>, Option<PciFunction>) {
        let mark = r.warnings.len();
        let new = self.read_function(r, addr);
        let old = match new {
            Some((ref f, class)) => {
                inv.pci_classes.insert(addr, class);
                inv.functions.insert(addr, f.clone())
            }
            None => {
                inv.pci_classes.remove(&addr);
                inv.functions.remove(&addr)
            }
        };
        let link = Path::new(PCI_DEVICES).join(addr.to_string());
        let new = new.map(|(f, _)| f);
        let dirs: Vec<PathBuf> = [&old, &new]
            .into_iter()
            .flatten()
            .map(|f| Path::new("sys").join(&f.sysfs_path))
            .collect();
        // Only this refresh's fresh warnings (after `mark`) survive for this function.
        let fresh = r.warnings.split_off(mark);
        inv.warnings
            .retain(|w| !(w.path == link || dirs.iter().any(|d| owned_by_function(&w.path, d))));
        r.warnings.extend(fresh);
        (old, new)
    }
}
