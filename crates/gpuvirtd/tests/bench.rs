//! Benchmark on the large synthetic host (64 GPUs, 2048 mdevs, 5000 PCI functions), materialised
//! as a plain tmpfs tree as the peers' baselines are: start-up time, daemon RSS, uevent →
//! PropertiesChanged latency at a client, and `gpuvirtctl list` beside `mdevctl list` and
//! `lspci -D -nn -k` on the same tree (hyperfine).
//!
//! Not part of the normal run (it takes about a minute and needs root for mdevctl's mount
//! namespace):
//!
//! ```sh
//! cargo test --release -p gpuvirtd --test bench -- --ignored --nocapture
//! ```
//!
//! Env: `BENCH_TREE` (default `/dev/shm/gpuvirtd-bench-large`), `BENCH_EVENTS` (default 300).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_sim::generate::{generate, GenParams, Preset};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::socket::Broadcaster;
use gpuvirt_sim::{Backend, Uevent};

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

/// Median of a hyperfine run, in milliseconds.
fn hyperfine(label: &str, command: &[&str], env: &[(&str, &str)]) -> Option<f64> {
    let json = std::env::temp_dir().join(format!("gpuvirtd-bench-{label}.json"));
    let status = Command::new(command[0])
        .args(&command[1..])
        .envs(env.iter().copied())
        .args(["--export-json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        eprintln!("{label}: hyperfine failed");
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).ok()?).ok()?;
    v["results"][0]["median"].as_f64().map(|s| s * 1000.0)
}

fn materialise_large(tree: &Path) -> (usize, usize) {
    let marker = tree.join(".gpuvirtd-bench-complete");
    let fixture = generate(&GenParams::preset(Preset::Large)).unwrap();
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn large_host() {
    let tree = PathBuf::from(
        std::env::var("BENCH_TREE").unwrap_or_else(|_| "/dev/shm/gpuvirtd-bench-large".into()),
    );
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let started = Instant::now();
    let (functions, mdevs) = materialise_large(&tree);
    eprintln!(
        "large host: {functions} PCI functions, {mdevs} mdevs, tree ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("uevent.sock");
    let broadcaster = Arc::new(Broadcaster::with_capacity(1 << 16));
    broadcaster.listen(&socket).unwrap();
    let bus = Bus::start();
    let started = Instant::now();
    let daemon = Daemon::start(
        &bus,
        &tree,
        &format!("sim:{}", socket.display()),
        sock_dir.path(),
    )
    .await;
    let startup = started.elapsed();
    let (rss_start, _) = rss_kib(daemon.pid());

    // Event → signal: toggle one GPU's driver_override in the tree and announce it.
    let conn = bus.connect().await;
    let gpus = gpuvirt_api::ManagerProxy::new(&conn).await.unwrap();
    let _ = gpus.version().await.unwrap();
    let host = exported(&conn).await;
    let gpu_path = host.keys().find(|p| p.contains("/gpus/")).unwrap().clone();
    let address = host[&gpu_path]["org.gpuvirt.GpuVirt1.Gpu"]["PciAddress"]
        .trim_matches('"')
        .to_owned();
    let dev = std::fs::canonicalize(tree.join("sys/bus/pci/devices").join(&address)).unwrap();
    let devpath = format!("/{}", dev.strip_prefix(tree.join("sys")).unwrap().display());
    let recorder = SignalRecorder::start(&conn).await;
    let mut latencies = Vec::with_capacity(events);
    for i in 0..events {
        let value = if i % 2 == 0 { "vfio-pci\n" } else { "(null)\n" };
        std::fs::write(dev.join("driver_override"), value).unwrap();
        let sent = Instant::now();
        broadcaster.publish(&[Uevent::new("change", &devpath, "pci")]);
        let deadline = sent + Duration::from_secs(5);
        loop {
            let got = recorder.take_timed();
            if let Some((at, _)) = got
                .iter()
                .find(|(_, l)| l.starts_with(&format!("PropertiesChanged {gpu_path}")))
            {
                latencies.push(at.duration_since(sent));
                break;
            }
            assert!(Instant::now() < deadline, "no signal for event {i}");
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
    }
    latencies.sort();
    let (rss_end, hwm) = rss_kib(daemon.pid());

    // gpuvirtctl list against peers, same tree.
    let ctl = gpuvirtctl();
    let ctl = ctl.to_str().unwrap();
    let list = hyperfine(
        "ctl-list",
        &[
            "hyperfine",
            "-N",
            "--warmup",
            "3",
            "--min-runs",
            "20",
            &format!("{ctl} --bus-address {} list --json", bus.address),
        ],
        &[],
    );
    let list_table = hyperfine(
        "ctl-list-table",
        &[
            "hyperfine",
            "-N",
            "--warmup",
            "3",
            "--min-runs",
            "20",
            &format!("{ctl} --bus-address {} list", bus.address),
        ],
        &[],
    );
    let lspci = hyperfine(
        "lspci",
        &[
            "hyperfine",
            "-N",
            "--warmup",
            "3",
            "--min-runs",
            "10",
            &format!(
                "lspci -A linux-sysfs -O sysfs.path={}/sys/bus/pci -D -nn -k",
                tree.display()
            ),
        ],
        &[],
    );
    // Debian's mdevctl 1.2 has no root knob: a private mount namespace binds the tree on /sys.
    let script = format!(
        "mount --bind {t}/sys /sys && mkdir -p {t}/etc/mdevctl.d && mount --bind {t}/etc/mdevctl.d /etc/mdevctl.d && exec hyperfine -N --warmup 3 --min-runs 10 'mdevctl list' --export-json \"$0\"",
        t = tree.display()
    );
    let json = std::env::temp_dir().join("gpuvirtd-bench-mdevctl.json");
    let mdevctl = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::read_to_string(&json).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["results"][0]["median"].as_f64())
        .map(|s| s * 1000.0);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"));
    println!("\n## gpuvirtd on the large synthetic host ({functions} PCI functions, 64 GPUs, {mdevs} mdevs; tmpfs tree)\n");
    println!("| measure | value |\n|---|---|");
    println!(
        "| start-up to bus name (scan + export) | {:.0} ms |",
        ms(startup)
    );
    println!(
        "| uevent → PropertiesChanged at a client, median / p95 / max ({} events) | {:.2} / {:.2} / {:.2} ms |",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "| daemon RSS after start / after events / peak | {:.1} / {:.1} / {:.1} MiB |",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("| `gpuvirtctl list --json` (median) | {} |", fmt(list));
    println!("| `gpuvirtctl list` (median) | {} |", fmt(list_table));
    println!(
        "| `mdevctl list` 1.2 (median, same tree) | {} |",
        fmt(mdevctl)
    );
    println!("| `lspci -D -nn -k` (median, same tree) | {} |", fmt(lspci));
    drop(daemon);
}
