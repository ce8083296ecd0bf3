//! Builds small host trees in the real sysfs layout inside a directory, for tests.
//!
//! Devices live in `sys/devices/<bus path>/<address>` with relative links exactly where the
//! kernel puts them (`bus/pci/devices`, `driver`, `iommu_group`, `kernel/iommu_groups/N/devices`,
//! `class/mdev_bus`, `bus/mdev/devices`, `mdev_type`, `virtfnN`/`physfn`), so the scanner reads
//! a built tree exactly as it reads a host. Every method panics on I/O errors: this is test
//! scaffolding, and a tree that cannot be built is a broken test.
//!
//! May import: crate::model.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::model::PciAddress;

/// A PCI function to create.
#[derive(Debug, Clone)]
pub struct PciDev {
    pub address: PciAddress,
    /// The directory it sits in below `sys/devices`, e.g. `pci0000:40/0000:40:03.1`.
    pub parent: String,
    pub class: u32,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    pub revision: u8,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: i32,
    pub reset_method: Option<String>,
    pub sriov_totalvfs: Option<u32>,
    /// Write the ids into `uevent` (as the kernel does); `false` leaves only the attribute files.
    pub uevent_ids: bool,
}

impl PciDev {
    /// A function at `address` below `parent` with the given class and ids, unbound, no group.
    pub fn new(address: &str, parent: &str, class: u32, vendor: u16, device: u16) -> Self {
        Self {
            address: address.parse().unwrap(),
            parent: parent.to_string(),
            class,
            vendor,
            device,
            subsystem_vendor: vendor,
            subsystem_device: 0,
            revision: 0xa1,
            driver: None,
            iommu_group: None,
            numa_node: -1,
            reset_method: Some("flr bus".to_string()),
            sriov_totalvfs: None,
            uevent_ids: true,
        }
    }

    pub fn driver(mut self, driver: &str) -> Self {
        self.driver = Some(driver.to_string());
        self
    }

    pub fn group(mut self, id: u32) -> Self {
        self.iommu_group = Some(id);
        self
    }

    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem_vendor = vendor;
        self.subsystem_device = device;
        self
    }

    /// The device directory relative to `sys`.
    pub fn sysfs_path(&self) -> PathBuf {
        Path::new("devices")
            .join(&self.parent)
            .join(self.address.to_string())
    }

    pub fn modalias(&self) -> String {
        format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            self.vendor,
            self.device,
            self.subsystem_vendor,
            self.subsystem_device,
            self.class >> 16,
            (self.class >> 8) & 0xff,
            self.class & 0xff
        )
    }
}

/// One mdev type to create under a parent.
#[derive(Debug, Clone)]
pub struct TypeSpec {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub device_api: String,
    pub available_instances: u32,
}

impl TypeSpec {
    pub fn new(id: &str, name: &str, description: Option<&str>, available: u32) -> Self {
        Self {
            id: id.to_string(),
            name: name.to_string(),
            description: description.map(str::to_string),
            device_api: "vfio-pci".to_string(),
            available_instances: available,
        }
    }
}

/// Writes a host tree below `root`.
#[derive(Debug, Clone)]
pub struct TreeBuilder {
    root: PathBuf,
}

impl TreeBuilder {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes a file (creating parents), `rel` relative to the root.
    pub fn file(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Creates a relative symlink at `link` pointing at `target`, both relative to the root,
    /// replacing what is there.
    pub fn link(&self, link: impl AsRef<Path>, target: impl AsRef<Path>) {
        let link = link.as_ref();
        let path = self.root.join(link);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(relative(link.parent().unwrap(), target.as_ref()), path)
            .unwrap();
    }

    /// Removes a file or link if present.
    pub fn remove(&self, rel: impl AsRef<Path>) {
        let path = self.root.join(rel);
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(path).unwrap();
        } else {
            let _ = fs::remove_file(path);
        }
    }

    /// Creates a PCI function with its attributes, uevent, bus link, driver and group links.
    pub fn pci(&self, dev: &PciDev) -> PathBuf {
        let addr = dev.address.to_string();
        let dir = Path::new("sys").join(dev.sysfs_path());
        let f = |name: &str, value: String| self.file(dir.join(name), value + "\n");
        f("vendor", format!("0x{:04x}", dev.vendor));
        f("device", format!("0x{:04x}", dev.device));
        f(
            "subsystem_vendor",
            format!("0x{:04x}", dev.subsystem_vendor),
        );
        f(
            "subsystem_device",
            format!("0x{:04x}", dev.subsystem_device),
        );
        f("class", format!("0x{:06x}", dev.class));
        f("revision", format!("0x{:02x}", dev.revision));
        f("modalias", dev.modalias());
        f("numa_node", dev.numa_node.to_string());
        f("driver_override", "(null)".to_string());
        if let Some(rm) = &dev.reset_method {
            f("reset_method", rm.clone());
        }
        if dev.class >> 8 == 0x0300 {
            f("boot_vga", "0".to_string());
        }
        if let Some(total) = dev.sriov_totalvfs {
            f("sriov_totalvfs", total.to_string());
            f("sriov_numvfs", "0".to_string());
        }
        self.link(Path::new("sys/bus/pci/devices").join(&addr), &dir);
        if let Some(group) = dev.iommu_group {
            self.join_group(&dir, &addr, group);
        }
        self.write_uevent(dev, dev.driver.as_deref());
        if let Some(driver) = &dev.driver {
            self.bind(dev, driver);
        }
        dir
    }

    fn write_uevent(&self, dev: &PciDev, driver: Option<&str>) {
        let mut ue = String::new();
        if let Some(d) = driver {
            ue += &format!("DRIVER={d}\n");
        }
        if dev.uevent_ids {
            ue += &format!(
                "PCI_CLASS={:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\nMODALIAS={}\n",
                dev.class,
                dev.vendor,
                dev.device,
                dev.subsystem_vendor,
                dev.subsystem_device,
                dev.address,
                dev.modalias()
            );
        }
        self.file(Path::new("sys").join(dev.sysfs_path()).join("uevent"), ue);
    }

    fn join_group(&self, dir: &Path, name: &str, group: u32) {
        let gdir = Path::new("sys/kernel/iommu_groups").join(group.to_string());
        self.link(gdir.join("devices").join(name), dir);
        self.link(dir.join("iommu_group"), &gdir);
    }

    /// Binds `dev` to `driver` (driver link, the driver's device link, uevent DRIVER=).
    pub fn bind(&self, dev: &PciDev, driver: &str) {
        let dir = Path::new("sys").join(dev.sysfs_path());
        let ddir = Path::new("sys/bus/pci/drivers").join(driver);
        self.link(dir.join("driver"), &ddir);
        self.link(ddir.join(dev.address.to_string()), &dir);
        self.write_uevent(dev, Some(driver));
    }

    /// Unbinds `dev` from whatever driver it has.
    pub fn unbind(&self, dev: &PciDev) {
        let dir = Path::new("sys").join(dev.sysfs_path());
        self.remove(dir.join("driver"));
        self.write_uevent(dev, None);
    }

    /// Removes a function as hot-unplug does: its directory, bus link and group entry.
    pub fn remove_pci(&self, dev: &PciDev) {
        let addr = dev.address.to_string();
        self.remove(Path::new("sys").join(dev.sysfs_path()));
        self.remove(Path::new("sys/bus/pci/devices").join(&addr));
        if let Some(g) = dev.iommu_group {
            let gdir = Path::new("sys/kernel/iommu_groups").join(g.to_string());
            self.remove(gdir.join("devices").join(&addr));
            if fs::read_dir(self.root.join(gdir.join("devices")))
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
            {
                self.remove(gdir);
            }
        }
    }

    /// Links VF number `index` of `pf` to `vf` both ways and updates `sriov_numvfs`.
    pub fn link_vf(&self, pf: &PciDev, vf: &PciDev, index: u32, num_vfs: u32) {
        let pf_dir = Path::new("sys").join(pf.sysfs_path());
        let vf_dir = Path::new("sys").join(vf.sysfs_path());
        self.link(pf_dir.join(format!("virtfn{index}")), &vf_dir);
        self.link(vf_dir.join("physfn"), &pf_dir);
        self.file(pf_dir.join("sriov_numvfs"), format!("{num_vfs}\n"));
    }

    /// Writes NVIDIA's per-VF vGPU files on `vf` (`creatable` as `(id, name)` pairs).
    pub fn nvidia_vf(&self, vf: &PciDev, creatable: &[(u32, &str)], current: u32) {
        let dir = Path::new("sys").join(vf.sysfs_path()).join("nvidia");
        let mut text = String::from("ID    : vGPU Name\n");
        for (id, name) in creatable {
            text += &format!("{id:<5} : {name}\n");
        }
        self.file(dir.join("creatable_vgpu_types"), text);
        self.file(dir.join("current_vgpu_type"), format!("{current}\n"));
    }

    /// Registers `device_dir` (relative to `sys`) as an mdev parent called `name` with `types`.
    pub fn mdev_parent(&self, name: &str, device_dir: impl AsRef<Path>, types: &[TypeSpec]) {
        let dir = Path::new("sys").join(device_dir.as_ref());
        self.link(Path::new("sys/class/mdev_bus").join(name), &dir);
        for t in types {
            self.mdev_type(&dir, t);
        }
    }

    /// Writes (or rewrites) one type's attributes below the parent directory `dir` (relative
    /// to the root).
    pub fn mdev_type(&self, dir: &Path, t: &TypeSpec) {
        let tdir = dir.join("mdev_supported_types").join(&t.id);
        self.file(tdir.join("name"), format!("{}\n", t.name));
        match &t.description {
            Some(d) => self.file(tdir.join("description"), format!("{d}\n")),
            None => self.remove(tdir.join("description")),
        }
        self.file(tdir.join("device_api"), format!("{}\n", t.device_api));
        self.file(
            tdir.join("available_instances"),
            format!("{}\n", t.available_instances),
        );
        self.file(tdir.join("create"), "");
        fs::create_dir_all(self.root.join(tdir.join("devices"))).unwrap();
    }

    /// Creates an active mdev below the parent directory `parent_dir` (relative to `sys`).
    pub fn mdev(
        &self,
        uuid: &str,
        parent_dir: impl AsRef<Path>,
        type_id: &str,
        driver: Option<&str>,
        group: Option<u32>,
    ) {
        let pdir = Path::new("sys").join(parent_dir.as_ref());
        let dir = pdir.join(uuid);
        self.file(dir.join("uevent"), "");
        self.link(
            dir.join("mdev_type"),
            pdir.join("mdev_supported_types").join(type_id),
        );
        self.link(Path::new("sys/bus/mdev/devices").join(uuid), &dir);
        if let Some(d) = driver {
            self.link(
                dir.join("driver"),
                Path::new("sys/bus/mdev/drivers").join(d),
            );
        }
        if let Some(g) = group {
            self.join_group(&dir, uuid, g);
        }
    }

    /// Removes an mdev (its directory, bus link and group).
    pub fn remove_mdev(&self, uuid: &str, parent_dir: impl AsRef<Path>, group: Option<u32>) {
        self.remove(Path::new("sys").join(parent_dir.as_ref()).join(uuid));
        self.remove(Path::new("sys/bus/mdev/devices").join(uuid));
        if let Some(g) = group {
            self.remove(Path::new("sys/kernel/iommu_groups").join(g.to_string()));
        }
    }

    pub fn iommu_unit(&self, name: &str) {
        let dir = Path::new("sys/devices/virtual/iommu").join(name);
        fs::create_dir_all(self.root.join(&dir)).unwrap();
        self.link(Path::new("sys/class/iommu").join(name), dir);
    }

    pub fn cmdline(&self, cmdline: &str) {
        self.file("proc/cmdline", format!("{cmdline}\n"));
    }

    pub fn kernel_release(&self, release: &str) {
        self.file("proc/sys/kernel/osrelease", format!("{release}\n"));
    }

    /// Marks a module as loaded (`sys/module/<name>`).
    pub fn module(&self, name: &str) {
        fs::create_dir_all(self.root.join("sys/module").join(name)).unwrap();
    }

    pub fn pci_ids(&self, text: &str) {
        self.file("usr/share/misc/pci.ids", text);
    }

    pub fn modules_alias(&self, release: &str, text: &str) {
        self.file(
            Path::new("lib/modules").join(release).join("modules.alias"),
            text,
        );
    }
}

/// The relative path from directory `from` to `to` (both relative to the same root).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}
