//! Mounting a simulated root: writing its plain parts, mounting `sys` through FUSE, unmounting
//! and sweeping dead mounts. May import: super::fs, crate::backend, crate::materialize,
//! crate::socket, crate::tree, crate::uevent.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::fs::{lock_backend, sync_plain, SimFs, FS_NAME, SYS};
use crate::backend::Backend;
use crate::materialize::{materialize_filtered, MaterializeError};
use crate::socket::{Broadcaster, SocketError};
use crate::tree::{Node, NodeKind, Tree};
use crate::uevent::Uevent;

/// Why a simulated root could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("the simulated tree has no sys directory to mount")]
    NoSys,
    #[error("cannot prepare the mount point {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the plain parts of the simulated root")]
    Materialize(#[source] MaterializeError),
    #[error("cannot mount the simulated sysfs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A mounted simulated root. Dropping it unmounts `<root>/sys` (the plain files stay).
#[derive(Debug)]
pub struct SimMount<B: Backend> {
    session: Option<BackgroundSession>,
    backend: Arc<Mutex<B>>,
    events: Arc<Broadcaster>,
    root: PathBuf,
}

impl<B: Backend> SimMount<B> {
    /// Writes the backend's non-`sys` tree under `root` and mounts its `sys` subtree at
    /// `<root>/sys`. Dead mounts of ours left by killed processes are swept first.
    pub fn mount(backend: Arc<Mutex<B>>, root: &Path) -> Result<Self, MountError> {
        Self::mount_with(backend, root, Arc::new(Broadcaster::new()))
    }

    /// Like [`SimMount::mount`], publishing uevents through `events` (e.g. one with a custom
    /// per-client queue capacity).
    pub fn mount_with(
        backend: Arc<Mutex<B>>,
        root: &Path,
        events: Arc<Broadcaster>,
    ) -> Result<Self, MountError> {
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| MountError::Prepare { path, source }
        };
        sweep_dead_mounts();
        std::fs::create_dir_all(root).map_err(prepare(root))?;
        let root = root.canonicalize().map_err(prepare(root))?;
        let sys = root.join(SYS);
        {
            let guard = lock_backend(&backend);
            let tree = guard.tree();
            match tree.child(Tree::ROOT, SYS).and_then(|i| tree.node(i)) {
                Some(Node {
                    kind: NodeKind::Dir(_),
                    ..
                }) => {}
                _ => return Err(MountError::NoSys),
            }
            materialize_filtered(tree, "", &root, |rel| rel == SYS)
                .map_err(MountError::Materialize)?;
        }
        std::fs::create_dir_all(&sys).map_err(prepare(&sys))?;

        let fs = SimFs::new(Arc::clone(&backend), Arc::clone(&events), root.clone());
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(FS_NAME.into()),
            MountOption::Subtype(FS_NAME.into()),
            MountOption::RW,
        ];
        // Two server threads cut a round trip from ~75 µs to ~10 µs (fuse-notes §5).
        config.n_threads = Some(2);
        // As root, let every user read it like sysfs; non-root mounts need user_allow_other
        // for that, so they stay private.
        if nix::unistd::geteuid().is_root() {
            config.acl = SessionACL::All;
        }
        let session =
            fuser::spawn_mount(fs, &sys, &config).map_err(|source| MountError::Mount {
                path: sys.clone(),
                source,
            })?;
        Ok(Self {
            session: Some(session),
            backend,
            events,
            root,
        })
    }

    /// The simulated kernel, for test hooks. Never hold its lock while touching the mount: the
    /// server needs it to answer. Uevents produced through it reach clients only after
    /// [`SimMount::publish_pending`].
    pub fn backend(&self) -> &Arc<Mutex<B>> {
        &self.backend
    }

    /// The simulated `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the `sys` subtree is mounted (`<root>/sys`).
    pub fn sys(&self) -> PathBuf {
        self.root.join(SYS)
    }

    /// The uevent fan-out: `listen()` on it to serve the socket, `subscribe()` for in-process use.
    pub fn events(&self) -> &Arc<Broadcaster> {
        &self.events
    }

    /// Serves uevents on a `SOCK_SEQPACKET` socket at `path`.
    pub fn listen_uevents(&self, path: &Path) -> Result<(), SocketError> {
        self.events.listen(path)
    }

    /// An in-process receiver of every uevent from now on.
    pub fn subscribe(&self) -> Receiver<Uevent> {
        self.events.subscribe()
    }

    /// Publishes uevents the backend produced outside a write through the mount (hotplug, module
    /// loads driven through [`SimMount::backend`]).
    pub fn publish_pending(&self) {
        let mut backend = lock_backend(&self.backend);
        let events = backend.take_uevents();
        sync_plain(&mut *backend, &self.root);
        // Published under the backend lock so concurrent writers' events stay in seqnum order;
        // publish() never blocks, so this cannot stall the mount.
        self.events.publish(&events);
    }

    /// Unmounts now, reporting errors that drop would swallow.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => unmount_session(session, &self.sys()),
            None => Ok(()),
        }
    }
}

impl<B: Backend> Drop for SimMount<B> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = unmount_session(session, &self.sys());
        }
    }
}

/// Unmounts and joins the server. A plain unmount fails with EBUSY while any file on the mount is
/// open (also a forked child's inherited copy of a test's fd); the mount is then detached
/// instead, and the server threads keep answering the open files until the last one closes,
/// rather than leaving a dead mount behind when the process exits.
fn unmount_session(session: BackgroundSession, sys: &Path) -> io::Result<()> {
    let result = session.umount_and_join();
    if result.is_err() && is_our_mount(sys) {
        nix::mount::umount2(sys, nix::mount::MntFlags::MNT_DETACH)?;
    }
    result
}

/// Whether a mount of ours sits at `path`.
fn is_our_mount(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|line| our_mount_point(line).as_deref() == Some(path))
        })
        .unwrap_or(false)
}

/// Unmounts mounts of ours whose server died (accesses fail with ENOTCONN). Live mounts of other
/// processes are left alone.
pub fn sweep_dead_mounts() -> usize {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut swept = 0;
    for line in mountinfo.lines() {
        let Some(mount_point) = our_mount_point(line) else {
            continue;
        };
        let dead = matches!(
            std::fs::metadata(&mount_point),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)
        );
        if dead && nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH).is_ok() {
            swept += 1;
        }
    }
    swept
}

/// The mount point of a `/proc/self/mountinfo` line if the mount is one of ours.
fn our_mount_point(line: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point options [optional...] - fstype source super
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = fields.get(4)?;
    let dash = fields.iter().position(|f| *f == "-")?;
    let fstype = fields.get(dash + 1)?;
    let source = fields.get(dash + 2)?;
    // A direct mount(2) ignores the subtype (fstype "fuse"); fusermount3 gives "fuse.<subtype>".
    let ours = (*fstype == "fuse" || fstype.starts_with("fuse.")) && *source == FS_NAME;
    ours.then(|| PathBuf::from(unescape_mountinfo(mount_point)))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(code) = code {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
