//! FUSE front end: serves a simulated kernel's `sys` subtree as a real filesystem with sysfs
//! semantics, so a write() returns the kernel's errno synchronously. May import: its children
//! fuse/fs (request handlers) and fuse/mount (mount lifecycle, which uses fs), re-exported here.
//!
//! [`SimMount::mount`] turns a directory into a simulated `/`: the tree's non-`sys` parts
//! (`proc`, `lib`, `etc`, ...) are written there as plain files and the `sys` subtree is mounted
//! at `<root>/sys`. Choices follow `shared/fuse-notes.md`: zero TTLs (no stale dentries after a
//! mutation), direct I/O with `st_size` 4096 (as sysfs reports), truncation accepted on writable
//! files (shell `>` sends it first), kernfs-like refusals, every handler behind `catch_unwind`
//! (a panic must not hang the mount), and the backend lock never held while touching the mount.

mod fs;
mod mount;

pub use fs::{lock_backend, FS_NAME};
pub use mount::{sweep_dead_mounts, MountError, SimMount};
