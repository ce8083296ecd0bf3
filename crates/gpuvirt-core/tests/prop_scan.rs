//! Property tests for the sysfs scanner on damaged trees: a small host (GPU and HDMI audio in
//! one IOMMU group, an mdev parent with two types and a live mdev, a NIC) is built in a tempdir
//! and then damaged at random (garbage or non-UTF-8 attribute contents, oversized files,
//! missing files, links turned into files, links pointing outside `/sys`, at themselves or at
//! the wrong kind of thing, directories where files belong).
//!
//! Properties: the scan and every refresh return (no panic, no hang on link loops); damage to
//! an attribute the scanner depends on is reported as a warning naming a file below the root;
//! every name the inventory carries that later becomes a path component (driver, mdev parent,
//! mdev type) is one ordinary component; a refresh after damage equals a fresh scan.
//!
//! 64 trees per property by default; `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used)]

mod fuzz_support;
use fuzz_support::Fuzz;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use gpuvirt_core::testing::{PciDev, TreeBuilder, TypeSpec};
use gpuvirt_core::{Inventory, RefreshTarget, Root, Scanner};
use proptest::prelude::*;

const GPU: &str = "0000:41:00.0";
const AUDIO: &str = "0000:41:00.1";
const NIC: &str = "0000:42:00.0";
const MDEV: &str = "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4";
const GPU_DIR: &str = "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0";
const AUDIO_DIR: &str = "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.1";

fn build(root: &Path) {
    let t = TreeBuilder::new(root);
    let gpu = PciDev::new(GPU, "pci0000:40/0000:40:03.1", 0x030200, 0x10de, 0x1db4)
        .driver("nvidia")
        .group(66);
    let audio = PciDev::new(AUDIO, "pci0000:40/0000:40:03.1", 0x040300, 0x10de, 0x10f0)
        .driver("snd_hda_intel")
        .group(66);
    let nic = PciDev::new(NIC, "pci0000:40/0000:40:03.2", 0x020000, 0x8086, 0x1533)
        .driver("igb")
        .group(67);
    t.pci(&gpu);
    t.pci(&audio);
    t.pci(&nic);
    let parent = Path::new(GPU_DIR).strip_prefix("sys").unwrap();
    t.mdev_parent(
        GPU,
        parent,
        &[
            TypeSpec::new("nvidia-300", "GRID V100-8C", Some("num_heads=1"), 2),
            TypeSpec::new("nvidia-301", "GRID V100-16C", None, 1),
        ],
    );
    t.mdev(MDEV, parent, "nvidia-300", Some("vfio_mdev"), Some(100));
    t.iommu_unit("dmar0");
    t.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt");
    t.kernel_release("6.1.0-test");
    t.module("vfio");
    t.module("vfio_pci");
    t.module("mdev");
}

/// Files and links the damage is aimed at, relative to the root.
const TARGETS: &[&str] = &[
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/uevent",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/class",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/vendor",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/device",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/driver",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/driver_override",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/iommu_group",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/numa_node",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/boot_vga",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/reset_method",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/revision",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/mdev_supported_types/nvidia-300/name",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/mdev_supported_types/nvidia-300/available_instances",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/mdev_supported_types/nvidia-300/device_api",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/mdev_supported_types/nvidia-301/description",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4/mdev_type",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.0/c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4/iommu_group",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.1/uevent",
    "sys/devices/pci0000:40/0000:40:03.1/0000:41:00.1/driver",
    "sys/bus/pci/devices/0000:41:00.0",
    "sys/bus/pci/devices/0000:41:00.1",
    "sys/bus/pci/devices/0000:42:00.0",
    "sys/bus/mdev/devices/c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4",
    "sys/class/mdev_bus/0000:41:00.0",
    "sys/kernel/iommu_groups/66/devices/0000:41:00.0",
    "sys/class/iommu/dmar0",
    "proc/cmdline",
    "proc/sys/kernel/osrelease",
];

#[derive(Debug, Clone)]
enum Damage {
    /// Replace the contents (a link becomes a file).
    Contents(Vec<u8>),
    /// More than an attribute page can hold.
    Oversized,
    Remove,
    /// Point (or re-point) at a target; a file becomes a link.
    Link(String),
    /// A directory where a file or link was.
    Directory,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(b"\xff\xfe\xfd".to_vec()),
            Just(b"".to_vec()),
            Just(b"\n\n\n".to_vec()),
            Just(b"0x".to_vec()),
            Just(b"0xffffffffffffffffff".to_vec()),
            Just(b"-1\n".to_vec()),
            Just(b"DRIVER=../../../../etc\nPCI_CLASS=zz\nPCI_ID=10DE\nMODALIAS=\0\n".to_vec()),
            Just(b"PCI_CLASS=30200\nPCI_ID=10DE:1DB4:FFFF\nPCI_SUBSYS_ID=:\n".to_vec()),
            "[ -~\\n]{0,80}".prop_map(String::into_bytes),
        ].prop_map(Damage::Contents),
        1 => Just(Damage::Oversized),
        2 => Just(Damage::Remove),
        3 => prop_oneof![
            Just("../../../../../../../../../../etc".to_string()),
            Just("/etc/passwd".to_string()),
            Just("/sys/../../..".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("self".to_string()),
            Just("../../bus/pci/drivers/name with spaces\n".to_string()),
            Just("../../../../kernel/iommu_groups/notanumber".to_string()),
            Just("../mdev_supported_types/nvidia-999".to_string()),
            "[a-z./]{0,30}",
        ].prop_map(Damage::Link),
        1 => Just(Damage::Directory),
    ]
}

fn apply(root: &Path, target: &str, damage: &Damage) {
    let path = root.join(target);
    let clear = |p: &Path| {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    };
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    match damage {
        Damage::Contents(bytes) => {
            clear(&path);
            fs::write(&path, bytes).unwrap();
        }
        Damage::Oversized => {
            clear(&path);
            fs::write(&path, vec![b'1'; 70 * 1024]).unwrap();
        }
        Damage::Remove => clear(&path),
        Damage::Link(to) => {
            clear(&path);
            // "self" makes a one-link loop.
            let to = if to == "self" {
                PathBuf::from(path.file_name().unwrap())
            } else {
                PathBuf::from(to)
            };
            if to.as_os_str().is_empty() {
                return;
            }
            symlink(to, &path).unwrap();
        }
        Damage::Directory => {
            clear(&path);
            fs::create_dir_all(&path).unwrap();
        }
    }
}

/// One ordinary path component (what a driver, parent or type name is joined as).
fn assert_component(what: &str, name: &str) {
    let parts: Vec<Component<'_>> = Path::new(name).components().collect();
    assert_eq!(
        parts,
        [Component::Normal(name.as_ref())],
        "{what} {name:?} is not one path component"
    );
    assert!(!name.contains('\0'), "{what} {name:?} has a NUL");
}

fn check_inventory(inv: &Inventory) {
    for f in inv.functions.values() {
        if let Some(d) = &f.driver {
            assert_component("driver", d);
        }
    }
    for g in inv.groups.values() {
        for m in &g.members {
            if let Some(d) = &m.driver {
                assert_component("group member driver", d);
            }
        }
    }
    for (name, p) in &inv.mdev_parents {
        assert_component("mdev parent", name);
        assert_eq!(name, &p.name);
        for t in &p.types {
            assert_component("mdev type", &t.id);
        }
    }
    for m in inv.mdevs.values() {
        assert_component("mdev parent", &m.parent);
        if let Some(t) = &m.type_id {
            assert_component("mdev type", t);
        }
    }
    for w in &inv.warnings {
        assert!(
            w.path.is_relative()
                && w.path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
            "warning path {} is not a plain relative path",
            w.path.display()
        );
        assert!(
            !w.message.trim().is_empty(),
            "empty warning for {}",
            w.path.display()
        );
    }
}

/// Whether damage to this target must surface as a warning (it is read on every scan and the
/// damage cannot be a valid value).
fn must_warn(target: &str, damage: &Damage) -> bool {
    let unparseable = match damage {
        Damage::Contents(b) => b.starts_with(b"\xff\xfe"),
        Damage::Oversized => true,
        _ => false,
    };
    unparseable
        && (target.ends_with("0000:41:00.0/uevent") || target.ends_with("0000:41:00.1/uevent"))
}

#[test]
fn damaged_trees_scan_with_warnings() {
    let fuzz = Fuzz::new(file!(), "damaged_trees_scan_with_warnings", 64);
    proptest!(fuzz.config(), |(
        damages in proptest::collection::vec(
            (any::<prop::sample::Index>(), damage()),
            1..5,
        ),
    )| {
        if !fuzz.hit() {
            return Ok(());
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        build(&root);
        let scanner = Scanner::new(Root::new(&root));
        let mut before = scanner.scan();
        prop_assert!(before.warnings.is_empty(), "the undamaged tree warns: {:?}", before.warnings);

        let mut required = Vec::new();
        for (i, d) in &damages {
            let target = TARGETS[i.index(TARGETS.len())];
            apply(&root, target, d);
            if must_warn(target, d) {
                required.push(target);
            }
        }
        let scanner = Scanner::new(Root::new(&root));
        let after = scanner.scan();
        check_inventory(&after);
        for target in required {
            // Unless a later damage replaced it with something valid again, or the function is
            // no longer read from that directory (its bus link or directory was damaged too),
            // the file warns.
            let still_bad = fs::read(root.join(target))
                .is_ok_and(|b| b.starts_with(b"\xff\xfe") || b.len() > 64 * 1024);
            let dir = Path::new(target).parent().unwrap();
            let read_from_dir = after.functions.values().any(|f| Path::new("sys").join(&f.sysfs_path) == dir);
            if still_bad && read_from_dir {
                prop_assert!(
                    after.warnings.iter().any(|w| w.path == Path::new(target)),
                    "no warning for {}: {:?}",
                    target,
                    after.warnings
                );
            }
        }

        // Refreshing what the damage touched gives what a fresh scan gives, one target at a
        // time or as one batch.
        let targets = [
            RefreshTarget::Pci(GPU.parse().unwrap()),
            RefreshTarget::Pci(AUDIO.parse().unwrap()),
            RefreshTarget::Pci(NIC.parse().unwrap()),
            RefreshTarget::Mdev(MDEV.parse().unwrap()),
            RefreshTarget::MdevParent(GPU.to_string()),
            RefreshTarget::IommuGroup(66),
            RefreshTarget::IommuGroup(100),
            RefreshTarget::Modules,
        ];
        let mut batched = before.clone();
        let (_, batch_scope) = scanner.refresh_batch(&mut batched, &targets);
        let outside = batch_scope.first_uncovered(&before, &batched);
        prop_assert!(outside.is_none(), "the batch changed {:?} outside {:?}", outside, batch_scope);
        for target in targets {
            let previous = before.clone();
            let scope = scanner.refresh(&mut before, &target);
            let outside = scope.first_uncovered(&previous, &before);
            prop_assert!(outside.is_none(), "refresh of {:?} changed {:?} outside {:?}", target, outside, scope);
        }
        check_inventory(&batched);
        check_inventory(&before);
        let mut fresh = scanner.scan();
        // Warnings are compared as sets: a refresh may find them in another order.
        before.warnings.sort_by(|a, b| (&a.path, &a.message).cmp(&(&b.path, &b.message)));
        fresh.warnings.sort_by(|a, b| (&a.path, &a.message).cmp(&(&b.path, &b.message)));
        before.warnings.dedup();
        fresh.warnings.dedup();
        prop_assert_eq!(&before.functions, &fresh.functions);
        prop_assert_eq!(&before.mdevs, &fresh.mdevs);
        prop_assert_eq!(&before.mdev_parents, &fresh.mdev_parents);
        prop_assert_eq!(&batched.functions, &fresh.functions);
        prop_assert_eq!(&batched.mdevs, &fresh.mdevs);
        prop_assert_eq!(&batched.mdev_parents, &fresh.mdev_parents);
    });
    fuzz.report();
}

/// Hostile names in refresh targets (they come from uevent devpaths) read nothing outside
/// `/sys/class/mdev_bus` and never panic.
#[test]
fn refresh_with_hostile_parent_names() {
    let fuzz = Fuzz::new(file!(), "refresh_with_hostile_parent_names", 64);
    proptest!(fuzz.config(), |(name in prop_oneof![
        Just("..".to_string()),
        Just("../../..".to_string()),
        // Resolves to the real parent's directory through a path that is not its name.
        Just("../../devices/pci0000:40/0000:40:03.1/0000:41:00.0".to_string()),
        Just(format!("{GPU}/.")),
        Just("/".to_string()),
        Just("".to_string()),
        Just("x\0y".to_string()),
        ".{0,40}",
    ])| {
        if !fuzz.hit() {
            return Ok(());
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        build(&root);
        let scanner = Scanner::new(Root::new(&root));
        let mut inv = scanner.scan();
        scanner.refresh(&mut inv, &RefreshTarget::MdevParent(name));
        check_inventory(&inv);
    });
    fuzz.report();
}

/// A damaged tree still yields the undamaged devices: removing the audio function's uevent
/// and class leaves the GPU intact and the NIC classified, with a warning for the audio function.
#[test]
fn one_damaged_function_does_not_hide_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    build(&root);
    apply(
        &root,
        &format!("{AUDIO_DIR}/uevent"),
        &Damage::Contents(b"\xff\xfe".to_vec()),
    );
    apply(&root, &format!("{AUDIO_DIR}/class"), &Damage::Remove);
    let inv = Scanner::new(Root::new(&root)).scan();
    check_inventory(&inv);
    assert!(inv.functions.contains_key(&GPU.parse().unwrap()));
    // The NIC shares no group with the GPU: out of scope, known by its class only.
    assert_eq!(
        inv.pci_classes.get(&NIC.parse().unwrap()),
        Some(&Some(0x020000))
    );
    assert!(!inv.functions.contains_key(&NIC.parse().unwrap()));
    assert!(
        inv.warnings.iter().any(|w| w.path.starts_with(AUDIO_DIR)),
        "{:?}",
        inv.warnings
    );
}
