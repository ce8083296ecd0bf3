//! Inventory scans of small hosts built in the real sysfs layout.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use gpuvirt_core::testing::{PciDev, TreeBuilder, TypeSpec};
use gpuvirt_core::{Inventory, PciAddress, RefreshTarget, Root, Scanner};

const RELEASE: &str = "6.1.0-28-amd64";

const PCI_IDS: &str = "\
# sample of pci.ids
1022  Advanced Micro Devices, Inc. [AMD]
\t1483  Starship/Matisse GPP Bridge
10de  NVIDIA Corporation
\t1db4  GV100GL [Tesla V100 PCIe 16GB]
\t\t10de 1214  Tesla V100 PCIe 16GB
\t2330  GH100 [H100 SXM5 80GB]
15b3  Mellanox Technologies
\t101d  MT2892 Family [ConnectX-6 Dx]
C 02  Network controller
\t00  Ethernet controller
";

const MODULES_ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v000010DEd*sv*sd*bc03sc02i00* nvidiafb
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000015B3d0000101Dsv*sd*bc*sc*i* mlx5_core
alias pci:v*d*sv*sd*bc06sc04i00* shpchp
alias usb:v*p*d*dc*dsc*dp*ic09isc*ip*in* usbcore
";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn v100() -> PciDev {
    PciDev::new(
        "0000:41:00.0",
        "pci0000:40/0000:40:03.1",
        0x030200,
        0x10de,
        0x1db4,
    )
    .subsystem(0x10de, 0x1214)
    .driver("nvidia")
    .group(66)
}

fn bridge() -> PciDev {
    PciDev::new("0000:40:03.1", "pci0000:40", 0x060400, 0x1022, 0x1483)
        .driver("pcieport")
        .group(65)
}

fn v100_types() -> Vec<TypeSpec> {
    vec![
        TypeSpec::new(
            "nvidia-299",
            "GRID V100-4C",
            Some("num_heads=1, frl_config=60, framebuffer=4096M, max_resolution=4096x2160, max_instance=4"),
            4,
        ),
        TypeSpec::new(
            "nvidia-300",
            "GRID V100-8C",
            Some("num_heads=1, frl_config=60, framebuffer=8192M, max_resolution=4096x2160, max_instance=2"),
            2,
        ),
    ]
}

/// The runbook's host: a V100 at 0000:41:00.0 in IOMMU group 66 bound to nvidia, with vGPU types.
fn runbook_host(t: &TreeBuilder) {
    t.kernel_release(RELEASE);
    t.pci_ids(PCI_IDS);
    t.modules_alias(RELEASE, MODULES_ALIAS);
    t.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt");
    t.iommu_unit("dmar0");
    t.module("vfio");
    t.module("vfio_pci");
    t.module("mdev");
    t.pci(&bridge());
    t.pci(&v100());
    t.mdev_parent("0000:41:00.0", v100().sysfs_path(), &v100_types());
}

fn scanner(dir: &Path) -> Scanner {
    Scanner::new(Root::new(dir))
}

#[test]
fn runbook_v100_host() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    let inv = scanner(dir.path()).scan();

    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);
    assert_eq!(inv.kernel_release.as_deref(), Some(RELEASE));
    let gpu = &inv.functions[&addr("0000:41:00.0")];
    assert_eq!(
        gpu.sysfs_path,
        Path::new("devices/pci0000:40/0000:40:03.1/0000:41:00.0")
    );
    assert_eq!(gpu.class, 0x030200);
    assert_eq!(gpu.ids.vendor, 0x10de);
    assert_eq!(gpu.ids.device, 0x1db4);
    assert_eq!(gpu.ids.subsystem_device, 0x1214);
    assert_eq!(gpu.revision, Some(0xa1));
    assert_eq!(gpu.vendor_name.as_deref(), Some("NVIDIA Corporation"));
    assert_eq!(
        gpu.device_name.as_deref(),
        Some("GV100GL [Tesla V100 PCIe 16GB]")
    );
    assert_eq!(gpu.subsystem_name.as_deref(), Some("Tesla V100 PCIe 16GB"));
    assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
    assert_eq!(gpu.driver_override, None);
    assert_eq!(gpu.boot_vga, None, "boot_vga exists only on VGA class");
    assert_eq!(gpu.numa_node, Some(-1));
    assert_eq!(gpu.reset_methods, ["flr", "bus"]);
    assert_eq!(
        gpu.modalias.as_deref(),
        Some("pci:v000010DEd00001DB4sv000010DEsd00001214bc03sc02i00")
    );
    // What the runbook's `lspci -v` shows: "Kernel modules: nvidiafb, nouveau".
    assert_eq!(gpu.kernel_modules, ["nvidiafb", "nouveau"]);
    assert_eq!(gpu.iommu_group, Some(66));
    assert_eq!(gpu.sriov, None);

    assert_eq!(inv.gpus.len(), 1);
    assert!(inv.gpus[&addr("0000:41:00.0")].companions.is_empty());

    let group = &inv.groups[&66];
    assert_eq!(group.members.len(), 1);
    assert_eq!(group.members[0].name, "0000:41:00.0");
    assert_eq!(group.members[0].driver.as_deref(), Some("nvidia"));
    assert!(group.viable);

    assert!(inv.iommu.enabled);
    assert_eq!(inv.iommu.units, ["dmar0"]);
    assert_eq!(inv.iommu.group_count, 2);
    assert_eq!(inv.iommu.cmdline_flags, ["intel_iommu=on", "iommu=pt"]);

    let parent = &inv.mdev_parents["0000:41:00.0"];
    assert_eq!(parent.pci_address, Some(addr("0000:41:00.0")));
    assert_eq!(parent.sysfs_path, gpu.sysfs_path);
    let t300 = parent.types.iter().find(|t| t.id == "nvidia-300").unwrap();
    assert_eq!(t300.name.as_deref(), Some("GRID V100-8C"));
    assert_eq!(t300.available_instances, Some(2));
    assert_eq!(t300.device_api.as_deref(), Some("vfio-pci"));
    assert!(t300
        .description
        .as_deref()
        .unwrap()
        .contains("max_instance=2"));

    assert!(inv.modules.vfio && inv.modules.vfio_pci && inv.modules.mdev);
    // The bridge shares nothing with the GPU: known by its class only, its group by its id.
    assert!(!inv.functions.contains_key(&addr("0000:40:03.1")));
    assert_eq!(inv.pci_classes[&addr("0000:40:03.1")], Some(0x060400));
    assert_eq!(inv.pci_classes[&addr("0000:41:00.0")], Some(0x030200));
    assert!(!inv.groups.contains_key(&65));
    assert_eq!(inv.group_ids.iter().copied().collect::<Vec<_>>(), [65, 66]);
}

#[test]
fn group_shared_with_a_nic_is_not_viable() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.pci(&v100());
    let nic = PciDev::new(
        "0000:42:00.0",
        "pci0000:40/0000:40:03.1",
        0x020000,
        0x15b3,
        0x101d,
    )
    .driver("mlx5_core")
    .group(66);
    t.pci(&nic);
    let inv = scanner(dir.path()).scan();
    let group = &inv.groups[&66];
    assert_eq!(group.members.len(), 2);
    assert!(!group.viable);
    // Only the NIC is named: the GPU moves with its own passthrough.
    assert_eq!(
        group.problems,
        ["0000:42:00.0 (Ethernet controller, mlx5_core) shares IOMMU group 66 and would stay on the host"]
    );
    let for_gpu =
        gpuvirt_core::iommu::assess_group_for_slot(66, &group.members, addr("0000:41:00.0").slot());
    assert_eq!(for_gpu.problems, group.problems);
}

#[test]
fn gpu_with_hdmi_audio_is_viable_and_has_a_companion() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    let igpu = PciDev::new("0000:00:02.0", "pci0000:00", 0x030000, 0x8086, 0x3e92)
        .driver("i915")
        .group(0);
    t.pci(&igpu);
    t.file(
        Path::new("sys").join(igpu.sysfs_path()).join("boot_vga"),
        "1\n",
    );
    let root_port = PciDev::new("0000:00:01.0", "pci0000:00", 0x060400, 0x8086, 0x1901)
        .driver("pcieport")
        .group(1);
    t.pci(&root_port);
    let gpu = PciDev::new(
        "0000:01:00.0",
        "pci0000:00/0000:00:01.0",
        0x030000,
        0x10de,
        0x1e84,
    )
    .driver("nvidia")
    .group(1);
    let audio = PciDev::new(
        "0000:01:00.1",
        "pci0000:00/0000:00:01.0",
        0x040300,
        0x10de,
        0x10f8,
    )
    .driver("snd_hda_intel")
    .group(1);
    t.pci(&gpu);
    t.pci(&audio);
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);
    let g = &inv.groups[&1];
    assert_eq!(g.members.len(), 3, "bridge, GPU and audio");
    assert!(g.viable, "{:?}", g.problems);
    assert!(g.problems.is_empty());
    assert_eq!(
        inv.gpus[&addr("0000:01:00.0")].companions,
        [addr("0000:01:00.1")]
    );
    assert_eq!(inv.gpus.len(), 2);
    assert_eq!(inv.functions[&addr("0000:00:02.0")].boot_vga, Some(true));
    assert_eq!(inv.functions[&addr("0000:01:00.0")].boot_vga, Some(false));
    assert_eq!(inv.functions[&addr("0000:01:00.1")].boot_vga, None);
}

#[test]
fn virtual_mdev_parents_and_an_active_mdev() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.module("mdev");
    t.mdev_parent(
        "mbochs",
        "devices/virtual/mbochs/mbochs",
        &[
            TypeSpec::new(
                "mbochs-1",
                "mbochs-small",
                Some("virtual display, 64 MB video memory"),
                3,
            ),
            TypeSpec::new(
                "mbochs-3",
                "mbochs-large",
                Some("virtual display, 192 MB video memory"),
                1,
            ),
        ],
    );
    t.mdev_parent(
        "mtty",
        "devices/virtual/mtty/mtty",
        &[TypeSpec::new("mtty-2", "Dual-port-serial", None, 12)],
    );
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    t.mdev(
        uuid,
        "devices/virtual/mbochs/mbochs",
        "mbochs-1",
        Some("vfio_mdev"),
        Some(12),
    );
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);

    let mbochs = &inv.mdev_parents["mbochs"];
    assert_eq!(mbochs.pci_address, None);
    assert_eq!(
        mbochs.sysfs_path,
        Path::new("devices/virtual/mbochs/mbochs")
    );
    assert_eq!(mbochs.types.len(), 2);
    assert_eq!(mbochs.types[0].id, "mbochs-1");
    assert_eq!(mbochs.types[0].available_instances, Some(3));
    let mtty = &inv.mdev_parents["mtty"].types[0];
    assert_eq!(mtty.name.as_deref(), Some("Dual-port-serial"));
    assert_eq!(mtty.description, None);
    assert_eq!(mtty.device_api.as_deref(), Some("vfio-pci"));

    let m = &inv.mdevs[&uuid.parse().unwrap()];
    assert_eq!(m.parent, "mbochs");
    assert_eq!(m.type_id.as_deref(), Some("mbochs-1"));
    assert_eq!(m.driver.as_deref(), Some("vfio_mdev"));
    assert_eq!(m.iommu_group, Some(12));
    let g = &inv.groups[&12];
    assert_eq!(g.members[0].name, uuid);
    assert_eq!(g.members[0].pci_address, None);
    assert_eq!(g.members[0].driver.as_deref(), Some("vfio_mdev"));
    assert!(g.viable);
}

fn h100_pf() -> PciDev {
    let mut pf = PciDev::new(
        "0000:c1:00.0",
        "pci0000:c0/0000:c0:01.1",
        0x030200,
        0x10de,
        0x2330,
    )
    .driver("nvidia")
    .group(80);
    pf.sriov_totalvfs = Some(16);
    pf
}

fn h100_vf(function: u8, group: u32) -> PciDev {
    PciDev::new(
        &format!("0000:c1:00.{function}"),
        "pci0000:c0/0000:c0:01.1",
        0x030200,
        0x10de,
        0x2330,
    )
    .driver("nvidia")
    .group(group)
}

#[test]
fn sriov_links_and_nvidia_per_vf_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.pci_ids(PCI_IDS);
    let pf = h100_pf();
    t.pci(&pf);
    let vf1 = h100_vf(4, 81);
    let vf2 = h100_vf(5, 82);
    t.pci(&vf1);
    t.pci(&vf2);
    t.link_vf(&pf, &vf1, 0, 2);
    t.link_vf(&pf, &vf2, 1, 2);
    t.nvidia_vf(
        &vf1,
        &[(557, "NVIDIA H100XM-1-10C"), (558, "NVIDIA H100XM-2-20C")],
        557,
    );
    t.nvidia_vf(&vf2, &[(557, "NVIDIA H100XM-1-10C")], 0);
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);

    let s = inv.functions[&pf.address].sriov.clone().unwrap();
    assert_eq!(s.total_vfs, 16);
    assert_eq!(s.num_vfs, 2);
    assert_eq!(s.vfs, [vf1.address, vf2.address]);
    assert_eq!(inv.functions[&vf1.address].physfn, Some(pf.address));
    let nv = inv.functions[&vf1.address].nvidia_vgpu.clone().unwrap();
    assert_eq!(nv.current_type, Some(557));
    assert_eq!(nv.creatable_types.len(), 2);
    assert_eq!(nv.creatable_types[1].id, 558);
    assert_eq!(nv.creatable_types[1].name, "NVIDIA H100XM-2-20C");
    let nv2 = inv.functions[&vf2.address].nvidia_vgpu.clone().unwrap();
    assert_eq!(nv2.current_type, None);
    assert_eq!(inv.functions[&pf.address].nvidia_vgpu, None);
    assert_eq!(
        inv.functions[&pf.address].device_name.as_deref(),
        Some("GH100 [H100 SXM5 80GB]")
    );
}

#[test]
fn disabled_iommu_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet");
    t.pci(&PciDev::new("0000:41:00.0", "pci0000:40", 0x030200, 0x10de, 0x1db4).driver("nvidia"));
    let inv = scanner(dir.path()).scan();
    assert!(!inv.iommu.enabled);
    assert_eq!(inv.iommu.group_count, 0);
    assert!(inv.iommu.cmdline_flags.is_empty());
    assert_eq!(inv.iommu.reasons.len(), 1);
    assert!(
        inv.iommu.reasons[0].starts_with("no IOMMU units in /sys/class/iommu and no groups"),
        "{:?}",
        inv.iommu.reasons
    );
    assert!(inv.iommu.reasons[0].contains("intel_iommu=on"));
    assert_eq!(inv.functions[&addr("0000:41:00.0")].iommu_group, None);

    t.cmdline("ro intel_iommu=off");
    let inv = scanner(dir.path()).scan();
    assert!(inv.iommu.reasons[0].contains("disables the IOMMU (intel_iommu=off)"));
}

#[test]
fn absent_databases_give_ids_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.pci(&v100());
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);
    let f = &inv.functions[&addr("0000:41:00.0")];
    assert_eq!(f.vendor_name, None);
    assert!(f.kernel_modules.is_empty());
    assert_eq!(inv.kernel_release, None);
}

#[test]
fn hwdata_location_and_kernel_release_from_lib_modules() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.file("usr/share/hwdata/pci.ids", PCI_IDS);
    t.modules_alias(RELEASE, MODULES_ALIAS);
    t.pci(&v100());
    let s = scanner(dir.path());
    assert_eq!(s.kernel_release(), Some(RELEASE));
    let inv = s.scan();
    let f = &inv.functions[&addr("0000:41:00.0")];
    assert_eq!(f.vendor_name.as_deref(), Some("NVIDIA Corporation"));
    assert_eq!(f.kernel_modules, ["nvidiafb", "nouveau"]);
}

#[test]
fn ids_fall_back_to_attribute_files_without_uevent_keys() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    let mut dev = v100();
    dev.uevent_ids = false;
    t.pci(&dev);
    let with_uevent = {
        let d2 = tempfile::tempdir().unwrap();
        TreeBuilder::new(d2.path()).pci(&v100());
        scanner(d2.path()).scan()
    };
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);
    let a = &inv.functions[&dev.address];
    let b = &with_uevent.functions[&dev.address];
    assert_eq!(a.class, b.class);
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.modalias, b.modalias);
    assert_eq!(a.driver, b.driver);
}

#[test]
fn malformed_attributes_warn_and_the_device_is_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    let mut dev = v100();
    dev.uevent_ids = false;
    let ddir = t.pci(&dev);
    t.file(ddir.join("class"), "zz\n");
    t.file(ddir.join("numa_node"), "abc\n");
    t.file(ddir.join("driver_override"), [0xff, 0xfe, b'\n']);
    t.file(ddir.join("revision"), "");
    t.file(ddir.join("reset_method"), vec![b'x'; 70 * 1024]);
    t.link(
        ddir.join("iommu_group"),
        "sys/kernel/iommu_groups/notanumber",
    );
    t.file("sys/bus/pci/devices/garbage", "");
    let inv = scanner(dir.path()).scan();
    let f = &inv.functions[&dev.address];
    assert_eq!(f.class, 0);
    assert_eq!(f.ids.vendor, 0x10de, "what could be read is reported");
    assert_eq!(f.driver.as_deref(), Some("nvidia"));
    assert_eq!(f.numa_node, None);
    assert_eq!(f.driver_override, None);
    assert_eq!(f.revision, None);
    assert!(f.reset_methods.is_empty());
    assert_eq!(f.iommu_group, None);
    let warned = |file: &str| {
        inv.warnings
            .iter()
            .find(|w| w.path.file_name().and_then(|n| n.to_str()) == Some(file))
            .unwrap_or_else(|| panic!("no warning about {file}: {:#?}", inv.warnings))
            .message
            .clone()
    };
    assert_eq!(warned("class"), "'zz' is not a hexadecimal class code");
    assert_eq!(warned("numa_node"), "'abc' is not a NUMA node number");
    assert_eq!(warned("driver_override"), "the file is not UTF-8 text");
    assert_eq!(warned("revision"), "the file is empty");
    assert_eq!(
        warned("reset_method"),
        "the file is larger than 65536 bytes"
    );
    assert!(warned("iommu_group").contains("not a group number"));
    assert!(warned("garbage").contains("not a PCI address"));
    let class_path = inv
        .warnings
        .iter()
        .find(|w| w.message.starts_with("'zz'"))
        .unwrap()
        .path
        .clone();
    assert_eq!(
        class_path,
        Path::new("sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/class")
    );
}

#[test]
fn malformed_uevent_and_mdev_attributes_warn() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    let ddir = t.pci(&v100());
    t.file(
        ddir.join("uevent"),
        "DRIVER=nvidia\nPCI_CLASS=nothex\nPCI_ID=10DE\nno equals sign\n",
    );
    let mut types = v100_types();
    types[1].available_instances = 0;
    t.mdev_parent("0000:41:00.0", v100().sysfs_path(), &types);
    t.file(
        ddir.join("mdev_supported_types/nvidia-300/available_instances"),
        "lots\n",
    );
    t.remove(ddir.join("mdev_supported_types/nvidia-299/name"));
    let inv = scanner(dir.path()).scan();
    let f = &inv.functions[&addr("0000:41:00.0")];
    assert_eq!(f.class, 0x030200, "falls back to the class file");
    assert_eq!(f.ids.device, 0x1db4, "falls back to the device file");
    assert!(inv
        .warnings
        .iter()
        .any(|w| w.message == "PCI_CLASS='nothex' is malformed"));
    let parent = &inv.mdev_parents["0000:41:00.0"];
    assert_eq!(parent.types[0].name, None);
    assert_eq!(parent.types[1].available_instances, None);
    assert!(inv.warnings.iter().any(|w| w.path
        == Path::new("sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-299/name")
        && w.message == "the file is missing"));
    assert!(inv
        .warnings
        .iter()
        .any(|w| w.message == "'lots' is not an instance count"));
}

#[test]
fn a_vanished_device_is_skipped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.pci(&v100());
    let gone = PciDev::new(
        "0000:42:00.0",
        "pci0000:40/0000:40:03.1",
        0x020000,
        0x15b3,
        0x101d,
    );
    t.pci(&gone);
    // Unplugged between the directory listing and the read: the bus link dangles.
    t.remove(Path::new("sys").join(gone.sysfs_path()));
    let inv = scanner(dir.path()).scan();
    assert!(inv.warnings.is_empty(), "{:#?}", inv.warnings);
    assert_eq!(inv.functions.len(), 1);
}

/// Refreshes `target` and checks the inventory equals a fresh scan.
fn refresh_matches_scan(s: &Scanner, inv: &mut Inventory, targets: &[RefreshTarget]) {
    for target in targets {
        let before = inv.clone();
        let (stats, scope) = s.refresh_scoped(inv, target);
        assert!(
            stats.total() < 80,
            "refresh of {target:?} took {stats:?}: not O(affected devices)"
        );
        assert_scope_covers(&before, inv, &scope, target);
    }
    assert_same(inv, &s.scan(), &format!("refresh of {targets:?}"));
}

/// Every per-device entry that a refresh changed lies inside the scope it reported (a
/// consumer compares only those).
fn assert_scope_covers(
    before: &Inventory,
    after: &Inventory,
    scope: &gpuvirt_core::RefreshScope,
    target: &RefreshTarget,
) {
    if let Some(outside) = scope.first_uncovered(before, after) {
        panic!("refresh of {target:?} changed {outside} outside its scope {scope:?}");
    }
}

/// Equality with a readable first difference (the Debug form of a whole host is unreadable).
fn assert_same(refreshed: &Inventory, fresh: &Inventory, what: &str) {
    if refreshed == fresh {
        return;
    }
    let a = serde_json::to_string_pretty(refreshed).unwrap();
    let b = serde_json::to_string_pretty(fresh).unwrap();
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = al
        .iter()
        .zip(&bl)
        .position(|(x, y)| x != y)
        .unwrap_or(al.len().min(bl.len()));
    let from = at.saturating_sub(8);
    panic!(
        "{what} differs from a fresh scan at line {at}:\n--- refreshed\n{}\n--- fresh\n{}",
        al[from..(at + 8).min(al.len())].join("\n"),
        bl[from..(at + 8).min(bl.len())].join("\n")
    );
}

/// A batch of mdev events (a policy's creations) reads their parent once: the inventory is
/// the one a refresh per mdev gives, and a fresh scan, for the parent's re-read fewer.
#[test]
fn a_batch_of_mdevs_reads_their_parent_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    let s = scanner(dir.path());
    let before = s.scan();
    let gpu = v100();
    let uuids: Vec<String> = (0..8u32)
        .map(|i| format!("bc127e23-aaaa-4d06-a7aa-88db2dd538{i:02x}"))
        .collect();
    for (i, uuid) in (0u32..).zip(&uuids) {
        t.mdev(
            uuid,
            gpu.sysfs_path(),
            "nvidia-300",
            Some("vfio_mdev"),
            Some(300 + i),
        );
    }
    let mut types = v100_types();
    types[0].available_instances = 8;
    for ty in &types {
        t.mdev_type(&Path::new("sys").join(gpu.sysfs_path()), ty);
    }
    let targets: Vec<RefreshTarget> = uuids
        .iter()
        .map(|u| RefreshTarget::Mdev(u.parse().unwrap()))
        .collect();

    let mut one_by_one = before.clone();
    let mut sequential = gpuvirt_core::ScanStats::default();
    for target in &targets {
        sequential.add(&s.refresh_scoped(&mut one_by_one, target).0);
    }
    let mut batched = before.clone();
    let (stats, scope) = s.refresh_batch(&mut batched, &targets);
    assert_scope_covers(&before, &batched, &scope, &targets[0]);
    assert_same(&batched, &s.scan(), "a batch of 8 mdevs");
    assert_eq!(batched, one_by_one);
    assert_eq!(batched.mdevs.len(), 8);
    assert_eq!(
        batched.mdev_parents["0000:41:00.0"].types[0].available_instances,
        Some(8)
    );
    // What one re-read of the parent's instance counts costs.
    let parent = s
        .refresh_scoped(
            &mut batched.clone(),
            &RefreshTarget::MdevInstances("0000:41:00.0".into()),
        )
        .0;
    assert!(parent.total() > 0);
    assert_eq!(
        stats.total(),
        sequential.total() - 7 * parent.total(),
        "batch {stats:?}, one by one {sequential:?}, one parent read {parent:?}"
    );
}

/// The events of one creation (the mdev's `add`, its vfio group's, `bind`) name the mdev, its
/// parent's instance counts and its new group: the batch reads the parent and the group once,
/// as the mdev's own step does, not again for the targets that name them.
#[test]
fn one_creations_events_read_the_parent_and_group_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    let s = scanner(dir.path());
    let before = s.scan();
    let gpu = v100();
    let uuid = "bc127e23-aaaa-4d06-a7aa-88db2dd538ff";
    t.mdev(
        uuid,
        gpu.sysfs_path(),
        "nvidia-300",
        Some("vfio_mdev"),
        Some(300),
    );
    let mut types = v100_types();
    types[0].available_instances = 1;
    for ty in &types {
        t.mdev_type(&Path::new("sys").join(gpu.sysfs_path()), ty);
    }
    let mdev = RefreshTarget::Mdev(uuid.parse().unwrap());
    let targets = [
        mdev.clone(),
        RefreshTarget::MdevInstances("0000:41:00.0".into()),
        RefreshTarget::IommuGroup(300),
    ];
    let mut batched = before.clone();
    let (stats, scope) = s.refresh_batch(&mut batched, &targets);
    for target in &targets {
        assert_scope_covers(&before, &batched, &scope, target);
    }
    assert_same(&batched, &s.scan(), "one creation's batch");
    // The mdev alone reads its parent's instances and its group: the other two add nothing.
    let mut alone = before.clone();
    let (mdev_only, _) = s.refresh_batch(&mut alone, std::slice::from_ref(&mdev));
    assert_eq!(alone, batched);
    assert_eq!(stats, mdev_only, "the batch read the parent or group twice");
}

#[test]
fn refresh_of_touched_targets_equals_a_fresh_scan() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    let nic = PciDev::new(
        "0000:42:00.0",
        "pci0000:40/0000:40:03.1",
        0x020000,
        0x15b3,
        0x101d,
    )
    .driver("mlx5_core")
    .group(66);
    t.pci(&nic);
    // Filler so that a rescan would be visibly more expensive than a refresh.
    for i in 0..40u8 {
        let d = PciDev::new(
            &format!("0000:90:{:02x}.{}", i / 8, i % 8),
            "pci0000:90",
            0x010802,
            0x144d,
            0xa824,
        )
        .driver("nvme")
        .group(200 + u32::from(i));
        t.pci(&d);
    }
    let s = scanner(dir.path());
    let mut inv = s.scan();
    let (_, full) = s.scan_with_stats();
    assert!(!inv.groups[&66].viable);

    // Unbinding the NIC makes group 66 viable.
    t.unbind(&nic);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(nic.address)]);
    assert!(inv.groups[&66].viable);
    assert_eq!(inv.functions[&nic.address].driver, None);

    // Rebinding the GPU to vfio-pci with an override.
    let gpu = v100();
    t.unbind(&gpu);
    t.file(
        Path::new("sys")
            .join(gpu.sysfs_path())
            .join("driver_override"),
        "vfio-pci\n",
    );
    t.bind(&gpu, "vfio-pci");
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(gpu.address)]);
    assert_eq!(
        inv.functions[&gpu.address].driver_override.as_deref(),
        Some("vfio-pci")
    );

    // Creating an mdev changes its parent's available instances and adds a group.
    let uuid = "bc127e23-aaaa-4d06-a7aa-88db2dd538e0";
    let mut types = v100_types();
    types[1].available_instances = 1;
    types[0].available_instances = 0;
    for ty in &types {
        t.mdev_type(&Path::new("sys").join(gpu.sysfs_path()), ty);
    }
    t.mdev(
        uuid,
        gpu.sysfs_path(),
        "nvidia-300",
        Some("vfio_mdev"),
        Some(300),
    );
    let target = RefreshTarget::Mdev(uuid.parse().unwrap());
    let stats = s.refresh_with_stats(&mut inv, &target);
    assert!(stats.total() * 4 < full.total(), "{stats:?} vs {full:?}");
    assert_eq!(inv, s.scan());
    assert_eq!(
        inv.mdev_parents["0000:41:00.0"].types[1].available_instances,
        Some(1)
    );
    assert_eq!(inv.groups[&300].members[0].name, uuid);

    // Removing it again.
    t.remove_mdev(uuid, gpu.sysfs_path(), Some(300));
    for ty in &v100_types() {
        t.mdev_type(&Path::new("sys").join(gpu.sysfs_path()), ty);
    }
    refresh_matches_scan(&s, &mut inv, &[target]);
    assert!(inv.mdevs.is_empty());
    assert!(!inv.groups.contains_key(&300));

    // A PF enables a VF: the VF's refresh updates the PF's links and counts too.
    let pf = h100_pf();
    t.pci(&pf);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(pf.address)]);
    let vf1 = h100_vf(4, 81);
    t.pci(&vf1);
    t.link_vf(&pf, &vf1, 0, 1);
    t.nvidia_vf(&vf1, &[(557, "NVIDIA H100XM-1-10C")], 0);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(vf1.address)]);
    assert_eq!(
        inv.functions[&pf.address].sriov.as_ref().unwrap().vfs,
        [vf1.address]
    );
    let vf2 = h100_vf(5, 82);
    t.pci(&vf2);
    t.link_vf(&pf, &vf2, 1, 2);
    t.nvidia_vf(&vf2, &[(557, "NVIDIA H100XM-1-10C")], 0);
    // Only the PF's change is announced: the new VF is found through its virtfn link.
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(pf.address)]);
    assert!(inv.functions.contains_key(&vf2.address));

    // Creating a vGPU on one VF changes what its sibling can create.
    t.nvidia_vf(&vf1, &[(557, "NVIDIA H100XM-1-10C")], 557);
    t.nvidia_vf(&vf2, &[], 0);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(vf1.address)]);
    assert!(inv.functions[&vf2.address]
        .nvidia_vgpu
        .as_ref()
        .unwrap()
        .creatable_types
        .is_empty());

    // Hot-unplug of the NIC: gone from the functions and from group 66.
    t.remove_pci(&nic);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(nic.address)]);
    assert!(!inv.functions.contains_key(&nic.address));
    assert_eq!(inv.groups[&66].members.len(), 1);

    // A new GPU and its audio function arrive (two uevents).
    let gpu2 = PciDev::new(
        "0000:43:00.0",
        "pci0000:40/0000:40:03.1",
        0x030000,
        0x10de,
        0x1e84,
    )
    .driver("nouveau")
    .group(67);
    let audio2 = PciDev::new(
        "0000:43:00.1",
        "pci0000:40/0000:40:03.1",
        0x040300,
        0x10de,
        0x10f8,
    )
    .group(67);
    t.pci(&gpu2);
    t.pci(&audio2);
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::Pci(gpu2.address),
            RefreshTarget::Pci(audio2.address),
        ],
    );
    assert_eq!(inv.gpus[&gpu2.address].companions, [audio2.address]);

    // An attribute turns malformed, then is fixed: the warning comes and goes.
    let ov = Path::new("sys").join(gpu2.sysfs_path()).join("numa_node");
    t.file(&ov, "bogus\n");
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(gpu2.address)]);
    assert_eq!(inv.warnings.len(), 1);
    t.file(&ov, "0\n");
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(gpu2.address)]);
    assert!(inv.warnings.is_empty());

    // The mdev parent unregisters (driver unbound) and the modules go.
    t.remove("sys/class/mdev_bus/0000:41:00.0");
    t.remove("sys/module/vfio_pci");
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::MdevParent("0000:41:00.0".into()),
            RefreshTarget::Modules,
        ],
    );
    assert!(inv.mdev_parents.is_empty());
    assert!(!inv.modules.vfio_pci);

    // Both functions go; the group goes with them.
    t.remove_pci(&gpu2);
    t.remove_pci(&audio2);
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::Pci(gpu2.address),
            RefreshTarget::Pci(audio2.address),
            RefreshTarget::IommuGroup(67),
        ],
    );
    assert!(!inv.groups.contains_key(&67));
    assert!(!inv.gpus.contains_key(&gpu2.address));

    // A member joins an existing group without a PCI event of its own (group refresh only):
    // the group lists it by name even though the function is not yet in the inventory.
    t.link(
        "sys/kernel/iommu_groups/66/devices/0000:44:00.0",
        "sys/devices/pci0000:40/0000:44:00.0",
    );
    t.file("sys/devices/pci0000:40/0000:44:00.0/uevent", "");
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::IommuGroup(66)]);
    assert_eq!(inv.groups[&66].members.len(), 2);

    s.refresh(&mut inv, &RefreshTarget::All);
    assert_same(&inv, &s.scan(), "a full refresh");
}

#[test]
fn refresh_cost_does_not_grow_with_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    t.pci(&v100());
    for i in 0..400u32 {
        let d = PciDev::new(
            &format!("0000:{:02x}:{:02x}.0", 0x80 + i / 32, i % 32),
            "pci0000:80",
            0x020000,
            0x15b3,
            0x101d,
        )
        .driver("mlx5_core")
        .group(1000 + i);
        t.pci(&d);
    }
    let s = scanner(dir.path());
    let (mut inv, full) = s.scan_with_stats();
    assert_eq!(inv.pci_classes.len(), 401);
    // For the GPU: one link, one listing, uevent + five attributes, group link and the group's
    // listing; the host's directories, cmdline and module probes; one uevent read per NIC
    // (which shares nothing with it).
    assert!(
        full.total() <= 400 + 20,
        "{} file operations for 401 functions: {full:?}",
        full.total()
    );
    let one = s.refresh_with_stats(&mut inv, &RefreshTarget::Pci(addr("0000:41:00.0")));
    assert!(one.total() <= 16, "{one:?}");
    let nic = s.refresh_with_stats(&mut inv, &RefreshTarget::Pci(addr("0000:80:00.0")));
    assert!(nic.total() <= 16, "{nic:?}");
    assert_eq!(inv, s.scan());
}

/// A function out of scope costs exactly one file operation (its uevent), whatever it is.
#[test]
fn out_of_scope_functions_cost_one_uevent_read_each() {
    let build = |dir: &Path, nics: u32| {
        let t = TreeBuilder::new(dir);
        runbook_host(&t);
        for i in 0..nics {
            let nic = PciDev::new(
                &format!("0000:{:02x}:{:02x}.{}", 0x80 + i / 256, (i / 8) % 32, i % 8),
                "pci0000:80",
                0x020000,
                0x15b3,
                0x101d,
            )
            .driver("mlx5_core")
            .group(1000 + i);
            t.pci(&nic);
        }
    };
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    build(small.path(), 10);
    build(large.path(), 250);
    let (a, sa) = scanner(small.path()).scan_with_stats();
    let (b, sb) = scanner(large.path()).scan_with_stats();
    assert_eq!(sb.files_read - sa.files_read, 240);
    assert_eq!(
        (sb.links_read, sb.dirs_listed, sb.probes),
        (sa.links_read, sa.dirs_listed, sa.probes)
    );
    assert_eq!(a.functions, b.functions);
    assert_eq!(a.groups, b.groups);
    assert_eq!(b.iommu.group_count, 2 + 250);
    assert_eq!(b.pci_classes.len(), 2 + 250);
}

/// The scope: GPUs, their slots, VFs, mdev parents and every member of their groups are read
/// in full; the rest is known by class. Refreshes that move a function in or out of scope
/// (a NIC hot-added into a GPU's group, a GPU hot-added beside a known function, a GPU
/// removed) give what a fresh scan gives.
#[test]
fn scope_follows_gpus_and_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    let nvme = |a: &str, g: u32| {
        PciDev::new(a, "pci0000:90", 0x010802, 0x144d, 0xa824)
            .driver("nvme")
            .group(g)
    };
    let lone = nvme("0000:90:00.0", 300);
    t.pci(&lone);
    // A function in a slot that has no GPU yet.
    let audio = PciDev::new(
        "0000:43:00.1",
        "pci0000:40/0000:40:03.1",
        0x040300,
        0x10de,
        0x10f8,
    )
    .driver("snd_hda_intel")
    .group(68);
    t.pci(&audio);
    let s = scanner(dir.path());
    let mut inv = s.scan();
    assert_eq!(
        inv.functions.keys().copied().collect::<Vec<_>>(),
        [addr("0000:41:00.0")]
    );
    assert_eq!(inv.groups.keys().copied().collect::<Vec<_>>(), [66]);
    assert_eq!(inv.iommu.group_count, 4);

    // An NVMe drive is hot-added into the GPU's group: it is read in full and blamed.
    let shared = nvme("0000:90:01.0", 66);
    t.pci(&shared);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(shared.address)]);
    assert_eq!(
        inv.functions[&shared.address].driver.as_deref(),
        Some("nvme")
    );
    assert!(!inv.groups[&66].viable);
    assert_eq!(inv.iommu.group_count, 4);

    // Announced only as a group change, a second one is read in full too.
    let shared2 = nvme("0000:90:02.0", 66);
    t.pci(&shared2);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::IommuGroup(66)]);
    assert!(inv.functions.contains_key(&shared2.address));
    assert_eq!(inv.groups[&66].members.len(), 3);

    // A GPU is hot-added beside the audio function: the audio function comes into scope.
    let gpu2 = PciDev::new(
        "0000:43:00.0",
        "pci0000:40/0000:40:03.1",
        0x030000,
        0x10de,
        0x1e84,
    )
    .driver("nouveau")
    .group(67);
    t.pci(&gpu2);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(gpu2.address)]);
    assert_eq!(inv.gpus[&gpu2.address].companions, [audio.address]);
    assert!(inv.groups.contains_key(&67) && inv.groups.contains_key(&68));
    assert_eq!(inv.iommu.group_count, 5);

    // An unrelated drive comes and goes: counted, never read in full.
    let other = nvme("0000:90:03.0", 301);
    t.pci(&other);
    refresh_matches_scan(&s, &mut inv, &[RefreshTarget::Pci(other.address)]);
    assert!(!inv.functions.contains_key(&other.address));
    assert_eq!(inv.pci_classes[&other.address], Some(0x010802));
    assert_eq!(inv.iommu.group_count, 6);
    t.remove_pci(&other);
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::Pci(other.address),
            RefreshTarget::IommuGroup(301),
        ],
    );
    assert!(!inv.pci_classes.contains_key(&other.address));
    assert_eq!(inv.iommu.group_count, 5);

    // The new GPU goes: its slot and groups leave the scope with it.
    t.remove_pci(&gpu2);
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::Pci(gpu2.address),
            RefreshTarget::IommuGroup(67),
        ],
    );
    assert!(!inv.functions.contains_key(&audio.address));
    assert!(!inv.groups.contains_key(&68));
    assert_eq!(inv.pci_classes[&audio.address], Some(0x040300));

    // The V100 goes: the drives in its group leave the scope.
    t.remove("sys/class/mdev_bus/0000:41:00.0");
    t.remove_pci(&v100());
    refresh_matches_scan(
        &s,
        &mut inv,
        &[
            RefreshTarget::Pci(addr("0000:41:00.0")),
            RefreshTarget::IommuGroup(66),
        ],
    );
    assert!(inv.functions.is_empty(), "{:?}", inv.functions.keys());
    assert!(inv.groups.is_empty());
}

/// A host large enough for the scan to split its per-device reads over threads gives what
/// one thread reads, file operations and warnings included.
#[test]
fn a_scan_split_over_threads_reads_what_one_thread_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = TreeBuilder::new(dir.path());
    runbook_host(&t);
    // 600 NICs (one class read each), 600 mdevs on the V100 with their own groups, and
    // eight more mdev parents (their types are read per parent).
    for i in 0..600u32 {
        let address = format!("0000:{:02x}:{:02x}.{}", 0x80 + i / 64, (i / 8) % 8, i % 8);
        t.pci(&PciDev::new(&address, "pci0000:80", 0x020000, 0x8086, 0x1572).group(1000 + i));
    }
    for i in 0..600u32 {
        let uuid = format!("00000000-0000-4000-8000-{i:012x}");
        t.mdev(
            &uuid,
            v100().sysfs_path(),
            "nvidia-299",
            Some("vfio_mdev"),
            Some(2000 + i),
        );
    }
    for i in 0..8u32 {
        let gpu = PciDev::new(
            &format!("0000:{:02x}:00.0", 0x10 + i),
            "pci0000:00",
            0x030200,
            0x10de,
            0x1db4,
        )
        .driver("nvidia")
        .group(300 + i);
        t.pci(&gpu);
        t.mdev_parent(&gpu.address.to_string(), gpu.sysfs_path(), &v100_types());
    }
    // A damaged entry, so warnings are compared too.
    t.file("sys/bus/pci/devices/not-an-address", "");
    let (one, one_stats) = scanner(dir.path()).with_threads(1).scan_with_stats();
    for threads in [2, 4] {
        let (many, many_stats) = scanner(dir.path()).with_threads(threads).scan_with_stats();
        assert_same(&many, &one, &format!("a scan on {threads} threads"));
        assert_eq!(many_stats, one_stats, "{threads} threads");
    }
    assert_eq!(one.mdevs.len(), 600);
    assert_eq!(one.mdev_parents.len(), 9);
    assert!(one.pci_classes.len() > 600);
    assert!(!one.warnings.is_empty());
}
