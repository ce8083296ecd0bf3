//! The simulated sysfs as an in-memory tree of directories, attribute files and symlinks.
//! May import: nothing of this crate.
//!
//! Paths are relative to the simulated root (`sys/devices/...`, `proc/cmdline`); links store
//! relative targets exactly as the kernel would, so both the FUSE mount and a materialised plain
//! directory resolve them the same way. Inode numbers only grow and are never reused, so a stale
//! kernel inode can never alias a new node.

use std::collections::{BTreeMap, HashMap};

/// Inode number; [`Tree::ROOT`] is the root directory.
pub type Ino = u64;

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// Directory entries by name.
    Dir(BTreeMap<String, Ino>),
    /// An attribute: content and permission bits (`0o444` read-only, `0o644` writable,
    /// `0o200` write-only control).
    File { data: Vec<u8>, mode: u16 },
    /// A symlink with its (usually relative) target.
    Link(String),
}

/// A node and its parent directory.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub parent: Ino,
    pub name: String,
}

/// Why a tree operation failed (maps to an errno at the filesystem edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("already exists")]
    Exists,
}

impl TreeError {
    /// The errno a filesystem returns for this error.
    pub fn errno(self) -> i32 {
        match self {
            TreeError::NotFound => libc::ENOENT,
            TreeError::NotDir => libc::ENOTDIR,
            TreeError::IsDir => libc::EISDIR,
            TreeError::Exists => libc::EEXIST,
        }
    }
}

/// The whole simulated filesystem.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

impl Tree {
    pub const ROOT: Ino = 1;

    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            Self::ROOT,
            Node {
                kind: NodeKind::Dir(BTreeMap::new()),
                parent: Self::ROOT,
                name: String::new(),
            },
        );
        Self {
            nodes,
            next_ino: Self::ROOT + 1,
        }
    }

    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn node_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// Number of nodes (for statistics).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Looks a name up in a directory.
    pub fn child(&self, dir: Ino, name: &str) -> Option<Ino> {
        match &self.nodes.get(&dir)?.kind {
            NodeKind::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// Resolves a path without following symlinks (the final or intermediate components must be
    /// real directories).
    pub fn lookup(&self, path: &str) -> Option<Ino> {
        let mut ino = Self::ROOT;
        for c in components(path) {
            ino = if c == ".." {
                self.nodes.get(&ino)?.parent
            } else {
                self.child(ino, c)?
            };
        }
        Some(ino)
    }

    /// Resolves a path following symlinks in every component (like `realpath`), returning the
    /// inode it reaches.
    pub fn resolve(&self, path: &str) -> Option<Ino> {
        self.resolve_from(Self::ROOT, path, 0)
    }

    fn resolve_from(&self, start: Ino, path: &str, depth: u32) -> Option<Ino> {
        if depth > 40 {
            return None;
        }
        let mut ino = if path.starts_with('/') {
            Self::ROOT
        } else {
            start
        };
        for c in components(path) {
            if c == ".." {
                ino = self.nodes.get(&ino)?.parent;
                continue;
            }
            let next = self.child(ino, c)?;
            ino = match &self.nodes.get(&next)?.kind {
                NodeKind::Link(target) => self.resolve_from(ino, target, depth + 1)?,
                _ => next,
            };
        }
        Some(ino)
    }

    /// The path of a node relative to the root (`sys/bus/pci/devices`).
    pub fn path_of(&self, mut ino: Ino) -> String {
        let mut parts = Vec::new();
        while ino != Self::ROOT {
            let Some(node) = self.nodes.get(&ino) else {
                break;
            };
            parts.push(node.name.as_str());
            ino = node.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Creates every missing directory along `path` and returns the last one.
    pub fn mkdir_p(&mut self, path: &str) -> Result<Ino, TreeError> {
        let mut ino = Self::ROOT;
        for c in components(path) {
            ino = match self.child(ino, c) {
                Some(next) => match self.nodes[&next].kind {
                    NodeKind::Dir(_) => next,
                    _ => return Err(TreeError::NotDir),
                },
                None => self.insert(ino, c, NodeKind::Dir(BTreeMap::new()))?,
            };
        }
        Ok(ino)
    }

    fn split(path: &str) -> Result<(&str, &str), TreeError> {
        let path = path.trim_end_matches('/');
        match path.rsplit_once('/') {
            Some((dir, name)) if !name.is_empty() => Ok((dir, name)),
            None if !path.is_empty() => Ok(("", path)),
            _ => Err(TreeError::NotFound),
        }
    }

    fn insert(&mut self, dir: Ino, name: &str, kind: NodeKind) -> Result<Ino, TreeError> {
        let ino = self.next_ino;
        match &mut self.nodes.get_mut(&dir).ok_or(TreeError::NotFound)?.kind {
            NodeKind::Dir(entries) => {
                if entries.contains_key(name) {
                    return Err(TreeError::Exists);
                }
                entries.insert(name.to_owned(), ino);
            }
            _ => return Err(TreeError::NotDir),
        }
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                parent: dir,
                name: name.to_owned(),
            },
        );
        Ok(ino)
    }

    /// Creates or replaces a file (parents are created). Replacing keeps the inode.
    pub fn set_file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u16) -> Ino {
        let data = data.into();
        if let Some(ino) = self.lookup(path) {
            if let Some(Node {
                kind: NodeKind::File { data: d, mode: m },
                ..
            }) = self.nodes.get_mut(&ino)
            {
                *d = data;
                *m = mode;
                return ino;
            }
            self.remove(path);
        }
        let (dir, name) = Self::split(path).expect("set_file needs a file name");
        let dir = self.mkdir_p(dir).expect("set_file parent is a directory");
        self.insert(dir, name, NodeKind::File { data, mode })
            .expect("name was free")
    }

    /// A read-only attribute holding `value` plus a newline, as sysfs prints it.
    pub fn attr(&mut self, path: &str, value: impl std::fmt::Display) -> Ino {
        self.set_file(path, format!("{value}\n"), 0o444)
    }

    /// A writable attribute holding `value` plus a newline.
    pub fn attr_rw(&mut self, path: &str, value: impl std::fmt::Display) -> Ino {
        self.set_file(path, format!("{value}\n"), 0o644)
    }

    /// A write-only control file (reads fail with EACCES, like sysfs `bind`/`unbind`/`create`).
    pub fn ctl(&mut self, path: &str) -> Ino {
        self.set_file(path, Vec::new(), 0o200)
    }

    /// Creates or replaces a symlink at `path` pointing at `target` (stored verbatim).
    pub fn link(&mut self, path: &str, target: impl Into<String>) -> Ino {
        if self.lookup(path).is_some() {
            self.remove(path);
        }
        let (dir, name) = Self::split(path).expect("link needs a name");
        let dir = self.mkdir_p(dir).expect("link parent is a directory");
        self.insert(dir, name, NodeKind::Link(target.into()))
            .expect("name was free")
    }

    /// Creates a symlink at `path` pointing at the absolute tree path `to`, written as a relative
    /// target (`../../../devices/...`) the way sysfs does.
    pub fn link_rel(&mut self, path: &str, to: &str) -> Ino {
        let target = relative_target(path, to);
        self.link(path, target)
    }

    /// Removes a node and, for a directory, everything below it. Returns whether it existed.
    pub fn remove(&mut self, path: &str) -> bool {
        let Some(ino) = self.lookup(path) else {
            return false;
        };
        if ino == Self::ROOT {
            return false;
        }
        self.remove_ino(ino);
        true
    }

    /// Removes a node by inode (recursively).
    pub fn remove_ino(&mut self, ino: Ino) {
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        if let Some(Node {
            kind: NodeKind::Dir(entries),
            ..
        }) = self.nodes.get_mut(&node.parent)
        {
            entries.remove(&node.name);
        }
        let mut stack = vec![node];
        while let Some(node) = stack.pop() {
            if let NodeKind::Dir(entries) = node.kind {
                for child in entries.into_values() {
                    if let Some(n) = self.nodes.remove(&child) {
                        stack.push(n);
                    }
                }
            }
        }
    }

    /// Whether `path` exists (following symlinks, like `Path::exists`).
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// Content of the file at `path` (following symlinks).
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match &self.nodes.get(&self.resolve(path)?)?.kind {
            NodeKind::File { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Content of the file at `path` as trimmed text.
    pub fn read_str(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|d| String::from_utf8_lossy(d).trim_end().to_owned())
    }

    /// Target of the symlink at `path` (not followed).
    pub fn read_link(&self, path: &str) -> Option<&str> {
        match &self.nodes.get(&self.lookup(path)?)?.kind {
            NodeKind::Link(target) => Some(target),
            _ => None,
        }
    }

    /// Entry names of the directory at `path` (following symlinks), sorted.
    pub fn list(&self, path: &str) -> Vec<String> {
        match self.resolve(path).and_then(|i| self.nodes.get(&i)) {
            Some(Node {
                kind: NodeKind::Dir(entries),
                ..
            }) => entries.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Iterates over every node with its path, depth-first in name order (for materialising).
    pub fn walk(&self) -> Vec<(String, Ino)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![(String::new(), Self::ROOT)];
        while let Some((path, ino)) = stack.pop() {
            if let Some(Node {
                kind: NodeKind::Dir(entries),
                ..
            }) = self.nodes.get(&ino)
            {
                for (name, child) in entries.iter().rev() {
                    let p = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((p, *child));
                }
            }
            if ino != Self::ROOT {
                out.push((path, ino));
            }
        }
        out
    }
}

/// The relative symlink target from the link at `link_path` to the tree path `to`.
pub fn relative_target(link_path: &str, to: &str) -> String {
    let from: Vec<&str> = components(link_path).collect();
    let from_dir = &from[..from.len().saturating_sub(1)];
    let to: Vec<&str> = components(to).collect();
    let common = from_dir.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from_dir.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_links_and_resolution() {
        let mut t = Tree::new();
        t.attr("sys/devices/pci0000:40/0000:41:00.0/vendor", "0x10de");
        t.link_rel(
            "sys/bus/pci/devices/0000:41:00.0",
            "sys/devices/pci0000:40/0000:41:00.0",
        );
        assert_eq!(
            t.read_link("sys/bus/pci/devices/0000:41:00.0"),
            Some("../../../devices/pci0000:40/0000:41:00.0")
        );
        assert_eq!(
            t.read_str("sys/bus/pci/devices/0000:41:00.0/vendor")
                .unwrap(),
            "0x10de"
        );
        assert_eq!(t.list("sys/bus/pci/devices"), vec!["0000:41:00.0"]);
        let dev = t.resolve("sys/bus/pci/devices/0000:41:00.0").unwrap();
        assert_eq!(t.path_of(dev), "sys/devices/pci0000:40/0000:41:00.0");
        assert!(t.remove("sys/devices/pci0000:40"));
        assert!(!t.exists("sys/bus/pci/devices/0000:41:00.0"));
        assert!(
            t.read_link("sys/bus/pci/devices/0000:41:00.0").is_some(),
            "dangling link stays"
        );
    }

    #[test]
    fn relative_targets() {
        assert_eq!(
            relative_target("sys/class/mdev_bus/x", "sys/devices/virtual/x"),
            "../../devices/virtual/x"
        );
        assert_eq!(relative_target("sys/a/b", "sys/a/c"), "c");
    }
}
