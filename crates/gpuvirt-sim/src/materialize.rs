//! Writes a simulated tree (or a subtree) out as a plain directory of files and relative symlinks.
//! May import: crate::tree.
//!
//! Used where a mount is not wanted: read-side benchmarks against peer tools (lspci, mdevctl read
//! a tmpfs tree much faster than a FUSE one), non-root tests, and the non-`sys` parts of a
//! mounted simulated root. A plain directory has no write semantics: writes land as file content.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::tree::{Ino, NodeKind, Tree};

/// Mode of materialised directories, as sysfs shows them.
const DIR_MODE: u32 = 0o755;

/// Why a tree could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("the tree has no directory {0:?}")]
    NoSubtree(String),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaterializeStats {
    pub dirs: usize,
    pub files: usize,
    pub links: usize,
    pub bytes: u64,
}

/// Writes the whole tree below `out` (`out/sys/...`, `out/proc/...`).
pub fn materialize(tree: &Tree, out: &Path) -> Result<MaterializeStats, MaterializeError> {
    materialize_filtered(tree, "", out, |_| false)
}

/// Writes the contents of the tree directory `subtree` (e.g. `"sys"`) into `out`.
pub fn materialize_subtree(
    tree: &Tree,
    subtree: &str,
    out: &Path,
) -> Result<MaterializeStats, MaterializeError> {
    materialize_filtered(tree, subtree, out, |_| false)
}

/// Replaces `root/<subtree>` with the tree's `subtree` (removing it when the tree has none):
/// how a mount keeps a plain part that changes after mount time (udev's `dev/dri`) current.
pub fn refresh_plain(tree: &Tree, root: &Path, subtree: &str) -> Result<(), MaterializeError> {
    let out = root.join(subtree);
    match fs::remove_dir_all(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(MaterializeError::Io { path: out, source }),
    }
    if tree.lookup(subtree).is_some() {
        materialize_subtree(tree, subtree, &out)?;
    }
    Ok(())
}

/// Writes the contents of `subtree` into `out`, leaving out every node for which `skip` returns
/// true (given the path relative to `subtree`) together with everything below it.
///
/// Existing entries in `out` are replaced; anything else already there is left alone.
pub fn materialize_filtered(
    tree: &Tree,
    subtree: &str,
    out: &Path,
    skip: impl Fn(&str) -> bool,
) -> Result<MaterializeStats, MaterializeError> {
    let root = tree
        .lookup(subtree)
        .filter(|ino| matches!(tree.node(*ino).map(|n| &n.kind), Some(NodeKind::Dir(_))))
        .ok_or_else(|| MaterializeError::NoSubtree(subtree.to_owned()))?;
    let mut stats = MaterializeStats::default();
    let umask = current_umask();
    let mut dirs = DirBuilder::new();
    dirs.recursive(true).mode(DIR_MODE);
    dirs.create(out).map_err(|source| MaterializeError::Io {
        path: out.to_owned(),
        source,
    })?;
    dirs.recursive(false);

    // Phase 1, sequential: every directory (children need their parent), collecting the leaves.
    // An explicit stack instead of recursion: generated hosts nest deep enough to matter.
    let mut leaves: Vec<(PathBuf, &NodeKind)> = Vec::new();
    let mut stack: Vec<(String, Ino)> = children(tree, root)
        .map(|(name, ino)| (name.to_owned(), ino))
        .collect();
    while let Some((rel, ino)) = stack.pop() {
        if skip(&rel) {
            continue;
        }
        let Some(node) = tree.node(ino) else {
            continue;
        };
        let path = out.join(&rel);
        if !matches!(node.kind, NodeKind::Dir(_)) {
            leaves.push((path, &node.kind));
            continue;
        }
        let io_err = |source| MaterializeError::Io {
            path: path.clone(),
            source,
        };
        match dirs.create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_any(&path).map_err(io_err)?;
                dirs.create(&path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        stats.dirs += 1;
        stack.extend(children(tree, ino).map(|(name, child)| (format!("{rel}/{name}"), child)));
    }

    // Phase 2, in parallel: files and links are independent of each other, and creating them is
    // almost all syscall time, so a thread per core divides it.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunk = leaves.len().div_ceil(threads).max(1);
    let results: Vec<Result<MaterializeStats, MaterializeError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = leaves
            .chunks(chunk)
            .map(|part| scope.spawn(move || write_leaves(part, umask)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(MaterializeError::Io {
                        path: out.to_owned(),
                        source: io::Error::other("a writer thread panicked"),
                    })
                })
            })
            .collect()
    });
    for part in results {
        let part = part?;
        stats.files += part.files;
        stats.links += part.links;
        stats.bytes += part.bytes;
    }
    Ok(stats)
}

fn write_leaves(
    leaves: &[(PathBuf, &NodeKind)],
    umask: Option<u32>,
) -> Result<MaterializeStats, MaterializeError> {
    let mut stats = MaterializeStats::default();
    for (path, kind) in leaves {
        let io_err = |source| MaterializeError::Io {
            path: path.clone(),
            source,
        };
        match kind {
            NodeKind::File { data, mode } => {
                write_file(path, data, *mode, umask).map_err(io_err)?;
                stats.files += 1;
                stats.bytes += data.len() as u64;
            }
            NodeKind::Link(target) => {
                match std::os::unix::fs::symlink(target, path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        remove_any(path).map_err(io_err)?;
                        std::os::unix::fs::symlink(target, path).map_err(io_err)?;
                    }
                    Err(e) => return Err(io_err(e)),
                }
                stats.links += 1;
            }
            NodeKind::Dir(_) => {}
        }
    }
    Ok(stats)
}

fn children(tree: &Tree, dir: Ino) -> impl Iterator<Item = (&str, Ino)> {
    let entries = match tree.node(dir).map(|n| &n.kind) {
        Some(NodeKind::Dir(entries)) => Some(entries),
        _ => None,
    };
    entries
        .into_iter()
        .flat_map(|e| e.iter().map(|(name, ino)| (name.as_str(), *ino)))
}

/// The process umask, read without changing it (umask(2) can only set, which would race with
/// other threads creating files). `None` when it cannot be read: then every file gets a chmod.
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

fn write_file(path: &Path, data: &[u8], mode: u16, umask: Option<u32>) -> io::Result<()> {
    let mode = u32::from(mode);
    let open = || {
        File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    };
    let mut file = match open() {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A read-only file from an earlier run cannot be opened for writing by a non-root
            // user, so replace it rather than truncate it.
            remove_any(path)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    if !data.is_empty() {
        file.write_all(data)?;
    }
    // The umask may have stripped bits of the kernel's mode; only then is a chmod needed (it is a
    // fifth of the cost per file).
    if umask.is_none_or(|mask| mode & mask != 0) {
        file.set_permissions(Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Compares a directory on disk (plain or mounted) with the tree directory `subtree`, returning a
/// description of every difference (empty when they match). Names for which `skip` returns true
/// (relative to `subtree`) are ignored on both sides. File content is compared only for readable
/// files, because write-only control files refuse reads on a mount.
pub fn compare_dir(
    tree: &Tree,
    subtree: &str,
    dir: &Path,
    skip: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let Some(root) = tree.lookup(subtree) else {
        diffs.push(format!("tree has no {subtree:?}"));
        return diffs;
    };
    let mut stack = vec![(String::new(), root)];
    while let Some((rel, ino)) = stack.pop() {
        let Some(node) = tree.node(ino) else {
            continue;
        };
        let path = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                diffs.push(format!("{rel}: {e}"));
                continue;
            }
        };
        match &node.kind {
            NodeKind::Dir(entries) => {
                if !meta.is_dir() {
                    diffs.push(format!("{rel}: not a directory on disk"));
                    continue;
                }
                let want: Vec<&str> = entries
                    .keys()
                    .map(String::as_str)
                    .filter(|name| !skip(&join(&rel, name)))
                    .collect();
                let mut have: Vec<String> = match fs::read_dir(&path) {
                    Ok(read) => read
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| !skip(&join(&rel, name)))
                        .collect(),
                    Err(e) => {
                        diffs.push(format!("{rel}: cannot list: {e}"));
                        continue;
                    }
                };
                have.sort();
                if have != want {
                    diffs.push(format!("{rel}: entries {have:?}, tree has {want:?}"));
                }
                for (name, child) in entries {
                    let child_rel = join(&rel, name);
                    if !skip(&child_rel) {
                        stack.push((child_rel, *child));
                    }
                }
            }
            NodeKind::File { data, mode } => {
                if !meta.is_file() {
                    diffs.push(format!("{rel}: not a file on disk"));
                    continue;
                }
                let disk_mode = meta.permissions().mode() & 0o7777;
                if disk_mode != u32::from(*mode) {
                    diffs.push(format!("{rel}: mode {disk_mode:o}, tree has {mode:o}"));
                }
                if mode & 0o444 != 0 {
                    match fs::read(&path) {
                        Ok(content) if content == *data => {}
                        Ok(content) => diffs.push(format!(
                            "{rel}: content {:?}, tree has {:?}",
                            String::from_utf8_lossy(&content),
                            String::from_utf8_lossy(data)
                        )),
                        Err(e) => diffs.push(format!("{rel}: cannot read: {e}")),
                    }
                }
            }
            NodeKind::Link(target) => match fs::read_link(&path) {
                Ok(have) if have.as_os_str() == target.as_str() => {}
                Ok(have) => diffs.push(format!("{rel}: link to {have:?}, tree has {target:?}")),
                Err(e) => diffs.push(format!("{rel}: not a link on disk: {e}")),
            },
        }
    }
    diffs
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        let dev = "sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0";
        t.attr(&format!("{dev}/vendor"), "0x10de");
        t.attr_rw(&format!("{dev}/driver_override"), "(null)");
        t.ctl(&format!("{dev}/remove"));
        t.link_rel("sys/bus/pci/devices/0000:41:00.0", dev);
        t.link_rel(&format!("{dev}/driver"), "sys/bus/pci/drivers/nvidia");
        t.ctl("sys/bus/pci/drivers/nvidia/unbind");
        t.mkdir_p("sys/kernel/iommu_groups/66/devices").unwrap();
        t.attr("proc/cmdline", "intel_iommu=on");
        t.set_file("sys/bus/pci/drivers_probe", "", 0o200);
        t
    }

    #[test]
    fn writes_an_identical_tree() {
        let t = sample();
        let out = tempfile::tempdir().unwrap();
        let stats = materialize(&t, out.path()).unwrap();
        assert_eq!(stats.files, 6);
        assert_eq!(stats.links, 2);
        assert_eq!(
            compare_dir(&t, "", out.path(), |_| false),
            Vec::<String>::new()
        );
        let link = out.path().join("sys/bus/pci/devices/0000:41:00.0/vendor");
        assert_eq!(fs::read_to_string(link).unwrap(), "0x10de\n");
        assert_eq!(
            fs::canonicalize(out.path().join("sys/bus/pci/devices/0000:41:00.0/driver")).unwrap(),
            out.path().join("sys/bus/pci/drivers/nvidia")
        );
    }

    #[test]
    fn comparison_finds_differences_and_rerun_replaces() {
        let mut t = sample();
        let out = tempfile::tempdir().unwrap();
        materialize(&t, out.path()).unwrap();
        t.attr("proc/cmdline", "quiet");
        t.remove("sys/kernel/iommu_groups/66");
        t.link("sys/bus/pci/devices/0000:41:00.0", "elsewhere");
        let diffs = compare_dir(&t, "", out.path(), |_| false);
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        // Writing again over the old tree replaces what changed (read-only files included).
        materialize(&t, out.path()).unwrap();
        let diffs = compare_dir(&t, "", out.path(), |_| false);
        assert_eq!(diffs.len(), 1, "the stale group dir stays: {diffs:?}");
        assert!(diffs[0].contains("iommu_groups"), "{diffs:?}");
    }

    /// Timing on a generated-host-sized tree: `cargo test -p gpuvirt-sim --release --lib
    /// materialize_speed -- --ignored --nocapture` (writes to /dev/shm when it exists).
    #[test]
    #[ignore = "timing, not a check"]
    fn materialize_speed() {
        let mut t = Tree::new();
        let devices = 10_000;
        for d in 0..devices {
            let dev = format!(
                "sys/devices/pci0000:00/0000:00:00.0/0000:{:02x}:{:02x}.{}",
                d / 256,
                (d / 8) % 32,
                d % 8
            );
            for attr in [
                "vendor",
                "device",
                "class",
                "subsystem_vendor",
                "subsystem_device",
                "irq",
                "numa_node",
                "local_cpus",
                "modalias",
                "enable",
                "revision",
                "d3cold_allowed",
                "power_state",
                "msi_bus",
                "broken_parity_status",
                "ari_enabled",
                "consistent_dma_mask_bits",
            ] {
                t.attr(&format!("{dev}/{attr}"), "0x10de");
            }
            t.link_rel(&format!("sys/bus/pci/devices/{d}"), &dev);
            t.link_rel(&format!("{dev}/subsystem"), "sys/bus/pci");
        }
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm")
        } else {
            Path::new("/tmp")
        };
        let out = tempfile::tempdir_in(base).unwrap();
        let started = std::time::Instant::now();
        let stats = materialize(&t, out.path()).unwrap();
        let took = started.elapsed();
        println!(
            "materialised {} nodes ({} files, {} links, {} dirs) in {:?} ({:.1} µs/node) under {}",
            t.len(),
            stats.files,
            stats.links,
            stats.dirs,
            took,
            took.as_secs_f64() * 1e6 / t.len() as f64,
            base.display()
        );
    }

    #[test]
    fn subtree_and_filter() {
        let t = sample();
        let out = tempfile::tempdir().unwrap();
        materialize_filtered(&t, "", out.path(), |rel| rel == "sys").unwrap();
        assert!(out.path().join("proc/cmdline").exists());
        assert!(!out.path().join("sys").exists());
        let sys = tempfile::tempdir().unwrap();
        materialize_subtree(&t, "sys", sys.path()).unwrap();
        assert!(sys.path().join("bus/pci/drivers_probe").exists());
        assert_eq!(
            compare_dir(&t, "sys", sys.path(), |_| false),
            Vec::<String>::new()
        );
        assert!(matches!(
            materialize_subtree(&t, "nope", sys.path()),
            Err(MaterializeError::NoSubtree(_))
        ));
    }
}
