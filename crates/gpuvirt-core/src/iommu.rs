//! IOMMU verdicts as pure functions: group viability for passthrough, and whether the host's
//! IOMMU is on and why.
//!
//! Kept free of filesystem access so the policy and planner code can call the same functions
//! on an [`Inventory`](crate::Inventory) snapshot.
//!
//! May import: crate::model.

use crate::model::{GroupMember, IommuStatus, PciSlot};

/// The verdict on one IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viability {
    pub viable: bool,
    /// One sentence per member that blocks passthrough.
    pub problems: Vec<String>,
}

/// Drivers that hand a device to user space (VFIO) or park it (pci-stub): such members do
/// not keep a group on the host.
pub fn is_vm_safe_driver(driver: &str) -> bool {
    driver.contains("vfio") || driver == "pci-stub" || driver == "pci_stub"
}

fn is_bridge(member: &GroupMember) -> bool {
    member.class.is_some_and(|c| c >> 8 == 0x0604)
}

/// Whether a whole group can be given to a VM, and which members stand in the way.
///
/// Bridges are ignored, and so are members that are unbound or bound to a VFIO driver or
/// pci-stub. The group's cards are the slots holding a display function (a GPU with its audio
/// or USB functions): passing a card through rebinds its whole slot to vfio-pci, so the card's
/// own functions are never its problems. The group is viable when one card (in a group
/// without a card, one slot) holds every member still bound to a host driver. Otherwise each
/// member that would stay on the host is named, with its class, driver and why.
pub fn assess_group(id: u32, members: &[GroupMember]) -> Viability {
    let host_bound: Vec<&GroupMember> = members.iter().filter(|m| is_host_bound(m)).collect();
    let mut cards: Vec<PciSlot> = members
        .iter()
        .filter(|m| !is_bridge(m) && m.class.is_some_and(|c| c >> 16 == 0x03))
        .filter_map(|m| m.pci_address.map(|a| a.slot()))
        .collect();
    cards.sort_unstable();
    cards.dedup();
    let candidates: Vec<PciSlot> = if cards.is_empty() {
        host_bound
            .iter()
            .filter_map(|m| m.pci_address.map(|a| a.slot()))
            .collect()
    } else {
        cards.clone()
    };
    let moves_with = |slot: PciSlot| host_bound.iter().all(|m| in_slot(m, slot));
    if host_bound.is_empty() || candidates.into_iter().any(moves_with) {
        return Viability {
            viable: true,
            problems: Vec::new(),
        };
    }
    let problems = host_bound
        .iter()
        .filter_map(|m| {
            let desc = describe(m);
            let own = m
                .pci_address
                .map(|a| a.slot())
                .filter(|s| cards.contains(s));
            Some(match own {
                _ if cards.is_empty() => format!("{desc} is bound to a host driver"),
                None => format!("{desc} shares IOMMU group {id} and would stay on the host"),
                // The only card's own functions move with it.
                Some(_) if cards.len() == 1 => return None,
                Some(own) => {
                    let others: Vec<String> = cards
                        .iter()
                        .filter(|s| **s != own)
                        .map(ToString::to_string)
                        .collect();
                    let (noun, rest) = if others.len() == 1 {
                        ("card", "the other")
                    } else {
                        ("cards", "the others")
                    };
                    format!(
                        "{desc} belongs to the card at {own}, which shares IOMMU group {id} with \
                         the {noun} at {}: passing one through would leave {rest} on the host",
                        others.join(", ")
                    )
                }
            })
        })
        .collect();
    Viability {
        viable: false,
        problems,
    }
}

/// Whether the card in `slot` can be given to a VM given the rest of its group `id`: members
/// of `slot` itself move with the card, so only the other (non-bridge) members must be
/// unbound or bound to VFIO/pci-stub; each one that is not would stay on the host.
pub fn assess_group_for_slot(id: u32, members: &[GroupMember], slot: PciSlot) -> Viability {
    let problems: Vec<String> = members
        .iter()
        .filter(|m| is_host_bound(m) && !in_slot(m, slot))
        .map(|m| {
            format!(
                "{} shares IOMMU group {id} and would stay on the host",
                describe(m)
            )
        })
        .collect();
    Viability {
        viable: problems.is_empty(),
        problems,
    }
}

/// A non-bridge member bound to a driver that keeps it on the host.
fn is_host_bound(member: &GroupMember) -> bool {
    !is_bridge(member)
        && member
            .driver
            .as_deref()
            .is_some_and(|d| !is_vm_safe_driver(d))
}

/// Whether `member` is a function of the card in `slot` (a non-PCI member never is).
fn in_slot(member: &GroupMember, slot: PciSlot) -> bool {
    member.pci_address.map(|a| a.slot()) == Some(slot)
}

/// `0000:04:00.0 (Ethernet controller, igb)`: the member, its class and its driver.
fn describe(member: &GroupMember) -> String {
    let driver = member.driver.as_deref().unwrap_or("no driver");
    match member.class {
        Some(class) => format!("{} ({}, {driver})", member.name, class_name(class)),
        None => format!("{} ({driver})", member.name),
    }
}

/// A human name for a 24-bit PCI class code (subclass when known, else the base class), as
/// pci.ids' class section spells it.
pub fn class_name(class: u32) -> &'static str {
    let base = (class >> 16) as u8;
    let sub = (class >> 8) as u8;
    let specific = match (base, sub) {
        (0x01, 0x00) => Some("SCSI storage controller"),
        (0x01, 0x01) => Some("IDE interface"),
        (0x01, 0x04) => Some("RAID bus controller"),
        (0x01, 0x06) => Some("SATA controller"),
        (0x01, 0x07) => Some("Serial Attached SCSI controller"),
        (0x01, 0x08) => Some("Non-Volatile memory controller"),
        (0x02, 0x00) => Some("Ethernet controller"),
        (0x02, 0x07) => Some("Infiniband controller"),
        (0x02, 0x80) => Some("Network controller"),
        (0x03, 0x00) => Some("VGA compatible controller"),
        (0x03, 0x01) => Some("XGA compatible controller"),
        (0x03, 0x02) => Some("3D controller"),
        (0x03, 0x80) => Some("Display controller"),
        (0x04, 0x00) => Some("Multimedia video controller"),
        (0x04, 0x01) => Some("Multimedia audio controller"),
        (0x04, 0x03) => Some("Audio device"),
        (0x06, 0x00) => Some("Host bridge"),
        (0x06, 0x01) => Some("ISA bridge"),
        (0x06, 0x04) => Some("PCI bridge"),
        (0x08, 0x06) => Some("IOMMU"),
        (0x0c, 0x03) => Some("USB controller"),
        (0x0c, 0x05) => Some("SMBus"),
        (0x0c, 0x80) => Some("Serial bus controller"),
        (0x12, 0x00) => Some("Processing accelerators"),
        _ => None,
    };
    specific.unwrap_or(match base {
        0x00 => "Unclassified device",
        0x01 => "Mass storage controller",
        0x02 => "Network controller",
        0x03 => "Display controller",
        0x04 => "Multimedia controller",
        0x05 => "Memory controller",
        0x06 => "Bridge",
        0x07 => "Communication controller",
        0x08 => "Generic system peripheral",
        0x09 => "Input device controller",
        0x0a => "Docking station",
        0x0b => "Processor",
        0x0c => "Serial bus controller",
        0x0d => "Wireless controller",
        0x0e => "Intelligent controller",
        0x0f => "Satellite communications controller",
        0x10 => "Encryption controller",
        0x11 => "Signal processing controller",
        0x12 => "Processing accelerators",
        0x13 => "Non-Essential Instrumentation",
        0x40 => "Coprocessor",
        _ => "Unassigned class",
    })
}

/// Kernel command line words that bear on the IOMMU and VFIO, in command line order.
pub fn iommu_cmdline_flags(cmdline: &str) -> Vec<String> {
    cmdline
        .split_ascii_whitespace()
        .filter(|word| {
            let key = word.split_once('=').map_or(*word, |(k, _)| k);
            matches!(
                key,
                "intel_iommu"
                    | "amd_iommu"
                    | "iommu"
                    | "pcie_acs_override"
                    | "modprobe.blacklist"
                    | "rd.driver.blacklist"
                    | "rd.driver.pre"
            ) || key.starts_with("iommu.")
                || key.starts_with("vfio")
                || key.starts_with("amd_iommu")
                || key.starts_with("intel_iommu")
        })
        .map(str::to_string)
        .collect()
}

fn flag_value<'a>(flags: &'a [String], key: &str) -> Option<&'a str> {
    flags.iter().rev().find_map(|f| {
        let (k, v) = f.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Whether the IOMMU is on (groups exist), with the evidence and, when it is off, what to do.
pub fn iommu_status(
    units: Vec<String>,
    cmdline_flags: Vec<String>,
    group_count: usize,
) -> IommuStatus {
    let mut reasons = Vec::new();
    let enabled = group_count > 0;
    let intel_off =
        flag_value(&cmdline_flags, "intel_iommu").is_some_and(|v| v.split(',').any(|o| o == "off"));
    let amd_off =
        flag_value(&cmdline_flags, "amd_iommu").is_some_and(|v| v.split(',').any(|o| o == "off"));
    let generic_off = flag_value(&cmdline_flags, "iommu").is_some_and(|v| v == "off");
    let units_text = units.join(", ");
    // dmar* units are Intel VT-d, ivhd* are AMD-Vi: name the right parameter when we can tell.
    let hint = if units.iter().any(|u| u.starts_with("dmar")) {
        "add intel_iommu=on to the kernel command line"
    } else if units.iter().any(|u| u.starts_with("ivhd")) {
        "add amd_iommu=on to the kernel command line"
    } else {
        "enable VT-d/AMD-Vi in the firmware and add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line"
    };
    if enabled {
        reasons.push(format!(
            "{group_count} IOMMU groups in /sys/kernel/iommu_groups"
        ));
        if !units.is_empty() {
            reasons.push(format!("IOMMU units in /sys/class/iommu: {units_text}"));
        }
        if flag_value(&cmdline_flags, "iommu") == Some("pt")
            || flag_value(&cmdline_flags, "iommu.passthrough") == Some("1")
        {
            reasons.push(
                "host devices use passthrough DMA mapping (iommu=pt); devices given to VMs are still isolated"
                    .to_string(),
            );
        }
    } else {
        for (off, word) in [
            (intel_off, "intel_iommu=off"),
            (amd_off, "amd_iommu=off"),
            (generic_off, "iommu=off"),
        ] {
            if off {
                reasons.push(format!(
                    "the kernel command line disables the IOMMU ({word}): remove it"
                ));
            }
        }
        if units.is_empty() {
            reasons.push(format!(
                "no IOMMU units in /sys/class/iommu and no groups in /sys/kernel/iommu_groups: {hint}"
            ));
        } else {
            reasons.push(format!(
                "IOMMU units are present ({units_text}) but there are no groups in /sys/kernel/iommu_groups: DMA remapping is not active; {hint}"
            ));
        }
    }
    IommuStatus {
        enabled,
        units,
        group_count,
        cmdline_flags,
        reasons,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
