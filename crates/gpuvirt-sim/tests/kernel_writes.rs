//! Each sysfs write behaves as the kernel's store handler does, errors included.
#![allow(clippy::unwrap_used)]

use gpuvirt_core::PciAddress;
use gpuvirt_sim::fixture::{Fixture, PciSpec};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::Backend;
use libc::{EACCES, EBUSY, EEXIST, EINVAL, ENODEV, ENOENT, ENOSPC, ERANGE};

fn boot(name: &str) -> Kernel {
    Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap()
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn read(k: &Kernel, p: &str) -> String {
    k.tree()
        .read_str(p)
        .unwrap_or_else(|| panic!("{p} missing"))
}

const DISPLAY: &str = "sys/bus/pci/devices/0000:01:00.0";
const U1: &str = "6c3f1c4e-1d3a-4c0e-9a51-7d3b1e0f2a11";
const U2: &str = "0f6b7c1d-2e3f-4a5b-8c9d-0e1f2a3b4c5d";

#[test]
fn driver_override_reads_null_and_newline_clears() {
    let mut k = boot("vm-reference");
    let p = format!("{DISPLAY}/driver_override");
    assert_eq!(read(&k, &p), "(null)");
    k.write_str(&p, "vfio-pci\n").unwrap();
    assert_eq!(read(&k, &p), "vfio-pci");
    k.write_str(&p, "\n").unwrap();
    assert_eq!(read(&k, &p), "(null)");
    k.write_str(&p, "vfio-pci").unwrap();
    k.write_str(&p, "").unwrap();
    assert_eq!(read(&k, &p), "(null)");
    assert_eq!(k.write(&p, &vec![b'x'; 5000]), Err(EINVAL));
}

#[test]
fn unbind_and_bind_errors() {
    let mut k = boot("vm-reference");
    let a = "0000:01:00.0";
    // Not bound to that driver / no such device.
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/ahci/unbind", a),
        Err(ENODEV)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", "0000:09:00.0"),
        Err(ENODEV)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/bind", "0000:09:00.0"),
        Err(ENODEV)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/bind", "garbage"),
        Err(ENODEV)
    );
    // Already bound.
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/bind", a),
        Err(EBUSY)
    );
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", &format!("{a}\n"))
        .unwrap();
    assert_eq!(k.driver_of(addr(a)), None);
    assert!(!k.tree().exists(&format!("{DISPLAY}/driver")));
    assert!(!k
        .tree()
        .exists(&format!("sys/bus/pci/drivers/bochs-drm/{a}")));
    assert_eq!(read(&k, &format!("{DISPLAY}/enable")), "0");
    // The id table must match: ahci does not claim a display adapter.
    assert_eq!(k.write_str("sys/bus/pci/drivers/ahci/bind", a), Err(ENODEV));
    // An override naming another driver makes the match fail (pci_match_device), ENODEV.
    k.write_str(&format!("{DISPLAY}/driver_override"), "vfio-pci")
        .unwrap();
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/bind", a),
        Err(ENODEV)
    );
    k.write_str(&format!("{DISPLAY}/driver_override"), "\n")
        .unwrap();
    k.write_str("sys/bus/pci/drivers/bochs-drm/bind", a)
        .unwrap();
    assert_eq!(k.driver_of(addr(a)), Some("bochs-drm"));
    assert_eq!(
        k.tree()
            .read_link(&format!("{}/driver", k.device_path(addr(a)).unwrap())),
        Some("../../../../bus/pci/drivers/bochs-drm")
    );
    assert!(read(&k, &format!("{DISPLAY}/uevent")).starts_with("DRIVER=bochs-drm\n"));
}

#[test]
fn drivers_probe_with_override_of_an_unloaded_driver_leaves_device_driverless() {
    let mut k = boot("vm-reference");
    let a = "0000:01:00.0";
    k.write_str(&format!("{DISPLAY}/driver_override"), "vfio-pci\n")
        .unwrap();
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", a)
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", a).unwrap();
    assert_eq!(k.driver_of(addr(a)), None, "vfio-pci is not loaded");
    assert_eq!(
        k.write_str("sys/bus/pci/drivers_probe", "0000:09:00.0"),
        Err(ENODEV)
    );
    // Loading vfio-pci binds the waiting device (driver_attach), with /dev/vfio/8.
    k.load_module("vfio_pci").unwrap();
    assert_eq!(k.driver_of(addr(a)), Some("vfio-pci"));
    assert!(k.tree().exists("dev/vfio/8"));
    assert!(k.tree().exists("dev/vfio/vfio"));
    // Back to the host: clear the override, unbind, probe.
    k.write_str(&format!("{DISPLAY}/driver_override"), "\n")
        .unwrap();
    k.write_str("sys/bus/pci/drivers/vfio-pci/unbind", a)
        .unwrap();
    assert!(!k.tree().exists("dev/vfio/8"));
    k.write_str("sys/bus/pci/drivers_probe", a).unwrap();
    assert_eq!(k.driver_of(addr(a)), Some("bochs-drm"));
    // Probing a bound device is a successful no-op.
    k.write_str("sys/bus/pci/drivers_probe", a).unwrap();
}

#[test]
fn vfio_pci_without_override_matches_nothing_until_new_id() {
    let mut k = boot("vm-reference");
    k.load_module("vfio_pci").unwrap();
    let a = "0000:03:00.0";
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", a)
        .unwrap();
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/bind", a),
        Err(ENODEV)
    );
    // new_id adds a dynamic id and probes driverless matching devices at once.
    k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", "1234 1111")
        .unwrap();
    assert_eq!(k.driver_of(addr(a)), Some("vfio-pci"));
    assert_eq!(
        k.driver_of(addr("0000:01:00.0")),
        Some("bochs-drm"),
        "bound devices stay"
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", "1234 1111"),
        Err(EEXIST)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", "junk"),
        Err(EINVAL)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", "1234"),
        Err(EINVAL)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", "1234:1111"),
        Err(EINVAL)
    );
    k.write_str("sys/bus/pci/drivers/vfio-pci/remove_id", "1234 1111")
        .unwrap();
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/remove_id", "1234 1111"),
        Err(ENODEV)
    );
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/remove_id", "x"),
        Err(EINVAL)
    );
    // A static id of bochs-drm already matches: EEXIST.
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/bochs-drm/new_id", "1234 1111"),
        Err(EEXIST)
    );
}

#[test]
fn vfio_pci_probe_fails_without_an_iommu_group() {
    let text = "[kernel]\niommu = \"none\"\nmodules = [\"vfio_pci\"]\n[[pci]]\n\
                address = \"0000:01:00.0\"\nclass = 0x030000\nid = \"1234:1111\"\n";
    let mut k = Kernel::from_fixture(&Fixture::parse(text, "t").unwrap()).unwrap();
    assert!(k.tree().list("sys/kernel/iommu_groups").is_empty());
    assert!(!k.tree().exists("sys/class/iommu/dmar0"));
    k.write_str(
        "sys/bus/pci/devices/0000:01:00.0/driver_override",
        "vfio-pci",
    )
    .unwrap();
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/vfio-pci/bind", "0000:01:00.0"),
        Err(EINVAL)
    );
    k.write_str("sys/bus/pci/drivers_probe", "0000:01:00.0")
        .unwrap();
    assert_eq!(k.driver_of(addr("0000:01:00.0")), None);
}

#[test]
fn read_only_attributes_and_missing_files() {
    let mut k = boot("runbook");
    let gpu = "sys/bus/pci/devices/0000:41:00.0";
    assert_eq!(k.write_str(&format!("{gpu}/vendor"), "0x1234"), Err(EACCES));
    assert_eq!(k.write_str(&format!("{gpu}/nope"), "1"), Err(ENOENT));
    assert_eq!(k.write_str(gpu, "1"), Err(libc::EISDIR));
}

#[test]
fn mdev_create_remove_and_errors() {
    let mut k = boot("runbook");
    let ty = "sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300";
    let create = format!("{ty}/create");
    assert_eq!(k.write_str(&create, "not-a-uuid"), Err(EINVAL));
    assert_eq!(
        k.write_str(&create, "6c3f1c4e-1d3a-4c0e-9a51-7d3b1e0f2a1"),
        Err(EINVAL)
    );
    assert_eq!(
        k.write_str(&create, "6c3f1c4e+1d3a-4c0e-9a51-7d3b1e0f2a11"),
        Err(EINVAL)
    );
    k.write_str(&create, &format!("{U1}\n")).unwrap();
    assert_eq!(read(&k, &format!("{ty}/available_instances")), "1");
    assert_eq!(k.write_str(&create, U1), Err(EEXIST));
    k.write_str(&create, U2).unwrap();
    assert_eq!(read(&k, &format!("{ty}/available_instances")), "0");
    let third = "11111111-2222-4333-8444-555555555555";
    assert_eq!(k.write_str(&create, third), Err(ENOSPC));
    // NVIDIA: one type per GPU, so every other type reports 0 now.
    let other = "sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-214";
    assert_eq!(read(&k, &format!("{other}/available_instances")), "0");
    assert_eq!(k.write_str(&format!("{other}/create"), third), Err(ENOSPC));
    // The mdev as sysfs shows it.
    let dev = format!("sys/bus/mdev/devices/{U1}");
    let real = k.tree().path_of(k.tree().resolve(&dev).unwrap());
    assert_eq!(
        real,
        format!("sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/{U1}")
    );
    assert_eq!(
        k.tree().read_link(&format!("{real}/mdev_type")),
        Some("../mdev_supported_types/nvidia-300")
    );
    assert_eq!(
        k.tree().read_link(&format!("{real}/driver")),
        Some("../../../../../bus/mdev/drivers/vfio_mdev")
    );
    assert!(k.tree().exists(&format!("{ty}/devices/{U1}")));
    let group = k
        .tree()
        .read_link(&format!("{real}/iommu_group"))
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(k.tree().exists(&format!("dev/vfio/{group}")));
    assert!(
        !k.tree().exists(&format!("{real}/vfio-dev")),
        "kernel 5.4 has no vfio-dev"
    );
    // remove: 0 is a no-op, junk is EINVAL, busy is EBUSY.
    k.write_str(&format!("{dev}/remove"), "0").unwrap();
    assert!(k.tree().exists(&dev));
    assert_eq!(k.write_str(&format!("{dev}/remove"), "yes"), Err(EINVAL));
    assert!(k.set_mdev_busy(U1.parse().unwrap(), true));
    assert_eq!(k.write_str(&format!("{dev}/remove"), "1"), Err(EBUSY));
    k.set_mdev_busy(U1.parse().unwrap(), false);
    k.write_str(&format!("{dev}/remove"), "1\n").unwrap();
    assert!(!k.tree().exists(&dev));
    assert!(!k.tree().exists(&format!("{ty}/devices/{U1}")));
    assert!(!k.tree().exists(&format!("dev/vfio/{group}")));
    assert!(!k.tree().exists(&format!("sys/kernel/iommu_groups/{group}")));
    assert_eq!(read(&k, &format!("{ty}/available_instances")), "1");
    assert_eq!(
        read(&k, &format!("{other}/available_instances")),
        "0",
        "U2 still there"
    );
    k.write_str(&format!("sys/bus/mdev/devices/{U2}/remove"), "1")
        .unwrap();
    assert_eq!(read(&k, &format!("{other}/available_instances")), "16");
}

#[test]
fn shared_pools_account_across_types() {
    let mut k = boot("vm-reference");
    let t = |ty: &str| format!("sys/class/mdev_bus/mbochs/mdev_supported_types/{ty}");
    let uuids: Vec<String> = (1..=5)
        .map(|i| format!("00000000-0000-4000-8000-00000000000{i}"))
        .collect();
    k.write_str(&format!("{}/create", t("mbochs-medium")), &uuids[0])
        .unwrap();
    assert_eq!(
        read(&k, &format!("{}/available_instances", t("mbochs-large"))),
        "3"
    );
    assert_eq!(
        read(&k, &format!("{}/available_instances", t("mbochs-medium"))),
        "15"
    );
    assert_eq!(
        read(&k, &format!("{}/available_instances", t("mbochs-small"))),
        "60"
    );
    k.write_str(&format!("sys/bus/mdev/devices/{}/remove", uuids[0]), "1")
        .unwrap();
    for u in &uuids[..4] {
        k.write_str(&format!("{}/create", t("mbochs-large")), u)
            .unwrap();
    }
    for ty in ["mbochs-large", "mbochs-medium", "mbochs-small"] {
        assert_eq!(
            read(&k, &format!("{}/available_instances", t(ty))),
            "0",
            "{ty}"
        );
    }
    assert_eq!(
        k.write_str(&format!("{}/create", t("mbochs-small")), &uuids[4]),
        Err(ENOSPC)
    );
    // mtty: ports are the pool.
    let mt = |ty: &str| format!("sys/class/mdev_bus/mtty/mdev_supported_types/{ty}");
    k.write_str(&format!("{}/create", mt("mtty-2")), &uuids[4])
        .unwrap();
    assert_eq!(
        read(&k, &format!("{}/available_instances", mt("mtty-1"))),
        "22"
    );
    assert_eq!(
        read(&k, &format!("{}/available_instances", mt("mtty-2"))),
        "11"
    );
    // On 6.1 the mdev has a vfio-dev and binds to the parent's own mdev driver.
    let real = k.tree().path_of(
        k.tree()
            .resolve(&format!("sys/bus/mdev/devices/{}", uuids[4]))
            .unwrap(),
    );
    assert_eq!(real, format!("sys/devices/virtual/mtty/mtty/{}", uuids[4]));
    assert!(k.tree().exists(&format!("{real}/vfio-dev")));
    assert_eq!(read(&k, &format!("{real}/uevent")), "DRIVER=mtty");
}

#[test]
fn first_mdev_group_follows_the_pci_groups() {
    let mut k = boot("vm-reference");
    k.write_str(
        "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create",
        U1,
    )
    .unwrap();
    assert_eq!(
        k.tree().read_link(&format!(
            "sys/devices/virtual/mbochs/mbochs/{U1}/iommu_group"
        )),
        Some("../../../../../kernel/iommu_groups/11")
    );
    assert!(k.tree().exists("dev/vfio/11"));
}

#[test]
fn sriov_numvfs_semantics() {
    let mut k = boot("hopper-sriov");
    let pf = "sys/bus/pci/devices/0000:9a:00.0";
    let n = format!("{pf}/sriov_numvfs");
    assert_eq!(k.write_str(&n, "33"), Err(ERANGE));
    assert_eq!(k.write_str(&n, "many"), Err(EINVAL));
    assert_eq!(k.write_str(&n, "70000"), Err(ERANGE));
    k.write_str(&n, "0").unwrap();
    k.write_str(&n, "4\n").unwrap();
    assert_eq!(read(&k, &n), "4");
    for i in 4..8 {
        let vf = addr(&format!("0000:9a:00.{i}"));
        assert_eq!(k.driver_of(vf), Some("nvidia"), "VF autoprobed");
        let g = k.group_of(vf).unwrap();
        assert_eq!(
            k.tree()
                .list(&format!("sys/kernel/iommu_groups/{g}/devices")),
            vec![vf.to_string()]
        );
    }
    assert!(k.tree().exists(&format!("{pf}/virtfn3")));
    assert_eq!(k.write_str(&n, "8"), Err(EBUSY));
    k.write_str(&n, "4").unwrap();
    k.write_str(&n, "0").unwrap();
    assert!(!k.tree().exists("sys/bus/pci/devices/0000:9a:00.4"));
    assert!(!k.tree().exists(&format!("{pf}/virtfn0")));
    // A PF with no driver cannot change SR-IOV: ENOENT.
    k.write_str("sys/bus/pci/drivers/nvidia/unbind", "0000:9a:00.0")
        .unwrap();
    assert_eq!(k.write_str(&n, "2"), Err(ENOENT));
    // Unbinding a PF with VFs disables them.
    let pf0 = "0000:18:00.0";
    k.write_str("sys/bus/pci/drivers/nvidia/unbind", pf0)
        .unwrap();
    assert!(!k.tree().exists("sys/bus/pci/devices/0000:18:00.4"));
}

#[test]
fn nvidia_current_vgpu_type() {
    let mut k = boot("hopper-sriov");
    let n = "sys/bus/pci/devices/0000:9a:00.0/sriov_numvfs";
    k.write_str(n, "3").unwrap();
    let vf = |i: u32| format!("sys/bus/pci/devices/0000:9a:00.{}/nvidia", 4 + i);
    let creatable = |k: &Kernel, i: u32| -> Vec<u32> {
        read(k, &format!("{}/creatable_vgpu_types", vf(i)))
            .lines()
            .skip(1)
            .map(|l| l.split(':').next().unwrap().trim().parse().unwrap())
            .collect()
    };
    assert_eq!(creatable(&k, 1), (1145..=1152).collect::<Vec<_>>());
    assert_eq!(read(&k, &format!("{}/current_vgpu_type", vf(0))), "0");
    assert_eq!(
        k.write_str(&format!("{}/current_vgpu_type", vf(0)), "9999"),
        Err(EINVAL)
    );
    assert_eq!(
        k.write_str(&format!("{}/current_vgpu_type", vf(0)), "abc"),
        Err(EINVAL)
    );
    k.write_str(&format!("{}/current_vgpu_type", vf(0)), "1149\n")
        .unwrap(); // 16C
    assert_eq!(read(&k, &format!("{}/current_vgpu_type", vf(0))), "1149");
    assert!(creatable(&k, 0).is_empty(), "the VF now has a vGPU");
    assert_eq!(
        creatable(&k, 1),
        vec![1149],
        "siblings: only the same type fits"
    );
    assert_eq!(
        k.write_str(&format!("{}/current_vgpu_type", vf(0)), "1150"),
        Err(EBUSY)
    );
    assert_eq!(
        k.write_str(&format!("{}/current_vgpu_type", vf(1)), "1150"),
        Err(EINVAL)
    );
    k.write_str(&format!("{}/current_vgpu_type", vf(0)), "0")
        .unwrap();
    assert_eq!(creatable(&k, 1).len(), 8);
    // The fixture's two 40C vGPUs fill GPU 0: a third cannot be created.
    let gpu0_vf2 = "sys/bus/pci/devices/0000:18:00.6/nvidia/current_vgpu_type";
    assert_eq!(k.write_str(gpu0_vf2, "1151"), Err(EINVAL));
}

#[test]
fn unbinding_an_mdev_parent_removes_its_mdevs_or_refuses_when_busy() {
    let mut k = boot("mdev-server-8gpu");
    let gpu = "0000:01:00.0";
    let before: Vec<_> = k.mdevs().into_iter().filter(|(_, p, _)| p == gpu).collect();
    assert_eq!(before.len(), 2);
    k.set_mdev_busy(before[0].0, true);
    assert_eq!(
        k.write_str("sys/bus/pci/drivers/nvidia/unbind", gpu),
        Err(EBUSY)
    );
    assert_eq!(k.driver_of(addr(gpu)), Some("nvidia"));
    k.set_mdev_busy(before[0].0, false);
    k.write_str("sys/bus/pci/drivers/nvidia/unbind", gpu)
        .unwrap();
    assert!(k.mdevs().iter().all(|(_, p, _)| p != gpu));
    assert!(!k.tree().exists(&format!("sys/class/mdev_bus/{gpu}")));
    assert!(!k
        .tree()
        .exists(&format!("sys/bus/mdev/devices/{}", before[0].0)));
    // Rebinding registers the parent again, with full capacity.
    k.write_str("sys/bus/pci/drivers/nvidia/bind", gpu).unwrap();
    assert_eq!(k.available_instances(gpu, "nvidia-217"), Some(2));
    assert!(k.tree().exists(&format!(
        "sys/class/mdev_bus/{gpu}/mdev_supported_types/nvidia-217/create"
    )));
}

#[test]
fn module_hooks() {
    let mut k = boot("vm-reference");
    assert_eq!(
        k.unload_module("mdev"),
        Err(EBUSY),
        "mbochs, mdpy, mtty hold it"
    );
    assert_eq!(k.load_module("no_such_module"), Err(ENOENT));
    assert_eq!(k.unload_module("vfio_pci"), Err(ENOENT), "not loaded");
    k.write_str(
        "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create",
        U1,
    )
    .unwrap();
    k.set_mdev_busy(U1.parse().unwrap(), true);
    assert_eq!(k.unload_module("mbochs"), Err(EBUSY), "module in use");
    k.set_mdev_busy(U1.parse().unwrap(), false);
    k.unload_module("mbochs").unwrap();
    assert!(k.mdevs().is_empty());
    assert!(!k.tree().exists("sys/class/mdev_bus/mbochs"));
    assert!(!k.tree().exists("sys/devices/virtual/mbochs"));
    assert!(!k.tree().exists("sys/module/mbochs"));
    k.unload_module("mdpy").unwrap();
    k.unload_module("mtty").unwrap();
    k.unload_module("mdev").unwrap();
    assert!(
        !k.tree().exists("sys/class/mdev_bus"),
        "exists only while mdev is loaded"
    );
    k.load_module("mbochs").unwrap();
    assert!(k.is_loaded("mdev"), "dependency loaded first");
    assert_eq!(k.available_instances("mbochs", "mbochs-large"), Some(4));
    assert!(k
        .tree()
        .exists("sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-large/create"));
    // Unloading a PCI driver's module unbinds its devices.
    k.unload_module("bochs").unwrap();
    assert_eq!(k.driver_of(addr("0000:01:00.0")), None);
    assert!(!k.tree().exists("sys/bus/pci/drivers/bochs-drm"));
    k.load_module("bochs").unwrap();
    assert_eq!(k.driver_of(addr("0000:01:00.0")), Some("bochs-drm"));
}

#[test]
fn hotplug_remove_rescan_and_add() {
    let mut k = boot("workstation");
    let gpu = addr("0000:01:00.0");
    k.write_str(&format!("{DISPLAY}/driver_override"), "vfio-pci")
        .unwrap();
    k.hot_remove(addr("0000:00:01.0")).unwrap();
    assert!(!k.tree().exists("sys/bus/pci/devices/0000:01:00.0"));
    assert!(!k.tree().exists("sys/bus/pci/devices/0000:00:01.0"));
    assert!(!k.tree().exists("sys/kernel/iommu_groups/1"));
    assert_eq!(k.hot_remove(gpu), Err(ENODEV));
    k.replug(addr("0000:00:01.0")).unwrap();
    assert_eq!(
        k.driver_of(gpu),
        Some("nouveau"),
        "probed again, override forgotten"
    );
    assert_eq!(read(&k, &format!("{DISPLAY}/driver_override")), "(null)");
    assert_eq!(k.group_of(gpu), Some(1));
    // The `remove` attribute and bus rescan.
    k.write_str("sys/bus/pci/devices/0000:01:00.1/remove", "1")
        .unwrap();
    assert!(!k.tree().exists("sys/bus/pci/devices/0000:01:00.1"));
    k.write_str("sys/bus/pci/rescan", "1").unwrap();
    assert_eq!(k.driver_of(addr("0000:01:00.1")), Some("snd_hda_intel"));
    // A brand-new function.
    let mut spec = PciSpec::new(addr("0000:02:00.0"), 0x010802, "144d:a808");
    spec.parent = Some(addr("0000:00:01.0"));
    k.hot_add(&spec).unwrap();
    // Nothing loads modules in the kernel (udev would, from the modalias): driverless until
    // nvme is loaded, which then binds it.
    assert_eq!(k.driver_of(addr("0000:02:00.0")), None);
    k.load_module("nvme").unwrap();
    assert_eq!(k.driver_of(addr("0000:02:00.0")), Some("nvme"));
    assert!(k.group_of(addr("0000:02:00.0")).is_some());
    assert!(k.hot_add(&spec).is_err(), "already present");
}

#[test]
fn plain_writable_attributes_keep_their_value() {
    let mut k = boot("workstation");
    let p = "sys/bus/pci/devices/0000:01:00.0/reset_method";
    k.write_str(p, "bus\n").unwrap();
    assert_eq!(read(&k, p), "bus");
}

#[test]
fn untouched_files_keep_their_inode_across_changes() {
    let mut k = boot("vm-reference");
    let vendor = k
        .tree()
        .resolve("sys/bus/pci/devices/0000:01:00.0/vendor")
        .unwrap();
    let avail = k
        .tree()
        .resolve("sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/available_instances")
        .unwrap();
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", "0000:01:00.0")
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", "0000:01:00.0")
        .unwrap();
    k.write_str(
        "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create",
        U1,
    )
    .unwrap();
    assert_eq!(
        k.tree().resolve("sys/bus/pci/devices/0000:01:00.0/vendor"),
        Some(vendor)
    );
    assert_eq!(
        k.tree().resolve(
            "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/available_instances"
        ),
        Some(avail)
    );
}
