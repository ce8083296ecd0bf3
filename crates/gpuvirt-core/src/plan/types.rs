//! What planning yields and takes: [`Plan`], [`PlannedAction`], [`Refusal`], [`PlanState`]
//! and the stable mdev UUIDs. May import: crate::model, crate::policy, plan/{action, boot}.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use super::action::{Action, Step};
use super::boot::InitramfsTooling;
use crate::model::PciAddress;
use crate::policy::matching::OriginalDrivers;

/// The namespace of gpuvirt's mdev UUIDs (UUIDv5): fixed forever, so a rule recreates the
/// same UUIDs after a reboot and VM definitions that name them keep working.
pub const MDEV_UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6770_7576_6972_5f6d_8465_765f_7575_6964);

/// The stable UUID of the `index`th (0-based) mdev a rule creates on a parent.
pub fn mdev_uuid(rule: &str, parent: &str, index: u32) -> Uuid {
    Uuid::new_v5(
        &MDEV_UUID_NAMESPACE,
        format!("{rule}\n{parent}\n{index}").as_bytes(),
    )
}

/// What gpuvirt owns and found, from its ledger and the boot files on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanState {
    /// mdevs gpuvirt created (others are never removed).
    pub owned_mdevs: BTreeSet<Uuid>,
    /// VFs whose `current_vgpu_type` gpuvirt set.
    pub owned_vgpu_vfs: BTreeSet<PciAddress>,
    /// PFs whose `sriov_numvfs` gpuvirt set.
    pub owned_sriov: BTreeSet<PciAddress>,
    /// Functions gpuvirt rebound, and the driver it found on each (`None`: unbound).
    pub original_drivers: OriginalDrivers,
    /// Current contents of gpuvirt's boot files (see [`read_boot_files`](super::boot::read_boot_files)), by path relative
    /// to the root; a missing file is absent.
    pub boot_files: BTreeMap<PathBuf, String>,
    /// The initramfs tool the executor will run ([`InitramfsTooling::detect`]).
    pub initramfs_tool: InitramfsTooling,
}

/// An action with its reason and the rule behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedAction {
    pub action: Action,
    pub reason: String,
    /// The rule that wants it (`None` for host-wide `[host]` settings).
    pub rule: Option<String>,
    /// The GPU concerned, when there is one.
    pub gpu: Option<PciAddress>,
    /// The exact steps, in order.
    pub steps: Vec<Step>,
}

/// Why the planner would not act on a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// Passing through the boot/console GPU without `allow_boot_vga = true`.
    BootVga,
    /// Other members of the card's IOMMU group are still bound to host drivers.
    GroupNotViable,
    /// The card has no IOMMU group (IOMMU off or unsupported).
    NoIommuGroup,
    /// Rules that match the card disagree.
    RuleConflict,
    /// The card cannot be split.
    NotShardable,
    /// The card does not offer the wanted type.
    UnknownType,
    /// The card cannot hold as many as wanted.
    NoCapacity,
    /// Reaching the policy would need removing or rebinding what gpuvirt does not own.
    NotOwned,
}

/// A change the policy wants that the planner will not make, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub gpu: PciAddress,
    pub rule: Option<String>,
    pub message: String,
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<PlannedAction>,
    pub refusals: Vec<Refusal>,
    /// Things the plan cannot know yet (e.g. NVIDIA vGPU types before VFs exist): plan again
    /// after applying.
    pub notes: Vec<String>,
}

impl Plan {
    /// True when the host already matches the policy.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.refusals.is_empty()
    }

    /// Why a reboot is needed once this plan is applied (boot-time files changed).
    pub fn reboot_reasons(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter(|a| a.action.takes_effect_at_boot())
            .map(|a| format!("{}: {}", a.action, a.reason))
            .collect()
    }

    /// Numbered lines with reasons, for people.
    pub fn render(&self) -> String {
        self.to_string()
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            writeln!(f, "Nothing to do: the host matches the policy.")?;
        }
        let width = self.actions.len().to_string().len();
        for (i, a) in self.actions.iter().enumerate() {
            writeln!(f, "{:>width$}. {}", i + 1, a.action)?;
            let rule = a
                .rule
                .as_deref()
                .map_or("[host]".to_string(), |r| format!("rule {r:?}"));
            writeln!(f, "{:>width$}  why: {} ({rule})", "", a.reason)?;
        }
        if !self.refusals.is_empty() {
            writeln!(f, "Refused:")?;
            for r in &self.refusals {
                let rule = r
                    .rule
                    .as_deref()
                    .map_or(String::new(), |n| format!(" (rule {n:?})"));
                writeln!(f, "  - {}: {}{rule}", r.gpu, r.message)?;
            }
        }
        for n in &self.notes {
            writeln!(f, "Note: {n}")?;
        }
        Ok(())
    }
}

impl PlannedAction {
    pub(super) fn new(
        action: Action,
        reason: String,
        rule: Option<&str>,
        gpu: Option<PciAddress>,
    ) -> Self {
        let steps = action.steps();
        Self {
            action,
            reason,
            rule: rule.map(str::to_string),
            gpu,
            steps,
        }
    }
}
