//! What one kernel event costs gpuvirtd, measured from outside: the refresh passes it
//! triggers (their number, changes and elapsed time, from the daemon's debug log), the
//! uevent → PropertiesChanged latency at a client, and the daemon's memory (VmRSS/VmHWM).
//!
//! Not part of the normal run (timings on a loaded machine are not pass/fail material):
//!
//! ```sh
//! cargo test --release -p gpuvirtd --test event_cost -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `host_event_cost` uses the synthetic host `COST_SCALE` (small|medium|large, default large)
//! materialised as a tmpfs tree (the same tree and path as tests/bench.rs, so either builds
//! it once); `COST_EVENTS` latency samples (default 300), `COST_BURST` burst events (default
//! 10000). `runbook_mdev_passes` runs on the FUSE-simulated runbook host and prints the passes
//! one mdev create/remove costs, through sysfs (as mdevctl does) and through the D-Bus API.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_api as api;
use gpuvirt_sim::generate::{generate, GenParams, Preset};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::socket::Broadcaster;
use gpuvirt_sim::{Backend, Uevent};
use zbus::zvariant::{OwnedObjectPath, Value};

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Threads of `pid`.
fn threads(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// One `inventory updated` line of the daemon's log: (changes, elapsed).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pass {
    changes: usize,
    elapsed: Duration,
}

/// Parses a `Debug`-printed [`Duration`] (`47.1ms`, `812.3µs`, `1.2s`, `950ns`).
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" | "us" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Every refresh pass the daemon logged, in order.
fn passes(log: &str) -> Vec<Pass> {
    log.lines()
        .filter(|l| l.contains("inventory updated"))
        .filter_map(|l| {
            let value = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_owned)
            };
            Some(Pass {
                changes: value("changes=")?.parse().ok()?,
                elapsed: parse_duration(&value("elapsed=")?)?,
            })
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p99 of `samples`, in ms.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    (ms(percentile(samples, 0.5)), ms(percentile(samples, 0.99)))
}

fn materialise(tree: &Path, preset: Preset) -> (usize, usize) {
    let marker = tree.join(".gpuvirtd-bench-complete");
    let fixture = generate(&GenParams::preset(preset)).unwrap();
    let kernel = Kernel::from_fixture(&fixture).unwrap();
    let counts = (kernel.pci_addresses().len(), kernel.mdevs().len());
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(tree);
        std::fs::create_dir_all(tree).unwrap();
        gpuvirt_sim::materialize::materialize(kernel.tree(), tree).unwrap();
        std::fs::write(&marker, "").unwrap();
    }
    counts
}

/// Waits for the PropertiesChanged of `path`; its arrival time.
async fn await_change(recorder: &SignalRecorder, path: &str, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    let wanted = format!("PropertiesChanged {path}");
    loop {
        if let Some((at, _)) = recorder
            .take_timed()
            .into_iter()
            .find(|(_, l)| l.starts_with(&wanted))
        {
            return Some(at);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
async fn host_event_cost() {
    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let scale = std::env::var("COST_SCALE").unwrap_or_else(|_| "large".into());
    let preset = match scale.as_str() {
        "small" => Preset::Small,
        "medium" => Preset::Medium,
        _ => Preset::Large,
    };
    let tree = PathBuf::from(format!("/dev/shm/gpuvirtd-bench-{scale}"));
    let events = env_num("COST_EVENTS", 300);
    let burst = env_num("COST_BURST", 10_000);
    let (functions, mdevs) = materialise(&tree, preset);

    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("uevent.sock");
    let broadcaster = Arc::new(Broadcaster::with_capacity(1 << 16));
    broadcaster.listen(&socket).unwrap();
    let bus = Bus::start();
    let daemon = Daemon::start(
        &bus,
        &tree,
        &format!("sim:{}", socket.display()),
        sock_dir.path(),
    )
    .await;
    let (rss_start, hwm_start) = rss_kib(daemon.pid());

    let conn = bus.connect().await;
    let host = exported(&conn).await;
    let (rss_after_get, hwm_after_get) = rss_kib(daemon.pid());
    let gpu_path = host.keys().find(|p| p.contains("/gpus/")).unwrap().clone();
    let address = host[&gpu_path]["org.gpuvirt.GpuVirt1.Gpu"]["PciAddress"]
        .trim_matches('"')
        .to_owned();
    let dev = std::fs::canonicalize(tree.join("sys/bus/pci/devices").join(&address)).unwrap();
    let devpath = format!("/{}", dev.strip_prefix(tree.join("sys")).unwrap().display());
    let recorder = SignalRecorder::start(&conn).await;
    // Each flip changes the value, whatever an earlier run (here or tests/bench.rs, which
    // share the tree) left there.
    let flip = |dev: &Path| {
        let file = dev.join("driver_override");
        let value = match std::fs::read_to_string(&file).unwrap().trim() {
            "(null)" => "vfio-pci\n",
            _ => "(null)\n",
        };
        std::fs::write(file, value).unwrap();
    };

    let logged_before = passes(&daemon.log()).len();
    let mut latencies = Vec::with_capacity(events);
    for i in 0..events {
        flip(&dev);
        let sent = Instant::now();
        broadcaster.publish(&[Uevent::new("change", &devpath, "pci")]);
        let at = await_change(&recorder, &gpu_path, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no signal for event {i}"));
        latencies.push(at.duration_since(sent));
    }
    // The last pass may log after its signal went out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged = passes(&daemon.log());
    let event_passes = &logged[logged_before..];
    let mut pass_times: Vec<Duration> = event_passes.iter().map(|p| p.elapsed).collect();
    let (latency_median, latency_p99) = summary(&mut latencies);
    let (pass_median, pass_p99) = summary(&mut pass_times);

    // A burst over every PCI function, the last event a real change.
    let all: Vec<String> = std::fs::read_dir(tree.join("sys/bus/pci/devices"))
        .unwrap()
        .filter_map(|e| {
            let p = std::fs::canonicalize(e.ok()?.path()).ok()?;
            Some(format!(
                "/{}",
                p.strip_prefix(tree.join("sys")).ok()?.display()
            ))
        })
        .collect();
    let mut batch: Vec<Uevent> = (0..burst.saturating_sub(1))
        .map(|i| Uevent::new("change", &all[i % all.len()], "pci"))
        .collect();
    flip(&dev);
    batch.push(Uevent::new("change", &devpath, "pci"));
    let _ = recorder.take_timed();
    let sent = Instant::now();
    for chunk in batch.chunks(256) {
        broadcaster.publish(chunk);
    }
    let burst_done = await_change(&recorder, &gpu_path, Duration::from_secs(120))
        .await
        .map(|at| at.duration_since(sent));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let burst_passes = passes(&daemon.log()).len() - logged.len();
    let (rss_end, hwm_end) = rss_kib(daemon.pid());
    let after = exported(&conn).await;
    let (_, hwm_final) = rss_kib(daemon.pid());

    let result = serde_json::json!({
        "scale": scale,
        "functions": functions,
        "mdevs": mdevs,
        "objects": host.len(),
        "latency_samples": latencies.len(),
        "latency_median_ms": latency_median,
        "latency_p99_ms": latency_p99,
        "passes_per_event": event_passes.len() as f64 / events as f64,
        "pass_elapsed_median_ms": pass_median,
        "pass_elapsed_p99_ms": pass_p99,
        "burst_events": burst,
        "burst_ms": burst_done.map(ms),
        "burst_passes": burst_passes,
        "daemon_threads": threads(daemon.pid()),
        "rss_kib": {
            "start": rss_start,
            "after_get_managed_objects": rss_after_get,
            "after_burst": rss_end,
        },
        "hwm_kib": {
            "start": hwm_start,
            "after_get_managed_objects": hwm_after_get,
            "after_burst": hwm_end,
            "final": hwm_final,
        },
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    assert_eq!(
        after.len(),
        host.len(),
        "the burst changed the object count"
    );
}

const GPU: &str = "0000:41:00.0";

fn options() -> HashMap<&'static str, Value<'static>> {
    HashMap::new()
}

/// The passes logged from `from` on, once the log has been quiet for a while.
async fn settled_passes(daemon: &Daemon, from: usize) -> Vec<Pass> {
    let mut seen = passes(&daemon.log()).len();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = passes(&daemon.log()).len();
        if now == seen {
            return passes(&daemon.log()).split_off(from.min(now));
        }
        seen = now;
    }
}

fn show(label: &str, passes: &[Pass]) {
    let text: Vec<String> = passes
        .iter()
        .map(|p| format!("changes={} elapsed={:.2}ms", p.changes, ms(p.elapsed)))
        .collect();
    println!("{label}: {} passes [{}]", passes.len(), text.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
async fn runbook_mdev_passes() {
    if !fuse_available() {
        return;
    }
    let sim = SimHost::boot("runbook");
    let bus = Bus::start();
    let daemon = Daemon::start(
        &bus,
        sim.root(),
        &format!("sim:{}", sim.socket.display()),
        sim.dir.path(),
    )
    .await;
    let conn = bus.connect().await;
    let recorder = SignalRecorder::start(&conn).await;
    let uuid = "aa618089-8b16-4d01-a136-25a0f3c73123";
    let mdev_path = api::mdev_path(&uuid.parse().unwrap()).to_string();
    let gpu_path = api::gpu_path(&GPU.parse().unwrap()).to_string();
    let added = |l: &[String]| {
        l.iter()
            .any(|l| l.starts_with("InterfacesAdded") && l.contains(&mdev_path))
    };
    let removed = |l: &[String]| {
        l.iter()
            .any(|l| l.starts_with("InterfacesRemoved") && l.contains(&mdev_path))
    };
    for round in 0..3 {
        let from = passes(&daemon.log()).len();
        let sent = Instant::now();
        sim.write(
            &format!("sys/bus/pci/devices/{GPU}/mdev_supported_types/nvidia-300/create"),
            uuid,
        )
        .unwrap();
        recorder.settle(added, Duration::from_millis(1)).await;
        let seen = sent.elapsed();
        show(
            &format!("sysfs create #{round} (signal after {:.1}ms)", ms(seen)),
            &settled_passes(&daemon, from).await,
        );
        let from = passes(&daemon.log()).len();
        sim.write(&format!("sys/bus/mdev/devices/{uuid}/remove"), "1")
            .unwrap();
        recorder.settle(removed, Duration::from_millis(1)).await;
        show(
            &format!("sysfs remove #{round}"),
            &settled_passes(&daemon, from).await,
        );
    }
    for round in 0..3 {
        let from = passes(&daemon.log()).len();
        let sent = Instant::now();
        let reply = conn
            .call_method(
                Some(api::BUS_NAME),
                gpu_path.as_str(),
                Some(api::SHARD_PARENT_INTERFACE),
                "CreateMdev",
                &("nvidia-300", uuid, options()),
            )
            .await
            .unwrap_or_else(|e| panic!("CreateMdev: {e}\n{}", daemon.log()));
        let path: OwnedObjectPath = reply.body().deserialize().unwrap();
        assert_eq!(path.as_str(), mdev_path);
        let replied = sent.elapsed();
        show(
            &format!(
                "D-Bus CreateMdev #{round} (reply after {:.1}ms)",
                ms(replied)
            ),
            &settled_passes(&daemon, from).await,
        );
        let from = passes(&daemon.log()).len();
        conn.call_method(
            Some(api::BUS_NAME),
            mdev_path.as_str(),
            Some(api::MDEV_INTERFACE),
            "Remove",
            &(options(),),
        )
        .await
        .unwrap_or_else(|e| panic!("Remove: {e}\n{}", daemon.log()));
        show(
            &format!("D-Bus Remove #{round}"),
            &settled_passes(&daemon, from).await,
        );
        let _ = recorder.take();
    }
}

#[test]
fn log_durations_parse() {
    assert_eq!(parse_duration("47ms"), Some(Duration::from_millis(47)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("250µs"), Some(Duration::from_micros(250)));
    assert_eq!(parse_duration("12ns"), Some(Duration::from_nanos(12)));
    assert_eq!(parse_duration("12parsecs"), None);
    let log =
        "2026-11-25T21:00:00Z DEBUG gpuvirtd::actor: inventory updated changes=4 elapsed=47.5ms\n\
               2026-11-25T21:00:00Z DEBUG gpuvirtd::actor: something else\n";
    assert_eq!(
        passes(log),
        [Pass {
            changes: 4,
            elapsed: Duration::from_micros(47_500)
        }]
    );
}
