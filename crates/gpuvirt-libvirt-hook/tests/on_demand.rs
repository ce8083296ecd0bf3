//! The hook with cards whose passthrough rule says `on_demand = true`: at `prepare begin` it
//! assigns them to vfio-pci (AssignPassthrough, followed to the job's end) and records that;
//! at `release end` it returns them (ReturnToHost). A boot-VGA card or one in a group that
//! is not viable fails the start with the reason before anything changes; a failure on a
//! later device undoes what the run did before it.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use gpuvirt_api as api;
use support::*;
use zbus::zvariant::Value;

const DGPU: &str = "0000:01:00.0";
const DGPU_AUDIO: &str = "0000:01:00.1";
const IGPU: &str = "0000:00:02.0";

/// The workstation's two GPUs, both passed through on demand.
const WORKSTATION_ON_DEMAND: &str = r#"version = 1
[[gpu]]
name = "vm-card"
match = { address = "0000:01:00.0" }
role = "passthrough"
on_demand = true

[[gpu]]
name = "console"
match = { boot_vga = true }
role = "passthrough"
on_demand = true
"#;

fn card(functions: &[&str]) -> String {
    functions
        .iter()
        .map(|f| pci_hostdev(f, false))
        .collect::<Vec<_>>()
        .join("\n")
}

fn record(state: &std::path::Path, domain: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state.join(format!("{domain}.json"))).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_card_is_assigned_at_prepare_and_returned_at_release() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, Some(WORKSTATION_ON_DEMAND)).await;
    let state = host.hook_state();
    let xml = domain_xml("gamer", &card(&[DGPU, DGPU_AUDIO]));
    assert_eq!(host.driver(DGPU), "nouveau");

    let run = run_hook(
        &bus.address,
        &state,
        ["gamer", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", d.log());
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(&format!("assigned {DGPU} to vfio-pci")),
        "{run:?}"
    );
    assert_eq!(host.driver(DGPU), "vfio-pci");
    assert_eq!(host.driver(DGPU_AUDIO), "vfio-pci");
    assert_eq!(
        record(&state, "gamer").unwrap()["assigned_cards"],
        serde_json::json!([DGPU])
    );

    // A second prepare (a restart of the domain whose release never ran) finds the card on
    // vfio-pci: nothing more to do, and the record still names it once.
    let run = run_hook(
        &bus.address,
        &state,
        ["gamer", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");

    let run = run_hook(&bus.address, &state, ["gamer", "release", "end"], &xml, &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", d.log());
    assert!(
        run.stderr.contains(&format!("returned {DGPU} to the host")),
        "{run:?}"
    );
    assert_eq!(host.driver(DGPU), "nouveau");
    assert_eq!(host.driver(DGPU_AUDIO), "snd_hda_intel");
    assert!(record(&state, "gamer").is_none(), "the record is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_vga_card_is_refused_before_anything_changes() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, Some(WORKSTATION_ON_DEMAND)).await;
    let state = host.hook_state();
    // The dGPU first: it alone could be assigned, yet nothing is.
    let xml = domain_xml("both", &card(&[DGPU, DGPU_AUDIO, IGPU]));
    let run = run_hook(
        &bus.address,
        &state,
        ["both", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}\n{}", d.log());
    for needle in [
        "domain both cannot start",
        &format!("{IGPU} cannot be passed through"),
        "boot",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} missing: {run:?}");
    }
    assert!(!run.stderr.contains("assigned"), "{run:?}");
    assert_eq!(host.driver(DGPU), "nouveau", "checked before any change");
    assert_eq!(host.driver(IGPU), "i915");
    assert!(record(&state, "both").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_in_a_group_that_is_not_viable_is_refused_before_anything_changes() {
    if !fuse_available() {
        return;
    }
    // A T4 sharing its group with a NIC on igb (not viable), another alone in its group.
    const SHARED: &str = "0000:03:00.0";
    const ALONE: &str = "0000:21:00.0";
    let host = SimHost::boot("nic-shared-group");
    host.with_kernel_mut(|k| {
        if !k.is_loaded("vfio_pci") {
            k.load_module("vfio_pci").unwrap();
        }
    });
    let bus = Bus::start();
    let policy = "version = 1\n[[gpu]]\nname = \"t4s\"\nmatch = { vendor = 0x10de }\n\
                  role = \"passthrough\"\non_demand = true\n";
    let d = Daemon::start(&bus, &host, Some(policy)).await;
    let state = host.hook_state();
    let xml = domain_xml("t4", &card(&[ALONE, SHARED]));
    let run = run_hook(&bus.address, &state, ["t4", "prepare", "begin"], &xml, &[]);
    assert_eq!(run.code, 1, "{run:?}\n{}", d.log());
    for needle in [
        &format!("{SHARED} cannot be passed through"),
        "0000:04:00.0",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} missing: {run:?}");
    }
    assert_eq!(host.driver(ALONE), "nvidia", "checked before any change");
    assert_eq!(host.driver(SHARED), "nvidia");
    assert!(record(&state, "t4").is_none());

    // The viable one alone starts.
    let xml = domain_xml("t4", &card(&[ALONE]));
    let run = run_hook(&bus.address, &state, ["t4", "prepare", "begin"], &xml, &[]);
    assert_eq!(run.code, 0, "{run:?}\n{}", d.log());
    assert_eq!(host.driver(ALONE), "vfio-pci");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_assign_undoes_the_vgpu_started_before_it() {
    if !fuse_available() {
        return;
    }
    // GPU 4 (81:00.0) is a vGPU parent with room; GPU 3 (61:00.0) is passed through on demand. vfio-pci is not
    // loaded and the root has no modprobe: the checks pass (the dry run only plans the
    // modprobe), the assign's job fails.
    const PARENT: &str = "0000:81:00.0";
    const CARD: &str = "0000:61:00.0";
    const VGPU: &str = "e5b4f7d9-6c30-4a01-8d84-9f52b1304d66";
    let host = SimHost::boot("mdev-server-8gpu");
    host.with_kernel_mut(|k| {
        for m in ["vfio_mdev", "vfio_pci"] {
            if k.is_loaded(m) {
                k.unload_module(m).unwrap();
            }
        }
    });
    let bus = Bus::start();
    let policy = "version = 1\n[[gpu]]\nname = \"whole\"\nmatch = { address = \"0000:61:00.0\" }\n\
                  role = \"passthrough\"\non_demand = true\n";
    let d = Daemon::start(&bus, &host, Some(policy)).await;
    let conn = bus.connect().await;
    let m = api::ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let opts = HashMap::from([("auto", Value::from(false))]);
    m.define_mdev(PARENT, "nvidia-217", VGPU, opts)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(!host.mdev_exists(VGPU));
    let state = host.hook_state();
    let hostdevs = format!("{}\n{}", mdev_hostdev(VGPU), card(&[CARD]));
    let xml = domain_xml("mixed", &hostdevs);
    let run = run_hook(
        &bus.address,
        &state,
        ["mixed", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}\n{}", d.log());
    for needle in [
        &format!("started vGPU {VGPU}"),
        "domain mixed cannot start",
        &format!("assign {CARD} to vfio-pci"),
        "modprobe",
        &format!("undid vGPU {VGPU}"),
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} missing: {run:?}");
    }
    assert!(
        !host.mdev_exists(VGPU),
        "the vGPU it started is stopped again"
    );
    assert_eq!(host.driver(CARD), "nvidia");
    assert!(record(&state, "mixed").is_none(), "nothing left to release");
}
