//! The one root every filesystem path hangs off (`/` on a real host, a directory in tests).
//!
//! May import: std only.

use std::path::{Path, PathBuf};

/// Where a host's pseudo-filesystems and configuration live.
///
/// Built once from `--root DIR` and passed down; no code joins paths onto `/` by itself, so the
/// same binary runs against a real host, a simulated kernel mount or a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    base: PathBuf,
}

impl Default for Root {
    fn default() -> Self {
        Self::new("/")
    }
}

impl Root {
    /// A root at `base` (`/` for the real host).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    /// The directory everything else is relative to.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<root>/sys`.
    pub fn sys(&self) -> PathBuf {
        self.base.join("sys")
    }

    /// `<root>/proc`.
    pub fn proc(&self) -> PathBuf {
        self.base.join("proc")
    }

    /// `<root>/etc`.
    pub fn etc(&self) -> PathBuf {
        self.base.join("etc")
    }

    /// `<root>/run`.
    pub fn run(&self) -> PathBuf {
        self.base.join("run")
    }

    /// `<root>/dev`.
    pub fn dev(&self) -> PathBuf {
        self.base.join("dev")
    }

    /// `<root>/lib/modules`.
    pub fn lib_modules(&self) -> PathBuf {
        self.base.join("lib/modules")
    }

    /// `<root>/usr/share` (pci.ids, hwdata).
    pub fn usr_share(&self) -> PathBuf {
        self.base.join("usr/share")
    }

    /// Joins a path relative to the root; `rel` must not be absolute.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.base.join(rel)
    }
}
