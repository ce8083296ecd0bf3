//! What a filesystem front end (FUSE mount) needs from a simulated kernel. May import:
//! crate::tree, crate::uevent.

use crate::tree::Tree;
use crate::uevent::Uevent;

/// A simulated kernel behind a filesystem: a tree to read and a write path with kernel semantics.
///
/// The FUSE layer locks the backend for each request, never touches the mount while holding the
/// lock, and broadcasts the uevents a write produced after releasing it.
pub trait Backend: Send + 'static {
    /// The current tree (paths relative to the simulated root: `sys/...`, `proc/...`).
    fn tree(&self) -> &Tree;

    /// A `write()` of `data` to the file at `path` (relative to the simulated root, symlinks
    /// already resolved by the caller to the real file's path). Control files run their kernel
    /// handler; plain writable attributes store the data. `Err(errno)` is what `write()` returns.
    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32>;

    /// Uevents produced since the last call, with sequence numbers assigned, in order.
    fn take_uevents(&mut self) -> Vec<Uevent>;

    /// Directories outside `sys` (plain files under the mounted root, written once at mount)
    /// that changed since the last call, for the mount to copy out again: udev's `dev/dri`.
    fn take_plain_changes(&mut self) -> Vec<&'static str> {
        Vec::new()
    }
}
