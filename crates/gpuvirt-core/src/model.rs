//! The host model: immutable values describing PCI functions, GPUs, IOMMU groups and vGPUs.
//!
//! Values here are plain data (serde-serialisable, comparable) so that the daemon can diff two
//! snapshots and tests can compare a scan with a fixture's description.
//!
//! May import: gpuvirt-types (PciAddress, PciSlot), std, serde, uuid; nothing else of the
//! crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::host::sysfs::ScanWarning;
pub use gpuvirt_types::{PciAddress, PciAddressError, PciSlot};

/// Vendor, device and subsystem ids of a PCI function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
}

/// SR-IOV capability of a physical function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sriov {
    pub total_vfs: u32,
    pub num_vfs: u32,
    /// Enabled virtual functions (`virtfnN` links), in VF index order.
    pub vfs: Vec<PciAddress>,
}

/// NVIDIA's per-VF vGPU interface (`<VF>/nvidia/…`, vGPU 17+ on Ada/Hopper-class cards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvidiaVfVgpu {
    /// Type ids that can be created on this VF now (`creatable_vgpu_types`).
    pub creatable_types: Vec<VgpuTypeOffer>,
    /// The type id currently created on this VF, `None` when `current_vgpu_type` reads 0.
    pub current_type: Option<u32>,
}

/// One line of `creatable_vgpu_types`: a numeric id and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuTypeOffer {
    pub id: u32,
    pub name: String,
}

/// One PCI function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunction {
    pub address: PciAddress,
    /// Canonical device directory relative to the sysfs root, e.g.
    /// `devices/pci0000:40/0000:40:01.1/0000:41:00.0`.
    pub sysfs_path: PathBuf,
    /// 24-bit class code, e.g. `0x030200`.
    pub class: u32,
    pub revision: Option<u8>,
    pub ids: PciIds,
    /// From pci.ids when available.
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub subsystem_name: Option<String>,
    /// Bound driver (name of the `driver` link target), `None` when unbound.
    pub driver: Option<String>,
    /// `driver_override`, `None` when it reads `(null)`.
    pub driver_override: Option<String>,
    /// `boot_vga`, present only on VGA-class functions.
    pub boot_vga: Option<bool>,
    pub numa_node: Option<i32>,
    /// `reset_method` words, empty when the attribute is absent (no reset available).
    pub reset_methods: Vec<String>,
    pub modalias: Option<String>,
    /// Candidate kernel modules resolved through `modules.alias` (what `lspci -k` calls
    /// "Kernel modules").
    pub kernel_modules: Vec<String>,
    pub iommu_group: Option<u32>,
    pub sriov: Option<Sriov>,
    /// For a virtual function: its physical function.
    pub physfn: Option<PciAddress>,
    pub nvidia_vgpu: Option<NvidiaVfVgpu>,
    /// The DRM nodes its driver registered (`drm/card*`, `drm/renderD*`); `None` when it has
    /// none (no DRM driver bound, e.g. on vfio-pci).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drm: Option<DrmNodes>,
}

/// A PCI function's DRM nodes: what a DRM driver registered under its sysfs directory
/// (`<device>/drm/card1`, `<device>/drm/renderD129`) as `/dev/dri` paths, and udev's stable
/// `/dev/dri/by-path/pci-<address>-card` and `-render` names where those links exist under
/// the root and point at the same node.
///
/// The minors (`card1`, `renderD129`) follow probe order and can change from one boot (or
/// rebind) to the next; the by-path names follow the PCI address and do not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrmNodes {
    /// The primary (KMS) node, e.g. `/dev/dri/card1`.
    pub card: Option<String>,
    /// The render node, e.g. `/dev/dri/renderD129`; `None` for a KMS-only driver (ast,
    /// bochs), which cannot render for a guest.
    pub render: Option<String>,
    /// `/dev/dri/by-path/pci-<address>-card`, when udev made it.
    pub card_by_path: Option<String>,
    /// `/dev/dri/by-path/pci-<address>-render`, when udev made it.
    pub render_by_path: Option<String>,
}

impl DrmNodes {
    /// The render node a VM definition should name: the by-path name where udev made one
    /// (stable across boots and rebinds), else the minor's path.
    pub fn preferred_render(&self) -> Option<&str> {
        self.render_by_path.as_deref().or(self.render.as_deref())
    }
}

impl PciFunction {
    /// Display controllers (class 0x03xxxx) are GPUs.
    pub fn is_display(&self) -> bool {
        self.class >> 16 == 0x03
    }

    /// PCI-to-PCI bridges (class 0x0604xx) are ignored by group viability.
    pub fn is_bridge(&self) -> bool {
        self.class >> 8 == 0x0604
    }
}

/// A GPU: a display-class function and the other functions of its slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub address: PciAddress,
    /// The other functions of the same slot (HDMI audio, USB-C controller, …), sorted.
    pub companions: Vec<PciAddress>,
}

/// Whether the host has a working IOMMU, and the evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuStatus {
    pub enabled: bool,
    /// Units under `/sys/class/iommu` (`dmar0`, `ivhd0`, …).
    pub units: Vec<String>,
    pub group_count: usize,
    /// IOMMU-related words on the kernel command line (`intel_iommu=on`, `iommu=pt`, …).
    pub cmdline_flags: Vec<String>,
    /// Human-readable reasons behind `enabled`, e.g. "no IOMMU groups in /sys/kernel/iommu_groups".
    pub reasons: Vec<String>,
}

/// A member of an IOMMU group as seen in `/sys/kernel/iommu_groups/N/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The entry name: a PCI address, or another device name (an mdev UUID, a platform device).
    pub name: String,
    pub pci_address: Option<PciAddress>,
    pub class: Option<u32>,
    pub driver: Option<String>,
}

/// An IOMMU group, every member and a passthrough viability verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuGroup {
    pub id: u32,
    pub members: Vec<GroupMember>,
    /// True when every non-bridge member is unbound or bound to a VFIO driver / pci-stub, or
    /// belongs to one card (a single slot), so the group can be handed to a VM as a whole.
    pub viable: bool,
    /// One sentence per problem, naming the member and its driver.
    pub problems: Vec<String>,
}

/// One mdev type a parent offers (`mdev_supported_types/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevType {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub device_api: Option<String>,
    pub available_instances: Option<u32>,
}

/// A device registered with the mdev core (`/sys/class/mdev_bus/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevParent {
    /// The `mdev_bus` entry name: a PCI address or a virtual device name (`mbochs`).
    pub name: String,
    pub sysfs_path: PathBuf,
    pub pci_address: Option<PciAddress>,
    pub types: Vec<MdevType>,
}

/// An active mediated device (`/sys/bus/mdev/devices/<uuid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mdev {
    pub uuid: Uuid,
    /// The parent's `mdev_bus` name.
    pub parent: String,
    /// Type id from the `mdev_type` link, `None` if it could not be read.
    pub type_id: Option<String>,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

/// Whether the VFIO/mdev kernel modules are loaded (`/sys/module/<name>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleState {
    pub vfio: bool,
    pub vfio_pci: bool,
    pub mdev: bool,
}

/// Everything gpuvirt knows about a host at one moment.
///
/// The inventory is GPU-scoped: `functions` and `groups` hold full records only for what
/// matters to GPUs (see [`crate::scan`]): display functions (and functions of unknown class),
/// the other functions of their slots, their SR-IOV VFs, mdev parents' functions, and every
/// member of those functions' (and mdevs') IOMMU groups. Every other PCI function is known only by address and class
/// (`pci_classes`), every other group only by id (`group_ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub kernel_release: Option<String>,
    /// Full records of the PCI functions that matter to GPUs.
    pub functions: BTreeMap<PciAddress, PciFunction>,
    /// Every PCI function of the host and its 24-bit class code, `None` when the class could
    /// not be read (such a function is kept in `functions`: it may be a GPU).
    #[serde(default)]
    pub pci_classes: BTreeMap<PciAddress, Option<u32>>,
    pub gpus: BTreeMap<PciAddress, Gpu>,
    pub iommu: IommuStatus,
    /// The IOMMU groups that matter to GPUs and mdevs, every member listed.
    pub groups: BTreeMap<u32, IommuGroup>,
    /// Every IOMMU group of the host (`iommu.group_count` is its size).
    #[serde(default)]
    pub group_ids: BTreeSet<u32>,
    pub mdev_parents: BTreeMap<String, MdevParent>,
    pub mdevs: BTreeMap<Uuid, Mdev>,
    pub modules: ModuleState,
    pub warnings: Vec<ScanWarning>,
    /// Names of NVIDIA per-VF vGPU types remembered from earlier reads, by card model: the
    /// driver names a type only while one more can be created (see the `vgpu_names` module).
    /// A scan leaves it empty; gpuvirtd fills it from its state directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vgpu_type_names: VgpuTypeNames,
}

/// NVIDIA vGPU type id → name, per card model key (`10de:2330`, see `vgpu_names::model_key`).
pub type VgpuTypeNames = BTreeMap<String, BTreeMap<u32, String>>;
