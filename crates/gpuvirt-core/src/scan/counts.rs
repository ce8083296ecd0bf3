//! Kept-open `available_instances` files of the mdev parents a refresh re-reads after each
//! create or remove. May import: crate::host.
//!
//! A sysfs attribute shows its current value on every read from offset 0, so a count file
//! opened once is read again with one `pread`: no path walk, no open. On the simulated
//! kernel's FUSE sysfs (zero TTLs) that is one request instead of four per type, and a parent
//! with 29 types is re-read after every manual create. A kept file whose attribute went away
//! (the parent or type was removed, or re-registered at the same path) fails its read with
//! ENODEV; it is then dropped and the path opened afresh, so a kept file never answers for
//! another attribute. Only files on sysfs (or a FUSE sysfs such as the simulated kernel's)
//! are kept: a plain file may be replaced under its name, and a kept one would then go stale.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::host::sysfs::{ReadError, Reader};

/// At most this many kept files (the daemon's descriptor budget is shared with its sockets):
/// a host with more count files than this keeps the most recent ones.
const MAX_KEPT: usize = 256;

/// Count files kept open between refreshes, by path relative to the root.
#[derive(Debug, Default)]
pub(super) struct CountFiles {
    files: Mutex<HashMap<PathBuf, File>>,
}

impl CountFiles {
    /// The text of the attribute at `rel`, through its kept file when there is one.
    pub(super) fn read(&self, r: &mut Reader<'_>, rel: &Path) -> Result<String, ReadError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = files.get(rel) {
            match r.reread(file) {
                Ok(text) => return Ok(text),
                Err(_) => {
                    files.remove(rel);
                }
            }
        }
        let file = r.open_kept(rel)?;
        let text = r.reread(&file)?;
        if !rereads_fresh(&file) {
            return Ok(text);
        }
        if files.len() >= MAX_KEPT {
            files.clear();
        }
        files.insert(rel.to_path_buf(), file);
        Ok(text)
    }

    /// Closes the kept files below `prefix` (a parent read in full, or gone).
    pub(super) fn forget(&self, prefix: &Path) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|path, _| !path.starts_with(prefix));
    }
}

/// Whether a read from offset 0 of `file` shows its current value: sysfs, and FUSE (the
/// simulated kernel serves every read from its live tree, as kernfs does).
fn rereads_fresh(file: &File) -> bool {
    use nix::sys::statfs::{fstatfs, FUSE_SUPER_MAGIC, SYSFS_MAGIC};
    fstatfs(file).is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == SYSFS_MAGIC || kind == FUSE_SUPER_MAGIC
    })
}
