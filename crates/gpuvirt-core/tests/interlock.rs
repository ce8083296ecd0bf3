//! Passthrough interlocks over scanned tempdir hosts: boot VGA, a group shared with a NIC and
//! an NVMe disk (named with what they back and where it is mounted), holders of DRM/NVIDIA/VFIO
//! nodes, IOMMU off (with the vendor's kernel parameter), ownership for returns.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::Path;

use gpuvirt_core::holders::{device_nodes, holders_of, scan_holders, Holder, NodePattern};
use gpuvirt_core::interlock::{
    check_passthrough, check_return, Allowances, CpuVendor, Facts, Refusal,
};
use gpuvirt_core::ledger::{FunctionRecord, Ledger, SlotRecord, SlotState};
use gpuvirt_core::testing::{PciDev, TreeBuilder};
use gpuvirt_core::ErrorKind;
use gpuvirt_core::{scan, Inventory, PciAddress, PciSlot, Root};

const IGPU: &str = "0000:00:02.0";
const DGPU: &str = "0000:01:00.0";
const SHARED_GPU: &str = "0000:03:00.0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn slot(s: &str) -> PciSlot {
    addr(s).slot()
}

/// A workstation: boot-VGA iGPU; a discrete GPU + audio behind a root port (group 1); and a
/// second GPU whose group 3 also holds a NIC and an NVMe controller.
fn host(dir: &Path, iommu: bool) -> TreeBuilder {
    let t = TreeBuilder::new(dir);
    let g = |d: PciDev, group: u32| if iommu { d.group(group) } else { d };
    t.pci(&g(
        PciDev::new(IGPU, "pci0000:00", 0x030000, 0x8086, 0x3e92).driver("i915"),
        0,
    ));
    t.file(format!("sys/devices/pci0000:00/{IGPU}/boot_vga"), "1\n");
    t.pci(&g(
        PciDev::new("0000:00:01.0", "pci0000:00", 0x060400, 0x8086, 0x1901).driver("pcieport"),
        1,
    ));
    let port = "pci0000:00/0000:00:01.0";
    t.pci(&g(
        PciDev::new(DGPU, port, 0x030000, 0x10de, 0x2206).driver("nouveau"),
        1,
    ));
    t.pci(&g(
        PciDev::new("0000:01:00.1", port, 0x040300, 0x10de, 0x1aef).driver("snd_hda_intel"),
        1,
    ));
    t.file(
        format!("sys/devices/{port}/{DGPU}/drm/card1/dev"),
        "226:1\n",
    );
    t.file(
        format!("sys/devices/{port}/{DGPU}/drm/renderD129/dev"),
        "226:129\n",
    );
    t.pci(&g(
        PciDev::new(SHARED_GPU, "pci0000:00", 0x030000, 0x10de, 0x1db4).driver("nvidia"),
        3,
    ));
    t.pci(&g(
        PciDev::new("0000:04:00.0", "pci0000:00", 0x020000, 0x8086, 0x15bc).driver("e1000e"),
        3,
    ));
    t.file(
        "sys/devices/pci0000:00/0000:04:00.0/net/eno1/ifindex",
        "2\n",
    );
    t.pci(&g(
        PciDev::new("0000:05:00.0", "pci0000:00", 0x010802, 0x144d, 0xa808).driver("nvme"),
        3,
    ));
    t.file(
        "sys/devices/pci0000:00/0000:05:00.0/nvme/nvme0/nvme0n1/size",
        "1000\n",
    );
    t.file(
        "proc/mounts",
        "/dev/nvme0n1p2 / ext4 rw 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n/dev/sda1 /srv ext4 rw 0 0\nproc /proc proc rw 0 0\n",
    );
    t.file(
        "proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: GenuineIntel\n",
    );
    if iommu {
        t.iommu_unit("dmar0");
        t.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on");
    } else {
        t.cmdline("BOOT_IMAGE=/vmlinuz quiet");
    }
    t
}

fn holder(t: &TreeBuilder, pid: u32, comm: &str, fd: u32, node: &str) {
    t.file(format!("proc/{pid}/comm"), format!("{comm}\n"));
    let link = t.root().join(format!("proc/{pid}/fd/{fd}"));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(node, link).unwrap();
}

fn inventory(dir: &Path) -> Inventory {
    scan(&Root::new(dir))
}

fn check(dir: &Path, s: PciSlot, allow: Allowances) -> Result<(), Vec<Refusal>> {
    let inv = inventory(dir);
    let facts = Facts::gather(&Root::new(dir), &inv, s);
    check_passthrough(&inv, s, &facts, allow)
}

#[test]
fn a_card_alone_in_its_group_with_no_holders_passes() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), true);
    // A process holding another GPU's node does not matter.
    holder(&t, 300, "Xorg", 4, "/dev/dri/card0");
    check(dir.path(), slot(DGPU), Allowances::default()).unwrap();
}

#[test]
fn boot_vga_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), true);
    let refusals = check(dir.path(), slot(IGPU), Allowances::default()).unwrap_err();
    assert_eq!(
        refusals,
        vec![Refusal::BootVga {
            address: addr(IGPU)
        }]
    );
    let text = refusals[0].to_string();
    assert!(
        text.contains("0000:00:02.0") && text.contains("allow_boot_vga"),
        "{text}"
    );
    assert_eq!(refusals[0].kind(), ErrorKind::BootVga);
    check(dir.path(), slot(IGPU), Allowances { boot_vga: true }).unwrap();
}

#[test]
fn a_group_shared_with_a_nic_and_a_disk_names_them_and_what_they_back() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), true);
    let refusals = check(dir.path(), slot(SHARED_GPU), Allowances::default()).unwrap_err();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let Refusal::GroupNotViable { group, members, .. } = &refusals[0] else {
        panic!("{refusals:?}");
    };
    assert_eq!(*group, 3);
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].name, "0000:04:00.0");
    assert_eq!(members[0].driver.as_deref(), Some("e1000e"));
    assert_eq!(members[0].backs, ["network interface eno1"]);
    assert_eq!(members[1].name, "0000:05:00.0");
    assert_eq!(
        members[1].backs,
        [
            "disk nvme0n1",
            "nvme0n1p2 mounted on /",
            "nvme0n1p1 mounted on /boot/efi"
        ]
    );
    let text = refusals[0].to_string();
    for needle in [
        "IOMMU group 3",
        "0000:04:00.0 (Ethernet controller) bound to e1000e, backing network interface eno1",
        "0000:05:00.0",
        "nvme0n1p2 mounted on /",
        "ACS",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert_eq!(refusals[0].kind(), ErrorKind::GroupNotViable);
}

#[test]
fn members_on_vfio_or_unbound_do_not_block_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), true);
    let nic = PciDev::new("0000:04:00.0", "pci0000:00", 0x020000, 0x8086, 0x15bc).group(3);
    let nvme = PciDev::new("0000:05:00.0", "pci0000:00", 0x010802, 0x144d, 0xa808).group(3);
    t.unbind(&nic);
    t.unbind(&nvme);
    t.bind(&nvme, "vfio-pci");
    check(dir.path(), slot(SHARED_GPU), Allowances::default()).unwrap();
}

#[test]
fn holders_of_drm_nvidia_and_vfio_nodes_are_listed_with_pid_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), true);
    holder(&t, 1234, "Xorg", 12, "/dev/dri/card1");
    holder(&t, 1234, "Xorg", 13, "/dev/dri/renderD129");
    holder(&t, 77, "firefox", 40, "/dev/dri/renderD129");
    holder(&t, 99, "bash", 0, "/dev/pts/0");
    let refusals = check(dir.path(), slot(DGPU), Allowances::default()).unwrap_err();
    let Refusal::Busy { holders, .. } = &refusals[0] else {
        panic!("{refusals:?}");
    };
    assert_eq!(
        holders,
        &vec![
            Holder {
                pid: 77,
                command: "firefox".into(),
                node: "/dev/dri/renderD129".into()
            },
            Holder {
                pid: 1234,
                command: "Xorg".into(),
                node: "/dev/dri/card1".into()
            },
            Holder {
                pid: 1234,
                command: "Xorg".into(),
                node: "/dev/dri/renderD129".into()
            },
        ]
    );
    let text = refusals[0].to_string();
    assert!(
        text.contains("pid 1234 (Xorg) has /dev/dri/card1 open"),
        "{text}"
    );
    assert_eq!(refusals[0].kind(), ErrorKind::Busy);

    // The NVIDIA-driven card: any /dev/nvidia* node counts, and its VFIO group node.
    holder(&t, 500, "nvidia-smi", 3, "/dev/nvidiactl");
    holder(&t, 501, "qemu-system-x86", 20, "/dev/vfio/3");
    let inv = inventory(dir.path());
    let f = &inv.functions[&addr(SHARED_GPU)];
    let nodes = device_nodes(&Root::new(dir.path()), f);
    assert!(nodes.contains(&NodePattern::Prefix("/dev/nvidia".into())));
    assert!(nodes.contains(&NodePattern::Exact("/dev/vfio/3".into())));
    let found = holders_of(&Root::new(dir.path()), [f]);
    let pids: Vec<u32> = found.iter().map(|h| h.pid).collect();
    assert_eq!(pids, [500, 501]);
    assert!(scan_holders(&Root::new(dir.path()), &[]).is_empty());
}

#[test]
fn iommu_off_says_which_kernel_parameter_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), false);
    let refusals = check(dir.path(), slot(DGPU), Allowances::default()).unwrap_err();
    assert!(matches!(
        refusals[0],
        Refusal::IommuDisabled {
            cpu_vendor: Some(CpuVendor::Intel),
            ..
        }
    ));
    let text = refusals[0].to_string();
    assert!(text.contains("intel_iommu=on iommu=pt"), "{text}");
    assert_eq!(refusals[0].kind(), ErrorKind::NotSupported);

    t.file("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    let refusals = check(dir.path(), slot(DGPU), Allowances::default()).unwrap_err();
    assert!(
        refusals[0].to_string().contains("amd_iommu=on iommu=pt"),
        "{}",
        refusals[0]
    );
    t.file("proc/cpuinfo", "");
    let refusals = check(dir.path(), slot(DGPU), Allowances::default()).unwrap_err();
    let text = refusals[0].to_string();
    assert!(
        text.contains("intel_iommu=on (Intel) or amd_iommu=on (AMD)"),
        "{text}"
    );
}

#[test]
fn several_refusals_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), true);
    holder(&t, 10, "Xorg", 1, "/dev/nvidia0");
    let refusals = check(dir.path(), slot(SHARED_GPU), Allowances::default()).unwrap_err();
    let kinds: Vec<ErrorKind> = refusals.iter().map(Refusal::kind).collect();
    assert_eq!(kinds, [ErrorKind::GroupNotViable, ErrorKind::Busy]);
}

#[test]
fn an_empty_slot_is_no_such_device() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), true);
    let refusals = check(dir.path(), slot("0000:09:00.0"), Allowances::default()).unwrap_err();
    assert_eq!(refusals[0].kind(), ErrorKind::NoSuchDevice);
}

#[test]
fn returning_needs_ownership_and_no_holders() {
    let dir = tempfile::tempdir().unwrap();
    let t = host(dir.path(), true);
    let mut ledger = Ledger::default();
    let none = Facts::default();
    let refusals = check_return(&ledger, slot(DGPU), &none).unwrap_err();
    assert_eq!(refusals, vec![Refusal::NotOwned { slot: slot(DGPU) }]);
    assert!(refusals[0].to_string().contains("0000:01:00"));
    assert_eq!(refusals[0].kind(), ErrorKind::PolicyViolation);

    ledger.slots.insert(
        Ledger::slot_key(slot(DGPU)),
        SlotRecord {
            functions: vec![FunctionRecord {
                address: addr(DGPU),
                original_driver: Some("nouveau".into()),
            }],
            rule: None,
            state: SlotState::Assigned,
            removal: None,
        },
    );
    check_return(&ledger, slot(DGPU), &none).unwrap();

    // A VM holding the card's VFIO group blocks the return.
    holder(&t, 4321, "qemu-system-x86", 30, "/dev/vfio/1");
    let inv = inventory(dir.path());
    let facts = Facts::gather(&Root::new(dir.path()), &inv, slot(DGPU));
    let refusals = check_return(&ledger, slot(DGPU), &facts).unwrap_err();
    assert!(
        refusals[0]
            .to_string()
            .contains("pid 4321 (qemu-system-x86) has /dev/vfio/1 open"),
        "{}",
        refusals[0]
    );
}
