//! The error paths a user hits, through the real binary: daemon absent, bus unreachable,
//! access denied for an unprivileged uid, a bad address, an unknown UUID. Each checks the exit
//! code (docs/cli.md) and that the message says what happened and what to do, never a raw
//! zbus error. Also `monitor`, whose output is live and so has no golden file.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";

/// No zbus Debug/Display leaking through: these are the shapes its errors print as.
fn assert_no_raw_zbus(text: &str) {
    for raw in ["MethodError(", "FDO(", "InputOutput(", "zbus::", "Os {"] {
        assert!(!text.contains(raw), "raw zbus error in: {text}");
    }
}

#[test]
fn daemon_absent_is_exit_4_and_says_how_to_start_it() {
    let bus = Bus::start();
    for args in [
        &["list"][..],
        &["tree", "--json"],
        &["version"],
        &["monitor"],
        // The other call paths: Manager methods, mutators, policy, rendering.
        &["show", "0000:41:00.0"],
        &["mdev", "list"],
        &["doctor"],
        &["xml", "0000:41:00.0"],
        &["policy", "plan"],
        &["--no-ask-password", "passthrough", "0000:41:00.0"],
        &["--no-ask-password", "mdev", "remove", UUID],
        &["--no-ask-password", "policy", "reload"],
    ] {
        let out = ctl(&bus, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 4, "{args:?}: {err}");
        assert!(err.contains("gpuvirtd is not running"), "{err}");
        assert!(err.contains("systemctl start gpuvirtd"), "{err}");
        assert!(stdout(&out).is_empty(), "{args:?} printed {}", stdout(&out));
        assert_no_raw_zbus(&err);
    }
}

#[test]
fn unreachable_bus_is_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}/no-bus", dir.path().display());
    let out = Command::new(gpuvirtctl())
        .args(["--bus-address", &address, "list"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{err}");
    assert!(err.contains("cannot connect to the bus at"), "{err}");
}

#[test]
fn usage_errors_are_exit_2() {
    let out = Command::new(gpuvirtctl()).args(["show"]).output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn bad_address_names_the_argument_and_unknown_devices_say_where_to_look() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    // Following events: with `--events none` gpuvirtd answers RenderHostdev and the mutators
    // "gpuvirtd is shutting down" (a daemon bug, seen while writing this test).
    let _daemon = Daemon::start(&bus, &host, true);

    let out = ctl(&bus, &["show", "nonsense"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("an argument is not valid"), "{err}");
    assert!(err.contains("argument 'address'"), "{err}");
    assert!(err.contains("InvalidArgs"), "{err}");
    assert_no_raw_zbus(&err);

    let out = ctl(&bus, &["show", "0000:99:00.0"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("no such device"), "{err}");
    assert!(err.contains("NoSuchDevice"), "{err}");
    assert!(err.contains("gpuvirtctl list"), "{err}");

    let out = ctl(&bus, &["show", UUID]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("no such device"), "{err}");
    assert!(err.contains(UUID), "{err}");
    assert!(err.contains("NoSuchDevice"), "{err}");
    assert!(stdout(&out).is_empty());
    assert_no_raw_zbus(&err);

    // The same through the other paths that take an address or a UUID.
    for args in [
        &["xml", UUID][..],
        &["qemu-args", "0000:99:00.0"],
        &["mdev", "remove", UUID],
        &["passthrough", "0000:99:00.0", "--dry-run"],
    ] {
        let out = ctl(&bus, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert!(err.contains("no such device"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert_no_raw_zbus(&err);
    }
    // Something UUID-shaped that is not a UUID is the argument's fault, not a missing device.
    let out = ctl(&bus, &["show", "not-a-uuid"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("an argument is not valid"), "{err}");
    assert!(err.contains("InvalidArgs"), "{err}");
    assert_no_raw_zbus(&err);
}

#[test]
fn monitor_prints_one_line_per_change() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
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
        let uuid = if json {
            "bb618089-8b16-4d01-a136-25a0f3c73123"
        } else {
            UUID
        };
        host.write(
            "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
            uuid,
        )
        .unwrap();
        let object = format!("/org/gpuvirt/GpuVirt1/mdevs/{}", uuid.replace('-', "_"));
        let mut seen = Vec::new();
        let found = loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(15)) else {
                break None;
            };
            seen.push(line.clone());
            if line.contains(&object) {
                break Some(line);
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let line = found.unwrap_or_else(|| panic!("no line for {object}: {seen:#?}"));
        if json {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["event"], "added", "{line}");
            assert_eq!(v["path"], object.as_str());
            assert!(
                v["interfaces"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!("org.gpuvirt.GpuVirt1.Mdev")),
                "{line}"
            );
        } else {
            assert_eq!(line, format!("added    {object}  Mdev"), "{seen:#?}");
        }
    }
}

/// An unprivileged uid may read but not change anything: with no polkit on the bus the daemon
/// fails closed, and gpuvirtctl says "not allowed" with exit 3.
// ReloadPolicy once slipped past the bouncer (auth.rs listed it, dbus.rs never asked): this
// test is what caught it.
#[test]
fn unprivileged_mutator_is_denied_with_exit_3() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, false);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(gpuvirtctl())
            .args(["--bus-address", &bus.address])
            .args(args)
            .output()
            .expect("setpriv must be installed (package util-linux)")
    };
    // Reads are open to everyone: the bus and the binary are reachable for this uid.
    let out = as_nobody(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = as_nobody(&["policy", "reload"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("you are not allowed to do this"), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(err.contains("run it as root"), "{err}");
    assert_no_raw_zbus(&err);
}
