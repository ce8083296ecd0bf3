//! Planner tests over hand-made inventories: the runbook host sharded as the runbook does by
//! hand, idempotence (apply, then plan again), the safety refusals, ownership of mdevs and
//! VFs, passthrough of a whole slot, and boot files.

#![allow(clippy::unwrap_used)]

#[path = "policy_hosts/mod.rs"]
mod hosts;

use std::fs;
use std::path::{Path, PathBuf};

use gpuvirt_core::plan::{mdev_uuid, plan, Action, Plan, PlanState, RefusalKind, Step};
use gpuvirt_core::policy::{render_diagnostics, Policy};
use gpuvirt_core::{Inventory, Mdev};
use hosts::addr;
use uuid::Uuid;

fn parse(text: &str) -> Policy {
    Policy::parse(text, "policy.toml").unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
}

fn example() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml");
    parse(&fs::read_to_string(path).unwrap())
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .map(|a| {
            serde_json::to_value(&a.action).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Plays the kernel and the executor for a plan on the model: what a successful apply would
/// leave behind, including the ledger.
fn apply(plan: &Plan, inv: &mut Inventory, state: &mut PlanState) {
    for a in &plan.actions {
        match &a.action {
            Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } => {
                assert_eq!(parent, hosts::V100);
                hosts::add_v100_mdev(inv, *uuid, type_id);
                state.owned_mdevs.insert(*uuid);
            }
            Action::RemoveMdev { uuid, .. } => {
                inv.mdevs.remove(uuid);
                state.owned_mdevs.remove(uuid);
            }
            Action::LoadModule { .. } => inv.modules.vfio_pci = true,
            Action::BindSlotToVfio { functions, .. } => {
                for f in functions {
                    state
                        .original_drivers
                        .entry(f.address)
                        .or_insert(f.driver.clone());
                    let func = inv.functions.get_mut(&f.address).unwrap();
                    func.driver = Some("vfio-pci".into());
                    func.driver_override = Some("vfio-pci".into());
                }
            }
            Action::ReturnSlotToHost { functions, .. } => {
                for f in functions {
                    let func = inv.functions.get_mut(&f.address).unwrap();
                    func.driver = f.original_driver.clone();
                    func.driver_override = None;
                    state.original_drivers.remove(&f.address);
                }
            }
            Action::WriteBootFile { path, contents } => {
                state.boot_files.insert(path.clone(), contents.clone());
            }
            Action::RemoveBootFile { path } => {
                state.boot_files.remove(path);
            }
            Action::RegenerateInitramfs => {}
            other => panic!("not modelled here: {other:?}"),
        }
    }
    hosts::finish(inv);
}

#[test]
fn the_runbook_host_gets_two_grid_v100_8c_with_stable_uuids() {
    let policy = example();
    let mut inv = hosts::runbook();
    let mut state = PlanState::default();
    let p = plan(&policy, &inv, &state);
    assert!(p.refusals.is_empty(), "{p}");
    assert_eq!(
        kinds(&p),
        [
            "create-mdev",
            "create-mdev",
            "write-boot-file",
            "regenerate-initramfs"
        ],
        "{p}"
    );
    let expected = [
        mdev_uuid("vdi", hosts::V100, 0),
        mdev_uuid("vdi", hosts::V100, 1),
    ];
    // Pinned (computed independently with Python's uuid.uuid5): changing the namespace or
    // the name layout would give every host new mdev UUIDs after an upgrade.
    assert_eq!(
        expected.map(|u| u.to_string()),
        [
            "9d2386bb-609f-5914-8a8c-dd1f09242e1a",
            "a51d3d53-9525-5c05-bdcc-591bb1632b1b"
        ]
    );
    for (a, uuid) in p.actions.iter().zip(expected) {
        assert_eq!(
            a.action,
            Action::CreateMdev {
                parent: hosts::V100.into(),
                type_id: "nvidia-300".into(),
                type_name: Some("GRID V100-8C".into()),
                uuid,
            }
        );
        assert_eq!(a.rule.as_deref(), Some("vdi"));
        assert_eq!(a.gpu, Some(addr(hosts::V100)));
        assert!(
            a.reason.contains("wants 2 × nvidia-300 (GRID V100-8C)"),
            "{}",
            a.reason
        );
        assert_eq!(
            a.steps,
            [Step::Write {
                path: PathBuf::from(
                    "sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300/create"
                ),
                value: uuid.to_string(),
            }]
        );
    }
    // The host's blacklist goes to modprobe.d, which needs a new initramfs.
    match &p.actions[2].action {
        Action::WriteBootFile { path, contents } => {
            assert_eq!(path, Path::new("etc/modprobe.d/gpuvirt.conf"));
            assert!(contents.ends_with("blacklist nouveau\noptions nouveau modeset=0\n"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.reboot_reasons().len(), 2);

    // The same UUIDs every time (a reboot recreates the same mdevs).
    assert_eq!(plan(&policy, &inv, &state), p);

    apply(&p, &mut inv, &mut state);
    let again = plan(&policy, &inv, &state);
    assert!(again.is_empty(), "apply again must be a no-op:\n{again}");
    assert_eq!(
        again.to_string(),
        "Nothing to do: the host matches the policy.\n"
    );
}

#[test]
fn human_and_json_forms_carry_reasons_and_rules() {
    let p = plan(&example(), &hosts::runbook(), &PlanState::default());
    let text = p.to_string();
    let uuid = mdev_uuid("vdi", hosts::V100, 0);
    assert!(
        text.starts_with(&format!(
            "1. create mdev {uuid} of type nvidia-300 (GRID V100-8C) on 0000:41:00.0\n   why: rule \"vdi\" wants 2 × nvidia-300 (GRID V100-8C) on 0000:41:00.0 (GV100GL [Tesla V100 PCIe 16GB]); 0 exist (this is instance 1) (rule \"vdi\")\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("3. write /etc/modprobe.d/gpuvirt.conf\n"),
        "{text}"
    );
    assert!(text.contains("([host])"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
    let first = &json["actions"][0];
    assert_eq!(first["action"]["kind"], "create-mdev");
    assert_eq!(first["action"]["uuid"], uuid.to_string());
    assert_eq!(first["rule"], "vdi");
    assert_eq!(first["steps"][0]["op"], "write");
    assert_eq!(json["refusals"].as_array().unwrap().len(), 0);
}

#[test]
fn foreign_mdevs_are_never_removed_and_owned_surplus_is() {
    let policy = parse(
        "version = 1\n[[gpu]]\nname = \"vdi\"\nmatch = { address = \"0000:41:00.0\" }\nrole = \"shard\"\nshard = { type = \"nvidia-300\", count = 1 }\n",
    );
    let mut inv = hosts::runbook();
    let foreign_a = Uuid::from_u128(0xbc127e23_aaaa_4d06_a7aa_88db2dd538e0);
    let foreign_b = Uuid::from_u128(0x1360ce4b_2ed2_4f63_abb6_8cdb92100085);
    // What the runbook made by hand with mdevctl: two of the wanted type.
    hosts::add_v100_mdev(&mut inv, foreign_a, "nvidia-300");
    hosts::add_v100_mdev(&mut inv, foreign_b, "nvidia-300");
    let state = PlanState::default();
    let p = plan(&policy, &inv, &state);
    assert!(p.actions.is_empty(), "{p}");
    assert_eq!(p.refusals.len(), 1, "{p}");
    assert_eq!(p.refusals[0].kind, RefusalKind::NotOwned);
    assert!(
        p.refusals[0].message.contains("gpuvirt did not create"),
        "{p}"
    );

    // One of them is gpuvirt's (an old policy's instance): only that one goes.
    let mut state = PlanState::default();
    state.owned_mdevs.insert(foreign_b);
    let p = plan(&policy, &inv, &state);
    assert!(p.refusals.is_empty(), "{p}");
    assert_eq!(
        p.actions.iter().map(|a| &a.action).collect::<Vec<_>>(),
        [&Action::RemoveMdev {
            parent: hosts::V100.into(),
            type_id: Some("nvidia-300".into()),
            uuid: foreign_b,
        }]
    );
    assert_eq!(
        p.actions[0].steps,
        [Step::Write {
            path: PathBuf::from(format!("sys/bus/mdev/devices/{foreign_b}/remove")),
            value: "1".into(),
        }]
    );
}

#[test]
fn foreign_mdevs_of_other_types_stay_and_owned_ones_make_room() {
    let policy = example();
    let mut inv = hosts::runbook();
    let foreign = Uuid::from_u128(1);
    let old_owned = Uuid::from_u128(2);
    hosts::add_v100_mdev(&mut inv, foreign, "nvidia-301");
    hosts::add_v100_mdev(&mut inv, old_owned, "nvidia-305");
    let mut state = PlanState::default();
    state.owned_mdevs.insert(old_owned);
    let p = plan(&policy, &inv, &state);
    let removed: Vec<Uuid> = p
        .actions
        .iter()
        .filter_map(|a| match a.action {
            Action::RemoveMdev { uuid, .. } => Some(uuid),
            _ => None,
        })
        .collect();
    assert_eq!(removed, [old_owned], "{p}");
    // Removals come before creations.
    assert_eq!(
        kinds(&p)[..3],
        ["remove-mdev", "create-mdev", "create-mdev"],
        "{p}"
    );
}

#[test]
fn too_little_capacity_is_a_refusal_for_the_rest() {
    let policy = example();
    let mut inv = hosts::runbook();
    for t in &mut inv.mdev_parents.get_mut(hosts::V100).unwrap().types {
        t.available_instances = Some(1);
    }
    let p = plan(&policy, &inv, &PlanState::default());
    assert_eq!(
        kinds(&p).iter().filter(|k| *k == "create-mdev").count(),
        1,
        "{p}"
    );
    assert_eq!(p.refusals.len(), 1);
    assert_eq!(p.refusals[0].kind, RefusalKind::NoCapacity);
}

const PASSTHROUGH_DGPU: &str = r#"
version = 1
[[gpu]]
name = "console"
match = { boot_vga = true }
role = "host"

[[gpu]]
name = "gaming-vm"
match = { address = "0000:01:00.0" }
role = "passthrough"
early = true
"#;

#[test]
fn passthrough_binds_the_whole_slot_in_one_action_after_loading_vfio_pci() {
    let policy = parse(PASSTHROUGH_DGPU);
    let mut inv = hosts::workstation();
    let mut state = PlanState::default();
    let p = plan(&policy, &inv, &state);
    assert!(p.refusals.is_empty(), "{p}");
    assert_eq!(
        kinds(&p),
        [
            "load-module",
            "bind-slot-to-vfio",
            "write-boot-file",
            "write-boot-file"
        ],
        "{p}"
    );
    let bind = &p.actions[1];
    assert_eq!(bind.rule.as_deref(), Some("gaming-vm"));
    let write = |path: &str, value: &str| Step::Write {
        path: PathBuf::from(path),
        value: value.into(),
    };
    assert_eq!(
        bind.steps,
        [
            write(
                "sys/bus/pci/devices/0000:01:00.0/driver_override",
                "vfio-pci"
            ),
            write(
                "sys/bus/pci/devices/0000:01:00.1/driver_override",
                "vfio-pci"
            ),
            write("sys/bus/pci/drivers/nouveau/unbind", "0000:01:00.0"),
            write("sys/bus/pci/drivers/snd_hda_intel/unbind", "0000:01:00.1"),
            write("sys/bus/pci/drivers_probe", "0000:01:00.0"),
            write("sys/bus/pci/drivers_probe", "0000:01:00.1"),
        ]
    );
    assert_eq!(
        p.actions[0].steps,
        [Step::Modprobe {
            module: "vfio-pci".into()
        }]
    );
    // Early binding per slot: a udev rule for each function, vfio-pci loaded at boot.
    let files: Vec<(String, String)> = p
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::WriteBootFile { path, contents } => {
                Some((path.display().to_string(), contents.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(files[0].0, "etc/modules-load.d/gpuvirt.conf");
    assert!(files[0].1.ends_with("\nvfio-pci\n"));
    assert_eq!(files[1].0, "etc/udev/rules.d/61-gpuvirt-vfio.rules");
    for f in [hosts::DGPU, hosts::DGPU_AUDIO] {
        assert!(
            files[1].1.contains(&format!(
                "ACTION==\"add\", SUBSYSTEM==\"pci\", KERNEL==\"{f}\", ATTR{{driver_override}}=\"vfio-pci\"\n"
            )),
            "{}",
            files[1].1
        );
    }

    apply(&p, &mut inv, &mut state);
    assert_eq!(
        state.original_drivers[&addr(hosts::DGPU)].as_deref(),
        Some("nouveau")
    );
    let again = plan(&policy, &inv, &state);
    assert!(again.is_empty(), "{again}");

    // Role host: back to the drivers gpuvirt found, boot files gone.
    let host_policy =
        parse(&PASSTHROUGH_DGPU.replace("role = \"passthrough\"\nearly = true", "role = \"host\""));
    let back = plan(&host_policy, &inv, &state);
    assert_eq!(
        kinds(&back),
        [
            "return-slot-to-host",
            "remove-boot-file",
            "remove-boot-file"
        ],
        "{back}"
    );
    assert_eq!(
        back.actions[0].steps,
        [
            write("sys/bus/pci/devices/0000:01:00.0/driver_override", "\n"),
            write("sys/bus/pci/devices/0000:01:00.1/driver_override", "\n"),
            write("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.0"),
            write("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.1"),
            write("sys/bus/pci/drivers/nouveau/bind", "0000:01:00.0"),
            write("sys/bus/pci/drivers/snd_hda_intel/bind", "0000:01:00.1"),
        ]
    );
    apply(&back, &mut inv, &mut state);
    assert!(plan(&host_policy, &inv, &state).is_empty());
    assert_eq!(inv, {
        let mut fresh = hosts::workstation();
        fresh.modules.vfio_pci = true;
        fresh
    });
}

#[test]
fn the_boot_vga_is_refused_unless_allowed() {
    let text = "version = 1\n[[gpu]]\nname = \"igpu\"\nmatch = { address = \"0000:00:02.0\" }\nrole = \"passthrough\"\n";
    let inv = hosts::workstation();
    let p = plan(&parse(text), &inv, &PlanState::default());
    assert!(p.actions.is_empty(), "{p}");
    assert_eq!(p.refusals.len(), 1);
    assert_eq!(p.refusals[0].kind, RefusalKind::BootVga);
    assert_eq!(p.refusals[0].rule.as_deref(), Some("igpu"));
    assert!(p.to_string().contains("allow_boot_vga = true"), "{p}");
    assert!(!p.is_empty());

    let allowed = plan(
        &parse(&format!("{text}allow_boot_vga = true\n")),
        &inv,
        &PlanState::default(),
    );
    assert!(allowed.refusals.is_empty(), "{allowed}");
    assert_eq!(kinds(&allowed), ["load-module", "bind-slot-to-vfio"]);
}

#[test]
fn a_group_shared_with_a_host_nic_is_refused() {
    let text = "version = 1\n[[gpu]]\nname = \"radeon\"\nmatch = { vendor = \"1002\" }\nrole = \"passthrough\"\n";
    let mut inv = hosts::nic_shared_group();
    let p = plan(&parse(text), &inv, &PlanState::default());
    assert!(p.actions.is_empty(), "{p}");
    assert_eq!(p.refusals[0].kind, RefusalKind::GroupNotViable);
    assert!(p.refusals[0].message.contains(hosts::SHARED_NIC), "{p}");
    assert!(p.refusals[0].message.contains("ixgbe"), "{p}");

    // Once the NIC is off its host driver the group is viable.
    inv.functions
        .get_mut(&addr(hosts::SHARED_NIC))
        .unwrap()
        .driver = Some("vfio-pci".into());
    hosts::finish(&mut inv);
    let p = plan(&parse(text), &inv, &PlanState::default());
    assert_eq!(kinds(&p), ["bind-slot-to-vfio"], "{p}");

    // No IOMMU group at all: refused too.
    let mut no_iommu = hosts::nic_shared_group();
    for f in no_iommu.functions.values_mut() {
        f.iommu_group = None;
    }
    hosts::finish(&mut no_iommu);
    let p = plan(&parse(text), &no_iommu, &PlanState::default());
    assert_eq!(p.refusals[0].kind, RefusalKind::NoIommuGroup, "{p}");
}

#[test]
fn conflicting_rules_leave_the_card_alone() {
    let text = "version = 1\n[[gpu]]\nname = \"a\"\nmatch = { vendor = \"10de\" }\nrole = \"passthrough\"\n[[gpu]]\nname = \"b\"\nmatch = { name = \"*RTX*\" }\nrole = \"host\"\n";
    let p = plan(&parse(text), &hosts::workstation(), &PlanState::default());
    assert!(p.actions.is_empty(), "{p}");
    assert_eq!(p.refusals[0].kind, RefusalKind::RuleConflict);
}

#[test]
fn passing_through_a_card_with_foreign_vgpus_is_refused() {
    let text = "version = 1\n[[gpu]]\nname = \"v100\"\nmatch = { address = \"0000:41:00.0\" }\nrole = \"passthrough\"\n";
    let mut inv = hosts::runbook();
    hosts::add_v100_mdev(&mut inv, Uuid::from_u128(7), "nvidia-300");
    let p = plan(&parse(text), &inv, &PlanState::default());
    assert!(p.actions.is_empty(), "{p}");
    assert_eq!(p.refusals[0].kind, RefusalKind::NotOwned);

    // gpuvirt's own vGPUs are removed first, then the slot is bound.
    let mut state = PlanState::default();
    state.owned_mdevs.insert(Uuid::from_u128(7));
    let p = plan(&parse(text), &inv, &state);
    assert_eq!(
        kinds(&p),
        ["remove-mdev", "load-module", "bind-slot-to-vfio"],
        "{p}"
    );
}

#[test]
fn nvidia_per_vf_vgpus_enable_vfs_then_set_types() {
    let text = "version = 1\n[[gpu]]\nname = \"h100\"\nmatch = { device = \"2331\" }\nrole = \"shard\"\nshard = { type = \"H100-8C\", count = 2 }\n";
    let policy = parse(text);
    // No VFs yet: enable them and plan the types on the next pass.
    let p = plan(&policy, &hosts::hopper(0), &PlanState::default());
    assert_eq!(
        p.actions.iter().map(|a| &a.action).collect::<Vec<_>>(),
        [&Action::SetSriovNumVfs {
            pf: addr(hosts::H100),
            from: 0,
            to: 16
        }],
        "{p}"
    );
    assert_eq!(p.notes.len(), 1);

    let mut inv = hosts::hopper(4);
    let p = plan(&policy, &inv, &PlanState::default());
    assert_eq!(kinds(&p), ["set-vgpu-type", "set-vgpu-type"], "{p}");
    let vf1 = inv.functions[&addr(hosts::H100)]
        .sriov
        .as_ref()
        .unwrap()
        .vfs[0];
    assert_eq!(
        p.actions[0].steps,
        [Step::Write {
            path: PathBuf::from(format!(
                "sys/bus/pci/devices/{vf1}/nvidia/current_vgpu_type"
            )),
            value: "557".into(),
        }]
    );

    // Both exist, one of them not gpuvirt's: nothing to do; three exist with one surplus
    // that gpuvirt owns: it alone is destroyed.
    let vfs = inv.functions[&addr(hosts::H100)].sriov.clone().unwrap().vfs;
    for vf in &vfs[..3] {
        let v = inv
            .functions
            .get_mut(vf)
            .unwrap()
            .nvidia_vgpu
            .as_mut()
            .unwrap();
        v.current_type = Some(557);
        v.creatable_types.clear();
    }
    let mut state = PlanState::default();
    state.owned_vgpu_vfs.insert(vfs[2]);
    let p = plan(&policy, &inv, &state);
    assert_eq!(
        p.actions.iter().map(|a| &a.action).collect::<Vec<_>>(),
        [&Action::ClearVgpuType {
            vf: vfs[2],
            type_id: 557
        }],
        "{p}"
    );
    assert!(p.refusals.is_empty());
}

#[test]
fn plain_sriov_sets_the_vf_count() {
    let text = "version = 1\n[[gpu]]\nname = \"v710\"\nmatch = { vendor = \"1002\" }\nrole = \"shard\"\nshard = { type = \"vf\", count = 4 }\n";
    let policy = parse(text);
    let mut inv = hosts::sriov_host();
    let pf = addr("0000:c1:00.0");
    let p = plan(&policy, &inv, &PlanState::default());
    assert_eq!(
        p.actions[0].steps,
        [Step::Write {
            path: PathBuf::from("sys/bus/pci/devices/0000:c1:00.0/sriov_numvfs"),
            value: "4".into(),
        }]
    );
    // 2 VFs someone else enabled: changing them would destroy them.
    inv.functions
        .get_mut(&pf)
        .unwrap()
        .sriov
        .as_mut()
        .unwrap()
        .num_vfs = 2;
    let p = plan(&policy, &inv, &PlanState::default());
    assert_eq!(p.refusals[0].kind, RefusalKind::NotOwned, "{p}");
    // gpuvirt's own: through 0, as the kernel requires.
    let mut state = PlanState::default();
    state.owned_sriov.insert(pf);
    let p = plan(&policy, &inv, &state);
    let write = |v: &str| Step::Write {
        path: PathBuf::from("sys/bus/pci/devices/0000:c1:00.0/sriov_numvfs"),
        value: v.into(),
    };
    assert_eq!(p.actions[0].steps, [write("0"), write("4")], "{p}");
}

#[test]
fn unmanaged_cards_are_never_touched() {
    // gpuvirt once bound the dGPU, but the policy now leaves it unmanaged: it stays put.
    let text = "version = 1\n[[gpu]]\nname = \"dgpu\"\nmatch = { address = \"0000:01:00.0\" }\nrole = \"unmanaged\"\n";
    let mut inv = hosts::workstation();
    let mut state = PlanState::default();
    for a in [hosts::DGPU, hosts::DGPU_AUDIO] {
        let f = inv.functions.get_mut(&addr(a)).unwrap();
        state.original_drivers.insert(f.address, f.driver.clone());
        f.driver = Some("vfio-pci".into());
    }
    hosts::finish(&mut inv);
    assert!(plan(&parse(text), &inv, &state).is_empty());
    // With default_role = "host" and no rule, it goes back.
    let p = plan(
        &parse("version = 1\ndefault_role = \"host\"\n"),
        &inv,
        &state,
    );
    assert_eq!(kinds(&p), ["return-slot-to-host"], "{p}");
    assert_eq!(p.actions[0].rule, None);
}

#[test]
fn an_mdev_of_the_wanted_type_elsewhere_does_not_count() {
    let mut inv = hosts::runbook();
    // An mdev on a virtual parent (mbochs) is not the V100's.
    let other = Uuid::from_u128(9);
    inv.mdevs.insert(
        other,
        Mdev {
            uuid: other,
            parent: "mbochs".into(),
            type_id: Some("nvidia-300".into()),
            driver: None,
            iommu_group: None,
        },
    );
    let p = plan(&example(), &inv, &PlanState::default());
    assert_eq!(
        kinds(&p).iter().filter(|k| *k == "create-mdev").count(),
        2,
        "{p}"
    );
}
