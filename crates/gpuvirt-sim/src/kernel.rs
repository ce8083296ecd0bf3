//! The simulated kernel: a host model with the kernel's sysfs write semantics and uevents.
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

mod render;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gpuvirt_core::{PciAddress, PciIds};
use uuid::Uuid;

use crate::expected::{ExpectedFunction, ExpectedInventory, ExpectedType};
use crate::fixture::{
    DriverSpec, Fixture, FixtureError, GroupSpec, IommuVendor, MdevTypeSpec, MdevctlSpec,
    NvidiaTypeSpec, PciSpec,
};
use crate::tree::Tree;
use crate::uevent::Uevent;

/// An errno value as a failing `write()` (or `modprobe`) would report it.
pub type Errno = i32;

/// Major number of `/dev/vfio/<group>` nodes (dynamic on a real host; 245 in the reference VM).
const VFIO_MAJOR: u32 = 245;

/// The built-in catalogue of drivers and module dependencies.
const CATALOGUE: &str = include_str!("../data/drivers.toml");

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
}

/// `/proc/sys/kernel/random/boot_id` of a freshly booted simulated host. A real kernel makes
/// a random one per boot; a mount writes `proc` once as plain files, so a test stands for a
/// reboot by rewriting that file under the root.
pub const DEFAULT_BOOT_ID: &str = "6d1f8a4e-2b3c-4d5e-8f90-a1b2c3d4e5f6";

fn parse_kver(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl Fixture {
    /// What a correct scan of this host at boot must report (see
    /// [`Kernel::expected_inventory`]). Defined on the kernel side so fixtures do not depend on
    /// the kernel.
    pub fn expected_inventory(&self) -> Result<ExpectedInventory, FixtureError> {
        Ok(Kernel::from_fixture(self)?.expected_inventory())
    }
}

fn invalid(msg: impl Into<String>) -> FixtureError {
    FixtureError::invalid(msg)
}

impl Kernel {
    /// Reads a fixture file and boots it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FixtureError> {
        let name = path.as_ref().display().to_string();
        let fixture = Fixture::load(path)?;
        Self::from_fixture(&fixture).map_err(|e| e.in_file(&name))
    }

    /// Boots a host from its description: the state it describes, with no uevents queued.
    pub fn from_fixture(f: &Fixture) -> Result<Self, FixtureError> {
        let catalogue = Fixture::parse(CATALOGUE, "data/drivers.toml")?;
        let release = f.kernel.release.clone();
        let mut k = Kernel {
            kver: parse_kver(&release),
            cmdline: f.kernel.cmdline.clone().unwrap_or_else(|| {
                format!("BOOT_IMAGE=/boot/vmlinuz-{release} root=/dev/sda1 ro quiet")
            }),
            release,
            iommu: f.kernel.iommu,
            drivers: BTreeMap::new(),
            alias_order: Vec::new(),
            driver_order: Vec::new(),
            module_deps: BTreeMap::new(),
            loaded: Vec::new(),
            devices: BTreeMap::new(),
            unplugged: BTreeMap::new(),
            parents: BTreeMap::new(),
            registered: BTreeSet::new(),
            mdevs: BTreeMap::new(),
            group_refs: BTreeMap::new(),
            group_hint: 0,
            vfio_groups: BTreeMap::new(),
            vfio_devs: BTreeMap::new(),
            mdevctl: f.mdevctl.clone(),
            tree: Tree::new(),
            events: Vec::new(),
            seqnum: 1000,
            next_irq: 24,
            unloading: None,
        };
        for spec in catalogue.drivers.iter().chain(&f.drivers) {
            k.add_driver(spec)?;
        }
        for m in catalogue.modules.iter().chain(&f.modules) {
            k.module_deps.insert(m.name.clone(), m.depends.clone());
        }
        k.build_devices(f)?;
        k.build_parents(f)?;
        k.boot_modules(f)?;
        k.boot_bindings(f)?;
        k.registered = k
            .parents
            .keys()
            .filter(|n| k.registerable(n))
            .cloned()
            .collect();
        k.build_mdevs(f)?;
        k.render_all();
        Ok(k)
    }

    fn add_driver(&mut self, spec: &DriverSpec) -> Result<(), FixtureError> {
        let ids = spec
            .ids
            .iter()
            .map(|s| {
                IdMatch::parse(s)
                    .ok_or_else(|| invalid(format!("driver {}: bad id entry {s:?}", spec.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.drivers.contains_key(&spec.name) {
            self.alias_order.push(spec.name.clone());
        }
        self.drivers.insert(
            spec.name.clone(),
            Driver {
                spec: spec.clone(),
                ids,
                dynamic: Vec::new(),
            },
        );
        Ok(())
    }

    fn build_devices(&mut self, f: &Fixture) -> Result<(), FixtureError> {
        let mut specs: BTreeMap<PciAddress, &PciSpec> = BTreeMap::new();
        for s in &f.devices {
            if specs.insert(s.address, s).is_some() {
                return Err(invalid(format!("{} is listed twice", s.address)));
            }
        }
        // Bus number → the bridge that opens it.
        let mut bridges: BTreeMap<(u16, u8), PciAddress> = BTreeMap::new();
        for s in specs.values() {
            if let Some(bus) = s.secondary_bus {
                if bridges.insert((s.address.domain, bus), s.address).is_some() {
                    return Err(invalid(format!("two bridges open bus {bus:02x}")));
                }
            }
        }
        for s in specs.values() {
            let upstream = match s.parent {
                Some(p) if specs.contains_key(&p) => Some(p),
                Some(p) => return Err(invalid(format!("{}: parent {p} is not listed", s.address))),
                None => bridges
                    .get(&(s.address.domain, s.address.bus))
                    .copied()
                    .filter(|b| *b != s.address),
            };
            let dev = self.device_from_spec(s, upstream)?;
            self.devices.insert(s.address, dev);
        }
        // Paths need the upstream chain; resolve it with a depth bound against cycles.
        let addrs: Vec<PciAddress> = self.devices.keys().copied().collect();
        for a in &addrs {
            let path = self.path_for(*a, 0)?;
            if let Some(d) = self.devices.get_mut(a) {
                d.path = path;
            }
        }
        // IOMMU groups: explicit numbers first, then automatic ones in address order.
        if self.iommu == IommuVendor::None {
            if let Some(s) = f
                .devices
                .iter()
                .find(|s| matches!(s.iommu_group, GroupSpec::Number(_)))
            {
                return Err(invalid(format!(
                    "{} has an IOMMU group but the host has iommu = \"none\"",
                    s.address
                )));
            }
        } else {
            for s in specs.values() {
                if let GroupSpec::Number(g) = s.iommu_group {
                    self.set_group(s.address, g);
                }
            }
            let mut by_slot: BTreeMap<(u16, u8, u8), u32> = BTreeMap::new();
            for s in specs.values() {
                if s.iommu_group != GroupSpec::Auto {
                    continue;
                }
                let shares = !(s.isolated || s.class >> 8 == 0x0604);
                let slot = (s.address.domain, s.address.bus, s.address.device);
                let g = match by_slot.get(&slot) {
                    Some(g) if shares => *g,
                    _ => self.alloc_group(),
                };
                if shares {
                    by_slot.insert(slot, g);
                }
                self.set_group(s.address, g);
            }
        }
        // Virtual functions enabled at boot.
        for s in specs.values() {
            if let Some(sr) = &s.sriov {
                if sr.num_vfs > sr.total_vfs {
                    return Err(invalid(format!(
                        "{}: num_vfs {} exceeds total_vfs {}",
                        s.address, sr.num_vfs, sr.total_vfs
                    )));
                }
                for i in 0..sr.num_vfs {
                    let vf = self.make_vf(s.address, i)?;
                    self.devices.insert(vf.addr, vf);
                }
                if let Some(pf) = self.devices.get_mut(&s.address) {
                    if let Some(sriov) = pf.sriov.as_mut() {
                        sriov.num = sr.num_vfs;
                    }
                }
            }
            if let Some(v) = &s.nvidia_vgpu {
                for c in &v.created {
                    let vf = self.vf_address(s.address, c.vf).ok_or_else(|| {
                        invalid(format!("{}: no VF {} for a vGPU", s.address, c.vf))
                    })?;
                    if !v.types.iter().any(|t| t.id == c.type_id) {
                        return Err(invalid(format!(
                            "{}: vGPU type {} is not in its type list",
                            s.address, c.type_id
                        )));
                    }
                    match self.devices.get_mut(&vf) {
                        Some(d) => d.vgpu_current = Some(c.type_id),
                        None => {
                            return Err(invalid(format!(
                                "{}: VF {} is not enabled (num_vfs)",
                                s.address, c.vf
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn device_from_spec(
        &mut self,
        s: &PciSpec,
        upstream: Option<PciAddress>,
    ) -> Result<Device, FixtureError> {
        let ids = s.ids()?;
        let bridge = s.class >> 8 == 0x0604;
        let sriov = match &s.sriov {
            Some(sr) => {
                let vf_ids = match &sr.vf_id {
                    Some(id) => crate::fixture::parse_id_pair(id)
                        .ok_or_else(|| invalid(format!("{}: bad vf_id {id:?}", s.address)))?,
                    None => (ids.vendor, ids.device),
                };
                Some(Sriov {
                    total: sr.total_vfs,
                    num: 0,
                    vf_ids,
                    offset: sr.offset,
                    stride: sr.stride.max(1),
                })
            }
            None => None,
        };
        let irq = s.irq.unwrap_or_else(|| {
            self.next_irq += 1;
            self.next_irq
        });
        Ok(Device {
            addr: s.address,
            path: String::new(),
            upstream,
            class: s.class,
            ids,
            revision: s.revision,
            driver: None,
            driver_override: s.driver_override.clone(),
            numa: s.numa_node,
            boot_vga: s.boot_vga,
            reset_method: s.reset_method.clone().unwrap_or_else(|| {
                if bridge {
                    Vec::new()
                } else {
                    vec!["flr".into(), "bus".into()]
                }
            }),
            irq,
            group: None,
            secondary_bus: s.secondary_bus,
            sriov,
            physfn: None,
            vgpu: s.nvidia_vgpu.as_ref().map(|v| NvidiaVgpu {
                framebuffer_mb: v.framebuffer_mb,
                homogeneous: v.homogeneous,
                types: v.types.clone(),
            }),
            vgpu_current: None,
        })
    }

    fn path_for(&self, a: PciAddress, depth: u32) -> Result<String, FixtureError> {
        if depth > 32 {
            return Err(invalid(format!("{a}: bridge chain loops")));
        }
        let d = self
            .devices
            .get(&a)
            .ok_or_else(|| invalid(format!("{a} is not listed")))?;
        match d.upstream {
            Some(up) => Ok(format!("{}/{a}", self.path_for(up, depth + 1)?)),
            None => Ok(format!("sys/devices/pci{:04x}:{:02x}/{a}", a.domain, a.bus)),
        }
    }

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

    /// A VF device (not inserted), with its own IOMMU group when the host has an IOMMU.
    fn make_vf(&mut self, pf_addr: PciAddress, index: u32) -> Result<Device, FixtureError> {
        let addr = self
            .vf_address(pf_addr, index)
            .ok_or_else(|| invalid(format!("{pf_addr}: VF {index} has no address")))?;
        if self.devices.contains_key(&addr) {
            return Err(invalid(format!(
                "{pf_addr}: VF {index} would take {addr}, which is already a device"
            )));
        }
        let pf = self
            .devices
            .get(&pf_addr)
            .ok_or_else(|| invalid(format!("{pf_addr} is not a device")))?;
        let sr = pf
            .sriov
            .as_ref()
            .ok_or_else(|| invalid(format!("{pf_addr} has no SR-IOV")))?;
        let parent_dir = pf
            .path
            .rsplit_once('/')
            .map(|(d, _)| d.to_owned())
            .unwrap_or_default();
        let mut vf = Device {
            addr,
            path: format!("{parent_dir}/{addr}"),
            upstream: pf.upstream,
            class: pf.class,
            ids: PciIds {
                vendor: sr.vf_ids.0,
                device: sr.vf_ids.1,
                subsystem_vendor: pf.ids.subsystem_vendor,
                subsystem_device: pf.ids.subsystem_device,
            },
            revision: pf.revision,
            driver: None,
            driver_override: None,
            numa: pf.numa,
            boot_vga: false,
            reset_method: vec!["flr".into()],
            irq: 0,
            group: None,
            secondary_bus: None,
            sriov: None,
            physfn: Some((pf_addr, index)),
            vgpu: None,
            vgpu_current: None,
        };
        if self.iommu != IommuVendor::None {
            let g = self.alloc_group();
            vf.group = Some(g);
            *self.group_refs.entry(g).or_insert(0) += 1;
        }
        Ok(vf)
    }

    fn set_group(&mut self, a: PciAddress, g: u32) {
        if let Some(d) = self.devices.get_mut(&a) {
            d.group = Some(g);
            *self.group_refs.entry(g).or_insert(0) += 1;
        }
    }

    /// The lowest free group id (the kernel allocates group ids from an IDA).
    fn alloc_group(&mut self) -> u32 {
        let mut g = self.group_hint;
        while self.group_refs.contains_key(&g) {
            g += 1;
        }
        self.group_hint = g + 1;
        // Reserve it so the next allocation does not return the same id before it is used.
        self.group_refs.insert(g, 0);
        g
    }

    fn release_group(&mut self, g: u32) -> bool {
        let gone = match self.group_refs.get_mut(&g) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if gone {
            self.group_refs.remove(&g);
            self.group_hint = self.group_hint.min(g);
        }
        gone
    }

    fn build_parents(&mut self, f: &Fixture) -> Result<(), FixtureError> {
        for p in &f.mdev_parents {
            let name = p.name().ok_or_else(|| {
                invalid("an mdev_parent needs exactly one of `device` and `virtual`")
            })?;
            if let Some(a) = p.device {
                if !self.devices.contains_key(&a) {
                    return Err(invalid(format!("mdev parent {a} is not a listed device")));
                }
            }
            let driver = match (&p.device, &p.driver) {
                (Some(a), None) => f
                    .devices
                    .iter()
                    .find(|d| d.address == *a)
                    .and_then(|d| d.driver.clone()),
                (_, d) => d.clone(),
            };
            let module = match (&p.module, &p.virtual_name, &driver) {
                (Some(m), _, _) => m.clone(),
                (None, Some(v), _) => v.clone(),
                (None, None, Some(d)) => self
                    .drivers
                    .get(d)
                    .and_then(|d| d.spec.module_name())
                    .unwrap_or_else(|| d.replace('-', "_")),
                (None, None, None) => {
                    return Err(invalid(format!(
                        "mdev parent {name} needs a driver or a module"
                    )))
                }
            };
            let mdev_driver = p.mdev_driver.clone().unwrap_or_else(|| {
                if self.kver < (5, 16) {
                    "vfio_mdev".to_owned()
                } else {
                    module.clone()
                }
            });
            let mut seen = BTreeSet::new();
            for t in &p.types {
                if !seen.insert(&t.id) {
                    return Err(invalid(format!("{name}: type {} listed twice", t.id)));
                }
                if t.max_instances.is_none() && p.pool.is_none() {
                    return Err(invalid(format!(
                        "{name}: type {} needs max_instances (or the parent a pool)",
                        t.id
                    )));
                }
                if t.cost == 0 {
                    return Err(invalid(format!("{name}: type {} has cost 0", t.id)));
                }
            }
            self.module_deps.entry(module.clone()).or_default();
            let deps = self.module_deps.entry(module.clone()).or_default();
            if !deps.iter().any(|d| d == "mdev") {
                deps.push("mdev".to_owned());
            }
            let parent = Parent {
                name: name.clone(),
                pci: p.device,
                driver,
                module,
                mdev_driver,
                pool: p.pool,
                homogeneous: p.homogeneous,
                core_counted: p.core_counted,
                types: p.types.clone(),
            };
            if self.parents.insert(name.clone(), parent).is_some() {
                return Err(invalid(format!("mdev parent {name} listed twice")));
            }
        }
        Ok(())
    }

    /// Loads the fixture's modules, the modules of bound drivers and of mdev parents with
    /// active mdevs, and their dependencies (no uevents: this is boot).
    fn boot_modules(&mut self, f: &Fixture) -> Result<(), FixtureError> {
        let mut wanted: Vec<String> = Vec::new();
        for d in &f.devices {
            for drv in d.driver.iter().chain(
                d.sriov
                    .iter()
                    .flat_map(|s| s.vf_drivers.iter().map(|v| &v.driver)),
            ) {
                if drv == "none" {
                    continue;
                }
                let spec = &self
                    .drivers
                    .get(drv)
                    .ok_or_else(|| {
                        invalid(format!(
                            "{} is bound to driver {drv}, which no [[driver]] defines",
                            d.address
                        ))
                    })?
                    .spec;
                wanted.extend(spec.module_name());
            }
        }
        wanted.extend(f.kernel.modules.iter().cloned());
        for m in &f.mdevs {
            if let Some(p) = self.parents.get(&m.parent) {
                wanted.push(p.module.clone());
            }
        }
        for m in wanted {
            self.load_quietly(&m, 0)?;
        }
        let builtin: Vec<String> = self
            .alias_order
            .iter()
            .filter(|d| self.drivers[*d].spec.builtin)
            .cloned()
            .collect();
        let mut order = builtin;
        for m in &self.loaded {
            for d in &self.alias_order {
                if self.drivers[d].spec.module_name().as_deref() == Some(m.as_str()) {
                    order.push(d.clone());
                }
            }
        }
        self.driver_order = order;
        Ok(())
    }

    fn load_quietly(&mut self, m: &str, depth: u32) -> Result<(), FixtureError> {
        if depth > 16 {
            return Err(invalid(format!("module {m}: dependency loop")));
        }
        if self.loaded.iter().any(|l| l == m) {
            return Ok(());
        }
        for dep in self.module_deps.get(m).cloned().unwrap_or_default() {
            self.load_quietly(&dep, depth + 1)?;
        }
        self.loaded.push(m.to_owned());
        Ok(())
    }

    fn boot_bindings(&mut self, f: &Fixture) -> Result<(), FixtureError> {
        for s in &f.devices {
            if let Some(drv) = &s.driver {
                self.boot_bind(s.address, drv)?;
            }
            if let Some(sr) = &s.sriov {
                for i in 0..sr.num_vfs {
                    let Some(vf) = self.vf_address(s.address, i) else {
                        continue;
                    };
                    match sr.vf_drivers.iter().find(|v| v.index == i) {
                        Some(v) if v.driver == "none" => {}
                        Some(v) => self.boot_bind(vf, &v.driver)?,
                        None => {
                            if let Some(drv) = self.first_match(vf) {
                                self.boot_bind(vf, &drv)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn boot_bind(&mut self, a: PciAddress, drv: &str) -> Result<(), FixtureError> {
        let d = self
            .drivers
            .get(drv)
            .ok_or_else(|| invalid(format!("{a}: unknown driver {drv}")))?;
        let vfio = d.is_vfio();
        let dev = self
            .devices
            .get_mut(&a)
            .ok_or_else(|| invalid(format!("{a} is not a device")))?;
        if vfio && dev.group.is_none() {
            return Err(invalid(format!(
                "{a} is bound to {drv}, which needs an IOMMU group"
            )));
        }
        dev.driver = Some(drv.to_owned());
        if vfio {
            let g = dev.group;
            self.vfio_attach_quietly(&a.to_string(), g);
        }
        Ok(())
    }

    fn build_mdevs(&mut self, f: &Fixture) -> Result<(), FixtureError> {
        for m in &f.mdevs {
            if self.mdevs.contains_key(&m.uuid) {
                return Err(invalid(format!("mdev {} listed twice", m.uuid)));
            }
            if !self.registered.contains(&m.parent) {
                return Err(invalid(format!(
                    "mdev {}: parent {} is not a registered mdev parent (device bound to its \
                     driver and the mdev module loaded?)",
                    m.uuid, m.parent
                )));
            }
            let avail = self.available(&m.parent, &m.type_id).ok_or_else(|| {
                invalid(format!(
                    "mdev {}: parent {} has no type {}",
                    m.uuid, m.parent, m.type_id
                ))
            })?;
            if avail == 0 {
                return Err(invalid(format!(
                    "mdev {}: no capacity left for {} on {}",
                    m.uuid, m.type_id, m.parent
                )));
            }
            let g = self.alloc_group();
            *self.group_refs.entry(g).or_insert(0) += 1;
            self.mdevs.insert(
                m.uuid,
                Mdev {
                    parent: m.parent.clone(),
                    type_id: m.type_id.clone(),
                    group: g,
                    busy: m.busy,
                },
            );
            self.vfio_attach_quietly(&m.uuid.to_string(), Some(g));
        }
        Ok(())
    }

    fn vfio_attach_quietly(&mut self, key: &str, group: Option<u32>) {
        if let Some(g) = group {
            if !self.vfio_groups.contains_key(&g) {
                // Boot never frees a node, so the numbers are dense.
                let minor = self.vfio_groups.len() as u32;
                self.vfio_groups.insert(g, minor);
            }
        }
        if self.kver >= (6, 0) {
            let idx = self.vfio_devs.len() as u32;
            self.vfio_devs.insert(key.to_owned(), idx);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------

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

    /// What a scan of the current state must report (from the model, not the tree).
    pub fn expected_inventory(&self) -> ExpectedInventory {
        let mut out = ExpectedInventory::default();
        for (a, d) in &self.devices {
            out.functions.insert(
                *a,
                ExpectedFunction {
                    class: d.class,
                    ids: d.ids,
                    driver: d.driver.clone(),
                    iommu_group: d.group,
                },
            );
            if let Some(g) = d.group {
                out.groups.entry(g).or_default().push(a.to_string());
            }
        }
        for (u, m) in &self.mdevs {
            out.groups.entry(m.group).or_default().push(u.to_string());
            out.mdevs.insert(*u, (m.parent.clone(), m.type_id.clone()));
        }
        for members in out.groups.values_mut() {
            members.sort();
        }
        for name in &self.registered {
            let Some(p) = self.parents.get(name) else {
                continue;
            };
            let types = p
                .types
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        ExpectedType {
                            name: t.name.clone().unwrap_or_else(|| t.id.clone()),
                            description: t.description.clone(),
                            device_api: t.device_api.clone(),
                            available_instances: self.available(name, &t.id).unwrap_or(0),
                        },
                    )
                })
                .collect();
            out.parents.insert(name.clone(), types);
        }
        out
    }

    // ---------------------------------------------------------------------------------------
    // Semantics shared by writes and hooks
    // ---------------------------------------------------------------------------------------

    fn emit(&mut self, mut ev: Uevent) {
        self.seqnum += 1;
        ev.seqnum = self.seqnum;
        self.events.push(ev);
    }

    /// A pci uevent: `extra` keys first (like `MDEV_STATE`), then `DRIVER` while bound, then
    /// the `PCI_*` keys, as `kobject_uevent_env` orders them.
    fn pci_event(&self, action: &str, a: PciAddress, extra: &[(&str, &str)]) -> Option<Uevent> {
        let d = self.devices.get(&a)?;
        let mut ev = Uevent::new(action, &d.devpath(), "pci");
        for (k, v) in extra {
            ev = ev.with(k, *v);
        }
        if let Some(drv) = &d.driver {
            ev = ev.with("DRIVER", drv.clone());
        }
        ev.env.extend(d.pci_env());
        Some(ev)
    }

    fn emit_pci(&mut self, action: &str, a: PciAddress, extra: &[(&str, &str)]) {
        if let Some(ev) = self.pci_event(action, a, extra) {
            self.emit(ev);
        }
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

    /// Probes `drv` on `a` and binds it: the vfio group and vfio-dev appear first, an mdev
    /// parent registers during probe, and the `bind` uevent comes last.
    fn bind_device(&mut self, a: PciAddress, drv: &str) -> Result<(), Errno> {
        let vfio = self.drivers.get(drv).is_some_and(Driver::is_vfio);
        let dev = self.devices.get_mut(&a).ok_or(libc::ENODEV)?;
        if dev.driver.is_some() {
            return Err(libc::EBUSY);
        }
        if vfio && dev.group.is_none() {
            // vfio_pci_core_register_device: no IOMMU group, probe fails.
            return Err(libc::EINVAL);
        }
        dev.driver = Some(drv.to_owned());
        let group = dev.group;
        let devpath = dev.devpath();
        if vfio {
            self.vfio_attach(&a.to_string(), group, &devpath);
        }
        self.render_device(a);
        let parents: Vec<String> = self
            .parents
            .values()
            .filter(|p| p.pci == Some(a))
            .map(|p| p.name.clone())
            .collect();
        for p in parents {
            if !self.registered.contains(&p) && self.registerable(&p) {
                self.register_parent(&p);
            }
        }
        self.emit_pci("bind", a, &[]);
        Ok(())
    }

    /// Unbinds `a` from its driver: mdev parents on it unregister (removing idle mdevs; a busy
    /// one makes this fail with EBUSY), VFs are disabled, the vfio nodes go, then `unbind`.
    fn unbind_device(&mut self, a: PciAddress) -> Result<(), Errno> {
        let dev = self.devices.get(&a).ok_or(libc::ENODEV)?;
        let Some(old) = dev.driver.clone() else {
            return Ok(());
        };
        let parents: Vec<String> = self
            .parents
            .values()
            .filter(|p| p.pci == Some(a) && self.registered.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        if parents.iter().any(|p| self.parent_has_busy(p)) {
            return Err(libc::EBUSY);
        }
        // A PF driver's remove() disables SR-IOV first.
        if dev.sriov.as_ref().is_some_and(|s| s.num > 0) {
            self.disable_vfs(a)?;
        }
        for p in parents {
            self.unregister_parent(&p);
        }
        let devpath = self
            .devices
            .get(&a)
            .map(Device::devpath)
            .unwrap_or_default();
        if let Some(dev) = self.devices.get_mut(&a) {
            dev.driver = None;
            dev.vgpu_current = None;
        }
        if is_vfio_driver(&old) {
            let group = self.devices.get(&a).and_then(|d| d.group);
            self.vfio_detach(&a.to_string(), group, &devpath);
        }
        self.tree.remove(&format!("sys/bus/pci/drivers/{old}/{a}"));
        self.render_device(a);
        if let Some((pf, _)) = self.devices.get(&a).and_then(|d| d.physfn) {
            self.render_vgpu_siblings(pf);
        }
        self.emit_pci("unbind", a, &[]);
        Ok(())
    }

    /// `device_attach`: binds the first matching registered driver. `Ok(false)` when none
    /// matches or every match failed to probe (the device stays driverless, no error).
    fn probe(&mut self, a: PciAddress) -> Result<bool, Errno> {
        let dev = self.devices.get(&a).ok_or(libc::ENODEV)?;
        if dev.driver.is_some() {
            return Ok(false);
        }
        let candidates: Vec<String> = self
            .driver_order
            .iter()
            .filter(|d| self.driver_matches(d, a))
            .cloned()
            .collect();
        for drv in candidates {
            if self.bind_device(a, &drv).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `driver_attach`: tries `drv` on every driverless device, in address order.
    fn attach_driver(&mut self, drv: &str) {
        let unbound: Vec<PciAddress> = self
            .devices
            .values()
            .filter(|d| d.driver.is_none())
            .map(|d| d.addr)
            .collect();
        for a in unbound {
            if self.driver_matches(drv, a) {
                let _ = self.bind_device(a, drv);
            }
        }
    }

    fn vfio_attach(&mut self, key: &str, group: Option<u32>, devpath: &str) {
        if let Some(g) = group {
            if !self.vfio_groups.contains_key(&g) {
                let minor = lowest_free(self.vfio_groups.values().copied());
                self.vfio_groups.insert(g, minor);
                self.render_vfio_group(g);
                self.emit(
                    Uevent::new("add", &format!("/devices/virtual/vfio/{g}"), "vfio")
                        .with("MAJOR", VFIO_MAJOR.to_string())
                        .with("MINOR", minor.to_string())
                        .with("DEVNAME", format!("vfio/{g}")),
                );
            }
        }
        if self.kver >= (6, 0) {
            let idx = lowest_free(self.vfio_devs.values().copied());
            self.vfio_devs.insert(key.to_owned(), idx);
            self.render_vfio_dev(key);
            self.emit(Uevent::new(
                "add",
                &format!("{devpath}/vfio-dev/vfio{idx}"),
                "vfio-dev",
            ));
        }
    }

    fn vfio_detach(&mut self, key: &str, group: Option<u32>, devpath: &str) {
        if let Some(idx) = self.vfio_devs.remove(key) {
            self.unrender_vfio_dev(key, idx);
            self.emit(Uevent::new(
                "remove",
                &format!("{devpath}/vfio-dev/vfio{idx}"),
                "vfio-dev",
            ));
        }
        let Some(g) = group else {
            return;
        };
        let still_used = self
            .devices
            .values()
            .any(|d| d.group == Some(g) && d.driver.as_deref().is_some_and(is_vfio_driver))
            || self.mdevs.values().any(|m| m.group == g);
        if !still_used {
            if let Some(minor) = self.vfio_groups.remove(&g) {
                self.unrender_vfio_group(g);
                self.emit(
                    Uevent::new("remove", &format!("/devices/virtual/vfio/{g}"), "vfio")
                        .with("MAJOR", VFIO_MAJOR.to_string())
                        .with("MINOR", minor.to_string())
                        .with("DEVNAME", format!("vfio/{g}")),
                );
            }
        }
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

    fn register_parent(&mut self, name: &str) {
        let Some(p) = self.parents.get(name).cloned() else {
            return;
        };
        let Some(devpath) = self.parent_devpath(name) else {
            return;
        };
        if !self
            .tree
            .exists(&format!("sys/bus/mdev/drivers/{}", p.mdev_driver))
        {
            self.emit(Uevent::new(
                "add",
                &format!("/bus/mdev/drivers/{}", p.mdev_driver),
                "drivers",
            ));
        }
        if p.pci.is_none() {
            self.emit(Uevent::new("add", &format!("/class/{name}"), "class"));
            self.emit(Uevent::new("add", &devpath, name));
        }
        self.registered.insert(name.to_owned());
        self.render_parent(name);
        match p.pci {
            Some(a) => self.emit_pci("change", a, &[("MDEV_STATE", "registered")]),
            None => {
                self.emit(Uevent::new("change", &devpath, name).with("MDEV_STATE", "registered"))
            }
        }
    }

    fn unregister_parent(&mut self, name: &str) {
        let Some(p) = self.parents.get(name).cloned() else {
            return;
        };
        let children: Vec<Uuid> = self
            .mdevs
            .iter()
            .filter(|(_, m)| m.parent == name)
            .map(|(u, _)| *u)
            .collect();
        for u in children {
            self.remove_mdev(u);
        }
        let devpath = self.parent_devpath(name).unwrap_or_default();
        match p.pci {
            Some(a) => self.emit_pci("change", a, &[("MDEV_STATE", "unregistered")]),
            None => {
                self.emit(Uevent::new("change", &devpath, name).with("MDEV_STATE", "unregistered"))
            }
        }
        self.registered.remove(name);
        self.unrender_parent(name);
        if p.pci.is_none() {
            self.emit(Uevent::new("remove", &devpath, name));
            self.emit(Uevent::new("remove", &format!("/class/{name}"), "class"));
        }
        let driver_used = self.registered.iter().any(|r| {
            self.parents
                .get(r)
                .is_some_and(|q| q.mdev_driver == p.mdev_driver)
        });
        // The mdev bus driver belongs to a module (vfio_mdev, or the parent's own module on
        // 5.16+): it stays while that module stays loaded.
        let module_stays =
            self.is_loaded(&p.mdev_driver) && self.unloading.as_deref() != Some(&p.mdev_driver);
        if !driver_used && !module_stays {
            self.tree
                .remove(&format!("sys/bus/mdev/drivers/{}", p.mdev_driver));
            self.emit(Uevent::new(
                "remove",
                &format!("/bus/mdev/drivers/{}", p.mdev_driver),
                "drivers",
            ));
        }
    }

    /// Registers and unregisters parents whose preconditions changed (after module changes).
    fn sync_parents(&mut self) {
        let names: Vec<String> = self.parents.keys().cloned().collect();
        for n in names {
            let want = self.registerable(&n);
            let have = self.registered.contains(&n);
            if want && !have {
                self.register_parent(&n);
            } else if !want && have {
                self.unregister_parent(&n);
            }
        }
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

    fn create_mdev(&mut self, parent: &str, type_id: &str, uuid: Uuid) -> Result<(), Errno> {
        if self.mdevs.contains_key(&uuid) {
            return Err(libc::EEXIST);
        }
        match self.available(parent, type_id) {
            None => return Err(libc::ENODEV),
            // The mdev core refuses before the driver's probe when it does the counting.
            Some(0) if self.parents.get(parent).is_some_and(|p| p.core_counted) => {
                return Err(libc::EUSERS)
            }
            Some(0) => return Err(libc::ENOSPC),
            Some(_) => {}
        }
        let mdev_driver = self
            .parents
            .get(parent)
            .map(|p| p.mdev_driver.clone())
            .unwrap_or_default();
        let g = self.alloc_group();
        *self.group_refs.entry(g).or_insert(0) += 1;
        self.mdevs.insert(
            uuid,
            Mdev {
                parent: parent.to_owned(),
                type_id: type_id.to_owned(),
                group: g,
                busy: false,
            },
        );
        let devpath = format!("{}/{uuid}", self.parent_devpath(parent).unwrap_or_default());
        self.render_mdev(uuid);
        self.emit(Uevent::new("add", &devpath, "mdev"));
        self.vfio_attach(&uuid.to_string(), Some(g), &devpath);
        self.render_mdev(uuid);
        self.emit(Uevent::new("bind", &devpath, "mdev").with("DRIVER", mdev_driver));
        self.render_available(parent);
        Ok(())
    }

    /// Removes an mdev with the kernel's uevents (vfio-dev, vfio group, unbind, remove).
    fn remove_mdev(&mut self, uuid: Uuid) {
        let Some(m) = self.mdevs.get(&uuid).cloned() else {
            return;
        };
        let devpath = format!(
            "{}/{uuid}",
            self.parent_devpath(&m.parent).unwrap_or_default()
        );
        self.unrender_mdev(uuid);
        self.mdevs.remove(&uuid);
        self.vfio_detach(&uuid.to_string(), Some(m.group), &devpath);
        if self.release_group(m.group) {
            self.tree
                .remove(&format!("sys/kernel/iommu_groups/{}", m.group));
        }
        self.emit(Uevent::new("unbind", &devpath, "mdev"));
        self.emit(Uevent::new("remove", &devpath, "mdev"));
        self.render_available(&m.parent);
    }

    /// Sets `sriov_numvfs` to `n` (the caller checked the kernel's preconditions).
    fn enable_vfs(&mut self, pf: PciAddress, n: u32) -> Result<(), Errno> {
        for i in 0..n {
            let vf = self.make_vf(pf, i).map_err(|_| libc::EINVAL)?;
            let a = vf.addr;
            self.devices.insert(a, vf);
            if let Some(s) = self.devices.get_mut(&pf).and_then(|d| d.sriov.as_mut()) {
                s.num = i + 1;
            }
            self.render_device(a);
            self.render_device(pf);
            self.emit_pci("add", a, &[]);
            let _ = self.probe(a);
        }
        Ok(())
    }

    fn disable_vfs(&mut self, pf: PciAddress) -> Result<(), Errno> {
        let n = self
            .devices
            .get(&pf)
            .and_then(|d| d.sriov.as_ref())
            .map_or(0, |s| s.num);
        let vfs: Vec<PciAddress> = (0..n).filter_map(|i| self.vf_address(pf, i)).collect();
        for vf in &vfs {
            let busy = self
                .parents
                .values()
                .any(|p| p.pci == Some(*vf) && self.parent_has_busy(&p.name));
            if busy {
                return Err(libc::EBUSY);
            }
        }
        for vf in vfs.into_iter().rev() {
            self.remove_device(vf, false)?;
        }
        if let Some(s) = self.devices.get_mut(&pf).and_then(|d| d.sriov.as_mut()) {
            s.num = 0;
        }
        self.render_device(pf);
        Ok(())
    }

    /// Removes a device and everything below it: unbind, `remove` uevent, tree and group.
    /// With `stash`, a later `rescan` brings it back.
    fn remove_device(&mut self, a: PciAddress, stash: bool) -> Result<(), Errno> {
        let children: Vec<PciAddress> = self
            .devices
            .values()
            .filter(|d| d.upstream == Some(a) && d.physfn.is_none())
            .map(|d| d.addr)
            .collect();
        for c in children.into_iter().rev() {
            self.remove_device(c, stash)?;
        }
        self.unbind_device(a)?;
        if self
            .devices
            .get(&a)
            .and_then(|d| d.sriov.as_ref())
            .is_some_and(|s| s.num > 0)
        {
            self.disable_vfs(a)?;
        }
        let parents: Vec<String> = self
            .parents
            .values()
            .filter(|p| p.pci == Some(a) && self.registered.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        for p in parents {
            self.unregister_parent(&p);
        }
        self.emit_pci("remove", a, &[]);
        let Some(mut dev) = self.devices.remove(&a) else {
            return Ok(());
        };
        self.unrender_device(&dev);
        if let Some(g) = dev.group {
            if self.release_group(g) {
                self.tree.remove(&format!("sys/kernel/iommu_groups/{g}"));
            }
        }
        if let Some((pf, idx)) = dev.physfn {
            let p = self.devices.get(&pf).map(|d| d.path.clone());
            if let Some(p) = p {
                self.tree.remove(&format!("{p}/virtfn{idx}"));
            }
        }
        if stash && dev.physfn.is_none() {
            dev.driver = None;
            self.unplugged.insert(a, dev);
        }
        Ok(())
    }

    /// Adds a device to the model and the tree, sends `add` and probes it.
    fn add_device(&mut self, mut dev: Device) {
        let a = dev.addr;
        if self.iommu != IommuVendor::None {
            let g = match dev.group {
                Some(g) => g,
                None => self.alloc_group(),
            };
            dev.group = Some(g);
            *self.group_refs.entry(g).or_insert(0) += 1;
        } else {
            dev.group = None;
        }
        self.devices.insert(a, dev);
        self.render_device(a);
        self.emit_pci("add", a, &[]);
        let _ = self.probe(a);
    }

    fn render_vgpu_siblings(&mut self, pf: PciAddress) {
        let vfs: Vec<PciAddress> = self
            .devices
            .values()
            .filter(|d| d.physfn.is_some_and(|(p, _)| p == pf))
            .map(|d| d.addr)
            .collect();
        for vf in vfs {
            self.render_nvidia(vf);
        }
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

    // ---------------------------------------------------------------------------------------
    // Test hooks: things that are not sysfs writes
    // ---------------------------------------------------------------------------------------

    /// Marks an mdev as opened by a VM (`remove` then fails with EBUSY). Returns whether the
    /// mdev exists.
    pub fn set_mdev_busy(&mut self, uuid: Uuid, busy: bool) -> bool {
        match self.mdevs.get_mut(&uuid) {
            Some(m) => {
                m.busy = busy;
                true
            }
            None => false,
        }
    }

    /// `modprobe <module>`: loads its dependencies first, registers its drivers (which then
    /// probe driverless devices) and mdev parents. Loading a loaded module is a no-op.
    pub fn load_module(&mut self, module: &str) -> Result<(), Errno> {
        // modprobe treats '-' and '_' in module names as the same character.
        self.load_module_depth(&module.replace('-', "_"), 0)
    }

    fn knows_module(&self, m: &str) -> bool {
        self.module_deps.contains_key(m)
            || self
                .module_deps
                .values()
                .any(|deps| deps.iter().any(|d| d == m))
            || m == "mdev"
            || m == "vfio"
            || self
                .drivers
                .values()
                .any(|d| d.spec.module_name().as_deref() == Some(m))
    }

    fn load_module_depth(&mut self, module: &str, depth: u32) -> Result<(), Errno> {
        if depth > 16 || !self.knows_module(module) {
            return Err(libc::ENOENT);
        }
        if self.is_loaded(module) {
            return Ok(());
        }
        for dep in self.module_deps.get(module).cloned().unwrap_or_default() {
            self.load_module_depth(&dep, depth + 1)?;
        }
        self.loaded.push(module.to_owned());
        self.render_modules();
        self.emit(Uevent::new("add", &format!("/module/{module}"), "module"));
        match module {
            "mdev" => {
                self.render_mdev_core();
                self.emit(Uevent::new("add", "/bus/mdev", "bus"));
            }
            "vfio" => {
                self.render_vfio_core();
                self.emit(
                    Uevent::new("add", "/devices/virtual/misc/vfio", "misc")
                        .with("MAJOR", "10")
                        .with("MINOR", "196")
                        .with("DEVNAME", "vfio/vfio"),
                );
            }
            _ => {}
        }
        let drivers: Vec<String> = self
            .alias_order
            .iter()
            .filter(|d| self.drivers[*d].spec.module_name().as_deref() == Some(module))
            .cloned()
            .collect();
        for d in drivers {
            self.driver_order.push(d.clone());
            self.render_driver(&d);
            self.emit(Uevent::new(
                "add",
                &format!("/bus/pci/drivers/{d}"),
                "drivers",
            ));
            self.attach_driver(&d);
        }
        self.sync_parents();
        Ok(())
    }

    /// `modprobe -r <module>` of that one module: EBUSY while other loaded modules depend on
    /// it or one of its mdevs is open; otherwise its mdev parents unregister (removing their
    /// mdevs), its drivers unbind from every device and go away, then the module.
    pub fn unload_module(&mut self, module: &str) -> Result<(), Errno> {
        let normalized = module.replace('-', "_");
        let module = normalized.as_str();
        if !self.is_loaded(module) {
            return Err(libc::ENOENT);
        }
        let holders = self.loaded.iter().any(|m| {
            self.module_deps
                .get(m)
                .is_some_and(|deps| deps.iter().any(|d| d == module))
        });
        if holders {
            return Err(libc::EBUSY);
        }
        let drivers: Vec<String> = self
            .driver_order
            .iter()
            .filter(|d| self.drivers[*d].spec.module_name().as_deref() == Some(module))
            .cloned()
            .collect();
        let bound: Vec<PciAddress> = self
            .devices
            .values()
            .filter(|d| d.driver.as_ref().is_some_and(|x| drivers.contains(x)))
            .map(|d| d.addr)
            .collect();
        let doomed_parent = |p: &Parent| {
            self.registered.contains(&p.name)
                && (p.module == module
                    || module == "mdev"
                    || p.pci.is_some_and(|a| bound.contains(&a)))
        };
        if self
            .parents
            .values()
            .any(|p| doomed_parent(p) && self.parent_has_busy(&p.name))
        {
            return Err(libc::EBUSY);
        }
        let own_parents: Vec<String> = self
            .parents
            .values()
            .filter(|p| self.registered.contains(&p.name) && p.module == module)
            .map(|p| p.name.clone())
            .collect();
        self.unloading = Some(module.to_owned());
        for p in own_parents {
            self.unregister_parent(&p);
        }
        self.unloading = None;
        for a in bound.into_iter().rev() {
            self.unbind_device(a)?;
        }
        for d in drivers {
            self.driver_order.retain(|x| *x != d);
            if let Some(drv) = self.drivers.get_mut(&d) {
                drv.dynamic.clear();
            }
            self.tree.remove(&format!("sys/bus/pci/drivers/{d}"));
            self.emit(Uevent::new(
                "remove",
                &format!("/bus/pci/drivers/{d}"),
                "drivers",
            ));
        }
        self.loaded.retain(|m| m != module);
        self.sync_parents();
        match module {
            "mdev" => {
                self.unrender_mdev_core();
                self.emit(Uevent::new("remove", "/bus/mdev", "bus"));
            }
            "vfio" => {
                self.tree.remove("dev/vfio/vfio");
                self.tree.remove("sys/devices/virtual/misc/vfio");
                self.emit(
                    Uevent::new("remove", "/devices/virtual/misc/vfio", "misc")
                        .with("MAJOR", "10")
                        .with("MINOR", "196")
                        .with("DEVNAME", "vfio/vfio"),
                );
            }
            _ => {}
        }
        self.tree.remove(&format!("sys/module/{module}"));
        self.render_modules();
        self.emit(Uevent::new(
            "remove",
            &format!("/module/{module}"),
            "module",
        ));
        Ok(())
    }

    /// Hotplug: a new function appears (`add` uevent) and is probed like the kernel does;
    /// the spec's `driver` is ignored. Group `auto` gives it a fresh group of its own.
    pub fn hot_add(&mut self, spec: &PciSpec) -> Result<PciAddress, FixtureError> {
        let a = spec.address;
        if self.devices.contains_key(&a) {
            return Err(invalid(format!("{a} is already present")));
        }
        let upstream = match spec.parent {
            Some(p) if self.devices.contains_key(&p) => Some(p),
            Some(p) => return Err(invalid(format!("{a}: parent {p} is not present"))),
            None => self
                .devices
                .values()
                .find(|d| d.secondary_bus == Some(a.bus) && d.addr.domain == a.domain)
                .map(|d| d.addr),
        };
        let mut dev = self.device_from_spec(spec, upstream)?;
        dev.path = match upstream.and_then(|u| self.devices.get(&u)) {
            Some(u) => format!("{}/{a}", u.path),
            None => format!("sys/devices/pci{:04x}:{:02x}/{a}", a.domain, a.bus),
        };
        if let GroupSpec::Number(g) = spec.iommu_group {
            dev.group = Some(g);
        }
        self.unplugged.remove(&a);
        self.add_device(dev);
        Ok(a)
    }

    /// Surprise removal of a function (and everything below it), with the kernel's uevents.
    /// [`Kernel::replug`] brings it back.
    pub fn hot_remove(&mut self, a: PciAddress) -> Result<(), Errno> {
        if !self.devices.contains_key(&a) {
            return Err(libc::ENODEV);
        }
        self.remove_device(a, true)
    }

    /// Re-inserts a function removed by [`Kernel::hot_remove`] or its `remove` attribute
    /// (children too), as a `rescan` would; ENODEV when it was never removed.
    pub fn replug(&mut self, a: PciAddress) -> Result<(), Errno> {
        if !self.unplugged.contains_key(&a) {
            return Err(libc::ENODEV);
        }
        let path = self
            .unplugged
            .get(&a)
            .map(|d| d.path.clone())
            .unwrap_or_default();
        let keys: Vec<PciAddress> = self
            .unplugged
            .values()
            .filter(|d| d.path == path || d.path.starts_with(&format!("{path}/")))
            .map(|d| d.addr)
            .collect();
        // A re-enumerated device is a new `struct pci_dev`: no driver_override, no driver.
        let devices = keys
            .iter()
            .filter_map(|k| self.unplugged.remove(k))
            .map(|mut d| {
                d.driver_override = None;
                d
            })
            .collect();
        self.add_back(devices);
        Ok(())
    }

    /// Adds removed devices back, parents before children, with their old group number when
    /// it is still free.
    fn add_back(&mut self, mut devices: Vec<Device>) {
        devices.sort_by_key(|d| (d.path.matches('/').count(), d.addr));
        let free: BTreeSet<u32> = devices
            .iter()
            .filter_map(|d| d.group)
            .filter(|g| !self.group_refs.contains_key(g))
            .collect();
        for mut d in devices {
            d.group = d.group.filter(|g| free.contains(g));
            self.add_device(d);
        }
    }
}

fn lowest_free(used: impl Iterator<Item = u32>) -> u32 {
    let set: BTreeSet<u32> = used.collect();
    (0..).find(|i| !set.contains(i)).unwrap_or(0)
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

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kver("5.4.0-84-generic"), (5, 4));
        assert_eq!(parse_kver("6.1.0-13-amd64"), (6, 1));
    }
}
