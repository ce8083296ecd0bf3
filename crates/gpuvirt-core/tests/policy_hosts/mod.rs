//! Hand-built inventories for policy and planner tests: the runbook's host, a workstation
//! with a boot-VGA iGPU and a discrete card with HDMI audio, a GPU sharing its group with a
//! NIC, and an SR-IOV host.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use gpuvirt_core::iommu::assess_group;
use gpuvirt_core::{
    Gpu, GroupMember, Inventory, IommuGroup, Mdev, MdevParent, MdevType, NvidiaVfVgpu, PciAddress,
    PciFunction, PciIds, Sriov, VgpuTypeOffer,
};
use uuid::Uuid;

pub fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

pub fn function(
    address: &str,
    class: u32,
    ids: (u16, u16),
    name: Option<&str>,
    driver: Option<&str>,
    group: Option<u32>,
) -> PciFunction {
    let address = addr(address);
    PciFunction {
        address,
        sysfs_path: PathBuf::from(format!("devices/pci0000:00/{address}")),
        class,
        revision: Some(0xa1),
        ids: PciIds {
            vendor: ids.0,
            device: ids.1,
            subsystem_vendor: ids.0,
            subsystem_device: 0,
        },
        vendor_name: None,
        device_name: name.map(str::to_string),
        subsystem_name: None,
        driver: driver.map(str::to_string),
        driver_override: None,
        boot_vga: (class >> 8 == 0x0300).then_some(false),
        numa_node: None,
        reset_methods: vec!["flr".into()],
        modalias: None,
        kernel_modules: Vec::new(),
        iommu_group: group,
        sriov: None,
        physfn: None,
        nvidia_vgpu: None,
        drm: None,
    }
}

/// Recomputes GPUs (display functions and their slot companions) and IOMMU groups with
/// their viability, as the scanner would.
pub fn finish(inv: &mut Inventory) {
    inv.gpus.clear();
    for f in inv.functions.values().filter(|f| f.is_display()) {
        let companions = inv
            .functions
            .values()
            .filter(|o| o.address != f.address && o.address.slot() == f.address.slot())
            .map(|o| o.address)
            .collect();
        inv.gpus.insert(
            f.address,
            Gpu {
                address: f.address,
                companions,
            },
        );
    }
    let mut members: BTreeMap<u32, Vec<GroupMember>> = BTreeMap::new();
    for f in inv.functions.values() {
        if let Some(g) = f.iommu_group {
            members.entry(g).or_default().push(GroupMember {
                name: f.address.to_string(),
                pci_address: Some(f.address),
                class: Some(f.class),
                driver: f.driver.clone(),
            });
        }
    }
    inv.groups = members
        .into_iter()
        .map(|(id, members)| {
            let v = assess_group(id, &members);
            (
                id,
                IommuGroup {
                    id,
                    members,
                    viable: v.viable,
                    problems: v.problems,
                },
            )
        })
        .collect();
    inv.iommu.enabled = !inv.groups.is_empty();
    inv.iommu.group_count = inv.groups.len();
}

pub fn add(inv: &mut Inventory, f: PciFunction) {
    inv.functions.insert(f.address, f);
}

pub const V100: &str = "0000:41:00.0";
pub const CONSOLE: &str = "0000:03:00.0";

pub fn v100_type(id: &str, name: &str, available: u32) -> MdevType {
    MdevType {
        id: id.into(),
        name: Some(name.into()),
        description: Some("num_heads=1, frl_config=60, framebuffer=8192M".into()),
        device_api: Some("vfio-pci".into()),
        available_instances: Some(available),
    }
}

/// The runbook's host: V100 at 0000:41:00.0 (group 66, nvidia, mdev parent offering
/// nvidia-300 "GRID V100-8C" ×2 among others) and an ASPEED BMC VGA as boot/console GPU.
pub fn runbook() -> Inventory {
    let mut inv = Inventory::default();
    add(
        &mut inv,
        function(
            "0000:40:03.1",
            0x060400,
            (0x1022, 0x1483),
            None,
            Some("pcieport"),
            Some(65),
        ),
    );
    let mut v100 = function(
        V100,
        0x030200,
        (0x10de, 0x1db4),
        Some("GV100GL [Tesla V100 PCIe 16GB]"),
        Some("nvidia"),
        Some(66),
    );
    v100.ids.subsystem_device = 0x1214;
    v100.boot_vga = None;
    add(&mut inv, v100);
    let mut console = function(
        CONSOLE,
        0x030000,
        (0x1a03, 0x2000),
        Some("ASPEED Graphics Family"),
        Some("ast"),
        Some(20),
    );
    console.boot_vga = Some(true);
    add(&mut inv, console);
    inv.mdev_parents.insert(
        V100.into(),
        MdevParent {
            name: V100.into(),
            sysfs_path: PathBuf::from(format!("devices/pci0000:40/0000:40:03.1/{V100}")),
            pci_address: Some(addr(V100)),
            types: vec![
                v100_type("nvidia-299", "GRID V100-16C", 1),
                v100_type("nvidia-300", "GRID V100-8C", 2),
                v100_type("nvidia-301", "GRID V100-4C", 4),
                v100_type("nvidia-305", "GRID V100-8Q", 2),
            ],
        },
    );
    inv.modules.vfio = true;
    inv.modules.mdev = true;
    finish(&mut inv);
    inv
}

/// Adds an active mdev of `type_id` on the V100 and lowers every type's availability the way
/// a shared pool does (one 8 GB slice gone).
pub fn add_v100_mdev(inv: &mut Inventory, uuid: Uuid, type_id: &str) {
    inv.mdevs.insert(
        uuid,
        Mdev {
            uuid,
            parent: V100.into(),
            type_id: Some(type_id.into()),
            driver: Some("vfio_mdev".into()),
            iommu_group: Some(200 + inv.mdevs.len() as u32),
        },
    );
    let parent = inv.mdev_parents.get_mut(V100).unwrap();
    for t in &mut parent.types {
        if t.id == type_id {
            t.available_instances = t.available_instances.map(|n| n.saturating_sub(1));
        }
    }
}

pub const IGPU: &str = "0000:00:02.0";
pub const DGPU: &str = "0000:01:00.0";
pub const DGPU_AUDIO: &str = "0000:01:00.1";

/// A workstation: Intel iGPU as boot VGA, an NVIDIA card (nouveau) whose HDMI audio shares
/// its slot and group.
pub fn workstation() -> Inventory {
    let mut inv = Inventory::default();
    let mut igpu = function(
        IGPU,
        0x030000,
        (0x8086, 0x3e92),
        Some("CoffeeLake-S GT2 [UHD Graphics 630]"),
        Some("i915"),
        Some(0),
    );
    igpu.boot_vga = Some(true);
    add(&mut inv, igpu);
    add(
        &mut inv,
        function(
            DGPU,
            0x030000,
            (0x10de, 0x2204),
            Some("GA102 [GeForce RTX 3090]"),
            Some("nouveau"),
            Some(1),
        ),
    );
    add(
        &mut inv,
        function(
            DGPU_AUDIO,
            0x040300,
            (0x10de, 0x1aef),
            Some("GA102 High Definition Audio Controller"),
            Some("snd_hda_intel"),
            Some(1),
        ),
    );
    inv.modules.vfio = true;
    finish(&mut inv);
    inv
}

pub const SHARED_GPU: &str = "0000:05:00.0";
pub const SHARED_NIC: &str = "0000:06:00.0";

/// A GPU whose IOMMU group also holds a NIC in another slot, still on its host driver.
pub fn nic_shared_group() -> Inventory {
    let mut inv = Inventory::default();
    add(
        &mut inv,
        function(
            "0000:05:00.0",
            0x030000,
            (0x1002, 0x73bf),
            Some("Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"),
            Some("amdgpu"),
            Some(12),
        ),
    );
    add(
        &mut inv,
        function(
            "0000:06:00.0",
            0x020000,
            (0x8086, 0x10fb),
            Some("82599ES 10-Gigabit SFI/SFP+ Network Connection"),
            Some("ixgbe"),
            Some(12),
        ),
    );
    inv.modules.vfio = true;
    inv.modules.vfio_pci = true;
    finish(&mut inv);
    inv
}

pub const H100: &str = "0000:81:00.0";

/// A Hopper-class card (NVIDIA per-VF vGPU) with `vfs` VFs enabled out of 16; each VF
/// offers two types.
pub fn hopper(vfs: u8) -> Inventory {
    let mut inv = Inventory::default();
    let mut pf = function(
        H100,
        0x030200,
        (0x10de, 0x2331),
        Some("GH100 [H100 PCIe]"),
        Some("nvidia"),
        Some(40),
    );
    pf.boot_vga = None;
    let vf_addrs: Vec<PciAddress> = (0..vfs)
        .map(|i| PciAddress::new(0, 0x81, (i + 1) / 8, (i + 1) % 8))
        .collect();
    pf.sriov = Some(Sriov {
        total_vfs: 16,
        num_vfs: vfs as u32,
        vfs: vf_addrs.clone(),
    });
    add(&mut inv, pf);
    for (i, a) in vf_addrs.iter().enumerate() {
        let mut vf = function(
            &a.to_string(),
            0x030200,
            (0x10de, 0x2331),
            Some("GH100 [H100 PCIe]"),
            Some("nvidia"),
            Some(41 + i as u32),
        );
        vf.boot_vga = None;
        vf.physfn = Some(addr(H100));
        vf.nvidia_vgpu = Some(NvidiaVfVgpu {
            creatable_types: vec![
                VgpuTypeOffer {
                    id: 557,
                    name: "NVIDIA H100-8C".into(),
                },
                VgpuTypeOffer {
                    id: 558,
                    name: "NVIDIA H100-10C".into(),
                },
            ],
            current_type: None,
        });
        add(&mut inv, vf);
    }
    inv.modules.vfio = true;
    finish(&mut inv);
    inv
}

/// A plain SR-IOV GPU (non-NVIDIA) with 0 of 7 VFs enabled.
pub fn sriov_host() -> Inventory {
    let mut inv = Inventory::default();
    let mut pf = function(
        "0000:c1:00.0",
        0x038000,
        (0x1002, 0x7461),
        Some("Navi 32 [Radeon PRO V710]"),
        Some("amdgpu"),
        Some(70),
    );
    pf.sriov = Some(Sriov {
        total_vfs: 7,
        num_vfs: 0,
        vfs: Vec::new(),
    });
    add(&mut inv, pf);
    finish(&mut inv);
    inv
}
