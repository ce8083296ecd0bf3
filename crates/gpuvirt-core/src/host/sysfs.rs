//! Counted, root-relative sysfs access: capped attribute reads, single `readlink`s, directory listings.
//!
//! Every filesystem operation the scanner performs goes through [`Reader`], so the benchmark can
//! report exactly how many files, links and directories one scan touched, and so every failure
//! becomes a [`ScanWarning`] naming the file relative to the root instead of a panic.
//!
//! May import: crate::host::root, nix (openat).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::root::Root;

/// Something that could not be read; the device is still reported with what could be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanWarning {
    /// The file or directory concerned, relative to the root.
    pub path: PathBuf,
    pub message: String,
}

/// The most bytes read from one attribute; sysfs attributes are at most a page, so anything
/// larger is not a sysfs attribute and is refused rather than slurped.
pub const ATTR_READ_CAP: u64 = 64 * 1024;

/// The first read's size: larger than nearly every attribute, small enough for the stack.
const FIRST_READ: usize = 1024;

/// How many filesystem operations a scan or refresh performed (the benchmark's unit of cost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Files opened and read (attributes, `uevent`, pci.ids, modules.alias …), failed opens included.
    pub files_read: u64,
    /// `readlink` calls.
    pub links_read: u64,
    /// Directories listed.
    pub dirs_listed: u64,
    /// Existence probes (`stat`), used only for `/sys/module/<name>`.
    pub probes: u64,
}

impl ScanStats {
    /// All file operations together.
    pub fn total(&self) -> u64 {
        self.files_read + self.links_read + self.dirs_listed + self.probes
    }

    /// Adds another set of counters to this one.
    pub fn add(&mut self, other: &ScanStats) {
        self.files_read += other.files_read;
        self.links_read += other.links_read;
        self.dirs_listed += other.dirs_listed;
        self.probes += other.probes;
    }
}

/// Why an attribute could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file (or its device) does not exist: ENOENT, ENOTDIR or ENODEV.
    #[error("the file does not exist")]
    Missing,
    #[error("the file is larger than {ATTR_READ_CAP} bytes")]
    TooLarge,
    #[error("the file is not UTF-8 text")]
    NotUtf8,
    #[error("the file could not be read")]
    Io(#[source] io::Error),
}

/// True for the errors a device that vanished (or an attribute that never existed) produces.
pub fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc_errno::ENOENT) | Some(libc_errno::ENOTDIR) | Some(libc_errno::ENODEV)
    ) || err.kind() == io::ErrorKind::NotFound
}

/// Linux errno values used for classification (std exposes only `ErrorKind`).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENODEV: i32 = 19;
    pub const ENOTDIR: i32 = 20;
    pub const EINVAL: i32 = 22;
}

/// True when `readlink` failed because the path is not a symbolic link.
pub fn is_not_a_link(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc_errno::EINVAL)
}

/// Performs counted filesystem operations below one root and collects warnings.
#[derive(Debug)]
pub struct Reader<'a> {
    root: &'a Root,
    pub stats: ScanStats,
    pub warnings: Vec<ScanWarning>,
    /// A directory (relative to the root) opened once; files below it are opened relative to
    /// it (see [`Reader::anchor`]).
    anchor: Option<(PathBuf, File)>,
}

impl<'a> Reader<'a> {
    pub fn new(root: &'a Root) -> Self {
        Self {
            root,
            stats: ScanStats::default(),
            warnings: Vec::new(),
            anchor: None,
        }
    }

    /// Opens the directory `rel` once: until the next anchor (or [`Reader::unanchor`]), files
    /// below it are opened relative to it (`openat`), so a parent's many type attributes cost
    /// one walk of the path to their directory instead of one each. On the simulated kernel's
    /// FUSE sysfs (zero TTLs: every component of every walk is a lookup, through the class
    /// link) a relative open took a seventh of a full one. A directory that cannot be opened
    /// leaves no anchor: reads then walk the full path, and fail or succeed as they would.
    pub fn anchor(&mut self, rel: &Path) {
        self.anchor = File::open(self.abs(rel))
            .ok()
            .map(|dir| (rel.to_path_buf(), dir));
    }

    /// Drops the anchor: every read walks its full path again.
    pub fn unanchor(&mut self) {
        self.anchor = None;
    }

    /// The anchor's directory and `rel` below it, when `rel` lies strictly below the anchor
    /// by plain names (no `..`, no `.`).
    fn below_anchor<'p>(&self, rel: &'p Path) -> Option<(&File, &'p Path)> {
        let (dir, fd) = self.anchor.as_ref()?;
        let below = rel.strip_prefix(dir).ok()?;
        let plain = below
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            && below.components().next().is_some();
        plain.then_some((fd, below))
    }

    /// Opens `rel` for reading, relative to the anchor when it lies below it.
    fn open(&self, rel: &Path) -> io::Result<File> {
        if let Some((fd, below)) = self.below_anchor(rel) {
            use nix::fcntl::{openat, OFlag};
            return openat(
                fd,
                below,
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from);
        }
        File::open(self.abs(rel))
    }

    pub fn root(&self) -> &Root {
        self.root
    }

    /// The absolute path of `rel` (relative to the root).
    pub fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Records a warning about `rel` (relative to the root).
    pub fn warn(&mut self, rel: &Path, message: impl Into<String>) {
        self.warnings.push(ScanWarning {
            path: rel.to_path_buf(),
            message: message.into(),
        });
    }

    /// Reads a text file capped at [`ATTR_READ_CAP`] bytes.
    pub fn read(&mut self, rel: &Path) -> Result<String, ReadError> {
        self.read_capped(rel, ATTR_READ_CAP)
    }

    /// Reads a text file of at most `cap` bytes (larger databases such as pci.ids).
    /// Invalid UTF-8 is an error.
    pub fn read_capped(&mut self, rel: &Path, cap: u64) -> Result<String, ReadError> {
        let bytes = self.read_bytes(rel, cap)?;
        String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }

    /// Reads raw bytes of at most `cap` bytes.
    pub fn read_bytes(&mut self, rel: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
        self.stats.files_read += 1;
        let mut file = self.open(rel).map_err(classify)?;
        // A sysfs attribute is handed over whole by the first read; a regular file (tmpfs,
        // ext4) only reads short at its end. So a read that does not fill the buffer is taken
        // as the end of the file, saving the zero-length EOF read on every attribute (a
        // quarter of a scan's syscalls). The buffer lives on the stack: most attributes are a
        // few bytes, and a zeroed page per read showed up in profiles. Fuller files read on.
        let mut chunk = [0u8; FIRST_READ];
        let first = loop {
            match file.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
            }
        };
        let mut buf = chunk[..first].to_vec();
        if first == FIRST_READ {
            file.take(cap.saturating_sub(FIRST_READ as u64) + 1)
                .read_to_end(&mut buf)
                .map_err(classify)?;
        }
        if buf.len() as u64 > cap {
            return Err(ReadError::TooLarge);
        }
        Ok(buf)
    }

    /// Opens `rel` (relative to the anchor when below it) for a caller that keeps the file and
    /// reads it again with [`Reader::reread`].
    pub fn open_kept(&mut self, rel: &Path) -> Result<File, ReadError> {
        self.open(rel).map_err(classify)
    }

    /// Reads a small attribute file from its start (one `pread` at offset 0: sysfs shows the
    /// current value on every read from the start). A file that fills the first buffer is
    /// refused as too large: kept files are instance counts.
    pub fn reread(&mut self, file: &File) -> Result<String, ReadError> {
        use std::os::unix::fs::FileExt;
        self.stats.files_read += 1;
        let mut chunk = [0u8; FIRST_READ];
        let n = loop {
            match file.read_at(&mut chunk, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
            }
        };
        if n == FIRST_READ {
            return Err(ReadError::TooLarge);
        }
        String::from_utf8(chunk[..n].to_vec()).map_err(|_| ReadError::NotUtf8)
    }

    /// One `readlink` (`readlinkat` relative to the anchor when `rel` lies below it).
    pub fn read_link(&mut self, rel: &Path) -> io::Result<PathBuf> {
        self.stats.links_read += 1;
        if let Some((fd, below)) = self.below_anchor(rel) {
            return nix::fcntl::readlinkat(fd, below)
                .map(PathBuf::from)
                .map_err(io::Error::from);
        }
        std::fs::read_link(self.abs(rel))
    }

    /// Lists a directory's entry names (unsorted; names that are not UTF-8 are reported and skipped).
    pub fn list(&mut self, rel: &Path) -> io::Result<Vec<String>> {
        self.stats.dirs_listed += 1;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.abs(rel))? {
            let name: OsString = entry?.file_name();
            match name.into_string() {
                Ok(name) => names.push(name),
                Err(name) => {
                    let path = rel.join(&name);
                    self.warn(&path, "the entry name is not UTF-8 and was skipped");
                }
            }
        }
        Ok(names)
    }

    /// Whether something exists at `rel` (one `stat`).
    pub fn exists(&mut self, rel: &Path) -> bool {
        self.stats.probes += 1;
        std::fs::metadata(self.abs(rel)).is_ok()
    }
}

fn classify(err: io::Error) -> ReadError {
    if is_missing(&err) {
        ReadError::Missing
    } else {
        ReadError::Io(err)
    }
}

/// Resolves a link target lexically against the directory holding the link, both relative to
/// the sysfs mount (`sys`).
///
/// Sysfs links always point at canonical `devices/...` paths through real directories, so
/// lexical resolution gives the same answer as `canonicalize` without one `readlink` per
/// component. Absolute targets (`/sys/devices/...`) are taken relative to the sysfs mount.
/// Returns `None` when the target climbs above the sysfs mount.
pub fn resolve_link(link_dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    let target = if target.is_absolute() {
        target.strip_prefix("/sys").ok()?
    } else {
        for c in link_dir.components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::ParentDir => {
                    out.pop()?;
                }
                _ => {}
            }
        }
        target
    };
    for c in target.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out.iter().collect())
}

/// The final component of a link target as text, e.g. the driver name of `driver -> ../../bus/pci/drivers/nvidia`.
pub fn basename(target: &Path) -> Option<&str> {
    target.file_name().and_then(|n| n.to_str())
}

/// Shortens a value for inclusion in a warning message.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Parses `0x10de`, `10de` or `10DE` as hexadecimal.
pub fn parse_hex(value: &str) -> Option<u32> {
    let digits = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
