//! Shared harness: a private dbus-daemon, a FUSE-mounted simulated kernel in this process,
//! gpuvirtd as a child process, and a recorder of the signals it emits.
//!
//! Every process started here is killed on drop; the mount is unmounted on drop.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpuvirt_api as api;
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::host::Faults;
use gpuvirt_sim::kernel::Kernel;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// FUSE needs /dev/fuse and root here; elsewhere the tests say so and pass vacuously.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

/// A private message bus.
pub struct Bus {
    child: Child,
    pub address: String,
}

impl Bus {
    pub fn start() -> Bus {
        Self::spawn(&["--session"])
    }

    /// A bus whose connections may await at most `limit` replies each, as a stock system
    /// bus does (dbus-daemon's built-in `max_replies_per_connection` is 128; the session
    /// configuration raises it). `config_dir` holds the configuration file.
    pub fn start_with_reply_limit(limit: u32, config_dir: &Path) -> Bus {
        let config = config_dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_replies_per_connection">{limit}</limit>
</busconfig>
"#
            ),
        )
        .unwrap();
        Self::spawn(&[&format!("--config-file={}", config.display())])
    }

    fn spawn(config: &[&str]) -> Bus {
        let mut child = Command::new("dbus-daemon")
            .args(config)
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (package dbus)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        Bus { child, address }
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated host mounted in a temp dir with its uevent socket. The kernel sits behind
/// [`Faults`], so a test can make one write fail ([`SimHost::fail_next_write`]).
pub struct SimHost {
    pub mount: SimMount<Faults<Kernel>>,
    pub socket: PathBuf,
    // Declared last: dropped after the mount.
    pub dir: tempfile::TempDir,
}

impl SimHost {
    pub fn boot(fixture: &str) -> SimHost {
        let kernel = Kernel::from_fixture(&Fixture::bundled(fixture).unwrap()).unwrap();
        Self::with_kernel(kernel)
    }

    pub fn with_kernel(kernel: Kernel) -> SimHost {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mount = SimMount::mount(Arc::new(Mutex::new(Faults::new(kernel))), &root).unwrap();
        let socket = dir.path().join("uevent.sock");
        mount.listen_uevents(&socket).unwrap();
        SimHost { mount, socket, dir }
    }

    /// Makes the next write to `rel` (a path below the root; links are followed) fail with
    /// `errno`, as a driver refusing it would (EBUSY: a VM holds the device).
    pub fn fail_next_write(&self, rel: &str, errno: i32) {
        use gpuvirt_sim::host::HostHooks;
        lock_backend(self.mount.backend())
            .fail_next_write(rel, errno)
            .unwrap();
    }

    pub fn root(&self) -> &Path {
        self.mount.root()
    }

    /// Writes an attribute through the mount, as a shell `echo` would.
    pub fn write(&self, rel: &str, data: &str) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.root().join(rel);
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(data.as_bytes()))
    }

    /// Runs `f` on the kernel, then publishes the uevents it produced.
    pub fn with_kernel_mut<R>(&self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        let r = f(lock_backend(self.mount.backend()).inner_mut());
        self.mount.publish_pending();
        r
    }
}

/// gpuvirtd as a child process.
pub struct Daemon {
    child: Child,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Starts gpuvirtd on `bus` with `args` and waits until it owns its name.
    pub async fn start(bus: &Bus, root: &Path, events: &str, log_dir: &Path) -> Daemon {
        Self::start_with_env(bus, root, events, log_dir, &[]).await
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub async fn start_with_env(
        bus: &Bus,
        root: &Path,
        events: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let stderr_path = log_dir.join(format!(
            "gpuvirtd-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_gpuvirtd"))
            .arg("--root")
            .arg(root)
            .args(["--bus-address", &bus.address, "--events", events])
            .args(["--log", "gpuvirtd=debug"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, stderr_path };
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
            if dbus.name_has_owner(name).await.unwrap() {
                break;
            }
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
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gpuvirtd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the daemon exports, as comparable text: path → interface → property → value.
pub type Exported = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// Calls a method of the Manager: its reply, or its error as it came over the bus.
pub async fn call_manager<B>(
    conn: &zbus::Connection,
    method: &str,
    body: &B,
) -> zbus::Result<zbus::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(
        Some(api::BUS_NAME),
        api::MANAGER_PATH,
        Some(api::MANAGER_INTERFACE),
        method,
        body,
    )
    .await
}

/// The root ObjectManager's `GetManagedObjects`.
pub async fn managed_objects(conn: &zbus::Connection) -> zbus::fdo::ManagedObjects {
    zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination(api::BUS_NAME)
        .unwrap()
        .path(api::ROOT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap()
        .get_managed_objects()
        .await
        .unwrap()
}

pub async fn exported(conn: &zbus::Connection) -> Exported {
    let objects = managed_objects(conn).await;
    let mut out = Exported::new();
    for (path, ifaces) in objects {
        let entry = out.entry(path.to_string()).or_default();
        for (iface, props) in ifaces {
            if !iface.starts_with("org.gpuvirt.") {
                continue;
            }
            entry.insert(iface.to_string(), props_text(&props));
        }
    }
    out.retain(|_, ifaces| !ifaces.is_empty());
    out
}

fn props_text(props: &std::collections::HashMap<String, OwnedValue>) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect()
}

/// A value as text, with dictionaries in key order (hash maps have none).
pub fn value_text(v: &Value<'_>) -> String {
    match v {
        Value::Dict(d) => {
            let mut entries: Vec<(String, String)> = d
                .iter()
                .map(|(k, v)| (value_text(k), value_text(v)))
                .collect();
            entries.sort();
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::Value(inner) => value_text(inner),
        other => other.to_string(),
    }
}

/// Collects the daemon's change signals as one line each:
/// `PropertiesChanged <path> <interface> Name=value ...` (names sorted),
/// `InterfacesAdded <path> <interface> ...`, `InterfacesRemoved <path> <interface> ...`.
pub struct SignalRecorder {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SignalRecorder {
    pub async fn start(conn: &zbus::Connection) -> SignalRecorder {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(api::BUS_NAME)
            .unwrap()
            .build();
        let mut stream = zbus::MessageStream::for_match_rule(rule, conn, Some(100_000))
            .await
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let at = Instant::now();
                if let Some(line) = describe(&msg) {
                    sink.lock().unwrap().push((at, line));
                }
            }
        });
        SignalRecorder { lines, task }
    }

    /// Waits until `pred` holds for the recorded lines, then for `quiet` without new ones,
    /// and returns (and clears) everything recorded.
    pub async fn settle(&self, pred: impl Fn(&[String]) -> bool, quiet: Duration) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let lines = self.snapshot();
            if pred(&lines) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; signals so far: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut seen = self.snapshot().len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.snapshot().len();
            if now == seen {
                break;
            }
            seen = now;
        }
        self.take()
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    pub fn take_timed(&self) -> Vec<(Instant, String)> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for SignalRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn describe(msg: &zbus::Message) -> Option<String> {
    let header = msg.header();
    let member = header.member()?.to_string();
    let path = header.path()?.to_string();
    let body = msg.body();
    match member.as_str() {
        "PropertiesChanged" => {
            let (iface, changed, invalidated): (
                String,
                std::collections::HashMap<String, OwnedValue>,
                Vec<String>,
            ) = body.deserialize().ok()?;
            let props: Vec<String> = props_text(&changed)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut line = format!("PropertiesChanged {path} {iface} {}", props.join(" "));
            if !invalidated.is_empty() {
                line.push_str(&format!(" invalidated={}", invalidated.join(",")));
            }
            Some(line)
        }
        "InterfacesAdded" => {
            let (object, ifaces): (
                OwnedObjectPath,
                std::collections::HashMap<String, std::collections::HashMap<String, OwnedValue>>,
            ) = body.deserialize().ok()?;
            let mut names: Vec<String> = ifaces.into_keys().collect();
            names.sort();
            Some(format!(
                "InterfacesAdded {} {}",
                object.as_str(),
                names.join(" ")
            ))
        }
        "InterfacesRemoved" => {
            let (object, mut names): (OwnedObjectPath, Vec<String>) = body.deserialize().ok()?;
            names.sort();
            Some(format!(
                "InterfacesRemoved {} {}",
                object.as_str(),
                names.join(" ")
            ))
        }
        _ => None,
    }
}

/// Runs `busctl --address ADDR ARGS...` and returns stdout; panics with stderr on failure.
pub fn busctl(bus: &Bus, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={}", bus.address))
        .args(args)
        .output()
        .expect("busctl must be installed (package systemd)");
    assert!(
        out.status.success(),
        "busctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The gpuvirtctl binary next to gpuvirtd, brought up to date once per test binary (it is
/// another package, so `cargo test -p gpuvirtd` alone would not rebuild it).
pub fn gpuvirtctl() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let daemon = PathBuf::from(env!("CARGO_BIN_EXE_gpuvirtd"));
            let ctl = daemon.with_file_name("gpuvirtctl");
            let release = daemon.parent().is_some_and(|d| d.ends_with("release"));
            // scripts/test.sh builds the whole workspace first and says so: a nested
            // `cargo build -p` would then only rebuild dependencies with another feature set.
            if std::env::var_os("GPUVIRT_WORKSPACE_BUILT").is_some() {
                assert!(ctl.exists(), "no gpuvirtctl at {}", ctl.display());
                return ctl;
            }
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "gpuvirtctl"])
                .args(release.then_some("--release"))
                .status()
                .unwrap();
            assert!(status.success(), "cannot build gpuvirtctl");
            assert!(ctl.exists(), "no gpuvirtctl at {}", ctl.display());
            ctl
        })
        .clone()
}
