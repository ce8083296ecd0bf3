//! Benchmark of gpuvirtd on a synthetic host (small, medium or large), materialised as a plain
//! tmpfs tree as the peers' baselines are: cold start to READY (sd_notify) and to the bus name,
//! daemon RSS, uevent → PropertiesChanged latency at a client (median/p99), throughput under a
//! burst of events, and the `gpuvirtctl` read commands against the warm daemon (hyperfine, peak
//! RSS). `bench/run` runs it per host beside the peers and turns `BENCH_OUT` into
//! docs/performance.md.
//!
//! Not part of the normal run:
//!
//! ```sh
//! cargo test --release -p gpuvirtd --test bench -- --ignored --nocapture
//! ```
//!
//! Env: `BENCH_SCALE` (small|medium|large, default large), `BENCH_TREE` (default
//! `/dev/shm/gpuvirtd-bench-<scale>`; materialised unless it holds `.gpuvirtd-bench-complete`),
//! `BENCH_EVENTS` (latency samples, default 300), `BENCH_BURST` (default 10000), `BENCH_RUNS`
//! (hyperfine minimum runs, default 20), `BENCH_OUT` (JSON results file).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Peak RSS (KiB) of one run of `command` (its own and its children's, via python's getrusage).
fn peak_rss_kib(command: &[&str]) -> Option<u64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import resource,subprocess,sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        ])
        .args(command)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Total syscalls of one run of `command` (`strace -f -c`), if strace is there.
fn syscall_count(command: &[&str]) -> Option<u64> {
    let out = tempfile::NamedTempFile::new().ok()?;
    Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(out.path())
        .args(command)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(out.path()).ok()?;
    // The totals line: "100.00 <seconds> <usecs/call> <calls> [<errors>] total".
    let total = text.lines().find(|l| l.trim_end().ends_with("total"))?;
    total.split_whitespace().nth(3)?.parse().ok()
}

/// Waits for the PropertiesChanged of `path` announced after `sent`; its arrival time.
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
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn host() {
    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let scale = std::env::var("BENCH_SCALE").unwrap_or_else(|_| "large".into());
    let preset = match scale.as_str() {
        "small" => Preset::Small,
        "medium" => Preset::Medium,
        _ => Preset::Large,
    };
    let tree = PathBuf::from(
        std::env::var("BENCH_TREE").unwrap_or_else(|_| format!("/dev/shm/gpuvirtd-bench-{scale}")),
    );
    let events = env_num("BENCH_EVENTS", 300);
    let burst = env_num("BENCH_BURST", 10_000);
    let runs = env_num("BENCH_RUNS", 20).to_string();
    let started = Instant::now();
    let (functions, mdevs) = materialise(&tree, preset);
    eprintln!(
        "{scale} host: {functions} PCI functions, {mdevs} mdevs, tree ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("uevent.sock");
    let broadcaster = Arc::new(Broadcaster::with_capacity(1 << 16));
    broadcaster.listen(&socket).unwrap();
    let bus = Bus::start();

    // READY=1 arrives on NOTIFY_SOCKET after the scan, the export and the bus name.
    let notify_path = sock_dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let ready_at = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        while let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Some(Instant::now());
            }
        }
        None
    });
    let started = Instant::now();
    let daemon = Daemon::start_with_env(
        &bus,
        &tree,
        &format!("sim:{}", socket.display()),
        sock_dir.path(),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .await;
    let to_name = started.elapsed();
    let to_ready = ready_at
        .join()
        .unwrap()
        .map(|at| at.duration_since(started));
    let (rss_start, _) = rss_kib(daemon.pid());

    // Event → signal: toggle one GPU's driver_override in the tree and announce it.
    let conn = bus.connect().await;
    let manager = gpuvirt_api::ManagerProxy::new(&conn).await.unwrap();
    let _ = manager.version().await.unwrap();
    let host = exported(&conn).await;
    let objects = host.len();
    let gpu_path = host.keys().find(|p| p.contains("/gpus/")).unwrap().clone();
    let address = host[&gpu_path]["org.gpuvirt.GpuVirt1.Gpu"]["PciAddress"]
        .trim_matches('"')
        .to_owned();
    let dev = std::fs::canonicalize(tree.join("sys/bus/pci/devices").join(&address)).unwrap();
    let devpath = format!("/{}", dev.strip_prefix(tree.join("sys")).unwrap().display());
    let recorder = SignalRecorder::start(&conn).await;
    // Toggles from what the file holds: a tree reused from an earlier run may hold either.
    let flip = |dev: &Path| {
        let path = dev.join("driver_override");
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        let value = if now.trim() == "vfio-pci" {
            "(null)\n"
        } else {
            "vfio-pci\n"
        };
        std::fs::write(path, value).unwrap();
    };
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
    latencies.sort();

    // Burst: `burst` change events spread over every PCI function of the host (each one a
    // re-read and a diff), the last one a real change whose signal marks the end.
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
    let (rss_end, hwm) = rss_kib(daemon.pid());

    // The CLI read commands against the warm daemon.
    let ctl = gpuvirtctl();
    let ctl = ctl.to_str().unwrap();
    let mut cli = serde_json::Map::new();
    for (label, args) in [
        ("gpuvirtctl list --json", "list --json"),
        ("gpuvirtctl list", "list"),
        ("gpuvirtctl tree", "tree"),
        ("gpuvirtctl types", "types"),
        ("gpuvirtctl mdev list", "mdev list"),
        ("gpuvirtctl groups", "groups"),
        // The floor under every read: process start, connection, the Manager's properties.
        ("gpuvirtctl version", "version"),
    ] {
        let command = format!("{ctl} --bus-address {} {args}", bus.address);
        let median = hyperfine(
            &label.replace(' ', "_"),
            &[
                "hyperfine",
                "-N",
                "--warmup",
                "3",
                "--min-runs",
                &runs,
                &command,
            ],
            &[],
        );
        let mut argv = vec![ctl, "--bus-address", bus.address.as_str()];
        argv.extend(args.split(' '));
        let rss = peak_rss_kib(&argv);
        let syscalls = syscall_count(&argv);
        cli.insert(
            label.to_owned(),
            serde_json::json!({"median_ms": median, "peak_rss_kib": rss, "syscalls": syscalls}),
        );
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let result = serde_json::json!({
        "scale": scale,
        "functions": functions,
        "mdevs": mdevs,
        "objects": objects,
        "start_to_name_ms": ms(to_name),
        "start_to_ready_ms": to_ready.map(ms),
        "latency_samples": latencies.len(),
        "latency_median_ms": ms(percentile(&latencies, 0.5)),
        "latency_p99_ms": ms(percentile(&latencies, 0.99)),
        "latency_max_ms": ms(*latencies.last().unwrap()),
        "burst_events": burst,
        "burst_ms": burst_done.map(ms),
        "burst_events_per_s": burst_done.map(|d| burst as f64 / d.as_secs_f64()),
        "daemon_rss_start_kib": rss_start,
        "daemon_rss_end_kib": rss_end,
        "daemon_hwm_kib": hwm,
        "cli": cli,
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    }
    drop(daemon);
}

/// One mdev to create: its parent (a `sys/class/mdev_bus` name), type and UUID.
struct Planned {
    parent: String,
    type_id: String,
    uuid: String,
}

/// `count` creations spread round-robin over every mdev parent of the mounted host, each parent
/// with the type it has most room for (one type per parent, so shared-pool types never steal
/// each other's room); `salt` keeps the UUIDs of different rounds apart.
fn plan_creations(sys: &Path, count: usize, salt: u32) -> Vec<Planned> {
    let mut parents: Vec<(String, String, usize)> = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/mdev_bus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let types = sys
            .join("class/mdev_bus")
            .join(&name)
            .join("mdev_supported_types");
        let best = std::fs::read_dir(&types)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let t = e.ok()?.file_name().to_string_lossy().into_owned();
                let room: usize =
                    std::fs::read_to_string(types.join(&t).join("available_instances"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                Some((room, t))
            })
            .max();
        if let Some((room, t)) = best {
            parents.push((name, t, room));
        }
    }
    let mut plan = Vec::with_capacity(count);
    let mut used = vec![0usize; parents.len()];
    while plan.len() < count {
        let before = plan.len();
        for (i, (parent, type_id, room)) in parents.iter().enumerate() {
            if plan.len() == count {
                break;
            }
            if used[i] < *room {
                used[i] += 1;
                let n = plan.len() as u32;
                plan.push(Planned {
                    parent: parent.clone(),
                    type_id: type_id.clone(),
                    uuid: format!("b3e0{salt:04x}-0000-4000-8000-{n:012x}"),
                });
            }
        }
        assert!(
            plan.len() > before,
            "the host has room for only {} mdevs, {count} wanted",
            plan.len()
        );
    }
    plan
}

/// Waits until neither the daemon nor this process (whose FUSE threads serve the daemon's
/// sysfs reads: a daemon blocked on FUSE uses no CPU of its own) has used CPU for 400 ms, at
/// most a minute: the read-back of the previous phase's uevents (thousands on the large host,
/// or a full rescan) must not run into the next measurement, in either column. 400 ms, not
/// one 200 ms window: the policy runtime re-plans 200 ms after the last event that touched a
/// governed device (with a full rescan while the host differs from the policy), and a window
/// that ended just before that timer let its rescan land inside the next timed step (the
/// 160-210 ms Reconciles in 2 of 5 rounds on medium).
async fn settle(pid: u32) {
    let cpu = || cpu_ticks(&pid.to_string()) + cpu_ticks("self");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cpu();
    let mut idle_windows = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cpu();
        if now == last {
            idle_windows += 1;
            if idle_windows == 2 {
                return;
            }
        } else {
            idle_windows = 0;
        }
        last = now;
    }
    eprintln!("gpuvirtd still busy after a minute; measuring anyway");
}

/// User + system CPU ticks of `/proc/<proc>/stat` (every thread of the process).
fn cpu_ticks(proc: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// A monitor-mode device policy with one shard rule per parent of `plan` (its type, as many
/// vGPUs as the plan puts there); no rules for an empty plan.
fn policy_text(plan: &[Planned]) -> String {
    let mut per_parent: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for p in plan {
        *per_parent.entry((&p.parent, &p.type_id)).or_default() += 1;
    }
    let mut text =
        String::from("version = 1\ndefault_role = \"unmanaged\"\nenforcement = \"monitor\"\n");
    for (i, ((parent, type_id), count)) in per_parent.into_iter().enumerate() {
        text.push_str(&format!(
            "\n[[gpu]]\nname = \"bench{i}\"\nmatch = {{ address = \"{parent}\" }}\n\
             role = \"shard\"\nshard = {{ type = \"{type_id}\", count = {count} }}\n"
        ));
    }
    text
}

/// The UUIDs of the mdevs the simulated kernel has now.
fn mdevs_in_sysfs(sys: &Path) -> Vec<String> {
    std::fs::read_dir(sys.join("bus/mdev/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

async fn call_manager<R>(conn: &zbus::Connection, method: &str) -> R
where
    R: zbus::export::serde::de::DeserializeOwned + zbus::zvariant::Type,
{
    let options = std::collections::HashMap::<String, zbus::zvariant::Value>::new();
    let reply = conn
        .call_method(
            Some(gpuvirt_api::BUS_NAME),
            gpuvirt_api::MANAGER_PATH,
            Some(gpuvirt_api::MANAGER_INTERFACE),
            method,
            &(options,),
        )
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    reply.body().deserialize::<R>().unwrap()
}

/// How many mdev objects gpuvirtd exports now (the children of the `mdevs` node).
async fn exported_mdevs(conn: &zbus::Connection) -> usize {
    let reply = conn
        .call_method(
            Some(gpuvirt_api::BUS_NAME),
            gpuvirt_api::MDEVS_PATH,
            Some("org.freedesktop.DBus.Introspectable"),
            "Introspect",
            &(),
        )
        .await;
    match reply {
        Ok(m) => m
            .body()
            .deserialize::<String>()
            .unwrap()
            .matches("<node name=\"")
            .count(),
        Err(_) => 0,
    }
}

async fn wait_for_mdevs(conn: &zbus::Connection, wanted: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while exported_mdevs(conn).await != wanted {
        assert!(
            Instant::now() < deadline,
            "gpuvirtd never showed {wanted} mdevs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_attr(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Removes the planned mdevs by their `remove` files and waits until the daemon shows none.
async fn remove_all(sys: &Path, plan: &[Planned], conn: &zbus::Connection) {
    for p in plan {
        write_attr(
            &sys.join("bus/mdev/devices").join(&p.uuid).join("remove"),
            "1",
        );
    }
    wait_for_mdevs(conn, 0).await;
}

/// Creating N mdevs through gpuvirtd (`ShardParent.CreateMdev`, one D-Bus call each, as root
/// without polkit: D-Bus round trip, plan, ledger record with fsync, the write, the check,
/// the tree refresh) against writing the same UUIDs to the same `create` files directly, on
/// the FUSE-mounted simulated kernel, gpuvirtd running in both cases. `BENCH_APPLY` is a list
/// of counts (default `64`), `BENCH_APPLY_MANUAL_MAX` the largest count also created by
/// sequential CreateMdev calls (default: every count), `BENCH_APPLY_ROUNDS` the rounds for counts up to 256 (default
/// 3; larger counts run once), the host shape `BENCH_SCALE` without its mdevs (medium or
/// large), the ledger on disk under /var/tmp as it would be in /var/lib. `BENCH_APPLY_OUT`:
/// JSON results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn apply() {
    let scale = std::env::var("BENCH_SCALE").unwrap_or_else(|_| "medium".into());
    let preset = match scale.as_str() {
        "large" => Preset::Large,
        _ => Preset::Medium,
    };
    let counts: Vec<usize> = std::env::var("BENCH_APPLY")
        .unwrap_or_else(|_| "64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    // Counts above this skip the sequential CreateMdev calls (2048 of them take minutes).
    let manual_max: usize = std::env::var("BENCH_APPLY_MANUAL_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let rounds: usize = std::env::var("BENCH_APPLY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ApplyHost {
        dir: _dir,
        state,
        policy_path,
        mount,
        sys,
        bus,
        mut daemon,
        conn,
        functions,
    } = ApplyHost::start(preset, &scale).await;

    let mut results = Vec::new();
    let mut salt = 0u32;
    for &count in &counts {
        let rounds = if count <= 256 { rounds.max(1) } else { 1 };
        let mut direct = Vec::new();
        let mut via_daemon = Vec::new();
        let mut via_policy = Vec::new();
        let mut policy_tree = Vec::new();
        for _ in 0..rounds {
            salt += 1;
            let plan = plan_creations(&sys, count, salt);
            settle(daemon.id()).await;
            let t = Instant::now();
            for p in &plan {
                write_attr(
                    &sys.join("class/mdev_bus")
                        .join(&p.parent)
                        .join("mdev_supported_types")
                        .join(&p.type_id)
                        .join("create"),
                    &p.uuid,
                );
            }
            direct.push(t.elapsed());
            wait_for_mdevs(&conn, count).await;
            remove_all(&sys, &plan, &conn).await;

            salt += 1;
            let plan = plan_creations(&sys, count, salt);
            settle(daemon.id()).await;
            let t = Instant::now();
            for p in plan.iter().filter(|_| count <= manual_max) {
                let path = match p.parent.parse() {
                    Ok(address) => gpuvirt_api::gpu_path(&address),
                    Err(_) => gpuvirt_api::parent_path(&p.parent),
                };
                let options = std::collections::HashMap::<String, zbus::zvariant::Value>::new();
                conn.call_method(
                    Some(gpuvirt_api::BUS_NAME),
                    path.as_str(),
                    Some(gpuvirt_api::SHARD_PARENT_INTERFACE),
                    "CreateMdev",
                    &(p.type_id.as_str(), p.uuid.as_str(), options),
                )
                .await
                .unwrap_or_else(|e| panic!("CreateMdev {} on {}: {e}", p.uuid, p.parent));
            }
            if count <= manual_max {
                via_daemon.push(t.elapsed());
                // CreateMdev returns once the tree shows the mdev: nothing left to wait for.
                assert_eq!(exported_mdevs(&conn).await, count);
                remove_all(&sys, &plan, &conn).await;
            }

            // The same shape as a device policy (one shard rule per parent, its UUIDs derived
            // from rule, card and index), applied by one Reconcile: plan, ledger, writes.
            std::fs::write(&policy_path, policy_text(&plan)).unwrap();
            call_manager::<()>(&conn, "ReloadPolicy").await;
            settle(daemon.id()).await;
            let t = Instant::now();
            let (ok, report): (bool, String) = call_manager(&conn, "Reconcile").await;
            via_policy.push(t.elapsed());
            assert!(ok, "Reconcile failed: {report}");
            assert_eq!(mdevs_in_sysfs(&sys).len(), count, "{report}");
            // Until the daemon's tree shows all of them (the uevents' read-back).
            wait_for_mdevs(&conn, count).await;
            policy_tree.push(t.elapsed());
            std::fs::write(&policy_path, policy_text(&[])).unwrap();
            call_manager::<()>(&conn, "ReloadPolicy").await;
            let made: Vec<Planned> = mdevs_in_sysfs(&sys)
                .into_iter()
                .map(|uuid| Planned {
                    parent: String::new(),
                    type_id: String::new(),
                    uuid,
                })
                .collect();
            remove_all(&sys, &made, &conn).await;
        }
        direct.sort();
        via_daemon.sort();
        via_policy.sort();
        policy_tree.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (d, g) = (
            ms(direct[direct.len() / 2]),
            via_daemon
                .get(via_daemon.len() / 2)
                .map_or(f64::NAN, |x| ms(*x)),
        );
        let (pa, pt) = (
            ms(via_policy[via_policy.len() / 2]),
            ms(policy_tree[policy_tree.len() / 2]),
        );
        eprintln!(
            "{count} mdevs: direct writes {d:.1} ms, gpuvirtd CreateMdev {g:.1} ms ({:.2}x), \
             policy Reconcile {pa:.1} ms ({:.2}x; tree complete {pt:.1} ms), {rounds} round(s)",
            g / d,
            pa / d
        );
        results.push(serde_json::json!({
            "mdevs": count,
            "rounds": rounds,
            "direct_ms": d,
            "daemon_ms": g,
            "ratio": g / d,
            "policy_ms": pa,
            "policy_ratio": pa / d,
            "policy_tree_ms": pt,
            "policy_all_ms": via_policy.iter().map(|x| ms(*x)).collect::<Vec<_>>(),
            "direct_all_ms": direct.iter().map(|x| ms(*x)).collect::<Vec<_>>(),
            "daemon_all_ms": via_daemon.iter().map(|x| ms(*x)).collect::<Vec<_>>(),
        }));
    }
    let (rss, hwm) = rss_kib(daemon.id());
    let result = serde_json::json!({
        "scale": scale,
        "functions": functions,
        "ledger_dir": state.path().display().to_string(),
        "daemon_rss_kib": rss,
        "daemon_hwm_kib": hwm,
        "apply": results,
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    if let Ok(out) = std::env::var("BENCH_APPLY_OUT") {
        std::fs::write(out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(bus);
    mount.unmount().unwrap();
}

/// The apply benchmarks' host: the bench shape without its mdevs on the FUSE simulated kernel,
/// gpuvirtd on it (monitor-mode policy, ledger under /var/tmp as it would be in /var/lib) and a
/// client connection.
struct ApplyHost {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    policy_path: PathBuf,
    mount: gpuvirt_sim::fuse::SimMount<Kernel>,
    sys: PathBuf,
    bus: Bus,
    daemon: std::process::Child,
    conn: zbus::Connection,
    functions: usize,
}

impl ApplyHost {
    async fn start(preset: Preset, scale: &str) -> ApplyHost {
        use gpuvirt_sim::fuse::SimMount;
        let mut params = GenParams::preset(preset);
        params.mdevs = 0;
        params.defined_inactive = 0;
        let kernel = Kernel::from_fixture(&generate(&params).unwrap()).unwrap();
        let functions = kernel.pci_addresses().len();
        let dir = tempfile::Builder::new()
            .prefix("gpuvirtd-apply-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let state = tempfile::Builder::new()
            .prefix("gpuvirtd-apply-state-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().join("root");
        // Monitor mode: the daemon acts on the policy only when Reconcile asks it to.
        let policy_path = state.path().join("policy.toml");
        std::fs::write(&policy_path, policy_text(&[])).unwrap();
        let mount = SimMount::mount(Arc::new(std::sync::Mutex::new(kernel)), &root).unwrap();
        let socket = dir.path().join("uevent.sock");
        mount.listen_uevents(&socket).unwrap();
        let sys = mount.sys();
        let bus = Bus::start();
        let started = Instant::now();
        let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(mount.root())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--bus-address", &bus.address])
            .arg("--events")
            .arg(format!("sim:{}", socket.display()))
            .arg("--policy")
            .arg(&policy_path)
            .args(["--log", "info"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gpuvirtd.log")).unwrap())
            .spawn()
            .unwrap();
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        loop {
            let name = zbus::names::BusName::try_from(gpuvirt_api::BUS_NAME).unwrap();
            if dbus.name_has_owner(name).await.unwrap() {
                break;
            }
            assert!(
                daemon.try_wait().unwrap().is_none(),
                "gpuvirtd exited: {}",
                std::fs::read_to_string(dir.path().join("gpuvirtd.log")).unwrap_or_default()
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "gpuvirtd never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "apply on the {scale} shape ({functions} PCI functions, FUSE): gpuvirtd up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ApplyHost {
            dir,
            state,
            policy_path,
            mount,
            sys,
            bus,
            daemon,
            conn,
            functions,
        }
    }
}

/// Runs each command line as its own process from one bash loop and returns each call's wall
/// time in ms (bash's `EPOCHREALTIME` around the call: process start, the work, exit). With
/// `sys`, the loop runs in a private mount namespace where that tree is /sys and /etc/mdevctl.d
/// is an empty tmpfs (Debian's mdevctl has no root option), so both tools are timed from the
/// same kind of shell in the same kind of namespace. Any failed call fails the bench.
fn timed_calls(calls: &[Vec<String>], sys: &Path) -> Vec<f64> {
    let mut script = String::from(
        "set -e; mount --bind \"$1\" /sys; mount -t tmpfs none /etc/mdevctl.d; mkdir -p /etc/mdevctl.d/scripts.d/callouts /etc/mdevctl.d/scripts.d/notifiers; shift\n",
    );
    for argv in calls {
        let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
        script.push_str(&format!(
            "s=$EPOCHREALTIME; {} >/dev/null; e=$EPOCHREALTIME; echo \"$s $e\"\n",
            quoted.join(" ")
        ));
    }
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            &script,
            "timed",
        ])
        .arg(sys)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a timed call failed: {:?}",
        out.status
    );
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (s, e) = l.split_once(' ').unwrap();
            (e.parse::<f64>().unwrap() - s.parse::<f64>().unwrap()) * 1000.0
        })
        .collect();
    assert_eq!(times.len(), calls.len());
    times
}

fn median_ms(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    if t.is_empty() {
        return f64::NAN;
    }
    t[t.len() / 2]
}

/// One manual vGPU creation through gpuvirtd (`gpuvirtctl mdev create PARENT TYPE --uuid U`, one
/// process per vGPU: process start, bus connection, `CreateMdev`, the daemon's checks, ledger
/// record, the write, the tree refresh) against one `mdevctl start -p PARENT -t TYPE -u U` of the
/// same parents and types (process start, its checks, the write), sequentially, in turns over
/// `BENCH_CREATE_ROUNDS` rounds (default 3) of `BENCH_CREATE_CALLS` vGPUs each (default 16),
/// on the FUSE simulated kernel of the `BENCH_SCALE` shape (medium or large) without its mdevs,
/// gpuvirtd running in both columns. `BENCH_CREATE_OUT`: JSON results. The same comparison on
/// a real kernel's sysfs is the VM tier's `create-calls` scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn create_calls() {
    let scale = std::env::var("BENCH_SCALE").unwrap_or_else(|_| "medium".into());
    let preset = match scale.as_str() {
        "large" => Preset::Large,
        _ => Preset::Medium,
    };
    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = env_num("BENCH_CREATE_CALLS", 16);
    let rounds = env_num("BENCH_CREATE_ROUNDS", 3);
    let host = ApplyHost::start(preset, &scale).await;
    let ctl = gpuvirtctl();
    let ctl = ctl.to_str().unwrap();
    let mut via_ctl = Vec::new();
    let mut via_mdevctl = Vec::new();
    let mut salt = 0x100u32;
    for _ in 0..rounds {
        salt += 1;
        let plan = plan_creations(&host.sys, count, salt);
        settle(host.daemon.id()).await;
        let calls: Vec<Vec<String>> = plan
            .iter()
            .map(|p| {
                [
                    ctl,
                    "--bus-address",
                    &host.bus.address,
                    "--no-ask-password",
                    "mdev",
                    "create",
                    &p.parent,
                    &p.type_id,
                    "--uuid",
                    &p.uuid,
                ]
                .map(String::from)
                .to_vec()
            })
            .collect();
        via_ctl.extend(timed_calls(&calls, &host.sys));
        // `mdev create` returns once the daemon's tree shows the device.
        assert_eq!(exported_mdevs(&host.conn).await, count);
        remove_all(&host.sys, &plan, &host.conn).await;

        salt += 1;
        let plan = plan_creations(&host.sys, count, salt);
        settle(host.daemon.id()).await;
        let calls: Vec<Vec<String>> = plan
            .iter()
            .map(|p| {
                [
                    "mdevctl", "start", "-p", &p.parent, "-t", &p.type_id, "-u", &p.uuid,
                ]
                .map(String::from)
                .to_vec()
            })
            .collect();
        via_mdevctl.extend(timed_calls(&calls, &host.sys));
        assert_eq!(mdevs_in_sysfs(&host.sys).len(), count);
        wait_for_mdevs(&host.conn, count).await;
        remove_all(&host.sys, &plan, &host.conn).await;
    }
    let (g, m) = (median_ms(&via_ctl), median_ms(&via_mdevctl));
    eprintln!(
        "{scale}: gpuvirtctl mdev create {g:.1} ms per call, mdevctl start {m:.1} ms per call \
         ({:.2}x), {} calls each",
        g / m,
        via_ctl.len()
    );
    let result = serde_json::json!({
        "scale": scale,
        "functions": host.functions,
        "calls": via_ctl.len(),
        "gpuvirtctl_ms": g,
        "mdevctl_ms": m,
        "ratio": g / m,
        "gpuvirtctl_all_ms": via_ctl,
        "mdevctl_all_ms": via_mdevctl,
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    if let Ok(out) = std::env::var("BENCH_CREATE_OUT") {
        std::fs::write(out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    }
    let ApplyHost {
        mut daemon,
        bus,
        mount,
        dir,
        ..
    } = host;
    let _ = daemon.kill();
    let _ = daemon.wait();
    // For profiling (run with RUST_LOG=gpuvirtd=debug): the daemon's log outlives the run.
    if let Ok(keep) = std::env::var("BENCH_DAEMON_LOG") {
        std::fs::copy(dir.path().join("gpuvirtd.log"), keep).unwrap();
    }
    drop(bus);
    mount.unmount().unwrap();
}
