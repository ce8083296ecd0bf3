//! The shard model over hand-made inventories: backend detection for each kind of parent,
//! capacity from the live numbers, manual create/remove planning with its refusals, ownership,
//! and the recreate plan for defined mdevs.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use gpuvirt_core::ledger::{Ledger, MdevRecord, MdevStart, VgpuRecord};
use gpuvirt_core::plan::Action;
use gpuvirt_core::shard::{
    plan_create, plan_remove, plan_remove_vgpu, recreate_plan, shard_parent, shard_parents,
    Backend, InactiveReason, Owner, ShardChild, ShardError,
};
use gpuvirt_core::ErrorKind;
use gpuvirt_core::{
    Inventory, Mdev, MdevParent, MdevType, NvidiaVfVgpu, PciAddress, PciFunction, PciIds, Sriov,
    VgpuTypeOffer,
};
use uuid::Uuid;

const V100: &str = "0000:41:00.0";
const H100: &str = "0000:81:00.0";
const AMD: &str = "0000:c1:00.0";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n)
}

fn function(address: PciAddress, class: u32, vendor: u16) -> PciFunction {
    PciFunction {
        address,
        sysfs_path: PathBuf::from(format!("devices/pci0000:00/{address}")),
        class,
        revision: None,
        ids: PciIds {
            vendor,
            device: 0x1234,
            subsystem_vendor: vendor,
            subsystem_device: 0,
        },
        vendor_name: None,
        device_name: None,
        subsystem_name: None,
        driver: None,
        driver_override: None,
        boot_vga: None,
        numa_node: None,
        reset_methods: Vec::new(),
        modalias: None,
        kernel_modules: Vec::new(),
        iommu_group: None,
        sriov: None,
        physfn: None,
        nvidia_vgpu: None,
        drm: None,
    }
}

fn mdev_type(id: &str, name: &str, available: u32) -> MdevType {
    MdevType {
        id: id.into(),
        name: Some(name.into()),
        description: None,
        device_api: Some("vfio-pci".into()),
        available_instances: Some(available),
    }
}

/// The runbook's V100 with `existing` nvidia-300 mdevs (of 2), a NIC with SR-IOV (not a GPU),
/// a Hopper-class card with 4 VFs (VF 0 carries type 557), and an AMD SR-IOV GPU.
fn host(existing: u32) -> Inventory {
    let mut inv = Inventory::default();
    let v100 = function(addr(V100), 0x030200, 0x10de);
    inv.functions.insert(v100.address, v100);
    inv.mdev_parents.insert(
        V100.into(),
        MdevParent {
            name: V100.into(),
            sysfs_path: PathBuf::from(format!("devices/pci0000:40/{V100}")),
            pci_address: Some(addr(V100)),
            types: vec![
                // One type per GPU: the others drop to 0 once one exists.
                mdev_type("nvidia-299", "GRID V100-16C", u32::from(existing == 0)),
                mdev_type("nvidia-300", "GRID V100-8C", 2 - existing),
            ],
        },
    );
    for i in 0..existing {
        inv.mdevs.insert(
            uuid(u128::from(i)),
            Mdev {
                uuid: uuid(u128::from(i)),
                parent: V100.into(),
                type_id: Some("nvidia-300".into()),
                driver: None,
                iommu_group: None,
            },
        );
    }
    let mut nic = function(addr("0000:05:00.0"), 0x020000, 0x8086);
    nic.sriov = Some(Sriov {
        total_vfs: 8,
        num_vfs: 0,
        vfs: Vec::new(),
    });
    inv.functions.insert(nic.address, nic);

    let mut pf = function(addr(H100), 0x030200, 0x10de);
    let vfs: Vec<PciAddress> = (1..=4).map(|f| PciAddress::new(0, 0x81, 0, f)).collect();
    pf.sriov = Some(Sriov {
        total_vfs: 16,
        num_vfs: 4,
        vfs: vfs.clone(),
    });
    inv.functions.insert(pf.address, pf);
    for (i, a) in vfs.iter().enumerate() {
        let mut vf = function(*a, 0x030200, 0x10de);
        vf.physfn = Some(addr(H100));
        vf.nvidia_vgpu = Some(NvidiaVfVgpu {
            creatable_types: if i == 0 {
                Vec::new()
            } else {
                vec![VgpuTypeOffer {
                    id: 557,
                    name: "NVIDIA H100-8C".into(),
                }]
            },
            current_type: (i == 0).then_some(557),
        });
        inv.functions.insert(vf.address, vf);
    }
    let mut amd = function(addr(AMD), 0x038000, 0x1002);
    amd.sriov = Some(Sriov {
        total_vfs: 7,
        num_vfs: 0,
        vfs: Vec::new(),
    });
    inv.functions.insert(amd.address, amd);
    inv
}

#[test]
fn each_parent_gets_its_backend_and_the_nic_is_no_parent() {
    let inv = host(1);
    let parents = shard_parents(&inv);
    let summary: Vec<(String, Backend)> = parents
        .iter()
        .map(|p| (p.name.clone(), p.backend))
        .collect();
    assert_eq!(
        summary,
        vec![
            (V100.to_string(), Backend::Mdev),
            (H100.to_string(), Backend::NvidiaVf),
            (AMD.to_string(), Backend::Sriov),
        ]
    );
    assert_eq!(
        serde_json::to_value(Backend::NvidiaVf).unwrap(),
        serde_json::json!("nvidia-vf")
    );
    let v100 = &parents[0];
    let t = v100.resolve_type("V100-8C").unwrap();
    assert_eq!((t.in_use, t.available, t.capacity()), (1, 1, 2));
    assert_eq!(
        v100.children,
        vec![ShardChild::Mdev {
            uuid: uuid(0),
            type_id: Some("nvidia-300".into())
        }]
    );
    let h100 = &parents[1];
    let t = h100.resolve_type("557").unwrap();
    assert_eq!((t.in_use, t.available), (1, 3));
    assert_eq!(h100.resolve_type("h100-8c").unwrap().id, "557");
    let amd = &parents[2];
    assert_eq!(amd.resolve_type("vf").unwrap().available, 7);
    // Any spelling of the address finds the parent; a NIC is not one.
    assert_eq!(shard_parent(&inv, "41:00.0").unwrap().name, V100);
    let e = shard_parent(&inv, "0000:05:00.0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"0000:05:00.0\" is neither an mdev parent nor a GPU with SR-IOV; shard parents: \
         0000:41:00.0, 0000:81:00.0, 0000:c1:00.0"
    );
    assert_eq!(e.kind(), ErrorKind::NoSuchDevice);
}

#[test]
fn mdev_create_checks_type_capacity_and_uuid_before_anything() {
    let inv = host(0);
    let actions = plan_create(&inv, V100, "GRID V100-8C", Some(uuid(7)), 1).unwrap();
    assert_eq!(
        actions,
        vec![Action::CreateMdev {
            parent: V100.into(),
            type_id: "nvidia-300".into(),
            type_name: Some("GRID V100-8C".into()),
            uuid: uuid(7),
        }]
    );
    // Random UUIDs, distinct.
    let two = plan_create(&inv, V100, "nvidia-300", None, 2).unwrap();
    let uuids: Vec<Uuid> = two
        .iter()
        .map(|a| match a {
            Action::CreateMdev { uuid, .. } => *uuid,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_ne!(uuids[0], uuids[1]);
    let e = plan_create(&inv, V100, "nvidia-300", None, 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-8C on 0000:41:00.0 has 2 instances, 0 in use; 3 more requested"
    );
    let full = host(2);
    let e = plan_create(&full, V100, "V100-8C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-8C on 0000:41:00.0 has 2 instances, 2 in use; 1 more requested"
    );
    assert_eq!(e.kind(), ErrorKind::NoCapacity);
    // The UUID check covers every parent (the kernel's is host-wide).
    let e = plan_create(&host(1), V100, "V100-8C", Some(uuid(0)), 1).unwrap_err();
    assert_eq!(
        e,
        ShardError::AlreadyExists {
            uuid: uuid(0),
            parent: V100.into()
        }
    );
    let e = plan_create(&inv, V100, "V100-3C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:41:00.0 offers no type \"V100-3C\"; valid types: nvidia-299 (GRID V100-16C), \
         nvidia-300 (GRID V100-8C)"
    );
    for (count, u) in [(0, None), (2, Some(uuid(9)))] {
        assert!(matches!(
            plan_create(&inv, V100, "nvidia-300", u, count),
            Err(ShardError::InvalidRequest { .. })
        ));
    }
}

#[test]
fn nvidia_vf_create_uses_free_vfs_that_list_the_type() {
    let inv = host(0);
    let actions = plan_create(&inv, H100, "NVIDIA H100-8C", None, 2).unwrap();
    assert_eq!(
        actions,
        vec![
            Action::SetVgpuType {
                vf: PciAddress::new(0, 0x81, 0, 2),
                type_id: 557,
                type_name: Some("NVIDIA H100-8C".into()),
            },
            Action::SetVgpuType {
                vf: PciAddress::new(0, 0x81, 0, 3),
                type_id: 557,
                type_name: Some("NVIDIA H100-8C".into()),
            },
        ]
    );
    let e = plan_create(&inv, H100, "557", None, 4).unwrap_err();
    assert_eq!(
        e.to_string(),
        "NVIDIA H100-8C on 0000:81:00.0 has 4 instances, 1 in use; 4 more requested"
    );
    assert!(matches!(
        plan_create(&inv, H100, "557", Some(uuid(1)), 1),
        Err(ShardError::NotSupported { .. })
    ));
    // A card whose VFs are not enabled yet cannot name its types.
    let mut off = host(0);
    off.functions.get_mut(&addr(H100)).unwrap().sriov = Some(Sriov {
        total_vfs: 16,
        num_vfs: 0,
        vfs: Vec::new(),
    });
    for a in (1..=4).map(|f| PciAddress::new(0, 0x81, 0, f)) {
        off.functions.remove(&a);
    }
    let p = shard_parent(&off, H100).unwrap();
    assert_eq!((p.backend, p.types_known), (Backend::NvidiaVf, false));
    assert!(matches!(
        plan_create(&off, H100, "557", None, 1),
        Err(ShardError::TypesUnknown { .. })
    ));
}

#[test]
fn sriov_create_enables_vfs_only_from_zero() {
    let inv = host(0);
    assert_eq!(
        plan_create(&inv, AMD, "vf", None, 3).unwrap(),
        vec![Action::SetSriovNumVfs {
            pf: addr(AMD),
            from: 0,
            to: 3
        }]
    );
    assert_eq!(
        plan_create(&inv, AMD, "vf", None, 8)
            .unwrap_err()
            .to_string(),
        "SR-IOV virtual function on 0000:c1:00.0 has 7 instances, 0 in use; 8 more requested"
    );
    let mut on = host(0);
    on.functions
        .get_mut(&addr(AMD))
        .unwrap()
        .sriov
        .as_mut()
        .unwrap()
        .num_vfs = 2;
    let e = plan_create(&on, AMD, "vf", None, 1).unwrap_err();
    assert!(e.to_string().contains("has 2 VFs enabled"), "{e}");
}

fn record(parent: &str, type_id: &str, start: MdevStart, ours: bool) -> MdevRecord {
    MdevRecord {
        parent: parent.into(),
        type_id: type_id.into(),
        start,
        attrs: Vec::new(),
        rule: None,
        defined: true,
        created_by_gpuvirt: ours,
    }
}

#[test]
fn remove_only_what_gpuvirt_owns_unless_forced() {
    let inv = host(2);
    let mut ledger = Ledger::default();
    ledger
        .mdevs
        .insert(uuid(0), record(V100, "nvidia-300", MdevStart::Auto, true));
    ledger
        .mdevs
        .insert(uuid(1), record(V100, "nvidia-300", MdevStart::Auto, false));
    assert_eq!(
        plan_remove(&inv, &ledger, uuid(0), false).unwrap(),
        vec![Action::RemoveMdev {
            parent: V100.into(),
            type_id: Some("nvidia-300".into()),
            uuid: uuid(0),
        }]
    );
    let e = plan_remove(&inv, &ledger, uuid(1), false).unwrap_err();
    assert_eq!(
        e,
        ShardError::NotOwned {
            what: format!("mdev {} on {V100}", uuid(1)),
            owner: Owner::Mdevctl,
        }
    );
    assert_eq!(e.kind(), ErrorKind::PolicyViolation);
    let e = plan_remove(&inv, &Ledger::default(), uuid(1), false).unwrap_err();
    assert!(matches!(
        e,
        ShardError::NotOwned {
            owner: Owner::Other,
            ..
        }
    ));
    assert_eq!(plan_remove(&inv, &ledger, uuid(1), true).unwrap().len(), 1);
    assert_eq!(
        plan_remove(&inv, &ledger, uuid(5), true).unwrap_err(),
        ShardError::NoSuchMdev { uuid: uuid(5) }
    );
    // NVIDIA per-VF: ownership by VF.
    let vf = PciAddress::new(0, 0x81, 0, 1);
    assert!(matches!(
        plan_remove_vgpu(&inv, &ledger, vf, false),
        Err(ShardError::NotOwned { .. })
    ));
    ledger.vgpus.insert(
        vf,
        VgpuRecord {
            type_id: 557,
            rule: None,
        },
    );
    assert_eq!(
        plan_remove_vgpu(&inv, &ledger, vf, false).unwrap(),
        vec![Action::ClearVgpuType { vf, type_id: 557 }]
    );
    assert!(matches!(
        plan_remove_vgpu(&inv, &ledger, PciAddress::new(0, 0x81, 0, 2), true),
        Err(ShardError::NoSuchVgpu { .. })
    ));
}

#[test]
fn recreate_plans_missing_defined_mdevs_once_and_reports_the_rest() {
    let mut ledger = Ledger::default();
    // Active already: skipped.
    ledger
        .mdevs
        .insert(uuid(0), record(V100, "nvidia-300", MdevStart::Auto, true));
    // Missing: recreated with the same UUID, up to the type's room (1 left).
    ledger
        .mdevs
        .insert(uuid(10), record(V100, "nvidia-300", MdevStart::Auto, true));
    ledger
        .mdevs
        .insert(uuid(11), record(V100, "nvidia-300", MdevStart::Auto, true));
    // Manual start, mdevctl's, and not defined: never started here.
    ledger.mdevs.insert(
        uuid(12),
        record(V100, "nvidia-300", MdevStart::Manual, true),
    );
    ledger
        .mdevs
        .insert(uuid(13), record(V100, "nvidia-300", MdevStart::Auto, false));
    let mut transient = record(V100, "nvidia-300", MdevStart::Auto, true);
    transient.defined = false;
    ledger.mdevs.insert(uuid(14), transient);
    // Parent away, type gone.
    ledger.mdevs.insert(
        uuid(20),
        record("mbochs", "mbochs-small", MdevStart::Auto, true),
    );
    ledger
        .mdevs
        .insert(uuid(21), record(V100, "nvidia-999", MdevStart::Auto, true));

    let inv = host(1);
    let plan = recreate_plan(&ledger, &inv);
    assert_eq!(
        plan.actions,
        vec![Action::CreateMdev {
            parent: V100.into(),
            type_id: "nvidia-300".into(),
            type_name: Some("GRID V100-8C".into()),
            uuid: uuid(10),
        }]
    );
    let inactive: Vec<(Uuid, InactiveReason)> =
        plan.inactive.iter().map(|i| (i.uuid, i.reason)).collect();
    assert_eq!(
        inactive,
        vec![
            (uuid(11), InactiveReason::NoCapacity),
            (uuid(20), InactiveReason::ParentAbsent),
            (uuid(21), InactiveReason::TypeUnavailable),
        ]
    );
    // Once uuid(10) exists, nothing is planned twice.
    let mut after = host(1);
    after.mdevs.insert(
        uuid(10),
        Mdev {
            uuid: uuid(10),
            parent: V100.into(),
            type_id: Some("nvidia-300".into()),
            driver: None,
            iommu_group: None,
        },
    );
    after.mdev_parents.get_mut(V100).unwrap().types[1].available_instances = Some(0);
    let again = recreate_plan(&ledger, &after);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert!(again.inactive.iter().all(|i| i.uuid != uuid(10)));
}
