//! The inventory scan: reads PCI functions, IOMMU groups, mdev parents and mdevs from a root,
//! and refreshes single devices in place after a uevent.
//!
//! The scan is GPU-scoped. Every PCI function costs one `uevent` read (its class); only the
//! functions that matter to GPUs are read in full: display functions (and functions whose
//! class the uevent does not tell), the other functions of display functions' slots, their
//! SR-IOV VFs, mdev parents' functions ("core"), and every member of the
//! IOMMU groups of core functions and of mdevs (so a group's members, drivers and what they
//! back stay exact). Only those groups are read; the others are counted from one listing of
//! `/sys/kernel/iommu_groups`. [`Scanner::refresh`] re-reads what an event touched and then
//! settles the scope the same way, so it always gives what a fresh scan gives.
//!
//! Cost model (issue 2): a function read in full costs one `readlink` of its bus link, one
//! listing of its directory (which says which optional attributes exist, so missing files are
//! never opened), one `uevent` read instead of six id files, and one read per remaining
//! attribute. Links are read once and resolved lexically, never canonicalised. All file calls
//! are libc-level (`std::fs`), so an `LD_PRELOAD` redirection (umockdev) sees them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::host::root::Root;
use crate::host::sysfs::{
    basename, is_missing, is_not_a_link, parse_hex, resolve_link, shown, ReadError, Reader,
    ScanStats,
};
use crate::iommu::{assess_group, iommu_cmdline_flags, iommu_status};
use crate::modalias::ModuleAliases;
use crate::model::{
    Gpu, GroupMember, Inventory, IommuGroup, Mdev, MdevParent, MdevType, ModuleState, NvidiaVfVgpu,
    PciAddress, PciFunction, PciIds, PciSlot, ScanWarning, Sriov, VgpuTypeOffer,
};
use crate::pciids::PciIdsDb;

const PCI_DEVICES: &str = "sys/bus/pci/devices";
const IOMMU_GROUPS: &str = "sys/kernel/iommu_groups";
const IOMMU_CLASS: &str = "sys/class/iommu";
const MDEV_BUS: &str = "sys/class/mdev_bus";
const MDEV_DEVICES: &str = "sys/bus/mdev/devices";

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

/// Reads hosts below one root. Holds what is loaded once: the pci.ids database, the kernel's
/// module aliases and the kernel release.
#[derive(Debug)]
pub struct Scanner {
    root: Root,
    kernel_release: Option<String>,
    pci_ids: PciIdsDb,
    aliases: ModuleAliases,
    /// Problems met while loading the databases, repeated in every scan's warnings.
    load_warnings: Vec<ScanWarning>,
    load_stats: ScanStats,
    /// Most threads a scan splits its per-device reads over (see [`read_parallel`]).
    threads: usize,
}

/// A scan of the whole host under `root` (loads the databases each time; keep a [`Scanner`]
/// to scan repeatedly).
pub fn scan(root: &Root) -> Inventory {
    Scanner::new(root.clone()).scan()
}

/// The attribute or device went away while it was being read (ENOENT/ENODEV).
#[derive(Debug)]
struct Gone;

impl Scanner {
    /// Loads pci.ids and modules.alias once; absent files give empty databases, not errors.
    pub fn new(root: Root) -> Scanner {
        let mut r = Reader::new(&root);
        let kernel_release = read_kernel_release(&mut r);
        let pci_ids = PciIdsDb::load(&mut r);
        let aliases = match &kernel_release {
            Some(release) => ModuleAliases::load(&mut r, release),
            None => ModuleAliases::default(),
        };
        let load_warnings = std::mem::take(&mut r.warnings);
        let load_stats = r.stats;
        Scanner {
            root,
            kernel_release,
            pci_ids,
            aliases,
            load_warnings,
            load_stats,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(PARALLEL_MAX_THREADS),
        }
    }

    /// Splits a scan's per-device reads over at most `threads` threads (1: all on the calling
    /// thread). The default is the CPUs, at most four.
    pub fn with_threads(mut self, threads: usize) -> Scanner {
        self.threads = threads.max(1);
        self
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The running kernel's release (`proc/sys/kernel/osrelease`, else the only `lib/modules` entry).
    pub fn kernel_release(&self) -> Option<&str> {
        self.kernel_release.as_deref()
    }

    pub fn pci_ids(&self) -> &PciIdsDb {
        &self.pci_ids
    }

    pub fn module_aliases(&self) -> &ModuleAliases {
        &self.aliases
    }

    /// File operations spent loading the databases in [`Scanner::new`].
    pub fn load_stats(&self) -> ScanStats {
        self.load_stats
    }

    /// A full scan.
    pub fn scan(&self) -> Inventory {
        self.scan_with_stats().0
    }

    /// A full scan and the file operations it took (database loading not included).
    pub fn scan_with_stats(&self) -> (Inventory, ScanStats) {
        let mut r = Reader::new(&self.root);
        let mut inv = Inventory {
            kernel_release: self.kernel_release.clone(),
            ..Inventory::default()
        };

        // One uevent read classifies a function. Display functions, and functions whose class
        // the uevent does not tell, are read in full now; the rest of the scope is settled
        // below, once the GPUs, parents and mdevs are known.
        let mut addresses = Vec::new();
        for name in list_sorted(&mut r, Path::new(PCI_DEVICES)) {
            match name.parse::<PciAddress>() {
                Ok(addr) => addresses.push(addr),
                Err(_) => r.warn(
                    &Path::new(PCI_DEVICES).join(&name),
                    "the entry is not a PCI address and was skipped",
                ),
            }
        }
        let classes = read_parallel(
            &self.root,
            self.threads,
            &mut r,
            &addresses,
            DEVICES_PER_THREAD,
            |r, a| classify(r, *a),
        );
        for (addr, class) in addresses.into_iter().zip(classes) {
            match class {
                Some(class) if !is_display_class(class) => {
                    inv.pci_classes.insert(addr, Some(class));
                }
                _ => self.load_function(&mut r, &mut inv, addr),
            }
        }

        for name in list_sorted(&mut r, Path::new(IOMMU_GROUPS)) {
            match name.parse::<u32>() {
                Ok(id) => {
                    inv.group_ids.insert(id);
                }
                Err(_) => r.warn(
                    &Path::new(IOMMU_GROUPS).join(&name),
                    "the entry is not an IOMMU group number and was skipped",
                ),
            }
        }
        let units = list_sorted(&mut r, Path::new(IOMMU_CLASS));
        let cmdline = match r.read(Path::new("proc/cmdline")) {
            Ok(text) => text,
            Err(ReadError::Missing) => String::new(),
            Err(e) => {
                r.warn(Path::new("proc/cmdline"), crate::error_chain(&e));
                String::new()
            }
        };

        let parent_names = list_sorted(&mut r, Path::new(MDEV_BUS));
        let parents = read_parallel(
            &self.root,
            self.threads,
            &mut r,
            &parent_names,
            PARENTS_PER_THREAD,
            |r, n| read_parent(r, n, None),
        );
        for (name, p) in parent_names.into_iter().zip(parents) {
            if let Some(p) = p {
                inv.mdev_parents.insert(name, p);
            }
        }
        let mut mdev_names = Vec::new();
        for name in list_sorted(&mut r, Path::new(MDEV_DEVICES)) {
            match Uuid::parse_str(&name) {
                Ok(uuid) => mdev_names.push((uuid, name)),
                Err(_) => r.warn(
                    &Path::new(MDEV_DEVICES).join(&name),
                    "the entry is not a UUID and was skipped",
                ),
            }
        }
        let mdevs = read_parallel(
            &self.root,
            self.threads,
            &mut r,
            &mdev_names,
            DEVICES_PER_THREAD,
            |r, (_, name)| read_mdev(r, name),
        );
        for ((uuid, _), m) in mdev_names.into_iter().zip(mdevs) {
            if let Some(m) = m {
                inv.mdevs.insert(uuid, m);
            }
        }
        self.settle(&mut r, &mut inv);
        inv.iommu = iommu_status(units, iommu_cmdline_flags(&cmdline), inv.group_ids.len());
        inv.modules = read_modules(&mut r);

        let mut warnings = self.load_warnings.clone();
        warnings.append(&mut inv.warnings);
        warnings.append(&mut r.warnings);
        inv.warnings = warnings;
        normalise_warnings(&mut inv.warnings);
        (inv, r.stats)
    }

    /// Reads one function in full into the inventory; a function that is gone leaves it.
    fn load_function(&self, r: &mut Reader<'_>, inv: &mut Inventory, addr: PciAddress) {
        match self.read_function(r, addr) {
            Some((f, class)) => {
                inv.pci_classes.insert(addr, class);
                inv.functions.insert(addr, f);
            }
            None => {
                inv.pci_classes.remove(&addr);
                inv.functions.remove(&addr);
            }
        }
    }

    /// Brings `functions`, `groups` and `gpus` to the GPU scope the module documentation
    /// describes: reads core functions and wanted groups that are missing, drops what fell out
    /// of scope (and its warnings). Every display function must already be in `functions`.
    fn settle(&self, r: &mut Reader<'_>, inv: &mut Inventory) {
        let core = core_functions(inv);
        for a in &core {
            if !inv.functions.contains_key(a) {
                self.load_function(r, inv, *a);
            }
        }
        let wanted: BTreeSet<u32> = core
            .iter()
            .filter_map(|a| inv.functions.get(a))
            .filter_map(|f| f.iommu_group)
            .chain(inv.mdevs.values().filter_map(|m| m.iommu_group))
            .collect();
        let unwanted: Vec<u32> = inv
            .groups
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        for id in unwanted {
            forget_group(inv, id);
        }
        for id in wanted {
            if !inv.groups.contains_key(&id) {
                if let Some(g) = self.read_group(r, inv, id) {
                    inv.groups.insert(id, g);
                }
            }
        }
        inv.warnings.append(&mut r.warnings);

        let mut keep = core;
        for g in inv.groups.values() {
            keep.extend(g.members.iter().filter_map(|m| m.pci_address));
        }
        let out_of_scope: Vec<PciAddress> = inv
            .functions
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for a in out_of_scope {
            forget_function(inv, a);
        }
        inv.gpus = inv
            .functions
            .values()
            .filter(|f| f.is_display())
            .map(|f| (f.address, gpu_entry(&inv.functions, f.address)))
            .collect();
    }

    /// [`Scanner::settle`] for a refresh that left the core as it was: only the groups and
    /// functions the refresh touched can have entered or left the scope, so only they are
    /// looked at (a full settle walks every mdev and group, too slow for every uevent).
    ///
    /// Returns the functions the refresh and the settling may have read, added or dropped.
    fn settle_touched(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        core: &BTreeSet<PciAddress>,
        touched: &Touched,
    ) -> BTreeSet<PciAddress> {
        let mut candidates = touched.addrs.clone();
        for &id in &touched.groups {
            let wanted = core
                .iter()
                .filter_map(|a| inv.functions.get(a))
                .any(|f| f.iommu_group == Some(id))
                || inv.mdevs.values().any(|m| m.iommu_group == Some(id));
            if wanted && !inv.groups.contains_key(&id) {
                if let Some(g) = self.read_group(r, inv, id) {
                    inv.groups.insert(id, g);
                }
            } else if !wanted && inv.groups.contains_key(&id) {
                forget_group(inv, id);
            }
            if let Some(g) = inv.groups.get(&id) {
                candidates.extend(g.members.iter().filter_map(|m| m.pci_address));
            }
        }
        inv.warnings.append(&mut r.warnings);
        for &a in &candidates {
            if !inv.functions.contains_key(&a) || core.contains(&a) {
                continue;
            }
            let lists = |g: &IommuGroup| g.members.iter().any(|m| m.pci_address == Some(a));
            let own = inv
                .functions
                .get(&a)
                .and_then(|f| f.iommu_group)
                .and_then(|id| inv.groups.get(&id));
            let in_a_group = own.is_some_and(lists)
                || touched
                    .groups
                    .iter()
                    .filter_map(|id| inv.groups.get(id))
                    .any(lists)
                || touched.were_in_scope.contains(&a) && inv.groups.values().any(lists);
            if !in_a_group {
                forget_function(inv, a);
            }
        }
        candidates
    }

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
        let mut stats = ScanStats::default();
        let mut scope = RefreshScope::default();
        let mut merge = |(s, sc): (ScanStats, RefreshScope)| {
            stats.add(&s);
            scope.merge(sc);
        };
        if !mdevs.is_empty() {
            merge(self.refresh_step(inv, Step::Mdevs(&mdevs)));
        }
        for target in targets {
            if !matches!(target, RefreshTarget::Mdev(_)) {
                merge(self.refresh_step(inv, Step::One(target)));
            }
        }
        (stats, scope)
    }

    fn refresh_step(&self, inv: &mut Inventory, step: Step<'_>) -> (ScanStats, RefreshScope) {
        let mut r = Reader::new(&self.root);
        let core_before = core_functions(inv);
        let mut touched = Touched::default();
        // An mdev is read as a step of one, so that its parent is read the same way.
        let step = match step {
            Step::One(RefreshTarget::Mdev(uuid)) => Step::Mdevs(std::slice::from_ref(uuid)),
            other => other,
        };
        let target = match step {
            Step::Mdevs(uuids) => {
                let mut parents = ParentReads::default();
                for uuid in uuids {
                    self.refresh_mdev(&mut r, inv, *uuid, &mut touched, &mut parents);
                }
                for p in &parents.whole {
                    reload_parent(&mut r, inv, p);
                }
                for p in parents.instances.difference(&parents.whole) {
                    reload_instances(&mut r, inv, p);
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
                reload_parent(&mut r, inv, name);
            }
            Some(RefreshTarget::MdevInstances(name)) => {
                touched.parents.insert(name.clone());
                reload_instances(&mut r, inv, name);
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

    fn refresh_pci(
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
            reload_parent(r, inv, &name);
            touched.parents.insert(name);
        }
    }

    /// Re-reads one function into the inventory (or removes it), replacing its warnings.
    /// Returns the old and new records.
    fn reload_function(
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

    /// Reads one PCI function and its class as far as it could be read (the record says 0
    /// when it could not); `None` when it does not exist (or vanished mid-read).
    fn read_function(
        &self,
        r: &mut Reader<'_>,
        addr: PciAddress,
    ) -> Option<(PciFunction, Option<u32>)> {
        let name = addr.to_string();
        let link = Path::new(PCI_DEVICES).join(&name);
        let sysfs_path = match r.read_link(&link) {
            Ok(target) => match resolve_link(Path::new("bus/pci/devices"), &target) {
                Some(p) => p,
                None => {
                    r.warn(
                        &link,
                        format!("the link points outside /sys ({})", target.display()),
                    );
                    return None;
                }
            },
            // Some test trees (and a bind-mounted copy) hold the device directory itself here.
            Err(e) if is_not_a_link(&e) => PathBuf::from("bus/pci/devices").join(&name),
            Err(e) if is_missing(&e) => return None,
            Err(e) => {
                r.warn(&link, format!("the device link could not be read: {e}"));
                return None;
            }
        };
        let dir = Path::new("sys").join(&sysfs_path);
        let mut entries = match r.list(&dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return None,
            Err(e) => {
                r.warn(
                    &dir,
                    format!("the device directory could not be listed: {e}"),
                );
                return None;
            }
        };
        entries.sort_unstable();
        let mut d = DeviceDir { r, dir, entries };
        d.read_function(self, addr, sysfs_path).ok()
    }
}

/// One device directory being read: its listing decides which attributes are opened.
struct DeviceDir<'r, 'a> {
    r: &'r mut Reader<'a>,
    dir: PathBuf,
    entries: Vec<String>,
}

/// The keys of a PCI device's `uevent` the scan uses.
#[derive(Default)]
struct PciUevent {
    driver: Option<String>,
    class: Option<String>,
    id: Option<String>,
    subsys_id: Option<String>,
    modalias: Option<String>,
}

impl DeviceDir<'_, '_> {
    fn has(&self, name: &str) -> bool {
        self.entries
            .binary_search_by(|e| e.as_str().cmp(name))
            .is_ok()
    }

    /// Reads an attribute the listing showed: `Ok(None)` when unreadable (warned),
    /// `Err(Gone)` when it vanished.
    fn attr(&mut self, name: &str) -> Result<Option<String>, Gone> {
        let path = self.dir.join(name);
        match self.r.read(&path) {
            Ok(text) => Ok(Some(text)),
            Err(ReadError::Missing) => Err(Gone),
            Err(e) => {
                self.r.warn(&path, crate::error_chain(&e));
                Ok(None)
            }
        }
    }

    /// Reads an attribute if the listing has it, trimmed; empty files are warned about.
    fn text(&mut self, name: &str) -> Result<Option<String>, Gone> {
        if !self.has(name) {
            return Ok(None);
        }
        let Some(text) = self.attr(name)? else {
            return Ok(None);
        };
        let value = text.trim();
        if value.is_empty() {
            self.r.warn(&self.dir.join(name), "the file is empty");
            return Ok(None);
        }
        Ok(Some(value.to_string()))
    }

    /// Reads and parses an attribute, warning with `what` when the value does not parse.
    fn parsed<T>(
        &mut self,
        name: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, Gone> {
        let Some(value) = self.text(name)? else {
            return Ok(None);
        };
        let parsed = parse(&value);
        if parsed.is_none() {
            self.r.warn(
                &self.dir.join(name),
                format!("'{}' is not {what}", shown(&value)),
            );
        }
        Ok(parsed)
    }

    /// The basename of a link the listing showed.
    fn link_name(&mut self, name: &str) -> Result<Option<String>, Gone> {
        if !self.has(name) {
            return Ok(None);
        }
        let path = self.dir.join(name);
        match self.r.read_link(&path) {
            Ok(target) => match basename(&target) {
                Some(b) => Ok(Some(b.to_string())),
                None => {
                    self.r.warn(&path, "the link target has no usable name");
                    Ok(None)
                }
            },
            Err(e) if is_missing(&e) => Err(Gone),
            Err(e) => {
                self.r
                    .warn(&path, format!("the link could not be read: {e}"));
                Ok(None)
            }
        }
    }

    fn uevent(&mut self) -> Result<PciUevent, Gone> {
        let mut ue = PciUevent::default();
        let Some(text) = self.text("uevent")? else {
            return Ok(ue);
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let slot = match key {
                "DRIVER" => &mut ue.driver,
                "PCI_CLASS" => &mut ue.class,
                "PCI_ID" => &mut ue.id,
                "PCI_SUBSYS_ID" => &mut ue.subsys_id,
                "MODALIAS" => &mut ue.modalias,
                _ => continue,
            };
            *slot = Some(value.trim().to_string());
        }
        Ok(ue)
    }

    /// Parses a `uevent` value, warning (against the uevent file) when it is malformed.
    fn uevent_value<T>(
        &mut self,
        key: &str,
        value: Option<&str>,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let value = value?;
        let parsed = parse(value);
        if parsed.is_none() {
            self.r.warn(
                &self.dir.join("uevent"),
                format!("{key}='{}' is malformed", shown(value)),
            );
        }
        parsed
    }

    fn read_function(
        &mut self,
        scanner: &Scanner,
        address: PciAddress,
        sysfs_path: PathBuf,
    ) -> Result<(PciFunction, Option<u32>), Gone> {
        let ue = self.uevent()?;
        // The uevent carries class, ids and modalias in one read; the separate attribute files
        // are the fallback for trees (or kernels) whose uevent lacks a key.
        let class = match self.uevent_value("PCI_CLASS", ue.class.as_deref(), parse_hex) {
            Some(c) => Some(c),
            None => self.parsed("class", "a hexadecimal class code", parse_hex)?,
        };
        let known_class = class;
        let class = class.unwrap_or_else(|| {
            self.r
                .warn(&self.dir, "the class code could not be read; 0 is reported");
            0
        });
        let (vendor, device) = match self.uevent_value("PCI_ID", ue.id.as_deref(), parse_id_pair) {
            Some(pair) => pair,
            None => (
                self.parsed("vendor", "a hexadecimal vendor id", parse_hex16)?
                    .unwrap_or_default(),
                self.parsed("device", "a hexadecimal device id", parse_hex16)?
                    .unwrap_or_default(),
            ),
        };
        let (subsystem_vendor, subsystem_device) =
            match self.uevent_value("PCI_SUBSYS_ID", ue.subsys_id.as_deref(), parse_id_pair) {
                Some(pair) => pair,
                None => (
                    self.parsed("subsystem_vendor", "a hexadecimal vendor id", parse_hex16)?
                        .unwrap_or_default(),
                    self.parsed("subsystem_device", "a hexadecimal device id", parse_hex16)?
                        .unwrap_or_default(),
                ),
            };
        let modalias = match ue.modalias.filter(|m| !m.is_empty()) {
            Some(m) => Some(m),
            None => self.text("modalias")?,
        };
        // The listing is authoritative for boundness (a stale uevent must not report a driver
        // that was unbound); the uevent's DRIVER saves the readlink when bound.
        let driver = if self.has("driver") {
            match ue.driver.filter(|d| !d.is_empty()) {
                // The name is later joined onto `bus/pci/drivers`: the link decides otherwise.
                Some(d) if crate::host::names::is_safe_component(&d) => Some(d),
                Some(d) => {
                    self.r.warn(
                        &self.dir.join("uevent"),
                        format!("DRIVER='{}' is not a driver name", shown(&d)),
                    );
                    self.link_name("driver")?
                }
                None => self.link_name("driver")?,
            }
        } else {
            None
        };
        let revision = self.parsed("revision", "a hexadecimal revision", |v| {
            parse_hex(v).and_then(|r| u8::try_from(r).ok())
        })?;
        let driver_override = self.text("driver_override")?.filter(|v| v != "(null)");
        let boot_vga = self.parsed("boot_vga", "0 or 1", |v| match v {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })?;
        let numa_node = self.parsed("numa_node", "a NUMA node number", |v| v.parse().ok())?;
        let reset_methods = if self.has("reset_method") {
            // An empty reset_method means no reset is available: not worth a warning.
            match self.attr("reset_method")? {
                Some(text) => text.split_ascii_whitespace().map(str::to_string).collect(),
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let iommu_group = match self.link_name("iommu_group")? {
            Some(g) => {
                let parsed = g.parse::<u32>().ok();
                if parsed.is_none() {
                    self.r.warn(
                        &self.dir.join("iommu_group"),
                        format!("the link names '{}', not a group number", shown(&g)),
                    );
                }
                parsed
            }
            None => None,
        };
        let sriov = self.sriov()?;
        let physfn = match self.link_name("physfn")? {
            Some(name) => self.address_from_link("physfn", &name),
            None => None,
        };
        let nvidia_vgpu = if self.has("nvidia") {
            self.nvidia_vgpu()
        } else {
            None
        };

        let ids = PciIds {
            vendor,
            device,
            subsystem_vendor,
            subsystem_device,
        };
        let db = &scanner.pci_ids;
        let function = PciFunction {
            address,
            sysfs_path,
            class,
            revision,
            ids,
            vendor_name: db.vendor_name(vendor).map(str::to_string),
            device_name: db.device_name(vendor, device).map(str::to_string),
            subsystem_name: db
                .subsystem_name(vendor, device, subsystem_vendor, subsystem_device)
                .map(str::to_string),
            driver,
            driver_override,
            boot_vga,
            numa_node,
            reset_methods,
            kernel_modules: modalias
                .as_deref()
                .map(|m| scanner.aliases.modules_for(m))
                .unwrap_or_default(),
            modalias,
            iommu_group,
            sriov,
            physfn,
            nvidia_vgpu,
        };
        Ok((function, known_class))
    }

    fn address_from_link(&mut self, link: &str, name: &str) -> Option<PciAddress> {
        let parsed = name.parse().ok();
        if parsed.is_none() {
            self.r.warn(
                &self.dir.join(link),
                format!("the link names '{}', not a PCI address", shown(name)),
            );
        }
        parsed
    }

    fn sriov(&mut self) -> Result<Option<Sriov>, Gone> {
        if !self.has("sriov_totalvfs") {
            return Ok(None);
        }
        let total_vfs = self
            .parsed("sriov_totalvfs", "a VF count", |v| v.parse().ok())?
            .unwrap_or_default();
        let num_vfs = self
            .parsed("sriov_numvfs", "a VF count", |v| v.parse().ok())?
            .unwrap_or_default();
        let mut links: Vec<(u32, String)> = self
            .entries
            .iter()
            .filter_map(|e| {
                let n = e.strip_prefix("virtfn")?.parse().ok()?;
                Some((n, e.clone()))
            })
            .collect();
        links.sort_unstable();
        let mut vfs = Vec::with_capacity(links.len());
        for (_, link) in links {
            if let Some(name) = self.link_name(&link)? {
                vfs.extend(self.address_from_link(&link, &name));
            }
        }
        Ok(Some(Sriov {
            total_vfs,
            num_vfs,
            vfs,
        }))
    }

    /// NVIDIA's per-VF vGPU files; absent files (a PF's `nvidia/` lacks them) are not warned.
    fn nvidia_vgpu(&mut self) -> Option<NvidiaVfVgpu> {
        let types_path = self.dir.join("nvidia/creatable_vgpu_types");
        let current_path = self.dir.join("nvidia/current_vgpu_type");
        let types_text = self.optional_file(&types_path);
        let current_text = self.optional_file(&current_path);
        if types_text.is_none() && current_text.is_none() {
            return None;
        }
        let mut creatable_types = Vec::new();
        let mut first = true;
        for line in types_text.as_deref().unwrap_or_default().lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let was_first = std::mem::replace(&mut first, false);
            let parsed = line.split_once(':').and_then(|(id, name)| {
                Some(VgpuTypeOffer {
                    id: id.trim().parse().ok()?,
                    name: name.trim().to_string(),
                })
            });
            match parsed {
                Some(offer) => creatable_types.push(offer),
                // The driver prints a header line (`ID    : vGPU Name`) before the types.
                None if was_first => {}
                None => self.r.warn(
                    &types_path,
                    format!("'{}' is not an 'ID : name' line", shown(line)),
                ),
            }
        }
        let current_type = match current_text.as_deref().map(str::trim) {
            None | Some("0") => None,
            Some(v) => match v.parse::<u32>() {
                Ok(id) => Some(id),
                Err(_) => {
                    self.r.warn(
                        &current_path,
                        format!("'{}' is not a vGPU type id", shown(v)),
                    );
                    None
                }
            },
        };
        Some(NvidiaVfVgpu {
            creatable_types,
            current_type,
        })
    }

    fn optional_file(&mut self, path: &Path) -> Option<String> {
        match self.r.read(path) {
            Ok(text) => Some(text),
            Err(ReadError::Missing) => None,
            Err(e) => {
                self.r.warn(path, crate::error_chain(&e));
                None
            }
        }
    }
}

/// Whether a warning path belongs to the PCI function whose directory is `dir` (the directory
/// itself, its attributes and its `nvidia/` files, but not child devices below it).
fn owned_by_function(path: &Path, dir: &Path) -> bool {
    path == dir
        || path.parent() == Some(dir)
        || path.parent().and_then(Path::parent) == Some(dir)
            && path.parent().and_then(Path::file_name) == Some("nvidia".as_ref())
}

fn parse_hex16(v: &str) -> Option<u16> {
    parse_hex(v).and_then(|x| u16::try_from(x).ok())
}

/// `10DE:1DB4` → (0x10de, 0x1db4).
fn parse_id_pair(v: &str) -> Option<(u16, u16)> {
    let (a, b) = v.split_once(':')?;
    Some((parse_hex16(a)?, parse_hex16(b)?))
}

/// Lists a directory sorted; a missing directory is empty (mdev and IOMMU directories exist
/// only while their kernel parts are active), other errors are warned.
/// Fewest devices (a few syscalls each) worth a thread of their own: below it, starting the
/// thread costs more than the reads.
const DEVICES_PER_THREAD: usize = 256;

/// Fewest mdev parents worth a thread (each is a hundred reads or more: its types).
const PARENTS_PER_THREAD: usize = 4;

/// Most threads a scan uses by default (the reads are syscalls; beyond a few cores they
/// contend in the kernel's path lookup).
const PARALLEL_MAX_THREADS: usize = 4;

/// `read` of every item, in `items`' order: on large hosts split over the CPUs (each thread
/// with its own [`Reader`], whose counts and warnings then join `r`'s). A cold start is
/// mostly such independent per-device reads (a function's class, an mdev's links).
fn read_parallel<T: Sync, R: Send>(
    root: &Root,
    threads: usize,
    r: &mut Reader<'_>,
    items: &[T],
    per_thread: usize,
    read: impl Fn(&mut Reader<'_>, &T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len() / per_thread.max(1));
    if threads < 2 {
        return items.iter().map(|item| read(r, item)).collect();
    }
    let read = &read;
    let parts: Vec<(Vec<R>, Reader<'_>)> = std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|chunk| {
                s.spawn(move || {
                    let mut own = Reader::new(root);
                    let out: Vec<R> = chunk.iter().map(|item| read(&mut own, item)).collect();
                    (out, own)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for (part, mut own) in parts {
        out.extend(part);
        r.stats.add(&own.stats);
        r.warnings.append(&mut own.warnings);
    }
    out
}

fn list_sorted(r: &mut Reader<'_>, rel: &Path) -> Vec<String> {
    match r.list(rel) {
        Ok(mut names) => {
            names.sort_unstable();
            names
        }
        Err(e) if is_missing(&e) => Vec::new(),
        Err(e) => {
            r.warn(rel, format!("the directory could not be listed: {e}"));
            Vec::new()
        }
    }
}

fn read_kernel_release(r: &mut Reader<'_>) -> Option<String> {
    let rel = Path::new("proc/sys/kernel/osrelease");
    let usable = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/');
    match r.read(rel) {
        Ok(text) => {
            let release = text.trim();
            if usable(release) {
                return Some(release.to_string());
            }
            r.warn(rel, format!("'{}' is not a kernel release", shown(release)));
            None
        }
        Err(ReadError::Missing) => {
            // Without /proc (a bare test tree), a single installed kernel is the running one.
            let names = list_sorted(r, Path::new("lib/modules"));
            match names.as_slice() {
                [only] if usable(only) => Some(only.clone()),
                _ => None,
            }
        }
        Err(e) => {
            r.warn(rel, crate::error_chain(&e));
            None
        }
    }
}

fn read_modules(r: &mut Reader<'_>) -> ModuleState {
    ModuleState {
        vfio: r.exists(Path::new("sys/module/vfio")),
        vfio_pci: r.exists(Path::new("sys/module/vfio_pci")),
        mdev: r.exists(Path::new("sys/module/mdev")),
    }
}

fn slot_functions(
    functions: &BTreeMap<PciAddress, PciFunction>,
    slot: PciSlot,
) -> impl Iterator<Item = &PciFunction> {
    let first = PciAddress::new(slot.domain, slot.bus, slot.device, 0);
    let last = PciAddress::new(slot.domain, slot.bus, slot.device, 7);
    functions.range(first..=last).map(|(_, f)| f)
}

fn gpu_entry(functions: &BTreeMap<PciAddress, PciFunction>, address: PciAddress) -> Gpu {
    Gpu {
        address,
        companions: slot_functions(functions, address.slot())
            .map(|f| f.address)
            .filter(|a| *a != address)
            .collect(),
    }
}

/// Display controllers (class 0x03xxxx) are GPUs.
fn is_display_class(class: u32) -> bool {
    class >> 16 == 0x03
}

/// A function's class from its `uevent` (one open and read through the bus link); `None` when
/// the uevent cannot tell, so the function is read in full instead.
fn classify(r: &mut Reader<'_>, addr: PciAddress) -> Option<u32> {
    let path = Path::new(PCI_DEVICES).join(addr.to_string()).join("uevent");
    let text = r.read(&path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("PCI_CLASS="))
        .and_then(|v| parse_hex(v.trim()))
}

/// What a refresh re-read: the functions and groups whose scope may have changed, and the
/// mdevs and parents it re-read.
#[derive(Debug, Default)]
struct Touched {
    addrs: BTreeSet<PciAddress>,
    groups: BTreeSet<u32>,
    /// Touched functions that had a full record before the refresh: only they can be kept in
    /// scope by a group the refresh did not touch.
    were_in_scope: BTreeSet<PciAddress>,
    mdevs: BTreeSet<Uuid>,
    parents: BTreeSet<String>,
}

/// The per-device entries a [`Scanner::refresh`] may have changed: every entry of
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
fn forget_group(inv: &mut Inventory, id: u32) {
    inv.groups.remove(&id);
    let prefix = Path::new(IOMMU_GROUPS).join(id.to_string());
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
}

/// Drops a function's full record (it left the scope; its class stays known), and its warnings.
fn forget_function(inv: &mut Inventory, addr: PciAddress) {
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
fn core_functions(inv: &Inventory) -> BTreeSet<PciAddress> {
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

impl Scanner {
    /// Reads `iommu_groups/<id>/devices`. PCI members not yet read are read in full (a group's
    /// members are in scope); non-PCI members' driver comes from their `driver` link.
    fn read_group(&self, r: &mut Reader<'_>, inv: &mut Inventory, id: u32) -> Option<IommuGroup> {
        let devices = Path::new(IOMMU_GROUPS).join(id.to_string()).join("devices");
        let mut names = match r.list(&devices) {
            Ok(names) => names,
            Err(e) if is_missing(&e) => return None,
            Err(e) => {
                r.warn(
                    &devices,
                    format!("the group's devices could not be listed: {e}"),
                );
                return None;
            }
        };
        names.sort_unstable();
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            let pci_address = name.parse::<PciAddress>().ok();
            if let Some(a) = pci_address {
                if !inv.functions.contains_key(&a) {
                    self.load_function(r, inv, a);
                }
            }
            let (class, driver) = match pci_address.and_then(|a| inv.functions.get(&a)) {
                Some(f) => (Some(f.class), f.driver.clone()),
                None => {
                    let link = devices.join(&name).join("driver");
                    let driver = match r.read_link(&link) {
                        Ok(target) => basename(&target).map(str::to_string),
                        Err(e) if is_missing(&e) => None,
                        Err(e) => {
                            r.warn(&link, format!("the link could not be read: {e}"));
                            None
                        }
                    };
                    (None, driver)
                }
            };
            members.push(GroupMember {
                name,
                pci_address,
                class,
                driver,
            });
        }
        let verdict = assess_group(&members);
        Some(IommuGroup {
            id,
            members,
            viable: verdict.viable,
            problems: verdict.problems,
        })
    }

    /// Re-reads one group (whether it is in scope is settled afterwards) and whether it exists.
    fn reload_group(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        id: u32,
        touched: &mut Touched,
    ) {
        touched.groups.insert(id);
        if let Some(old) = inv.groups.get(&id) {
            let members = old.members.iter().filter_map(|m| m.pci_address);
            touched.addrs.extend(members.clone());
            touched.were_in_scope.extend(members);
        }
        let prefix = Path::new(IOMMU_GROUPS).join(id.to_string());
        inv.warnings.retain(|w| !w.path.starts_with(&prefix));
        match self.read_group(r, inv, id) {
            Some(g) => {
                // Members read in full here may be out of scope: settling looks at them.
                touched
                    .addrs
                    .extend(g.members.iter().filter_map(|m| m.pci_address));
                inv.group_ids.insert(id);
                inv.groups.insert(id, g);
            }
            None => {
                inv.groups.remove(&id);
                // The full scan counts every entry of the groups directory.
                if r.exists(&prefix) {
                    inv.group_ids.insert(id);
                } else {
                    inv.group_ids.remove(&id);
                }
            }
        }
    }

    /// Reads the mdev `uuid`; what that changes on its parents and groups is added to
    /// `reads`, for the caller to read once for all the mdevs of its step.
    fn refresh_mdev(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        uuid: Uuid,
        touched: &mut Touched,
        reads: &mut ParentReads,
    ) {
        let name = uuid.to_string();
        let prefix = Path::new(MDEV_DEVICES).join(&name);
        inv.warnings.retain(|w| !w.path.starts_with(&prefix));
        touched.mdevs.insert(uuid);
        let new = read_mdev(r, &name);
        let old = match &new {
            Some(m) => inv.mdevs.insert(uuid, m.clone()),
            None => inv.mdevs.remove(&uuid),
        };
        // Creating or removing an mdev changes its parent's available_instances (a bind or
        // unbind does not) and its group.
        let appeared_or_went = old.is_none() != new.is_none();
        let mut parents = BTreeSet::new();
        let mut groups = BTreeSet::new();
        for m in [&old, &new].into_iter().flatten() {
            parents.insert(m.parent.clone());
            groups.extend(m.iommu_group);
        }
        // Moved between parents (a UUID reused elsewhere): both are read in full.
        let parent_changed = matches!((&old, &new), (Some(o), Some(n)) if o.parent != n.parent);
        touched.parents.extend(parents.iter().cloned());
        if parent_changed {
            reads.whole.extend(parents);
        } else if appeared_or_went {
            reads.instances.extend(parents);
        }
        reads.groups.extend(groups);
    }
}

/// One refresh step: a target, or the mdevs of a batch together.
#[derive(Clone, Copy)]
enum Step<'a> {
    One(&'a RefreshTarget),
    Mdevs(&'a [Uuid]),
}

/// What the mdevs of one step leave to read once for all of them.
#[derive(Default)]
struct ParentReads {
    /// Parents read in full (an mdev moved between them).
    whole: BTreeSet<String>,
    /// Parents whose instance counts changed (an mdev appeared or went).
    instances: BTreeSet<String>,
    /// The IOMMU groups the mdevs are or were in.
    groups: BTreeSet<u32>,
}

fn recompute_iommu_status(inv: &mut Inventory) {
    let units = std::mem::take(&mut inv.iommu.units);
    let flags = std::mem::take(&mut inv.iommu.cmdline_flags);
    inv.iommu = iommu_status(units, flags, inv.group_ids.len());
}

/// Reads `/sys/class/mdev_bus/<name>` and its types (through the class link, so every
/// warning about a parent lies under its class entry).
///
/// `known` is the parent as last read: a type it lists (read without a warning) keeps its
/// name, description and device_api, which the driver fixes per type id while the parent is
/// registered, and only `available_instances` is read again; a type that appeared is read in
/// full. The refresh after each create or remove then reads one file per type, not four.
fn read_parent(r: &mut Reader<'_>, name: &str, known: Option<&MdevParent>) -> Option<MdevParent> {
    let link = Path::new(MDEV_BUS).join(name);
    let sysfs_path = match r.read_link(&link) {
        Ok(target) => match resolve_link(Path::new("class/mdev_bus"), &target) {
            Some(p) => p,
            None => {
                r.warn(
                    &link,
                    format!("the link points outside /sys ({})", target.display()),
                );
                return None;
            }
        },
        Err(e) if is_not_a_link(&e) => PathBuf::from("class/mdev_bus").join(name),
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&link, format!("the parent link could not be read: {e}"));
            return None;
        }
    };
    let types_dir = link.join("mdev_supported_types");
    let ids = match r.list(&types_dir) {
        Ok(mut ids) => {
            ids.sort_unstable();
            ids
        }
        Err(e) => {
            let why = if is_missing(&e) {
                "the parent has no mdev_supported_types directory".to_string()
            } else {
                format!("the parent's types could not be listed: {e}")
            };
            r.warn(&types_dir, why);
            Vec::new()
        }
    };
    let mut types = Vec::with_capacity(ids.len());
    for id in ids {
        let dir = types_dir.join(&id);
        let (name, description, device_api) = match known
            .and_then(|k| k.types.iter().find(|t| t.id == id))
            // A type read with a warning (a required attribute missing or empty) is read
            // again: the parent's warnings were cleared for this pass.
            .filter(|t| t.name.is_some() && t.device_api.is_some())
        {
            Some(t) => (t.name.clone(), t.description.clone(), t.device_api.clone()),
            None => (
                type_attr(r, &dir.join("name"), true),
                // mtty and other sample drivers have no description.
                type_attr(r, &dir.join("description"), false),
                type_attr(r, &dir.join("device_api"), true),
            ),
        };
        let available_path = dir.join("available_instances");
        let available_instances =
            type_attr(r, &available_path, true).and_then(|v| match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    r.warn(
                        &available_path,
                        format!("'{}' is not an instance count", shown(&v)),
                    );
                    None
                }
            });
        types.push(MdevType {
            id,
            name,
            description,
            device_api,
            available_instances,
        });
    }
    Some(MdevParent {
        name: name.to_string(),
        sysfs_path,
        pci_address: name.parse().ok(),
        types,
    })
}

/// One mdev type attribute, trimmed; missing files are warned only when `required`.
fn type_attr(r: &mut Reader<'_>, path: &Path, required: bool) -> Option<String> {
    match r.read(path) {
        Ok(text) => {
            let value = text.trim();
            if value.is_empty() {
                if required {
                    r.warn(path, "the file is empty");
                }
                None
            } else {
                Some(value.to_string())
            }
        }
        Err(ReadError::Missing) => {
            if required {
                r.warn(path, "the file is missing");
            }
            None
        }
        Err(e) => {
            r.warn(path, crate::error_chain(&e));
            None
        }
    }
}

/// What an mdev's creation or removal changes on its parent: the instance counts (and, as
/// every read of a parent does, its link and type list). A parent not read before is read in
/// full.
fn reload_instances(r: &mut Reader<'_>, inv: &mut Inventory, name: &str) {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return;
    }
    let Some(known) = inv.mdev_parents.get(name).cloned() else {
        return reload_parent(r, inv, name);
    };
    let prefix = Path::new(MDEV_BUS).join(name);
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
    match read_parent(r, name, Some(&known)) {
        Some(p) => {
            inv.mdev_parents.insert(name.to_string(), p);
        }
        None => {
            inv.mdev_parents.remove(name);
        }
    }
}

fn reload_parent(r: &mut Reader<'_>, inv: &mut Inventory, name: &str) {
    let prefix = Path::new(MDEV_BUS).join(name);
    // A name with a path separator cannot be an mdev_bus entry (and must not escape it).
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return;
    }
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
    match read_parent(r, name, None) {
        Some(p) => {
            inv.mdev_parents.insert(name.to_string(), p);
        }
        None => {
            inv.mdev_parents.remove(name);
        }
    }
}

/// Reads `/sys/bus/mdev/devices/<name>` with one `readlink` per link (device, `mdev_type`,
/// `driver`, `iommu_group`); the parent is the directory the device link points into.
fn read_mdev(r: &mut Reader<'_>, name: &str) -> Option<Mdev> {
    let uuid = Uuid::parse_str(name).ok()?;
    let link = Path::new(MDEV_DEVICES).join(name);
    let target = match r.read_link(&link) {
        Ok(target) => target,
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&link, format!("the mdev link could not be read: {e}"));
            return None;
        }
    };
    let parent = resolve_link(Path::new("bus/mdev/devices"), &target)
        .as_deref()
        .and_then(Path::parent)
        .and_then(basename)
        .map(str::to_string);
    let Some(parent) = parent else {
        r.warn(
            &link,
            format!(
                "the link ({}) does not name a parent device",
                target.display()
            ),
        );
        return None;
    };
    let type_link = link.join("mdev_type");
    let type_id = match r.read_link(&type_link) {
        Ok(t) => basename(&t).map(str::to_string),
        // Every live mdev has mdev_type: without it the device is being removed.
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&type_link, format!("the link could not be read: {e}"));
            None
        }
    };
    let driver = optional_link_name(r, &link.join("driver"));
    let group_link = link.join("iommu_group");
    let iommu_group = optional_link_name(r, &group_link).and_then(|g| match g.parse() {
        Ok(id) => Some(id),
        Err(_) => {
            r.warn(
                &group_link,
                format!("the link names '{}', not a group number", shown(&g)),
            );
            None
        }
    });
    Some(Mdev {
        uuid,
        parent,
        type_id,
        driver,
        iommu_group,
    })
}

fn optional_link_name(r: &mut Reader<'_>, path: &Path) -> Option<String> {
    match r.read_link(path) {
        Ok(target) => basename(&target).map(str::to_string),
        Err(e) if is_missing(&e) => None,
        Err(e) => {
            r.warn(path, format!("the link could not be read: {e}"));
            None
        }
    }
}

/// Warnings in a canonical order, so a refreshed inventory compares equal to a fresh scan.
fn normalise_warnings(warnings: &mut Vec<ScanWarning>) {
    warnings.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.message.cmp(&b.message)));
    warnings.dedup();
}
