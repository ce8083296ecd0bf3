//! Policy parsing and validation: table-driven over corpora of broken and good policies
//! (`tests/data/policy/{bad,bad-runbook,good}`), each broken one with a sidecar `.expect`
//! listing every diagnostic it must produce as `LINE:COLUMN: SEVERITY: message fragment`.

#![allow(clippy::unwrap_used)]

#[path = "policy_hosts/mod.rs"]
mod hosts;

use std::fs;
use std::path::{Path, PathBuf};

use gpuvirt_core::plan::{plan, PlanState};
use gpuvirt_core::policy::{
    render_diagnostics, EarlyMethod, Enforcement, Policy, PolicyDiagnostic, PolicyOnHost, Role,
    RoleSettings, Severity, ShardCount,
};
use gpuvirt_core::Inventory;

fn data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/policy")
        .join(dir)
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(data(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no policies in {dir}");
    files
}

#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    severity: Severity,
    fragment: String,
}

fn expectations(policy: &Path) -> Vec<Expected> {
    let path = policy.with_extension("expect");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (every broken policy needs one)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(4, ':');
            let line = parts.next().unwrap().trim().parse().unwrap();
            let column = parts.next().unwrap().trim().parse().unwrap();
            let severity = match parts.next().unwrap().trim() {
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                other => panic!("{}: bad severity {other}", path.display()),
            };
            let fragment = parts.next().unwrap().trim().to_string();
            Expected {
                line,
                column,
                severity,
                fragment,
            }
        })
        .collect()
}

/// Every expected diagnostic is present (position, severity, message fragment), and there
/// are no others.
fn check(file: &Path, diagnostics: &[PolicyDiagnostic]) {
    let expected = expectations(file);
    let shown = render_diagnostics(diagnostics);
    for e in &expected {
        assert!(
            diagnostics.iter().any(|d| d.line == e.line
                && d.column == e.column
                && d.severity == e.severity
                && d.message.contains(&e.fragment)),
            "{}: expected {}:{}: {:?}: {:?}, got:\n{shown}",
            file.display(),
            e.line,
            e.column,
            e.severity,
            e.fragment
        );
    }
    assert_eq!(
        diagnostics.len(),
        expected.len(),
        "{}: unexpected diagnostics:\n{shown}",
        file.display()
    );
    for d in diagnostics {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(d.file, name);
        assert!(!d.key_path.is_empty() || d.message.contains("TOML") || d.line == 1);
    }
}

fn parse_file(file: &Path) -> Result<Policy, Vec<PolicyDiagnostic>> {
    let text = fs::read_to_string(file).unwrap();
    Policy::parse(&text, file.file_name().unwrap().to_str().unwrap())
}

#[test]
fn broken_policies_give_positioned_diagnostics() {
    for file in corpus("bad") {
        match parse_file(&file) {
            Ok(_) => panic!("{} parsed", file.display()),
            Err(diagnostics) => check(&file, &diagnostics),
        }
    }
}

#[test]
fn policies_broken_for_the_runbook_host_are_caught_against_its_inventory() {
    let inventory = hosts::runbook();
    for file in corpus("bad-runbook") {
        let policy = parse_file(&file)
            .unwrap_or_else(|d| panic!("{}:\n{}", file.display(), render_diagnostics(&d)));
        let mut diagnostics = policy.warnings.clone();
        diagnostics.extend(policy.validate_against(&inventory));
        check(&file, &diagnostics);
    }
}

fn assert_clean(name: &str, policy: &Policy, inventory: &Inventory) {
    let diagnostics = policy.validate_against(inventory);
    assert!(
        policy.warnings.is_empty() && diagnostics.is_empty(),
        "{name}:\n{}",
        render_diagnostics(&diagnostics)
    );
}

#[test]
fn good_policies_parse_and_validate() {
    for file in corpus("good") {
        let policy = parse_file(&file)
            .unwrap_or_else(|d| panic!("{}:\n{}", file.display(), render_diagnostics(&d)));
        // Each good policy names the host it is written for on its first line.
        let text = fs::read_to_string(&file).unwrap();
        let host = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# host: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# host: NAME`", file.display()));
        let inventory = match host.trim() {
            "runbook" => hosts::runbook(),
            "workstation" => hosts::workstation(),
            "hopper" => hosts::hopper(4),
            "sriov" => hosts::sriov_host(),
            other => panic!("unknown host {other}"),
        };
        assert_clean(&file.display().to_string(), &policy, &inventory);
    }
}

fn example() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml");
    let text = fs::read_to_string(path).unwrap();
    Policy::parse(&text, "policy.toml").unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
}

#[test]
fn the_example_policy_describes_the_runbook_host() {
    let policy = example();
    assert_clean("config/policy.toml", &policy, &hosts::runbook());
    assert_eq!(policy.version, 1);
    assert_eq!(policy.default_role, Role::Unmanaged);
    assert_eq!(policy.enforcement, Enforcement::Enforce);
    assert_eq!(policy.host.blacklist, ["nouveau"]);
    assert_eq!(policy.host.options["nouveau"], "modeset=0");
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["console", "vdi"]);
    let vdi = policy.rule("vdi").unwrap();
    assert_eq!(vdi.matcher.address, Some(hosts::addr(hosts::V100)));
    match &vdi.settings {
        RoleSettings::Shard(s) => {
            assert_eq!(s.type_spec, "GRID V100-8C");
            assert_eq!(s.count, ShardCount::Count(2));
        }
        other => panic!("vdi is {other:?}"),
    }
    let assignments = policy.assign(&hosts::runbook(), &Default::default());
    assert_eq!(assignments[&hosts::addr(hosts::V100)].role, Role::Shard);
    assert_eq!(assignments[&hosts::addr(hosts::CONSOLE)].role, Role::Host);
    assert_eq!(
        assignments[&hosts::addr(hosts::CONSOLE)]
            .rule_name
            .as_deref(),
        Some("console")
    );
}

#[test]
fn the_commented_passthrough_rule_is_valid_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy.toml");
    let text = fs::read_to_string(path).unwrap();
    // Swap the shard rule for the commented passthrough rule, as the comment tells readers to.
    let start = text.find("[[gpu]]\nname = \"vdi\"").unwrap();
    let end = text[start..].find("\n\n").unwrap() + start;
    let mut edited = format!("{}{}", &text[..start], &text[end..]);
    let commented = edited.find("# [[gpu]]").unwrap();
    let tail: Vec<&str> = edited[commented..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    edited = format!("{}{}\n", &edited[..commented], tail.join("\n"));
    let policy = Policy::parse(&edited, "policy.toml")
        .unwrap_or_else(|d| panic!("{}\n{edited}", render_diagnostics(&d)));
    let pool = policy.rule("vm-pool").unwrap();
    assert_eq!(
        pool.settings,
        RoleSettings::Passthrough {
            early: true,
            early_method: EarlyMethod::DriverOverride,
            on_demand: false,
        }
    );
    assert_eq!(pool.matcher.vendor, Some(0x10de));
    assert_eq!(pool.matcher.device, Some(0x1db4));
    assert_clean("passthrough variant", &policy, &hosts::runbook());
}

#[test]
fn diagnostics_render_like_a_compiler() {
    let text = "version = 1\n\n[[gpu]]\nname = \"vdi\"\nmatch = { address = \"0000:41:00.0\" }\nrole = \"shard\"\nshard = { type = \"GRID V100-8C\", count = 3 }\n";
    let policy = Policy::parse(text, "policy.toml").unwrap();
    let diagnostics = policy.validate_against(&hosts::runbook());
    assert_eq!(diagnostics.len(), 1, "{}", render_diagnostics(&diagnostics));
    assert_eq!(
        diagnostics[0].to_string(),
        "policy.toml:7:42: error: count 3 is more than 0000:41:00.0 (GV100GL [Tesla V100 PCIe 16GB]) can hold of nvidia-300 (GRID V100-8C): 2\n  |\n7 | shard = { type = \"GRID V100-8C\", count = 3 }\n  |                                          ^\n  = allowed: 1 to 2, or \"max\""
    );
    assert_eq!(diagnostics[0].key_path, "gpu[0].shard.count");
    assert_eq!(
        diagnostics[0].allowed.as_deref(),
        Some("1 to 2, or \"max\"")
    );
    let json = serde_json::to_value(&diagnostics[0]).unwrap();
    assert_eq!(json["line"], 7);
    assert_eq!(json["severity"], "error");
}

#[test]
fn every_diagnostic_of_a_file_is_reported_not_just_the_first() {
    let file = data("bad").join("wrong-types.toml");
    let diagnostics = parse_file(&file).unwrap_err();
    assert!(
        diagnostics.len() >= 5,
        "{}",
        render_diagnostics(&diagnostics)
    );
    let lines: Vec<usize> = diagnostics.iter().map(|d| d.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "diagnostics come in file order");
}

#[test]
fn the_first_matching_rule_governs_and_companions_follow_their_gpu() {
    let text = r#"
version = 1

[[gpu]]
name = "nvidia-cards"
match = { vendor = 0x10de }
role = "passthrough"

[[gpu]]
name = "the-3090"
match = { name = "*RTX 3090*" }
role = "passthrough"
"#;
    let policy = Policy::parse(text, "p.toml").unwrap();
    let inv = hosts::workstation();
    let none = Default::default();
    let a = policy.assign(&inv, &none);
    let dgpu = &a[&hosts::addr(hosts::DGPU)];
    assert_eq!(dgpu.rule_name.as_deref(), Some("nvidia-cards"));
    assert!(!dgpu.in_conflict(), "rules that agree do not conflict");
    assert_eq!(a[&hosts::addr(hosts::IGPU)].role, Role::Unmanaged);
    let audio = policy
        .assignment_for(&inv, &none, hosts::addr(hosts::DGPU_AUDIO))
        .unwrap();
    assert_eq!(audio.gpu, hosts::addr(hosts::DGPU));
    assert_eq!(audio.role, Role::Passthrough);
    assert!(policy.validate_against(&inv).is_empty());
}

#[test]
fn matching_by_driver_uses_the_driver_gpuvirt_found() {
    let text = "version = 1\n[[gpu]]\nname = \"nouveau-cards\"\nmatch = { driver = \"nouveau\" }\nrole = \"passthrough\"\n";
    let policy = Policy::parse(text, "p.toml").unwrap();
    let mut inv = hosts::workstation();
    let dgpu = hosts::addr(hosts::DGPU);
    inv.functions.get_mut(&dgpu).unwrap().driver = Some("vfio-pci".into());
    hosts::finish(&mut inv);
    let mut state = PlanState::default();
    assert_eq!(
        policy.assign(&inv, &state.original_drivers)[&dgpu].role,
        Role::Unmanaged
    );
    state.original_drivers.insert(dgpu, Some("nouveau".into()));
    assert_eq!(
        policy.assign(&inv, &state.original_drivers)[&dgpu].role,
        Role::Passthrough
    );
    // …so the rebound card still matches and the plan for it stays quiet.
    inv.functions
        .get_mut(&hosts::addr(hosts::DGPU_AUDIO))
        .unwrap()
        .driver = Some("vfio-pci".into());
    inv.modules.vfio_pci = true;
    hosts::finish(&mut inv);
    assert!(plan(&policy, &inv, &state).is_empty());
}

#[test]
fn an_on_demand_card_is_in_policy_on_its_host_driver_and_on_vfio_pci() {
    let text = "version = 1\n[[gpu]]\nname = \"vm-card\"\nmatch = { address = \"0000:01:00.0\" }\nrole = \"passthrough\"\non_demand = true\n";
    let policy = Policy::parse(text, "p.toml").unwrap();
    assert_eq!(
        policy.rules[0].settings,
        RoleSettings::Passthrough {
            early: false,
            early_method: EarlyMethod::DriverOverride,
            on_demand: true,
        }
    );
    let mut inv = hosts::workstation();
    let dgpu = hosts::addr(hosts::DGPU);
    let mut state = PlanState::default();
    // On its host driver: nothing to bind (without on_demand the plan binds the slot).
    let planned = plan(&policy, &inv, &state);
    assert!(planned.is_empty(), "{}", planned.render());
    let eager = Policy::parse(&text.replace("on_demand = true\n", ""), "p.toml").unwrap();
    assert!(!plan(&eager, &inv, &state).actions.is_empty());
    // Assigned by hand (the hook's AssignPassthrough): nothing to return either.
    for f in [dgpu, hosts::addr(hosts::DGPU_AUDIO)] {
        let original = inv.functions[&f].driver.clone();
        state.original_drivers.insert(f, original);
        inv.functions.get_mut(&f).unwrap().driver = Some("vfio-pci".into());
    }
    inv.modules.vfio_pci = true;
    hosts::finish(&mut inv);
    let planned = plan(&policy, &inv, &state);
    assert!(planned.is_empty(), "{}", planned.render());
    assert!(
        gpuvirt_core::plan::boot_wants(&policy, &inv, &state.original_drivers)
            .early
            .is_empty()
    );
}
