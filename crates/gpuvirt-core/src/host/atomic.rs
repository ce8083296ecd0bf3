//! The one way gpuvirt replaces a file whole: a temporary beside it, fsync, rename, fsync of
//! the directory, so a crash leaves the old file or the new one, never a torn one.
//! May import: std only.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One failed step of a replacement: `op` is the verb (`create`, `write`, `sync`, `rename`),
/// `path` the file or directory it concerned. Each caller wraps it in its own error type.
#[derive(Debug)]
pub struct AtomicError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl AtomicError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A replacement of `target` through the temporary `tmp` (in the same directory, so the
/// rename is atomic). Build it, then [`Replace::write`] or [`Replace::write_then`].
#[derive(Debug, Clone, Copy)]
pub struct Replace<'a> {
    target: &'a Path,
    tmp: &'a Path,
    create_dir: bool,
    durable: bool,
}

impl<'a> Replace<'a> {
    /// Durable (the file and its directory are fsynced) and the directory must exist.
    pub fn new(target: &'a Path, tmp: &'a Path) -> Self {
        Self {
            target,
            tmp,
            create_dir: false,
            durable: true,
        }
    }

    /// Creates the target's directory (and its parents) first.
    pub fn create_dir(mut self) -> Self {
        self.create_dir = true;
        self
    }

    /// Skips both fsyncs: for files whose own tool does not sync them either (mdevctl's
    /// definitions), so gpuvirt writes them at the same cost.
    pub fn not_durable(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Replaces the target with `data`.
    pub fn write(self, data: &[u8]) -> Result<(), AtomicError> {
        self.write_then(data, || Ok(()))
    }

    /// Replaces the target with `data`, running `before_rename` once the temporary is complete
    /// and just before it takes the target's place (the ledger keeps its previous generation
    /// there). On any error the temporary is removed and the target is what it was.
    pub fn write_then(
        self,
        data: &[u8],
        before_rename: impl FnOnce() -> Result<(), AtomicError>,
    ) -> Result<(), AtomicError> {
        let dir = self.target.parent().ok_or_else(|| {
            AtomicError::new(
                "find the directory of",
                self.target,
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?;
        if self.create_dir {
            fs::create_dir_all(dir).map_err(|e| AtomicError::new("create", dir, e))?;
        }
        let result = (|| {
            let mut f =
                File::create(self.tmp).map_err(|e| AtomicError::new("create", self.tmp, e))?;
            f.write_all(data)
                .map_err(|e| AtomicError::new("write", self.tmp, e))?;
            if self.durable {
                f.sync_all()
                    .map_err(|e| AtomicError::new("sync", self.tmp, e))?;
            }
            drop(f);
            before_rename()?;
            fs::rename(self.tmp, self.target)
                .map_err(|e| AtomicError::new("rename", self.tmp, e))?;
            if self.durable {
                sync_dir(dir)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Best effort: a leftover temporary is harmless (overwritten next time).
            let _ = fs::remove_file(self.tmp);
        }
        result
    }
}

/// Fsyncs a directory, so a rename or removal in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AtomicError::new("sync", dir, e))
}

/// Fsyncs the directory holding `path`; nothing to do for a path with no parent.
pub fn sync_parent(path: &Path) -> Result<(), AtomicError> {
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}
