//! Whether the host must reboot for the policy's boot-time wishes to hold: boot files gpuvirt
//! changed during this boot (recorded in the state dir under the kernel's boot id, so a
//! daemon restart does not forget them, and a reboot does), and what the running kernel shows
//! against what the policy wants (IOMMU parameters on `/proc/cmdline`, blacklisted modules not
//! loaded, early-bound slots on vfio-pci).
//!
//! The comparison ([`reboot_reasons`]) is pure; reading the running state and the record are
//! thin helpers around it.

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
mod tests {
    use super::*;

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn wants() -> BootWants {
        BootWants {
            iommu: true,
            blacklist: vec!["nouveau".into()],
            early: vec![EarlyFunction {
                address: addr("0000:01:00.0"),
                rule: "vm-pool".into(),
            }],
        }
    }

    fn running_as_wanted() -> Running {
        Running {
            cmdline: "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt".into(),
            iommu_enabled: true,
            cpu_vendor: Some(CpuVendor::Intel),
            loaded_modules: ["vfio_pci".to_string(), "nvidia".to_string()].into(),
            drivers: [(addr("0000:01:00.0"), Some("vfio-pci".to_string()))].into(),
        }
    }

    #[test]
    fn nothing_to_reboot_for_when_the_running_system_matches() {
        assert_eq!(
            reboot_reasons(&[], &wants(), &running_as_wanted()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_difference_is_a_reason() {
        let mut running = running_as_wanted();
        running.cmdline = "ro intel_iommu=off".into();
        running.loaded_modules.insert("nouveau".into());
        running
            .drivers
            .insert(addr("0000:01:00.0"), Some("nouveau".into()));
        let reasons = reboot_reasons(
            &["write /etc/modprobe.d/gpuvirt.conf".into()],
            &wants(),
            &running,
        );
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        assert!(reasons[0].contains("write /etc/modprobe.d/gpuvirt.conf"));
        assert!(reasons[1].contains("intel_iommu=off") && reasons[1].contains("intel_iommu=on"));
        assert!(reasons[2].contains("nouveau is blacklisted"));
        assert!(
            reasons[3].contains("0000:01:00.0")
                && reasons[3].contains("\"vm-pool\"")
                && reasons[3].contains("on nouveau"),
            "{}",
            reasons[3]
        );
    }

    #[test]
    fn an_iommu_off_without_a_parameter_names_the_one_to_add() {
        let mut running = running_as_wanted();
        running.cmdline = "ro quiet".into();
        running.iommu_enabled = false;
        running.cpu_vendor = Some(CpuVendor::Amd);
        let reasons = reboot_reasons(&[], &wants(), &running);
        assert_eq!(reasons.len(), 1, "{reasons:#?}");
        assert!(reasons[0].contains("amd_iommu=on"), "{}", reasons[0]);
        // No passthrough rule: the IOMMU is not the policy's business.
        let w = BootWants {
            iommu: false,
            ..wants()
        };
        assert!(reboot_reasons(&[], &w, &running).is_empty());
    }

    #[test]
    fn an_unbound_early_function_is_a_reason_and_a_missing_one_is_not() {
        let mut running = running_as_wanted();
        running.drivers.insert(addr("0000:01:00.0"), None);
        let reasons = reboot_reasons(&[], &wants(), &running);
        assert!(reasons[0].contains("on no driver"), "{reasons:?}");
        running.drivers.clear();
        assert!(reboot_reasons(&[], &wants(), &running).is_empty());
    }

    #[test]
    fn pending_changes_belong_to_their_boot() {
        let mut c = BootChanges::default();
        c.record("boot-a", "write /etc/modprobe.d/gpuvirt.conf".into());
        c.record("boot-a", "write /etc/modprobe.d/gpuvirt.conf".into());
        c.record("boot-a", "regenerate the initramfs".into());
        assert_eq!(c.pending(Some("boot-a")).len(), 2);
        assert!(c.pending(Some("boot-b")).is_empty());
        // Unknown boot id: no reboot can be shown, so the changes stay pending.
        assert_eq!(c.pending(None).len(), 2);
        // A change in a later boot starts a new list.
        c.record(
            "boot-b",
            "remove /etc/udev/rules.d/61-gpuvirt-vfio.rules".into(),
        );
        assert_eq!(c.changes.len(), 1);
        assert_eq!(c.boot_id, "boot-b");
    }

    #[test]
    fn the_record_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = BootChangeStore::new(dir.path());
        assert_eq!(store.load().unwrap(), BootChanges::default());
        let mut c = BootChanges::default();
        c.record("b1", "write /etc/modprobe.d/gpuvirt.conf".into());
        store.save(&c).unwrap();
        assert_eq!(store.load().unwrap(), c);
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(matches!(store.load(), Err(RebootStateError::Parse(..))));
    }

    #[test]
    fn the_boot_id_is_read_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(read_boot_id(&root), None);
        let path = root.join(BOOT_ID);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "8a2c5e0e-1111-4222-8333-944445555666\n").unwrap();
        assert_eq!(
            read_boot_id(&root).as_deref(),
            Some("8a2c5e0e-1111-4222-8333-944445555666")
        );
    }
}
