//! The boot files the planner renders from a policy, against golden files in
//! `tests/golden/boot/` (regenerate with `GPUVIRT_BLESS=1`): the runbook's modprobe.d
//! blacklist, and a multi-GPU host where identical cards are split between VMs (per-slot
//! udev early binding) and the host, next to a card bound early by id (modprobe.d). Also what
//! the policy wants of the running kernel after the next boot ([`boot_wants`]).

#![allow(clippy::unwrap_used)]

#[path = "policy_hosts/mod.rs"]
mod hosts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpuvirt_core::plan::{boot_wants, plan, Action, PlanState};
use gpuvirt_core::policy::{render_diagnostics, Policy};
use gpuvirt_core::reboot::{reboot_reasons, EarlyFunction, Running};
use gpuvirt_core::Inventory;
use hosts::{add, addr, finish, function};

fn parse(text: &str) -> Policy {
    Policy::parse(text, "policy.toml").unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
}

/// Compares `actual` with `tests/golden/boot/<name>`, or rewrites it under `GPUVIRT_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/boot")
        .join(name);
    if std::env::var_os("GPUVIRT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with GPUVIRT_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs; run with GPUVIRT_BLESS=1 to accept",
        path.display()
    );
}

/// The boot files a plan writes, by path relative to the root.
fn boot_files(policy: &Policy, inv: &Inventory) -> BTreeMap<PathBuf, String> {
    let p = plan(policy, inv, &PlanState::default());
    assert!(p.refusals.is_empty(), "{p}");
    p.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::WriteBootFile { path, contents } => Some((path.clone(), contents.clone())),
            _ => None,
        })
        .collect()
}

fn file<'a>(files: &'a BTreeMap<PathBuf, String>, path: &str) -> &'a str {
    files
        .get(Path::new(path))
        .unwrap_or_else(|| panic!("{path} is not written: {files:#?}"))
}

#[test]
fn the_runbook_blacklist_is_a_modprobe_d_file() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml"),
    )
    .unwrap();
    let files = boot_files(&parse(&text), &hosts::runbook());
    // Sharding needs no early binding: only the runbook's blacklist + options.
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [Path::new("etc/modprobe.d/gpuvirt.conf")]
    );
    golden(
        "runbook/modprobe.d-gpuvirt.conf",
        file(&files, "etc/modprobe.d/gpuvirt.conf"),
    );
}

/// Four identical RTX 3090 cards with HDMI audio (slots 01..04, one group each), a boot-VGA
/// iGPU, and a V100 at 81:00.0.
fn multi_gpu() -> Inventory {
    let mut inv = Inventory::default();
    let mut igpu = function(
        "0000:00:02.0",
        0x030000,
        (0x8086, 0x3e92),
        Some("CoffeeLake-S GT2 [UHD Graphics 630]"),
        Some("i915"),
        Some(0),
    );
    igpu.boot_vga = Some(true);
    add(&mut inv, igpu);
    for bus in 1..=4u32 {
        add(
            &mut inv,
            function(
                &format!("0000:{bus:02x}:00.0"),
                0x030000,
                (0x10de, 0x2204),
                Some("GA102 [GeForce RTX 3090]"),
                Some("nouveau"),
                Some(bus),
            ),
        );
        add(
            &mut inv,
            function(
                &format!("0000:{bus:02x}:00.1"),
                0x040300,
                (0x10de, 0x1aef),
                Some("GA102 High Definition Audio Controller"),
                Some("snd_hda_intel"),
                Some(bus),
            ),
        );
    }
    add(
        &mut inv,
        function(
            "0000:81:00.0",
            0x030200,
            (0x10de, 0x1db4),
            Some("GV100GL [Tesla V100 PCIe 16GB]"),
            Some("nouveau"),
            Some(81),
        ),
    );
    inv.modules.vfio = true;
    finish(&mut inv);
    inv
}

const MULTI_GPU_POLICY: &str = r#"version = 1
default_role = "unmanaged"

[host]
blacklist = ["nouveau"]
options = { nouveau = "modeset=0" }

[[gpu]]
name = "console"
match = { boot_vga = true }
role = "host"

[[gpu]]
name = "vm-a"
match = { address = "0000:01:00.0" }
role = "passthrough"
early = true

[[gpu]]
name = "vm-b"
match = { address = "0000:02:00.0" }
role = "passthrough"
early = true
early_method = "driver-override"

[[gpu]]
name = "desktop"
match = { address = "0000:03:00.0" }
role = "host"

[[gpu]]
name = "compute"
match = { vendor = "10de", device = "1db4" }
role = "passthrough"
early = true
early_method = "modprobe"
"#;

#[test]
fn identical_cards_are_split_per_slot_and_a_model_is_bound_by_id() {
    let policy = parse(MULTI_GPU_POLICY);
    let inv = multi_gpu();
    let files = boot_files(&policy, &inv);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [
            Path::new("etc/modprobe.d/gpuvirt.conf"),
            Path::new("etc/modules-load.d/gpuvirt.conf"),
            Path::new("etc/udev/rules.d/61-gpuvirt-vfio.rules"),
        ]
    );
    let rules = file(&files, "etc/udev/rules.d/61-gpuvirt-vfio.rules");
    // Every function of the two VM slots, none of the identical host/unmanaged cards.
    for a in [
        "0000:01:00.0",
        "0000:01:00.1",
        "0000:02:00.0",
        "0000:02:00.1",
    ] {
        assert!(rules.contains(&format!("KERNEL==\"{a}\"")), "{a}: {rules}");
    }
    for a in [
        "0000:03:00.0",
        "0000:04:00.0",
        "0000:00:02.0",
        "0000:81:00.0",
    ] {
        assert!(!rules.contains(a), "{a}: {rules}");
    }
    let modprobe = file(&files, "etc/modprobe.d/gpuvirt.conf");
    assert!(
        modprobe.contains("options vfio-pci ids=10de:1db4\n"),
        "{modprobe}"
    );
    assert!(
        modprobe.contains("softdep nouveau pre: vfio-pci\n"),
        "{modprobe}"
    );
    for (path, contents) in &files {
        assert!(
            contents.starts_with("# Written by gpuvirt"),
            "{} has no ownership header",
            path.display()
        );
    }
    golden("multi-gpu/61-gpuvirt-vfio.rules", rules);
    golden("multi-gpu/modprobe.d-gpuvirt.conf", modprobe);
    golden(
        "multi-gpu/modules-load.d-gpuvirt.conf",
        file(&files, "etc/modules-load.d/gpuvirt.conf"),
    );
}

#[test]
fn the_next_boot_wants_the_early_slots_on_vfio_and_the_blacklist_unloaded() {
    let policy = parse(MULTI_GPU_POLICY);
    let inv = multi_gpu();
    let wants = boot_wants(&policy, &inv, &BTreeMap::new());
    assert!(wants.iommu);
    assert_eq!(wants.blacklist, ["nouveau"]);
    let early = |a: &str, rule: &str| EarlyFunction {
        address: addr(a),
        rule: rule.into(),
    };
    assert_eq!(
        wants.early,
        [
            early("0000:01:00.0", "vm-a"),
            early("0000:01:00.1", "vm-a"),
            early("0000:02:00.0", "vm-b"),
            early("0000:02:00.1", "vm-b"),
            early("0000:81:00.0", "compute"),
        ]
    );

    // Before the reboot: the slots are on host drivers, nouveau is loaded.
    let mut running = Running {
        cmdline: "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt".into(),
        iommu_enabled: true,
        cpu_vendor: None,
        loaded_modules: ["nouveau".to_string(), "i915".to_string()].into(),
        drivers: inv
            .functions
            .iter()
            .map(|(a, f)| (*a, f.driver.clone()))
            .collect(),
    };
    let reasons = reboot_reasons(&[], &wants, &running);
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    // After a reboot that took effect.
    running.loaded_modules.remove("nouveau");
    for f in &wants.early {
        running.drivers.insert(f.address, Some("vfio-pci".into()));
    }
    running.drivers.insert(addr("0000:03:00.0"), None);
    assert_eq!(reboot_reasons(&[], &wants, &running), Vec::<String>::new());

    // The runbook's example policy shards, so it needs no IOMMU and binds nothing early.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml"),
    )
    .unwrap();
    let wants = boot_wants(&parse(&text), &hosts::runbook(), &BTreeMap::new());
    assert!(!wants.iommu && wants.early.is_empty(), "{wants:?}");
    assert_eq!(wants.blacklist, ["nouveau"]);
}

#[test]
fn the_initramfs_step_names_the_tool_found_under_the_root() {
    use gpuvirt_core::plan::{InitramfsTool, InitramfsTooling, Step};
    use gpuvirt_core::Root;

    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    assert_eq!(InitramfsTooling::detect(&root), InitramfsTooling::Missing);
    let install = |rel: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
    };
    install("usr/bin/dracut");
    assert_eq!(
        InitramfsTooling::detect(&root),
        InitramfsTooling::Found(InitramfsTool::Dracut)
    );
    // Both: update-initramfs first, as the executor does.
    install("usr/sbin/update-initramfs");
    assert_eq!(
        InitramfsTooling::detect(&root),
        InitramfsTooling::Found(InitramfsTool::UpdateInitramfs)
    );

    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml"),
    )
    .unwrap();
    let policy = parse(&text);
    let inv = hosts::runbook();
    let initramfs_step = |tooling: InitramfsTooling| {
        let state = PlanState {
            initramfs_tool: tooling,
            ..PlanState::default()
        };
        let p = plan(&policy, &inv, &state);
        let last = p.actions.last().unwrap().clone();
        assert_eq!(last.action, Action::RegenerateInitramfs, "{p}");
        (last, p.notes)
    };
    for (tool, argv) in [
        (InitramfsTool::Dracut, ["dracut", "-f"]),
        (InitramfsTool::UpdateInitramfs, ["update-initramfs", "-u"]),
    ] {
        let (step, notes) = initramfs_step(InitramfsTooling::Found(tool));
        assert_eq!(
            step.steps,
            [Step::Run {
                argv: argv.iter().map(|a| a.to_string()).collect()
            }]
        );
        assert!(
            step.reason.contains(&format!("`{}`", argv.join(" "))),
            "{}",
            step.reason
        );
        assert!(notes.is_empty(), "{notes:?}");
    }
    let (step, notes) = initramfs_step(InitramfsTooling::Missing);
    assert!(step.reason.contains("no tool"), "{}", step.reason);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("install initramfs-tools") && notes[0].contains("dracut -f"),
        "{}",
        notes[0]
    );
}
