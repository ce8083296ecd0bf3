//! Sharding against the simulated kernel: plans from `gpuvirt_core::shard` over a scan of the
//! simulated sysfs, their steps written to the kernel model (which answers with the real errno),
//! then a fresh scan. Covers each backend to capacity and beyond, the mbochs shared pool, type
//! errors, EEXIST, EBUSY, foreign (mdevctl) mdevs left alone, and recreation after the parent
//! is unplugged and comes back, with the same UUIDs and nothing created twice.
//!
//! The steps go through `Kernel::write` (the write path the FUSE mount calls) rather than the
//! executor, which needs a mount; `shard_exec.rs` runs the same plans through the executor on a
//! FUSE mount.

#![allow(clippy::unwrap_used)]

use gpuvirt_core::ledger::{Ledger, MdevRecord, MdevStart, VgpuRecord};
use gpuvirt_core::mdevctl;
use gpuvirt_core::plan::{mdev_uuid, Action, Step};
use gpuvirt_core::shard::{
    owner_of, plan_create, plan_remove, plan_remove_vgpu, recreate_plan, shard_parent,
    InactiveReason, Owner, ShardError,
};
use gpuvirt_core::ErrorKind;
use gpuvirt_core::{scan, Inventory, PciAddress, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::materialize;
use gpuvirt_sim::Backend;
use uuid::Uuid;

const V100: &str = "0000:41:00.0";

fn boot(name: &str) -> Kernel {
    Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap()
}

/// The kernel's tree as a directory, and its scan.
fn snapshot(k: &Kernel) -> (tempfile::TempDir, Inventory) {
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    let inv = scan(&Root::new(dir.path()));
    (dir, inv)
}

fn inventory(k: &Kernel) -> Inventory {
    snapshot(k).1
}

/// Writes every step of `actions` to the kernel, stopping at the first errno.
fn apply(k: &mut Kernel, actions: &[Action]) -> Result<(), (String, i32)> {
    for a in actions {
        for step in a.steps() {
            let Step::Write { path, value } = step else {
                panic!("unexpected step {step:?} in {a}");
            };
            let path = path.to_str().unwrap().to_string();
            k.write_str(&path, &value).map_err(|e| (path, e))?;
        }
    }
    Ok(())
}

fn uuids_of(actions: &[Action]) -> Vec<Uuid> {
    actions
        .iter()
        .map(|a| match a {
            Action::CreateMdev { uuid, .. } => *uuid,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn runbook_v100_to_capacity_then_no_capacity_naming_it() {
    let mut k = boot("runbook");
    let inv = inventory(&k);
    // Asking for three at once is refused whole, before anything is written.
    let e = plan_create(&inv, V100, "GRID V100-8C", None, 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-8C on 0000:41:00.0 has 2 instances, 0 in use; 3 more requested"
    );
    assert!(k.mdevs().is_empty());

    // The runbook's two, by short name and by id, with its UUIDs.
    let runbook = [
        "bc127e23-aaaa-4d06-a7aa-88db2dd538e0",
        "1360ce4b-2ed2-4f63-abb6-8cdb92100085",
    ];
    for (u, spec) in runbook.iter().zip(["V100-8C", "nvidia-300"]) {
        let inv = inventory(&k);
        let actions = plan_create(&inv, V100, spec, Some(u.parse().unwrap()), 1).unwrap();
        apply(&mut k, &actions).unwrap();
    }
    let inv = inventory(&k);
    let mut active: Vec<String> = inv.mdevs.keys().map(|u| u.to_string()).collect();
    active.sort();
    let mut want: Vec<String> = runbook.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(active, want);

    // Full: the planner refuses with the capacity, and the kernel agrees (ENOSPC).
    let e = plan_create(&inv, V100, "V100-8C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-8C on 0000:41:00.0 has 2 instances, 2 in use; 1 more requested"
    );
    assert_eq!(e.kind(), ErrorKind::NoCapacity);
    let forced = Action::CreateMdev {
        parent: V100.into(),
        type_id: "nvidia-300".into(),
        type_name: None,
        uuid: Uuid::from_u128(0x1111_2222_4333_8444_5555_5555_5555_5555),
    };
    assert_eq!(apply(&mut k, &[forced]).unwrap_err().1, libc::ENOSPC);
    // NVIDIA runs one type per GPU: every other type is full now too.
    let e = plan_create(&inv, V100, "GRID V100-4C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-4C on 0000:41:00.0 has 0 instances, 0 in use; 1 more requested"
    );
}

#[test]
fn unknown_type_lists_the_cards_choices_and_prose_names_resolve() {
    let k = boot("runbook");
    let inv = inventory(&k);
    let e = plan_create(&inv, V100, "V100-3C", None, 1).unwrap_err();
    let ShardError::UnknownType { choices, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(choices.len(), 15);
    assert!(choices.contains(&"nvidia-300 (GRID V100-8C)".to_string()));
    assert!(e.to_string().starts_with(
        "0000:41:00.0 offers no type \"V100-3C\"; valid types: nvidia-212 (GRID V100-1B), "
    ));

    // mtty: prose names, no description file.
    let k = boot("vm-reference");
    let inv = inventory(&k);
    let mtty = shard_parent(&inv, "mtty").unwrap();
    let t = mtty.resolve_type("dual port serial").unwrap();
    assert_eq!((t.id.as_str(), t.description.as_deref()), ("mtty-2", None));
    let e = plan_create(&inv, "mtty", "triple port serial", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mtty offers no type \"triple port serial\"; valid types: mtty-1 (Single port serial), \
         mtty-2 (Dual port serial)"
    );
    let e = plan_create(&inv, "nosuch", "mtty-1", None, 1).unwrap_err();
    assert!(
        e.to_string().contains("shard parents: mbochs, mdpy, mtty"),
        "{e}"
    );
}

#[test]
fn mbochs_shared_pool_uses_the_live_numbers() {
    let mut k = boot("vm-reference");
    // 256 MB pool: two large (2 × 64) leave room for 32 small, 8 medium, 2 large.
    let inv = inventory(&k);
    apply(
        &mut k,
        &plan_create(&inv, "mbochs", "mbochs-large", None, 2).unwrap(),
    )
    .unwrap();
    let inv = inventory(&k);
    let p = shard_parent(&inv, "mbochs").unwrap();
    let avail: Vec<(String, u32, u32)> = p
        .types
        .iter()
        .map(|t| (t.id.clone(), t.available, t.in_use))
        .collect();
    assert_eq!(
        avail,
        vec![
            ("mbochs-large".to_string(), 2, 2),
            ("mbochs-medium".to_string(), 8, 0),
            ("mbochs-small".to_string(), 32, 0),
        ]
    );
    let e = plan_create(&inv, "mbochs", "mbochs-medium", None, 9).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mbochs-medium on mbochs has 8 instances, 0 in use; 9 more requested"
    );
    // Fill the pool with mediums: then nothing of any type fits, as the kernel says too.
    apply(
        &mut k,
        &plan_create(&inv, "mbochs", "mbochs-medium", None, 8).unwrap(),
    )
    .unwrap();
    let inv = inventory(&k);
    for t in ["mbochs-small", "mbochs-medium", "mbochs-large"] {
        let e = plan_create(&inv, "mbochs", t, None, 1).unwrap_err();
        assert!(matches!(e, ShardError::NoCapacity { .. }), "{t}: {e}");
    }
    let forced = Action::CreateMdev {
        parent: "mbochs".into(),
        type_id: "mbochs-small".into(),
        type_name: None,
        uuid: Uuid::new_v4(),
    };
    assert_eq!(apply(&mut k, &[forced]).unwrap_err().1, libc::ENOSPC);
    assert_eq!(k.mdevs().len(), 10);
}

#[test]
fn eexist_is_caught_by_planning_and_by_the_kernel() {
    let mut k = boot("vm-reference");
    let u: Uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".parse().unwrap();
    let inv = inventory(&k);
    apply(
        &mut k,
        &plan_create(&inv, "mdpy", "mdpy-vga", Some(u), 1).unwrap(),
    )
    .unwrap();
    let inv = inventory(&k);
    // The same UUID on another parent: the mdev bus is host-wide.
    let e = plan_create(&inv, "mtty", "mtty-1", Some(u), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mdev 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 already exists on mdpy"
    );
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let forced = Action::CreateMdev {
        parent: "mdpy".into(),
        type_id: "mdpy-vga".into(),
        type_name: None,
        uuid: u,
    };
    assert_eq!(apply(&mut k, &[forced]).unwrap_err().1, libc::EEXIST);
}

#[test]
fn mdevctl_mdevs_are_reported_and_left_alone() {
    let mut k = boot("mdev-server-8gpu");
    let (dir, inv) = snapshot(&k);
    let root = Root::new(dir.path());
    let found = mdevctl::read_all(&root);
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let fixture = Fixture::bundled("mdev-server-8gpu").unwrap();
    assert_eq!(found.configs.len(), fixture.mdevctl.len());
    let manual: Uuid = "c24f6aa8-3bf3-4a14-bc2f-7ad016edc5d4".parse().unwrap();
    assert!(found
        .configs
        .iter()
        .any(|c| c.uuid == manual && c.start == MdevStart::Manual && c.parent == "0000:61:00.0"));
    let mut ledger = Ledger::default();
    let report = mdevctl::import(&mut ledger, &found.configs);
    assert_eq!(report.imported.len(), fixture.mdevctl.len());

    let before = k.mdevs();
    assert!(!before.is_empty());
    for (u, parent, _) in &before {
        assert_eq!(owner_of(u, &ledger, &found.configs), Owner::Mdevctl);
        let e = plan_remove(&inv, &ledger, *u, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("mdev {u} on {parent} belongs to mdevctl, not gpuvirt; gpuvirt removes it only when forced")
        );
    }
    // Definitions that are mdevctl's are mdevctl's to start: nothing to recreate.
    let plan = recreate_plan(&ledger, &inv);
    assert!(
        plan.actions.is_empty() && plan.inactive.is_empty(),
        "{plan:?}"
    );
    assert_eq!(k.mdevs(), before);

    // A gpuvirt mdev next to them is gpuvirt's; removing it touches only it.
    let actions = plan_create(&inv, "0000:01:00.0", "GRID V100-8Q", None, 1);
    // GPU 0 is full with two 8Q: pick a GPU with room.
    assert!(matches!(actions, Err(ShardError::NoCapacity { .. })));
    let ours = plan_create(&inv, "0000:61:00.0", "V100-4Q", None, 1).unwrap();
    apply(&mut k, &ours).unwrap();
    let ours = uuids_of(&ours)[0];
    ledger.mdevs.insert(
        ours,
        MdevRecord {
            parent: "0000:61:00.0".into(),
            type_id: "nvidia-216".into(),
            start: MdevStart::Auto,
            attrs: Vec::new(),
            rule: None,
            defined: false,
            created_by_gpuvirt: true,
        },
    );
    let inv = inventory(&k);
    apply(&mut k, &plan_remove(&inv, &ledger, ours, false).unwrap()).unwrap();
    assert_eq!(k.mdevs(), before, "only gpuvirt's mdev went");
}

#[test]
fn remove_of_an_mdev_a_vm_holds_fails_with_ebusy() {
    let mut k = boot("runbook");
    let inv = inventory(&k);
    let create = plan_create(&inv, V100, "V100-8C", None, 1).unwrap();
    apply(&mut k, &create).unwrap();
    let u = uuids_of(&create)[0];
    let mut ledger = Ledger::default();
    ledger.mdevs.insert(
        u,
        MdevRecord {
            parent: V100.into(),
            type_id: "nvidia-300".into(),
            start: MdevStart::Auto,
            attrs: Vec::new(),
            rule: None,
            defined: true,
            created_by_gpuvirt: true,
        },
    );
    assert!(k.set_mdev_busy(u, true));
    let inv = inventory(&k);
    let remove = plan_remove(&inv, &ledger, u, false).unwrap();
    assert_eq!(apply(&mut k, &remove).unwrap_err().1, libc::EBUSY);
    assert_eq!(k.mdevs().len(), 1);
    k.set_mdev_busy(u, false);
    apply(&mut k, &remove).unwrap();
    assert!(k.mdevs().is_empty());
}

#[test]
fn parent_unplug_and_return_recreates_the_same_uuids_once() {
    let mut k = boot("runbook");
    let rule = "vdi";
    let wanted: Vec<Uuid> = (0..2).map(|i| mdev_uuid(rule, V100, i)).collect();
    let inv = inventory(&k);
    let mut ledger = Ledger::default();
    for u in &wanted {
        apply(
            &mut k,
            &plan_create(&inv, V100, "V100-8C", Some(*u), 1).unwrap(),
        )
        .unwrap();
        ledger.mdevs.insert(
            *u,
            MdevRecord {
                parent: V100.into(),
                type_id: "nvidia-300".into(),
                start: MdevStart::Auto,
                attrs: Vec::new(),
                rule: Some(rule.into()),
                defined: true,
                created_by_gpuvirt: true,
            },
        );
    }
    // Daemon restart with everything in place: nothing to do.
    let plan = recreate_plan(&ledger, &inventory(&k));
    assert!(
        plan.actions.is_empty() && plan.inactive.is_empty(),
        "{plan:?}"
    );

    // Surprise removal takes the parent and its mdevs; they are inactive, not forgotten.
    let gpu: PciAddress = V100.parse().unwrap();
    k.hot_remove(gpu).unwrap();
    let inv = inventory(&k);
    assert!(inv.mdevs.is_empty() && !inv.mdev_parents.contains_key(V100));
    let plan = recreate_plan(&ledger, &inv);
    assert!(plan.actions.is_empty());
    assert_eq!(
        plan.inactive
            .iter()
            .map(|i| (i.uuid, i.reason))
            .collect::<Vec<_>>(),
        wanted
            .iter()
            .map(|u| (*u, InactiveReason::ParentAbsent))
            .collect::<Vec<_>>()
    );
    assert_eq!(ledger.mdevs.len(), 2);

    // The card comes back (driver probes, parent registers): the same UUIDs, once.
    k.replug(gpu).unwrap();
    let inv = inventory(&k);
    assert!(
        inv.mdev_parents.contains_key(V100),
        "parent registered again"
    );
    let plan = recreate_plan(&ledger, &inv);
    assert!(plan.inactive.is_empty(), "{plan:?}");
    let mut planned = uuids_of(&plan.actions);
    planned.sort();
    let mut expected = wanted.clone();
    expected.sort();
    assert_eq!(planned, expected);
    apply(&mut k, &plan.actions).unwrap();
    let mut active: Vec<Uuid> = k.mdevs().into_iter().map(|(u, _, _)| u).collect();
    active.sort();
    assert_eq!(active, expected);
    // A duplicate event (or a restart) plans nothing twice.
    let again = recreate_plan(&ledger, &inventory(&k));
    assert!(
        again.actions.is_empty() && again.inactive.is_empty(),
        "{again:?}"
    );
}

#[test]
fn nvidia_per_vf_capacity_create_and_remove() {
    let mut k = boot("hopper-sriov");
    let gpu0 = "0000:18:00.0";
    let inv = inventory(&k);
    // Two 40C vGPUs fill the 80 GB card: no VF lists any type, so the type in use has no name.
    let e = plan_create(&inv, gpu0, "1151", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "1151 on 0000:18:00.0 has 2 instances, 2 in use; 1 more requested"
    );
    let e = plan_create(&inv, gpu0, "H100XM-40C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:18:00.0 offers no type \"H100XM-40C\"; valid types: 1151 (in use; NVIDIA lists \
         its name only while one more can be created)"
    );
    // GPU 1 has no VFs: its types are unknown until they exist.
    assert!(matches!(
        plan_create(&inv, "0000:9a:00.0", "H100XM-40C", None, 1),
        Err(ShardError::TypesUnknown { .. })
    ));
    // The fixture's vGPUs are not gpuvirt's.
    let vf0 = k
        .pci_addresses()
        .into_iter()
        .find(|a| {
            // The scan holds GPU-related functions only; the VFs of a GPU are among them.
            inv.functions.get(a).is_some_and(|f| {
                f.physfn == Some(gpu0.parse().unwrap())
                    && f.nvidia_vgpu
                        .as_ref()
                        .is_some_and(|v| v.current_type == Some(1151))
            })
        })
        .unwrap();
    let mut ledger = Ledger::default();
    assert!(matches!(
        plan_remove_vgpu(&inv, &ledger, vf0, false),
        Err(ShardError::NotOwned { .. })
    ));
    ledger.vgpus.insert(
        vf0,
        VgpuRecord {
            type_id: 1151,
            rule: None,
        },
    );
    apply(
        &mut k,
        &plan_remove_vgpu(&inv, &ledger, vf0, false).unwrap(),
    )
    .unwrap();
    let inv = inventory(&k);
    let actions = plan_create(&inv, gpu0, "NVIDIA H100XM-40C", None, 1).unwrap();
    let [Action::SetVgpuType {
        vf, type_id: 1151, ..
    }] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert_ne!(
        inv.functions[vf].nvidia_vgpu.as_ref().unwrap().current_type,
        Some(1151)
    );
    apply(&mut k, &actions).unwrap();
    let inv = inventory(&k);
    let p = shard_parent(&inv, gpu0).unwrap();
    let t = p.resolve_type("1151").unwrap();
    assert_eq!((t.in_use, t.available), (2, 0));
    // Full again: the refusal names the capacity.
    let inv = inventory(&k);
    let e = plan_create(&inv, gpu0, "1151", None, 1).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("has 2 instances, 2 in use; 1 more requested"),
        "{e}"
    );
}
