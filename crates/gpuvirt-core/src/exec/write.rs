//! One sysfs write as the kernel sees it ([`write_attr`], a single `write()` keeping the
//! errno), the errno names gpuvirt reports, and the marker of files gpuvirt owns. May import: std only.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The first line of every file gpuvirt owns; a file that does not start with it is never
/// overwritten or removed.
pub const OWNED_FILE_MARKER: &str = "# Written by gpuvirt";
/// Prepended to boot file contents that do not already carry [`OWNED_FILE_MARKER`].
pub const OWNED_FILE_HEADER: &str =
    "# Written by gpuvirt, which owns this file: edits are overwritten, and it is removed when the policy no longer needs it.\n";

// Linux errno values (a stable ABI); the core crate has no libc dependency.
pub(super) const ENOENT: i32 = 2;
pub(super) const EIO: i32 = 5;
pub(super) const ENXIO: i32 = 6;
pub(super) const EBUSY: i32 = 16;
pub(super) const EEXIST: i32 = 17;
pub(super) const ENODEV: i32 = 19;
pub(super) const EINVAL: i32 = 22;
pub(super) const ENOSPC: i32 = 28;
pub(super) const ERANGE: i32 = 34;
/// The mdev core's "parent full" for drivers it counts for (mdpy), where others say ENOSPC.
pub(super) const EUSERS: i32 = 87;

/// The symbolic name of an errno gpuvirt reports (`EBUSY`), or its number.
pub fn errno_name(errno: i32) -> String {
    match errno {
        1 => "EPERM".into(),
        ENOENT => "ENOENT".into(),
        EIO => "EIO".into(),
        ENXIO => "ENXIO".into(),
        11 => "EAGAIN".into(),
        12 => "ENOMEM".into(),
        13 => "EACCES".into(),
        EBUSY => "EBUSY".into(),
        EEXIST => "EEXIST".into(),
        ENODEV => "ENODEV".into(),
        EINVAL => "EINVAL".into(),
        ENOSPC => "ENOSPC".into(),
        ERANGE => "ERANGE".into(),
        EUSERS => "EUSERS".into(),
        30 => "EROFS".into(),
        95 => "EOPNOTSUPP".into(),
        110 => "ETIMEDOUT".into(),
        n => n.to_string(),
    }
}

/// One failed `write()` to a sysfs attribute.
#[derive(Debug, thiserror::Error)]
#[error("writing {value:?} to {} failed with {}", path.display(), errno_name(*errno))]
pub struct WriteError {
    /// The attribute, absolute.
    pub path: PathBuf,
    pub value: String,
    /// The errno (`EIO` when the error carried none).
    pub errno: i32,
    #[source]
    pub source: io::Error,
}

/// Writes `value` to one sysfs attribute with a single `write()`, as `echo` does; the errno is
/// kept. The attribute must exist (it is never created). This is the unit the daemon runs in a
/// worker with a timeout.
pub fn write_attr(path: &Path, value: &str) -> Result<(), WriteError> {
    let fail = |source: io::Error| WriteError {
        path: path.to_path_buf(),
        value: value.to_string(),
        errno: source.raw_os_error().unwrap_or(EIO),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(fail)?;
    let written = loop {
        match file.write(value.as_bytes()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        }
    };
    if written != value.len() {
        // Sysfs takes a store whole; a short write means the attribute did not take it.
        return Err(fail(io::Error::from_raw_os_error(EIO)));
    }
    Ok(())
}
