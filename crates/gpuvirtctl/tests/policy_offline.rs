//! `gpuvirtctl policy check` with no daemon reachable (issue 18 point 11): no bus at all, a bus
//! where nobody owns org.gpuvirt.GpuVirt1, or `--offline`. The file is checked offline (syntax,
//! schema, every rule that needs no host) with the diagnostics the daemon gives, word for word,
//! and one line says the host-dependent checks were not made. With a daemon (FUSE tests), the
//! offline output is compared with the daemon's for the same files.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// The start of the line that says what an offline check did not do; the reason follows.
const NOTE: &str = "note: checked offline: syntax, schema and host-independent rules only; \
                    the host-dependent checks (which GPUs each rule matches, what the host \
                    offers) were not made: ";

fn golden_dir(fixture: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(fixture)
}

/// The ways of having no daemon to ask, and the reason each gives.
#[derive(Debug, Clone, Copy)]
enum NoDaemon {
    /// `--offline`.
    Flag,
    /// A bus nobody listens on, given with `--bus-address`.
    NoBus,
    /// The system bus (no flag), pointed at nothing through DBUS_SYSTEM_BUS_ADDRESS.
    NoSystemBus,
    /// A running bus where nobody owns the name.
    NotRunning,
}

/// Runs `gpuvirtctl ARGS` in `dir` with no daemon to ask, the way `how` says.
fn offline(how: NoDaemon, dir: &Path, args: &[&str]) -> (Output, &'static str) {
    let mut cmd = Command::new(gpuvirtctl());
    cmd.current_dir(dir).env_remove("NO_COLOR");
    let nowhere = tempfile::tempdir().unwrap();
    let no_bus = format!("unix:path={}/no-bus", nowhere.path().display());
    let bus = matches!(how, NoDaemon::NotRunning).then(Bus::start);
    let mut args = args.to_vec();
    let reason = match how {
        NoDaemon::Flag => {
            args.push("--offline");
            "--offline was given"
        }
        NoDaemon::NoBus => {
            cmd.args(["--bus-address", &no_bus]);
            "cannot connect to the bus at unix:path="
        }
        NoDaemon::NoSystemBus => {
            cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &no_bus);
            "cannot connect to the system bus"
        }
        NoDaemon::NotRunning => {
            let address = &bus.as_ref().unwrap().address;
            cmd.args(["--bus-address", address]);
            "gpuvirtd is not running on the bus at unix:"
        }
    };
    let out = cmd.args(&args).output().unwrap();
    drop(bus);
    (out, reason)
}

const ALL: [NoDaemon; 4] = [
    NoDaemon::Flag,
    NoDaemon::NoBus,
    NoDaemon::NoSystemBus,
    NoDaemon::NotRunning,
];

/// Splits an offline check's stdout into what precedes the note and the note's reason.
fn split_note<'a>(text: &'a str, what: &str) -> (&'a str, &'a str) {
    let at = text
        .find(NOTE)
        .unwrap_or_else(|| panic!("{what}: no offline note in:\n{text}"));
    let reason = text[at + NOTE.len()..].lines().next().unwrap();
    (&text[..at], reason)
}

#[test]
fn a_good_policy_passes_offline_saying_what_was_not_checked() {
    let dir = golden_dir("runbook");
    for how in ALL {
        let (out, reason) = offline(how, &dir, &["policy", "check", "policy.toml"]);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{how:?}: {text}{}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{how:?}: {}", stderr(&out));
        // The daemon's one warning ("console" matches no GPU on this host) is host-dependent.
        let (before, said) = split_note(&text, &format!("{how:?}"));
        assert_eq!(before, "", "{how:?}");
        assert!(said.starts_with(reason), "{how:?}: {said}");
        assert!(
            text.ends_with(&format!("{said}\npolicy.toml: valid (0 warning(s))\n")),
            "{how:?}: {text}"
        );
        assert_eq!(text.lines().count(), 2, "{how:?}: {text}");
    }
}

/// The daemon's golden output for bad-policy.toml (golden.rs checks it against a running
/// gpuvirtd) is what the offline check prints, followed by the note.
#[test]
fn the_runbook_bad_policy_gives_the_daemons_golden_diagnostics_offline() {
    let dir = golden_dir("runbook");
    let daemon = std::fs::read_to_string(dir.join("policy-check-bad.txt")).unwrap();
    for how in ALL {
        let (out, reason) = offline(how, &dir, &["policy", "check", "bad-policy.toml"]);
        let text = stdout(&out);
        assert_eq!(code(&out), 1, "{how:?}: {text}{}", stderr(&out));
        let (before, said) = split_note(&text, &format!("{how:?}"));
        assert_eq!(before, daemon, "{how:?}");
        assert!(said.starts_with(reason), "{how:?}: {said}");
        assert_eq!(
            stderr(&out),
            "gpuvirtctl: error: bad-policy.toml: 1 error(s), 0 warning(s)\n",
            "{how:?}"
        );
    }
}

/// Broken policies, one mistake each, and what the daemon says of them (each `policy.toml`
/// of the case's directory).
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "syntax",
        "version = 1\n[[gpu]\nname = \"vdi\"\n",
        "policy.toml:2:6: error: the file is not valid TOML: invalid table header\nexpected `.`, `]]`\n  |\n2 | [[gpu]\n  |      ^\n\n",
    ),
    (
        "unknown-key",
        "version = 1\nenforcment = \"monitor\"\n",
        "policy.toml:2:1: error: unknown key `enforcment` in the policy; did you mean `enforcement`?\n  |\n2 | enforcment = \"monitor\"\n  | ^^^^^^^^^^\n  = allowed: version, default_role, enforcement, host, gpu\n\n",
    ),
    (
        "wrong-type",
        "version = \"1\"\n[host]\nblacklist = \"nouveau\"\n",
        "policy.toml:1:11: error: `version` must be an integer, found a string (\"1\")\n  |\n1 | version = \"1\"\n  |           ^^^\n  = allowed: 1\n\npolicy.toml:3:13: error: `host.blacklist` must be an array of module names, found a string (\"nouveau\")\n  |\n3 | blacklist = \"nouveau\"\n  |             ^^^^^^^^^\n  = allowed: blacklist = [\"nouveau\"]\n\n",
    ),
    (
        "rules",
        "version = 1\n\n[[gpu]]\nname = \"vdi\"\nmatch = { address = \"0000:41:00.0\" }\nrole = \"shard\"\nearly = true\nshard = { type = \"V100-8C\", count = 2 }\n\n[[gpu]]\nname = \"vdi\"\nmatch = { vendor = \"10de\" }\nrole = \"host\"\n",
        "policy.toml:7:9: error: `early` only applies to role = \"passthrough\", not \"shard\"\n  |\n7 | early = true\n  |         ^^^^\n  = allowed: for role \"shard\": name, match, role, shard, owner, resource\n\npolicy.toml:11:8: error: duplicate rule name \"vdi\": already used by the rule on line 4\n   |\n11 | name = \"vdi\"\n   |        ^^^^^\n   = allowed: a name used by no other rule\n\n",
    ),
];

/// Writes each broken case as `<dir>/<case>/policy.toml`.
fn write_broken(dir: &Path) {
    for (name, text, _) in BROKEN {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("policy.toml"), text).unwrap();
    }
}

fn errors_in(diagnostics: &str) -> usize {
    diagnostics
        .lines()
        .filter(|l| l.starts_with("policy.toml:") && l.contains(": error: "))
        .count()
}

#[test]
fn broken_policies_give_file_line_column_diagnostics_offline() {
    let dir = tempfile::tempdir().unwrap();
    write_broken(dir.path());
    for (name, _, expected) in BROKEN {
        for how in ALL {
            let (out, reason) = offline(
                how,
                &dir.path().join(name),
                &["policy", "check", "policy.toml"],
            );
            let text = stdout(&out);
            assert_eq!(code(&out), 1, "{name} {how:?}: {text}{}", stderr(&out));
            let (before, said) = split_note(&text, name);
            assert_eq!(before, *expected, "{name} {how:?}");
            assert!(said.starts_with(reason), "{name} {how:?}: {said}");
            assert_eq!(
                stderr(&out),
                format!(
                    "gpuvirtctl: error: policy.toml: {} error(s), 0 warning(s)\n",
                    errors_in(expected)
                ),
                "{name} {how:?}"
            );
        }
    }
}

/// With gpuvirtd running, `policy check` is the full check as before (no note), its
/// diagnostics are what the offline check prints for the same files, and `--offline` still
/// checks offline.
#[test]
fn offline_diagnostics_are_the_daemons() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let dir = tempfile::tempdir().unwrap();
    write_broken(dir.path());
    for (name, _, expected) in BROKEN {
        let case = dir.path().join(name);
        let online = ctl_in(&bus, &case, &["policy", "check", "policy.toml"]);
        assert_eq!(code(&online), 1, "{name}: {}", stderr(&online));
        assert_eq!(
            stdout(&online),
            *expected,
            "{name}: the daemon's diagnostics"
        );
        let forced = ctl_in(
            &bus,
            &case,
            &["policy", "check", "--offline", "policy.toml"],
        );
        let (out, _) = offline(
            NoDaemon::NotRunning,
            &case,
            &["policy", "check", "policy.toml"],
        );
        for run in [&forced, &out] {
            let text = stdout(run);
            let (before, _) = split_note(&text, name);
            assert_eq!(before, stdout(&online), "{name}");
            assert_eq!(stderr(run), stderr(&online), "{name}");
            assert_eq!(code(run), code(&online), "{name}");
        }
    }
    // A good policy: the daemon adds its host-dependent warning and no note.
    let runbook = golden_dir("runbook");
    let online = ctl_in(&bus, &runbook, &["policy", "check", "policy.toml"]);
    assert_eq!(code(&online), 0, "{}", stderr(&online));
    assert_eq!(
        stdout(&online),
        std::fs::read_to_string(runbook.join("policy-check.txt")).unwrap()
    );
    assert!(!stdout(&online).contains("note:"));
    let forced = ctl_in(
        &bus,
        &runbook,
        &["policy", "check", "--offline", "policy.toml"],
    );
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    let text = stdout(&forced);
    let (_, said) = split_note(&text, "--offline with a daemon");
    assert_eq!(said, "--offline was given");
}

/// Without FILE and without a daemon to say where its policy is, the default path is checked.
#[test]
fn without_a_file_the_default_policy_path_is_checked_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = offline(NoDaemon::Flag, dir.path(), &["policy", "check"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("/etc/gpuvirt/policy.toml"), "{all}");
    assert_ne!(code(&out), 4, "{all}");
}

/// `--offline` is `policy check`'s: every other command needs the daemon.
#[test]
fn offline_is_refused_where_there_is_nothing_to_check_offline() {
    let out = Command::new(gpuvirtctl())
        .args(["--offline", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
