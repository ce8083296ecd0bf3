//! Reading helpers shared by the scan's files: the sysfs paths, parallel per-device reads,
//! sorted listings, the kernel release, module state, GPU entries and warning order.
//! May import: crate::host, crate::model, crate::iommu, crate::error.

use std::collections::BTreeMap;
use std::path::Path;

use crate::host::root::Root;
use crate::host::sysfs::{is_missing, parse_hex, shown, ReadError, Reader};
use crate::iommu::iommu_status;
use crate::model::{Gpu, Inventory, ModuleState, PciAddress, PciFunction, PciSlot, ScanWarning};

pub(super) const PCI_DEVICES: &str = "sys/bus/pci/devices";
pub(super) const IOMMU_GROUPS: &str = "sys/kernel/iommu_groups";
pub(super) const IOMMU_CLASS: &str = "sys/class/iommu";
pub(super) const MDEV_BUS: &str = "sys/class/mdev_bus";
pub(super) const MDEV_DEVICES: &str = "sys/bus/mdev/devices";

/// Fewest devices (a few syscalls each) worth a thread of their own: below it, starting the
/// thread costs more than the reads.
pub(super) const DEVICES_PER_THREAD: usize = 256;

/// Fewest mdev parents worth a thread (each is a hundred reads or more: its types).
pub(super) const PARENTS_PER_THREAD: usize = 4;

/// Most threads a scan uses by default (the reads are syscalls; beyond a few cores they
/// contend in the kernel's path lookup).
pub(super) const PARALLEL_MAX_THREADS: usize = 4;

/// `read` of every item, in `items`' order: on large hosts split over the CPUs (each thread
/// with its own [`Reader`], whose counts and warnings then join `r`'s). A cold start is
/// mostly such independent per-device reads (a function's class, an mdev's links).
pub(super) fn read_parallel<T: Sync, R: Send>(
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

/// Lists a directory sorted; a missing directory is empty (mdev and IOMMU directories exist
/// only while their kernel parts are active), other errors are warned.
pub(super) fn list_sorted(r: &mut Reader<'_>, rel: &Path) -> Vec<String> {
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

pub(super) fn read_kernel_release(r: &mut Reader<'_>) -> Option<String> {
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

pub(super) fn read_modules(r: &mut Reader<'_>) -> ModuleState {
    ModuleState {
        vfio: r.exists(Path::new("sys/module/vfio")),
        vfio_pci: r.exists(Path::new("sys/module/vfio_pci")),
        mdev: r.exists(Path::new("sys/module/mdev")),
    }
}

pub(super) fn slot_functions(
    functions: &BTreeMap<PciAddress, PciFunction>,
    slot: PciSlot,
) -> impl Iterator<Item = &PciFunction> {
    let first = PciAddress::new(slot.domain, slot.bus, slot.device, 0);
    let last = PciAddress::new(slot.domain, slot.bus, slot.device, 7);
    functions.range(first..=last).map(|(_, f)| f)
}

pub(super) fn gpu_entry(functions: &BTreeMap<PciAddress, PciFunction>, address: PciAddress) -> Gpu {
    Gpu {
        address,
        companions: slot_functions(functions, address.slot())
            .map(|f| f.address)
            .filter(|a| *a != address)
            .collect(),
    }
}

/// Display controllers (class 0x03xxxx) are GPUs.
pub(super) fn is_display_class(class: u32) -> bool {
    class >> 16 == 0x03
}

/// A function's class from its `uevent` (one open and read through the bus link); `None` when
/// the uevent cannot tell, so the function is read in full instead.
pub(super) fn classify(r: &mut Reader<'_>, addr: PciAddress) -> Option<u32> {
    let path = Path::new(PCI_DEVICES).join(addr.to_string()).join("uevent");
    let text = r.read(&path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("PCI_CLASS="))
        .and_then(|v| parse_hex(v.trim()))
}

/// Whether a warning path belongs to the PCI function whose directory is `dir` (the directory
/// itself, its attributes and its `nvidia/` files, but not child devices below it).
pub(super) fn owned_by_function(path: &Path, dir: &Path) -> bool {
    path == dir
        || path.parent() == Some(dir)
        || path.parent().and_then(Path::parent) == Some(dir)
            && path.parent().and_then(Path::file_name) == Some("nvidia".as_ref())
}

pub(super) fn recompute_iommu_status(inv: &mut Inventory) {
    let units = std::mem::take(&mut inv.iommu.units);
    let flags = std::mem::take(&mut inv.iommu.cmdline_flags);
    inv.iommu = iommu_status(units, flags, inv.group_ids.len());
}

/// Warnings in a canonical order, so a refreshed inventory compares equal to a fresh scan.
pub(super) fn normalise_warnings(warnings: &mut Vec<ScanWarning>) {
    warnings.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.message.cmp(&b.message)));
    warnings.dedup();
}
