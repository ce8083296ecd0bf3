//! Passthrough through the daemon on a private bus against the FUSE-simulated kernel: a whole
//! slot to vfio-pci and back as jobs, dry-run plans, every interlock's D-Bus error, a hung
//! step reported as TimedOut while the daemon keeps serving, and recovery from the ledger of a
//! daemon killed mid-assignment.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_api as api;
use gpuvirt_core::ledger::{FunctionRecord, Ledger, LedgerStore, SlotRecord, SlotState};
use support::*;
use zbus::zvariant::Value;

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const IGPU: &str = "0000:00:02.0";

async fn workstation(vfio_loaded: bool) -> (SimHost, Bus, Gpuvirtd, zbus::Connection) {
    let host = SimHost::boot("workstation");
    if vfio_loaded {
        host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    }
    let bus = Bus::start();
    let (d, conn, _) = start_on(&host, &bus, &[]).await;
    (host, bus, d, conn)
}

async fn gpu_driver_property(conn: &zbus::Connection, address: &str) -> String {
    gpu_string_property(conn, address, "Driver").await
}

async fn gpu_string_property(conn: &zbus::Connection, address: &str, name: &str) -> String {
    let reply = call(
        conn,
        &gpu_path(address),
        "org.freedesktop.DBus.Properties",
        "Get",
        &(api::GPU_INTERFACE, name),
    )
    .await
    .unwrap();
    let v: zbus::zvariant::OwnedValue = reply.body().deserialize().unwrap();
    String::try_from(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_slot_goes_to_vfio_and_back_as_jobs() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn) = workstation(true).await;
    let root = host.root().to_path_buf();
    // On nouveau the card has its DRM nodes, udev's by-path names included.
    let render_by_path = format!("/dev/dri/by-path/pci-{GPU}-render");
    assert_eq!(
        gpu_string_property(&conn, GPU, "DrmRenderNode").await,
        "/dev/dri/renderD129"
    );
    assert_eq!(
        gpu_string_property(&conn, GPU, "DrmRenderNodeByPath").await,
        render_by_path
    );
    assert_eq!(
        gpu_string_property(&conn, GPU, "DrmCard").await,
        "/dev/dri/card1"
    );

    // dry-run: the exact writes, no job, nothing touched.
    let (job, plan) = passthrough(
        &conn,
        GPU,
        "AssignPassthrough",
        opts(&[("dry-run", Value::Bool(true))]),
    )
    .await
    .unwrap();
    assert_eq!(job.as_str(), "/");
    assert!(
        plan.contains(&format!(
            "write vfio-pci to sys/bus/pci/devices/{AUDIO}/driver_override"
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "write {GPU} to sys/bus/pci/drivers/nouveau/unbind"
        )),
        "{plan}"
    );
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));

    let (job, _plan) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    assert!(job.as_str().starts_with(api::JOBS_PATH), "{job}");
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(ok, "{name}: {message}\n{}", d.log());
    assert_eq!(driver(&root, GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("vfio-pci"));
    // The log says a finished job's "done:" once.
    assert!(!d.log().contains("done: done:"), "{}", d.log());
    // The tree was refreshed before the job finished.
    assert_eq!(gpu_driver_property(&conn, GPU).await, "vfio-pci");
    // vfio-pci registers no DRM nodes: the card lost them, the iGPU kept its own.
    for name in [
        "DrmCard",
        "DrmRenderNode",
        "DrmCardByPath",
        "DrmRenderNodeByPath",
    ] {
        assert_eq!(gpu_string_property(&conn, GPU, name).await, "", "{name}");
    }
    assert_eq!(
        gpu_string_property(&conn, IGPU, "DrmRenderNode").await,
        "/dev/dri/renderD128"
    );
    let ledger = LedgerStore::new(host.dir.path().join("state"))
        .load()
        .unwrap();
    let slot = ledger
        .slot(GPU.parse::<gpuvirt_core::PciAddress>().unwrap().slot())
        .unwrap();
    assert_eq!(slot.state, SlotState::Assigned);
    assert_eq!(
        slot.original_driver(AUDIO.parse().unwrap()),
        Some(Some("snd_hda_intel"))
    );

    // Assigning again is a no-op, answered at once.
    let (job, plan) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    assert_eq!(job.as_str(), "/");
    assert!(plan.starts_with("nothing to do"), "{plan}");

    // A VM holding the card's VFIO group blocks the return: Busy, naming the process.
    let group = std::fs::read_link(root.join(format!("sys/bus/pci/devices/{GPU}/iommu_group")))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let fd = root.join("proc/4242/fd");
    std::fs::create_dir_all(&fd).unwrap();
    std::fs::write(root.join("proc/4242/comm"), "qemu-system-x86\n").unwrap();
    std::os::unix::fs::symlink(format!("/dev/vfio/{group}"), fd.join("7")).unwrap();
    let (name, message) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.Busy", "{message}");
    assert!(message.contains("pid 4242 (qemu-system-x86)"), "{message}");
    std::fs::remove_file(fd.join("7")).unwrap();

    let (job, plan) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
        .await
        .unwrap();
    assert!(
        plan.contains(&format!("write {GPU} to sys/bus/pci/drivers/nouveau/bind")),
        "{plan}"
    );
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(ok, "{name}: {message}");
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(gpu_driver_property(&conn, GPU).await, "nouveau");
    assert_eq!(
        gpu_string_property(&conn, GPU, "DrmRenderNodeByPath").await,
        render_by_path
    );
    let ledger = LedgerStore::new(host.dir.path().join("state"))
        .load()
        .unwrap();
    assert!(ledger.slots.is_empty(), "{ledger:?}");

    // Returning a card that is with the host already: nothing to do.
    let (job, plan) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
        .await
        .unwrap();
    assert_eq!(job.as_str(), "/");
    assert!(plan.starts_with("nothing to do"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlocks_refuse_with_their_error_names() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, _d, conn) = workstation(true).await;

    // The boot GPU.
    let (name, message) = passthrough(&conn, IGPU, "AssignPassthrough", no_opts())
        .await
        .unwrap_err();
    assert_eq!(name, "org.gpuvirt.GpuVirt1.Error.BootVga", "{message}");
    assert!(
        message.contains(IGPU) && message.contains("allow_boot_vga"),
        "{message}"
    );

    // Return of a card gpuvirt never assigned, but that is on vfio-pci: not owned.
    host.write(
        &format!("sys/bus/pci/devices/{AUDIO}/driver_override"),
        "vfio-pci",
    )
    .unwrap();
    host.write("sys/bus/pci/drivers/snd_hda_intel/unbind", AUDIO)
        .unwrap();
    host.write("sys/bus/pci/drivers_probe", AUDIO).unwrap();
    eventually("audio on vfio-pci", || {
        driver(host.root(), AUDIO).as_deref() == Some("vfio-pci")
    })
    .await;
    let (name, message) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
        .await
        .unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.PolicyViolation",
        "{message}"
    );
    assert!(message.contains("not assigned by gpuvirt"), "{message}");

    // Malformed options: InvalidArgs naming the option.
    let (name, message) = passthrough(
        &conn,
        GPU,
        "AssignPassthrough",
        opts(&[("dry-run", Value::from("yes"))]),
    )
    .await
    .unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);
    assert!(message.contains("dry-run"), "{message}");
    let (name, message) = passthrough(
        &conn,
        GPU,
        "AssignPassthrough",
        opts(&[("frobnicate", Value::Bool(true))]),
    )
    .await
    .unwrap_err();
    assert_eq!(name, api::INVALID_ARGS_ERROR);
    assert!(message.contains("frobnicate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_shared_with_a_nic_is_not_viable() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("nic-shared-group");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let _d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let conn = bus.connect().await;
    let (name, message) = passthrough(&conn, "0000:03:00.0", "AssignPassthrough", no_opts())
        .await
        .unwrap_err();
    assert_eq!(
        name, "org.gpuvirt.GpuVirt1.Error.GroupNotViable",
        "{message}"
    );
    assert!(
        message.contains("0000:04:00.0") && message.contains("igb"),
        "{message}"
    );
    // The group's ViabilityProblems name the NIC's functions, which would stay on the host,
    // and not the card that is to be passed through.
    let group = api::IommuGroupProxy::builder(&conn)
        .path("/org/gpuvirt/GpuVirt1/iommu_groups/12")
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(!group.viable().await.unwrap());
    assert_eq!(
        group.viability_problems().await.unwrap(),
        [
            "0000:04:00.0 (Ethernet controller, igb) shares IOMMU group 12 and would stay on the host",
            "0000:04:00.1 (Ethernet controller, igb) shares IOMMU group 12 and would stay on the host",
        ]
    );
}

/// A `modprobe` under the root that hangs, standing in for a kernel write that never returns.
fn hanging_modprobe(root: &Path, seconds: u32) {
    let path = root.join("sbin/modprobe");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("#!/bin/sh\nsleep {seconds}\nexit 1\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_step_times_out_and_the_daemon_keeps_serving() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    hanging_modprobe(host.root(), 6);
    let bus = Bus::start();
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &["--unbind-timeout", "1"],
    )
    .await;
    let conn = bus.connect().await;
    let started = Instant::now();
    let (job, plan) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    assert!(plan.contains("modprobe vfio-pci"), "{plan}");
    // The call returned at once, with a job.
    assert!(started.elapsed() < Duration::from_secs(1));
    // Reads are served while the step hangs.
    assert_eq!(gpu_driver_property(&conn, GPU).await, "nouveau");
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(!ok);
    assert_eq!(
        name,
        "org.gpuvirt.GpuVirt1.Error.TimedOut",
        "{message}\n{}",
        d.log()
    );
    assert!(message.contains("within 1 s"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A second operation while the first still hangs is told so, not queued forever.
    let (job2, _) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    let (ok, name, _) = wait_job(&conn, job2.as_str()).await;
    assert!(!ok && !name.is_empty());
    // Nothing was rebound.
    assert_eq!(driver(host.root(), GPU).as_deref(), Some("nouveau"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_crash_mid_assignment_restores_the_original_drivers() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let state = host.dir.path().join("state");
    // What a daemon killed half-way through a bind leaves: the originals recorded (pending),
    // both overrides written, the GPU unbound, the audio function still on its driver.
    let mut ledger = Ledger::default();
    ledger.slots.insert(
        Ledger::slot_key(GPU.parse::<gpuvirt_core::PciAddress>().unwrap().slot()),
        SlotRecord {
            functions: vec![
                FunctionRecord {
                    address: GPU.parse().unwrap(),
                    original_driver: Some("nouveau".into()),
                },
                FunctionRecord {
                    address: AUDIO.parse().unwrap(),
                    original_driver: Some("snd_hda_intel".into()),
                },
            ],
            rule: None,
            state: SlotState::Pending,
            removal: None,
        },
    );
    std::fs::create_dir_all(&state).unwrap();
    LedgerStore::new(&state).save(&ledger).unwrap();
    host.write(
        &format!("sys/bus/pci/devices/{GPU}/driver_override"),
        "vfio-pci",
    )
    .unwrap();
    host.write(
        &format!("sys/bus/pci/devices/{AUDIO}/driver_override"),
        "vfio-pci",
    )
    .unwrap();
    host.write("sys/bus/pci/drivers/nouveau/unbind", GPU)
        .unwrap();
    assert_eq!(driver(host.root(), GPU), None);

    let bus = Bus::start();
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &state,
        &[],
    )
    .await;
    assert_eq!(
        driver(host.root(), GPU).as_deref(),
        Some("nouveau"),
        "{}",
        d.log()
    );
    assert_eq!(driver(host.root(), AUDIO).as_deref(), Some("snd_hda_intel"));
    let conn = bus.connect().await;
    // The first tree shows the restored state.
    assert_eq!(gpu_driver_property(&conn, GPU).await, "nouveau");
    assert!(LedgerStore::new(&state).load().unwrap().slots.is_empty());
    assert!(d.log().contains("recovered"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iommu_that_is_off_is_not_supported_and_names_the_kernel_parameter() {
    if !fuse_available() {
        return;
    }
    // The workstation booted with VT-d off: no IOMMU, no groups.
    let text = include_str!("../../gpuvirt-sim/fixtures/workstation.toml")
        .replace("intel_iommu=on", "intel_iommu=off")
        .replace("iommu = \"intel\"", "iommu = \"none\"");
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("iommu_group"))
        .map(|l| format!("{l}\n"))
        .collect();
    let fixture = gpuvirt_sim::fixture::Fixture::parse(&text, "workstation-iommu-off").unwrap();
    let host = SimHost::with_kernel(gpuvirt_sim::kernel::Kernel::from_fixture(&fixture).unwrap());
    assert!(!host.root().join("sys/kernel/iommu_groups/1").exists());
    // The CPU vendor decides which parameter to name.
    std::fs::write(
        host.root().join("proc/cpuinfo"),
        "processor\t: 0\nvendor_id\t: GenuineIntel\n",
    )
    .unwrap();
    let bus = Bus::start();
    let d = Gpuvirtd::start(
        &bus.address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let conn = bus.connect().await;
    for options in [opts(&[("dry-run", Value::Bool(true))]), no_opts()] {
        let (name, message) = passthrough(&conn, GPU, "AssignPassthrough", options)
            .await
            .unwrap_err();
        assert_eq!(
            name,
            "org.gpuvirt.GpuVirt1.Error.NotSupported",
            "{message}\n{}",
            d.log()
        );
        assert!(message.contains("IOMMU is disabled"), "{message}");
        assert!(message.contains("intel_iommu=off"), "{message}");
        assert!(message.contains("add intel_iommu=on"), "{message}");
    }
    assert_eq!(driver(host.root(), GPU).as_deref(), Some("nouveau"));
}

/// A card removed while passed through comes back in its slot on its host drivers (a new
/// device: no driver_override, probed as usual). The card is judged by what it is bound to
/// now: a dry-run ReturnToHost says there is nothing to do, and where the ledger still says
/// `assigned` (removal and return in one batch of events) a real one drops the stale record
/// without rebinding anything (issue 18 point 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_back_on_its_host_driver_after_removal_has_nothing_to_return() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn) = workstation(true).await;
    let root = host.root().to_path_buf();
    let (job, _) = passthrough(&conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(ok, "{name}: {message}\n{}", d.log());
    assert_eq!(driver(&root, GPU).as_deref(), Some("vfio-pci"));

    host.with_kernel_mut(|k| {
        for f in [AUDIO, GPU] {
            k.hot_remove(f.parse().unwrap()).unwrap();
        }
        for f in [GPU, AUDIO] {
            k.replug(f.parse().unwrap()).unwrap();
        }
    });
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("snd_hda_intel"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gpu_driver_property(&conn, GPU).await != "nouveau" {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let state = host.dir.path().join("state");
    let slot = GPU.parse::<gpuvirt_core::PciAddress>().unwrap().slot();
    // The removal and the return can reach the daemon in one batch (it never sees the slot
    // empty, and the record stays `assigned`: the stale record this test is about) or in
    // two (the ledger follows: `removed`, then dropped; see tests/hot_removal.rs). Either
    // way there is nothing to return.
    let (job, plan) = passthrough(
        &conn,
        GPU,
        "ReturnToHost",
        opts(&[("dry-run", Value::Bool(true))]),
    )
    .await
    .unwrap();
    assert_eq!(job.as_str(), "/");
    assert!(plan.starts_with("nothing to do"), "{plan}");
    assert!(
        plan.contains(&format!("{GPU} on nouveau")) || plan.contains("with the host already\n"),
        "{plan}"
    );
    if plan.contains("dates from before the card was removed") {
        let (job, _) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
            .await
            .unwrap();
        if job.as_str() != "/" {
            let (ok, name, message) = wait_job(&conn, job.as_str()).await;
            assert!(ok, "{name}: {message}\n{}", d.log());
        }
    }
    eventually("the record dropped", || {
        LedgerStore::new(&state)
            .load()
            .unwrap()
            .slot(slot)
            .is_none()
    })
    .await;
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("snd_hda_intel"));
    let (_, plan) = passthrough(
        &conn,
        GPU,
        "ReturnToHost",
        opts(&[("dry-run", Value::Bool(true))]),
    )
    .await
    .unwrap();
    assert!(plan.starts_with("nothing to do"), "{plan}");
}
