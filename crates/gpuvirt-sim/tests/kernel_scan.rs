//! The inventory read through the simulated sysfs (materialised to a directory) equals the
//! fixture's description, for every bundled fixture and after changes.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use gpuvirt_core::{scan, PciAddress, Root};
use gpuvirt_sim::fixture::{bundled_names, ExpectedInventory, Fixture};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::materialize;
use gpuvirt_sim::Backend;
use uuid::Uuid;

fn scanned(k: &Kernel) -> (ExpectedInventory, gpuvirt_core::Inventory) {
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    let inv = scan(&Root::new(dir.path()));
    (ExpectedInventory::from_inventory(&inv), inv)
}

/// The part of a host description that a GPU-scoped scan reads in full: display functions and
/// every function of their slots (a GPU's VFs carry its class), mdev parents' functions, and
/// every member of those functions' and the mdevs' IOMMU groups.
fn gpu_scope(mut e: ExpectedInventory) -> ExpectedInventory {
    let display: BTreeSet<_> = e
        .functions
        .iter()
        .filter(|(_, f)| f.class >> 16 == 0x03)
        .map(|(a, _)| a.slot())
        .collect();
    let mut core: BTreeSet<PciAddress> = e
        .functions
        .keys()
        .filter(|a| display.contains(&a.slot()))
        .copied()
        .collect();
    core.extend(
        e.parents
            .keys()
            .filter_map(|n| n.parse::<PciAddress>().ok())
            .filter(|a| e.functions.contains_key(a)),
    );
    let mut groups: BTreeSet<u32> = core
        .iter()
        .filter_map(|a| e.functions[a].iommu_group)
        .collect();
    groups.extend(e.groups.iter().filter_map(|(id, members)| {
        members
            .iter()
            .any(|m| m.parse::<Uuid>().is_ok_and(|u| e.mdevs.contains_key(&u)))
            .then_some(*id)
    }));
    e.groups.retain(|id, _| groups.contains(id));
    let members: BTreeSet<PciAddress> = e
        .groups
        .values()
        .flatten()
        .filter_map(|m| m.parse().ok())
        .collect();
    e.functions
        .retain(|a, _| core.contains(a) || members.contains(a));
    e
}

#[test]
fn scan_of_every_fixture_equals_its_description() {
    for name in bundled_names() {
        let k = Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap();
        let (got, inv) = scanned(&k);
        let expected = k.expected_inventory();
        // Every function is known by its class, every group is counted.
        let classes: BTreeMap<PciAddress, Option<u32>> = expected
            .functions
            .iter()
            .map(|(a, f)| (*a, Some(f.class)))
            .collect();
        assert_eq!(inv.pci_classes, classes, "{name}");
        assert_eq!(inv.iommu.group_count, expected.groups.len(), "{name}");
        assert_eq!(got, gpu_scope(expected), "{name}");
        assert!(inv.warnings.is_empty(), "{name}: {:?}", inv.warnings);
    }
}

#[test]
fn runbook_scan_shows_the_runbook_facts() {
    let k = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    let (_, inv) = scanned(&k);
    let gpu = &inv.functions[&"0000:41:00.0".parse().unwrap()];
    assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
    assert_eq!(gpu.iommu_group, Some(66));
    assert_eq!(gpu.kernel_modules, vec!["nvidiafb", "nouveau"]);
    assert_eq!(
        gpu.device_name.as_deref(),
        Some("GV100GL [Tesla V100 PCIe 16GB]")
    );
    let t = inv.mdev_parents["0000:41:00.0"]
        .types
        .iter()
        .find(|t| t.id == "nvidia-300")
        .unwrap();
    assert_eq!(t.name.as_deref(), Some("GRID V100-8C"));
    assert_eq!(t.available_instances, Some(2));
    assert!(inv.iommu.enabled);
}

#[test]
fn scan_follows_changes() {
    let mut k = Kernel::from_fixture(&Fixture::bundled("vm-reference").unwrap()).unwrap();
    k.load_module("vfio_pci").unwrap();
    k.write_str(
        "sys/bus/pci/devices/0000:01:00.0/driver_override",
        "vfio-pci",
    )
    .unwrap();
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", "0000:01:00.0")
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", "0000:01:00.0")
        .unwrap();
    for i in 1..=4 {
        let u = format!("00000000-0000-4000-8000-00000000000{i}");
        k.write_str(
            "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-large/create",
            &u,
        )
        .unwrap();
    }
    let (got, inv) = scanned(&k);
    assert_eq!(got, gpu_scope(k.expected_inventory()));
    assert!(inv.modules.vfio_pci && inv.modules.mdev);
    assert_eq!(got.parents["mbochs"]["mbochs-small"].available_instances, 0);
    assert_eq!(got.mdevs.len(), 4);
}

#[test]
fn nic_shared_group_names_only_the_members_left_on_the_host() {
    let k = Kernel::from_fixture(&Fixture::bundled("nic-shared-group").unwrap()).unwrap();
    let (_, inv) = scanned(&k);
    let g = &inv.groups[&12];
    assert!(!g.viable);
    // The T4 at 03:00.0 is the card being passed through, not a problem of its own group.
    assert_eq!(
        g.problems,
        [
            "0000:04:00.0 (Ethernet controller, igb) shares IOMMU group 12 and would stay on the host",
            "0000:04:00.1 (Ethernet controller, igb) shares IOMMU group 12 and would stay on the host",
        ]
    );
    assert!(inv.groups[&20].viable);
}
