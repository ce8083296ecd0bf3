//! The umockdev tier: gpuvirtd's real udev path (libudev through the `udev` crate, the
//! monitor on tokio) under umockdev's preload, against a testbed GPU host whose "kernel" is
//! `tests/umockdev/testbed.py`; checked through the D-Bus tree, its signals and gpuvirtctl.
//!
//! Safety: the daemon runs with `--root /`, because libudev has no sysfs-root override and the
//! preload redirects `/sys` to the testbed. That is right ONLY because `preload-guard.sh`
//! proves, in the daemon's own environment and before the daemon is exec'd, that `/sys` is
//! the testbed (a marker file holding a per-testbed nonce); and after start-up the test checks
//! that the preload library is mapped into the daemon. The state directory is a temp dir, so
//! nothing under the real `/var` is written either. The test process itself is never
//! preloaded and never touches `/sys`.
//!
//! Without umockdev (packages `umockdev`, `gir1.2-umockdev-1.0`, `python3-gi`) the tests skip
//! with a loud reason, unless `GPUVIRT_REQUIRE_UMOCKDEV=1` (set by `scripts/test.sh`), which
//! turns the skip into a failure. `GPUVIRT_SKIP_UMOCKDEV=1` skips them (loudly): `scripts/test.sh`
//! sets it for the workspace run because it runs this tier as a step of its own.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_api as api;

const REQUIRE_ENV: &str = "GPUVIRT_REQUIRE_UMOCKDEV";
const SKIP_ENV: &str = "GPUVIRT_SKIP_UMOCKDEV";
const PRELOAD: &str = "libumockdev-preload.so.0";
const PYTHON: &str = "/usr/bin/python3";
const QUIET: Duration = Duration::from_millis(300);

const IGPU_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_00_02_0";
const V100: &str = "0000:41:00.0";
const V100_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const HOTPLUG: &str = "0000:42:00.0";
const HOTPLUG_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_42_00_0";
const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const MDEV_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123";

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/umockdev")
}

/// Why umockdev cannot run here, if it cannot.
fn missing_umockdev() -> Option<String> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("umockdev-wrapper").is_file()));
    if !on_path {
        return Some("umockdev-wrapper is not on PATH (package umockdev)".into());
    }
    let probe = Command::new(PYTHON)
        .args([
            "-c",
            "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{PYTHON} cannot import UMockdev (packages python3-gi, gir1.2-umockdev-1.0): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {PYTHON}: {e}")),
    }
}

/// Whether the tier can run; a skip is loud, and a failure where CI requires the tier.
fn umockdev_usable() -> bool {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    if !required && std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "!!! SKIP umockdev tier: {SKIP_ENV}=1 (scripts/test.sh runs it as its own step) !!!"
        );
        return false;
    }
    let Some(reason) = missing_umockdev() else {
        return true;
    };
    if required {
        panic!("the umockdev tier cannot run and {REQUIRE_ENV}=1: {reason}");
    }
    eprintln!("!!! SKIP umockdev tier: {reason} !!!");
    false
}

/// `tests/umockdev/testbed.py` under `umockdev-wrapper`: one testbed, one "kernel".
struct Testbed {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The testbed's root (`$UMOCKDEV_DIR`), a directory in /tmp.
    root: PathBuf,
    marker: String,
    nonce: String,
}

impl Testbed {
    fn start() -> Testbed {
        let mut child = Command::new("umockdev-wrapper")
            .arg(PYTHON)
            .arg(scripts_dir().join("testbed.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["READY", root, marker, nonce] = words[..] else {
            let _ = child.kill();
            panic!("testbed.py did not start: {line:?} (its stderr is above)");
        };
        Testbed {
            root: PathBuf::from(root),
            marker: marker.to_owned(),
            nonce: nonce.to_owned(),
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns the reply (`OK` or `ERR ...`).
    fn send(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }

    /// Sends a command that must succeed.
    fn run(&mut self, command: &str) {
        let reply = self.send(command);
        assert_eq!(reply, "OK", "testbed command {command:?}");
    }

    /// The environment that makes a process see this testbed as `/sys`.
    fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("UMOCKDEV_DIR", self.root.as_path()),
            ("LD_PRELOAD", Path::new(PRELOAD)),
        ]
    }

    /// `preload-guard.sh` with this testbed's marker, ready for the command to guard.
    fn guarded(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(scripts_dir().join("preload-guard.sh"))
            .args([&self.marker, &self.nonce])
            .arg(program);
        cmd
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // `quit` lets the script remove its testbed directory.
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// gpuvirtd with `--events udev --root /` under the verified preload.
struct UdevDaemon {
    child: Child,
    log: PathBuf,
}

impl UdevDaemon {
    async fn start(bus: &Bus, tb: &Testbed, dir: &Path) -> UdevDaemon {
        let log = dir.join("gpuvirtd.log");
        let state = dir.join("state");
        let child = tb
            .guarded(env!("CARGO_BIN_EXE_gpuvirtd"))
            // `/` is the testbed's /sys only because the guard has just proven the preload.
            .args(["--root", "/", "--events", "udev", "--log", "gpuvirtd=debug"])
            .args(["--bus-address", &bus.address])
            .arg("--state-dir")
            .arg(&state)
            .envs(tb.env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = UdevDaemon { child, log };
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner(name.clone()).await.unwrap() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("gpuvirtd exited with {status}: {}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "gpuvirtd never took its name: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Belt and braces: the guard exec'd the daemon in the checked environment; confirm
        // the loader really mapped the preload into it.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", daemon.child.id())).unwrap();
        assert!(
            maps.contains("libumockdev-preload"),
            "gpuvirtd runs without the umockdev preload"
        );
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for UdevDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl_json(bus: &Bus, args: &[&str]) -> serde_json::Value {
    let out = Command::new(gpuvirtctl())
        .args(["--bus-address", &bus.address])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gpuvirtctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn get(bus: &Bus, path: &str, iface: &str, prop: &str) -> String {
    busctl(bus, &["get-property", api::BUS_NAME, path, iface, prop])
        .trim()
        .to_owned()
}

fn has(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| l.starts_with(prefix))
}

/// The nvidia-300 entry of `gpuvirtctl types --json` for the V100.
fn v100_type(bus: &Bus) -> serde_json::Value {
    let types = ctl_json(bus, &["types", "--json"]);
    types
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p.to_string().contains(V100))
        .and_then(|p| p["types"].as_array())
        .and_then(|ts| ts.iter().find(|t| t["id"] == "nvidia-300"))
        .cloned()
        .unwrap_or_else(|| panic!("no nvidia-300 on {V100}: {types}"))
}

/// The safety net itself: a command behind the guard runs only where `/sys` is the testbed.
#[test]
fn guard_refuses_without_the_preload() {
    if !umockdev_usable() {
        return;
    }
    let tb = Testbed::start();
    let dir = tempfile::tempdir().unwrap();
    // The marker must not exist outside the testbed, or it would prove nothing.
    assert!(!Path::new("/sys").join(&tb.marker).exists());

    let touched = dir.path().join("ran");
    let attempt = |env: &[(&str, &Path)]| {
        let _ = std::fs::remove_file(&touched);
        let out = tb
            .guarded("touch")
            .arg(&touched)
            .env_remove("LD_PRELOAD")
            .env_remove("UMOCKDEV_DIR")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            touched.exists(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let root = tb.root.as_path();

    // No preload at all.
    let (code, ran, err) = attempt(&[("UMOCKDEV_DIR", root)]);
    assert_eq!((code, ran), (Some(99), false), "{err}");
    assert!(err.contains("lacks libumockdev-preload"), "{err}");
    // A preload that cannot load: the loader only warns, and /sys would be the real one.
    let broken = Path::new("libumockdev-preload.so.0-not-installed");
    let (code, ran, err) = attempt(&[("UMOCKDEV_DIR", root), ("LD_PRELOAD", broken)]);
    assert_eq!((code, ran), (Some(99), false), "{err}");
    assert!(err.contains("preload is not active"), "{err}");
    // The preload, but another testbed (another nonce).
    let other = Testbed::start();
    let (code, ran, err) = attempt(&other.env());
    assert_eq!((code, ran), (Some(99), false), "{err}");
    // The real thing.
    let (code, ran, err) = attempt(&tb.env());
    assert_eq!((code, ran), (Some(0), true), "{err}");
}

/// Start-up enumeration through the preloaded sysfs: the D-Bus tree shows the testbed host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumeration_serves_the_testbed_host() {
    if !umockdev_usable() {
        return;
    }
    let tb = Testbed::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let daemon = UdevDaemon::start(&bus, &tb, dir.path()).await;

    let tree = busctl(&bus, &["tree", "--list", api::BUS_NAME]);
    for path in [
        IGPU_PATH,
        V100_PATH,
        "/org/gpuvirt/GpuVirt1/iommu_groups/0",
        "/org/gpuvirt/GpuVirt1/iommu_groups/66",
    ] {
        assert!(tree.lines().any(|l| l == path), "{path} missing: {tree}");
    }
    assert!(!tree.contains("/mdevs/"), "no mdevs yet: {tree}");

    let list = ctl_json(&bus, &["list", "--json"]);
    let gpus = list.as_array().unwrap();
    let addresses: Vec<&str> = gpus
        .iter()
        .map(|g| g["pci_address"].as_str().unwrap())
        .collect();
    // The testbed's ISA bridge (0000:00:1f.0, class 0x0601) is no GPU.
    assert_eq!(addresses, ["0000:00:02.0", V100], "{list}");
    assert_eq!(gpus[0]["driver"], "i915");
    assert_eq!(gpus[0]["iommu_group"], 0);
    assert_eq!(gpus[0]["vendor_id"], "8086");
    assert_eq!(gpus[1]["driver"], "nvidia");
    assert_eq!(gpus[1]["iommu_group"], 66);
    assert_eq!(gpus[1]["device_id"], "1db4");
    assert_eq!(gpus[1]["shard"]["backend"], "mdev");
    assert_eq!(
        get(&bus, IGPU_PATH, api::GPU_INTERFACE, "BootVga"),
        "b true"
    );

    let t300 = v100_type(&bus);
    assert_eq!(t300["name"], "GRID V100-8C");
    assert_eq!(t300["available_instances"], 2);

    // This host has neither /sys/class/iommu nor /sys/module/vfio; the daemon seeing them
    // proves that stat and directory listings go to the testbed too, not only open.
    assert_eq!(
        get(
            &bus,
            api::MANAGER_PATH,
            api::MANAGER_INTERFACE,
            "VfioAvailable"
        ),
        "b true"
    );
    let reasons = get(
        &bus,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "IommuReasons",
    );
    assert!(reasons.contains("dmar0"), "{reasons}");
    assert!(daemon.log().contains("scanned"), "{}", daemon.log());
}

/// Live PCI events through the real monitor: hotplug, bind (DRIVER set), unbind (no DRIVER,
/// as the kernel sends it), and removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pci_hotplug_and_rebinding_follow_udev_events() {
    if !umockdev_usable() {
        return;
    }
    let mut tb = Testbed::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let _daemon = UdevDaemon::start(&bus, &tb, dir.path()).await;
    let conn = bus.connect().await;
    let rec = SignalRecorder::start(&conn).await;

    // One command at a time, each waited for: umockdev 0.17 kills the sender when the
    // socket queue (max_dgram_qlen, often 10) fills.
    tb.run(&format!("add-gpu {HOTPLUG} 030000 1af4 1050 67"));
    let added = rec
        .settle(
            |l| {
                has(l, &format!("InterfacesAdded {HOTPLUG_PATH} "))
                    && has(l, "InterfacesAdded /org/gpuvirt/GpuVirt1/iommu_groups/67 ")
            },
            QUIET,
        )
        .await;
    assert!(
        !added.iter().any(|l| l.contains(V100_PATH)),
        "only the new device changed: {added:#?}"
    );
    assert_eq!(
        get(&bus, HOTPLUG_PATH, api::GPU_INTERFACE, "Driver"),
        "s \"\""
    );
    assert_eq!(
        get(&bus, HOTPLUG_PATH, api::GPU_INTERFACE, "State"),
        "s \"unbound\""
    );

    tb.run(&format!("bind {HOTPLUG} vfio-pci"));
    let bound = rec
        .settle(
            |l| {
                has(
                    l,
                    &format!("PropertiesChanged {HOTPLUG_PATH} {} ", api::GPU_INTERFACE),
                )
            },
            QUIET,
        )
        .await;
    let gpu_change = bound
        .iter()
        .find(|l| l.starts_with(&format!("PropertiesChanged {HOTPLUG_PATH} ")))
        .unwrap();
    assert!(gpu_change.contains("Driver=\"vfio-pci\""), "{bound:#?}");
    assert!(gpu_change.contains("State=\"vfio\""), "{bound:#?}");
    let list = ctl_json(&bus, &["list", "--json"]);
    let hot = list
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pci_address"] == HOTPLUG)
        .unwrap();
    assert_eq!(hot["driver"], "vfio-pci", "{list}");
    assert_eq!(hot["iommu_group"], 67, "{list}");

    tb.run(&format!("unbind {HOTPLUG}"));
    let unbound = rec
        .settle(
            |l| has(l, &format!("PropertiesChanged {HOTPLUG_PATH} ")),
            QUIET,
        )
        .await;
    let gpu_change = unbound
        .iter()
        .find(|l| l.starts_with(&format!("PropertiesChanged {HOTPLUG_PATH} ")))
        .unwrap();
    assert!(gpu_change.contains("Driver=\"\""), "{unbound:#?}");
    assert!(gpu_change.contains("State=\"unbound\""), "{unbound:#?}");

    // Unbind then bind back to back: the unbind event carries no DRIVER, and whatever the
    // daemon reads meanwhile, it must settle on the final driver.
    tb.run(&format!("bind {HOTPLUG} vfio-pci"));
    tb.run(&format!("unbind {HOTPLUG}"));
    tb.run(&format!("bind {HOTPLUG} vfio-pci"));
    rec.settle(
        |l| has(l, &format!("PropertiesChanged {HOTPLUG_PATH} ")),
        QUIET,
    )
    .await;
    assert_eq!(
        get(&bus, HOTPLUG_PATH, api::GPU_INTERFACE, "Driver"),
        "s \"vfio-pci\""
    );

    tb.run(&format!("remove-gpu {HOTPLUG}"));
    let removed = rec
        .settle(
            |l| {
                has(l, &format!("InterfacesRemoved {HOTPLUG_PATH} "))
                    && has(
                        l,
                        "InterfacesRemoved /org/gpuvirt/GpuVirt1/iommu_groups/67 ",
                    )
            },
            QUIET,
        )
        .await;
    assert!(
        !removed.iter().any(|l| l.contains(V100_PATH)),
        "{removed:#?}"
    );
    let list = ctl_json(&bus, &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

/// Live mdev events: create (`add` unbound, then `bind`) and remove (`unbind`, `remove`), with
/// the parent's capacity following. An mdev's own IOMMU group is not an object: the Mdev
/// carries its number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdev_create_and_remove_follow_udev_events() {
    if !umockdev_usable() {
        return;
    }
    let mut tb = Testbed::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let _daemon = UdevDaemon::start(&bus, &tb, dir.path()).await;
    let conn = bus.connect().await;
    let rec = SignalRecorder::start(&conn).await;

    tb.run(&format!("mdev-add {V100} nvidia-300 {UUID} 130"));
    let created = rec
        .settle(
            |l| {
                has(l, &format!("InterfacesAdded {MDEV_PATH} "))
                    && has(
                        l,
                        &format!(
                            "PropertiesChanged {V100_PATH} {} ",
                            api::SHARD_PARENT_INTERFACE
                        ),
                    )
            },
            QUIET,
        )
        .await;
    let parent_change = created
        .iter()
        .find(|l| l.starts_with(&format!("PropertiesChanged {V100_PATH} ")))
        .unwrap();
    assert!(parent_change.contains(MDEV_PATH), "Children: {created:#?}");
    assert_eq!(v100_type(&bus)["available_instances"], 1);
    let mdevs = ctl_json(&bus, &["mdevs", "--json"]);
    assert_eq!(mdevs[0]["uuid"], UUID, "{mdevs}");
    assert_eq!(mdevs[0]["type"], "nvidia-300", "{mdevs}");
    assert_eq!(mdevs[0]["parent"], V100, "{mdevs}");
    // The kernel announces an mdev unbound; the vendor driver's bind follows as its own event.
    assert_eq!(
        get(&bus, MDEV_PATH, api::MDEV_INTERFACE, "Driver"),
        "s \"\""
    );
    tb.run(&format!("bind {UUID} nvidia-vgpu-vfio"));
    let mut bound = rec
        .settle(
            |l| has(l, &format!("PropertiesChanged {MDEV_PATH} ")),
            QUIET,
        )
        .await;
    bound.sort();
    assert_eq!(
        bound,
        [format!(
            "PropertiesChanged {MDEV_PATH} {} Driver=\"nvidia-vgpu-vfio\"",
            api::MDEV_INTERFACE
        )],
        "a bind changes the mdev's driver, nothing else"
    );
    assert_eq!(
        get(&bus, MDEV_PATH, api::MDEV_INTERFACE, "IommuGroupId"),
        "i 130"
    );
    assert_eq!(
        get(&bus, MDEV_PATH, api::MDEV_INTERFACE, "IommuGroup"),
        "o \"/\""
    );
    assert!(
        !created.iter().any(|l| l.contains("iommu_groups/130")),
        "{created:#?}"
    );

    // A second create runs the parent out of capacity.
    let second = "bb618089-8b16-4d01-a136-25a0f3c73124";
    tb.run(&format!("mdev-add {V100} nvidia-300 {second} 131"));
    tb.run(&format!("bind {second} nvidia-vgpu-vfio"));
    rec.settle(
        |l| has(l, "InterfacesAdded /org/gpuvirt/GpuVirt1/mdevs/bb618089"),
        QUIET,
    )
    .await;
    assert_eq!(v100_type(&bus)["available_instances"], 0);
    assert!(tb
        .send(&format!(
            "mdev-add {V100} nvidia-300 cc618089-8b16-4d01-a136-25a0f3c73125 132"
        ))
        .starts_with("ERR no instances"));

    tb.run(&format!("mdev-remove {UUID}"));
    let removed = rec
        .settle(
            |l| has(l, &format!("InterfacesRemoved {MDEV_PATH} ")),
            QUIET,
        )
        .await;
    assert!(
        !removed.iter().any(|l| l.contains("iommu_groups/130")),
        "{removed:#?}"
    );
    assert_eq!(v100_type(&bus)["available_instances"], 1);
    let mdevs = ctl_json(&bus, &["mdevs", "--json"]);
    let uuids: Vec<&str> = mdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, [second], "{mdevs}");
}
