//! gpuvirtctl against gpuvirtd on a private bus; and its message when the daemon is absent.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";

fn ctl(bus: &Bus, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gpuvirtctl())
        .args(["--bus-address", &bus.address])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(bus: &Bus, args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = ctl(bus, args);
    assert!(ok, "gpuvirtctl {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_show_the_runbook_host() {
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
    let _daemon = Daemon::start(&bus, host.root(), "none", host.dir.path()).await;

    let list = json(&bus, &["list", "--json"]);
    let gpus = list.as_array().unwrap();
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0]["pci_address"], "0000:41:00.0");
    assert_eq!(gpus[0]["vendor_id"], "10de");
    assert_eq!(gpus[0]["device_id"], "1db4");
    assert_eq!(gpus[0]["driver"], "nvidia");
    assert_eq!(gpus[0]["iommu_group"], 66);
    assert_eq!(gpus[0]["shard"]["backend"], "mdev");

    let (ok, table, _) = ctl(&bus, &["list"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ADDRESS"), "{table}");
    assert!(
        lines[1].starts_with("0000:41:00.0  10de:1db4  nvidia  host   66"),
        "{table}"
    );

    let show = json(&bus, &["show", "41:00.0", "--json"]);
    assert_eq!(show["product_name"], "GV100GL [Tesla V100 PCIe 16GB]");
    assert_eq!(
        show["shard"]["children"][0],
        "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123"
    );

    let groups = json(&bus, &["groups", "--json"]);
    let ids: Vec<u64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&66), "{groups}");

    let types = json(&bus, &["types", "--json"]);
    let t300 = types[0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "nvidia-300")
        .unwrap()
        .clone();
    assert_eq!(t300["name"], "GRID V100-8C");
    assert_eq!(t300["available_instances"], 1);

    let mdevs = json(&bus, &["mdevs", "--json"]);
    assert_eq!(mdevs[0]["uuid"], UUID);
    assert_eq!(mdevs[0]["type"], "nvidia-300");
    assert_eq!(mdevs[0]["parent"], "0000:41:00.0");

    // Without an event source the actor still answers: RenderHostdev goes through it (the
    // actor used to stop when the event channel closed, and callers read "shutting down").
    let (ok, xml, stderr) = ctl(&bus, &["xml", UUID]);
    assert!(ok, "{stderr}");
    assert!(xml.contains(UUID), "{xml}");

    // Errors come back typed, in words.
    let (ok, _, stderr) = ctl(&bus, &["show", "0000:99:00.0"]);
    assert!(!ok);
    assert!(stderr.contains("no GPU at 0000:99:00.0"), "{stderr}");
    assert!(stderr.contains("NoSuchDevice"), "{stderr}");
    let (ok, _, stderr) = ctl(&bus, &["show", "nonsense"]);
    assert!(!ok);
    assert!(stderr.contains("argument 'address'"), "{stderr}");
}

#[test]
fn absent_daemon_is_reported_plainly() {
    let bus = Bus::start();
    let (ok, stdout, stderr) = ctl(&bus, &["list"]);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("gpuvirtd is not running"),
        "unclear message: {stderr}"
    );
    let out = Command::new(gpuvirtctl())
        .args(["--bus-address", "unix:path=/nonexistent/bus", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to the bus at"), "{stderr}");
}

/// A generated host with 10 A40s and 300 mdevs, materialised as plain files under `dir`.
fn three_hundred_mdevs(dir: &std::path::Path) -> std::path::PathBuf {
    use gpuvirt_sim::generate::{generate, GenParams, GpuModel};
    use gpuvirt_sim::Backend;
    let root = dir.join("root");
    let params = GenParams {
        gpus: 10,
        mdevs: 300,
        pci_total: 40,
        models: vec![GpuModel::A40],
        defined_inactive: 0,
        seed: 7,
    };
    let kernel = gpuvirt_sim::kernel::Kernel::from_fixture(&generate(&params).unwrap()).unwrap();
    gpuvirt_sim::materialize::materialize(kernel.tree(), &root).unwrap();
    root
}

/// A stock system bus lets one connection await at most 128 replies; a read command on a
/// host with hundreds of objects must stay under that, not fail with LimitsExceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_under_the_system_bus_reply_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = three_hundred_mdevs(dir.path());
    let bus = Bus::start_with_reply_limit(128, dir.path());
    let _daemon = Daemon::start(&bus, &root, "none", dir.path()).await;

    let mdevs = json(&bus, &["mdev", "list", "--json"]);
    assert_eq!(mdevs.as_array().unwrap().len(), 300, "{mdevs}");
    let (ok, _, stderr) = ctl(&bus, &["types"]);
    assert!(ok, "{stderr}");
}

/// `gpuvirtctl tree | head` closes the pipe before the output is written: gpuvirtctl stops
/// quietly with 0 (it panicked with "failed printing to stdout"); a full disk is an error
/// that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_output_quietly_and_a_full_disk_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = three_hundred_mdevs(dir.path());
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &root, "none", dir.path()).await;

    for args in [&["tree"][..], &["list", "--json"], &["mdev", "list"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(gpuvirtctl())
            .args(["--bus-address", &bus.address])
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "gpuvirtctl {args:?}: {stderr}");
        assert_eq!(stderr, "", "gpuvirtctl {args:?}");

        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(gpuvirtctl())
            .args(["--bus-address", &bus.address])
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "gpuvirtctl {args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to standard output")
                && stderr.contains("No space left on device"),
            "gpuvirtctl {args:?}: {stderr}"
        );
    }
}
