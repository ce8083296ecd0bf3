//! Whether the host must reboot for the policy's boot-time wishes to hold: boot files gpuvirt
//! changed during this boot (recorded in the state dir under the kernel's boot id, so a
//! daemon restart does not forget them, and a reboot does), and what the running kernel shows
//! against what the policy wants (IOMMU parameters on `/proc/cmdline`, blacklisted modules not
//! loaded, early-bound slots on vfio-pci).
//!
//! The comparison ([`reboot_reasons`]) is pure; reading the running state and the record are
//! thin helpers around it.
//!
//! May import: crate::host, crate::interlock (CpuVendor), crate::model,
//! crate::state::boot_changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::host::root::Root;
use crate::interlock::CpuVendor;
use crate::model::{Inventory, PciAddress};

pub use crate::state::boot_changes::{
    read_boot_id, BootChangeStore, BootChanges, RebootStateError, BOOT_ID, STATE_FILE,
};

/// A function the policy wants on vfio-pci from early boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyFunction {
    pub address: PciAddress,
    /// The passthrough rule that wants it.
    pub rule: String,
}

/// What the policy wants of the running kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootWants {
    /// The policy passes cards through, so the IOMMU must be on.
    pub iommu: bool,
    /// Modules the policy blacklists.
    pub blacklist: Vec<String>,
    /// Functions to be on vfio-pci from early boot.
    pub early: Vec<EarlyFunction>,
}

/// What the running kernel shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// `/proc/cmdline`.
    pub cmdline: String,
    /// Whether the IOMMU is on (groups exist).
    pub iommu_enabled: bool,
    pub cpu_vendor: Option<CpuVendor>,
    /// Loaded modules, with `-` written `_` as `/sys/module` does.
    pub loaded_modules: BTreeSet<String>,
    /// The driver of each PCI function (`None`: unbound).
    pub drivers: BTreeMap<PciAddress, Option<String>>,
}

impl Running {
    /// Reads what runs: the command line and loaded modules under `root`, the drivers and
    /// IOMMU state from the inventory.
    pub fn read(root: &Root, inventory: &Inventory) -> Self {
        let cmdline = fs::read_to_string(root.proc().join("cmdline")).unwrap_or_default();
        let loaded_modules = fs::read_dir(root.sys().join("module"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let cpu_vendor = fs::read_to_string(root.proc().join("cpuinfo"))
            .ok()
            .and_then(|t| CpuVendor::from_cpuinfo(&t));
        Running {
            cmdline: cmdline.trim().to_owned(),
            iommu_enabled: inventory.iommu.enabled,
            cpu_vendor,
            loaded_modules,
            drivers: inventory
                .functions
                .iter()
                .map(|(a, f)| (*a, f.driver.clone()))
                .collect(),
        }
    }
}

/// Command-line words that turn the IOMMU off.
const IOMMU_OFF: [&str; 3] = ["intel_iommu=off", "amd_iommu=off", "iommu=off"];

/// Why a reboot is required, one sentence each; empty when the running system is what the
/// policy wants and nothing changed since boot. `pending` are the changes made during this
/// boot ([`BootChanges::pending`]).
pub fn reboot_reasons(pending: &[String], wants: &BootWants, running: &Running) -> Vec<String> {
    let mut reasons: Vec<String> = pending
        .iter()
        .map(|c| format!("changed during this boot, takes effect at the next: {c}"))
        .collect();
    if wants.iommu {
        let params = CpuVendor::iommu_parameters(running.cpu_vendor);
        let off: Vec<&str> = running
            .cmdline
            .split_whitespace()
            .filter(|w| IOMMU_OFF.contains(w))
            .collect();
        if !off.is_empty() {
            reasons.push(format!(
                "the policy passes cards through but the kernel command line has {}, which \
                 turns the IOMMU off: remove it, add {params} (GRUB_CMDLINE_LINUX in \
                 /etc/default/grub, then update-grub) and reboot",
                off.join(" ")
            ));
        } else if !running.iommu_enabled {
            reasons.push(format!(
                "the policy passes cards through but the IOMMU is off: enable VT-d/AMD-Vi in \
                 the firmware, add {params} to the kernel command line (GRUB_CMDLINE_LINUX in \
                 /etc/default/grub, then update-grub) and reboot"
            ));
        }
    }
    for module in &wants.blacklist {
        if running.loaded_modules.contains(&module.replace('-', "_")) {
            reasons.push(format!(
                "module {module} is blacklisted by the policy but loaded (it stays until the \
                 next boot)"
            ));
        }
    }
    for f in &wants.early {
        match running.drivers.get(&f.address) {
            // Gone from the host: nothing runs that could be wrong.
            None => {}
            Some(Some(d)) if d == "vfio-pci" => {}
            Some(driver) => reasons.push(format!(
                "{} should be on vfio-pci from early boot (rule {:?}) but is on {}",
                f.address,
                f.rule,
                driver.as_deref().unwrap_or("no driver")
            )),
        }
    }
    reasons
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
