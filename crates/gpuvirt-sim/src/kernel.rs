//! The simulated kernel's model types and read-only queries. May import: crate::fixture,
//! crate::tree, crate::uevent; its kernel/ parts import this file, never the reverse.
//!
//! A host model with the kernel's sysfs write semantics and uevents.
//!
//! [`Kernel`] keeps a model of the host (PCI functions, drivers, modules, IOMMU groups, mdev
//! parents and mdevs, NVIDIA per-VF vGPUs) and a [`Tree`] that mirrors real sysfs for it. Every
//! change goes through the model, updates only the affected part of the tree (inodes of
//! untouched files stay the same, which the FUSE front end relies on) and queues the uevents a
//! real 6.1 kernel sends, in its order.
//!
//! Choices where the kernel blocks (a simulated write must return):
//! - Unbinding a PCI mdev parent or unloading its module removes its idle mdevs first, as the
//!   kernel does (mdev_unregister_parent removes the children). When one of them is open by a VM
//!   the kernel waits inside the write until the VM lets go; the simulation fails the write
//!   with `EBUSY` instead, the same errno `<uuid>/remove` and `rmmod` give for a device in use.
//! - NVIDIA's per-VF `current_vgpu_type` changes send no uevent (the vendor driver sends none we
//!   know of); readers re-read the files.
//!
//! The parts, each an `impl Kernel` block in `kernel/`, call one another one way only:
//! `write` (sysfs store handlers) and `hooks` (modprobe, hotplug) call `semantics` (bind,
//! probe, mdevs, VFs, removal, with uevents), which calls `alloc` (group ids, VFs) and `render`
//! (model to tree), which calls `drm` (DRM nodes and udev's `dev/dri`); `build` (boot from a fixture) calls `alloc` and `render`; every part reads
//! the types and queries in this file.

mod alloc;
mod build;
mod drm;
mod hooks;
mod render;
mod semantics;
mod write;

use std::collections::{BTreeMap, BTreeSet};

use gpuvirt_core::{PciAddress, PciIds};
use uuid::Uuid;

use crate::fixture::{
    DriverSpec, FixtureError, IommuVendor, MdevTypeSpec, MdevctlSpec, NvidiaTypeSpec,
};
use crate::tree::Tree;
use crate::uevent::Uevent;

/// An errno value as a failing `write()` (or `modprobe`) would report it.
pub type Errno = i32;

/// Major number of `/dev/vfio/<group>` nodes (dynamic on a real host; 245 in the reference VM).
const VFIO_MAJOR: u32 = 245;

/// One entry of a PCI driver's id table (static or dynamic, `PCI_ANY_ID` as `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMatch {
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub subvendor: Option<u16>,
    pub subdevice: Option<u16>,
    pub class: u32,
    pub class_mask: u32,
}

impl IdMatch {
    /// Parses the fixture syntax `VVVV:DDDD[ sub=SVVV:SDDD][ class=CC[SS[II]]]`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex16 = |x: &str| -> Option<Option<u16>> {
            if x == "*" {
                Some(None)
            } else if x.len() == 4 {
                u16::from_str_radix(x, 16).ok().map(Some)
            } else {
                None
            }
        };
        let mut words = s.split_whitespace();
        let (v, d) = words.next()?.split_once(':')?;
        let mut m = IdMatch {
            vendor: hex16(v)?,
            device: hex16(d)?,
            subvendor: None,
            subdevice: None,
            class: 0,
            class_mask: 0,
        };
        for w in words {
            if let Some(sub) = w.strip_prefix("sub=") {
                let (sv, sd) = sub.split_once(':')?;
                m.subvendor = hex16(sv)?;
                m.subdevice = hex16(sd)?;
            } else if let Some(class) = w.strip_prefix("class=") {
                if class.is_empty() || class.len() > 6 || class.len() % 2 != 0 {
                    return None;
                }
                let value = u32::from_str_radix(class, 16).ok()?;
                let shift = 8 * (3 - class.len() / 2) as u32;
                m.class = value << shift;
                m.class_mask = (0xff_ffff >> shift) << shift;
            } else {
                return None;
            }
        }
        Some(m)
    }

    /// Whether a device with these ids and class matches (`pci_match_one_device`).
    pub fn matches(&self, ids: &PciIds, class: u32) -> bool {
        let eq = |want: Option<u16>, have: u16| want.is_none_or(|w| w == have);
        eq(self.vendor, ids.vendor)
            && eq(self.device, ids.device)
            && eq(self.subvendor, ids.subsystem_vendor)
            && eq(self.subdevice, ids.subsystem_device)
            && (self.class ^ class) & self.class_mask == 0
    }

    /// The `modules.alias` pattern depmod writes for this entry.
    pub fn alias(&self) -> String {
        let w16 = |v: Option<u16>| v.map_or("*".to_owned(), |v| format!("{v:08X}"));
        let byte = |shift: u32| {
            if (self.class_mask >> shift) & 0xff == 0xff {
                format!("{:02X}", (self.class >> shift) & 0xff)
            } else {
                "*".to_owned()
            }
        };
        let mut a = format!(
            "pci:v{}d{}sv{}sd{}bc{}sc{}i{}",
            w16(self.vendor),
            w16(self.device),
            w16(self.subvendor),
            w16(self.subdevice),
            byte(16),
            byte(8),
            byte(0)
        );
        if !a.ends_with('*') {
            a.push('*');
        }
        a
    }
}

#[derive(Debug, Clone)]
struct Driver {
    spec: DriverSpec,
    ids: Vec<IdMatch>,
    /// Added through `new_id`; lost when the module is unloaded.
    dynamic: Vec<IdMatch>,
}

impl Driver {
    /// `pci_match_device` without the override rule: dynamic ids, then the static table.
    fn matches_ids(&self, ids: &PciIds, class: u32) -> bool {
        self.dynamic.iter().any(|m| m.matches(ids, class))
            || (!self.spec.override_only && self.ids.iter().any(|m| m.matches(ids, class)))
    }

    fn is_vfio(&self) -> bool {
        is_vfio_driver(&self.spec.name)
    }
}

fn is_vfio_driver(name: &str) -> bool {
    name == "vfio-pci" || name.ends_with("vfio_pci") || name.ends_with("vfio-pci")
}

#[derive(Debug, Clone)]
struct Sriov {
    total: u32,
    num: u32,
    vf_ids: (u16, u16),
    offset: u32,
    stride: u32,
}

#[derive(Debug, Clone)]
struct NvidiaVgpu {
    framebuffer_mb: u64,
    homogeneous: bool,
    types: Vec<NvidiaTypeSpec>,
}

#[derive(Debug, Clone)]
struct Device {
    addr: PciAddress,
    /// Tree path of the device directory (`sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0`).
    path: String,
    upstream: Option<PciAddress>,
    class: u32,
    ids: PciIds,
    revision: u8,
    driver: Option<String>,
    driver_override: Option<String>,
    numa: i32,
    boot_vga: bool,
    reset_method: Vec<String>,
    irq: u32,
    group: Option<u32>,
    secondary_bus: Option<u8>,
    sriov: Option<Sriov>,
    /// For a VF: the PF and the VF index.
    physfn: Option<(PciAddress, u32)>,
    /// On a PF: NVIDIA's per-VF vGPU manager.
    vgpu: Option<NvidiaVgpu>,
    /// On a VF: the vGPU type created on it.
    vgpu_current: Option<u32>,
    /// DRM minor of its nodes while a DRM driver is bound (see `kernel/drm.rs`).
    drm_minor: Option<u32>,
}

impl Device {
    fn is_bridge(&self) -> bool {
        self.class >> 8 == 0x0604
    }

    fn devpath(&self) -> String {
        devpath_of(&self.path)
    }

    fn modalias(&self) -> String {
        format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            self.ids.vendor,
            self.ids.device,
            self.ids.subsystem_vendor,
            self.ids.subsystem_device,
            self.class >> 16,
            (self.class >> 8) & 0xff,
            self.class & 0xff
        )
    }

    /// The keys `pci_uevent` adds, in the kernel's order.
    fn pci_env(&self) -> Vec<(String, String)> {
        vec![
            ("PCI_CLASS".into(), format!("{:X}", self.class)),
            (
                "PCI_ID".into(),
                format!("{:04X}:{:04X}", self.ids.vendor, self.ids.device),
            ),
            (
                "PCI_SUBSYS_ID".into(),
                format!(
                    "{:04X}:{:04X}",
                    self.ids.subsystem_vendor, self.ids.subsystem_device
                ),
            ),
            ("PCI_SLOT_NAME".into(), self.addr.to_string()),
            ("MODALIAS".into(), self.modalias()),
        ]
    }
}

/// `sys/devices/x` → `/devices/x`.
fn devpath_of(tree_path: &str) -> String {
    format!("/{}", tree_path.strip_prefix("sys/").unwrap_or(tree_path))
}

#[derive(Debug, Clone)]
struct Parent {
    name: String,
    pci: Option<PciAddress>,
    driver: Option<String>,
    module: String,
    mdev_driver: String,
    pool: Option<u64>,
    homogeneous: bool,
    core_counted: bool,
    types: Vec<MdevTypeSpec>,
}

#[derive(Debug, Clone)]
struct Mdev {
    parent: String,
    type_id: String,
    group: u32,
    busy: bool,
}

/// A running simulated kernel. See the module documentation.
#[derive(Debug)]
pub struct Kernel {
    release: String,
    kver: (u32, u32),
    cmdline: String,
    /// The fixture's processes (`proc/<pid>/comm`).
    processes: Vec<String>,
    iommu: IommuVendor,
    drivers: BTreeMap<String, Driver>,
    /// Driver names in the order they appear in `modules.alias`.
    alias_order: Vec<String>,
    /// Registered drivers in registration order (the order the driver core tries them).
    driver_order: Vec<String>,
    module_deps: BTreeMap<String, Vec<String>>,
    /// Loaded modules in load order.
    loaded: Vec<String>,
    devices: BTreeMap<PciAddress, Device>,
    /// Devices removed through their `remove` attribute; `rescan` brings them back.
    unplugged: BTreeMap<PciAddress, Device>,
    parents: BTreeMap<String, Parent>,
    registered: BTreeSet<String>,
    mdevs: BTreeMap<Uuid, Mdev>,
    /// Group → number of devices/mdevs in it.
    group_refs: BTreeMap<u32, usize>,
    group_hint: u32,
    /// Groups with a `/dev/vfio/<group>` node → its minor.
    vfio_groups: BTreeMap<u32, u32>,
    /// Device (PCI address or mdev UUID) → index of its `vfio-dev/vfioN`.
    vfio_devs: BTreeMap<String, u32>,
    mdevctl: Vec<MdevctlSpec>,
    tree: Tree,
    events: Vec<Uevent>,
    seqnum: u64,
    next_irq: u32,
    /// The module `unload_module` is taking out, while it runs.
    unloading: Option<String>,
    /// `dev/dri` changed since the mount last copied it out (see `kernel/drm.rs`).
    dri_changed: bool,
}

/// `/proc/sys/kernel/random/boot_id` of a freshly booted simulated host. A real kernel makes
/// a random one per boot; a mount writes `proc` once as plain files, so a test stands for a
/// reboot by rewriting that file under the root.
pub const DEFAULT_BOOT_ID: &str = "6d1f8a4e-2b3c-4d5e-8f90-a1b2c3d4e5f6";

fn invalid(msg: impl Into<String>) -> FixtureError {
    FixtureError::invalid(msg)
}

impl Kernel {
    /// The kernel release (`uname -r`).
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Whether a module is loaded.
    pub fn is_loaded(&self, module: &str) -> bool {
        self.loaded.iter().any(|m| m == module)
    }

    /// Loaded modules in load order.
    pub fn loaded_modules(&self) -> &[String] {
        &self.loaded
    }

    /// Every PCI function present.
    pub fn pci_addresses(&self) -> Vec<PciAddress> {
        self.devices.keys().copied().collect()
    }

    /// The driver bound to a function.
    pub fn driver_of(&self, a: PciAddress) -> Option<&str> {
        self.devices.get(&a)?.driver.as_deref()
    }

    /// The tree path of a function's directory (`sys/devices/.../0000:41:00.0`).
    pub fn device_path(&self, a: PciAddress) -> Option<&str> {
        self.devices.get(&a).map(|d| d.path.as_str())
    }

    /// A function's IOMMU group.
    pub fn group_of(&self, a: PciAddress) -> Option<u32> {
        self.devices.get(&a)?.group
    }

    /// Active mdevs with their parent and type.
    pub fn mdevs(&self) -> Vec<(Uuid, String, String)> {
        self.mdevs
            .iter()
            .map(|(u, m)| (*u, m.parent.clone(), m.type_id.clone()))
            .collect()
    }

    /// Names of the registered mdev parents.
    pub fn registered_parents(&self) -> Vec<String> {
        self.registered.iter().cloned().collect()
    }

    /// `available_instances` of a type, `None` when the parent or type does not exist.
    pub fn available_instances(&self, parent: &str, type_id: &str) -> Option<u32> {
        self.available(parent, type_id)
    }

    /// The tree path of a registered mdev parent's device directory.
    pub fn parent_path(&self, parent: &str) -> Option<String> {
        let p = self.parents.get(parent)?;
        match p.pci {
            Some(a) => self.devices.get(&a).map(|d| d.path.clone()),
            None => Some(format!("sys/devices/virtual/{0}/{0}", p.name)),
        }
    }

    /// The sequence number of the last uevent sent.
    pub fn seqnum(&self) -> u64 {
        self.seqnum
    }

    // Queries the kernel/ parts share (private: visible to the child modules only).
    /// The address of VF `index` of `pf` (routing id = PF + offset + index × stride).
    fn vf_address(&self, pf: PciAddress, index: u32) -> Option<PciAddress> {
        let d = self.devices.get(&pf)?;
        let sr = d.sriov.as_ref()?;
        if index >= sr.total {
            return None;
        }
        let rid = (u32::from(pf.bus) << 8) | (u32::from(pf.device) << 3) | u32::from(pf.function);
        let vf = rid + sr.offset + index * sr.stride;
        if vf > 0xffff {
            return None;
        }
        Some(PciAddress::new(
            pf.domain,
            (vf >> 8) as u8,
            ((vf >> 3) & 0x1f) as u8,
            (vf & 7) as u8,
        ))
    }

    /// Whether `drv` matches device `a` (`pci_bus_match`): the override decides alone when set.
    fn driver_matches(&self, drv: &str, a: PciAddress) -> bool {
        let (Some(d), Some(dev)) = (self.drivers.get(drv), self.devices.get(&a)) else {
            return false;
        };
        match &dev.driver_override {
            Some(o) => o == drv,
            None => d.matches_ids(&dev.ids, dev.class),
        }
    }

    fn first_match(&self, a: PciAddress) -> Option<String> {
        self.driver_order
            .iter()
            .find(|d| self.driver_matches(d, a))
            .cloned()
    }

    fn registerable(&self, name: &str) -> bool {
        let Some(p) = self.parents.get(name) else {
            return false;
        };
        if !self.is_loaded("mdev") || !self.is_loaded(&p.module) {
            return false;
        }
        match p.pci {
            Some(a) => self
                .devices
                .get(&a)
                .is_some_and(|d| d.driver.is_some() && d.driver == p.driver),
            None => true,
        }
    }

    fn parent_has_busy(&self, name: &str) -> bool {
        self.mdevs.values().any(|m| m.parent == name && m.busy)
    }

    fn parent_devpath(&self, name: &str) -> Option<String> {
        self.parent_path(name).map(|p| devpath_of(&p))
    }

    /// Instances of `type_id` that can still be created on `parent`.
    fn available(&self, parent: &str, type_id: &str) -> Option<u32> {
        let p = self.parents.get(parent)?;
        let t = p.types.iter().find(|t| t.id == type_id)?;
        let mut count = 0u64;
        let mut used = 0u64;
        let mut other_type = false;
        for m in self.mdevs.values().filter(|m| m.parent == parent) {
            if m.type_id == type_id {
                count += 1;
            } else {
                other_type = true;
            }
            used += p
                .types
                .iter()
                .find(|x| x.id == m.type_id)
                .map_or(0, |x| x.cost);
        }
        if p.homogeneous && other_type {
            return Some(0);
        }
        let mut avail = u64::MAX;
        if let Some(max) = t.max_instances {
            avail = u64::from(max).saturating_sub(count);
        }
        if let Some(pool) = p.pool {
            avail = avail.min(pool.saturating_sub(used) / t.cost);
        }
        Some(u32::try_from(avail).unwrap_or(u32::MAX))
    }

    /// Type ids creatable on a VF now: none while it has a vGPU; otherwise the types that fit
    /// the framebuffer left and their instance limit (and, when homogeneous, match the type
    /// already in use on the GPU).
    fn creatable(&self, vf: PciAddress) -> Vec<&NvidiaTypeSpec> {
        let Some(d) = self.devices.get(&vf) else {
            return Vec::new();
        };
        let Some((pf, _)) = d.physfn else {
            return Vec::new();
        };
        let Some(v) = self.devices.get(&pf).and_then(|p| p.vgpu.as_ref()) else {
            return Vec::new();
        };
        if d.vgpu_current.is_some() {
            return Vec::new();
        }
        let current: Vec<u32> = self
            .devices
            .values()
            .filter(|s| s.physfn.is_some_and(|(p, _)| p == pf))
            .filter_map(|s| s.vgpu_current)
            .collect();
        let used: u64 = current
            .iter()
            .filter_map(|c| v.types.iter().find(|t| t.id == *c))
            .map(|t| t.framebuffer_mb)
            .sum();
        v.types
            .iter()
            .filter(|t| {
                let count = current.iter().filter(|c| **c == t.id).count() as u64;
                count < u64::from(t.max_instances)
                    && used + t.framebuffer_mb <= v.framebuffer_mb
                    && (!v.homogeneous || current.iter().all(|c| *c == t.id))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn id_matches_and_aliases() {
        let m = IdMatch::parse("10de:* class=0300").unwrap();
        let ids = PciIds {
            vendor: 0x10de,
            device: 0x1db4,
            subsystem_vendor: 0x10de,
            subsystem_device: 0x1214,
        };
        assert!(m.matches(&ids, 0x030000));
        assert!(!m.matches(&ids, 0x030200));
        assert_eq!(m.alias(), "pci:v000010DEd*sv*sd*bc03sc00i*");
        let exact = IdMatch::parse("1234:1111").unwrap();
        assert_eq!(exact.alias(), "pci:v00001234d00001111sv*sd*bc*sc*i*");
        let full = IdMatch::parse("*:* class=040300").unwrap();
        assert_eq!(full.alias(), "pci:v*d*sv*sd*bc04sc03i00*");
        assert!(IdMatch::parse("10de").is_none());
        assert!(IdMatch::parse("10de:1db4 class=3").is_none());
        assert!(IdMatch::parse("10de:1db4 bogus").is_none());
    }
}
