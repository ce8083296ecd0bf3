//! Test hooks, things that are not sysfs writes: modprobe and rmmod, hotplug, a VM holding an
//! mdev. May import: super (the model types), crate::fixture, crate::uevent; calls
//! kernel/semantics, kernel/alloc and kernel/render.

use gpuvirt_core::PciAddress;
use uuid::Uuid;

use super::{invalid, Errno, Kernel, Parent};
use crate::fixture::{FixtureError, GroupSpec, PciSpec};
use crate::uevent::Uevent;

impl Kernel {
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

    pub(super) fn knows_module(&self, m: &str) -> bool {
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

    pub(super) fn load_module_depth(&mut self, module: &str, depth: u32) -> Result<(), Errno> {
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
}
