//! The boot-change record: boot-time files gpuvirt changed during the running boot, kept in
//! the state dir under the kernel's boot id so a daemon restart does not forget them and a
//! reboot does. May import: crate::host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::atomic::Replace;
use crate::host::root::Root;

/// The kernel's id of the running boot, under the root: a new value after every boot.
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";

/// The record's file name in the state dir.
pub const STATE_FILE: &str = "boot-changes.json";

/// Why the boot-change record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RebootStateError {
    #[error("cannot read the boot-change record {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("the boot-change record {} is not valid", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("cannot write the boot-change record {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
}

/// Boot-time changes gpuvirt made during one boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootChanges {
    /// The boot id of the boot the changes were made in.
    pub boot_id: String,
    /// What was changed (the executed actions, as text), in order.
    pub changes: Vec<String>,
}

impl BootChanges {
    /// The changes still waiting for a reboot: those made in the running boot. `None` (the
    /// boot id cannot be read) keeps them, since no reboot can be shown to have happened.
    pub fn pending(&self, current_boot_id: Option<&str>) -> &[String] {
        match current_boot_id {
            Some(id) if id != self.boot_id => &[],
            _ => &self.changes,
        }
    }

    /// Records `change`, made in `boot_id`; a record of an earlier boot is dropped first.
    pub fn record(&mut self, boot_id: &str, change: String) {
        if self.boot_id != boot_id {
            self.boot_id = boot_id.to_owned();
            self.changes.clear();
        }
        if !self.changes.contains(&change) {
            self.changes.push(change);
        }
    }
}

/// The record in a state dir.
#[derive(Debug, Clone)]
pub struct BootChangeStore {
    path: PathBuf,
}

impl BootChangeStore {
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self {
            path: state_dir.as_ref().join(STATE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record; an empty one when none was written yet.
    pub fn load(&self) -> Result<BootChanges, RebootStateError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RebootStateError::Parse(self.path.clone(), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BootChanges::default()),
            Err(e) => Err(RebootStateError::Read(self.path.clone(), e)),
        }
    }

    /// Writes the record whole: temporary file, fsync, rename, fsync of the directory, so a
    /// crash leaves the old record or the new one, never a torn file.
    pub fn save(&self, changes: &BootChanges) -> Result<(), RebootStateError> {
        let err = |path: &Path, e: io::Error| RebootStateError::Write(path.to_owned(), e);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let json =
            serde_json::to_vec_pretty(changes).map_err(|e| err(&self.path, io::Error::other(e)))?;
        Replace::new(&self.path, &tmp).write(&json).map_err(|e| {
            // A failed rename has always named the record itself, not the temporary.
            let path = if e.op == "rename" {
                &self.path
            } else {
                &e.path
            };
            err(path, e.source)
        })
    }
}

/// The running boot's id, `None` when the kernel does not provide it.
pub fn read_boot_id(root: &Root) -> Option<String> {
    let id = fs::read_to_string(root.join(BOOT_ID)).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}
