//! Whether NVIDIA's vGPU manager daemon (`nvidia-vgpu-mgr`) runs, as the runbook checks with
//! `systemctl status nvidia-vgpu-mgr`: read from `<root>/proc/<pid>/comm`, so it holds whatever
//! started the daemon (systemd or not). Without it vGPUs can be created but a VM using one
//! does not get a working GPU (the manager sets each vGPU up when its VM opens it).
//!
//! May import: crate::host.

use std::fs;

use crate::host::root::Root;

/// The daemon's process name (`comm`).
pub const NVIDIA_VGPU_MANAGER: &str = "nvidia-vgpu-mgr";

/// What `<root>` says of the vGPU manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgpuManager {
    /// No NVIDIA kernel driver is loaded: the question does not arise.
    NotApplicable,
    Running,
    NotRunning,
}

impl VgpuManager {
    /// The D-Bus spelling (`Manager.NvidiaVgpuManager`): `""`, `running`, `not-running`.
    pub fn as_str(self) -> &'static str {
        match self {
            VgpuManager::NotApplicable => "",
            VgpuManager::Running => "running",
            VgpuManager::NotRunning => "not-running",
        }
    }
}

/// Reads `<root>/sys/module/nvidia{,_vgpu_vfio}` and, when either is there, every
/// `<root>/proc/<pid>/comm` until one says [`NVIDIA_VGPU_MANAGER`]. Processes that exit while
/// being read are skipped; an unreadable `/proc` counts as not running.
pub fn nvidia_vgpu_manager(root: &Root) -> VgpuManager {
    let module = |name: &str| root.sys().join("module").join(name).exists();
    if !module("nvidia") && !module("nvidia_vgpu_vfio") {
        return VgpuManager::NotApplicable;
    }
    let Ok(procs) = fs::read_dir(root.proc()) else {
        return VgpuManager::NotRunning;
    };
    let running = procs.flatten().any(|p| {
        let is_pid = p
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && fs::read_to_string(p.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == NVIDIA_VGPU_MANAGER)
    });
    if running {
        VgpuManager::Running
    } else {
        VgpuManager::NotRunning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(modules: &[&str], processes: &[(&str, &str)]) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for m in modules {
            fs::create_dir_all(dir.path().join("sys/module").join(m)).expect("module dir");
        }
        fs::create_dir_all(dir.path().join("proc/self")).expect("proc");
        for (pid, comm) in processes {
            let p = dir.path().join("proc").join(pid);
            fs::create_dir_all(&p).expect("pid dir");
            fs::write(p.join("comm"), format!("{comm}\n")).expect("comm");
        }
        let root = Root::new(dir.path());
        (dir, root)
    }

    #[test]
    fn only_asked_where_an_nvidia_driver_is_loaded() {
        let (_d, root) = root_with(&["i915"], &[("1564", NVIDIA_VGPU_MANAGER)]);
        assert_eq!(nvidia_vgpu_manager(&root), VgpuManager::NotApplicable);
    }

    #[test]
    fn found_by_its_process_name() {
        let (_d, root) = root_with(
            &["nvidia_vgpu_vfio"],
            &[("1", "systemd"), ("1564", NVIDIA_VGPU_MANAGER)],
        );
        assert_eq!(nvidia_vgpu_manager(&root), VgpuManager::Running);
        let (_d, root) = root_with(&["nvidia"], &[("1", "systemd"), ("77", "nvidia-vgpud")]);
        assert_eq!(nvidia_vgpu_manager(&root), VgpuManager::NotRunning);
        assert_eq!(VgpuManager::NotRunning.as_str(), "not-running");
    }
}
