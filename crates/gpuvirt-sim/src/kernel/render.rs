//! Rendering the model into the sysfs-shaped tree. May import: super (the model types),
//! crate::fixture; calls only kernel.rs queries.
//!
//! Every function here is idempotent: it makes the tree match the model for one object,
//! creating, replacing (same inode) or removing nodes.

use gpuvirt_core::PciAddress;
use uuid::Uuid;

use super::{Device, Kernel, VFIO_MAJOR};
use crate::fixture::IommuVendor;

/// The pci.ids subset shipped with the simulator (names of every fixture device).
const PCI_IDS: &str = include_str!("../../data/pci.ids");

impl Kernel {
    pub(super) fn render_all(&mut self) {
        let t = &mut self.tree;
        t.set_file("proc/cmdline", format!("{}\n", self.cmdline), 0o444);
        t.attr("proc/sys/kernel/osrelease", &self.release);
        t.set_file(
            "proc/sys/kernel/random/boot_id",
            format!("{}\n", super::DEFAULT_BOOT_ID),
            0o444,
        );
        t.set_file("usr/share/misc/pci.ids", PCI_IDS, 0o644);
        for (i, comm) in self.processes.iter().enumerate() {
            t.set_file(
                &format!("proc/{}/comm", 1500 + i),
                format!("{comm}\n"),
                0o444,
            );
        }
        for p in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/bus/pci/slots",
            "sys/kernel/iommu_groups",
            "sys/class/iommu",
            "sys/class/pci_bus",
            "sys/module",
            "dev",
            "etc/mdevctl.d/scripts.d/callouts",
            "etc/mdevctl.d/scripts.d/notifiers",
            "usr/lib/mdevctl/scripts.d/callouts",
            "usr/lib/mdevctl/scripts.d/notifiers",
        ] {
            let _ = self.tree.mkdir_p(p);
        }
        self.tree.ctl("sys/bus/pci/drivers_probe");
        self.tree.ctl("sys/bus/pci/rescan");
        self.tree.ctl("sys/bus/pci/uevent");
        self.tree.attr_rw("sys/bus/pci/drivers_autoprobe", 1);
        self.tree
            .set_file("sys/bus/pci/resource_alignment", "", 0o644);
        self.render_modules_alias();
        self.render_iommu_units();
        for spec in self.mdevctl.clone() {
            self.tree.set_file(
                &format!("etc/mdevctl.d/{}/{}", spec.parent, spec.uuid),
                spec.to_json(),
                0o644,
            );
        }
        self.render_modules();
        if self.is_loaded("mdev") {
            self.render_mdev_core();
        }
        if self.is_loaded("vfio") {
            self.render_vfio_core();
        }
        for d in self.driver_order.clone() {
            self.render_driver(&d);
        }
        let addrs: Vec<PciAddress> = self.devices.keys().copied().collect();
        for a in addrs {
            self.render_device(a);
        }
        for g in self.vfio_groups.keys().copied().collect::<Vec<_>>() {
            self.render_vfio_group(g);
        }
        for p in self.registered.clone() {
            self.render_parent(&p);
        }
        for u in self.mdevs.keys().copied().collect::<Vec<_>>() {
            self.render_mdev(u);
        }
        for key in self.vfio_devs.keys().cloned().collect::<Vec<_>>() {
            self.render_vfio_dev(&key);
        }
    }

    fn render_modules_alias(&mut self) {
        let mut text = String::from("# Aliases extracted from modules themselves.\n");
        for name in &self.alias_order {
            let d = &self.drivers[name];
            let (Some(module), true) = (d.spec.module_name(), d.spec.modules_alias) else {
                continue;
            };
            if d.spec.override_only {
                // vfio-pci's table matches only through driver_override; depmod writes it with
                // the driver-override prefix, so no pci: alias names it.
                text.push_str(&format!("alias {module}:v*d*sv*sd*bc*sc*i* {module}\n"));
            }
            for id in &d.ids {
                text.push_str(&format!("alias {} {module}\n", id.alias()));
            }
        }
        let rel = self.release.clone();
        self.tree
            .set_file(&format!("lib/modules/{rel}/modules.alias"), text, 0o644);
    }

    fn render_iommu_units(&mut self) {
        let unit = match self.iommu {
            IommuVendor::Intel => "dmar0",
            IommuVendor::Amd => "ivhd0",
            IommuVendor::None => return,
        };
        // AMD-Vi units hang below the IOMMU's own PCI function; VT-d units are virtual.
        let base = match self.iommu {
            IommuVendor::Amd => self
                .devices
                .values()
                .find(|d| d.class >> 8 == 0x0806 && d.ids.vendor == 0x1022)
                .map(|d| format!("{}/iommu", d.path)),
            _ => None,
        }
        .unwrap_or_else(|| "sys/devices/virtual/iommu".to_owned());
        let dir = format!("{base}/{unit}");
        self.tree.attr(&format!("{dir}/intel-iommu/version"), "1:0");
        if self.iommu == IommuVendor::Amd {
            self.tree.remove(&format!("{dir}/intel-iommu"));
            self.tree
                .attr(&format!("{dir}/amd-iommu/cap"), "0x00000000");
        }
        self.tree
            .link_rel(&format!("{dir}/subsystem"), "sys/class/iommu");
        self.tree.link_rel(&format!("sys/class/iommu/{unit}"), &dir);
    }

    /// `sys/module/<m>` for every loaded module, with its reference count.
    pub(super) fn render_modules(&mut self) {
        for m in self.loaded.clone() {
            let refcnt = self
                .loaded
                .iter()
                .filter(|x| {
                    self.module_deps
                        .get(*x)
                        .is_some_and(|deps| deps.contains(&m))
                })
                .count();
            self.tree.attr(&format!("sys/module/{m}/refcnt"), refcnt);
            self.tree.attr(&format!("sys/module/{m}/initstate"), "live");
        }
    }

    pub(super) fn render_driver(&mut self, d: &str) {
        let Some(drv) = self.drivers.get(d) else {
            return;
        };
        let module = drv.spec.module_name();
        let dir = format!("sys/bus/pci/drivers/{d}");
        for f in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
            self.tree.ctl(&format!("{dir}/{f}"));
        }
        if let Some(m) = module {
            self.tree
                .link_rel(&format!("{dir}/module"), &format!("sys/module/{m}"));
        }
    }

    pub(super) fn render_mdev_core(&mut self) {
        let _ = self.tree.mkdir_p("sys/class/mdev_bus");
        let _ = self.tree.mkdir_p("sys/bus/mdev/devices");
        let _ = self.tree.mkdir_p("sys/bus/mdev/drivers");
        self.tree.attr_rw("sys/bus/mdev/drivers_autoprobe", 1);
        self.tree.ctl("sys/bus/mdev/drivers_probe");
    }

    pub(super) fn unrender_mdev_core(&mut self) {
        self.tree.remove("sys/class/mdev_bus");
        self.tree.remove("sys/bus/mdev");
    }

    pub(super) fn render_vfio_core(&mut self) {
        self.tree.set_file("dev/vfio/vfio", "", 0o666);
        self.tree
            .attr("sys/devices/virtual/misc/vfio/dev", "10:196");
    }

    /// The whole directory of one PCI function plus every link that points at it.
    pub(super) fn render_device(&mut self, a: PciAddress) {
        let Some(d) = self.devices.get(&a).cloned() else {
            return;
        };
        let multifunction = self
            .devices
            .range(
                PciAddress::new(a.domain, a.bus, a.device, 0)
                    ..=PciAddress::new(a.domain, a.bus, a.device, 7),
            )
            .count()
            > 1;
        let port_type = self.port_type(&d);
        let sub_bus = self.subordinate_bus(&d);
        let t = &mut self.tree;
        let p = &d.path;
        t.attr(
            &format!("{p}/vendor"),
            format_args!("0x{:04x}", d.ids.vendor),
        );
        t.attr(
            &format!("{p}/device"),
            format_args!("0x{:04x}", d.ids.device),
        );
        t.attr(
            &format!("{p}/subsystem_vendor"),
            format_args!("0x{:04x}", d.ids.subsystem_vendor),
        );
        t.attr(
            &format!("{p}/subsystem_device"),
            format_args!("0x{:04x}", d.ids.subsystem_device),
        );
        t.attr(&format!("{p}/class"), format_args!("0x{:06x}", d.class));
        t.attr(
            &format!("{p}/revision"),
            format_args!("0x{:02x}", d.revision),
        );
        t.set_file(
            &format!("{p}/config"),
            config_space(&d, multifunction, port_type, sub_bus),
            0o644,
        );
        let mut uevent = String::new();
        if let Some(drv) = &d.driver {
            uevent.push_str(&format!("DRIVER={drv}\n"));
        }
        for (k, v) in d.pci_env() {
            uevent.push_str(&format!("{k}={v}\n"));
        }
        t.set_file(&format!("{p}/uevent"), uevent, 0o644);
        t.attr(&format!("{p}/modalias"), d.modalias());
        t.attr_rw(
            &format!("{p}/driver_override"),
            d.driver_override.as_deref().unwrap_or("(null)"),
        );
        t.attr(&format!("{p}/numa_node"), d.numa);
        t.attr(&format!("{p}/irq"), d.irq);
        t.attr_rw(&format!("{p}/enable"), u8::from(d.driver.is_some()));
        t.attr(&format!("{p}/local_cpulist"), "0-1");
        t.ctl(&format!("{p}/remove"));
        t.ctl(&format!("{p}/rescan"));
        if self.kver >= (5, 15) && !d.reset_method.is_empty() {
            t.attr_rw(&format!("{p}/reset_method"), d.reset_method.join(" "));
        }
        if !d.reset_method.is_empty() {
            t.ctl(&format!("{p}/reset"));
        }
        if d.class >> 8 == 0x0300 {
            t.attr(&format!("{p}/boot_vga"), u8::from(d.boot_vga));
        }
        if let Some(sec) = d.secondary_bus {
            t.attr(&format!("{p}/secondary_bus_number"), sec);
            t.attr(&format!("{p}/subordinate_bus_number"), sub_bus);
            let bus = format!("{:04x}:{sec:02x}", a.domain);
            t.link_rel(&format!("{p}/pci_bus/{bus}/device"), p);
            t.link_rel(
                &format!("sys/class/pci_bus/{bus}"),
                &format!("{p}/pci_bus/{bus}"),
            );
        }
        t.link_rel(&format!("{p}/subsystem"), "sys/bus/pci");
        t.link_rel(&format!("sys/bus/pci/devices/{a}"), p);
        match &d.driver {
            Some(drv) => {
                t.link_rel(
                    &format!("{p}/driver"),
                    &format!("sys/bus/pci/drivers/{drv}"),
                );
                t.link_rel(&format!("sys/bus/pci/drivers/{drv}/{a}"), p);
            }
            None => {
                t.remove(&format!("{p}/driver"));
            }
        }
        if let Some(g) = d.group {
            let gdir = format!("sys/kernel/iommu_groups/{g}");
            if !t.exists(&format!("{gdir}/type")) {
                t.attr(&format!("{gdir}/type"), "DMA");
                t.attr(
                    &format!("{gdir}/reserved_regions"),
                    "0x00000000fee00000 0x00000000feefffff msi",
                );
            }
            t.link_rel(&format!("{p}/iommu_group"), &gdir);
            t.link_rel(&format!("{gdir}/devices/{a}"), p);
        }
        if let Some(sr) = &d.sriov {
            t.attr(&format!("{p}/sriov_totalvfs"), sr.total);
            t.attr_rw(&format!("{p}/sriov_numvfs"), sr.num);
            t.attr(&format!("{p}/sriov_offset"), sr.offset);
            t.attr(&format!("{p}/sriov_stride"), sr.stride);
            t.attr(
                &format!("{p}/sriov_vf_device"),
                format_args!("{:04x}", sr.vf_ids.1),
            );
            t.attr_rw(&format!("{p}/sriov_drivers_autoprobe"), 1);
            for i in 0..sr.total {
                t.remove(&format!("{p}/virtfn{i}"));
            }
        }
        if let Some(sr) = &d.sriov {
            for i in 0..sr.num {
                if let Some(vf) = self.vf_address(a, i) {
                    if let Some(vp) = self.devices.get(&vf).map(|v| v.path.clone()) {
                        self.tree.link_rel(&format!("{p}/virtfn{i}"), &vp);
                    }
                }
            }
        }
        if let Some((pf, _)) = d.physfn {
            if let Some(pp) = self.devices.get(&pf).map(|x| x.path.clone()) {
                self.tree.link_rel(&format!("{p}/physfn"), &pp);
            }
        }
        self.render_nvidia(a);
        self.render_drm(a);
    }

    /// PCIe port type for the config space: root port, switch ports, or endpoint.
    fn port_type(&self, d: &Device) -> u8 {
        if !d.is_bridge() {
            return if d.class >> 8 == 0x0600 || d.class >> 8 == 0x0806 {
                9 // root complex integrated endpoint
            } else {
                0
            };
        }
        match d.upstream.and_then(|u| self.devices.get(&u)) {
            None => 4,
            Some(up) => match self.port_type(up) {
                4 | 6 => 5,
                _ => 6,
            },
        }
    }

    /// Highest bus number below a bridge.
    fn subordinate_bus(&self, d: &Device) -> u8 {
        let Some(sec) = d.secondary_bus else {
            return 0;
        };
        let below = self
            .devices
            .values()
            .filter(|x| x.path.starts_with(&format!("{}/", d.path)))
            .map(|x| x.secondary_bus.unwrap_or(x.addr.bus))
            .max()
            .unwrap_or(sec);
        below.max(sec)
    }

    /// `<VF>/nvidia/{creatable_vgpu_types,current_vgpu_type}` while the VF of a vGPU-capable PF
    /// is bound to nvidia.
    pub(super) fn render_nvidia(&mut self, vf: PciAddress) {
        let Some(d) = self.devices.get(&vf) else {
            return;
        };
        let dir = format!("{}/nvidia", d.path);
        let capable = d.driver.as_deref() == Some("nvidia")
            && d.physfn
                .and_then(|(pf, _)| self.devices.get(&pf))
                .is_some_and(|p| p.vgpu.is_some());
        if !capable {
            self.tree.remove(&dir);
            return;
        }
        let current = d.vgpu_current.unwrap_or(0);
        let mut text = String::from("ID    : vGPU Name\n");
        for t in self.creatable(vf) {
            text.push_str(&format!("{:<6}: {}\n", t.id, t.name));
        }
        self.tree
            .set_file(&format!("{dir}/creatable_vgpu_types"), text, 0o444);
        self.tree
            .attr_rw(&format!("{dir}/current_vgpu_type"), current);
    }

    /// Removes a device's directory and every link to it.
    pub(super) fn unrender_device(&mut self, d: &Device) {
        let a = d.addr;
        self.unrender_drm(d);
        self.tree.remove(&d.path);
        self.tree.remove(&format!("sys/bus/pci/devices/{a}"));
        if let Some(drv) = &d.driver {
            self.tree.remove(&format!("sys/bus/pci/drivers/{drv}/{a}"));
        }
        if let Some(g) = d.group {
            self.tree
                .remove(&format!("sys/kernel/iommu_groups/{g}/devices/{a}"));
        }
        if let Some(sec) = d.secondary_bus {
            self.tree
                .remove(&format!("sys/class/pci_bus/{:04x}:{sec:02x}", a.domain));
        }
    }

    pub(super) fn render_vfio_group(&mut self, g: u32) {
        let Some(minor) = self.vfio_groups.get(&g).copied() else {
            return;
        };
        self.tree.set_file(&format!("dev/vfio/{g}"), "", 0o600);
        let dir = format!("sys/devices/virtual/vfio/{g}");
        self.tree
            .attr(&format!("{dir}/dev"), format_args!("{VFIO_MAJOR}:{minor}"));
        self.tree.set_file(
            &format!("{dir}/uevent"),
            format!("MAJOR={VFIO_MAJOR}\nMINOR={minor}\nDEVNAME=vfio/{g}\n"),
            0o644,
        );
        self.tree
            .link_rel(&format!("{dir}/subsystem"), "sys/class/vfio");
        self.tree.link_rel(&format!("sys/class/vfio/{g}"), &dir);
    }

    pub(super) fn unrender_vfio_group(&mut self, g: u32) {
        self.tree.remove(&format!("dev/vfio/{g}"));
        self.tree.remove(&format!("sys/devices/virtual/vfio/{g}"));
        self.tree.remove(&format!("sys/class/vfio/{g}"));
    }

    fn key_path(&self, key: &str) -> Option<String> {
        if let Ok(a) = key.parse::<PciAddress>() {
            return self.devices.get(&a).map(|d| d.path.clone());
        }
        let u: Uuid = key.parse().ok()?;
        let m = self.mdevs.get(&u)?;
        Some(format!("{}/{u}", self.parent_path(&m.parent)?))
    }

    pub(super) fn render_vfio_dev(&mut self, key: &str) {
        let (Some(idx), Some(p)) = (self.vfio_devs.get(key).copied(), self.key_path(key)) else {
            return;
        };
        let dir = format!("{p}/vfio-dev/vfio{idx}");
        self.tree.set_file(&format!("{dir}/uevent"), "", 0o644);
        self.tree
            .link_rel(&format!("{dir}/subsystem"), "sys/class/vfio-dev");
        self.tree
            .link_rel(&format!("sys/class/vfio-dev/vfio{idx}"), &dir);
    }

    pub(super) fn unrender_vfio_dev(&mut self, key: &str, idx: u32) {
        if let Some(p) = self.key_path(key) {
            self.tree.remove(&format!("{p}/vfio-dev"));
        }
        self.tree.remove(&format!("sys/class/vfio-dev/vfio{idx}"));
    }

    /// A registered parent: its `mdev_bus` link and `mdev_supported_types`.
    pub(super) fn render_parent(&mut self, name: &str) {
        let (Some(p), Some(path)) = (self.parents.get(name).cloned(), self.parent_path(name))
        else {
            return;
        };
        if p.pci.is_none() {
            self.tree.set_file(&format!("{path}/uevent"), "", 0o644);
            self.tree
                .link_rel(&format!("{path}/subsystem"), &format!("sys/class/{name}"));
            self.tree
                .link_rel(&format!("sys/class/{name}/{name}"), &path);
        }
        self.tree
            .link_rel(&format!("sys/class/mdev_bus/{name}"), &path);
        let drv = format!("sys/bus/mdev/drivers/{}", p.mdev_driver);
        for f in ["bind", "unbind", "uevent"] {
            self.tree.ctl(&format!("{drv}/{f}"));
        }
        for t in &p.types {
            let dir = format!("{path}/mdev_supported_types/{}", t.id);
            self.tree
                .attr(&format!("{dir}/name"), t.name.as_deref().unwrap_or(&t.id));
            if let Some(desc) = &t.description {
                self.tree.attr(&format!("{dir}/description"), desc);
            }
            self.tree.attr(&format!("{dir}/device_api"), &t.device_api);
            self.tree.ctl(&format!("{dir}/create"));
            let _ = self.tree.mkdir_p(&format!("{dir}/devices"));
        }
        self.render_available(name);
    }

    pub(super) fn render_available(&mut self, name: &str) {
        let (Some(p), Some(path)) = (self.parents.get(name), self.parent_path(name)) else {
            return;
        };
        if !self.registered.contains(name) {
            return;
        }
        let values: Vec<(String, u32)> = p
            .types
            .iter()
            .map(|t| (t.id.clone(), self.available(name, &t.id).unwrap_or(0)))
            .collect();
        for (id, n) in values {
            self.tree.attr(
                &format!("{path}/mdev_supported_types/{id}/available_instances"),
                n,
            );
        }
    }

    pub(super) fn unrender_parent(&mut self, name: &str) {
        let (Some(p), Some(path)) = (self.parents.get(name).cloned(), self.parent_path(name))
        else {
            return;
        };
        self.tree.remove(&format!("sys/class/mdev_bus/{name}"));
        if p.pci.is_none() {
            self.tree.remove(&format!("sys/devices/virtual/{name}"));
            self.tree.remove(&format!("sys/class/{name}"));
        } else {
            self.tree.remove(&format!("{path}/mdev_supported_types"));
        }
    }

    pub(super) fn render_mdev(&mut self, u: Uuid) {
        let Some(m) = self.mdevs.get(&u).cloned() else {
            return;
        };
        let Some(pp) = self.parent_path(&m.parent) else {
            return;
        };
        let drv = self
            .parents
            .get(&m.parent)
            .map(|p| p.mdev_driver.clone())
            .unwrap_or_default();
        let dir = format!("{pp}/{u}");
        let tdir = format!("{pp}/mdev_supported_types/{}", m.type_id);
        let gdir = format!("sys/kernel/iommu_groups/{}", m.group);
        let t = &mut self.tree;
        t.ctl(&format!("{dir}/remove"));
        t.set_file(&format!("{dir}/uevent"), format!("DRIVER={drv}\n"), 0o644);
        t.link_rel(&format!("{dir}/mdev_type"), &tdir);
        t.link_rel(&format!("{dir}/subsystem"), "sys/bus/mdev");
        t.link_rel(
            &format!("{dir}/driver"),
            &format!("sys/bus/mdev/drivers/{drv}"),
        );
        t.link_rel(&format!("{dir}/iommu_group"), &gdir);
        t.link_rel(&format!("{tdir}/devices/{u}"), &dir);
        t.link_rel(&format!("sys/bus/mdev/devices/{u}"), &dir);
        t.link_rel(&format!("sys/bus/mdev/drivers/{drv}/{u}"), &dir);
        t.link_rel(&format!("{gdir}/devices/{u}"), &dir);
    }

    pub(super) fn unrender_mdev(&mut self, u: Uuid) {
        let Some(m) = self.mdevs.get(&u).cloned() else {
            return;
        };
        let Some(pp) = self.parent_path(&m.parent) else {
            return;
        };
        let drv = self
            .parents
            .get(&m.parent)
            .map(|p| p.mdev_driver.clone())
            .unwrap_or_default();
        let t = &mut self.tree;
        t.remove(&format!("{pp}/{u}"));
        t.remove(&format!(
            "{pp}/mdev_supported_types/{}/devices/{u}",
            m.type_id
        ));
        t.remove(&format!("sys/bus/mdev/devices/{u}"));
        t.remove(&format!("sys/bus/mdev/drivers/{drv}/{u}"));
        t.remove(&format!("sys/kernel/iommu_groups/{}/devices/{u}", m.group));
    }
}

/// A 256-byte configuration space consistent with the sysfs attributes: header, PM, MSI and
/// PCI Express capabilities.
fn config_space(d: &Device, multifunction: bool, port_type: u8, sub_bus: u8) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    let put16 =
        |c: &mut Vec<u8>, at: usize, v: u16| c[at..at + 2].copy_from_slice(&v.to_le_bytes());
    put16(&mut c, 0x00, d.ids.vendor);
    put16(&mut c, 0x02, d.ids.device);
    put16(&mut c, 0x04, if d.driver.is_some() { 0x0406 } else { 0 });
    put16(&mut c, 0x06, 0x0010);
    c[0x08] = d.revision;
    c[0x09] = (d.class & 0xff) as u8;
    c[0x0a] = ((d.class >> 8) & 0xff) as u8;
    c[0x0b] = (d.class >> 16) as u8;
    c[0x0c] = 0x10;
    c[0x0e] = u8::from(d.is_bridge()) | if multifunction { 0x80 } else { 0 };
    if d.is_bridge() {
        c[0x18] = d.addr.bus;
        c[0x19] = d.secondary_bus.unwrap_or(0);
        c[0x1a] = sub_bus;
        put16(&mut c, 0x20, 0xfff0);
        put16(&mut c, 0x24, 0xfff1);
        put16(&mut c, 0x26, 0x0001);
    } else {
        put16(&mut c, 0x2c, d.ids.subsystem_vendor);
        put16(&mut c, 0x2e, d.ids.subsystem_device);
        c[0x3d] = 1;
    }
    c[0x34] = 0x40;
    c[0x3c] = (d.irq & 0xff) as u8;
    // PM @0x40 -> MSI @0x50 -> PCIe @0x70.
    c[0x40] = 0x01;
    c[0x41] = 0x50;
    put16(&mut c, 0x42, 0x0003);
    c[0x50] = 0x05;
    c[0x51] = 0x70;
    put16(&mut c, 0x52, 0x0080);
    c[0x70] = 0x10;
    c[0x71] = 0x00;
    put16(&mut c, 0x72, 0x0002 | (u16::from(port_type) << 4));
    c
}
