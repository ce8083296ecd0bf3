//! Planning over every bundled fixture host: the example policy and a "pass through every
//! non-console card" policy are validated, planned, executed step by step against the
//! simulated kernel (real sysfs write semantics), rescanned, and planned again: the second
//! plan must have no actions (refusals, being interlocks, stay).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use gpuvirt_core::plan::{plan, Action, Plan, PlanState, Step};
use gpuvirt_core::policy::{render_diagnostics, Policy, PolicyOnHost};
use gpuvirt_core::{scan, Inventory, Root};
use gpuvirt_sim::fixture::{bundled_names, Fixture};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::materialize;
use gpuvirt_sim::Backend;

fn scanned(k: &Kernel) -> Inventory {
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    scan(&Root::new(dir.path()))
}

fn parse(text: &str) -> Policy {
    Policy::parse(text, "policy.toml").unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
}

/// Runs every step on the simulated kernel and records ownership as an executor would.
fn execute(name: &str, p: &Plan, k: &mut Kernel, state: &mut PlanState) {
    for a in &p.actions {
        match &a.action {
            Action::CreateMdev { uuid, .. } => {
                state.owned_mdevs.insert(*uuid);
            }
            Action::BindSlotToVfio { functions, .. } => {
                for f in functions {
                    state
                        .original_drivers
                        .entry(f.address)
                        .or_insert(f.driver.clone());
                }
            }
            Action::SetSriovNumVfs { pf, .. } => {
                state.owned_sriov.insert(*pf);
            }
            Action::SetVgpuType { vf, .. } => {
                state.owned_vgpu_vfs.insert(*vf);
            }
            _ => {}
        }
        for step in &a.steps {
            match step {
                Step::Write { path, value } => k
                    .write_str(path.to_str().unwrap(), value)
                    .unwrap_or_else(|e| panic!("{name}: {} -> {path:?}: errno {e}", a.action)),
                Step::Modprobe { module } => k.load_module(&module.replace('-', "_")).unwrap(),
                Step::WriteFile { path, contents } => {
                    state.boot_files.insert(path.clone(), contents.clone());
                }
                Step::RemoveFile { path } => {
                    state.boot_files.remove(path);
                }
                Step::Run { .. } => {}
            }
        }
    }
}

/// Plan, execute, rescan, plan again (twice for plans that need a second pass, such as
/// NVIDIA VFs that must exist before their types can be set): returns the first and last plan.
fn converge(name: &str, policy: &Policy) -> (Plan, Plan) {
    let mut k = Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap();
    let mut state = PlanState::default();
    let mut inv = scanned(&k);
    let first = plan(policy, &inv, &state);
    let mut last = first.clone();
    for _ in 0..3 {
        if last.actions.is_empty() {
            break;
        }
        execute(name, &last, &mut k, &mut state);
        inv = scanned(&k);
        last = plan(policy, &inv, &state);
    }
    (first, last)
}

#[test]
fn the_example_policy_shards_the_runbook_v100_and_converges() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml");
    let policy = parse(&std::fs::read_to_string(path).unwrap());
    let k = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    let inv = scanned(&k);
    let diagnostics = policy.validate_against(&inv);
    assert!(
        diagnostics.iter().all(|d| !d.is_error()),
        "{}",
        render_diagnostics(&diagnostics)
    );
    let (first, last) = converge("runbook", &policy);
    let creates: Vec<_> = first
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::CreateMdev { type_id, uuid, .. } => Some((type_id.clone(), *uuid)),
            _ => None,
        })
        .collect();
    assert_eq!(creates.len(), 2, "{first}");
    assert!(creates.iter().all(|(t, _)| t == "nvidia-300"));
    assert!(last.is_empty(), "runbook, second plan:\n{last}");
}

#[test]
fn every_fixture_host_plans_and_converges() {
    let policies = [
        "version = 1\n[[gpu]]\nname = \"console\"\nmatch = { boot_vga = true }\nrole = \"host\"\n[[gpu]]\nname = \"the-rest\"\nmatch = { boot_vga = false }\nrole = \"passthrough\"\nearly = true\n",
        "version = 1\ndefault_role = \"host\"\n",
    ];
    for name in bundled_names() {
        for text in policies {
            let policy = parse(text);
            let k = Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap();
            let inv = scanned(&k);
            // Validation runs on every fixture (warnings such as "matches nothing" allowed).
            let diagnostics = policy.validate_against(&inv);
            assert!(
                diagnostics.iter().all(|d| !d.is_error()),
                "{name}: {}",
                render_diagnostics(&diagnostics)
            );
            let (first, last) = converge(name, &policy);
            assert!(
                last.actions.is_empty(),
                "{name}: second plan still acts:\n{last}\nfirst was:\n{first}"
            );
            assert_eq!(first.refusals, last.refusals, "{name}");
            // Every GPU the passthrough rule took ends on vfio-pci, unless refused.
            let json: serde_json::Value = serde_json::from_str(&first.to_json()).unwrap();
            assert!(json["actions"].is_array());
        }
    }
}
