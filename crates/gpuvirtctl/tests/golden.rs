//! Golden files: every read command's human and JSON output on simulated hosts, compared byte
//! for byte with `tests/golden/<fixture>/<command>.{txt,json}`. `GPUVIRT_BLESS=1` rewrites them.
//!
//! Nothing is masked: the output formats hold no pids, timings or temp paths, so any
//! difference is a change in what a user sees and must be reviewed (and blessed) on purpose.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::path::PathBuf;

use support::*;

const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";

/// The read commands: (golden file stem, arguments before `--json`). `show` runs for each
/// `(stem, address or UUID)` in `shows`.
fn read_commands(shows: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let plain = |c: &str| (c.to_owned(), vec![c.to_owned()]);
    let mut out = vec![
        plain("list"),
        plain("groups"),
        plain("types"),
        plain("mdevs"),
        plain("tree"),
    ];
    for (stem, target) in shows {
        out.push((
            (*stem).to_owned(),
            vec!["show".to_owned(), (*target).to_owned()],
        ));
    }
    out
}

fn golden_dir(fixture: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(fixture)
}

/// Runs every read command in both formats and compares (or, blessing, writes) the goldens.
fn check_goldens(bus: &Bus, fixture: &str, shows: &[(&str, &str)]) {
    let bless = std::env::var_os("GPUVIRT_BLESS").is_some_and(|v| !v.is_empty() && v != "0");
    let dir = golden_dir(fixture);
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (stem, args) in read_commands(shows) {
        for json in [false, true] {
            let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
            if json {
                argv.push("--json");
            }
            let out = ctl(bus, &argv);
            assert_eq!(code(&out), 0, "gpuvirtctl {argv:?}: {}", stderr(&out));
            let actual = stdout(&out);
            if json {
                // Valid JSON, not just text that looks like it.
                serde_json::from_str::<serde_json::Value>(&actual)
                    .unwrap_or_else(|e| panic!("gpuvirtctl {argv:?} printed bad JSON: {e}"));
            }
            let file = dir.join(format!("{stem}.{}", if json { "json" } else { "txt" }));
            if bless {
                std::fs::write(&file, &actual).unwrap();
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(expected) if expected == actual => {}
                Ok(expected) => failures.push(format!(
                    "gpuvirtctl {} differs from {}\n--- expected\n{expected}--- actual\n{actual}",
                    argv.join(" "),
                    file.display()
                )),
                Err(e) => failures.push(format!("cannot read {}: {e}", file.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with GPUVIRT_BLESS=1 to accept the new output)",
        failures.join("\n")
    );
}

#[test]
fn runbook_host() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    host.write(
        "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
        UUID,
    )
    .unwrap();
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, false);
    check_goldens(
        &bus,
        "runbook",
        &[("show", "0000:41:00.0"), ("show-mdev", UUID)],
    );
}

#[test]
fn mdev_server_8gpu() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("mdev-server-8gpu");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, false);
    check_goldens(&bus, "mdev-server-8gpu", &[("show", "0000:21:00.0")]);
}

#[test]
fn workstation() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, false);
    check_goldens(&bus, "workstation", &[("show", "0000:01:00.0")]);
}

/// `version` reports both sides; not a golden file because it changes with every release.
#[test]
fn version_names_client_and_daemon() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, false);
    let out = ctl(&bus, &["version", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["client"], env!("CARGO_PKG_VERSION"));
    assert!(!v["daemon"].as_str().unwrap().is_empty(), "{v}");
    let out = ctl(&bus, &["version"]);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "client:  {}\ndaemon:  ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}
