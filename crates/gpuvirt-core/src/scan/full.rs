//! The full scan and the settling of the GPU scope (which functions and IOMMU groups are
//! read in full). May import: crate::host, crate::model, crate::iommu, crate::error,
//! scan/{scanner, read, scope, mdev}.

use std::collections::BTreeSet;
use std::path::Path;

use uuid::Uuid;

use super::mdev::{read_mdev, read_parent};
use super::read::{
    classify, gpu_entry, is_display_class, list_sorted, normalise_warnings, read_modules,
    read_parallel, DEVICES_PER_THREAD, IOMMU_CLASS, IOMMU_GROUPS, MDEV_BUS, MDEV_DEVICES,
    PARENTS_PER_THREAD, PCI_DEVICES,
};
use super::scanner::Scanner;
use super::scope::{core_functions, forget_function, forget_group, Touched};
use crate::host::sysfs::{basename, is_missing, ReadError, Reader, ScanStats};
use crate::iommu::{assess_group, iommu_cmdline_flags, iommu_status};
use crate::model::{GroupMember, Inventory, IommuGroup, PciAddress};

impl Scanner {
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
            |r, n| read_parent(r, n, None, None),
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
    pub(super) fn load_function(&self, r: &mut Reader<'_>, inv: &mut Inventory, addr: PciAddress) {
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
    pub(super) fn settle(&self, r: &mut Reader<'_>, inv: &mut Inventory) {
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
    pub(super) fn settle_touched(
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

    /// Reads `iommu_groups/<id>/devices`. PCI members not yet read are read in full (a group's
    /// members are in scope); non-PCI members' driver comes from their `driver` link.
    pub(super) fn read_group(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        id: u32,
    ) -> Option<IommuGroup> {
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
        let verdict = assess_group(id, &members);
        Some(IommuGroup {
            id,
            members,
            viable: verdict.viable,
            problems: verdict.problems,
        })
    }

    /// Re-reads one group (whether it is in scope is settled afterwards) and whether it exists.
    pub(super) fn reload_group(
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
}
