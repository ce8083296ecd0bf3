//! Unit tests of `reboot.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn wants() -> BootWants {
    BootWants {
        iommu: true,
        blacklist: vec!["nouveau".into()],
        early: vec![EarlyFunction {
            address: addr("0000:01:00.0"),
            rule: "vm-pool".into(),
        }],
    }
}

fn running_as_wanted() -> Running {
    Running {
        cmdline: "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt".into(),
        iommu_enabled: true,
        cpu_vendor: Some(CpuVendor::Intel),
        loaded_modules: ["vfio_pci".to_string(), "nvidia".to_string()].into(),
        drivers: [(addr("0000:01:00.0"), Some("vfio-pci".to_string()))].into(),
    }
}

#[test]
fn nothing_to_reboot_for_when_the_running_system_matches() {
    assert_eq!(
        reboot_reasons(&[], &wants(), &running_as_wanted()),
        Vec::<String>::new()
    );
}

#[test]
fn each_difference_is_a_reason() {
    let mut running = running_as_wanted();
    running.cmdline = "ro intel_iommu=off".into();
    running.loaded_modules.insert("nouveau".into());
    running
        .drivers
        .insert(addr("0000:01:00.0"), Some("nouveau".into()));
    let reasons = reboot_reasons(
        &["write /etc/modprobe.d/gpuvirt.conf".into()],
        &wants(),
        &running,
    );
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(reasons[0].contains("write /etc/modprobe.d/gpuvirt.conf"));
    assert!(reasons[1].contains("intel_iommu=off") && reasons[1].contains("intel_iommu=on"));
    assert!(reasons[2].contains("nouveau is blacklisted"));
    assert!(
        reasons[3].contains("0000:01:00.0")
            && reasons[3].contains("\"vm-pool\"")
            && reasons[3].contains("on nouveau"),
        "{}",
        reasons[3]
    );
}

#[test]
fn an_iommu_off_without_a_parameter_names_the_one_to_add() {
    let mut running = running_as_wanted();
    running.cmdline = "ro quiet".into();
    running.iommu_enabled = false;
    running.cpu_vendor = Some(CpuVendor::Amd);
    let reasons = reboot_reasons(&[], &wants(), &running);
    assert_eq!(reasons.len(), 1, "{reasons:#?}");
    assert!(reasons[0].contains("amd_iommu=on"), "{}", reasons[0]);
    // No passthrough rule: the IOMMU is not the policy's business.
    let w = BootWants {
        iommu: false,
        ..wants()
    };
    assert!(reboot_reasons(&[], &w, &running).is_empty());
}

#[test]
fn an_unbound_early_function_is_a_reason_and_a_missing_one_is_not() {
    let mut running = running_as_wanted();
    running.drivers.insert(addr("0000:01:00.0"), None);
    let reasons = reboot_reasons(&[], &wants(), &running);
    assert!(reasons[0].contains("on no driver"), "{reasons:?}");
    running.drivers.clear();
    assert!(reboot_reasons(&[], &wants(), &running).is_empty());
}

#[test]
fn pending_changes_belong_to_their_boot() {
    let mut c = BootChanges::default();
    c.record("boot-a", "write /etc/modprobe.d/gpuvirt.conf".into());
    c.record("boot-a", "write /etc/modprobe.d/gpuvirt.conf".into());
    c.record("boot-a", "regenerate the initramfs".into());
    assert_eq!(c.pending(Some("boot-a")).len(), 2);
    assert!(c.pending(Some("boot-b")).is_empty());
    // Unknown boot id: no reboot can be shown, so the changes stay pending.
    assert_eq!(c.pending(None).len(), 2);
    // A change in a later boot starts a new list.
    c.record(
        "boot-b",
        "remove /etc/udev/rules.d/61-gpuvirt-vfio.rules".into(),
    );
    assert_eq!(c.changes.len(), 1);
    assert_eq!(c.boot_id, "boot-b");
}

#[test]
fn the_record_survives_a_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = BootChangeStore::new(dir.path());
    assert_eq!(store.load().unwrap(), BootChanges::default());
    let mut c = BootChanges::default();
    c.record("b1", "write /etc/modprobe.d/gpuvirt.conf".into());
    store.save(&c).unwrap();
    assert_eq!(store.load().unwrap(), c);
    std::fs::write(store.path(), "{not json").unwrap();
    assert!(matches!(store.load(), Err(RebootStateError::Parse(..))));
}

#[test]
fn the_boot_id_is_read_under_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    assert_eq!(read_boot_id(&root), None);
    let path = root.join(BOOT_ID);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "8a2c5e0e-1111-4222-8333-944445555666\n").unwrap();
    assert_eq!(
        read_boot_id(&root).as_deref(),
        Some("8a2c5e0e-1111-4222-8333-944445555666")
    );
}
