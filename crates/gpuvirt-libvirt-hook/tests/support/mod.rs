//! Harness for the hook's tests: a private dbus-daemon, a FUSE-mounted simulated host,
//! gpuvirtd as a child process serving it, and runs of the real hook binary with libvirt's
//! arguments and a domain XML on stdin. Every process started here is killed on drop.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuvirt_api as api;
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::kernel::Kernel;

/// FUSE needs /dev/fuse and root; elsewhere the tests say so and pass vacuously.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

pub fn hook() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpuvirt-libvirt-hook"))
}

/// gpuvirtd next to the hook, built once per test binary (another package).
pub fn gpuvirtd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let daemon = hook().with_file_name("gpuvirtd");
            if std::env::var_os("GPUVIRT_WORKSPACE_BUILT").is_some() {
                assert!(daemon.exists(), "no gpuvirtd at {}", daemon.display());
                return daemon;
            }
            let release = hook().parent().is_some_and(|d| d.ends_with("release"));
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

/// A private message bus.
pub struct Bus {
    child: Child,
    pub address: String,
}

impl Bus {
    pub fn start() -> Bus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
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

/// A simulated host mounted in a temp dir with its uevent socket.
pub struct SimHost {
    pub mount: SimMount<Kernel>,
    pub socket: PathBuf,
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

    /// Changes the simulated kernel (loads a module, say) and publishes what it emitted.
    pub fn with_kernel_mut<R>(&self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        let r = f(&mut gpuvirt_sim::fuse::lock_backend(self.mount.backend()));
        self.mount.publish_pending();
        r
    }

    pub fn mdev_exists(&self, uuid: &str) -> bool {
        self.root()
            .join(format!("sys/bus/mdev/devices/{uuid}"))
            .exists()
    }

    /// The driver a PCI function is bound to ("" when none).
    pub fn driver(&self, address: &str) -> String {
        std::fs::read_link(
            self.root()
                .join(format!("sys/bus/pci/devices/{address}/driver")),
        )
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
    }

    /// The hook's record directory for this host's tests.
    pub fn hook_state(&self) -> PathBuf {
        self.dir.path().join("hook-state")
    }
}

/// gpuvirtd as a child process serving `host` on `bus`.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts gpuvirtd with the policy text `policy` (`None`: no policy) and waits until it
    /// owns its bus name (it serves every object first).
    pub async fn start(bus: &Bus, host: &SimHost, policy: Option<&str>) -> Daemon {
        let log = host.dir.path().join("gpuvirtd.log");
        let policy_file = host.dir.path().join("policy.toml");
        match policy {
            Some(text) => std::fs::write(&policy_file, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&policy_file);
            }
        }
        let child = Command::new(gpuvirtd())
            .arg("--root")
            .arg(host.root())
            .args(["--bus-address", &bus.address])
            .arg("--events")
            .arg(format!("sim:{}", host.socket.display()))
            .arg("--state-dir")
            .arg(host.dir.path().join("state"))
            .arg("--policy")
            .arg(&policy_file)
            .args(["--log", "gpuvirtd=debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let name = zbus::names::BusName::try_from(api::BUS_NAME).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dbus.name_has_owner(name.clone()).await.unwrap() {
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
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one hook run returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs the hook as libvirtd does: `<domain> <operation> <sub-operation> -`, `xml` on
/// stdin, only libvirt's environment (LC_ALL=C, PATH) plus the test's `extra` flags.
pub fn run_hook(
    bus_address: &str,
    state: &Path,
    args: [&str; 3],
    xml: &str,
    extra: &[&str],
) -> Run {
    let started = Instant::now();
    let mut child = Command::new(hook())
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--bus-address")
        .arg(bus_address)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out: Output = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("the hook was killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        took: started.elapsed(),
    }
}

/// A libvirt domain XML (as `virsh dumpxml` shapes it) with these `<hostdev>` elements.
pub fn domain_xml(name: &str, hostdevs: &str) -> String {
    format!(
        r#"<domain type='kvm'>
  <name>{name}</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
{hostdevs}
  </devices>
</domain>
"#
    )
}

/// `<hostdev type='mdev'>` for `uuid`, as `gpuvirtctl xml` prints it.
pub fn mdev_hostdev(uuid: &str) -> String {
    format!(
        "    <hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>\n      \
         <source>\n        <address uuid='{uuid}'/>\n      </source>\n    </hostdev>"
    )
}

/// `<hostdev type='pci'>` for the host function `DDDD:BB:DD.F`.
pub fn pci_hostdev(address: &str, managed: bool) -> String {
    let (domain, rest) = address.split_at(4);
    let bus = &rest[1..3];
    let slot = &rest[4..6];
    let function = &rest[7..8];
    let managed = if managed { "yes" } else { "no" };
    format!(
        "    <hostdev mode='subsystem' type='pci' managed='{managed}'>\n      <source>\n        \
         <address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>\n      \
         </source>\n    </hostdev>"
    )
}
