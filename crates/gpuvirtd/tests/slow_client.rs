//! A slow client on the real `dbus-daemon`: it subscribes to every gpuvirtd signal and never
//! reads, while mdevs are created and removed in a loop (each cycle sends InterfacesAdded,
//! InterfacesRemoved and property changes). The private bus runs with its per-connection
//! queue limit lowered (`max_outgoing_bytes` 128 KiB, `max_incoming_bytes` 1 MiB) so the limit
//! is really reached within the test. Asserted: once the slow client's queue is full the bus
//! stops queueing for it (what it can read afterwards is bounded and has lost signals, or the
//! bus disconnected it), while gpuvirtd keeps answering another client, every cycle succeeds,
//! and neither gpuvirtd's nor the bus's peak memory grows without bound. Latencies and VmHWM
//! are printed (`--nocapture`).
//!
//! Needs `/dev/fuse` and root; skips otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_api as api;
use support::*;

const V100: &str = "0000:41:00.0";
/// The bus's queue limit for one connection, lowered from dbus-daemon's session default
/// (1 GB on the system bus, 127 MiB on 1.12's session bus) so that a test can reach it.
const MAX_OUTGOING: usize = 128 * 1024;
/// Create/remove cycles: enough signals to fill the socket buffer and the bus's queue several
/// times over.
const CYCLES: usize = 150;

fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw connection: authenticates, says Hello, matches every gpuvirtd signal, and is not
/// read again until the test looks at what was queued for it.
fn slow_client(socket: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
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
    let bus_call = |member: &'static str| {
        zbus::Message::method_call("/org/freedesktop/DBus", member)
            .unwrap()
            .destination("org.freedesktop.DBus")
            .unwrap()
            .interface("org.freedesktop.DBus")
            .unwrap()
    };
    let hello = bus_call("Hello").build(&()).unwrap();
    let rule = format!("type='signal',sender='{}'", api::BUS_NAME);
    let add_match = bus_call("AddMatch").build(&(rule.as_str(),)).unwrap();
    w.write_all(hello.data().bytes()).unwrap();
    w.write_all(add_match.data().bytes()).unwrap();
    stream
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_stops_queueing_for_a_client_that_never_reads() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let busdir = tempfile::tempdir().unwrap();
    let socket = busdir.path().join("bus");
    let conf = busdir.path().join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
<limit name="max_outgoing_bytes">{MAX_OUTGOING}</limit>
<limit name="max_incoming_bytes">1048576</limit>
</busconfig>"#,
            socket.display()
        ),
    )
    .unwrap();
    let bus_log = busdir.path().join("bus.log");
    let bus = Proc(
        Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&bus_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    // Listening, not only bound: the socket file exists a moment before connect works.
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "dbus-daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let address = format!("unix:path={}", socket.display());
    let d = Gpuvirtd::start(
        &address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let connect = || async {
        zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    };
    let mutator = connect().await;
    let reader = connect().await;
    let slow = slow_client(&socket);
    // Let the bus process the slow client's Hello and AddMatch before the signals start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hwm_daemon_before = vm_hwm(d.pid());
    let hwm_bus_before = vm_hwm(bus.0.id());

    // Another client reads all the while: its latency is what the slow one must not cost.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    call(
                        &reader,
                        api::MANAGER_PATH,
                        api::MANAGER_INTERFACE,
                        "GetGpuByPciAddress",
                        &(V100,),
                    ),
                )
                .await
                .expect("a read was not answered within 10 s");
                assert!(r.is_ok(), "read during the signal flood: {r:?}");
                latencies.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies
        })
    };

    let started = Instant::now();
    for i in 0..CYCLES {
        let uuid = uuid::Uuid::new_v4();
        let r = call(
            &mutator,
            &gpu_path(V100),
            api::SHARD_PARENT_INTERFACE,
            "CreateMdev",
            &("nvidia-300", uuid.to_string().as_str(), no_opts()),
        )
        .await;
        assert!(r.is_ok(), "cycle {i}: CreateMdev: {r:?}\n{}", d.log());
        let r = call(
            &mutator,
            api::mdev_path(&uuid).as_str(),
            api::MDEV_INTERFACE,
            "Remove",
            &(no_opts(),),
        )
        .await;
        assert!(r.is_ok(), "cycle {i}: Remove: {r:?}");
    }
    let flood_time = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut latencies = reads.await.unwrap();
    latencies.sort();
    let hwm_daemon_after = vm_hwm(d.pid());
    let hwm_bus_after = vm_hwm(bus.0.id());

    // What the bus queued for the slow client: everything it can read now.
    slow.set_nonblocking(true).unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    let mut disconnected = false;
    // Drain until the bus has nothing more for it (it flushes its queue as we read).
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_millis(500) {
        match (&slow).read(&mut buf) {
            Ok(0) => {
                disconnected = true;
                break;
            }
            Ok(k) => {
                pending.extend_from_slice(&buf[..k]);
                idle_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                disconnected = true;
                break;
            }
            Err(e) => panic!("slow client: {e}"),
        }
    }
    let added = count(&pending, b"InterfacesAdded");
    let removed = count(&pending, b"InterfacesRemoved");
    let bus_said = std::fs::read_to_string(&bus_log).unwrap_or_default();
    let rejections = count(bus_said.as_bytes(), b"full message queue");
    eprintln!(
        "slow client: {CYCLES} create/remove cycles in {:.1} s; the slow client could read {} bytes \
         afterwards ({added} InterfacesAdded, {removed} InterfacesRemoved of {CYCLES} each); \
         disconnected: {disconnected}; bus log lines about a full queue: {rejections}",
        flood_time.as_secs_f64(),
        pending.len(),
    );
    eprintln!(
        "slow client: reads by another client during the flood: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    eprintln!(
        "slow client: VmHWM gpuvirtd {hwm_daemon_before} -> {hwm_daemon_after} kB, \
         dbus-daemon {hwm_bus_before} -> {hwm_bus_after} kB"
    );

    // The limit was reached: the slow client lost signals (or was cut off), it did not get
    // every one of them queued.
    assert!(
        disconnected || added < CYCLES,
        "the slow client was queued all {CYCLES} InterfacesAdded: the limit was never reached"
    );
    assert!(added > 0, "the slow client was never sent a signal");
    // Bounded: the bus's queue limit plus what the kernel buffers on the socket, with slack
    // for the message in flight when the limit tripped.
    assert!(
        pending.len() < MAX_OUTGOING + 4 * 1024 * 1024,
        "{} bytes queued for a client that never reads",
        pending.len()
    );
    assert!(!latencies.is_empty(), "no read overlapped the flood");
    assert!(
        hwm_daemon_after < hwm_daemon_before + 64 * 1024,
        "gpuvirtd VmHWM {hwm_daemon_before} -> {hwm_daemon_after} kB"
    );
    assert!(
        hwm_bus_after < hwm_bus_before + 64 * 1024,
        "dbus-daemon VmHWM {hwm_bus_before} -> {hwm_bus_after} kB"
    );
    // gpuvirtd still serves, and no mdev is left.
    let r = call(
        &mutator,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "GetGpuByPciAddress",
        &(V100,),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    let left = host.with_kernel_mut(|k| k.mdevs().len());
    assert_eq!(left, 0, "mdevs left behind");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
