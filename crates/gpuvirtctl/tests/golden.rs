//! Golden files: every command's human and JSON output on simulated hosts (the runbook host and
//! two multi-GPU ones), compared byte for byte with `tests/golden/<fixture>/<stem>.{txt,json}`.
//! `GPUVIRT_BLESS=1` rewrites them.
//!
//! Nothing is masked: the output formats hold no pids, timings or temp paths, so any
//! difference is a change in what a user sees and must be reviewed (and blessed) on purpose.
//! The one substitution is `version`'s: its golden file says `@VERSION@` where the build's own
//! version (this crate's, which gpuvirtd shares) must appear.
//!
//! A fixture directory may hold `policy.toml` (given to gpuvirtd; `enforcement = "monitor"`
//! so the host is left as booted) and `bad-policy.toml`; then `policy plan` and `policy check`
//! of both are golden too. `monitor` has its own capture at the end.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const VERSION_PLACEHOLDER: &str = "@VERSION@";

/// One simulated host and the objects its show/xml/qemu-args goldens are about.
struct Host<'a> {
    fixture: &'a str,
    /// A GPU's PCI address.
    gpu: &'a str,
    /// An mdev's UUID, where the host has one.
    mdev: Option<&'a str>,
    /// `doctor`'s exit code on this host (1: something blocks passthrough).
    doctor_exit: i32,
    /// This host's own xml/qemu-args cases: (stem, arguments).
    render: &'a [(&'a str, &'a [&'a str])],
}

/// One golden comparison: `gpuvirtctl ARGS` (and `ARGS --json` when `json`) must exit with
/// `exit` and print `<stem>.txt` (`<stem>.json`).
struct Case {
    stem: String,
    args: Vec<String>,
    json: bool,
    /// The exit code it must have; `None`: whichever, and the golden holds it (`exit N` and
    /// stderr when not 0): the graphics cases run on every host, and some hosts refuse them.
    exit: Option<i32>,
}

fn case(stem: &str, args: &[&str], json: bool, exit: i32) -> Case {
    Case {
        stem: stem.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        json,
        exit: Some(exit),
    }
}

/// A case whose outcome, success or refusal, is itself the golden.
fn outcome(stem: &str, args: &[&str]) -> Case {
    Case {
        exit: None,
        ..case(stem, args, false, 0)
    }
}

/// The runbook's Graphics paths on `gpu` (and `mdev`), on every host: what each host offers or
/// why it refuses (no render node on a card bound to nvidia or vfio-pci, no VGA function).
fn graphics_cases(gpu: &str, mdev: Option<&str>) -> Vec<Case> {
    let mut out = Vec::new();
    for verb in ["xml", "qemu-args"] {
        out.push(outcome(
            &format!("{verb}-virgl"),
            &[verb, gpu, "--graphics", "virgl"],
        ));
        out.push(outcome(
            &format!("{verb}-primary"),
            &[verb, gpu, "--graphics", "primary"],
        ));
        if let Some(uuid) = mdev {
            out.push(outcome(
                &format!("{verb}-mdev-vgpu-display"),
                &[verb, uuid, "--graphics", "vgpu-display"],
            ));
            out.push(outcome(
                &format!("{verb}-mdev-vgpu-display-vnc"),
                &[
                    verb,
                    uuid,
                    "--graphics",
                    "vgpu-display",
                    "--display-backend",
                    "vnc",
                ],
            ));
        }
    }
    out
}

fn cases(host: &Host, dir: &Path) -> Vec<Case> {
    let mut out = vec![
        case("list", &["list"], true, 0),
        case("groups", &["groups"], true, 0),
        case("types", &["types"], true, 0),
        case("mdevs", &["mdevs"], true, 0),
        case("mdev-list", &["mdev", "list", "--table"], true, 0),
        case("mdev-list-mdevctl", &["mdev", "list"], false, 0),
        case("tree", &["tree"], true, 0),
        case("version", &["version"], true, 0),
        case("doctor", &["doctor"], true, host.doctor_exit),
        case("show", &["show", host.gpu], true, 0),
        case("xml", &["xml", host.gpu], false, 0),
        case("qemu-args", &["qemu-args", host.gpu], false, 0),
        // Every card placed in a guest slot of the user's: bus 2's root port, slot 0.
        case(
            "xml-guest-address",
            &["xml", host.gpu, "--guest-address", "02:00"],
            false,
            0,
        ),
        case(
            "qemu-args-guest-address",
            &["qemu-args", host.gpu, "--guest-address", "02:00"],
            false,
            0,
        ),
    ];
    if let Some(uuid) = host.mdev {
        out.push(case("show-mdev", &["show", uuid], true, 0));
        out.push(case("xml-mdev", &["xml", uuid], false, 0));
        out.push(case("qemu-args-mdev", &["qemu-args", uuid], false, 0));
        // The display set either way over the type's default.
        for display in ["on", "off"] {
            for (verb, stem) in [("xml", "xml"), ("qemu-args", "qemu-args")] {
                out.push(case(
                    &format!("{stem}-mdev-display-{display}"),
                    &[verb, uuid, "--display", display],
                    false,
                    0,
                ));
            }
        }
    }
    out.extend(graphics_cases(host.gpu, host.mdev));
    for (stem, args) in host.render {
        out.push(outcome(stem, args));
    }
    if dir.join("policy.toml").exists() {
        out.push(case("policy-plan", &["policy", "plan"], true, 0));
        out.push(case(
            "policy-check",
            &["policy", "check", "policy.toml"],
            false,
            0,
        ));
    }
    if dir.join("bad-policy.toml").exists() {
        out.push(case(
            "policy-check-bad",
            &["policy", "check", "bad-policy.toml"],
            false,
            1,
        ));
    }
    out
}

fn golden_dir(fixture: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(fixture)
}

fn blessing() -> bool {
    std::env::var_os("GPUVIRT_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compares `actual` with the golden `file` (or writes it when blessing); a difference is
/// pushed onto `failures`.
fn compare(file: &Path, what: &str, actual: &str, failures: &mut Vec<String>) {
    let version = env!("CARGO_PKG_VERSION");
    let versioned = file
        .file_stem()
        .is_some_and(|s| s.to_string_lossy() == "version");
    if blessing() {
        let text = if versioned {
            actual.replace(version, VERSION_PLACEHOLDER)
        } else {
            actual.to_owned()
        };
        std::fs::write(file, text).unwrap();
        return;
    }
    match std::fs::read_to_string(file) {
        Ok(expected) => {
            let expected = if versioned {
                expected.replace(VERSION_PLACEHOLDER, version)
            } else {
                expected
            };
            if expected != actual {
                failures.push(format!(
                    "{what} differs from {}\n--- expected\n{expected}--- actual\n{actual}",
                    file.display()
                ));
            }
        }
        Err(e) => failures.push(format!("cannot read {}: {e}", file.display())),
    }
}

/// Runs every case in both formats and compares (or, blessing, writes) the goldens.
fn check_goldens(bus: &Bus, host: &Host) {
    let dir = golden_dir(host.fixture);
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for case in cases(host, &dir) {
        for json in [false, true] {
            if json && !case.json {
                continue;
            }
            let mut argv: Vec<&str> = case.args.iter().map(String::as_str).collect();
            if json {
                argv.push("--json");
            }
            // In the fixture's directory: `policy check FILE` prints the path it was given.
            let out = ctl_in(bus, &dir, &argv);
            let exit = case.exit.unwrap_or(code(&out));
            assert_eq!(
                code(&out),
                exit,
                "gpuvirtctl {argv:?}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            if exit != 0 {
                // Failing commands say why on stderr, in words.
                assert!(
                    stderr(&out).starts_with("gpuvirtctl: error: "),
                    "{argv:?}: {}",
                    stderr(&out)
                );
            }
            let actual = if case.exit.is_none() && exit != 0 {
                format!("exit {exit}\n{}{}", stdout(&out), stderr(&out))
            } else {
                stdout(&out)
            };
            if json {
                // Valid JSON, not just text that looks like it.
                serde_json::from_str::<serde_json::Value>(&actual)
                    .unwrap_or_else(|e| panic!("gpuvirtctl {argv:?} printed bad JSON: {e}"));
            }
            let file = dir.join(format!(
                "{}.{}",
                case.stem,
                if json { "json" } else { "txt" }
            ));
            compare(
                &file,
                &format!("gpuvirtctl {}", argv.join(" ")),
                &actual,
                &mut failures,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with GPUVIRT_BLESS=1 to accept the new output)",
        failures.join("\n")
    );
}

/// Boots `host`'s fixture (after `prepare`), starts gpuvirtd with the fixture's policy if it
/// has one, and checks every golden.
fn run_fixture(host: &Host, prepare: impl FnOnce(&SimHost)) {
    if !fuse_available() {
        return;
    }
    let sim = SimHost::boot(host.fixture);
    prepare(&sim);
    let bus = Bus::start();
    let policy = golden_dir(host.fixture).join("policy.toml");
    // Following events, as in production (the daemon's policy and render paths need them).
    let _daemon = Daemon::start_with_policy(
        &bus,
        &sim,
        true,
        policy.exists().then_some(policy.as_path()),
    );
    check_goldens(&bus, host);
}

#[test]
fn runbook_host() {
    run_fixture(
        &Host {
            fixture: "runbook",
            gpu: "0000:41:00.0",
            mdev: Some(UUID),
            doctor_exit: 1,
            render: &[],
        },
        |sim| {
            sim.write(
                "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
                UUID,
            )
            .unwrap();
        },
    );
}

#[test]
fn mdev_server_8gpu() {
    run_fixture(
        &Host {
            fixture: "mdev-server-8gpu",
            gpu: "0000:21:00.0",
            mdev: Some("0b3510b0-b46e-41da-b170-17a6205738d1"),
            doctor_exit: 0,
            render: &[
                // A Q profile displays by default; the runbook's ramfb form for its boot screen.
                (
                    "qemu-args-mdev-ramfb",
                    &[
                        "qemu-args",
                        "0b3510b0-b46e-41da-b170-17a6205738d1",
                        "--ramfb",
                    ],
                ),
                (
                    "xml-mdev-ramfb",
                    &["xml", "0b3510b0-b46e-41da-b170-17a6205738d1", "--ramfb"],
                ),
            ],
        },
        |_| {},
    );
}

#[test]
fn workstation() {
    run_fixture(
        &Host {
            fixture: "workstation",
            gpu: "0000:01:00.0",
            mdev: None,
            doctor_exit: 1,
            render: &[
                // The runbook's whole-card line: GPU + HDMI audio on one guest slot of the
                // VM's own root port, multifunction=on and x-vga=on on function 0.
                (
                    "qemu-args-runbook",
                    &[
                        "qemu-args",
                        "0000:01:00.1",
                        "--qemu-bus",
                        "rp1",
                        "--guest-bus",
                        "1",
                        "--x-vga",
                    ],
                ),
                // On q35's root bus at slot 0x10, libvirt managing the binding.
                (
                    "xml-root-bus-managed",
                    &[
                        "xml",
                        "0000:01:00.0",
                        "--guest-address",
                        "00:10",
                        "--managed",
                        "yes",
                    ],
                ),
                (
                    "qemu-args-root-bus",
                    &["qemu-args", "0000:01:00.0", "--guest-address", "00:10"],
                ),
                // virgl on the iGPU, each back end: its by-path render node where one is named.
                (
                    "qemu-args-virgl-igpu-egl-headless",
                    &[
                        "qemu-args",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "egl-headless",
                    ],
                ),
                (
                    "xml-virgl-igpu-egl-headless",
                    &[
                        "xml",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "egl-headless",
                    ],
                ),
                (
                    "qemu-args-virgl-igpu-spice",
                    &[
                        "qemu-args",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "spice",
                    ],
                ),
                (
                    "xml-virgl-igpu-spice",
                    &[
                        "xml",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "spice",
                    ],
                ),
                (
                    "qemu-args-virgl-igpu-vnc-render-node",
                    &[
                        "qemu-args",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "vnc",
                        "--render-node",
                        "/dev/dri/renderD129",
                    ],
                ),
                (
                    "xml-virgl-igpu-vnc-render-node",
                    &[
                        "xml",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--display-backend",
                        "vnc",
                        "--render-node",
                        "/dev/dri/renderD129",
                    ],
                ),
                // Refused before the device is looked at: gtk takes no render node.
                (
                    "qemu-args-virgl-gtk-render-node",
                    &[
                        "qemu-args",
                        "0000:00:02.0",
                        "--graphics",
                        "virgl",
                        "--render-node",
                        "/dev/dri/renderD128",
                    ],
                ),
            ],
        },
        |_| {},
    );
}

/// `monitor`, bounded: from the subscription banner until the mdev created and removed through
/// sysfs is gone again, each form compared with `tests/golden/runbook/monitor.{txt,json}`
/// (each step's lines sorted under a `# after STEP` header).
#[test]
fn monitor_capture_runbook() {
    if !fuse_available() {
        return;
    }
    let sim = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &sim, true);
    let dir = golden_dir("runbook");
    let mut failures = Vec::new();
    for json in [false, true] {
        let mut child = Command::new(gpuvirtctl())
            .args(["--bus-address", &bus.address, "monitor"])
            .args(json.then_some("--json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The banner on stderr comes after the subscription: from here nothing is missed.
        let mut banner = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        assert!(banner.starts_with("Monitoring gpuvirtd"), "{banner}");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let object = format!("/org/gpuvirt/GpuVirt1/mdevs/{}", UUID.replace('-', "_"));
        let mut actual = String::new();
        for (step, file, marker) in [
            (
                "create",
                "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
                if json { "\"added\"" } else { "added" },
            ),
            (
                "remove",
                &*format!("sys/bus/mdev/devices/{UUID}/remove"),
                if json { "\"removed\"" } else { "removed" },
            ),
        ] {
            sim.write(file, if step == "create" { UUID } else { "1" })
                .unwrap();
            let mut seen = Vec::new();
            loop {
                let Ok(line) = rx.recv_timeout(Duration::from_secs(15)) else {
                    panic!("monitor: no {step} line for {object}: {seen:#?}");
                };
                let done = line.contains(&object) && line.contains(marker);
                seen.push(line);
                if done {
                    break;
                }
            }
            // The rest of this step's changes, until the daemon has been quiet a while, so
            // no line of one step lands in the next.
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.push(line);
            }
            // Within a step the daemon may split its signals over one or two batches (the
            // mdev and its IOMMU group are separate uevents), so their order is not part of
            // the contract; each line's content is.
            seen.sort();
            actual.push_str(&format!("# after {step}\n"));
            for line in seen {
                actual.push_str(&line);
                actual.push('\n');
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let file = dir.join(format!("monitor.{}", if json { "json" } else { "txt" }));
        compare(&file, "gpuvirtctl monitor", &actual, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with GPUVIRT_BLESS=1 to accept the new output)",
        failures.join("\n")
    );
}
