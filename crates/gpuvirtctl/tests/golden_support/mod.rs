//! Harness for gpuvirtctl's tests: a private dbus-daemon any uid may connect to, a
//! FUSE-mounted simulated host, gpuvirtd as a child process, and gpuvirtctl runs.
//!
//! Only what these tests need from `crates/gpuvirtd/tests/common/` (whose `CARGO_BIN_EXE_gpuvirtd`
//! exists only inside gpuvirtd's own tests). Every process started here is killed on drop.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::kernel::Kernel;

/// FUSE needs /dev/fuse and root here; elsewhere the tests say so and pass vacuously.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

pub fn gpuvirtctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpuvirtctl"))
}

/// gpuvirtd next to gpuvirtctl, brought up to date once per test binary (another package,
/// so `cargo test -p gpuvirtctl` alone would not build it).
pub fn gpuvirtd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let ctl = gpuvirtctl();
            let daemon = ctl.with_file_name("gpuvirtd");
            let release = ctl.parent().is_some_and(|d| d.ends_with("release"));
            // scripts/test.sh builds the whole workspace first and says so: a nested
            // `cargo build -p` would then only rebuild dependencies with another feature set.
            if std::env::var_os("GPUVIRT_WORKSPACE_BUILT").is_some() {
                assert!(daemon.exists(), "no gpuvirtd at {}", daemon.display());
                return daemon;
            }
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "gpuvirtd"])
                .args(release.then_some("--release"))
                .status()
                .unwrap();
            assert!(status.success(), "cannot build gpuvirtd");
            daemon
        })
        .clone()
}

/// A private message bus whose policy lets every uid connect and call (the daemon's own
/// authorization is what the denied test exercises, not the bus policy).
pub struct Bus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
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
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated host mounted in a temp dir with its uevent socket.
pub struct SimHost {
    pub mount: SimMount<Kernel>,
    pub socket: PathBuf,
    // Declared last: dropped after the mount.
    pub dir: tempfile::TempDir,
}

impl SimHost {
    pub fn boot(fixture: &str) -> SimHost {
        let kernel = Kernel::from_fixture(&Fixture::bundled(fixture).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mount = SimMount::mount(Arc::new(Mutex::new(kernel)), &root).unwrap();
        let socket = dir.path().join("uevent.sock");
        mount.listen_uevents(&socket).unwrap();
        SimHost { mount, socket, dir }
    }

    pub fn root(&self) -> &Path {
        self.mount.root()
    }

    /// Writes an attribute through the mount, as a shell `echo` would.
    pub fn write(&self, rel: &str, data: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.root().join(rel))
            .and_then(|mut f| f.write_all(data.as_bytes()))
    }
}

/// gpuvirtd as a child process serving `host` on `bus`.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts gpuvirtd and waits until `gpuvirtctl version` gets an answer from it.
    pub fn start(bus: &Bus, host: &SimHost, follow_events: bool) -> Daemon {
        Daemon::start_with_policy(bus, host, follow_events, None)
    }

    /// Like [`Daemon::start`] with the policy file `policy` (`None`: no policy at all).
    pub fn start_with_policy(
        bus: &Bus,
        host: &SimHost,
        follow_events: bool,
        policy: Option<&Path>,
    ) -> Daemon {
        let log = host.dir.path().join("gpuvirtd.log");
        let events = if follow_events {
            format!("sim:{}", host.socket.display())
        } else {
            "none".to_owned()
        };
        let state = host.dir.path().join("state");
        let child = Command::new(gpuvirtd())
            .arg("--root")
            .arg(host.root())
            .args(["--bus-address", &bus.address, "--events", &events])
            .arg("--state-dir")
            .arg(&state)
            // Never the real host's /etc/gpuvirt/policy.toml.
            .arg("--policy")
            .arg(policy.unwrap_or(Path::new("/nonexistent/gpuvirt-test-policy.toml")))
            .args(["--log", "gpuvirtd=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ctl(bus, &["version"]).status.success() {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("gpuvirtd exited with {status}: {}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "gpuvirtd never answered: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs gpuvirtctl against `bus` with `NO_COLOR` unset (its stdout is a pipe: no colour).
pub fn ctl(bus: &Bus, args: &[&str]) -> Output {
    Command::new(gpuvirtctl())
        .args(["--bus-address", &bus.address])
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

/// Like [`ctl`], run in `dir` (so relative file arguments print the same everywhere).
pub fn ctl_in(bus: &Bus, dir: &Path, args: &[&str]) -> Output {
    Command::new(gpuvirtctl())
        .args(["--bus-address", &bus.address])
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

/// The exit code; a signal death fails the test.
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .expect("gpuvirtctl was killed by a signal")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}
