//! Which processes hold a device's nodes open (`/dev/dri/card*`, `renderD*`, `/dev/nvidia*`,
//! `/dev/vfio/<group>`), found by reading `<root>/proc/<pid>/fd/*` links like `fuser` does.
//!
//! Unbinding a driver while such a process exists blocks or fails on real hardware, so the
//! interlocks refuse first and name each process.
//!
//! May import: crate::host, crate::model.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::host::root::Root;
use crate::model::PciFunction;

/// A process with one of a device's nodes open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Holder {
    pub pid: u32,
    /// `comm` of the process (`Xorg`, `qemu-system-x86`), empty when unreadable.
    pub command: String,
    /// The node it holds, as the process sees it (`/dev/dri/card1`).
    pub node: String,
}

/// A device node, or a family of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodePattern {
    Exact(String),
    /// Every node whose path starts with this (`/dev/nvidia` covers nvidia0, nvidiactl, …).
    Prefix(String),
}

impl NodePattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            NodePattern::Exact(p) => path == p,
            NodePattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// The nodes through which processes use `function`: its DRM nodes (from `<dev>/drm/`), every
/// `/dev/nvidia*` node when the NVIDIA driver drives it (`nvidiactl` holds the whole driver),
/// and its VFIO group node.
pub fn device_nodes(root: &Root, function: &PciFunction) -> Vec<NodePattern> {
    let mut nodes = BTreeSet::new();
    let drm = root.sys().join(&function.sysfs_path).join("drm");
    if let Ok(entries) = fs::read_dir(&drm) {
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if name.starts_with("card") || name.starts_with("renderD") {
                    nodes.insert(NodePattern::Exact(format!("/dev/dri/{name}")));
                }
            }
        }
    }
    if function.driver.as_deref() == Some("nvidia") {
        nodes.insert(NodePattern::Prefix("/dev/nvidia".to_string()));
    }
    if let Some(group) = function.iommu_group {
        nodes.insert(NodePattern::Exact(format!("/dev/vfio/{group}")));
    }
    nodes.into_iter().collect()
}

/// Every process under `<root>/proc` with a file descriptor on one of `nodes`, sorted by pid.
/// Processes that exit or cannot be read while scanning are skipped.
pub fn scan_holders(root: &Root, nodes: &[NodePattern]) -> Vec<Holder> {
    let mut found = BTreeSet::new();
    if nodes.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = fs::read_dir(root.proc()) else {
        return Vec::new();
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut held = BTreeSet::new();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(target) = target.to_str() else {
                continue;
            };
            if nodes.iter().any(|n| n.matches(target)) {
                held.insert(target.to_string());
            }
        }
        if held.is_empty() {
            continue;
        }
        let command = read_comm(&p.path());
        for node in held {
            found.insert(Holder {
                pid,
                command: command.clone(),
                node,
            });
        }
    }
    found.into_iter().collect()
}

fn read_comm(proc_dir: &Path) -> String {
    fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim_end().chars().take(64).collect())
        .unwrap_or_default()
}

/// The holders of any of `functions`' nodes.
pub fn holders_of<'a>(
    root: &Root,
    functions: impl IntoIterator<Item = &'a PciFunction>,
) -> Vec<Holder> {
    let mut nodes: Vec<NodePattern> = functions
        .into_iter()
        .flat_map(|f| device_nodes(root, f))
        .collect();
    nodes.sort();
    nodes.dedup();
    scan_holders(root, &nodes)
}
