//! The pci.ids database: vendor, device and subsystem names, indexed lazily.
//!
//! The real file is about 1.3 MB with ~40,000 device lines. Loading indexes only the vendor
//! lines (one pass over line starts); a vendor's devices and subsystems are parsed the first
//! time a function of that vendor is looked up, so a host with a handful of vendors never
//! parses the rest of the file.
//!
//! May import: crate::error, crate::host::sysfs.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use crate::host::sysfs::{ReadError, Reader};

/// Where distributions put pci.ids, in the order lspci's packagers prefer.
pub const PCI_IDS_PATHS: [&str; 3] = [
    "usr/share/misc/pci.ids",
    "usr/share/hwdata/pci.ids",
    "usr/share/pci.ids",
];

/// pci.ids can grow; refuse anything absurdly large rather than exhausting memory.
const PCI_IDS_CAP: u64 = 64 * 1024 * 1024;

/// A parsed (lazily indexed) pci.ids file. Empty when no file was found.
#[derive(Default)]
pub struct PciIdsDb {
    text: String,
    vendors: HashMap<u16, Vendor>,
}

#[derive(Debug)]
struct Vendor {
    name: Range<usize>,
    /// The indented lines below the vendor line.
    body: Range<usize>,
    devices: OnceLock<HashMap<u16, Device>>,
}

#[derive(Debug)]
struct Device {
    name: Range<usize>,
    subsystems: HashMap<(u16, u16), Range<usize>>,
}

impl std::fmt::Debug for PciIdsDb {
    // The file text is 1.3 MB: show its size, not its content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciIdsDb")
            .field("bytes", &self.text.len())
            .field("vendors", &self.vendors.len())
            .finish()
    }
}

impl PciIdsDb {
    /// Loads the first pci.ids found under the root; an absent file gives an empty database.
    /// A file that exists but cannot be read is reported through the reader's warnings.
    pub fn load(reader: &mut Reader<'_>) -> Self {
        for rel in PCI_IDS_PATHS {
            let rel = Path::new(rel);
            match reader.read_bytes(rel, PCI_IDS_CAP) {
                Ok(bytes) => {
                    // pci.ids is UTF-8 in practice; a stray byte must not lose the whole database.
                    let text = match String::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    };
                    return Self::parse(text);
                }
                Err(ReadError::Missing) => continue,
                Err(e) => {
                    reader.warn(rel, format!("pci.ids not used: {}", crate::error_chain(&e)));
                    return Self::default();
                }
            }
        }
        Self::default()
    }

    /// Indexes the vendor lines of pci.ids text.
    pub fn parse(text: String) -> Self {
        let mut vendors = HashMap::new();
        let mut current: Option<(u16, Range<usize>, usize)> = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let first = line.as_bytes().first().copied();
            if matches!(
                first,
                Some(b'\t') | Some(b'#') | Some(b'\n') | Some(b'\r') | None
            ) {
                continue;
            }
            // A top-level line closes the previous vendor's body.
            if let Some((id, name, body_start)) = current.take() {
                vendors.insert(id, Vendor::new(name, body_start..start));
            }
            // Device classes (`C 03  Display controller`) close the vendor list for good.
            if line.starts_with("C ") {
                break;
            }
            if let Some((id, name)) = parse_entry(line, start) {
                current = Some((id, name, offset));
            }
        }
        if let Some((id, name, body_start)) = current.take() {
            vendors.insert(id, Vendor::new(name, body_start..offset));
        }
        Self { text, vendors }
    }

    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty()
    }

    pub fn vendor_name(&self, vendor: u16) -> Option<&str> {
        self.vendors
            .get(&vendor)
            .map(|v| &self.text[v.name.clone()])
    }

    pub fn device_name(&self, vendor: u16, device: u16) -> Option<&str> {
        let d = self.device(vendor, device)?;
        Some(&self.text[d.name.clone()])
    }

    /// The name pci.ids gives the exact subsystem of this device, e.g. "Tesla V100 PCIe 16GB".
    pub fn subsystem_name(
        &self,
        vendor: u16,
        device: u16,
        subsystem_vendor: u16,
        subsystem_device: u16,
    ) -> Option<&str> {
        let d = self.device(vendor, device)?;
        let r = d.subsystems.get(&(subsystem_vendor, subsystem_device))?;
        Some(&self.text[r.clone()])
    }

    fn device(&self, vendor: u16, device: u16) -> Option<&Device> {
        let v = self.vendors.get(&vendor)?;
        let devices = v
            .devices
            .get_or_init(|| parse_devices(&self.text, v.body.clone()));
        devices.get(&device)
    }
}

impl Vendor {
    fn new(name: Range<usize>, body: Range<usize>) -> Self {
        Self {
            name,
            body,
            devices: OnceLock::new(),
        }
    }
}

/// Parses `XXXX  Name` at the start of `line` (which begins at byte `start` of the file).
fn parse_entry(line: &str, start: usize) -> Option<(u16, Range<usize>)> {
    let id = parse_id(line)?;
    let rest = line.get(4..)?;
    let name = rest.trim();
    if name.is_empty() || !rest.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let name_start = start + 4 + (rest.len() - rest.trim_start().len());
    Some((id, name_start..name_start + name.len()))
}

/// Parses the four hex digits at the start of `line`.
fn parse_id(line: &str) -> Option<u16> {
    let id = line.get(..4)?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(id, 16).ok()
}

fn parse_devices(text: &str, body: Range<usize>) -> HashMap<u16, Device> {
    let mut devices: HashMap<u16, Device> = HashMap::new();
    let mut current: Option<u16> = None;
    let mut offset = body.start;
    for line in text[body].split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if let Some(sub) = line.strip_prefix("\t\t") {
            // `\t\tSSSS DDDD  Name`
            let Some(dev) = current.and_then(|d| devices.get_mut(&d)) else {
                continue;
            };
            let Some(sv) = parse_id(sub) else {
                continue;
            };
            if sub.as_bytes().get(4) != Some(&b' ') {
                continue;
            }
            let name_off = start + 2 + 5;
            if let Some((sd, range)) = parse_entry(&text[name_off..offset], name_off) {
                dev.subsystems.entry((sv, sd)).or_insert(range);
            }
        } else if let Some(dev) = line.strip_prefix('\t') {
            current = None;
            if let Some((id, name)) = parse_entry(dev, start + 1) {
                current = Some(id);
                devices.entry(id).or_insert(Device {
                    name,
                    subsystems: HashMap::new(),
                });
            }
        }
    }
    devices
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = "\
# pci.ids sample
#\tcomment with tab
10de  NVIDIA Corporation
\t1db4  GV100GL [Tesla V100 PCIe 16GB]
\t\t10de 1214  Tesla V100 PCIe 16GB
\t10f0  GP104 High Definition Audio Controller
15b3  Mellanox Technologies
\t101d  MT2892 Family [ConnectX-6 Dx]
C 03  Display controller
\t00  VGA compatible controller
";

    #[test]
    fn looks_up_vendor_device_and_subsystem() {
        let db = PciIdsDb::parse(SAMPLE.to_string());
        assert_eq!(db.vendor_name(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(
            db.device_name(0x10de, 0x1db4),
            Some("GV100GL [Tesla V100 PCIe 16GB]")
        );
        assert_eq!(
            db.subsystem_name(0x10de, 0x1db4, 0x10de, 0x1214),
            Some("Tesla V100 PCIe 16GB")
        );
        assert_eq!(db.subsystem_name(0x10de, 0x1db4, 0x10de, 0x1215), None);
        assert_eq!(
            db.device_name(0x15b3, 0x101d),
            Some("MT2892 Family [ConnectX-6 Dx]")
        );
        assert_eq!(db.device_name(0x15b3, 0x1234), None);
        assert_eq!(db.vendor_name(0x1234), None);
    }

    #[test]
    fn class_section_is_not_a_vendor() {
        let db = PciIdsDb::parse(SAMPLE.to_string());
        assert_eq!(db.vendors.len(), 2);
        // `\t00  VGA…` under `C 03` must not become a device of the last vendor.
        assert_eq!(db.device_name(0x15b3, 0x0000), None);
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let db = PciIdsDb::parse("zzzz  Nope\n10de\n\tqqqq bad\n1af4  Red Hat, Inc.\n".into());
        assert_eq!(db.vendor_name(0x1af4), Some("Red Hat, Inc."));
        assert_eq!(db.vendor_name(0x10de), None);
    }
}
