//! libvirt XML and QEMU arguments for the runbook's V100 (as an mdev and as a whole card), a
//! workstation's discrete GPU with its HDMI audio function, and an NVIDIA per-VF vGPU, checked
//! against golden files in `tests/golden/` (regenerate with `GPUVIRT_BLESS=1`).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use gpuvirt_core::render::{render, GuestSlot, PassthroughOptions, RenderError, RenderTarget};
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
        &PassthroughOptions::default(),
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
        &PassthroughOptions::default(),
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
        &PassthroughOptions {
            x_vga: true,
            guest: None,
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
    let options = PassthroughOptions {
        x_vga: true,
        guest: Some(GuestSlot {
            bus: 5,
            slot: 0,
            qemu_bus: "rp1".into(),
        }),
    };
    // Either function names the card; the iGPU in another slot is not part of it.
    for target in ["0000:01:00.0", "0000:01:00.1"] {
        let r = render(&workstation(), RenderTarget::Card(addr(target)), &options).unwrap();
        assert_eq!(
            r.qemu_args,
            [
                "-device",
                "vfio-pci,host=0000:01:00.0,bus=rp1,addr=00.0,x-vga=on,multifunction=on",
                "-device",
                "vfio-pci,host=0000:01:00.1,bus=rp1,addr=00.1",
            ]
        );
        assert_eq!(r.libvirt_xml.matches("<hostdev ").count(), 2);
        assert_eq!(r.libvirt_xml.matches("multifunction='on'").count(), 1);
        assert!(!r.libvirt_xml.contains("bus='0x00' slot='0x02'"));
        golden("workstation-gpu-audio.xml", &r.libvirt_xml);
        golden("workstation-gpu-audio.qemu", &r.qemu_lines());
    }
    // Without a guest slot each function goes where libvirt/QEMU put it, still all of them.
    let r = render(
        &workstation(),
        RenderTarget::Card(addr("0000:01:00.0")),
        &PassthroughOptions::default(),
    )
    .unwrap();
    assert_eq!(
        r.qemu_args,
        [
            "-device",
            "vfio-pci,host=0000:01:00.0",
            "-device",
            "vfio-pci,host=0000:01:00.1",
        ]
    );
    assert!(!r.libvirt_xml.contains("<address type='pci'"));
    assert!(!r.libvirt_xml.contains("multifunction"));
}

#[test]
fn nvidia_per_vf_vgpu_renders_as_its_vf() {
    let inv = hopper();
    let r = render(
        &inv,
        RenderTarget::VgpuVf(addr("0000:18:00.4")),
        &PassthroughOptions::default(),
    )
    .unwrap();
    assert_eq!(r.qemu_args, ["-device", "vfio-pci,host=0000:18:00.4"]);
    golden("hopper-vf-vgpu.xml", &r.libvirt_xml);
    // A VF without a vGPU, and a VF taken for a card, are refused.
    assert_eq!(
        render(
            &inv,
            RenderTarget::VgpuVf(addr("0000:18:00.5")),
            &PassthroughOptions::default()
        ),
        Err(RenderError::NotAVgpu {
            address: addr("0000:18:00.5")
        })
    );
    assert_eq!(
        render(
            &inv,
            RenderTarget::Card(addr("0000:18:00.4")),
            &PassthroughOptions::default()
        ),
        Err(RenderError::IsVirtualFunction {
            address: addr("0000:18:00.4")
        })
    );
    // The PF as a card leaves its VFs (same slot) out.
    let r = render(
        &inv,
        RenderTarget::Card(addr("0000:18:00.0")),
        &PassthroughOptions::default(),
    )
    .unwrap();
    assert_eq!(r.qemu_args, ["-device", "vfio-pci,host=0000:18:00.0"]);
}

#[test]
fn unknown_devices_and_device_apis_are_errors() {
    let inv = runbook();
    let missing: Uuid = "00000000-0000-4000-8000-000000000001".parse().unwrap();
    assert_eq!(
        render(
            &inv,
            RenderTarget::Mdev(missing),
            &PassthroughOptions::default()
        ),
        Err(RenderError::NoSuchMdev { uuid: missing })
    );
    assert!(matches!(
        render(
            &inv,
            RenderTarget::Card(addr("0000:42:00.0")),
            &PassthroughOptions::default()
        ),
        Err(RenderError::NoSuchDevice { .. })
    ));
    let mut odd = runbook();
    odd.mdev_parents.get_mut(V100).unwrap().types[0].device_api = Some("x'/><evil".into());
    let e = render(
        &odd,
        RenderTarget::Mdev(RUNBOOK_MDEV.parse().unwrap()),
        &PassthroughOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RenderError::UnknownDeviceApi { .. }), "{e}");
}
