//! A burst of 10,000 uevents (real changes mixed with duplicates, stale and unknown events)
//! leaves the exported state equal to what a freshly started daemon exports.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use gpuvirt_sim::Uevent;

const BURST: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_leave_state_equal_to_a_fresh_scan() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("mdev-server-8gpu");
    let bus = Bus::start();
    let daemon = Daemon::start(
        &bus,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        host.dir.path(),
    )
    .await;
    let conn = bus.connect().await;
    let before = exported(&conn).await;

    // Devpaths to replay: every PCI function, mdev and a few that mean nothing to gpuvirt.
    let (pci, mdevs) = host.with_kernel_mut(|k| {
        let pci: Vec<String> = k
            .pci_addresses()
            .into_iter()
            .filter_map(|a| {
                k.device_path(a)
                    .map(|p| format!("/{}", p.trim_start_matches('/').trim_start_matches("sys/")))
            })
            .collect();
        (pci, k.mdevs())
    });
    assert!(!pci.is_empty() && !mdevs.is_empty());
    let parents: Vec<String> = std::fs::read_dir(host.root().join("sys/class/mdev_bus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();

    let mut emitted = 0usize;
    let mut real_changes = 0usize;
    let mut created = Vec::new();
    let mut batch = Vec::new();
    let mut i = 0usize;
    while emitted < BURST {
        // Every 50th step changes the host for real through the mount (its own uevents count).
        if i % 50 == 0 {
            let parent = &parents[(i / 50) % parents.len()];
            let types = host
                .root()
                .join("sys/class/mdev_bus")
                .join(parent)
                .join("mdev_supported_types");
            let free = std::fs::read_dir(&types).unwrap().find_map(|t| {
                let t = t.unwrap().path();
                let n: u32 = std::fs::read_to_string(t.join("available_instances"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                (n > 0).then_some(t)
            });
            if (i / 50) % 3 == 2 {
                if let Some(uuid) = created.pop() {
                    host.write(&format!("sys/bus/mdev/devices/{uuid}/remove"), "1")
                        .unwrap();
                    real_changes += 1;
                    emitted += 1;
                }
            } else if let Some(t) = free {
                let uuid = uuid::Uuid::new_v4();
                let rel = t.strip_prefix(host.root()).unwrap().join("create");
                host.write(rel.to_str().unwrap(), &uuid.to_string())
                    .unwrap();
                created.push(uuid);
                real_changes += 1;
                emitted += 1;
            }
        }
        let ev = match i % 7 {
            0 | 1 => Uevent::new("change", &pci[i % pci.len()], "pci"),
            2 => Uevent::new("bind", &pci[(i * 3) % pci.len()], "pci").with("DRIVER", "nvidia"),
            3 => {
                let (uuid, parent, _) = &mdevs[i % mdevs.len()];
                let parent_path = host
                    .with_kernel_mut(|k| k.parent_path(parent))
                    .unwrap_or_default();
                Uevent::new(
                    "change",
                    &format!(
                        "/{}/{uuid}",
                        parent_path
                            .trim_start_matches('/')
                            .trim_start_matches("sys/")
                    ),
                    "mdev",
                )
            }
            4 => Uevent::new("add", "/devices/virtual/vfio/1", "vfio"),
            5 => Uevent::new("change", &pci[(i * 5) % pci.len()], "pci")
                .with("MDEV_STATE", "registered"),
            // Something gpuvirt does not understand: a full rescan, rarely.
            _ if i % 1000 == 6 => Uevent::new("add", "/devices/virtual/net/lo", "net"),
            _ => Uevent::new("add", &pci[(i * 11) % pci.len()], "pci"),
        };
        batch.push(ev);
        emitted += 1;
        i += 1;
        if batch.len() == 500 {
            host.mount.events().publish(&batch);
            batch.clear();
        }
    }
    host.mount.events().publish(&batch);
    assert!(real_changes >= 100, "only {real_changes} real changes");

    // A second daemon, started now on its own bus, is the fresh scan to compare with.
    let fresh_bus = Bus::start();
    let fresh = Daemon::start(&fresh_bus, host.root(), "none", host.dir.path()).await;
    let fresh_conn = fresh_bus.connect().await;
    let expected = exported(&fresh_conn).await;
    assert_ne!(expected, before, "the burst changed nothing real");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = exported(&conn).await;
        if now == expected {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = expected.keys().filter(|k| !now.contains_key(*k)).collect();
            let extra: Vec<&String> = now.keys().filter(|k| !expected.contains_key(*k)).collect();
            let differing: Vec<&String> = expected
                .iter()
                .filter(|(k, v)| now.get(*k).is_some_and(|n| n != *v))
                .map(|(k, _)| k)
                .collect();
            panic!(
                "state after the burst differs from a fresh scan: missing {missing:?}, extra {extra:?}, differing {differing:?}\n{}",
                daemon.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log();
    eprintln!(
        "burst: {emitted} events, {real_changes} real changes; daemon: {} update passes, {} full rescans",
        log.matches("inventory updated").count(),
        log.matches("full rescan").count()
    );
    drop(fresh);
}
