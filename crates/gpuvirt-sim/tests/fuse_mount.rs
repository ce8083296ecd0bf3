//! The FUSE front end against a toy backend: reads, links, kernfs refusals, errno delivery,
//! panics, stale inodes, unmounting and uevent delivery through a real mount.
//!
//! These need `/dev/fuse` and root (or fusermount3); they skip with a message otherwise.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuvirt_sim::fuse::{lock_backend, SimMount};
use gpuvirt_sim::host::{send_command, ControlServer, HookError, HostHooks};
use gpuvirt_sim::materialize::compare_dir;
use gpuvirt_sim::socket::UeventReader;
use gpuvirt_sim::{Backend, Tree, Uevent};

const DEV: &str = "sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0";
const DEVPATH: &str = "/devices/pci0000:40/0000:40:01.1/0000:41:00.0";

/// A tiny kernel: one GPU with a `driver_override`, a `remove` control, a control that is always
/// busy and one that panics.
#[derive(Debug)]
struct Toy {
    tree: Tree,
    pending: Vec<Uevent>,
    seqnum: u64,
}

impl Toy {
    fn new() -> Self {
        let mut tree = Tree::new();
        tree.attr(&format!("{DEV}/vendor"), "0x10de");
        tree.attr(&format!("{DEV}/device"), "0x1db4");
        tree.attr_rw(&format!("{DEV}/driver_override"), "(null)");
        tree.ctl(&format!("{DEV}/remove"));
        tree.ctl(&format!("{DEV}/busy"));
        tree.ctl(&format!("{DEV}/panic"));
        tree.link_rel(&format!("{DEV}/driver"), "sys/bus/pci/drivers/nvidia");
        tree.link_rel("sys/bus/pci/drivers/nvidia/0000:41:00.0", DEV);
        tree.link_rel("sys/bus/pci/devices/0000:41:00.0", DEV);
        tree.ctl("sys/bus/pci/drivers/nvidia/unbind");
        tree.attr("proc/cmdline", "BOOT_IMAGE=/vmlinuz intel_iommu=on");
        tree.attr(
            "lib/modules/6.1.0/modules.alias",
            "alias pci:v000010DEd* nvidia",
        );
        Self {
            tree,
            pending: Vec::new(),
            seqnum: 0,
        }
    }

    fn emit(&mut self, event: Uevent) {
        self.seqnum += 1;
        self.pending.push(Uevent {
            seqnum: self.seqnum,
            ..event
        });
    }
}

impl Backend for Toy {
    fn tree(&self) -> &Tree {
        &self.tree
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        let name = path.rsplit('/').next().unwrap_or_default();
        match name {
            "driver_override" => {
                let value = String::from_utf8_lossy(data).trim().to_owned();
                let value = if value.is_empty() {
                    "(null)".into()
                } else {
                    value
                };
                self.tree.attr_rw(path, value);
                self.emit(Uevent::new("change", DEVPATH, "pci").with("OVERRIDE", "1"));
                Ok(())
            }
            "remove" => {
                self.tree.remove(DEV);
                self.tree.remove("sys/bus/pci/devices/0000:41:00.0");
                self.tree.remove("sys/bus/pci/drivers/nvidia/0000:41:00.0");
                self.emit(Uevent::new("unbind", DEVPATH, "pci"));
                self.emit(Uevent::new("remove", DEVPATH, "pci"));
                Ok(())
            }
            "busy" => Err(libc::EBUSY),
            "panic" => panic!("toy kernel handler panicked on purpose"),
            _ => Err(libc::EINVAL),
        }
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        std::mem::take(&mut self.pending)
    }
}

impl HostHooks for Toy {
    fn hot_remove(&mut self, bdf: &str) -> Result<(), HookError> {
        if bdf != "0000:41:00.0" || !self.tree.exists(DEV) {
            return Err(HookError::new(libc::ENODEV, format!("no device {bdf}")));
        }
        self.write(&format!("{DEV}/remove"), b"1")
            .map_err(|e| HookError::new(e, "remove failed"))
    }
}

/// Mounts a toy kernel in a fresh temp dir, or `None` (test skipped) where FUSE is unavailable.
fn mount() -> Option<(tempfile::TempDir, SimMount<Toy>)> {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: /dev/fuse is missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    match SimMount::mount(Arc::new(Mutex::new(Toy::new())), dir.path()) {
        Ok(mount) => Some((dir, mount)),
        Err(e) if !nix::unistd::geteuid().is_root() => {
            eprintln!("SKIP: cannot mount FUSE as non-root: {e}");
            None
        }
        Err(e) => panic!("mount failed: {e:?}"),
    }
}

fn errno_of(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

fn write_attr(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // The sysfs idiom: open for writing without O_CREAT/O_TRUNC, one write().
    OpenOptions::new().write(true).open(path)?.write_all(data)
}

#[test]
fn reads_links_and_listings_equal_the_tree() {
    let Some((_dir, mnt)) = mount() else { return };
    let sys = mnt.sys();
    let tree = lock_backend(mnt.backend()).tree().clone();
    assert_eq!(
        compare_dir(&tree, "sys", &sys, |_| false),
        Vec::<String>::new()
    );
    // The plain parts are files under the root, not in the mount.
    assert_eq!(
        compare_dir(&tree, "", mnt.root(), |rel| rel == "sys"),
        Vec::<String>::new()
    );

    let dev = sys.join("bus/pci/devices/0000:41:00.0");
    assert_eq!(fs::read_to_string(dev.join("vendor")).unwrap(), "0x10de\n");
    assert_eq!(
        fs::metadata(dev.join("vendor")).unwrap().len(),
        4096,
        "sysfs size"
    );
    let entries: Vec<_> = fs::read_dir(sys.join("bus/pci/devices")).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let entry = entries.into_iter().next().unwrap().unwrap();
    assert!(
        entry.file_type().unwrap().is_symlink(),
        "readdir reports d_type"
    );
    assert_eq!(
        fs::read_link(dev.join("driver")).unwrap(),
        Path::new("../../../../bus/pci/drivers/nvidia")
    );
    assert_eq!(
        fs::canonicalize(dev.join("driver")).unwrap(),
        sys.join("bus/pci/drivers/nvidia")
    );
    assert_eq!(fs::canonicalize(&dev).unwrap(), sys.join(&DEV[4..]));
    assert!(sys
        .join("bus/pci/drivers/nvidia/0000:41:00.0/vendor")
        .exists());
    assert!(!sys.join("bus/pci/drivers/vfio-pci").exists());
    assert!(fs::symlink_metadata(&dev).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::read_to_string(mnt.root().join("proc/cmdline")).unwrap(),
        "BOOT_IMAGE=/vmlinuz intel_iommu=on\n"
    );
}

#[test]
fn writes_take_effect_and_errno_reaches_the_writer() {
    let Some((_dir, mnt)) = mount() else { return };
    let dev = mnt.sys().join(&DEV[4..]);

    write_attr(&dev.join("driver_override"), b"vfio-pci\n").unwrap();
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci\n"
    );
    assert_eq!(
        lock_backend(mnt.backend())
            .tree()
            .read_str(&format!("{DEV}/driver_override")),
        Some("vfio-pci".into())
    );

    // Shell redirection opens with O_TRUNC, which arrives as a truncate first.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo > '{}'",
            dev.join("driver_override").display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "(null)\n"
    );
    fs::write(dev.join("driver_override"), "nvidia").unwrap();
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "nvidia\n"
    );

    let busy = write_attr(&dev.join("busy"), b"1");
    assert_eq!(errno_of(busy), Some(libc::EBUSY));
    // bash (not dash, whose echo only says "I/O error") prints the errno's message.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("echo 1 > '{}'", dev.join("busy").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Device or resource busy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernfs_refusals() {
    let Some((_dir, mnt)) = mount() else { return };
    let dev = mnt.sys().join(&DEV[4..]);
    // Reading a write-only control file.
    assert_eq!(errno_of(fs::read(dev.join("remove"))), Some(libc::EACCES));
    // Writing a read-only attribute, by both idioms.
    assert_eq!(
        errno_of(write_attr(&dev.join("vendor"), b"1")),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(fs::write(dev.join("vendor"), "1")),
        Some(libc::EACCES)
    );
    // Creating a name.
    assert_eq!(
        errno_of(fs::write(dev.join("nonexistent"), "1")),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(fs::create_dir(dev.join("newdir"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(fs::remove_file(dev.join("vendor"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", dev.join("link"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        fs::read(dev.join("absent")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Nothing changed in the model.
    let backend = lock_backend(mnt.backend());
    assert_eq!(
        backend.tree().read_str(&format!("{DEV}/vendor")),
        Some("0x10de".into())
    );
    assert!(!backend.tree().exists(&format!("{DEV}/nonexistent")));
}

#[test]
fn a_panicking_handler_gives_eio_and_the_mount_survives() {
    let Some((_dir, mnt)) = mount() else { return };
    let dev = mnt.sys().join(&DEV[4..]);
    assert_eq!(
        errno_of(write_attr(&dev.join("panic"), b"1")),
        Some(libc::EIO)
    );
    // The poisoned lock is recovered and both server threads still answer.
    for _ in 0..4 {
        assert_eq!(fs::read_to_string(dev.join("vendor")).unwrap(), "0x10de\n");
    }
    write_attr(&dev.join("driver_override"), b"vfio-pci").unwrap();
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci\n"
    );
}

#[test]
fn removed_nodes_are_gone_at_once_and_stale_handles_fail_cleanly() {
    let Some((_dir, mnt)) = mount() else { return };
    let sys = mnt.sys();
    let dev = sys.join(&DEV[4..]);
    let mut open_vendor = fs::File::open(dev.join("vendor")).unwrap();
    let open_dir = fs::File::open(&dev).unwrap();

    write_attr(&dev.join("remove"), b"1").unwrap();

    // Zero TTLs: the very next lookups see the removal.
    assert!(!dev.exists());
    assert!(!sys.join("bus/pci/devices/0000:41:00.0").exists());
    assert_eq!(
        fs::read_dir(sys.join("bus/pci/devices")).unwrap().count(),
        0
    );
    // An fd opened before the removal: attributes ENOENT, reads ENODEV (as kernfs).
    assert_eq!(errno_of(open_vendor.metadata()), Some(libc::ENOENT));
    let mut buf = String::new();
    assert_eq!(
        errno_of(open_vendor.read_to_string(&mut buf)),
        Some(libc::ENODEV)
    );
    assert_eq!(errno_of(open_dir.metadata()), Some(libc::ENOENT));
    // And the mount is still healthy.
    assert!(sys.join("bus/pci/drivers/nvidia/unbind").exists());
}

#[test]
fn unmounts_on_drop() {
    let Some((dir, mnt)) = mount() else { return };
    let sys = mnt.sys();
    let listed = |p: &Path| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
    };
    assert!(listed(&sys));
    assert!(sys.join("bus").exists());
    drop(mnt);
    assert!(!listed(&sys));
    assert!(
        !sys.join("bus").exists(),
        "mount point is an empty directory again"
    );
    assert!(dir.path().join("proc/cmdline").exists(), "plain files stay");
}

#[test]
fn a_file_open_at_drop_still_unmounts_without_leaving_a_dead_mount() {
    let Some((_dir, mnt)) = mount() else { return };
    let sys = mnt.sys();
    let mut open = fs::File::open(sys.join(&DEV[4..]).join("vendor")).unwrap();
    drop(mnt);
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(sys.to_str().unwrap()));
    assert!(!mounted, "detached although busy");
    // The detached mount still answers the open file until it is closed.
    let mut content = String::new();
    open.read_to_string(&mut content).unwrap();
    assert_eq!(content, "0x10de\n");
}

#[test]
fn two_mounts_side_by_side_are_independent() {
    let Some((_d1, one)) = mount() else { return };
    let Some((_d2, two)) = mount() else { return };
    let rel = &DEV[4..];
    write_attr(&one.sys().join(rel).join("remove"), b"1").unwrap();
    assert!(!one.sys().join(rel).exists());
    assert!(two.sys().join(rel).join("vendor").exists());
}

#[test]
fn uevents_reach_socket_clients_and_subscribers_in_order() {
    let Some((dir, mnt)) = mount() else { return };
    let socket = dir.path().join("uevent.sock");
    mnt.listen_uevents(&socket).unwrap();
    let mut reader = UeventReader::connect(&socket).unwrap();
    let subscriber = mnt.subscribe();
    let dev = mnt.sys().join(&DEV[4..]);

    write_attr(&dev.join("driver_override"), b"vfio-pci").unwrap();
    // A failed write emits nothing.
    assert!(write_attr(&dev.join("busy"), b"1").is_err());
    write_attr(&dev.join("remove"), b"1").unwrap();

    let timeout = Duration::from_secs(5);
    let got: Vec<Uevent> = (0..3)
        .map(|_| reader.recv_timeout(timeout).unwrap())
        .collect();
    let summary: Vec<(u64, &str)> = got.iter().map(|e| (e.seqnum, e.action.as_str())).collect();
    assert_eq!(summary, vec![(1, "change"), (2, "unbind"), (3, "remove")]);
    assert_eq!(got[0].devpath, DEVPATH);
    assert_eq!(got[0].get("OVERRIDE"), Some("1"));
    assert!(matches!(
        reader.recv_timeout(Duration::from_millis(50)),
        Err(gpuvirt_sim::socket::SocketError::TimedOut)
    ));
    let local: Vec<u64> = subscriber.try_iter().map(|e| e.seqnum).collect();
    assert_eq!(local, vec![1, 2, 3]);

    // Events produced outside the mount reach clients once published.
    lock_backend(mnt.backend()).emit(Uevent::new("add", "/devices/virtual/misc/x", "misc"));
    mnt.publish_pending();
    assert_eq!(reader.recv_timeout(timeout).unwrap().seqnum, 4);
}

#[test]
fn control_socket_drives_the_running_mount() {
    let Some((dir, mnt)) = mount() else { return };
    let uevents = dir.path().join("uevent.sock");
    mnt.listen_uevents(&uevents).unwrap();
    let mut reader = UeventReader::connect(&uevents).unwrap();
    let ctl = dir.path().join("control.sock");
    let server =
        ControlServer::start(&ctl, Arc::clone(mnt.backend()), Arc::clone(mnt.events())).unwrap();
    let dev = mnt.sys().join(&DEV[4..]);

    assert_eq!(send_command(&ctl, "ping").unwrap(), "ok pong");
    assert_eq!(
        send_command(&ctl, &format!("read {DEV}/vendor")).unwrap(),
        "ok 0x10de\\n"
    );
    // Writes through the control socket follow links and keep the kernel's errno.
    assert_eq!(
        send_command(
            &ctl,
            "write sys/bus/pci/devices/0000:41:00.0/driver_override vfio-pci"
        )
        .unwrap(),
        "ok"
    );
    assert_eq!(
        fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci\n"
    );
    assert!(send_command(&ctl, &format!("write {DEV}/busy 1"))
        .unwrap()
        .starts_with("err EBUSY "));
    assert!(send_command(&ctl, &format!("write {DEV}/vendor 1"))
        .unwrap()
        .starts_with("err EACCES "));
    assert!(send_command(&ctl, "load-module vfio_pci")
        .unwrap()
        .starts_with("err EOPNOTSUPP "));
    assert!(send_command(&ctl, "bogus")
        .unwrap()
        .starts_with("err EINVAL "));

    assert_eq!(send_command(&ctl, "hot-remove 0000:41:00.0").unwrap(), "ok");
    assert!(!dev.exists(), "the mount sees the hot removal at once");
    assert!(send_command(&ctl, "hot-remove 0000:41:00.0")
        .unwrap()
        .starts_with("err ENODEV "));

    let actions: Vec<String> = (0..3)
        .map(|_| reader.recv_timeout(Duration::from_secs(5)).unwrap().action)
        .collect();
    assert_eq!(actions, vec!["change", "unbind", "remove"]);
    drop(server);
    assert!(!ctl.exists());
}
