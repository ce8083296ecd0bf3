//! Interlocks against simulated hosts scanned through the FUSE mount: the workstation's
//! boot-VGA iGPU, the server whose GPU shares IOMMU group 12 with an igb NIC, holders found
//! in the simulated root's `/proc`, and the clean case that then binds for real.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};

use gpuvirt_core::exec::Executor;
use gpuvirt_core::interlock::{check_passthrough, check_return, Allowances, Facts, Refusal};
use gpuvirt_core::ledger::LedgerStore;
use gpuvirt_core::plan::{Action, SlotFunction};
use gpuvirt_core::{scan, PciAddress, PciSlot, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::kernel::Kernel;

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn slot(s: &str) -> PciSlot {
    s.parse::<PciAddress>().unwrap().slot()
}

fn mount(name: &str, dir: &Path) -> SimMount<Kernel> {
    let kernel = Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap();
    SimMount::mount(Arc::new(Mutex::new(kernel)), &dir.join("root")).unwrap()
}

fn check(mnt: &SimMount<Kernel>, s: PciSlot) -> Result<(), Vec<Refusal>> {
    let root = Root::new(mnt.root());
    let inv = scan(&root);
    let facts = Facts::gather(&root, &inv, s);
    check_passthrough(&inv, s, &facts, Allowances::default())
}

fn holder(root: &Path, pid: u32, comm: &str, node: &str) {
    let fd = root.join(format!("proc/{pid}/fd"));
    fs::create_dir_all(&fd).unwrap();
    fs::write(root.join(format!("proc/{pid}/comm")), format!("{comm}\n")).unwrap();
    symlink(node, fd.join("7")).unwrap();
}

#[test]
fn workstation_boot_vga_is_refused_and_the_discrete_card_passes_then_binds() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = mount("workstation", dir.path());
    let refusals = check(&mnt, slot("0000:00:02.0")).unwrap_err();
    assert!(
        refusals
            .iter()
            .any(|r| matches!(r, Refusal::BootVga { .. })),
        "{refusals:?}"
    );
    // The discrete card's group holds only its root port (a bridge) besides the card.
    check(&mnt, slot("0000:01:00.0")).unwrap();

    // A VM-to-be check passes, so bind it for real and check the return interlock.
    lock_backend(mnt.backend()).load_module("vfio_pci").unwrap();
    let (mut exec, _) = Executor::open(
        Root::new(mnt.root()),
        LedgerStore::new(dir.path().join("state")),
    )
    .unwrap();
    let bind = Action::BindSlotToVfio {
        slot: slot("0000:01:00.0"),
        functions: vec![SlotFunction {
            address: "0000:01:00.0".parse().unwrap(),
            driver: Some("nouveau".into()),
        }],
    };
    let r = exec.run(&bind, None);
    assert!(r.succeeded(), "{r}");
    // The executor moved the whole slot, audio included, though the action named one function.
    let inv = scan(&Root::new(mnt.root()));
    let audio = &inv.functions[&"0000:01:00.1".parse().unwrap()];
    assert_eq!(audio.driver.as_deref(), Some("vfio-pci"));
    let group = audio.iommu_group.unwrap();

    // A QEMU holding the card's VFIO group blocks the return; gone, the return is allowed.
    holder(
        mnt.root(),
        4242,
        "qemu-system-x86",
        &format!("/dev/vfio/{group}"),
    );
    let root = Root::new(mnt.root());
    let facts = Facts::gather(&root, &inv, slot("0000:01:00.0"));
    let refusals = check_return(exec.ledger(), slot("0000:01:00.0"), &facts).unwrap_err();
    assert!(
        refusals[0]
            .to_string()
            .contains("pid 4242 (qemu-system-x86)"),
        "{}",
        refusals[0]
    );
    fs::remove_dir_all(mnt.root().join("proc/4242")).unwrap();
    let facts = Facts::gather(&root, &inv, slot("0000:01:00.0"));
    check_return(exec.ledger(), slot("0000:01:00.0"), &facts).unwrap();
}

#[test]
fn gpu_sharing_a_group_with_a_nic_is_not_viable_and_names_it() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = mount("nic-shared-group", dir.path());
    let refusals = check(&mnt, slot("0000:03:00.0")).unwrap_err();
    let Some(Refusal::GroupNotViable { group, members, .. }) = refusals.first() else {
        panic!("{refusals:?}");
    };
    assert_eq!(*group, 12);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["0000:04:00.0", "0000:04:00.1"]);
    let text = refusals[0].to_string();
    assert!(
        text.contains("0000:04:00.0 (Ethernet controller) bound to igb"),
        "{text}"
    );
    // The contrast: the second T4 alone in group 20 passes.
    check(&mnt, slot("0000:21:00.0")).unwrap();

    // Holders of NVIDIA nodes block the viable card too.
    holder(mnt.root(), 900, "nvidia-persiste", "/dev/nvidiactl");
    let refusals = check(&mnt, slot("0000:21:00.0")).unwrap_err();
    assert!(
        matches!(&refusals[0], Refusal::Busy { holders, .. } if holders[0].pid == 900),
        "{refusals:?}"
    );
}
