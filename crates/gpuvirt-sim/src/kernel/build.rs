//! Booting a kernel from a fixture: the catalogue, devices, parents, modules, bindings and
//! mdevs of boot, with no uevents; and the expected view of the model. May import: super (the
//! model types), crate::fixture, crate::expected, crate::tree; calls kernel/alloc and
//! kernel/render, never semantics, hooks or write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gpuvirt_core::PciAddress;

use super::{invalid, Driver, IdMatch, Kernel, Mdev, Parent};
use crate::expected::{ExpectedFunction, ExpectedInventory, ExpectedType};
use crate::fixture::{DriverSpec, Fixture, FixtureError, GroupSpec, IommuVendor, PciSpec};
use crate::tree::Tree;

/// The built-in catalogue of drivers and module dependencies.
const CATALOGUE: &str = include_str!("../../data/drivers.toml");

impl Fixture {
    /// What a correct scan of this host at boot must report (see
    /// [`Kernel::expected_inventory`]). Defined on the kernel side so fixtures do not depend on
    /// the kernel.
    pub fn expected_inventory(&self) -> Result<ExpectedInventory, FixtureError> {
        Ok(Kernel::from_fixture(self)?.expected_inventory())
    }
}

fn parse_kver(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
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
            processes: f.kernel.processes.clone(),
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
            dri_changed: false,
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

    pub(super) fn add_driver(&mut self, spec: &DriverSpec) -> Result<(), FixtureError> {
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

    pub(super) fn build_devices(&mut self, f: &Fixture) -> Result<(), FixtureError> {
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

    pub(super) fn path_for(&self, a: PciAddress, depth: u32) -> Result<String, FixtureError> {
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

    pub(super) fn build_parents(&mut self, f: &Fixture) -> Result<(), FixtureError> {
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
    pub(super) fn boot_modules(&mut self, f: &Fixture) -> Result<(), FixtureError> {
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

    pub(super) fn load_quietly(&mut self, m: &str, depth: u32) -> Result<(), FixtureError> {
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

    pub(super) fn boot_bindings(&mut self, f: &Fixture) -> Result<(), FixtureError> {
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

    pub(super) fn boot_bind(&mut self, a: PciAddress, drv: &str) -> Result<(), FixtureError> {
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

    pub(super) fn build_mdevs(&mut self, f: &Fixture) -> Result<(), FixtureError> {
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

    pub(super) fn vfio_attach_quietly(&mut self, key: &str, group: Option<u32>) {
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
                    drm: self.drm_names(d),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kver("5.4.0-84-generic"), (5, 4));
        assert_eq!(parse_kver("6.1.0-13-amd64"), (6, 1));
    }
}
