//! libvirt XML and QEMU arguments for the runbook's V100 (as an mdev and as a whole card), a
//! workstation's discrete GPU with its HDMI audio function, and an NVIDIA per-VF vGPU, checked
//! against golden files in `tests/golden/` (regenerate with `GPUVIRT_BLESS=1`).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use gpuvirt_core::render::{
    mdev_type_can_display, render, RenderError, RenderOptions, RenderTarget,
};
use gpuvirt_core::{
    Inventory, Mdev, MdevParent, MdevType, NvidiaVfVgpu, PciAddress, PciFunction, PciIds, Sriov,
};
use uuid::Uuid;

const V100: &str = "0000:41:00.0";
/// The runbook's first mdev.
const RUNBOOK_MDEV: &str = "bc127e23-aaaa-4d06-a7aa-88db2dd538e0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn function(address: &str, class: u32, vendor: u16, device: u16) -> PciFunction {
    let address = addr(address);
    PciFunction {
        address,
        sysfs_path: PathBuf::from(format!("devices/pci0000:00/{address}")),
        class,
        revision: None,
        ids: PciIds {
            vendor,
            device,
            subsystem_vendor: vendor,
            subsystem_device: 0,
        },
        vendor_name: None,
        device_name: None,
        subsystem_name: None,
        driver: Some("vfio-pci".into()),
        driver_override: None,
        boot_vga: None,
        numa_node: None,
        reset_methods: Vec::new(),
        modalias: None,
        kernel_modules: Vec::new(),
        iommu_group: Some(1),
        sriov: None,
        physfn: None,
        nvidia_vgpu: None,
        drm: None,
    }
}

fn inventory(functions: Vec<PciFunction>) -> Inventory {
    let mut inv = Inventory::default();
    for f in functions {
        inv.functions.insert(f.address, f);
    }
    inv
}

fn runbook() -> Inventory {
    let mut inv = inventory(vec![function(V100, 0x030200, 0x10de, 0x1db4)]);
    inv.mdev_parents.insert(
        V100.into(),
        MdevParent {
            name: V100.into(),
            sysfs_path: PathBuf::from(format!("devices/pci0000:40/0000:40:03.1/{V100}")),
            pci_address: Some(addr(V100)),
            types: vec![MdevType {
                id: "nvidia-300".into(),
                name: Some("GRID V100-8C".into()),
                description: None,
                device_api: Some("vfio-pci".into()),
                available_instances: Some(1),
            }],
        },
    );
    let uuid: Uuid = RUNBOOK_MDEV.parse().unwrap();
    inv.mdevs.insert(
        uuid,
        Mdev {
            uuid,
            parent: V100.into(),
            type_id: Some("nvidia-300".into()),
            driver: Some("vfio_mdev".into()),
            iommu_group: Some(200),
        },
    );
    inv
}

fn workstation() -> Inventory {
    inventory(vec![
        function("0000:00:02.0", 0x030000, 0x8086, 0x3e92),
        function("0000:01:00.0", 0x030000, 0x10de, 0x2204),
        function("0000:01:00.1", 0x040300, 0x10de, 0x1aef),
    ])
}

fn hopper() -> Inventory {
    let mut pf = function("0000:18:00.0", 0x030200, 0x10de, 0x2330);
    pf.sriov = Some(Sriov {
        total_vfs: 2,
        num_vfs: 2,
        vfs: vec![addr("0000:18:00.4"), addr("0000:18:00.5")],
    });
    let mut vfs = Vec::new();
    for (a, current) in [("0000:18:00.4", Some(1151)), ("0000:18:00.5", None)] {
        let mut vf = function(a, 0x030200, 0x10de, 0x2330);
        vf.physfn = Some(addr("0000:18:00.0"));
        vf.driver = Some("nvidia".into());
        vf.nvidia_vgpu = Some(NvidiaVfVgpu {
            creatable_types: Vec::new(),
            current_type: current,
        });
        vfs.push(vf);
    }
    let mut all = vec![pf];
    all.extend(vfs);
    inventory(all)
}

/// Compares `actual` with `tests/golden/<name>`, or rewrites the file under `GPUVIRT_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("GPUVIRT_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with GPUVIRT_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs; run with GPUVIRT_BLESS=1 to accept",
        path.display()
    );
}

#[test]
fn runbook_mdev_renders_as_the_runbook_shows_it() {
    let r = render(
        &runbook(),
        RenderTarget::Mdev(RUNBOOK_MDEV.parse().unwrap()),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "vfio-pci,sysfsdev=/sys/bus/mdev/devices/bc127e23-aaaa-4d06-a7aa-88db2dd538e0"
        ]
    );
    assert!(r
        .libvirt_xml
        .contains("<address uuid='bc127e23-aaaa-4d06-a7aa-88db2dd538e0'/>"));
    golden("runbook-v100-mdev.xml", &r.libvirt_xml);
    golden("runbook-v100-mdev.qemu", &r.qemu_lines());
}

#[test]
fn runbook_card_renders_as_one_unmanaged_pci_hostdev() {
    let r = render(
        &runbook(),
        RenderTarget::Card(addr(V100)),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(r.qemu_args, ["-device", "vfio-pci,host=0000:41:00.0"]);
    assert_eq!(r.libvirt_xml.matches("<hostdev ").count(), 1);
    assert!(!r.libvirt_xml.contains("multifunction"));
    golden("runbook-v100-card.xml", &r.libvirt_xml);
    golden("runbook-v100-card.qemu", &r.qemu_lines());
    // A 3D controller has no VGA ranges to hand over.
    let e = render(
        &runbook(),
        RenderTarget::Card(addr(V100)),
        &RenderOptions {
            x_vga: true,
            ..RenderOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "x-vga needs a VGA-class function 0, and 0000:41:00.0 has class 030200"
    );
}

#[test]
fn workstation_gpu_and_audio_render_as_one_multifunction_guest_slot() {
    let options = RenderOptions {
        x_vga: true,
        guest_bus: Some(5),
        guest_slot: Some(0),
        qemu_bus: Some("rp1".into()),
        ..RenderOptions::default()
    };
    // Either function names the card; the iGPU in another slot is not part of it.
    for target in ["0000:01:00.0", "0000:01:00.1"] {
        let r = render(&workstation(), RenderTarget::Card(addr(target)), &options).unwrap();
        // The runbook's order: multifunction=on, then x-vga=on. A named bus: no root port.
        assert_eq!(
            r.qemu_args,
            [
                "-device",
                "vfio-pci,host=0000:01:00.0,bus=rp1,addr=00.0,multifunction=on,x-vga=on",
                "-device",
                "vfio-pci,host=0000:01:00.1,bus=rp1,addr=00.1",
            ]
        );
        assert_eq!(r.libvirt_xml.matches("<hostdev ").count(), 2);
        assert_eq!(r.libvirt_xml.matches("multifunction='on'").count(), 1);
        assert!(r.libvirt_xml.contains(
            "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0' multifunction='on'/>"
        ));
        assert!(r.libvirt_xml.contains(
            "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x1'/>"
        ));
        golden("workstation-gpu-audio.xml", &r.libvirt_xml);
        golden("workstation-gpu-audio.qemu", &r.qemu_lines());
    }
    // Without options the functions still share one guest slot: slot 0 behind a root port of
    // gpuvirt's (libvirt's controller 1, chassis 1 as libvirt numbers it).
    let r = render(
        &workstation(),
        RenderTarget::Card(addr("0000:01:00.0")),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "pcie-root-port,id=gpuvirt-rp1,bus=pcie.0,chassis=1",
            "-device",
            "vfio-pci,host=0000:01:00.0,bus=gpuvirt-rp1,addr=00.0,multifunction=on",
            "-device",
            "vfio-pci,host=0000:01:00.1,bus=gpuvirt-rp1,addr=00.1",
        ]
    );
    assert_eq!(
        r.libvirt_xml
            .matches("<address type='pci' domain='0x0000' bus='0x01' slot='0x00'")
            .count(),
        2
    );
    assert_eq!(r.libvirt_xml.matches("multifunction='on'").count(), 1);
    assert_eq!(r.libvirt_xml.matches("managed='no'").count(), 2);
    golden("workstation-gpu-audio-default.xml", &r.libvirt_xml);
    golden("workstation-gpu-audio-default.qemu", &r.qemu_lines());
    // On the root bus: no root port, QEMU's pcie.0, a slot of the user's; managed='yes'.
    let r = render(
        &workstation(),
        RenderTarget::Card(addr("0000:01:00.0")),
        &RenderOptions {
            guest_bus: Some(0),
            guest_slot: Some(0x10),
            managed: true,
            ..RenderOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "vfio-pci,host=0000:01:00.0,bus=pcie.0,addr=10.0,multifunction=on",
            "-device",
            "vfio-pci,host=0000:01:00.1,bus=pcie.0,addr=10.1",
        ]
    );
    assert_eq!(r.libvirt_xml.matches("managed='yes'").count(), 2);
    assert!(r
        .libvirt_xml
        .contains("bus='0x00' slot='0x10' function='0x1'"));
}

#[test]
fn a_single_function_card_is_placed_only_when_asked() {
    let r = render(
        &runbook(),
        RenderTarget::Card(addr(V100)),
        &RenderOptions {
            guest_bus: Some(3),
            ..RenderOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "pcie-root-port,id=gpuvirt-rp3,bus=pcie.0,chassis=3",
            "-device",
            "vfio-pci,host=0000:41:00.0,bus=gpuvirt-rp3,addr=00.0",
        ]
    );
    assert!(r
        .libvirt_xml
        .contains("<address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>"));
    assert!(!r.libvirt_xml.contains("multifunction"));
}

/// Every bad option is refused before any device is looked at, naming the option; so are
/// options the target does not take.
#[test]
fn bad_options_name_themselves() {
    let inv = workstation();
    let card = RenderTarget::Card(addr("0000:01:00.0"));
    let cases: [(RenderOptions, &str); 6] = [
        (
            RenderOptions {
                guest_slot: Some(32),
                qemu_bus: Some("rp1".into()),
                ..RenderOptions::default()
            },
            "guest-slot",
        ),
        (
            RenderOptions {
                guest_slot: Some(2),
                ..RenderOptions::default()
            },
            "guest-slot",
        ),
        (
            RenderOptions {
                guest_bus: Some(0),
                ..RenderOptions::default()
            },
            "guest-slot",
        ),
        (
            RenderOptions {
                qemu_bus: Some("1".into()),
                ..RenderOptions::default()
            },
            "qemu-bus",
        ),
        (
            RenderOptions {
                display: Some(true),
                ..RenderOptions::default()
            },
            "display",
        ),
        (
            RenderOptions {
                ramfb: true,
                display: Some(false),
                ..RenderOptions::default()
            },
            "ramfb",
        ),
    ];
    for (options, option) in cases {
        let e = render(&inv, card, &options).unwrap_err();
        assert!(
            matches!(&e, RenderError::Option { option: o, .. } if *o == option),
            "{options:?}: {e}"
        );
        assert_eq!(e.kind(), gpuvirt_core::ErrorKind::InvalidArgs);
        assert!(
            e.to_string().starts_with(&format!("option '{option}': ")),
            "{e}"
        );
    }
    // A slot on a named bus may be anything up to 31.
    let named = RenderOptions {
        guest_slot: Some(31),
        qemu_bus: Some("pci.1".into()),
        ..RenderOptions::default()
    };
    assert!(render(&inv, card, &named).is_ok());
    let mdev = RenderTarget::Mdev(RUNBOOK_MDEV.parse().unwrap());
    for (options, option) in [
        (
            RenderOptions {
                x_vga: true,
                ..RenderOptions::default()
            },
            "x-vga",
        ),
        (
            RenderOptions {
                managed: true,
                ..RenderOptions::default()
            },
            "managed",
        ),
        (
            RenderOptions {
                ramfb: true,
                ..RenderOptions::default()
            },
            "ramfb",
        ),
    ] {
        let e = render(&runbook(), mdev, &options).unwrap_err();
        assert!(
            matches!(&e, RenderError::Option { option: o, .. } if *o == option),
            "{options:?}: {e}"
        );
    }
}

fn mdev_type(id: &str, name: &str, description: Option<&str>) -> MdevType {
    MdevType {
        id: id.into(),
        name: Some(name.into()),
        description: description.map(Into::into),
        device_api: Some("vfio-pci".into()),
        available_instances: Some(1),
    }
}

#[test]
fn which_types_can_display() {
    for (t, display) in [
        (
            mdev_type("mbochs-small", "mbochs-small", Some("virtual display, 4 MB video memory")),
            true,
        ),
        (
            mdev_type("mdpy-hd", "mdpy-hd", Some("virtual display, 1920x1080 framebuffer")),
            true,
        ),
        (mdev_type("mtty-1", "Single port serial", None), false),
        (
            mdev_type(
                "i915-GVTg_V5_4",
                "GVTg_V5_4",
                Some("low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4"),
            ),
            true,
        ),
        (mdev_type("nvidia-217", "GRID V100-8Q", None), true),
        (mdev_type("nvidia-63", "GRID M60-2B", None), true),
        (mdev_type("nvidia-300", "GRID V100-8C", None), false),
        (mdev_type("nvidia-11", "GRID M60-1A", None), false),
        (mdev_type("vendor-x", "Some Q", None), false),
    ] {
        assert_eq!(mdev_type_can_display(&t), display, "{t:?}");
    }
    let mut ccw = mdev_type(
        "vfio_ccw-io",
        "I/O subchannel (Non-QDIO)",
        Some("virtual display"),
    );
    ccw.device_api = Some("vfio-ccw".into());
    assert!(!mdev_type_can_display(&ccw));
}

/// mbochs' vGPU, as the VM tier's guest has it.
fn mbochs() -> (Inventory, Uuid) {
    let mut inv = Inventory::default();
    inv.mdev_parents.insert(
        "mbochs".into(),
        MdevParent {
            name: "mbochs".into(),
            sysfs_path: PathBuf::from("devices/virtual/mbochs/mbochs"),
            pci_address: None,
            types: vec![mdev_type(
                "mbochs-small",
                "mbochs-small",
                Some("virtual display, 4 MB video memory"),
            )],
        },
    );
    let uuid: Uuid = "4dd511f6-ec08-11e8-b839-2f163ddee3b3".parse().unwrap();
    let mut mdev = runbook().mdevs.into_values().next().unwrap();
    mdev.uuid = uuid;
    mdev.parent = "mbochs".into();
    mdev.type_id = Some("mbochs-small".into());
    inv.mdevs.insert(uuid, mdev);
    (inv, uuid)
}

#[test]
fn a_display_vgpu_renders_with_the_runbooks_display_on() {
    let (inv, uuid) = mbochs();
    let r = render(&inv, RenderTarget::Mdev(uuid), &RenderOptions::default()).unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "vfio-pci,sysfsdev=/sys/bus/mdev/devices/4dd511f6-ec08-11e8-b839-2f163ddee3b3,display=on,rombar=0"
        ]
    );
    assert!(r
        .libvirt_xml
        .starts_with("<hostdev mode='subsystem' type='mdev' model='vfio-pci' display='on'>"));
    golden("mbochs-display.xml", &r.libvirt_xml);
    golden("mbochs-display.qemu", &r.qemu_lines());
    // ramfb: QEMU's vfio-pci-nohotplug; a guest slot; display off overrides the type.
    let r = render(
        &inv,
        RenderTarget::Mdev(uuid),
        &RenderOptions {
            ramfb: true,
            guest_bus: Some(2),
            ..RenderOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "pcie-root-port,id=gpuvirt-rp2,bus=pcie.0,chassis=2",
            "-device",
            "vfio-pci-nohotplug,sysfsdev=/sys/bus/mdev/devices/4dd511f6-ec08-11e8-b839-2f163ddee3b3,bus=gpuvirt-rp2,addr=00.0,display=on,ramfb=on,rombar=0"
        ]
    );
    assert!(r.libvirt_xml.contains("display='on' ramfb='on'>"));
    assert!(r
        .libvirt_xml
        .contains("<address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>"));
    golden("mbochs-display-ramfb.xml", &r.libvirt_xml);
    let r = render(
        &inv,
        RenderTarget::Mdev(uuid),
        &RenderOptions {
            display: Some(false),
            ..RenderOptions::default()
        },
    )
    .unwrap();
    assert!(!r.qemu_args[1].contains("display"));
    assert!(r.libvirt_xml.contains("display='off'"));
    // The runbook's C profile cannot display, but the option turns it on.
    let r = render(
        &runbook(),
        RenderTarget::Mdev(RUNBOOK_MDEV.parse().unwrap()),
        &RenderOptions {
            display: Some(true),
            ..RenderOptions::default()
        },
    )
    .unwrap();
    assert!(r.qemu_args[1].ends_with(",display=on,rombar=0"));
}

#[test]
fn nvidia_per_vf_vgpu_renders_as_its_vf() {
    let inv = hopper();
    let r = render(
        &inv,
        RenderTarget::VgpuVf(addr("0000:18:00.4")),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(r.qemu_args, ["-device", "vfio-pci,host=0000:18:00.4"]);
    golden("hopper-vf-vgpu.xml", &r.libvirt_xml);
    // A VF without a vGPU, and a VF taken for a card, are refused.
    assert_eq!(
        render(
            &inv,
            RenderTarget::VgpuVf(addr("0000:18:00.5")),
            &RenderOptions::default()
        ),
        Err(RenderError::NotAVgpu {
            address: addr("0000:18:00.5")
        })
    );
    assert_eq!(
        render(
            &inv,
            RenderTarget::Card(addr("0000:18:00.4")),
            &RenderOptions::default()
        ),
        Err(RenderError::IsVirtualFunction {
            address: addr("0000:18:00.4")
        })
    );
    // The PF as a card leaves its VFs (same slot) out.
    let r = render(
        &inv,
        RenderTarget::Card(addr("0000:18:00.0")),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(r.qemu_args, ["-device", "vfio-pci,host=0000:18:00.0"]);
}

#[test]
fn unknown_devices_and_device_apis_are_errors() {
    let inv = runbook();
    let missing: Uuid = "00000000-0000-4000-8000-000000000001".parse().unwrap();
    assert_eq!(
        render(&inv, RenderTarget::Mdev(missing), &RenderOptions::default()),
        Err(RenderError::NoSuchMdev { uuid: missing })
    );
    assert!(matches!(
        render(
            &inv,
            RenderTarget::Card(addr("0000:42:00.0")),
            &RenderOptions::default()
        ),
        Err(RenderError::NoSuchDevice { .. })
    ));
    let mut odd = runbook();
    odd.mdev_parents.get_mut(V100).unwrap().types[0].device_api = Some("x'/><evil".into());
    let e = render(
        &odd,
        RenderTarget::Mdev(RUNBOOK_MDEV.parse().unwrap()),
        &RenderOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::UnknownDeviceApi { .. }), "{e}");
}

/// The workstation with the iGPU on i915 (render node and by-path name) and a GVT-g vGPU on it.
fn workstation_with_drm() -> (Inventory, Uuid) {
    let mut inv = workstation();
    let igpu = inv.functions.get_mut(&addr("0000:00:02.0")).unwrap();
    igpu.driver = Some("i915".into());
    igpu.drm = Some(gpuvirt_core::DrmNodes {
        card: Some("/dev/dri/card0".into()),
        render: Some("/dev/dri/renderD128".into()),
        card_by_path: Some("/dev/dri/by-path/pci-0000:00:02.0-card".into()),
        render_by_path: Some("/dev/dri/by-path/pci-0000:00:02.0-render".into()),
    });
    inv.mdev_parents.insert(
        "0000:00:02.0".into(),
        MdevParent {
            name: "0000:00:02.0".into(),
            sysfs_path: PathBuf::from("devices/pci0000:00/0000:00:02.0"),
            pci_address: Some(addr("0000:00:02.0")),
            types: vec![mdev_type("i915-GVTg_V5_4", "GVTg_V5_4", None)],
        },
    );
    let uuid: Uuid = "4dd511f6-ec08-11e8-b839-2f163ddee3b3".parse().unwrap();
    let mut mdev = runbook().mdevs.into_values().next().unwrap();
    mdev.uuid = uuid;
    mdev.parent = "0000:00:02.0".into();
    mdev.type_id = Some("i915-GVTg_V5_4".into());
    inv.mdevs.insert(uuid, mdev);
    (inv, uuid)
}

fn graphics(path: &str, backend: Option<&str>, node: Option<&str>) -> RenderOptions {
    RenderOptions {
        graphics: Some(path.parse().unwrap()),
        display_backend: backend.map(|b| b.parse().unwrap()),
        render_node: node.map(str::to_owned),
        ..RenderOptions::default()
    }
}

#[test]
fn virgl_renders_on_the_gpus_own_render_node_and_passes_nothing_through() {
    let (inv, _) = workstation_with_drm();
    let igpu = RenderTarget::Card(addr("0000:00:02.0"));
    let r = render(&inv, igpu, &graphics("virgl", None, None)).unwrap();
    // The runbook's 3D line: a GL display and a virtio VGA with virgl; the card stays home.
    assert_eq!(
        r.qemu_args,
        [
            "-display",
            "gtk,gl=on",
            "-vga",
            "none",
            "-device",
            "virtio-vga-gl"
        ]
    );
    assert!(!r.libvirt_xml.contains("<hostdev"), "{}", r.libvirt_xml);
    assert!(r.libvirt_xml.contains("<acceleration accel3d='yes'/>"));
    let headless = render(&inv, igpu, &graphics("virgl", Some("egl-headless"), None)).unwrap();
    assert_eq!(
        headless.qemu_args[..2],
        [
            "-display",
            "egl-headless,rendernode=/dev/dri/by-path/pci-0000:00:02.0-render"
        ]
    );
    let chosen = render(
        &inv,
        igpu,
        &graphics("virgl", Some("spice"), Some("/dev/dri/renderD129")),
    )
    .unwrap();
    assert!(chosen.qemu_args[1].ends_with(",gl=on,rendernode=/dev/dri/renderD129"));
    assert!(chosen
        .libvirt_xml
        .contains("<gl enable='yes' rendernode='/dev/dri/renderD129'/>"));
}

#[test]
fn virgl_on_a_card_without_a_render_node_says_why() {
    let (inv, _) = workstation_with_drm();
    // 01:00.0 is on vfio-pci in this inventory: passed through, no DRM node on the host.
    let e = render(
        &inv,
        RenderTarget::Card(addr("0000:01:00.1")),
        &graphics("virgl", None, None),
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::NoRenderNode { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "0000:01:00.0 has no DRM render node on the host (it is on vfio-pci, passed through to VMs), so virgl cannot render on it"
    );
}

#[test]
fn primary_makes_the_card_the_only_display() {
    let (inv, _) = workstation_with_drm();
    let r = render(
        &inv,
        RenderTarget::Card(addr("0000:01:00.0")),
        &graphics("primary", None, None),
    )
    .unwrap();
    assert_eq!(r.qemu_args[..4], ["-vga", "none", "-display", "none"]);
    assert!(r
        .qemu_args
        .iter()
        .any(|a| a.ends_with(",multifunction=on,x-vga=on")));
    assert!(r
        .libvirt_xml
        .starts_with("<video>\n  <model type='none'/>\n</video>\n"));
    assert_eq!(r.libvirt_xml.matches("<hostdev").count(), 2);
}

#[test]
fn a_vgpu_display_renders_on_its_parents_render_node() {
    let (inv, uuid) = workstation_with_drm();
    let r = render(
        &inv,
        RenderTarget::Mdev(uuid),
        &graphics("vgpu-display", Some("egl-headless"), None),
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-display",
            "egl-headless,rendernode=/dev/dri/by-path/pci-0000:00:02.0-render",
            "-device",
            "vfio-pci,sysfsdev=/sys/bus/mdev/devices/4dd511f6-ec08-11e8-b839-2f163ddee3b3,display=on,rombar=0",
        ]
    );
    // VNC has no GL: headless EGL renders for it on the parent's node.
    let vnc = render(
        &inv,
        RenderTarget::Mdev(uuid),
        &graphics("vgpu-display", Some("vnc"), None),
    )
    .unwrap();
    assert_eq!(
        vnc.qemu_args[..4],
        [
            "-display",
            "egl-headless,rendernode=/dev/dri/by-path/pci-0000:00:02.0-render",
            "-vnc",
            "127.0.0.1:0"
        ]
    );
    // mbochs' parent is virtual: no render node, plain VNC.
    let (inv, uuid) = mbochs();
    let plain = render(
        &inv,
        RenderTarget::Mdev(uuid),
        &graphics("vgpu-display", Some("vnc"), None),
    )
    .unwrap();
    assert_eq!(plain.qemu_args[..2], ["-vnc", "127.0.0.1:0"]);
}

#[test]
fn graphics_options_that_do_not_fit_name_themselves() {
    let (inv, uuid) = workstation_with_drm();
    let card = RenderTarget::Card(addr("0000:00:02.0"));
    let mdev = RenderTarget::Mdev(uuid);
    let backend_alone = RenderOptions {
        display_backend: Some("vnc".parse().unwrap()),
        ..RenderOptions::default()
    };
    let display_off = RenderOptions {
        display: Some(false),
        ..graphics("vgpu-display", None, None)
    };
    let cases: Vec<(RenderTarget, RenderOptions, &str)> = vec![
        (card, backend_alone, "display-backend"),
        (
            card,
            graphics("primary", Some("vnc"), None),
            "display-backend",
        ),
        (
            card,
            graphics("primary", None, Some("/dev/dri/renderD128")),
            "render-node",
        ),
        (
            card,
            graphics("virgl", None, Some("/dev/dri/renderD128")),
            "render-node",
        ),
        (
            card,
            graphics("virgl", Some("vnc"), Some("/dev/sda")),
            "render-node",
        ),
        (
            card,
            graphics("virgl", Some("vnc"), Some("/dev/dri/x,gl=off")),
            "render-node",
        ),
        (mdev, display_off, "display"),
        (mdev, graphics("virgl", None, None), "graphics=virgl"),
        (mdev, graphics("primary", None, None), "graphics=primary"),
        (
            card,
            graphics("vgpu-display", None, None),
            "graphics=vgpu-display",
        ),
    ];
    for (target, options, named) in cases {
        match render(&inv, target, &options) {
            Err(RenderError::Option { option, .. }) => assert_eq!(option, named, "{options:?}"),
            other => panic!("{options:?}: expected option {named} refused, got {other:?}"),
        }
    }
}
