//! One PCI function's sysfs directory read into a [`PciFunction`]: its listing decides which
//! attributes are opened. May import: crate::host, crate::model, scan/{scanner, read}.

use std::path::{Path, PathBuf};

use super::read::PCI_DEVICES;
use super::scanner::Scanner;
use crate::host::sysfs::{
    basename, is_missing, is_not_a_link, parse_hex, resolve_link, shown, ReadError, Reader,
};
use crate::model::{NvidiaVfVgpu, PciAddress, PciFunction, PciIds, Sriov, VgpuTypeOffer};

/// The attribute or device went away while it was being read (ENOENT/ENODEV).
#[derive(Debug)]
pub(super) struct Gone;

impl Scanner {
    /// Reads one PCI function and its class as far as it could be read (the record says 0
    /// when it could not); `None` when it does not exist (or vanished mid-read).
    pub(super) fn read_function(
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
pub(super) struct DeviceDir<'r, 'a> {
    pub(super) r: &'r mut Reader<'a>,
    pub(super) dir: PathBuf,
    pub(super) entries: Vec<String>,
}

/// The keys of a PCI device's `uevent` the scan uses.
#[derive(Default)]
pub(super) struct PciUevent {
    pub(super) driver: Option<String>,
    pub(super) class: Option<String>,
    pub(super) id: Option<String>,
    pub(super) subsys_id: Option<String>,
    pub(super) modalias: Option<String>,
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
        let drm = if self.has("drm") {
            self.drm_nodes(address)?
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
            drm,
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

pub(super) fn parse_hex16(v: &str) -> Option<u16> {
    parse_hex(v).and_then(|x| u16::try_from(x).ok())
}

/// `10DE:1DB4` → (0x10de, 0x1db4).
pub(super) fn parse_id_pair(v: &str) -> Option<(u16, u16)> {
    let (a, b) = v.split_once(':')?;
    Some((parse_hex16(a)?, parse_hex16(b)?))
}
