//! Unit tests of the tree: projection, diff and sync against hand-built inventories.
//! May import: the tree (its parent module).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use zbus::zvariant::Value;

use super::*;
use gpuvirt_core::{
    Gpu, GroupMember, IommuGroup, Mdev, MdevType, NvidiaVfVgpu, PciIds, Sriov, VgpuTypeOffer,
};
use gpuvirt_core::{Inventory, MdevParent, PciAddress, PciFunction, RefreshScope};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

pub fn function(addr: &str, class: u32, driver: Option<&str>, group: u32) -> PciFunction {
    let address: PciAddress = addr.parse().unwrap();
    PciFunction {
        address,
        sysfs_path: format!("devices/pci0000:40/0000:40:01.1/{addr}").into(),
        class,
        revision: Some(0xa1),
        ids: PciIds {
            vendor: 0x10de,
            device: 0x1db4,
            subsystem_vendor: 0x10de,
            subsystem_device: 0x1214,
        },
        vendor_name: Some("NVIDIA Corporation".into()),
        device_name: Some("GV100GL [Tesla V100 PCIe 16GB]".into()),
        subsystem_name: None,
        driver: driver.map(Into::into),
        driver_override: None,
        boot_vga: (class >> 8 == 0x0300).then_some(false),
        numa_node: Some(0),
        reset_methods: vec!["flr".into(), "bus".into()],
        modalias: None,
        kernel_modules: vec!["nvidia".into(), "nouveau".into()],
        iommu_group: Some(group),
        sriov: None,
        physfn: None,
        nvidia_vgpu: None,
        drm: None,
    }
}

/// The runbook's host: a V100 at 0000:41:00.0 in group 66 with type nvidia-300, one mdev.
pub fn runbook_inventory() -> Inventory {
    let gpu = function("0000:41:00.0", 0x030200, Some("nvidia"), 66);
    let nic = function("0000:01:00.0", 0x020000, Some("igb"), 12);
    let mut inv = Inventory {
        kernel_release: Some("6.1.0-test".into()),
        ..Inventory::default()
    };
    inv.iommu.enabled = true;
    inv.iommu.reasons = vec!["2 IOMMU groups".into()];
    inv.modules.vfio = true;
    inv.modules.vfio_pci = true;
    inv.modules.mdev = true;
    for (id, f) in [(66, &gpu), (12, &nic)] {
        inv.groups.insert(
            id,
            IommuGroup {
                id,
                members: vec![GroupMember {
                    name: f.address.to_string(),
                    pci_address: Some(f.address),
                    class: Some(f.class),
                    driver: f.driver.clone(),
                }],
                viable: true,
                problems: vec![],
            },
        );
    }
    inv.gpus.insert(
        gpu.address,
        Gpu {
            address: gpu.address,
            companions: vec![],
        },
    );
    inv.mdev_parents.insert(
        "0000:41:00.0".into(),
        MdevParent {
            name: "0000:41:00.0".into(),
            sysfs_path: gpu.sysfs_path.clone(),
            pci_address: Some(gpu.address),
            types: vec![MdevType {
                id: "nvidia-300".into(),
                name: Some("GRID V100-8C".into()),
                description: Some("num_heads=1, frl_config=60".into()),
                device_api: Some("vfio-pci".into()),
                available_instances: Some(1),
            }],
        },
    );
    let uuid: Uuid = "aa618089-8b16-4d01-a136-25a0f3c73123".parse().unwrap();
    inv.mdevs.insert(
        uuid,
        Mdev {
            uuid,
            parent: "0000:41:00.0".into(),
            type_id: Some("nvidia-300".into()),
            driver: Some("vfio_mdev".into()),
            iommu_group: Some(67),
        },
    );
    inv.groups.insert(
        67,
        IommuGroup {
            id: 67,
            members: vec![GroupMember {
                name: uuid.to_string(),
                pci_address: None,
                class: None,
                driver: Some("vfio_mdev".into()),
            }],
            viable: true,
            problems: vec![],
        },
    );
    inv.functions.insert(gpu.address, gpu);
    inv.functions.insert(nic.address, nic);
    inv
}

fn path(s: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(s.to_owned()).unwrap()
}

#[test]
fn runbook_host_exports_the_documented_objects() {
    let tree = build(&runbook_inventory());
    let paths: Vec<&str> = tree.objects.keys().map(|p| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0",
            "/org/gpuvirt/GpuVirt1/iommu_groups/66",
            "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123",
        ],
        "the NIC's group 12 and the mdev's own group 67 are not exported"
    );
    let mdev = tree.objects["/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"]
        .mdev
        .clone()
        .unwrap();
    assert_eq!((mdev.iommu_group.as_str(), mdev.iommu_group_id), ("/", 67));
    let gpu = &tree.objects["/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"];
    let g = gpu.gpu.as_ref().unwrap();
    assert_eq!(g.pci_address, "0000:41:00.0");
    assert_eq!(g.state, "host");
    assert_eq!(
        g.iommu_group.as_str(),
        "/org/gpuvirt/GpuVirt1/iommu_groups/66"
    );
    let shard = gpu.shard_parent.as_ref().unwrap();
    assert_eq!(shard.backend, "mdev");
    assert_eq!(
        shard.types["nvidia-300"],
        (
            "GRID V100-8C".to_owned(),
            "num_heads=1, frl_config=60".to_owned(),
            "vfio-pci".to_owned(),
            1
        )
    );
    assert_eq!(
        shard.children,
        [path(
            "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"
        )]
    );
    let mdev = tree.objects["/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"]
        .mdev
        .as_ref()
        .unwrap();
    assert_eq!(
        mdev.parent.as_str(),
        "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"
    );
    assert_eq!(mdev.type_name, "GRID V100-8C");
    assert!(tree.manager.vfio_available);
}

#[test]
fn equal_inventories_give_no_changes() {
    let a = build(&runbook_inventory());
    assert_eq!(diff(&a, &a.clone()), vec![]);
}

#[test]
fn driver_change_updates_only_changed_properties() {
    let old = runbook_inventory();
    let mut new = old.clone();
    let addr: PciAddress = "0000:41:00.0".parse().unwrap();
    new.functions.get_mut(&addr).unwrap().driver = Some("vfio-pci".into());
    new.groups.get_mut(&66).unwrap().members[0].driver = Some("vfio-pci".into());
    let changes = diff(&build(&old), &build(&new));
    let summary: Vec<(String, Vec<&str>)> = changes
        .iter()
        .map(|c| match c {
            Change::Updated { path, changed, .. } => {
                (path.to_string(), changed.iter().map(|(n, _)| *n).collect())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0".to_owned(),
                vec!["Driver", "State"]
            ),
            (
                "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned(),
                vec!["Members"]
            ),
        ]
    );
    let Change::Updated { changed, .. } = &changes[0] else {
        unreachable!()
    };
    assert_eq!(changed[0].1, Value::from("vfio-pci"));
}

#[test]
fn mdev_removal_removes_object_and_updates_parent() {
    let old = runbook_inventory();
    let mut new = old.clone();
    new.mdevs.clear();
    new.groups.remove(&67);
    new.mdev_parents.get_mut("0000:41:00.0").unwrap().types[0].available_instances = Some(2);
    let changes = diff(&build(&old), &build(&new));
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert!(
        matches!(&changes[0], Change::Removed { path, kind: Kind::Mdev }
        if path.as_str().ends_with("aa618089_8b16_4d01_a136_25a0f3c73123"))
    );
    let Change::Updated { changed, .. } = &changes[1] else {
        panic!("{changes:#?}")
    };
    let names: Vec<&str> = changed.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["Types", "Children"]);
}

#[test]
fn additions_put_referents_first_and_removals_referrers_first() {
    let tree = build(&runbook_inventory());
    let added: Vec<(Kind, String)> = diff(&ObjectTree::default(), &tree)
        .into_iter()
        .filter_map(|c| match c {
            Change::Added { path, iface } => iface.kind().map(|k| (k, path)),
            _ => None,
        })
        .collect();
    let gpu = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0".to_owned();
    let mdev = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123".to_owned();
    assert_eq!(
        added,
        [
            (
                Kind::IommuGroup,
                "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned()
            ),
            (Kind::Gpu, gpu.clone()),
            (Kind::ShardParent, gpu.clone()),
            (Kind::Mdev, mdev.clone()),
        ]
    );
    let removed: Vec<(Kind, String)> = diff(&tree, &ObjectTree::default())
        .into_iter()
        .filter_map(|c| match c {
            Change::Removed { path, kind } => Some((kind, path)),
            _ => None,
        })
        .collect();
    assert_eq!(
        removed,
        [
            (Kind::Mdev, mdev),
            (Kind::ShardParent, gpu.clone()),
            (Kind::Gpu, gpu),
            (
                Kind::IommuGroup,
                "/org/gpuvirt/GpuVirt1/iommu_groups/66".to_owned()
            ),
        ]
    );
}

/// Incremental update (compare inventories, rebuild dirty objects) must give the same tree
/// and the same changes as rebuilding everything.
#[test]
fn incremental_update_equals_full_rebuild() {
    let base = runbook_inventory();
    let gpu: PciAddress = "0000:41:00.0".parse().unwrap();
    let uuid: Uuid = "aa618089-8b16-4d01-a136-25a0f3c73123".parse().unwrap();
    type Mutation = Box<dyn Fn(&mut Inventory)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "unbind",
            Box::new(move |inv: &mut Inventory| {
                inv.functions.get_mut(&gpu).unwrap().driver = None;
            }),
        ),
        (
            "mdev removed",
            Box::new(move |inv: &mut Inventory| {
                inv.mdevs.remove(&uuid);
                inv.groups.remove(&67);
            }),
        ),
        (
            "parent types renamed",
            Box::new(|inv: &mut Inventory| {
                inv.mdev_parents.get_mut("0000:41:00.0").unwrap().types[0].name =
                    Some("renamed".into());
            }),
        ),
        (
            "parent unregistered",
            Box::new(|inv: &mut Inventory| {
                inv.mdev_parents.clear();
            }),
        ),
        (
            "gpu gone",
            Box::new(move |inv: &mut Inventory| {
                inv.gpus.remove(&gpu);
            }),
        ),
        (
            "modules",
            Box::new(|inv: &mut Inventory| {
                inv.modules.vfio_pci = false;
            }),
        ),
        (
            "driver override",
            Box::new(move |inv: &mut Inventory| {
                inv.functions.get_mut(&gpu).unwrap().driver_override = Some("vfio-pci".into());
            }),
        ),
        (
            "kernel release and a warning",
            Box::new(|inv: &mut Inventory| {
                inv.kernel_release = Some("6.2.0-test".into());
                inv.warnings.push(gpuvirt_core::ScanWarning {
                    path: "sys/bus/pci/devices/0000:41:00.0/numa_node".into(),
                    message: "the file is empty".into(),
                });
            }),
        ),
        (
            "a function no object shows rebinds",
            Box::new(|inv: &mut Inventory| {
                let nic: PciAddress = "0000:01:00.0".parse().unwrap();
                inv.functions.get_mut(&nic).unwrap().driver = Some("vfio-pci".into());
                inv.groups.get_mut(&12).unwrap().members[0].driver = Some("vfio-pci".into());
            }),
        ),
        ("nothing", Box::new(|_: &mut Inventory| {})),
    ];
    for (name, mutate) in &mutations {
        let mut new = base.clone();
        mutate(&mut new);
        let expected_changes = diff(&build(&base), &build(&new));
        // After a full scan, and after a refresh that names exactly what it changed.
        for scope in [RefreshScope::everything(), exact_scope(&base, &new)] {
            let mut current = served_part(&mut base.clone());
            let mut tree = build(&base);
            let synced = sync_inventory(&mut current, &mut new, &scope);
            assert_eq!(current, served_part(&mut new), "{name}: inventories synced");
            let changes = update(&mut tree, &new, synced);
            assert_eq!(tree, build(&new), "{name}: tree ({scope:?})");
            assert_eq!(changes, expected_changes, "{name}: changes ({scope:?})");
        }
    }
}

/// The narrowest scope that covers every per-device difference between `a` and `b`.
fn exact_scope(a: &Inventory, b: &Inventory) -> RefreshScope {
    fn differ<K: Ord + Clone, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    }
    RefreshScope {
        everything: false,
        functions: differ(&a.functions, &b.functions),
        groups: differ(&a.groups, &b.groups),
        mdevs: differ(&a.mdevs, &b.mdevs),
        parents: differ(&a.mdev_parents, &b.mdev_parents),
    }
}

/// A scope that misses a change is a scanner bug the served tree would hide (it keeps
/// the stale entry): debug builds stop on it.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "changed outside")]
fn a_change_outside_the_scope_is_caught() {
    let base = runbook_inventory();
    let mut new = base.clone();
    let gpu: PciAddress = "0000:41:00.0".parse().unwrap();
    new.functions.get_mut(&gpu).unwrap().driver = Some("vfio-pci".into());
    let mut current = served_part(&mut base.clone());
    sync_inventory(&mut current, &mut new, &RefreshScope::default());
}

/// The actor's second copy holds only what objects show: not the NIC, nor its group.
#[test]
fn served_part_leaves_out_what_no_object_shows() {
    let mut inv = runbook_inventory();
    let served = served_part(&mut inv);
    assert_eq!(inv, runbook_inventory(), "the inventory is put back whole");
    let nic: PciAddress = "0000:01:00.0".parse().unwrap();
    assert!(!served.functions.contains_key(&nic));
    assert!(!served.groups.contains_key(&12));
    assert_eq!(served.groups.keys().copied().collect::<Vec<_>>(), [66]);
    assert_eq!(served.mdevs, inv.mdevs);
    assert_eq!(served.kernel_release, inv.kernel_release);
    assert_eq!(build(&served), build(&inv));
}

/// The fast comparison says "same" exactly when `==` does, field by field.
#[test]
fn same_function_agrees_with_eq() {
    let base = function("0000:41:00.0", 0x030200, Some("nvidia"), 66);
    type Edit = fn(&mut PciFunction);
    let edits: [(&str, Edit); 20] = [
        ("address", |f| f.address = "0000:42:00.0".parse().unwrap()),
        ("sysfs_path", |f| f.sysfs_path = "devices/x".into()),
        ("class", |f| f.class = 0x030000),
        ("revision", |f| f.revision = None),
        ("ids", |f| f.ids.subsystem_device = 1),
        ("vendor_name", |f| f.vendor_name = None),
        ("device_name", |f| f.device_name = Some("x".into())),
        ("subsystem_name", |f| f.subsystem_name = Some("x".into())),
        ("driver", |f| f.driver = None),
        ("driver_override", |f| {
            f.driver_override = Some("vfio-pci".into())
        }),
        ("boot_vga", |f| f.boot_vga = Some(true)),
        ("numa_node", |f| f.numa_node = Some(1)),
        ("reset_methods", |f| f.reset_methods.pop().map_or((), drop)),
        ("modalias", |f| f.modalias = Some("pci:v000010DE".into())),
        ("kernel_modules", |f| f.kernel_modules.push("x".into())),
        ("iommu_group", |f| f.iommu_group = Some(1)),
        ("sriov", |f| {
            f.sriov = Some(Sriov {
                total_vfs: 4,
                num_vfs: 0,
                vfs: vec![],
            })
        }),
        ("physfn", |f| {
            f.physfn = Some("0000:40:00.0".parse().unwrap())
        }),
        ("nvidia_vgpu", |f| {
            f.nvidia_vgpu = Some(NvidiaVfVgpu {
                creatable_types: vec![],
                current_type: None,
            })
        }),
        ("drm", |f| {
            f.drm = Some(gpuvirt_core::DrmNodes {
                card: Some("/dev/dri/card0".into()),
                ..Default::default()
            })
        }),
    ];
    assert!(same_function(&base, &base.clone()));
    for (field, edit) in edits {
        let mut other = base.clone();
        edit(&mut other);
        assert_ne!(base, other, "{field}: the edit changes the record");
        assert!(!same_function(&base, &other), "{field}");
        assert!(!same_function(&other, &base), "{field}");
    }
}

#[test]
fn non_pci_parent_gets_its_own_object() {
    let mut inv = Inventory::default();
    inv.mdev_parents.insert(
        "mbochs".into(),
        MdevParent {
            name: "mbochs".into(),
            sysfs_path: "devices/virtual/mbochs/mbochs".into(),
            pci_address: None,
            types: vec![MdevType {
                id: "mbochs-1".into(),
                name: Some("mbochs-small".into()),
                description: None,
                device_api: Some("vfio-pci".into()),
                available_instances: Some(4),
            }],
        },
    );
    let tree = build(&inv);
    let spec = &tree.objects["/org/gpuvirt/GpuVirt1/parents/mbochs"];
    assert_eq!(spec.shard_parent.as_ref().unwrap().types["mbochs-1"].1, "");
    assert!(spec.gpu.is_none());
}

#[test]
fn nvidia_vf_backend_counts_offers_and_children() {
    let mut inv = Inventory::default();
    let mut pf = function("0000:c1:00.0", 0x030200, Some("nvidia"), 80);
    let mut vfs = vec![];
    for (i, current) in [(4u8, Some(558)), (5, None)] {
        let mut vf = function(
            &format!("0000:c1:00.{i}"),
            0x030200,
            Some("nvidia"),
            80 + u32::from(i),
        );
        vf.physfn = Some(pf.address);
        vf.nvidia_vgpu = Some(NvidiaVfVgpu {
            creatable_types: vec![VgpuTypeOffer {
                id: 558,
                name: "NVIDIA L40S-24Q".into(),
            }],
            current_type: current,
        });
        vfs.push(vf);
    }
    pf.sriov = Some(Sriov {
        total_vfs: 32,
        num_vfs: 2,
        vfs: vfs.iter().map(|v| v.address).collect(),
    });
    for f in std::iter::once(pf).chain(vfs) {
        inv.gpus.insert(
            f.address,
            Gpu {
                address: f.address,
                companions: vec![],
            },
        );
        inv.functions.insert(f.address, f);
    }
    let tree = build(&inv);
    let shard = tree.objects["/org/gpuvirt/GpuVirt1/gpus/0000_c1_00_0"]
        .shard_parent
        .clone()
        .unwrap();
    assert_eq!(shard.backend, "nvidia-vf");
    // One more can be created: VF 5 is free; VF 4 holds one (a VF takes one vGPU, whatever
    // its list says), as the policy and CreateMdev count them.
    assert_eq!(
        shard.types["558"],
        ("NVIDIA L40S-24Q".into(), String::new(), String::new(), 1)
    );
    assert_eq!(
        shard.children,
        [path("/org/gpuvirt/GpuVirt1/gpus/0000_c1_00_4")]
    );
}
