//! Writes to the simulated sysfs. May import: super (the model types), crate::backend,
//! crate::tree, crate::uevent; calls kernel/semantics and kernel/render.
//!
//! Each control file runs the kernel's store handler, with its parsing and errno; plain
//! writable attributes keep what was written.

use gpuvirt_core::PciAddress;
use uuid::Uuid;

use super::{Errno, IdMatch, Kernel};
use crate::backend::Backend;
use crate::tree::{NodeKind, Tree};
use crate::uevent::Uevent;

/// `sysfs_streq`-style text: up to the first NUL, one trailing newline dropped.
fn text(data: &[u8]) -> &str {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let s = std::str::from_utf8(&data[..end]).unwrap_or("\u{fffd}");
    s.strip_suffix('\n').unwrap_or(s)
}

/// `kstrtoul(buf, 0, ...)`: decimal, `0x` hex or leading-`0` octal, one trailing newline.
fn kstrtoul(data: &[u8]) -> Result<u64, Errno> {
    let s = text(data);
    let parsed = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u64>()
    };
    parsed.map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => libc::ERANGE,
        _ => libc::EINVAL,
    })
}

/// `sscanf(buf, "%x %x ...")`: hex fields until the first that does not parse.
fn scan_hex(data: &[u8], max: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for word in text(data).split_whitespace().take(max) {
        let w = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .unwrap_or(word);
        let digits: String = w.chars().take_while(char::is_ascii_hexdigit).collect();
        if digits.is_empty() {
            break;
        }
        match u32::from_str_radix(&digits, 16) {
            Ok(v) => out.push(v),
            Err(_) => break,
        }
        if digits.len() != w.len() {
            break;
        }
    }
    out
}

/// The id entry `new_id`/`remove_id` fields describe (`PCI_ANY_ID` = 0xffffffff as a wildcard).
fn id_from_fields(f: &[u32]) -> IdMatch {
    let any = |i: usize| match f.get(i) {
        None | Some(0xffff_ffff) => None,
        Some(v) => Some(*v as u16),
    };
    IdMatch {
        vendor: any(0),
        device: any(1),
        subvendor: any(2),
        subdevice: any(3),
        class: f.get(4).copied().unwrap_or(0),
        class_mask: f.get(5).copied().unwrap_or(0),
    }
}

impl Kernel {
    /// A write of a string (test convenience).
    pub fn write_str(&mut self, path: &str, data: &str) -> Result<(), Errno> {
        self.write(path, data.as_bytes())
    }

    fn device_at(&self, dir: &str) -> Option<PciAddress> {
        let a: PciAddress = dir.rsplit('/').next()?.parse().ok()?;
        (self.devices.get(&a)?.path == dir).then_some(a)
    }

    fn parent_at(&self, dir: &str) -> Option<String> {
        self.registered
            .iter()
            .find(|p| self.parent_path(p).as_deref() == Some(dir))
            .cloned()
    }

    fn bus_device(&self, data: &[u8]) -> Result<PciAddress, Errno> {
        let a: PciAddress = text(data).parse().map_err(|_| libc::ENODEV)?;
        if self.devices.contains_key(&a) {
            Ok(a)
        } else {
            Err(libc::ENODEV)
        }
    }

    fn dispatch(&mut self, path: &str, data: &[u8]) -> Option<Result<(), Errno>> {
        match path {
            "sys/bus/pci/drivers_probe" => {
                return Some(
                    self.bus_device(data)
                        .and_then(|a| self.probe(a).map(|_| ())),
                )
            }
            "sys/bus/pci/rescan" => return Some(self.rescan(data)),
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("sys/bus/pci/drivers/") {
            let (drv, file) = rest.split_once('/')?;
            let drv = drv.to_owned();
            return match file {
                "bind" => Some(self.bind_write(&drv, data)),
                "unbind" => Some(self.unbind_write(&drv, data)),
                "new_id" => Some(self.new_id(&drv, data)),
                "remove_id" => Some(self.remove_id(&drv, data)),
                _ => None,
            };
        }
        let (dir, file) = path.rsplit_once('/')?;
        if file == "current_vgpu_type" {
            let a = self.device_at(dir.strip_suffix("/nvidia")?)?;
            return Some(self.set_vgpu_type(a, data));
        }
        if file == "create" {
            let (pdir, type_id) = dir.split_once("/mdev_supported_types/")?;
            let parent = self.parent_at(pdir)?;
            return Some(self.create_write(&parent, type_id, data));
        }
        if let Ok(u) = dir.rsplit('/').next()?.parse::<Uuid>() {
            if file == "remove" && self.mdevs.contains_key(&u) {
                return Some(self.mdev_remove_write(u, data));
            }
            return None;
        }
        let a = self.device_at(dir)?;
        match file {
            "driver_override" => Some(self.set_override(a, data)),
            "sriov_numvfs" => Some(self.set_numvfs(a, data)),
            "remove" => Some(kstrtoul(data).and_then(|v| {
                if v == 0 {
                    Ok(())
                } else {
                    self.remove_device(a, true)
                }
            })),
            _ => None,
        }
    }

    fn bind_write(&mut self, drv: &str, data: &[u8]) -> Result<(), Errno> {
        let a = self.bus_device(data)?;
        if !self.driver_matches(drv, a) {
            return Err(libc::ENODEV);
        }
        self.bind_device(a, drv)
    }

    fn unbind_write(&mut self, drv: &str, data: &[u8]) -> Result<(), Errno> {
        let a = self.bus_device(data)?;
        if self.devices.get(&a).and_then(|d| d.driver.as_deref()) != Some(drv) {
            return Err(libc::ENODEV);
        }
        self.unbind_device(a)
    }

    /// `driver_set_override`: text up to the first newline; empty or "\n" clears it.
    fn set_override(&mut self, a: PciAddress, data: &[u8]) -> Result<(), Errno> {
        if data.len() >= 4095 {
            return Err(libc::EINVAL);
        }
        let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
        let s = String::from_utf8_lossy(&data[..end]);
        let value = s.split('\n').next().unwrap_or("");
        if let Some(d) = self.devices.get_mut(&a) {
            d.driver_override = (!value.is_empty()).then(|| value.to_owned());
        }
        self.render_device(a);
        Ok(())
    }

    fn new_id(&mut self, drv: &str, data: &[u8]) -> Result<(), Errno> {
        let f = scan_hex(data, 7);
        if f.len() < 2 {
            return Err(libc::EINVAL);
        }
        let id = id_from_fields(&f);
        if f.len() != 7 {
            // The kernel builds a pseudo device from the fields (missing subsystem ids read
            // as PCI_ANY_ID) and refuses ids the driver already matches.
            let low = |v: Option<u16>| v.unwrap_or(0xffff);
            let ids = gpuvirt_core::PciIds {
                vendor: low(id.vendor),
                device: low(id.device),
                subsystem_vendor: low(id.subvendor),
                subsystem_device: low(id.subdevice),
            };
            if self
                .drivers
                .get(drv)
                .is_some_and(|d| d.matches_ids(&ids, id.class))
            {
                return Err(libc::EEXIST);
            }
        }
        if let Some(d) = self.drivers.get_mut(drv) {
            d.dynamic.push(id);
        }
        self.attach_driver(drv);
        Ok(())
    }

    fn remove_id(&mut self, drv: &str, data: &[u8]) -> Result<(), Errno> {
        let f = scan_hex(data, 6);
        if f.len() < 2 {
            return Err(libc::EINVAL);
        }
        let want = id_from_fields(&f);
        let Some(d) = self.drivers.get_mut(drv) else {
            return Err(libc::ENODEV);
        };
        let pos = d.dynamic.iter().position(|id| {
            id.vendor == want.vendor
                && id.device == want.device
                && (want.subvendor.is_none() || id.subvendor == want.subvendor)
                && (want.subdevice.is_none() || id.subdevice == want.subdevice)
                && (id.class ^ want.class) & want.class_mask == 0
        });
        match pos {
            Some(i) => {
                d.dynamic.remove(i);
                Ok(())
            }
            None => Err(libc::ENODEV),
        }
    }

    /// `sriov_numvfs_store`: ERANGE above `sriov_totalvfs`, a no-op for the current value,
    /// ENOENT without a PF driver that supports SR-IOV, EBUSY from nonzero to nonzero.
    fn set_numvfs(&mut self, a: PciAddress, data: &[u8]) -> Result<(), Errno> {
        let n = kstrtoul(data)?;
        let n = u16::try_from(n).map_err(|_| libc::ERANGE)?;
        let n = u32::from(n);
        let dev = self.devices.get(&a).ok_or(libc::ENODEV)?;
        let sr = dev.sriov.as_ref().ok_or(libc::EIO)?;
        if n > sr.total {
            return Err(libc::ERANGE);
        }
        if n == sr.num {
            return Ok(());
        }
        let supports = dev
            .driver
            .as_ref()
            .and_then(|d| self.drivers.get(d))
            .is_some_and(|d| d.spec.sriov);
        if !supports {
            return Err(libc::ENOENT);
        }
        if n == 0 {
            return self.disable_vfs(a);
        }
        if sr.num != 0 {
            return Err(libc::EBUSY);
        }
        self.enable_vfs(a, n)
    }

    fn rescan(&mut self, data: &[u8]) -> Result<(), Errno> {
        if kstrtoul(data)? == 0 {
            return Ok(());
        }
        let back = std::mem::take(&mut self.unplugged).into_values().collect();
        self.add_back(back);
        Ok(())
    }

    /// mdev `create`: the text must be a UUID (36 characters, one trailing character allowed).
    fn create_write(&mut self, parent: &str, type_id: &str, data: &[u8]) -> Result<(), Errno> {
        if data.len() < 36 || data.len() > 37 {
            return Err(libc::EINVAL);
        }
        let s = std::str::from_utf8(&data[..36]).map_err(|_| libc::EINVAL)?;
        let uuid = Uuid::try_parse(s).map_err(|_| libc::EINVAL)?;
        self.create_mdev(parent, type_id, uuid)
    }

    fn mdev_remove_write(&mut self, u: Uuid, data: &[u8]) -> Result<(), Errno> {
        if kstrtoul(data)? == 0 {
            return Ok(());
        }
        if self.mdevs.get(&u).is_some_and(|m| m.busy) {
            return Err(libc::EBUSY);
        }
        self.remove_mdev(u);
        Ok(())
    }

    /// NVIDIA `current_vgpu_type`: a type id from `creatable_vgpu_types` creates a vGPU on the
    /// VF (EINVAL otherwise), `0` destroys it, EBUSY while another type is set.
    fn set_vgpu_type(&mut self, vf: PciAddress, data: &[u8]) -> Result<(), Errno> {
        let id: u32 = text(data).trim().parse().map_err(|_| libc::EINVAL)?;
        let dev = self.devices.get(&vf).ok_or(libc::ENODEV)?;
        let pf = dev.physfn.map(|(p, _)| p).ok_or(libc::ENODEV)?;
        match (dev.vgpu_current, id) {
            (None, 0) => return Ok(()),
            (Some(_), 0) => {}
            (Some(c), id) if c == id => return Ok(()),
            (Some(_), _) => return Err(libc::EBUSY),
            (None, id) => {
                if !self.creatable(vf).iter().any(|t| t.id == id) {
                    return Err(libc::EINVAL);
                }
            }
        }
        if let Some(d) = self.devices.get_mut(&vf) {
            d.vgpu_current = (id != 0).then_some(id);
        }
        self.render_vgpu_siblings(pf);
        Ok(())
    }
}

impl Backend for Kernel {
    fn tree(&self) -> &Tree {
        &self.tree
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        let ino = self.tree.resolve(path).ok_or(libc::ENOENT)?;
        let canonical = self.tree.path_of(ino);
        let mode = match &self.tree.node(ino).ok_or(libc::ENOENT)?.kind {
            NodeKind::Dir(_) => return Err(libc::EISDIR),
            NodeKind::Link(_) => return Err(libc::ENOENT),
            NodeKind::File { mode, .. } => *mode,
        };
        if mode & 0o222 == 0 {
            return Err(libc::EACCES);
        }
        if let Some(result) = self.dispatch(&canonical, data) {
            return result;
        }
        if mode & 0o444 != 0 {
            // A plain writable attribute: keep the value.
            self.tree.set_file(&canonical, data.to_vec(), mode);
        }
        Ok(())
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        std::mem::take(&mut self.events)
    }

    fn take_plain_changes(&mut self) -> Vec<&'static str> {
        if self.take_dri_changed() {
            vec!["dev/dri"]
        } else {
            Vec::new()
        }
    }
}
