//! The refresh after each create reads its parent's instance counts through kept-open files
//! (one `pread` each on sysfs): on the FUSE simulated kernel the counts it reads always equal
//! a fresh scan's, across several creates and after the parent was unplugged and plugged back
//! (its count files re-registered at the same paths; the kept ones then read ENODEV and are
//! opened afresh).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use gpuvirt_core::{PciAddress, RefreshTarget, Root, Scanner};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;

const PARENT: &str = "0000:61:00.0";
const TYPE: &str = "nvidia-214";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn create(sys: &Path, n: u32) -> uuid::Uuid {
    let uuid: uuid::Uuid = format!("c0417001-0000-4000-8000-{n:012x}").parse().unwrap();
    let file = sys.join(format!(
        "class/mdev_bus/{PARENT}/mdev_supported_types/{TYPE}/create"
    ));
    std::fs::write(file, uuid.to_string()).unwrap();
    uuid
}

fn counts(inv: &gpuvirt_core::model::Inventory) -> Vec<(String, Option<u32>)> {
    inv.mdev_parents[PARENT]
        .types
        .iter()
        .map(|t| (t.id.clone(), t.available_instances))
        .collect()
}

#[test]
fn kept_count_files_read_what_a_fresh_scan_reads() {
    if !fuse_available() {
        return;
    }
    let kernel = Kernel::from_fixture(&Fixture::bundled("mdev-server-8gpu").unwrap()).unwrap();
    let backend = Arc::new(Mutex::new(kernel));
    let dir = tempfile::tempdir().unwrap();
    let mnt = SimMount::mount(Arc::clone(&backend), &dir.path().join("root")).unwrap();
    let sys = mnt.sys();
    let scanner = Scanner::new(Root::new(mnt.root()));
    let mut inv = scanner.scan();
    let free = |inv: &gpuvirt_core::model::Inventory| {
        counts(inv)
            .into_iter()
            .find(|(id, _)| id == TYPE)
            .unwrap()
            .1
    };
    let before = free(&inv).unwrap();
    assert!(
        before >= 4,
        "{PARENT}/{TYPE} has room for the test: {before}"
    );
    for n in 0..3 {
        let uuid = create(&sys, n);
        scanner.refresh_batch(&mut inv, &[RefreshTarget::Mdev(uuid)]);
        assert_eq!(counts(&inv), counts(&scanner.scan()), "after create {n}");
    }
    assert_eq!(free(&inv), Some(before - 3));

    // Unplugged and back: new count files at the old paths, the new device without mdevs.
    let addr: PciAddress = PARENT.parse().unwrap();
    {
        let mut k = lock_backend(&backend);
        k.hot_remove(addr).unwrap();
        k.replug(addr).unwrap();
    }
    let uuid = create(&sys, 10);
    // Only the mdev's own event: its parent is known, so only its counts are read again.
    scanner.refresh_batch(&mut inv, &[RefreshTarget::Mdev(uuid)]);
    assert_eq!(counts(&inv), counts(&scanner.scan()), "after the replug");
    assert_eq!(free(&inv), Some(before - 1));
    drop(mnt);
}
