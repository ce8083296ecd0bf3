//! The kernel's semantics shared by sysfs writes and test hooks: binding, probing, vfio nodes,
//! mdev parents and mdevs, VFs, device removal, each with its uevents in the kernel's order.
//! May import: super (the model types), super::alloc, crate::fixture, crate::uevent; calls
//! kernel/alloc and kernel/render, never hooks or write.

use std::collections::BTreeSet;

use gpuvirt_core::PciAddress;
use uuid::Uuid;

use super::alloc::lowest_free;
use super::{is_vfio_driver, Device, Driver, Errno, Kernel, Mdev, VFIO_MAJOR};
use crate::fixture::IommuVendor;
use crate::uevent::Uevent;

impl Kernel {
    pub(super) fn emit(&mut self, mut ev: Uevent) {
        self.seqnum += 1;
        ev.seqnum = self.seqnum;
        self.events.push(ev);
    }

    /// A pci uevent: `extra` keys first (like `MDEV_STATE`), then `DRIVER` while bound, then
    /// the `PCI_*` keys, as `kobject_uevent_env` orders them.
    pub(super) fn pci_event(
        &self,
        action: &str,
        a: PciAddress,
        extra: &[(&str, &str)],
    ) -> Option<Uevent> {
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

    pub(super) fn emit_pci(&mut self, action: &str, a: PciAddress, extra: &[(&str, &str)]) {
        if let Some(ev) = self.pci_event(action, a, extra) {
            self.emit(ev);
        }
    }

    /// Probes `drv` on `a` and binds it: the vfio group and vfio-dev appear first, an mdev
    /// parent registers during probe, and the `bind` uevent comes last.
    pub(super) fn bind_device(&mut self, a: PciAddress, drv: &str) -> Result<(), Errno> {
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
    pub(super) fn unbind_device(&mut self, a: PciAddress) -> Result<(), Errno> {
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
    pub(super) fn probe(&mut self, a: PciAddress) -> Result<bool, Errno> {
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
    pub(super) fn attach_driver(&mut self, drv: &str) {
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

    pub(super) fn vfio_attach(&mut self, key: &str, group: Option<u32>, devpath: &str) {
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

    pub(super) fn vfio_detach(&mut self, key: &str, group: Option<u32>, devpath: &str) {
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

    pub(super) fn register_parent(&mut self, name: &str) {
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

    pub(super) fn unregister_parent(&mut self, name: &str) {
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
    pub(super) fn sync_parents(&mut self) {
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

    pub(super) fn create_mdev(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
    ) -> Result<(), Errno> {
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
    pub(super) fn remove_mdev(&mut self, uuid: Uuid) {
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
    pub(super) fn enable_vfs(&mut self, pf: PciAddress, n: u32) -> Result<(), Errno> {
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

    pub(super) fn disable_vfs(&mut self, pf: PciAddress) -> Result<(), Errno> {
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
    pub(super) fn remove_device(&mut self, a: PciAddress, stash: bool) -> Result<(), Errno> {
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
    pub(super) fn add_device(&mut self, mut dev: Device) {
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

    pub(super) fn render_vgpu_siblings(&mut self, pf: PciAddress) {
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

    /// Adds removed devices back, parents before children, with their old group number when
    /// it is still free.
    pub(super) fn add_back(&mut self, mut devices: Vec<Device>) {
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
