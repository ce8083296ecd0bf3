//! Every bundled fixture boots, and the simulated sysfs shows what the fixture describes.
#![allow(clippy::unwrap_used)]

use gpuvirt_core::PciAddress;
use gpuvirt_sim::fixture::{bundled_names, Fixture};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::Backend;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

#[test]
fn all_bundled_fixtures_boot_without_uevents() {
    for name in bundled_names() {
        let f = Fixture::bundled(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut k = Kernel::from_fixture(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(k.take_uevents().is_empty(), "{name}: boot sends no uevents");
        assert!(!k.pci_addresses().is_empty(), "{name}");
        let inv = f.expected_inventory().unwrap();
        assert_eq!(inv.functions.len(), k.pci_addresses().len(), "{name}");
    }
}

#[test]
fn fixture_files_on_disk_load_by_path() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    for name in bundled_names() {
        Kernel::load(format!("{dir}/{name}.toml")).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let err = Kernel::load(format!("{dir}/no-such.toml")).unwrap_err();
    assert!(err.to_string().contains("no-such.toml"), "{err}");
}

#[test]
fn runbook_host_is_the_runbooks_host() {
    let k = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    let t = k.tree();
    let gpu = "sys/bus/pci/devices/0000:41:00.0";
    assert_eq!(
        t.read_link(gpu),
        Some("../../../devices/pci0000:40/0000:40:03.1/0000:41:00.0")
    );
    assert_eq!(t.read_str(&format!("{gpu}/vendor")).unwrap(), "0x10de");
    assert_eq!(t.read_str(&format!("{gpu}/device")).unwrap(), "0x1db4");
    assert_eq!(t.read_str(&format!("{gpu}/class")).unwrap(), "0x030200");
    assert_eq!(t.read_str(&format!("{gpu}/revision")).unwrap(), "0xa1");
    assert_eq!(
        t.read_str(&format!("{gpu}/driver_override")).unwrap(),
        "(null)"
    );
    let gpu_dir = k.device_path(addr("0000:41:00.0")).unwrap();
    assert_eq!(
        t.read_link(&format!("{gpu_dir}/driver")),
        Some("../../../../bus/pci/drivers/nvidia")
    );
    // The runbook's `ll /sys/kernel/iommu_groups/66/devices/` line, exactly.
    assert_eq!(
        t.read_link("sys/kernel/iommu_groups/66/devices/0000:41:00.0"),
        Some("../../../../devices/pci0000:40/0000:40:03.1/0000:41:00.0")
    );
    assert_eq!(
        t.list("sys/kernel/iommu_groups/66/devices"),
        vec!["0000:41:00.0"]
    );
    assert!(t.exists("sys/class/iommu/ivhd0"), "AMD IOMMU");
    assert!(
        !t.exists(&format!("{gpu}/boot_vga")),
        "3D controller has no boot_vga"
    );
    assert!(
        !t.exists(&format!("{gpu}/reset_method")),
        "kernel 5.4 has no reset_method"
    );
    let ue = t.read_str(&format!("{gpu}/uevent")).unwrap();
    assert_eq!(
        ue,
        "DRIVER=nvidia\nPCI_CLASS=30200\nPCI_ID=10DE:1DB4\nPCI_SUBSYS_ID=10DE:1214\n\
         PCI_SLOT_NAME=0000:41:00.0\nMODALIAS=pci:v000010DEd00001DB4sv000010DEsd00001214bc03sc02i00"
    );
    let ty = "sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300";
    assert_eq!(t.read_str(&format!("{ty}/name")).unwrap(), "GRID V100-8C");
    assert_eq!(
        t.read_str(&format!("{ty}/available_instances")).unwrap(),
        "2"
    );
    assert_eq!(t.read_str(&format!("{ty}/device_api")).unwrap(), "vfio-pci");
    assert_eq!(
        t.read_str(&format!("{ty}/description")).unwrap(),
        "num_heads=1, frl_config=60, framebuffer=8192M, max_resolution=4096x2160, max_instance=2"
    );
    assert_eq!(
        t.read_str("proc/sys/kernel/osrelease").unwrap(),
        "5.4.0-84-generic"
    );
    // lspci -k: "Kernel modules: nvidiafb, nouveau" — and nothing else claims the V100.
    let alias = t
        .read_str("lib/modules/5.4.0-84-generic/modules.alias")
        .unwrap();
    let claims: Vec<&str> = alias
        .lines()
        .filter(|l| l.contains("v000010DEd*") && l.contains("bc03sc*"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(claims, vec!["nvidiafb", "nouveau"]);
    assert!(alias.contains("alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci"));
    for m in ["nvidia_vgpu_vfio", "nvidia", "mdev", "vfio_mdev", "drm"] {
        assert!(t.exists(&format!("sys/module/{m}")), "{m} loaded");
        assert!(k.is_loaded(m));
    }
    assert!(!t.exists("sys/module/vfio_pci"));
    let pciids = t.read_str("usr/share/misc/pci.ids").unwrap();
    assert!(pciids.contains("\t1db4  GV100GL [Tesla V100 PCIe 16GB]"));
    assert_eq!(k.group_of(addr("0000:41:00.0")), Some(66));
}

#[test]
fn config_space_agrees_with_attributes() {
    let k = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    let c = k
        .tree()
        .read("sys/bus/pci/devices/0000:41:00.0/config")
        .unwrap();
    assert!(c.len() >= 64);
    assert_eq!(&c[0..4], &[0xde, 0x10, 0xb4, 0x1d]);
    assert_eq!(c[8], 0xa1);
    assert_eq!(&c[9..12], &[0x00, 0x02, 0x03]);
    assert_eq!(&c[0x2c..0x30], &[0xde, 0x10, 0x14, 0x12]);
    let rp = k
        .tree()
        .read("sys/bus/pci/devices/0000:40:03.1/config")
        .unwrap();
    assert_eq!(rp[0x0e] & 0x7f, 1, "type 1 header");
    assert_eq!((rp[0x18], rp[0x19], rp[0x1a]), (0x40, 0x41, 0x41));
}

#[test]
fn workstation_groups_and_boot_vga() {
    let k = Kernel::from_fixture(&Fixture::bundled("workstation").unwrap()).unwrap();
    let t = k.tree();
    assert_eq!(
        t.list("sys/kernel/iommu_groups/1/devices"),
        vec!["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]
    );
    assert_eq!(
        t.read_str("sys/bus/pci/devices/0000:00:02.0/boot_vga")
            .unwrap(),
        "1"
    );
    assert_eq!(
        t.read_str("sys/bus/pci/devices/0000:01:00.0/boot_vga")
            .unwrap(),
        "0"
    );
    assert!(!t.exists("sys/bus/pci/devices/0000:01:00.1/boot_vga"));
    assert!(t.exists("sys/class/iommu/dmar0"));
    assert_eq!(
        t.read_str("sys/bus/pci/devices/0000:01:00.0/reset_method")
            .unwrap(),
        "flr bus"
    );
    // Functions of slot 1f share an automatic group.
    let g = k.group_of(addr("0000:00:1f.0")).unwrap();
    for f in ["0000:00:1f.3", "0000:00:1f.4", "0000:00:1f.6"] {
        assert_eq!(k.group_of(addr(f)), Some(g), "{f}");
    }
    assert_ne!(k.group_of(addr("0000:00:14.0")), Some(g));
}

#[test]
fn vm_reference_matches_the_vm_listings() {
    let k = Kernel::from_fixture(&Fixture::bundled("vm-reference").unwrap()).unwrap();
    let t = k.tree();
    for (g, members) in [
        (3, vec!["0000:00:03.0"]),
        (7, vec!["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]),
        (8, vec!["0000:01:00.0"]),
        (10, vec!["0000:03:00.0"]),
    ] {
        assert_eq!(
            t.list(&format!("sys/kernel/iommu_groups/{g}/devices")),
            members
        );
    }
    assert_eq!(
        t.read_link("sys/class/mdev_bus/mbochs"),
        Some("../../devices/virtual/mbochs/mbochs")
    );
    let ty = "sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1";
    assert_eq!(
        t.read_str(&format!("{ty}/name")).unwrap(),
        "Single port serial"
    );
    assert!(!t.exists(&format!("{ty}/description")));
    assert_eq!(
        t.read_str(&format!("{ty}/available_instances")).unwrap(),
        "24"
    );
    let avail = |p: &str, ty: &str| k.available_instances(p, ty).unwrap();
    assert_eq!(avail("mbochs", "mbochs-large"), 4);
    assert_eq!(avail("mbochs", "mbochs-medium"), 16);
    assert_eq!(avail("mbochs", "mbochs-small"), 64);
    assert_eq!(avail("mdpy", "mdpy-hd"), 4);
    assert_eq!(avail("mtty", "mtty-2"), 12);
    assert!(
        !t.exists("sys/bus/pci/drivers/vfio-pci"),
        "vfio-pci not loaded"
    );
    assert_eq!(
        t.read_str("sys/bus/pci/devices/0000:00:03.0/boot_vga")
            .unwrap(),
        "1"
    );
}

#[test]
fn hopper_vfs_carry_nvidia_vgpu_files() {
    let k = Kernel::from_fixture(&Fixture::bundled("hopper-sriov").unwrap()).unwrap();
    let t = k.tree();
    let pf = "sys/bus/pci/devices/0000:18:00.0";
    assert_eq!(t.read_str(&format!("{pf}/sriov_totalvfs")).unwrap(), "32");
    assert_eq!(t.read_str(&format!("{pf}/sriov_numvfs")).unwrap(), "32");
    let pf_dir = k.device_path(addr("0000:18:00.0")).unwrap();
    assert_eq!(
        t.read_link(&format!("{pf_dir}/virtfn0")),
        Some("../0000:18:00.4")
    );
    let vf0 = "sys/bus/pci/devices/0000:18:00.4";
    let vf0_dir = k.device_path(addr("0000:18:00.4")).unwrap();
    assert_eq!(
        t.read_link(&format!("{vf0_dir}/physfn")),
        Some("../0000:18:00.0")
    );
    assert_eq!(k.driver_of(addr("0000:18:00.4")), Some("nvidia"));
    assert_eq!(
        t.read_str(&format!("{vf0}/nvidia/current_vgpu_type"))
            .unwrap(),
        "1151"
    );
    assert_eq!(
        t.read_str(&format!("{vf0}/nvidia/creatable_vgpu_types"))
            .unwrap(),
        "ID    : vGPU Name"
    );
    // Two 40C vGPUs use the whole 80 GiB: nothing is creatable on the siblings.
    let vf2 = "sys/bus/pci/devices/0000:18:00.6/nvidia/creatable_vgpu_types";
    assert_eq!(t.read_str(vf2).unwrap(), "ID    : vGPU Name");
    assert_eq!(
        t.read_str("sys/bus/pci/devices/0000:9a:00.0/sriov_numvfs")
            .unwrap(),
        "0"
    );
    assert!(!t.exists("sys/class/mdev_bus"), "no mdev on Hopper");
    // Each VF has an IOMMU group of its own.
    let g4 = k.group_of(addr("0000:18:00.4")).unwrap();
    assert_eq!(
        t.list(&format!("sys/kernel/iommu_groups/{g4}/devices")),
        vec!["0000:18:00.4"]
    );
}

#[test]
fn nic_shared_group_lists_gpu_and_nic_together() {
    let k = Kernel::from_fixture(&Fixture::bundled("nic-shared-group").unwrap()).unwrap();
    let inv = k.expected_inventory();
    assert_eq!(
        inv.groups[&12],
        vec![
            "0000:01:00.0",
            "0000:02:08.0",
            "0000:02:10.0",
            "0000:03:00.0",
            "0000:04:00.0",
            "0000:04:00.1"
        ]
    );
    assert_eq!(
        inv.functions[&addr("0000:04:00.0")].driver.as_deref(),
        Some("igb")
    );
    assert_eq!(inv.groups[&20], vec!["0000:21:00.0"]);
}

#[test]
fn mdev_server_has_mdevs_and_mdevctl_configs() {
    let f = Fixture::bundled("mdev-server-8gpu").unwrap();
    let k = Kernel::from_fixture(&f).unwrap();
    let inv = k.expected_inventory();
    assert_eq!(inv.parents.len(), 7, "GPU 7 is on vfio-pci, not a parent");
    assert_eq!(inv.mdevs.len(), 7);
    assert_eq!(
        inv.parents["0000:01:00.0"]["nvidia-217"].available_instances,
        0
    );
    assert_eq!(
        inv.parents["0000:01:00.0"]["nvidia-214"].available_instances, 0,
        "homogeneous"
    );
    assert_eq!(
        inv.parents["0000:61:00.0"]["nvidia-300"].available_instances,
        2
    );
    for m in &f.mdevctl {
        let p = format!("etc/mdevctl.d/{}/{}", m.parent, m.uuid);
        let v: serde_json::Value = serde_json::from_slice(k.tree().read(&p).unwrap()).unwrap();
        assert_eq!(v["mdev_type"], m.type_id.as_str());
    }
    assert!(k.tree().exists("dev/vfio/vfio"));
    let g = k.group_of(addr("0000:e1:00.0")).unwrap();
    assert!(
        k.tree().exists(&format!("dev/vfio/{g}")),
        "vfio-pci group node"
    );
    // Every mdev is a member of its own group, with an iommu_group link.
    for (u, _, _) in k.mdevs() {
        let link = format!("sys/bus/mdev/devices/{u}/iommu_group");
        let group_dir = k.tree().resolve(&link).unwrap();
        let path = k.tree().path_of(group_dir);
        assert_eq!(
            k.tree().list(&format!("{path}/devices")),
            vec![u.to_string()]
        );
    }
}

#[test]
fn broken_fixtures_are_refused_with_reasons() {
    let base = "[[pci]]\naddress = \"0000:01:00.0\"\nclass = 0x030000\nid = \"10de:2204\"\n";
    let cases = [
        (format!("{base}driver = \"nosuchdrv\"\n"), "nosuchdrv"),
        (format!("{base}{base}"), "listed twice"),
        (format!("{base}parent = \"0000:00:01.0\"\n"), "not listed"),
        (
            format!("[kernel]\niommu = \"none\"\n{base}iommu_group = 3\n"),
            "iommu = \"none\"",
        ),
        (
            format!(
                "{base}\n[[mdev]]\nuuid = \"00000000-0000-0000-0000-000000000001\"\n\
                 parent = \"0000:01:00.0\"\ntype = \"x\"\n"
            ),
            "not a registered mdev parent",
        ),
    ];
    for (text, want) in cases {
        let f = Fixture::parse(&text, "t.toml").unwrap();
        let err = Kernel::from_fixture(&f).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should mention {want}");
    }
}

/// The 6.1 kernel in tests/vm (sharding scenario): mdpy has no `get_available`, so the mdev core
/// counts its 4 instances and refuses the fifth with EUSERS before the driver runs; mbochs
/// counts its own pool and a create that does not fit is ENOSPC.
#[test]
fn vm_reference_full_parent_errnos_match_the_kernel() {
    let mut k = Kernel::from_fixture(&Fixture::bundled("vm-reference").unwrap()).unwrap();
    let create = |ty: &str, n: u32| {
        let parent = ty.split('-').next().unwrap();
        (
            format!("sys/class/mdev_bus/{parent}/mdev_supported_types/{ty}/create"),
            format!("6a1c7f5e-0000-4000-8000-{n:012x}"),
        )
    };
    for (n, ty) in ["mdpy-vga", "mdpy-xga", "mdpy-hd", "mdpy-vga"]
        .iter()
        .enumerate()
    {
        let (p, u) = create(ty, n as u32);
        k.write_str(&p, &u).unwrap();
    }
    assert_eq!(k.available_instances("mdpy", "mdpy-hd"), Some(0));
    let (p, u) = create("mdpy-hd", 10);
    assert_eq!(k.write_str(&p, &u), Err(libc::EUSERS));
    for n in 0..4 {
        let (p, u) = create("mbochs-large", 20 + n);
        k.write_str(&p, &u).unwrap();
    }
    let (p, u) = create("mbochs-large", 30);
    assert_eq!(k.write_str(&p, &u), Err(libc::ENOSPC));
}
