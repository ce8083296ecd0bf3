//! The FUSE request handlers: the `fuser::Filesystem` adapter serving a backend's `sys` subtree.
//! May import: crate::backend, crate::materialize, crate::socket, crate::tree; never
//! fuse/mount.

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::backend::Backend;
use crate::materialize::refresh_plain;
use crate::socket::Broadcaster;
use crate::tree::{Ino, Node, NodeKind, Tree};

/// Source name of our mounts in `/proc/mounts`; also what the stale-mount sweep matches.
pub const FS_NAME: &str = "gpuvirt-sim";

/// Name of the tree directory served through FUSE.
pub(super) const SYS: &str = "sys";

/// Entries and attributes are never cached: every access sees the current tree.
const TTL: Duration = Duration::ZERO;

/// `st_size` of every attribute file, as sysfs reports it whatever the content.
const ATTR_SIZE: u64 = 4096;

/// Locks a backend, recovering from poisoning: a panicking handler has already been answered
/// with EIO, and the mount must keep serving.
pub fn lock_backend<B>(backend: &Mutex<B>) -> MutexGuard<'_, B> {
    backend.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `fuser` adapter over a backend.
pub(super) struct SimFs<B> {
    backend: Arc<Mutex<B>>,
    events: Arc<Broadcaster>,
    /// The simulated root, whose plain parts (outside `sys`) a write may change.
    root: std::path::PathBuf,
    /// Timestamp of every node (sysfs shows boot time for most files).
    epoch: SystemTime,
}

/// Copies the plain directories `backend` changed out under `root` again (a failure only
/// leaves them stale, which the readers' checks against `sys` tolerate).
pub(super) fn sync_plain<B: Backend>(backend: &mut B, root: &std::path::Path) {
    for subtree in backend.take_plain_changes() {
        let _ = refresh_plain(backend.tree(), root, subtree);
    }
}

/// Runs a request handler, turning a panic into EIO for that request only: the reply is dropped
/// while unwinding, and fuser answers a dropped reply with EIO.
fn guarded(op: &str, handler: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(handler)).is_err() {
        eprintln!("{FS_NAME}: {op} handler panicked; answered EIO");
    }
}

/// Maps between FUSE inode numbers and tree inodes: the mount root (FUSE inode 1) is the tree's
/// `sys` directory; every other node keeps its tree inode, which is never reused.
#[derive(Clone, Copy)]
struct InoMap {
    sys: Ino,
}

impl InoMap {
    fn of(tree: &Tree) -> Result<Self, Errno> {
        tree.child(Tree::ROOT, SYS)
            .map(|sys| Self { sys })
            .ok_or(Errno::ENOENT)
    }

    fn to_tree(self, ino: INodeNo) -> Ino {
        if ino == INodeNo::ROOT {
            self.sys
        } else {
            ino.0
        }
    }

    fn to_fuse(self, ino: Ino) -> INodeNo {
        // The tree root is above the mount; only a `..` entry of the mount root can name it.
        if ino == self.sys || ino == Tree::ROOT {
            INodeNo::ROOT
        } else {
            INodeNo(ino)
        }
    }
}

/// The node behind a FUSE inode; ENOENT once it has been removed from the tree.
fn node_of(tree: &Tree, ino: INodeNo) -> Result<(InoMap, Ino, &Node), Errno> {
    let map = InoMap::of(tree)?;
    let tino = map.to_tree(ino);
    let node = tree.node(tino).ok_or(Errno::ENOENT)?;
    Ok((map, tino, node))
}

impl<B: Backend> SimFs<B> {
    /// A server over `backend`; its nodes carry the time it was made.
    pub(super) fn new(
        backend: Arc<Mutex<B>>,
        events: Arc<Broadcaster>,
        root: std::path::PathBuf,
    ) -> Self {
        Self {
            backend,
            events,
            root,
            epoch: SystemTime::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, B> {
        lock_backend(&self.backend)
    }

    fn attr(&self, map: InoMap, tino: Ino, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink) = match &node.kind {
            NodeKind::Dir(_) => (FileType::Directory, 0o755, 0, 2),
            NodeKind::File { mode, .. } => (FileType::RegularFile, *mode, ATTR_SIZE, 1),
            NodeKind::Link(target) => (FileType::Symlink, 0o777, target.len() as u64, 1),
        };
        FileAttr {
            ino: map.to_fuse(tino),
            size,
            blocks: 0,
            atime: self.epoch,
            mtime: self.epoch,
            ctime: self.epoch,
            crtime: self.epoch,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn file_type(node: &Node) -> FileType {
    match node.kind {
        NodeKind::Dir(_) => FileType::Directory,
        NodeKind::File { .. } => FileType::RegularFile,
        NodeKind::Link(_) => FileType::Symlink,
    }
}

fn errno(code: i32) -> Errno {
    if code > 0 {
        Errno::from_i32(code)
    } else {
        // A backend returning 0 or a negative value broke the contract; still fail the write.
        Errno::EIO
    }
}

impl<B: Backend> Filesystem for SimFs<B> {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let backend = self.lock();
            let tree = backend.tree();
            let found = node_of(tree, parent).and_then(|(map, dir, _)| {
                let name = name.to_str().ok_or(Errno::ENOENT)?;
                let child = tree.child(dir, name).ok_or(Errno::ENOENT)?;
                let node = tree.node(child).ok_or(Errno::ENOENT)?;
                Ok(self.attr(map, child, node))
            });
            match found {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || {
            let backend = self.lock();
            match node_of(backend.tree(), ino) {
                Ok((map, tino, node)) => reply.attr(&TTL, &self.attr(map, tino, node)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let backend = self.lock();
            let result = node_of(backend.tree(), ino).and_then(|(map, tino, node)| {
                if mode.is_some() || uid.is_some() || gid.is_some() {
                    return Err(Errno::EPERM);
                }
                if size.is_some() {
                    // O_TRUNC arrives as SETATTR(size=0) before the write; sysfs ignores
                    // truncation of writable attributes, and so do we.
                    match node.kind {
                        NodeKind::File { mode, .. } if mode & 0o222 != 0 => {}
                        NodeKind::Dir(_) => return Err(Errno::EISDIR),
                        _ => return Err(Errno::EACCES),
                    }
                }
                // Time updates (touch) are accepted and forgotten, as kernfs does.
                Ok(self.attr(map, tino, node))
            });
            match result {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || {
            let backend = self.lock();
            match node_of(backend.tree(), ino) {
                Ok((
                    _,
                    _,
                    Node {
                        kind: NodeKind::Link(target),
                        ..
                    },
                )) => reply.data(target.as_bytes()),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // sysfs never lets userspace create names: writing a missing attribute is EACCES.
        reply.error(Errno::EACCES);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            let backend = self.lock();
            let result = node_of(backend.tree(), ino).and_then(|(_, _, node)| {
                let NodeKind::File { mode, .. } = node.kind else {
                    return Err(Errno::EISDIR);
                };
                let (read, write) = match flags.acc_mode() {
                    OpenAccMode::O_RDONLY => (true, false),
                    OpenAccMode::O_WRONLY => (false, true),
                    OpenAccMode::O_RDWR => (true, true),
                };
                // kernfs checks the attribute's mode even for root.
                if (read && mode & 0o444 == 0) || (write && mode & 0o222 == 0) {
                    return Err(Errno::EACCES);
                }
                Ok(())
            });
            match result {
                Ok(()) => reply.opened(
                    FileHandle(0),
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
                ),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            let backend = self.lock();
            match node_of(backend.tree(), ino) {
                Ok((
                    _,
                    _,
                    Node {
                        kind: NodeKind::File { data, .. },
                        ..
                    },
                )) => {
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let end = start.saturating_add(size as usize).min(data.len());
                    reply.data(&data[start..end]);
                }
                Ok(_) => reply.error(Errno::EISDIR),
                // An open attribute of a removed device reads as ENODEV, as in kernfs.
                Err(_) => reply.error(Errno::ENODEV),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            let mut backend = self.lock();
            let path = match node_of(backend.tree(), ino) {
                Ok((
                    _,
                    tino,
                    Node {
                        kind: NodeKind::File { mode, .. },
                        ..
                    },
                )) if mode & 0o222 != 0 => Ok(backend.tree().path_of(tino)),
                Ok((
                    _,
                    _,
                    Node {
                        kind: NodeKind::File { .. },
                        ..
                    },
                )) => Err(Errno::EACCES),
                Ok(_) => Err(Errno::EISDIR),
                Err(_) => Err(Errno::ENODEV),
            };
            let result = path.and_then(|path| backend.write(&path, data).map_err(errno));
            let events = backend.take_uevents();
            // udev's part first, as udevd has made its links by the time a reader hears of the
            // change. The plain parts are outside the mount: writing them under the lock is safe.
            sync_plain(&mut *backend, &self.root);
            // Publishing under the backend lock keeps concurrent writers' events in seqnum
            // order; publish() only queues and never touches the mount, so this cannot deadlock.
            self.events.publish(&events);
            drop(backend);
            match result {
                // sysfs consumes the whole buffer of a successful store.
                Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || {
            let backend = self.lock();
            match node_of(backend.tree(), ino) {
                Ok((
                    _,
                    _,
                    Node {
                        kind: NodeKind::Dir(_),
                        ..
                    },
                )) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let backend = self.lock();
            let tree = backend.tree();
            let (map, tino, node) = match node_of(tree, ino) {
                Ok(found) => found,
                Err(e) => return reply.error(e),
            };
            let NodeKind::Dir(entries) = &node.kind else {
                return reply.error(Errno::ENOTDIR);
            };
            // Offsets index the current listing; a directory changing mid-listing may skip or
            // repeat an entry, which real sysfs does not prevent either.
            let dots = [
                (map.to_fuse(tino), FileType::Directory, "."),
                (map.to_fuse(node.parent), FileType::Directory, ".."),
            ];
            let children = entries.iter().filter_map(|(name, child)| {
                let kind = file_type(tree.node(*child)?);
                Some((map.to_fuse(*child), kind, name.as_str()))
            });
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for (index, (entry_ino, kind, name)) in
                dots.into_iter().chain(children).enumerate().skip(skip)
            {
                if reply.add(entry_ino, index as u64 + 1, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            let backend = self.lock();
            match node_of(backend.tree(), ino) {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // fuser's default (ENOSYS) would surface as "Function not implemented".
        reply.error(Errno::EACCES);
    }
}
