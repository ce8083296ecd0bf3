//! Shard plans run by the real executor on the simulated kernel behind FUSE, with the ledger on
//! disk: defined vGPUs recreated at "boot", refused beyond capacity before the executor runs,
//! kept (inactive) while the card is unplugged, recreated with the same UUIDs when it returns,
//! nothing created twice across an executor restart, and foreign mdevs never removed.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gpuvirt_core::exec::Executor;
use gpuvirt_core::ledger::{Ledger, LedgerStore, MdevRecord, MdevStart};
use gpuvirt_core::plan::{mdev_uuid, Action};
use gpuvirt_core::shard::{plan_create, plan_remove, recreate_plan, InactiveReason, ShardError};
use gpuvirt_core::ErrorKind;
use gpuvirt_core::{scan, Inventory, PciAddress, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;
use uuid::Uuid;

const V100: &str = "0000:41:00.0";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn inventory(mnt: &SimMount<Kernel>) -> Inventory {
    scan(&Root::new(mnt.root()))
}

fn run_all(exec: &mut Executor, actions: &[Action]) {
    for a in actions {
        let report = exec.run(a, Some("vdi"));
        assert!(report.succeeded(), "{report}");
    }
}

fn active(mnt: &SimMount<Kernel>) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = lock_backend(mnt.backend())
        .mdevs()
        .into_iter()
        .map(|(u, _, _)| u)
        .collect();
    v.sort();
    v
}

#[test]
fn defined_vgpus_survive_unplug_and_restart_with_the_same_uuids() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(kernel)), &dir.path().join("root")).unwrap();
    let store = LedgerStore::new(dir.path().join("state"));

    // Two vGPUs defined earlier (the daemon's `define`), none active after a reboot.
    let mut wanted: Vec<Uuid> = (0..2).map(|i| mdev_uuid("vdi", V100, i)).collect();
    wanted.sort();
    let mut ledger = Ledger::default();
    for u in &wanted {
        ledger.mdevs.insert(
            *u,
            MdevRecord {
                parent: V100.into(),
                type_id: "nvidia-300".into(),
                start: MdevStart::Auto,
                attrs: Vec::new(),
                rule: Some("vdi".into()),
                defined: true,
                created_by_gpuvirt: true,
            },
        );
    }
    store.save(&ledger).unwrap();

    let (mut exec, _) = Executor::open(Root::new(mnt.root()), store.clone()).unwrap();
    let plan = recreate_plan(exec.ledger(), &inventory(&mnt));
    assert!(plan.inactive.is_empty(), "{plan:?}");
    run_all(&mut exec, &plan.actions);
    assert_eq!(active(&mnt), wanted);

    // Full: refused with the capacity before the executor is asked.
    let e = plan_create(&inventory(&mnt), V100, "V100-8C", None, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRID V100-8C on 0000:41:00.0 has 2 instances, 2 in use; 1 more requested"
    );

    // Unplugged: inactive, still in the ledger on disk.
    let gpu: PciAddress = V100.parse().unwrap();
    lock_backend(mnt.backend()).hot_remove(gpu).unwrap();
    let inv = inventory(&mnt);
    let plan = recreate_plan(exec.ledger(), &inv);
    assert!(plan.actions.is_empty());
    assert!(plan
        .inactive
        .iter()
        .all(|i| i.reason == InactiveReason::ParentAbsent));
    assert_eq!(plan.inactive.len(), 2);
    assert_eq!(store.load().unwrap().mdevs.len(), 2);

    // Back: the same UUIDs, created by a restarted executor reading the ledger from disk.
    lock_backend(mnt.backend()).replug(gpu).unwrap();
    drop(exec);
    let (mut exec, warning) = Executor::open(Root::new(mnt.root()), store.clone()).unwrap();
    assert_eq!(warning, None);
    let plan = recreate_plan(exec.ledger(), &inventory(&mnt));
    assert_eq!(plan.actions.len(), 2, "{plan:?}");
    run_all(&mut exec, &plan.actions);
    assert_eq!(active(&mnt), wanted);
    let again = recreate_plan(exec.ledger(), &inventory(&mnt));
    assert!(
        again.actions.is_empty() && again.inactive.is_empty(),
        "{again:?}"
    );

    // A foreign mdev (written by hand) on another parent is never gpuvirt's to remove.
    let foreign: Uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".parse().unwrap();
    let u = wanted[0];
    let remove = plan_remove(&inventory(&mnt), exec.ledger(), u, false).unwrap();
    run_all(&mut exec, &remove);
    OpenOptions::new()
        .write(true)
        .open(
            mnt.sys()
                .join("class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300/create"),
        )
        .and_then(|mut f| f.write_all(foreign.to_string().as_bytes()))
        .unwrap();
    let e = plan_remove(&inventory(&mnt), exec.ledger(), foreign, false).unwrap_err();
    assert!(matches!(e, ShardError::NotOwned { .. }), "{e}");
    let mut left = vec![wanted[1], foreign];
    left.sort();
    assert_eq!(active(&mnt), left);
    mnt.unmount().unwrap();
}

/// A full parent is NoCapacity whatever errno the kernel uses for it: EUSERS from the mdev core
/// for mdpy (it counts mdpy's instances), ENOSPC from mbochs' own pool (6.1, tests/vm sharding).
#[test]
fn full_parents_are_no_capacity_for_eusers_and_enospc() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::from_fixture(&Fixture::bundled("vm-reference").unwrap()).unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(kernel)), &dir.path().join("root")).unwrap();
    let store = LedgerStore::new(dir.path().join("state"));
    let (mut exec, _) = Executor::open(Root::new(mnt.root()), store).unwrap();
    let create = |parent: &str, type_id: &str, n: u128| Action::CreateMdev {
        parent: parent.into(),
        type_id: type_id.into(),
        type_name: None,
        uuid: Uuid::from_u128(0x6a1c_7f5e_0000_4000_8000_0000_0000_0000 | n),
    };
    for n in 0..4 {
        run_all(&mut exec, &[create("mdpy", "mdpy-vga", n)]);
        run_all(&mut exec, &[create("mbochs", "mbochs-large", 10 + n)]);
    }
    for (action, errno) in [
        (create("mdpy", "mdpy-hd", 20), "EUSERS"),
        (create("mbochs", "mbochs-large", 21), "ENOSPC"),
    ] {
        let report = exec.run(&action, None);
        let e = report
            .error
            .as_ref()
            .expect("a create on a full parent fails");
        assert_eq!(e.kind(), ErrorKind::NoCapacity, "{action} ({errno}): {e}");
        assert!(report.to_string().contains(errno), "{report}");
    }
    assert_eq!(active(&mnt).len(), 8);
}

/// A plan of consecutive creations runs as one batch: one ledger save records them all before
/// the first write; a refusal mid-batch (the parent full) ends it, the created ones stay
/// recorded, the refused and unattempted ones leave the ledger, and what follows is reported
/// as not attempted. A missing type ends the batch the same way before anything is written.
#[test]
fn batched_creations_save_the_ledger_once_and_stop_at_the_first_refusal() {
    use gpuvirt_core::plan::{Plan, PlannedAction};
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::from_fixture(&Fixture::bundled("vm-reference").unwrap()).unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(kernel)), &dir.path().join("root")).unwrap();
    let store = LedgerStore::new(dir.path().join("state"));
    let (mut exec, _) = Executor::open(Root::new(mnt.root()), store.clone()).unwrap();
    let uuid = |n: u128| Uuid::from_u128(0x6a1c_7f5e_0000_4000_8000_0000_0000_0000 | n);
    let plan = |actions: Vec<(&str, &str, u128)>| Plan {
        actions: actions
            .into_iter()
            .map(|(parent, type_id, n)| PlannedAction {
                action: Action::CreateMdev {
                    parent: parent.into(),
                    type_id: type_id.into(),
                    type_name: None,
                    uuid: uuid(n),
                },
                reason: "test".into(),
                rule: Some("vdi".into()),
                gpu: None,
                steps: Vec::new(),
            })
            .collect(),
        refusals: Vec::new(),
        notes: Vec::new(),
    };
    let ledger_saves = |r: &gpuvirt_core::exec::ApplyReport| {
        r.done
            .iter()
            .chain(&r.failed)
            .flat_map(|a| &a.steps)
            .filter(|s| s.description.starts_with("record in the ledger"))
            .count()
    };

    // Four fit (mdpy-vga: 4 instances); the fifth is refused; the sixth is not attempted.
    let report = exec.execute(&plan((0..6).map(|n| ("mdpy", "mdpy-vga", n)).collect()));
    assert_eq!(report.done.len(), 4, "{report}");
    let failed = report.failed.as_ref().expect("the fifth is refused");
    assert_eq!(failed.error.as_ref().unwrap().kind(), ErrorKind::NoCapacity);
    assert!(failed.action.contains(&uuid(4).to_string()), "{report}");
    assert_eq!(report.not_attempted.len(), 1, "{report}");
    assert!(report.not_attempted[0].contains(&uuid(5).to_string()));
    // One save for the six records, one to take back the two not created.
    assert_eq!(ledger_saves(&report), 2, "{report}");
    let mut on_disk: Vec<Uuid> = store.load().unwrap().mdevs.keys().copied().collect();
    on_disk.sort();
    assert_eq!(on_disk, (0..4).map(uuid).collect::<Vec<_>>());
    assert_eq!(active(&mnt), (0..4).map(uuid).collect::<Vec<_>>());

    // A type the parent lacks, second in the batch: the first is created, nothing after; its
    // write finds the type missing, and the records of the two not created are taken back.
    let report = exec.execute(&plan(vec![
        ("mbochs", "mbochs-small", 10),
        ("mbochs", "mbochs-nonesuch", 11),
        ("mbochs", "mbochs-small", 12),
    ]));
    assert_eq!(report.done.len(), 1, "{report}");
    let failed = report.failed.as_ref().unwrap();
    assert_eq!(
        failed.error.as_ref().unwrap().kind(),
        ErrorKind::UnknownType
    );
    assert_eq!(report.not_attempted.len(), 1, "{report}");
    assert_eq!(ledger_saves(&report), 2, "{report}");
    assert!(store.load().unwrap().mdevs.contains_key(&uuid(10)));
    assert!(!store.load().unwrap().mdevs.contains_key(&uuid(11)));
    assert!(!store.load().unwrap().mdevs.contains_key(&uuid(12)));
    assert_eq!(active(&mnt).len(), 5);

    // A parent that is not there at all: NoSuchDevice naming it, nothing recorded.
    let report = exec.execute(&plan(vec![("mnothere", "t1", 15), ("mnothere", "t1", 16)]));
    let failed = report.failed.as_ref().unwrap();
    let e = failed.error.as_ref().unwrap();
    assert!(
        matches!(e, gpuvirt_core::exec::ExecError::NoSuchParent { parent } if parent == "mnothere"),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::NoSuchDevice);
    assert!(!store.load().unwrap().mdevs.contains_key(&uuid(15)));

    // A batch that succeeds checks each new mdev against one listing of the bus.
    let report = exec.execute(&plan(vec![
        ("mbochs", "mbochs-small", 13),
        ("mbochs", "mbochs-small", 14),
    ]));
    assert!(report.succeeded(), "{report}");
    assert_eq!(ledger_saves(&report), 1, "{report}");
    for done in &report.done {
        assert!(
            done.steps
                .iter()
                .any(|s| s.description.starts_with("check that mdev")),
            "each creation is checked: {done}"
        );
    }
    assert_eq!(active(&mnt).len(), 7);

    // Running the same successful batch again: gpuvirt's own mdevs are there already.
    let report = exec.execute(&plan((0..4).map(|n| ("mdpy", "mdpy-vga", n)).collect()));
    assert!(report.succeeded(), "{report}");
    assert_eq!(report.done.len(), 4);
    assert_eq!(active(&mnt).len(), 7);
}
