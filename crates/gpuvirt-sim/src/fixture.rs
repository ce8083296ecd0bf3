//! Host fixtures: a readable TOML description of a simulated host. May import: crate::expected
//! (re-exported here for old paths); nothing else of this crate.
//!
//! A fixture says what a host looks like at boot: kernel release and command line, loaded
//! modules, IOMMU vendor, the PCI topology with drivers and IOMMU groups, the drivers that exist
//! (with the id tables they match), mdev parents with their types, active mdevs, NVIDIA per-VF
//! vGPU parents and mdevctl configs. Everything boring has a default, so a fixture lists only what
//! matters. `Kernel::from_fixture` (in `kernel`) turns one into a running simulated kernel.
//!
//! ```toml
//! [kernel]
//! release = "6.1.0-13-amd64"
//! iommu = "intel"
//!
//! [[pci]]
//! address = "0000:00:01.0"
//! class = 0x060400
//! id = "8086:1901"
//! driver = "pcieport"
//!
//! [[pci]]
//! address = "0000:01:00.0"
//! class = 0x030000
//! id = "10de:2204"
//! driver = "nouveau"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use gpuvirt_core::{PciAddress, PciIds};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// The expected view used to live here; tests still name it through this module.
pub use crate::expected::{ExpectedFunction, ExpectedInventory, ExpectedType};

/// Why a fixture could not be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read fixture {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl FixtureError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        FixtureError::Invalid {
            file: "<fixture>".to_owned(),
            message: message.into(),
        }
    }

    /// Replaces the placeholder file name of an [`FixtureError::Invalid`] with the real one.
    pub(crate) fn in_file(self, name: &str) -> Self {
        match self {
            FixtureError::Invalid { message, .. } => FixtureError::Invalid {
                file: name.to_owned(),
                message,
            },
            other => other,
        }
    }
}

/// A whole host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Free text: what this host is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kernel: KernelSpec,
    /// PCI functions (bridges included); VFs come from their PF's `sriov` table.
    #[serde(default, rename = "pci")]
    pub devices: Vec<PciSpec>,
    /// Drivers and modules beyond (or replacing) the built-in catalogue in `data/drivers.toml`.
    #[serde(default, rename = "driver")]
    pub drivers: Vec<DriverSpec>,
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleSpec>,
    #[serde(default, rename = "mdev_parent")]
    pub mdev_parents: Vec<MdevParentSpec>,
    /// Active mediated devices.
    #[serde(default, rename = "mdev")]
    pub mdevs: Vec<MdevSpec>,
    /// Persistent mdevctl configs (`etc/mdevctl.d/<parent>/<uuid>`).
    #[serde(default, rename = "mdevctl")]
    pub mdevctl: Vec<MdevctlSpec>,
}

/// Which IOMMU the host has enabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IommuVendor {
    /// Intel VT-d: `/sys/class/iommu/dmar0`.
    #[default]
    Intel,
    /// AMD-Vi: `/sys/class/iommu/ivhd0`.
    Amd,
    /// No IOMMU (disabled in firmware or on the command line): no groups at all.
    None,
}

/// Kernel-wide facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    #[serde(default = "default_release")]
    pub release: String,
    /// `/proc/cmdline`; default `BOOT_IMAGE=/boot/vmlinuz-<release> root=/dev/sda1 ro quiet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Loaded modules besides those implied by bound drivers and registered mdev parents.
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub iommu: IommuVendor,
    /// Processes running on the host, by name (`comm`): `proc/<pid>/comm` from pid 1500 on
    /// (the NVIDIA vGPU manager, `nvidia-vgpu-mgr`, is what gpuvirt looks for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

fn default_release() -> String {
    "6.1.0-13-amd64".to_owned()
}

impl Default for KernelSpec {
    fn default() -> Self {
        Self {
            release: default_release(),
            cmdline: None,
            modules: Vec::new(),
            iommu: IommuVendor::Intel,
            processes: Vec::new(),
        }
    }
}

/// An IOMMU group assignment: a number, or `"auto"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupSpec {
    /// This exact group number.
    Number(u32),
    /// Chosen by the simulated kernel: functions of one slot share a group unless `isolated`;
    /// bridges and VFs get their own; numbers fill the lowest free ids in address order.
    #[default]
    Auto,
}

impl Serialize for GroupSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupSpec::Number(n) => s.serialize_u32(*n),
            GroupSpec::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for GroupSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(GroupSpec::Number(n)),
            Raw::Text(t) if t == "auto" => Ok(GroupSpec::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "expected a group number or \"auto\", found {t:?}"
            ))),
        }
    }
}

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciSpec {
    pub address: PciAddress,
    /// The upstream bridge; default: the bridge whose `secondary_bus` is this bus, else the root
    /// bus `pci<domain>:<bus>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<PciAddress>,
    /// 24-bit class code, e.g. `0x030200`.
    pub class: u32,
    /// `vendor:device` in hex, e.g. `"10de:1db4"`.
    pub id: String,
    /// `vendor:device` of the subsystem; default `0000:0000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    #[serde(default)]
    pub revision: u8,
    /// The driver bound at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_override: Option<String>,
    /// Default -1 (no NUMA affinity), as the kernel reports on single-node hosts.
    #[serde(default = "default_numa")]
    pub numa_node: i32,
    /// Only meaningful for VGA-class (`0x0300xx`) functions, the only ones that have the file.
    #[serde(default)]
    pub boot_vga: bool,
    /// `reset_method` words (kernel 5.15+ only); default `flr bus` for endpoints, none for bridges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_method: Option<Vec<String>>,
    #[serde(default)]
    pub iommu_group: GroupSpec,
    /// Has ACS: an automatic group is not shared with the other functions of its slot.
    #[serde(default)]
    pub isolated: bool,
    /// For a bridge: the bus number behind it (children on that bus hang below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_bus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SriovSpec>,
    /// NVIDIA per-VF vGPU (vGPU 17+ on Ada/Hopper-class): the VFs of this PF get `nvidia/` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvidia_vgpu: Option<NvidiaVgpuSpec>,
    /// The DRM minor N this function's nodes get while a DRM driver (a driver with `drm` set)
    /// is bound: `drm/cardN`, and `drm/renderD<128+N>` when that driver renders, with udev's
    /// `dev/dri` nodes and `by-path` links. None: no DRM nodes whatever the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drm_minor: Option<u32>,
}

fn default_numa() -> i32 {
    -1
}

impl PciSpec {
    /// A function with defaults for everything but address, class and ids.
    pub fn new(address: PciAddress, class: u32, id: &str) -> Self {
        Self {
            address,
            parent: None,
            class,
            id: id.to_owned(),
            subsystem: None,
            revision: 0,
            driver: None,
            driver_override: None,
            numa_node: -1,
            boot_vga: false,
            reset_method: None,
            iommu_group: GroupSpec::Auto,
            isolated: false,
            secondary_bus: None,
            irq: None,
            sriov: None,
            nvidia_vgpu: None,
            drm_minor: None,
        }
    }

    /// The ids, parsed.
    pub fn ids(&self) -> Result<PciIds, FixtureError> {
        let (vendor, device) = parse_id_pair(&self.id).ok_or_else(|| {
            FixtureError::invalid(format!("{}: bad id {:?}", self.address, self.id))
        })?;
        let (subsystem_vendor, subsystem_device) = match &self.subsystem {
            Some(s) => parse_id_pair(s).ok_or_else(|| {
                FixtureError::invalid(format!("{}: bad subsystem {s:?}", self.address))
            })?,
            None => (0, 0),
        };
        Ok(PciIds {
            vendor,
            device,
            subsystem_vendor,
            subsystem_device,
        })
    }
}

/// Parses `"10de:1db4"`.
pub fn parse_id_pair(s: &str) -> Option<(u16, u16)> {
    let (v, d) = s.trim().split_once(':')?;
    let hex = |x: &str| {
        if x.len() == 4 {
            u16::from_str_radix(x, 16).ok()
        } else {
            None
        }
    };
    Some((hex(v)?, hex(d)?))
}

/// SR-IOV capability of a physical function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SriovSpec {
    pub total_vfs: u32,
    /// VFs enabled at boot.
    #[serde(default)]
    pub num_vfs: u32,
    /// `vendor:device` of the VFs; default the PF's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_id: Option<String>,
    /// Routing-id offset of VF 0 from the PF (`sriov_offset`).
    #[serde(default = "one")]
    pub offset: u32,
    #[serde(default = "one")]
    pub stride: u32,
    /// VFs bound at boot to something other than what autoprobe would pick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vf_drivers: Vec<VfDriverSpec>,
}

fn one() -> u32 {
    1
}

/// Which driver VF `index` is bound to at boot (`"none"` for unbound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfDriverSpec {
    pub index: u32,
    pub driver: String,
}

/// NVIDIA's per-VF vGPU manager on a PF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvidiaVgpuSpec {
    /// Framebuffer shared by all vGPUs of this GPU.
    pub framebuffer_mb: u64,
    /// Only one vGPU type at a time on the GPU (NVIDIA's default).
    #[serde(default = "yes")]
    pub homogeneous: bool,
    pub types: Vec<NvidiaTypeSpec>,
    /// vGPUs that exist at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<NvidiaCreatedSpec>,
}

fn yes() -> bool {
    true
}

/// One NVIDIA vGPU type (a line of `creatable_vgpu_types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvidiaTypeSpec {
    pub id: u32,
    pub name: String,
    pub framebuffer_mb: u64,
    pub max_instances: u32,
}

/// A vGPU of `type_id` on VF `vf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvidiaCreatedSpec {
    pub vf: u32,
    #[serde(rename = "type")]
    pub type_id: u32,
}

/// A PCI driver and the module that provides it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSpec {
    /// The name under `/sys/bus/pci/drivers` (`vfio-pci`, `bochs-drm`).
    pub name: String,
    /// The module providing it; default the name with `-` as `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Built into the kernel: always registered, no module link.
    #[serde(default)]
    pub builtin: bool,
    /// Id table entries: `"VVVV:DDDD"`, `*` as a wildcard, optionally followed by
    /// ` sub=SVVV:SDDD` and ` class=CC[SS[II]]` (e.g. `"10de:* class=0300"`).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Matches any device, but only through `driver_override` (vfio-pci since 5.x).
    #[serde(default)]
    pub override_only: bool,
    /// Whether the id table appears in `modules.alias` (false for a module installed without
    /// depmod seeing it).
    #[serde(default = "yes")]
    pub modules_alias: bool,
    /// Implements `sriov_configure` (writing `sriov_numvfs` works).
    #[serde(default)]
    pub sriov: bool,
    /// The DRM nodes a bound device with a `drm_minor` gets; default none.
    #[serde(default, skip_serializing_if = "DrmSupport::is_none")]
    pub drm: DrmSupport,
}

/// Which DRM nodes a driver registers for a device it binds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrmSupport {
    /// Not a DRM driver (vfio-pci, snd_hda_intel; nvidia without nvidia-drm, as the catalogue
    /// has it).
    #[default]
    None,
    /// A card node only (`card<N>`): a KMS-only driver such as ast or bochs (no render node:
    /// nothing for virgl to render with).
    Kms,
    /// A card node and a render node (`renderD<128+N>`): i915, amdgpu, nouveau, radeon.
    Render,
}

impl DrmSupport {
    pub fn is_none(&self) -> bool {
        *self == DrmSupport::None
    }
}

impl DriverSpec {
    /// The module name (`vfio_pci` for `vfio-pci`), `None` for a built-in driver.
    pub fn module_name(&self) -> Option<String> {
        if self.builtin {
            return None;
        }
        Some(
            self.module
                .clone()
                .unwrap_or_else(|| self.name.replace('-', "_")),
        )
    }
}

/// A module's dependencies (what `modprobe` loads first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    pub name: String,
    #[serde(default)]
    pub depends: Vec<String>,
}

/// A device registered with the mdev core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdevParentSpec {
    /// A PCI parent (`/sys/class/mdev_bus/<address>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PciAddress>,
    /// A virtual parent `/sys/devices/virtual/<name>/<name>` (the kernel's mbochs, mdpy, mtty).
    #[serde(default, rename = "virtual", skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    /// For a PCI parent: the driver the device must be bound to for the parent to register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The module that registers the parent (`nvidia_vgpu_vfio`, `mbochs`); default the PCI
    /// driver's module, or the virtual name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The mdev bus driver its devices bind to (`DRIVER=` of the mdev `bind` uevent);
    /// default `vfio_mdev` before kernel 5.16, the registering module after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdev_driver: Option<String>,
    /// A capacity shared by all types; each instance takes its type's `cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<u64>,
    /// Only one type may have instances at a time (NVIDIA's rule on one physical GPU).
    #[serde(default)]
    pub homogeneous: bool,
    /// The mdev core counts the instances (a driver without `get_available`, like mdpy, whose
    /// `max_instances` is the parent's): a create on a full parent fails with EUSERS in the
    /// core, not ENOSPC from the driver (seen on 6.1, tests/vm sharding scenario).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub core_counted: bool,
    pub types: Vec<MdevTypeSpec>,
}

impl MdevParentSpec {
    /// The `mdev_bus` name: the PCI address or the virtual name.
    pub fn name(&self) -> Option<String> {
        match (&self.device, &self.virtual_name) {
            (Some(a), None) => Some(a.to_string()),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        }
    }
}

/// One mdev type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdevTypeSpec {
    /// The directory name under `mdev_supported_types` (`nvidia-300`, `mbochs-small`).
    pub id: String,
    /// `name`; default the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absent means no `description` file (like mtty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "default_device_api")]
    pub device_api: String,
    /// Upper bound on instances of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Share of the parent's pool one instance takes.
    #[serde(default = "one_u64")]
    pub cost: u64,
}

fn default_device_api() -> String {
    "vfio-pci".to_owned()
}

fn one_u64() -> u64 {
    1
}

/// An active mediated device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdevSpec {
    pub uuid: Uuid,
    pub parent: String,
    #[serde(rename = "type")]
    pub type_id: String,
    /// Opened by a VM: `remove` fails with EBUSY.
    #[serde(default)]
    pub busy: bool,
}

/// A persistent mdevctl definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdevctlSpec {
    pub uuid: Uuid,
    pub parent: String,
    #[serde(rename = "type")]
    pub type_id: String,
    /// `auto` or `manual`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Ordered attribute list, written as mdevctl does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<BTreeMap<String, String>>,
}

fn default_start() -> String {
    "auto".to_owned()
}

impl MdevctlSpec {
    /// The JSON mdevctl writes to `etc/mdevctl.d/<parent>/<uuid>`.
    pub fn to_json(&self) -> String {
        let value = serde_json::json!({
            "mdev_type": self.type_id,
            "start": self.start,
            "attrs": self.attrs,
        });
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }
}

impl Fixture {
    /// Parses fixture text; `name` is used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Self, FixtureError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            FixtureError::Parse {
                file: name.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    /// Reads and parses a fixture file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FixtureError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            file: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// A bundled fixture by name (`runbook`, `workstation`, ...), from `fixtures/<name>.toml`.
    pub fn bundled(name: &str) -> Result<Self, FixtureError> {
        let (file, text) = BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, t)| (format!("fixtures/{n}.toml"), *t))
            .ok_or_else(|| FixtureError::Invalid {
                file: format!("fixtures/{name}.toml"),
                message: format!(
                    "no such bundled fixture (have: {})",
                    bundled_names().join(", ")
                ),
            })?;
        Self::parse(text, &file)
    }

    /// Serialises back to TOML (the generator uses this to write large hosts).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// Names of the fixtures shipped in `fixtures/`.
pub fn bundled_names() -> Vec<&'static str> {
    BUNDLED.iter().map(|(n, _)| *n).collect()
}

const BUNDLED: &[(&str, &str)] = &[
    ("runbook", include_str!("../fixtures/runbook.toml")),
    ("workstation", include_str!("../fixtures/workstation.toml")),
    (
        "nic-shared-group",
        include_str!("../fixtures/nic-shared-group.toml"),
    ),
    (
        "mdev-server-8gpu",
        include_str!("../fixtures/mdev-server-8gpu.toml"),
    ),
    (
        "hopper-sriov",
        include_str!("../fixtures/hopper-sriov.toml"),
    ),
    (
        "vm-reference",
        include_str!("../fixtures/vm-reference.toml"),
    ),
];

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let err = Fixture::parse("[kernel]\nrelease = \"6.1\"\nbogus = 1\n", "host.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("host.toml:3:1: "), "{err}");
        assert!(err.contains("bogus"), "{err}");
        let err = Fixture::parse(
            "[[pci]]\naddress = \"zz\"\nclass = 1\nid = \"1:2\"\n",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("a.toml:"), "{err}");
        assert!(err.contains("not a PCI address"), "{err}");
    }

    #[test]
    fn defaults_and_group_spec() {
        let f = Fixture::parse(
            "[[pci]]\naddress = \"0000:01:00.0\"\nclass = 0x030000\nid = \"10de:2204\"\n\
             [[pci]]\naddress = \"0000:01:00.1\"\nclass = 0x040300\nid = \"10de:1aef\"\n\
             iommu_group = 7\n",
            "t",
        )
        .unwrap();
        assert_eq!(f.kernel.iommu, IommuVendor::Intel);
        assert_eq!(f.devices[0].iommu_group, GroupSpec::Auto);
        assert_eq!(f.devices[0].numa_node, -1);
        assert_eq!(f.devices[1].iommu_group, GroupSpec::Number(7));
        assert_eq!(f.devices[0].ids().unwrap().vendor, 0x10de);
        let back = Fixture::parse(&f.to_toml().unwrap(), "back").unwrap();
        assert_eq!(back, f);
        assert!(Fixture::parse(
            "[[pci]]\naddress = \"0000:01:00.0\"\nclass = 1\nid = \"1:2\"\niommu_group = \"x\"\n",
            "t"
        )
        .is_err());
    }

    #[test]
    fn mdevctl_json_matches_mdevctl() {
        let spec = MdevctlSpec {
            uuid: Uuid::nil(),
            parent: "0000:41:00.0".into(),
            type_id: "nvidia-300".into(),
            start: "auto".into(),
            attrs: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&spec.to_json()).unwrap();
        assert_eq!(v["mdev_type"], "nvidia-300");
        assert_eq!(v["start"], "auto");
        assert!(v["attrs"].as_array().unwrap().is_empty());
    }
}
