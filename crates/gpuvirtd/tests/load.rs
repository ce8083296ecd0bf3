//! Load: 100 concurrent clients calling reads and mutators while a 10,000-event uevent storm
//! runs and a slow client subscribes to every signal and never reads. The daemon answers every
//! call, its memory stays bounded and its tree ends equal to a fresh scan. Latencies and VmHWM
//! are printed (`--nocapture`), never asserted: timing depends on the machine.
//!
//! Needs `/dev/fuse` and root; skips with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_api as api;
use gpuvirt_sim::Uevent;
use support::*;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const V100: &str = "0000:41:00.0";
const CLIENTS: usize = 100;
const STORM: usize = 10_000;
/// Iterations each client runs at least (and keeps running while the storm lasts).
const MIN_ROUNDS: usize = 5;

/// The daemon's peak resident set (VmHWM) in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A raw bus connection that says Hello, subscribes to every signal of gpuvirtd, and is then
/// never read from again: its socket buffer and the bus's queue for it fill up.
fn slow_client(address: &str) -> UnixStream {
    let spec = address.strip_prefix("unix:").unwrap();
    let field = |k: &str| {
        spec.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    let stream = if let Some(path) = field("path") {
        UnixStream::connect(path).unwrap()
    } else {
        use std::os::linux::net::SocketAddrExt;
        let name = field("abstract").expect("a unix:path or unix:abstract bus address");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixStream::connect_addr(&addr).unwrap()
    };
    let mut w = stream.try_clone().unwrap();
    let uid: String = nix::unistd::getuid()
        .as_raw()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    w.write_all(format!("\0AUTH EXTERNAL {uid}\r\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK"), "bus auth said {line:?}");
    w.write_all(b"BEGIN\r\n").unwrap();
    let hello = zbus::Message::method_call("/org/freedesktop/DBus", "Hello")
        .unwrap()
        .destination("org.freedesktop.DBus")
        .unwrap()
        .interface("org.freedesktop.DBus")
        .unwrap()
        .build(&())
        .unwrap();
    let rule = format!("type='signal',sender='{}'", api::BUS_NAME);
    let add_match = zbus::Message::method_call("/org/freedesktop/DBus", "AddMatch")
        .unwrap()
        .destination("org.freedesktop.DBus")
        .unwrap()
        .interface("org.freedesktop.DBus")
        .unwrap()
        .build(&(rule.as_str(),))
        .unwrap();
    w.write_all(hello.data().bytes()).unwrap();
    w.write_all(add_match.data().bytes()).unwrap();
    stream
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// What a call came back with: the reply's shape or the error name; transport failures panic.
fn outcome(r: Result<zbus::Message, CallErr>, what: &str) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err((name, msg)) => {
            assert_ne!(name, "transport", "{what}: not answered: {msg}");
            assert!(
                !name.contains("NoReply") && !name.contains("Timeout"),
                "{what}: not answered: {name}: {msg}"
            );
            name
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_during_a_storm_with_a_slow_subscriber() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let (d, conn, _) = start_on(&host, &bus, &[]).await;
    let hwm_before = vm_hwm(d.pid());
    let slow = slow_client(&bus.address);

    // The answer a dry-run AssignPassthrough gets when nothing else runs: every concurrent one
    // must get the same.
    let dry = || opts(&[("dry-run", Value::Bool(true))]);
    let expected_dry = match passthrough(&conn, V100, "AssignPassthrough", dry()).await {
        Ok(_) => "ok".to_string(),
        Err((name, _)) => name,
    };

    // Devpaths the storm replays.
    let pci: Vec<String> = host.with_kernel_mut(|k| {
        k.pci_addresses()
            .into_iter()
            .filter_map(|a| {
                k.device_path(a)
                    .map(|p| format!("/{}", p.trim_start_matches('/').trim_start_matches("sys/")))
            })
            .collect()
    });

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(bus.connect().await);
    }
    let storming = Arc::new(AtomicBool::new(true));
    let storm_latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let all_latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let storming = storming.clone();
        let storm_latencies = storm_latencies.clone();
        let all_latencies = all_latencies.clone();
        let calls = calls.clone();
        let created = created.clone();
        let expected_dry = expected_dry.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            while round < MIN_ROUNDS || storming.load(Ordering::SeqCst) {
                let during = storming.load(Ordering::SeqCst);
                let record = |t: Duration| {
                    all_latencies.lock().unwrap().push(t);
                    if during {
                        storm_latencies.lock().unwrap().push(t);
                    }
                };
                // Reads.
                let t = Instant::now();
                let r = call(
                    &c,
                    api::ROOT_PATH,
                    "org.freedesktop.DBus.ObjectManager",
                    "GetManagedObjects",
                    &(),
                )
                .await;
                assert_eq!(outcome(r, "GetManagedObjects"), "ok");
                record(t.elapsed());
                let t = Instant::now();
                let r = call(
                    &c,
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "GetGpuByPciAddress",
                    &(V100,),
                )
                .await;
                let path: OwnedObjectPath = r.as_ref().unwrap().body().deserialize().unwrap();
                assert_eq!(path.as_str(), gpu_path(V100));
                record(t.elapsed());
                let t = Instant::now();
                let r = call(
                    &c,
                    &gpu_path(V100),
                    "org.freedesktop.DBus.Properties",
                    "Get",
                    &(api::GPU_INTERFACE, "Driver"),
                )
                .await;
                let v: OwnedValue = r.as_ref().unwrap().body().deserialize().unwrap();
                assert_eq!(String::try_from(v).unwrap(), "nvidia");
                record(t.elapsed());
                calls.fetch_add(3, Ordering::SeqCst);

                // Mutators: half the clients dry-run a passthrough, half create and remove an
                // mdev (two fit on the V100; the rest are told NoCapacity or Busy).
                if i % 2 == 0 {
                    let got = match passthrough(&c, V100, "AssignPassthrough", dry()).await {
                        Ok((job, _)) => {
                            assert_eq!(job.as_str(), "/", "a dry run made a job");
                            "ok".to_string()
                        }
                        Err((name, msg)) => {
                            assert_ne!(name, "transport", "dry run not answered: {msg}");
                            name
                        }
                    };
                    assert_eq!(got, expected_dry, "dry run under load");
                    calls.fetch_add(1, Ordering::SeqCst);
                } else {
                    let uuid = uuid::Uuid::new_v4().to_string();
                    let r = call(
                        &c,
                        &gpu_path(V100),
                        api::SHARD_PARENT_INTERFACE,
                        "CreateMdev",
                        &("nvidia-300", uuid.as_str(), no_opts()),
                    )
                    .await;
                    let got = outcome(r, "CreateMdev");
                    calls.fetch_add(1, Ordering::SeqCst);
                    if got == "ok" {
                        created.fetch_add(1, Ordering::SeqCst);
                        let path = api::mdev_path(&uuid.parse().unwrap());
                        let r = call(
                            &c,
                            path.as_str(),
                            api::MDEV_INTERFACE,
                            "Remove",
                            &(no_opts(),),
                        )
                        .await;
                        assert_eq!(outcome(r, "Remove"), "ok", "removing our own mdev");
                        calls.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert!(
                            got.ends_with(".NoCapacity") || got.ends_with(".Busy"),
                            "CreateMdev under load: {got}"
                        );
                    }
                }
                round += 1;
            }
        }));
    }

    // The storm, in batches so that it overlaps the clients.
    let mut batch = Vec::new();
    for i in 0..STORM {
        let ev = match i % 5 {
            0 | 1 => Uevent::new("change", &pci[i % pci.len()], "pci"),
            2 => Uevent::new("bind", &pci[(i * 3) % pci.len()], "pci"),
            3 => Uevent::new("add", "/devices/virtual/vfio/66", "vfio"),
            _ if i % 2000 == 4 => Uevent::new("add", "/devices/virtual/net/lo", "net"),
            _ => Uevent::new("change", &pci[(i * 7) % pci.len()], "pci"),
        };
        batch.push(ev);
        if batch.len() == 100 {
            host.mount.events().publish(&batch);
            batch.clear();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    host.mount.events().publish(&batch);
    let storm_time = started.elapsed();
    storming.store(false, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let total_time = started.elapsed();

    // The tree equals a fresh scan (nothing left behind by 100 clients and the storm).
    let fresh_bus = Bus::start();
    let fresh = Gpuvirtd::start(
        &fresh_bus.address,
        host.root(),
        "none",
        &host.dir.path().join("fresh-state"),
        &[],
    )
    .await;
    let want = exported(&fresh_bus.connect().await).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut now = exported(&conn).await;
        now.retain(|k, _| !k.starts_with(api::JOBS_PATH));
        if now == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tree after the load differs from a fresh scan: {:?}",
            now.keys()
                .filter(|k| want.get(*k) != now.get(*k))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(fresh);
    assert!(
        lock_mdevs(&host).is_empty(),
        "mdevs left behind: {:?}",
        lock_mdevs(&host)
    );
    assert!(
        created.load(Ordering::SeqCst) > 0,
        "no CreateMdev ever succeeded"
    );
    let hwm_after = vm_hwm(d.pid());

    let mut storm = storm_latencies.lock().unwrap().clone();
    storm.sort();
    let mut all = all_latencies.lock().unwrap().clone();
    all.sort();
    eprintln!(
        "load: {CLIENTS} clients, {} calls answered in {:.1} s ({} mdevs created and removed); \
         storm of {STORM} events over {:.1} s",
        calls.load(Ordering::SeqCst),
        total_time.as_secs_f64(),
        created.load(Ordering::SeqCst),
        storm_time.as_secs_f64()
    );
    eprintln!(
        "load: read latency during the storm: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms; \
         overall p50={:.1} ms p99={:.1} ms",
        storm.len(),
        percentile(&storm, 0.5).as_secs_f64() * 1e3,
        percentile(&storm, 0.99).as_secs_f64() * 1e3,
        storm.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
    eprintln!("load: gpuvirtd VmHWM before {hwm_before} kB, after {hwm_after} kB");
    assert!(!storm.is_empty(), "no read overlapped the storm");
    // Bounded, not a timing: a leak per event or per queued signal would be far beyond this.
    assert!(
        hwm_after < hwm_before + 256 * 1024,
        "VmHWM grew from {hwm_before} to {hwm_after} kB"
    );
    // The slow client was really sent gpuvirtd's signals (it reads them only now, after the
    // fact): the daemon's mdev objects came and went while it did not read.
    slow.set_nonblocking(true).unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match std::io::Read::read(&mut &slow, &mut buf) {
            Ok(0) => break,
            Ok(k) => pending.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("slow client: {e}"),
        }
    }
    let has = |needle: &[u8]| pending.windows(needle.len()).any(|w| w == needle);
    eprintln!(
        "load: slow client had {} bytes waiting in its socket",
        pending.len()
    );
    assert!(
        has(b"InterfacesAdded"),
        "the slow client was sent no gpuvirtd signal ({} bytes)",
        pending.len()
    );
    // Still alive and serving.
    let r = call(
        &conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "GetGpuByPciAddress",
        &(V100,),
    )
    .await;
    assert_eq!(
        outcome(r, "after the load"),
        "ok",
        "{}",
        d.log()
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn lock_mdevs(host: &SimHost) -> Vec<String> {
    host.with_kernel_mut(|k| {
        k.mdevs()
            .into_iter()
            .map(|(u, _, _)| u.to_string())
            .collect()
    })
}
