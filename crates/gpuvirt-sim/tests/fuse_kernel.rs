//! The simulated kernel behind a real mount and the `gpuvirt-sim` binary: every bundled fixture
//! reads back identical through FUSE, kernel writes work with their errno through the mount,
//! uevents reach a socket client, and the binary serves, takes control commands and unmounts
//! cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuvirt_sim::fixture::{bundled_names, Fixture};
use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::host::send_command;
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::{compare_dir, materialize};
use gpuvirt_sim::socket::UeventReader;
use gpuvirt_sim::Backend;

const GPU: &str = "bus/pci/devices/0000:41:00.0";
const UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn boot(name: &str) -> Kernel {
    Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap()
}

fn is_mounted(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == path.to_str())
}

#[test]
fn every_bundled_fixture_reads_back_identical_through_the_mount_and_as_plain_files() {
    for name in bundled_names() {
        let kernel = boot(name);
        let tree = kernel.tree().clone();
        let plain = tempfile::tempdir().unwrap();
        materialize(&tree, plain.path()).unwrap();
        assert_eq!(
            compare_dir(&tree, "", plain.path(), |_| false),
            Vec::<String>::new(),
            "{name}"
        );
        if !fuse_available() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = SimMount::mount(Arc::new(Mutex::new(kernel)), dir.path()).unwrap();
        let diffs = compare_dir(&tree, "sys", &mnt.sys(), |_| false);
        assert_eq!(diffs, Vec::<String>::new(), "{name} through FUSE");
        let diffs = compare_dir(&tree, "", mnt.root(), |rel| rel == "sys");
        assert_eq!(diffs, Vec::<String>::new(), "{name} plain parts");
    }
}

#[test]
fn runbook_mdev_lifecycle_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(boot("runbook"))), dir.path()).unwrap();
    let socket = dir.path().join("uevent.sock");
    mnt.listen_uevents(&socket).unwrap();
    let mut reader = UeventReader::connect(&socket).unwrap();
    let types = mnt.sys().join(GPU).join("mdev_supported_types/nvidia-300");
    assert_eq!(
        fs::read_to_string(types.join("name")).unwrap(),
        "GRID V100-8C\n"
    );
    assert_eq!(
        fs::read_to_string(types.join("available_instances")).unwrap(),
        "2\n"
    );

    let create = |uuid: &str| {
        OpenOptions::new()
            .write(true)
            .open(types.join("create"))
            .and_then(|mut f| f.write_all(uuid.as_bytes()))
    };
    create(UUID).unwrap();
    assert_eq!(
        fs::read_to_string(types.join("available_instances")).unwrap(),
        "1\n"
    );
    let mdev = mnt.sys().join("bus/mdev/devices").join(UUID);
    assert!(mdev.exists());
    assert_eq!(
        fs::canonicalize(mdev.join("mdev_type")).unwrap(),
        fs::canonicalize(&types).unwrap()
    );
    assert_eq!(create(UUID).unwrap_err().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(
        create("not-a-uuid").unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );

    let add = reader.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(add.action, "add");
    assert!(add.devpath.ends_with(UUID), "{add:?}");

    lock_backend(mnt.backend()).set_mdev_busy(UUID.parse().unwrap(), true);
    let remove = mdev.join("remove");
    let write_remove = || {
        OpenOptions::new()
            .write(true)
            .open(&remove)
            .and_then(|mut f| f.write_all(b"1"))
    };
    assert_eq!(
        write_remove().unwrap_err().raw_os_error(),
        Some(libc::EBUSY)
    );
    lock_backend(mnt.backend()).set_mdev_busy(UUID.parse().unwrap(), false);
    write_remove().unwrap();
    assert!(!mdev.exists());
    assert_eq!(
        fs::read_to_string(types.join("available_instances")).unwrap(),
        "2\n"
    );
}

/// Reads the binary's first stdout line (the READY line).
fn ready_line(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line
}

#[test]
fn binary_serves_until_sigterm_then_unmounts() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let uevents = dir.path().join("uevent.sock");
    let control = dir.path().join("control.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuvirt-sim"))
        .args(["mount", "--fixture", "runbook", "--root"])
        .arg(&root)
        .arg("--uevent-socket")
        .arg(&uevents)
        .arg("--control")
        .arg(&control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child);
    assert!(ready.starts_with("READY "), "{ready:?}");
    let sys = root.canonicalize().unwrap().join("sys");
    assert!(is_mounted(&sys));
    assert!(root.join("proc/cmdline").exists());

    let mut reader = UeventReader::connect(&uevents).unwrap();
    assert_eq!(send_command(&control, "ping").unwrap(), "ok pong");
    let driver_override = format!("sys/{GPU}/driver_override");
    assert_eq!(
        send_command(
            &control,
            &format!("fail-next-write {driver_override} EBUSY")
        )
        .unwrap(),
        "ok"
    );
    let err = fs::write(sys.join(GPU).join("driver_override"), "vfio-pci").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EBUSY),
        "the injected fault reaches the writer"
    );
    fs::write(sys.join(GPU).join("driver_override"), "vfio-pci").unwrap();
    assert_eq!(
        fs::read_to_string(sys.join(GPU).join("driver_override")).unwrap(),
        "vfio-pci\n"
    );
    assert_eq!(
        send_command(&control, "hot-remove 0000:41:00.0").unwrap(),
        "ok"
    );
    assert!(!sys.join(GPU).exists());
    let event = reader.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(event.devpath.contains("0000:41:00.0"), "{event:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&sys), "unmounted on SIGTERM");
    assert!(!uevents.exists() && !control.exists(), "sockets removed");
}

#[test]
fn binary_materializes_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tree");
    let status = Command::new(env!("CARGO_BIN_EXE_gpuvirt-sim"))
        .args(["materialize", "--fixture", "runbook", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let tree = boot("runbook").tree().clone();
    assert_eq!(
        compare_dir(&tree, "", &out, |_| false),
        Vec::<String>::new()
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_gpuvirt-sim"))
        .args(["materialize", "--fixture", "no-such-host", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such-host"));
}

#[test]
fn a_killed_server_leaves_a_dead_mount_that_the_next_mount_sweeps() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuvirt-sim"))
        .args(["mount", "--fixture", "runbook", "--root"])
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(ready_line(&mut child).starts_with("READY "));
    let sys = root.canonicalize().unwrap().join("sys");
    child.kill().unwrap();
    child.wait().unwrap();
    // SIGKILL cannot unmount. A mount made meanwhile by a concurrent test may already have swept
    // the dead mount, so only check how it fails while it is still there.
    if is_mounted(&sys) {
        assert_eq!(
            fs::metadata(&sys).unwrap_err().raw_os_error(),
            Some(libc::ENOTCONN)
        );
    }

    let other = tempfile::tempdir().unwrap();
    let live = SimMount::mount(Arc::new(Mutex::new(boot("runbook"))), other.path()).unwrap();
    assert!(!is_mounted(&sys), "swept before mounting");
    assert!(is_mounted(&live.sys()), "live mounts are left alone");
}
