//! Passthrough safety interlocks: pure checks over an [`Inventory`] and a few extra [`Facts`]
//! (holders, what storage/network functions back, the CPU vendor), each refusal a distinct
//! typed error whose message names the devices and the way out.
//!
//! [`Facts::gather`] does the reading (under the root); [`check_passthrough`] and
//! [`check_return`] only decide, so the planner, the daemon and tests share one verdict.
//!
//! May import: crate::error, crate::host, crate::holders, crate::iommu, crate::model,
//! crate::state::ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::error::ErrorKind;
use crate::holders::{holders_of, Holder};
use crate::host::root::Root;
use crate::iommu::{class_name, is_vm_safe_driver};
use crate::model::{Inventory, PciAddress, PciFunction, PciSlot};
use crate::state::ledger::Ledger;

/// The CPU vendor, which decides the IOMMU kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

impl CpuVendor {
    /// From `/proc/cpuinfo` text (`vendor_id : GenuineIntel`).
    pub fn from_cpuinfo(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("vendor_id"))?;
        let value = line.split_once(':')?.1.trim();
        Some(match value {
            "GenuineIntel" => CpuVendor::Intel,
            "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        })
    }

    /// The kernel command-line words that turn the IOMMU on.
    pub fn iommu_parameters(vendor: Option<Self>) -> &'static str {
        match vendor {
            Some(CpuVendor::Intel) => "intel_iommu=on iommu=pt",
            Some(CpuVendor::Amd) => "amd_iommu=on iommu=pt",
            _ => "intel_iommu=on (Intel) or amd_iommu=on (AMD), plus iommu=pt,",
        }
    }
}

/// What the interlocks need beyond the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Processes holding the slot's device nodes.
    pub holders: Vec<Holder>,
    /// For storage and network functions in the slot's groups: what they back
    /// (`eno1`, `nvme0n1`, `nvme0n1p2 mounted on /`).
    pub backing: BTreeMap<PciAddress, Vec<String>>,
    pub cpu_vendor: Option<CpuVendor>,
}

impl Facts {
    /// Reads the facts about `slot` under `root`.
    pub fn gather(root: &Root, inventory: &Inventory, slot: PciSlot) -> Facts {
        let functions: Vec<&PciFunction> = slot_functions(inventory, slot).collect();
        let holders = holders_of(root, functions.iter().copied());
        let mounts = fs::read_to_string(root.proc().join("mounts")).unwrap_or_default();
        let mut backing = BTreeMap::new();
        let groups: BTreeSet<u32> = functions.iter().filter_map(|f| f.iommu_group).collect();
        for g in groups {
            let Some(group) = inventory.groups.get(&g) else {
                continue;
            };
            for m in &group.members {
                let Some(f) = m.pci_address.and_then(|a| inventory.functions.get(&a)) else {
                    continue;
                };
                if f.address.slot() == slot {
                    continue;
                }
                let backs = what_it_backs(root, f, &mounts);
                if !backs.is_empty() {
                    backing.insert(f.address, backs);
                }
            }
        }
        let cpu_vendor = fs::read_to_string(root.proc().join("cpuinfo"))
            .ok()
            .and_then(|t| CpuVendor::from_cpuinfo(&t));
        Facts {
            holders,
            backing,
            cpu_vendor,
        }
    }
}

/// Network interfaces, block devices and their mounts behind a storage or network function.
fn what_it_backs(root: &Root, f: &PciFunction, mounts: &str) -> Vec<String> {
    let dev = root.sys().join(&f.sysfs_path);
    let mut out = Vec::new();
    match f.class >> 16 {
        0x02 => {
            for name in list(&dev.join("net")) {
                out.push(format!("network interface {name}"));
            }
        }
        0x01 => {
            let mut blocks = BTreeSet::new();
            for ctrl in list(&dev.join("nvme")) {
                for ns in list(&dev.join("nvme").join(&ctrl)) {
                    if ns.starts_with(&ctrl) && ns.len() > ctrl.len() {
                        blocks.insert(ns);
                    }
                }
            }
            find_block_dirs(&dev, 0, &mut blocks);
            for b in blocks {
                out.push(format!("disk {b}"));
                for (source, target) in mounts.lines().filter_map(|l| {
                    let mut w = l.split_whitespace();
                    Some((w.next()?, w.next()?))
                }) {
                    if backs_source(&b, source) {
                        out.push(format!("{} mounted on {target}", &source[5..]));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// Whether a mount source `/dev/<x>` is block device `disk` or one of its partitions.
fn backs_source(disk: &str, source: &str) -> bool {
    let Some(rest) = source
        .strip_prefix("/dev/")
        .and_then(|s| s.strip_prefix(disk))
    else {
        return false;
    };
    let rest = rest.strip_prefix('p').unwrap_or(rest);
    rest.bytes().all(|b| b.is_ascii_digit())
}

/// Block device names under `block/` directories below a storage controller (AHCI puts them
/// at `ata1/host0/target0:0:0/0:0:0:0/block/sda`); bounded depth, links not followed.
fn find_block_dirs(dir: &Path, depth: u32, out: &mut BTreeSet<String>) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == "block" {
            out.extend(list(&e.path()));
        } else if name.starts_with("ata")
            || name.starts_with("host")
            || name.starts_with("target")
            || name.chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            find_block_dirs(&e.path(), depth + 1, out);
        }
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What the policy explicitly allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowances {
    /// The rule says `allow_boot_vga = true` (a headless host).
    pub boot_vga: bool,
}

/// A member of the card's IOMMU group that keeps the group on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockingMember {
    /// A PCI address or another device name.
    pub name: String,
    pub class: Option<String>,
    pub driver: Option<String>,
    /// What it backs (interfaces, disks, mounts).
    pub backs: Vec<String>,
}

impl fmt::Display for BlockingMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(c) = &self.class {
            write!(f, " ({c})")?;
        }
        write!(
            f,
            " bound to {}",
            self.driver.as_deref().unwrap_or("no driver")
        )?;
        if !self.backs.is_empty() {
            write!(f, ", backing {}", self.backs.join(", "))?;
        }
        Ok(())
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn holders_text(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| {
            let command = if h.command.is_empty() {
                "?"
            } else {
                &h.command
            };
            format!("pid {} ({command}) has {} open", h.pid, h.node)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a card may not be passed through (or returned) now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("there is no PCI device in slot {slot}")]
    NoSuchDevice { slot: PciSlot },
    #[error(
        "{address} is the boot/console GPU (boot_vga=1): passing it through takes the host's \
         console away; pass through another GPU, or set allow_boot_vga = true in its rule if \
         the host runs headless"
    )]
    BootVga { address: PciAddress },
    #[error(
        "IOMMU group {group} of {slot} is not viable: {members}; pass those devices through \
         too, unbind them from their host drivers, or move the card to a slot with its own \
         IOMMU group (ACS)",
        members = join(members)
    )]
    GroupNotViable {
        slot: PciSlot,
        group: u32,
        members: Vec<BlockingMember>,
    },
    #[error(
        "{slot} is in use: {}; stop those processes (or move them to another GPU) and retry",
        holders_text(holders)
    )]
    Busy { slot: PciSlot, holders: Vec<Holder> },
    #[error(
        "the IOMMU is disabled ({why}): add {params} to the kernel command line \
         (GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, then update-grub) and reboot",
        params = CpuVendor::iommu_parameters(*cpu_vendor)
    )]
    IommuDisabled {
        why: String,
        cpu_vendor: Option<CpuVendor>,
    },
    #[error(
        "{address} has no IOMMU group although the IOMMU is on; the platform does not isolate \
         it, so it cannot be passed through"
    )]
    NoIommuGroup { address: PciAddress },
    #[error(
        "slot {slot} was not assigned by gpuvirt, so gpuvirt does not know its original \
         drivers and leaves it alone; rebind it by hand (driver_override, drivers_probe)"
    )]
    NotOwned { slot: PciSlot },
}

impl Refusal {
    /// What kind of refusal this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::NoSuchDevice { .. } => ErrorKind::NoSuchDevice,
            Refusal::BootVga { .. } => ErrorKind::BootVga,
            Refusal::GroupNotViable { .. } => ErrorKind::GroupNotViable,
            Refusal::Busy { .. } => ErrorKind::Busy,
            Refusal::IommuDisabled { .. } | Refusal::NoIommuGroup { .. } => ErrorKind::NotSupported,
            Refusal::NotOwned { .. } => ErrorKind::PolicyViolation,
        }
    }
}

fn slot_functions(inventory: &Inventory, slot: PciSlot) -> impl Iterator<Item = &PciFunction> {
    inventory
        .functions
        .range(PciAddress::new(slot.domain, slot.bus, slot.device, 0)..)
        .map(|(_, f)| f)
        .take_while(move |f| f.address.slot() == slot)
}

/// Whether the card in `slot` may be given to vfio-pci now. Every refusal that applies is
/// returned, in a stable order (device, IOMMU, boot VGA, group, holders).
pub fn check_passthrough(
    inventory: &Inventory,
    slot: PciSlot,
    facts: &Facts,
    allow: Allowances,
) -> Result<(), Vec<Refusal>> {
    let functions: Vec<&PciFunction> = slot_functions(inventory, slot).collect();
    if functions.is_empty() {
        return Err(vec![Refusal::NoSuchDevice { slot }]);
    }
    let mut refusals = Vec::new();
    if !inventory.iommu.enabled {
        let why = if inventory.iommu.reasons.is_empty() {
            "no IOMMU groups".to_string()
        } else {
            inventory.iommu.reasons.join("; ")
        };
        refusals.push(Refusal::IommuDisabled {
            why,
            cpu_vendor: facts.cpu_vendor,
        });
    } else {
        for f in functions.iter().filter(|f| f.iommu_group.is_none()) {
            refusals.push(Refusal::NoIommuGroup { address: f.address });
        }
    }
    if !allow.boot_vga {
        for f in functions.iter().filter(|f| f.boot_vga == Some(true)) {
            refusals.push(Refusal::BootVga { address: f.address });
        }
    }
    let groups: BTreeSet<u32> = functions.iter().filter_map(|f| f.iommu_group).collect();
    for g in groups {
        let Some(group) = inventory.groups.get(&g) else {
            continue;
        };
        let members: Vec<BlockingMember> = group
            .members
            .iter()
            .filter(|m| m.pci_address.map(|a| a.slot()) != Some(slot))
            .filter(|m| m.class.is_none_or(|c| c >> 8 != 0x0604))
            .filter(|m| m.driver.as_deref().is_some_and(|d| !is_vm_safe_driver(d)))
            .map(|m| BlockingMember {
                name: m.name.clone(),
                class: m.class.map(|c| class_name(c).to_string()),
                driver: m.driver.clone(),
                backs: m
                    .pci_address
                    .and_then(|a| facts.backing.get(&a).cloned())
                    .unwrap_or_default(),
            })
            .collect();
        if !members.is_empty() {
            refusals.push(Refusal::GroupNotViable {
                slot,
                group: g,
                members,
            });
        }
    }
    if !facts.holders.is_empty() {
        refusals.push(Refusal::Busy {
            slot,
            holders: facts.holders.clone(),
        });
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

/// Whether the card in `slot` may be returned to the host: gpuvirt must own it, and no VM or
/// process may hold it (a held vfio group makes the unbind hang).
pub fn check_return(ledger: &Ledger, slot: PciSlot, facts: &Facts) -> Result<(), Vec<Refusal>> {
    let mut refusals = Vec::new();
    if ledger.slot(slot).is_none() {
        refusals.push(Refusal::NotOwned { slot });
    }
    if !facts.holders.is_empty() {
        refusals.push(Refusal::Busy {
            slot,
            holders: facts.holders.clone(),
        });
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}
