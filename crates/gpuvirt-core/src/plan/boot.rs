//! The boot-time files gpuvirt owns, computed whole from the policy: the host's module
//! blacklist and options, early vfio-pci binding (per-slot udev rule or modprobe.d ids), and
//! the module list that loads vfio-pci at boot.
//!
//! May import: crate::host, crate::model, crate::policy, crate::reboot, plan/action.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::host::root::Root;
use crate::model::{Inventory, PciAddress};
use crate::policy::matching::OriginalDrivers;
use crate::policy::{EarlyMethod, Policy, PolicyOnHost, Role, RoleSettings};
use crate::reboot::{BootWants, EarlyFunction};

/// modprobe.d: `[host]` blacklist/options and vfio-pci `ids=`/`softdep` for early binding.
pub const MODPROBE_CONF: &str = "etc/modprobe.d/gpuvirt.conf";
/// udev: `driver_override=vfio-pci` on each function of an early passthrough slot.
pub const UDEV_RULES: &str = "etc/udev/rules.d/61-gpuvirt-vfio.rules";
/// modules-load.d: loads vfio-pci at boot for the udev method.
pub const MODULES_LOAD: &str = "etc/modules-load.d/gpuvirt.conf";

/// Every boot file gpuvirt may own (others are never touched).
pub const BOOT_FILES: [&str; 3] = [MODPROBE_CONF, UDEV_RULES, MODULES_LOAD];

/// Reads the current contents of gpuvirt's boot files under `root` (missing files are left
/// out), for [`PlanState::boot_files`](super::PlanState::boot_files).
pub fn read_boot_files(root: &Root) -> io::Result<BTreeMap<PathBuf, String>> {
    let mut files = BTreeMap::new();
    for rel in BOOT_FILES {
        match std::fs::read_to_string(root.join(rel)) {
            Ok(text) => {
                files.insert(PathBuf::from(rel), text);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

/// The distribution's tool that regenerates the initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsTool {
    /// Debian/Ubuntu's initramfs-tools.
    UpdateInitramfs,
    Dracut,
}

impl InitramfsTool {
    /// The command the executor runs (found under the root, see [`crate::host::tools::Tools`]).
    pub fn argv(self) -> [&'static str; 2] {
        match self {
            InitramfsTool::UpdateInitramfs => ["update-initramfs", "-u"],
            InitramfsTool::Dracut => ["dracut", "-f"],
        }
    }
}

/// Which initramfs tool the host has, as the executor will find it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "tool")]
pub enum InitramfsTooling {
    /// Not looked for (a plan made without a host to look at).
    #[default]
    Unknown,
    Found(InitramfsTool),
    /// Neither `update-initramfs` nor `dracut` is installed.
    Missing,
}

impl InitramfsTooling {
    /// Looks for the tools where the executor does, in its order: `update-initramfs` first,
    /// then `dracut`.
    pub fn detect(root: &Root) -> Self {
        let tools = crate::host::tools::Tools::default();
        if root.join(&tools.update_initramfs).is_file() {
            InitramfsTooling::Found(InitramfsTool::UpdateInitramfs)
        } else if root.join(&tools.dracut).is_file() {
            InitramfsTooling::Found(InitramfsTool::Dracut)
        } else {
            InitramfsTooling::Missing
        }
    }
}

/// A passthrough card to keep from host drivers from early boot.
#[derive(Debug, Clone)]
pub(super) struct EarlyCard {
    pub rule: String,
    pub method: EarlyMethod,
    /// The functions of the slot.
    pub functions: Vec<PciAddress>,
}

/// The wanted contents of each boot file; a file absent from the map should not exist.
pub(super) fn wanted_boot_files(
    policy: &Policy,
    inventory: &Inventory,
    early: &[EarlyCard],
    original_drivers: &BTreeMap<PciAddress, Option<String>>,
) -> BTreeMap<PathBuf, String> {
    // Constant, so the same policy always yields byte-identical files (an empty plan).
    let header = "# Written by gpuvirt from its device policy; edits are overwritten.\n";
    let mut files = BTreeMap::new();

    let mut modprobe = String::new();
    for module in &policy.host.blacklist {
        modprobe.push_str(&format!("blacklist {module}\n"));
    }
    for (module, options) in &policy.host.options {
        modprobe.push_str(&format!("options {module} {options}\n"));
    }
    let mut ids = BTreeSet::new();
    let mut softdeps = BTreeSet::new();
    for card in early.iter().filter(|c| c.method == EarlyMethod::Modprobe) {
        for a in &card.functions {
            let Some(f) = inventory.functions.get(a) else {
                continue;
            };
            ids.insert(format!("{:04x}:{:04x}", f.ids.vendor, f.ids.device));
            // The driver the host would bind must wait for vfio-pci to claim the ids first.
            let host_driver = match original_drivers.get(a) {
                Some(original) => original.clone(),
                None => f.driver.clone(),
            };
            if let Some(d) = host_driver.filter(|d| d != super::action::VFIO_PCI) {
                softdeps.insert(d);
            }
        }
    }
    if !ids.is_empty() {
        let ids: Vec<String> = ids.into_iter().collect();
        modprobe.push_str(&format!("options vfio-pci ids={}\n", ids.join(",")));
        for d in softdeps {
            modprobe.push_str(&format!("softdep {d} pre: vfio-pci\n"));
        }
    }
    if !modprobe.is_empty() {
        files.insert(PathBuf::from(MODPROBE_CONF), format!("{header}{modprobe}"));
    }

    let mut rules = String::new();
    for card in early
        .iter()
        .filter(|c| c.method == EarlyMethod::DriverOverride)
    {
        rules.push_str(&format!("# rule {:?}\n", card.rule));
        for a in &card.functions {
            rules.push_str(&format!(
                "ACTION==\"add\", SUBSYSTEM==\"pci\", KERNEL==\"{a}\", ATTR{{driver_override}}=\"vfio-pci\"\n"
            ));
        }
    }
    if !rules.is_empty() {
        files.insert(PathBuf::from(UDEV_RULES), format!("{header}{rules}"));
        files.insert(PathBuf::from(MODULES_LOAD), format!("{header}vfio-pci\n"));
    }
    files
}

/// What the policy wants of the running kernel, for [`crate::reboot::reboot_reasons`]: the
/// IOMMU when a rule passes cards through, the blacklisted modules, and every function (SR-IOV
/// VFs aside) of each slot an `early = true` passthrough rule governs.
pub fn boot_wants(
    policy: &Policy,
    inventory: &Inventory,
    original_drivers: &OriginalDrivers,
) -> BootWants {
    let mut early = Vec::new();
    for a in policy.assign(inventory, original_drivers).values() {
        // A card in conflict is left as it is: the policy wants nothing of it.
        let Some(rule) = a.rule.and_then(|i| policy.rules.get(i)) else {
            continue;
        };
        if a.in_conflict() {
            continue;
        }
        if !matches!(rule.settings, RoleSettings::Passthrough { early: true, .. }) {
            continue;
        }
        let companions = inventory
            .gpus
            .get(&a.gpu)
            .map(|g| g.companions.as_slice())
            .unwrap_or_default();
        let functions = std::iter::once(a.gpu).chain(companions.iter().copied().filter(|c| {
            inventory
                .functions
                .get(c)
                .is_some_and(|f| f.physfn.is_none())
        }));
        early.extend(functions.map(|address| EarlyFunction {
            address,
            rule: rule.name.clone(),
        }));
    }
    BootWants {
        iommu: policy.rules.iter().any(|r| r.role() == Role::Passthrough),
        blacklist: policy.host.blacklist.clone(),
        early,
    }
}

/// Whether a path is the modprobe.d file (a change to it needs a new initramfs).
pub(super) fn is_modprobe_conf(path: &Path) -> bool {
    path == Path::new(MODPROBE_CONF)
}
