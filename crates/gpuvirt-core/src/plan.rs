//! The planner: policy × inventory × what gpuvirt owns → ordered [`Action`]s, each with its
//! reason and the rule behind it, plus [`Refusal`]s where a safety interlock stops it. An
//! empty plan (no actions, no refusals) means the host already matches the policy.
//!
//! Pure and synchronous: the executor (elsewhere) runs each action's [`Action::steps`].
//! Order: removals and returns first (they free capacity and drivers), then module loads
//! and vfio-pci binds, then creations, then boot files and the initramfs.

pub mod action;
pub mod boot;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

pub use action::{Action, SlotFunction, SlotReturn, Step};
pub use boot::{boot_wants, read_boot_files, InitramfsTool, InitramfsTooling, BOOT_FILES};

use crate::iommu::assess_group_for_slot;
use crate::model::{Inventory, PciAddress, PciFunction};
use crate::policy::matching::OriginalDrivers;
use crate::policy::shard::{shard_offers, ResolveError, ShardBackend, ShardOffer, ShardOffers};
use crate::policy::{describe_gpu, Assignment, GpuRule, Policy, Role, RoleSettings, ShardCount};
use action::VFIO_PCI;
use boot::EarlyCard;

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
    /// Current contents of gpuvirt's boot files (see [`read_boot_files`]), by path relative
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

/// Plans `policy` against `inventory` given what gpuvirt owns.
pub fn plan(policy: &Policy, inventory: &Inventory, state: &PlanState) -> Plan {
    let mut p = Planner {
        policy,
        inventory,
        state,
        removals: Vec::new(),
        binds: Vec::new(),
        creations: Vec::new(),
        refusals: Vec::new(),
        notes: Vec::new(),
        early: Vec::new(),
    };
    let assignments = policy.assign(inventory, &state.original_drivers);
    for a in assignments.values() {
        p.gpu(a);
    }
    let mut actions = p.removals;
    if !p.binds.is_empty() && !inventory.modules.vfio_pci {
        actions.push(PlannedAction::new(
            Action::LoadModule {
                module: VFIO_PCI.to_string(),
            },
            "vfio-pci is not loaded; without it drivers_probe leaves the card with no driver"
                .to_string(),
            None,
            None,
        ));
    }
    actions.append(&mut p.binds);
    actions.append(&mut p.creations);
    let (boot, boot_notes) = boot_actions(policy, inventory, state, &p.early);
    actions.extend(boot);
    p.notes.extend(boot_notes);
    Plan {
        actions,
        refusals: p.refusals,
        notes: p.notes,
    }
}

impl PlannedAction {
    fn new(action: Action, reason: String, rule: Option<&str>, gpu: Option<PciAddress>) -> Self {
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

struct Planner<'a> {
    policy: &'a Policy,
    inventory: &'a Inventory,
    state: &'a PlanState,
    removals: Vec<PlannedAction>,
    binds: Vec<PlannedAction>,
    creations: Vec<PlannedAction>,
    refusals: Vec<Refusal>,
    notes: Vec<String>,
    early: Vec<EarlyCard>,
}

impl<'a> Planner<'a> {
    fn refuse(&mut self, kind: RefusalKind, gpu: PciAddress, rule: &GpuRule, message: String) {
        self.refusals.push(Refusal {
            kind,
            gpu,
            rule: Some(rule.name.clone()),
            message,
        });
    }

    /// Every function of the GPU's slot, GPU first.
    fn slot_functions(&self, gpu: PciAddress) -> Vec<&'a PciFunction> {
        let inventory = self.inventory;
        let mut out: Vec<&PciFunction> = inventory.functions.get(&gpu).into_iter().collect();
        if let Some(g) = inventory.gpus.get(&gpu) {
            // SR-IOV VFs can sit in the PF's slot; they belong to the PF's sharding, not
            // to the card's functions.
            out.extend(
                g.companions
                    .iter()
                    .filter_map(|a| inventory.functions.get(a))
                    .filter(|f| f.physfn.is_none()),
            );
        }
        out
    }

    fn gpu(&mut self, a: &Assignment) {
        let Some(index) = a.rule else {
            // Unmatched cards take the default role: `unmanaged` is never touched; `host`
            // only gets back what gpuvirt took.
            if a.role == Role::Host {
                self.host(a.gpu, None);
            }
            return;
        };
        let rule = &self.policy.rules[index];
        if a.in_conflict() {
            let others: Vec<String> = a
                .conflicts
                .iter()
                .map(|&i| format!("{:?}", self.policy.rules[i].name))
                .collect();
            self.refuse(
                RefusalKind::RuleConflict,
                a.gpu,
                rule,
                format!(
                    "rules {:?} and {} match this card but disagree; it is left as it is",
                    rule.name,
                    others.join(", ")
                ),
            );
            return;
        }
        match &rule.settings {
            RoleSettings::Unmanaged => {}
            RoleSettings::Host => self.host(a.gpu, Some(rule)),
            RoleSettings::Passthrough {
                early,
                early_method,
            } => {
                if self.passthrough(a.gpu, rule) && *early {
                    let functions = self
                        .slot_functions(a.gpu)
                        .iter()
                        .map(|f| f.address)
                        .collect();
                    self.early.push(EarlyCard {
                        rule: rule.name.clone(),
                        method: *early_method,
                        functions,
                    });
                }
            }
            RoleSettings::Shard(_) => self.shard(a.gpu, rule),
        }
    }

    /// Undoes what gpuvirt did to a card: its vGPUs, its VFs, its rebinding.
    fn host(&mut self, gpu: PciAddress, rule: Option<&GpuRule>) {
        let name = rule.map(|r| r.name.as_str());
        let why = match rule {
            Some(r) => format!(
                "rule {:?} gives {} to the host",
                r.name,
                describe_gpu(self.inventory, gpu)
            ),
            None => format!(
                "no rule matches {} and default_role is \"host\"",
                describe_gpu(self.inventory, gpu)
            ),
        };
        self.remove_owned_vgpus(
            gpu,
            name,
            &format!("{why}; gpuvirt created this vGPU"),
            |_| true,
        );
        if let Some(f) = self.inventory.functions.get(&gpu) {
            if let Some(s) = f.sriov.as_ref().filter(|s| s.num_vfs > 0) {
                if self.state.owned_sriov.contains(&gpu) {
                    self.removals.push(PlannedAction::new(
                        Action::SetSriovNumVfs {
                            pf: gpu,
                            from: s.num_vfs,
                            to: 0,
                        },
                        format!("{why}; gpuvirt enabled its VFs"),
                        name,
                        Some(gpu),
                    ));
                }
            }
        }
        self.return_slot(gpu, name, &why);
    }

    /// Returns the slot's functions gpuvirt rebound to their original drivers.
    /// True when a return was planned.
    fn return_slot(&mut self, gpu: PciAddress, rule: Option<&str>, why: &str) -> bool {
        let functions: Vec<SlotReturn> = self
            .slot_functions(gpu)
            .into_iter()
            .filter_map(|f| {
                let original = self.state.original_drivers.get(&f.address)?;
                Some(SlotReturn {
                    address: f.address,
                    driver: f.driver.clone(),
                    original_driver: original.clone(),
                })
            })
            .collect();
        let needed = functions.iter().any(|r| {
            let f = self.inventory.functions.get(&r.address);
            r.driver != r.original_driver || f.is_some_and(|f| f.driver_override.is_some())
        });
        if !needed {
            return false;
        }
        self.removals.push(PlannedAction::new(
            Action::ReturnSlotToHost {
                slot: gpu.slot(),
                functions,
            },
            format!("{why}; gpuvirt rebound it and returns it to the driver it found"),
            rule,
            Some(gpu),
        ));
        true
    }

    /// Removes gpuvirt's mdevs (those `keep` rejects) and per-VF vGPUs on the card.
    /// Returns how many mdevs it removed.
    fn remove_owned_vgpus(
        &mut self,
        gpu: PciAddress,
        rule: Option<&str>,
        why: &str,
        remove: impl Fn(&crate::model::Mdev) -> bool,
    ) -> usize {
        let mut removed = 0;
        let parents: Vec<&str> = self
            .inventory
            .mdev_parents
            .values()
            .filter(|p| p.pci_address == Some(gpu))
            .map(|p| p.name.as_str())
            .collect();
        for m in self.inventory.mdevs.values() {
            if parents.contains(&m.parent.as_str())
                && self.state.owned_mdevs.contains(&m.uuid)
                && remove(m)
            {
                removed += 1;
                self.removals.push(PlannedAction::new(
                    Action::RemoveMdev {
                        parent: m.parent.clone(),
                        type_id: m.type_id.clone(),
                        uuid: m.uuid,
                    },
                    why.to_string(),
                    rule,
                    Some(gpu),
                ));
            }
        }
        removed
    }

    /// Plans binding the slot to vfio-pci; false when refused.
    fn passthrough(&mut self, gpu: PciAddress, rule: &GpuRule) -> bool {
        let functions = self.slot_functions(gpu);
        let desc = describe_gpu(self.inventory, gpu);
        let pending: Vec<&PciFunction> = functions
            .iter()
            .copied()
            .filter(|f| f.driver.as_deref() != Some(VFIO_PCI))
            .collect();
        if pending.is_empty() {
            return true;
        }
        if !rule.allow_boot_vga {
            if let Some(f) = functions.iter().find(|f| f.boot_vga == Some(true)) {
                self.refuse(
                    RefusalKind::BootVga,
                    gpu,
                    rule,
                    format!(
                        "{} is the boot/console GPU; detaching it blanks the console (set allow_boot_vga = true in rule {:?} to allow it)",
                        f.address, rule.name
                    ),
                );
                return false;
            }
        }
        let mut groups = BTreeSet::new();
        for f in &functions {
            match f.iommu_group {
                Some(g) => {
                    groups.insert(g);
                }
                None => {
                    self.refuse(
                        RefusalKind::NoIommuGroup,
                        gpu,
                        rule,
                        format!(
                            "{} has no IOMMU group, so it cannot be given to a VM (is the IOMMU enabled? intel_iommu=on / amd_iommu=on)",
                            f.address
                        ),
                    );
                    return false;
                }
            }
        }
        let mut problems = Vec::new();
        for g in &groups {
            if let Some(group) = self.inventory.groups.get(g) {
                let v = assess_group_for_slot(&group.members, gpu.slot());
                problems.extend(v.problems.into_iter().map(|p| format!("group {g}: {p}")));
            }
        }
        if !problems.is_empty() {
            self.refuse(
                RefusalKind::GroupNotViable,
                gpu,
                rule,
                format!(
                    "{desc} shares its IOMMU group with devices the host still uses: {}",
                    problems.join("; ")
                ),
            );
            return false;
        }
        // Unbinding the parent driver destroys its vGPUs: gpuvirt's go first, others block.
        let foreign: Vec<String> = self
            .inventory
            .mdevs
            .values()
            .filter(|m| {
                self.inventory
                    .mdev_parents
                    .get(&m.parent)
                    .is_some_and(|p| p.pci_address == Some(gpu))
                    && !self.state.owned_mdevs.contains(&m.uuid)
            })
            .map(|m| m.uuid.to_string())
            .collect();
        if !foreign.is_empty() {
            self.refuse(
                RefusalKind::NotOwned,
                gpu,
                rule,
                format!(
                    "{desc} carries mdevs gpuvirt did not create ({}); unbinding would destroy them",
                    foreign.join(", ")
                ),
            );
            return false;
        }
        // Its VFs too: vfio-pci on the PF cannot keep them.
        if let Some(s) = self
            .inventory
            .functions
            .get(&gpu)
            .and_then(|f| f.sriov.as_ref())
            .filter(|s| s.num_vfs > 0)
        {
            if !self.state.owned_sriov.contains(&gpu) {
                self.refuse(
                    RefusalKind::NotOwned,
                    gpu,
                    rule,
                    format!(
                        "{desc} has {} VFs gpuvirt did not enable; passing it through would remove them",
                        s.num_vfs
                    ),
                );
                return false;
            }
            self.removals.push(PlannedAction::new(
                Action::SetSriovNumVfs {
                    pf: gpu,
                    from: s.num_vfs,
                    to: 0,
                },
                format!(
                    "rule {:?} passes {desc} through; its VFs must go first",
                    rule.name
                ),
                Some(&rule.name),
                Some(gpu),
            ));
        }
        self.remove_owned_vgpus(
            gpu,
            Some(&rule.name),
            &format!(
                "rule {:?} passes {desc} through; its vGPUs must go first",
                rule.name
            ),
            |_| true,
        );
        self.binds.push(PlannedAction::new(
            Action::BindSlotToVfio {
                slot: gpu.slot(),
                functions: functions
                    .iter()
                    .map(|f| SlotFunction {
                        address: f.address,
                        driver: f.driver.clone(),
                    })
                    .collect(),
            },
            format!(
                "rule {:?} passes {desc} through; {} of its slot's functions are not on vfio-pci",
                rule.name,
                pending.len()
            ),
            Some(&rule.name),
            Some(gpu),
        ));
        true
    }

    fn shard(&mut self, gpu: PciAddress, rule: &GpuRule) {
        let RoleSettings::Shard(spec) = &rule.settings else {
            return;
        };
        let desc = describe_gpu(self.inventory, gpu);
        // A card gpuvirt passed through earlier must be back on its driver first; its vGPU
        // parent appears only then, and the next plan creates the vGPUs.
        if self.return_slot(
            gpu,
            Some(&rule.name),
            &format!("rule {:?} shards {desc}", rule.name),
        ) {
            self.notes.push(format!(
                "{gpu}: vGPUs are planned once the card is back on its driver; plan again after applying"
            ));
            return;
        }
        let Some(offers) = shard_offers(self.inventory, gpu) else {
            self.refuse(
                RefusalKind::NotShardable,
                gpu,
                rule,
                format!("{desc} cannot be split: it is no mdev parent and has no SR-IOV"),
            );
            return;
        };
        if !offers.types_known {
            self.creations.push(PlannedAction::new(
                Action::SetSriovNumVfs {
                    pf: gpu,
                    from: 0,
                    to: offers.total_vfs,
                },
                format!(
                    "rule {:?} shards {desc} with NVIDIA per-VF vGPU; its VFs must exist before a type can be set",
                    rule.name
                ),
                Some(&rule.name),
                Some(gpu),
            ));
            self.notes.push(format!(
                "{gpu}: vGPU types are read once its VFs exist; plan again after applying"
            ));
            return;
        }
        let offer = match offers.resolve(&spec.type_spec) {
            Ok(o) => o.clone(),
            Err(e) => {
                let why = match e {
                    ResolveError::Unknown => {
                        format!("{desc} offers no vGPU type {:?}", spec.type_spec)
                    }
                    ResolveError::Ambiguous(n) => format!(
                        "vGPU type {:?} is ambiguous on {desc}: {}",
                        spec.type_spec,
                        n.join(" or ")
                    ),
                };
                self.refuse(
                    RefusalKind::UnknownType,
                    gpu,
                    rule,
                    format!("{why}; types: {}", offers.describe()),
                );
                return;
            }
        };
        let want = match spec.count {
            ShardCount::Count(n) => n,
            ShardCount::Max => offer.capacity,
        };
        match offers.backend {
            ShardBackend::Mdev => self.shard_mdev(gpu, rule, &offers, &offer, want),
            ShardBackend::NvidiaVf => self.shard_nvidia_vf(gpu, rule, &offer, want),
            ShardBackend::Sriov => self.shard_sriov(gpu, rule, want),
        }
    }

    fn shard_mdev(
        &mut self,
        gpu: PciAddress,
        rule: &GpuRule,
        offers: &ShardOffers,
        offer: &ShardOffer,
        want: u32,
    ) {
        let Some(parent) = offers.mdev_parent.clone() else {
            return;
        };
        let desc = describe_gpu(self.inventory, gpu);
        let label = offer.label();
        let owned = &self.state.owned_mdevs;
        let on_parent: Vec<&crate::model::Mdev> = self
            .inventory
            .mdevs
            .values()
            .filter(|m| m.parent == parent)
            .collect();
        // gpuvirt's mdevs of another type came from an earlier policy: they only take room.
        let freed = self.remove_owned_vgpus(
            gpu,
            Some(&rule.name),
            &format!(
                "rule {:?} wants only {label} on {desc}; gpuvirt created this one of another type",
                rule.name
            ),
            |m| m.type_id.as_deref() != Some(offer.id.as_str()),
        );
        let wanted: Vec<Uuid> = (0..want)
            .map(|i| mdev_uuid(&rule.name, &parent, i))
            .collect();
        let present: Vec<&crate::model::Mdev> = on_parent
            .iter()
            .copied()
            .filter(|m| m.type_id.as_deref() == Some(offer.id.as_str()))
            .collect();
        let have = present.len() as u32;
        if have > want {
            let mut surplus = have - want;
            // gpuvirt's own, those not among the wanted UUIDs first.
            let mut removable: Vec<&crate::model::Mdev> = present
                .iter()
                .copied()
                .filter(|m| owned.contains(&m.uuid) && !wanted.contains(&m.uuid))
                .collect();
            removable.sort_by_key(|m| m.uuid);
            for m in removable.into_iter().take(surplus as usize) {
                surplus -= 1;
                self.removals.push(PlannedAction::new(
                    Action::RemoveMdev {
                        parent: parent.clone(),
                        type_id: m.type_id.clone(),
                        uuid: m.uuid,
                    },
                    format!(
                        "rule {:?} wants {want} × {label} on {desc}; {have} exist",
                        rule.name
                    ),
                    Some(&rule.name),
                    Some(gpu),
                ));
            }
            if surplus > 0 {
                self.refuse(
                    RefusalKind::NotOwned,
                    gpu,
                    rule,
                    format!(
                        "{desc} has {have} × {label}, {surplus} more than wanted, and gpuvirt did not create the extra ones; they are left alone"
                    ),
                );
            }
            return;
        }
        let missing = want - have;
        if missing == 0 {
            return;
        }
        let room = offer.capacity.saturating_sub(offer.existing) + freed as u32;
        let taken: BTreeSet<Uuid> = self.inventory.mdevs.keys().copied().collect();
        let creatable: Vec<(u32, Uuid)> = wanted
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, u)| !taken.contains(u))
            .map(|(i, u)| (i as u32, u))
            .take(missing.min(room) as usize)
            .collect();
        for (i, uuid) in &creatable {
            self.creations.push(PlannedAction::new(
                Action::CreateMdev {
                    parent: parent.clone(),
                    type_id: offer.id.clone(),
                    type_name: offer.name.clone(),
                    uuid: *uuid,
                },
                format!(
                    "rule {:?} wants {want} × {label} on {desc}; {have} exist (this is instance {})",
                    rule.name,
                    i + 1
                ),
                Some(&rule.name),
                Some(gpu),
            ));
        }
        let short = missing - creatable.len() as u32;
        if short > 0 {
            self.refuse(
                RefusalKind::NoCapacity,
                gpu,
                rule,
                format!(
                    "{desc} has room for {room} more {label} but rule {:?} wants {missing} more; types: {}",
                    rule.name,
                    offers.describe()
                ),
            );
        }
    }

    fn shard_nvidia_vf(&mut self, gpu: PciAddress, rule: &GpuRule, offer: &ShardOffer, want: u32) {
        let desc = describe_gpu(self.inventory, gpu);
        let label = offer.label();
        let Ok(type_id) = offer.id.parse::<u32>() else {
            return;
        };
        let vfs: Vec<&PciFunction> = self
            .inventory
            .functions
            .get(&gpu)
            .and_then(|f| f.sriov.as_ref())
            .map(|s| {
                s.vfs
                    .iter()
                    .filter_map(|a| self.inventory.functions.get(a))
                    .collect()
            })
            .unwrap_or_default();
        let owned = &self.state.owned_vgpu_vfs;
        let current = |f: &PciFunction| f.nvidia_vgpu.as_ref().and_then(|v| v.current_type);
        // gpuvirt's vGPUs of another type came from an earlier policy.
        for vf in vfs.iter().filter(|f| owned.contains(&f.address)) {
            if let Some(t) = current(vf).filter(|t| *t != type_id) {
                self.removals.push(PlannedAction::new(
                    Action::ClearVgpuType { vf: vf.address, type_id: t },
                    format!("rule {:?} wants only {label} on {desc}; gpuvirt created this vGPU of another type", rule.name),
                    Some(&rule.name),
                    Some(gpu),
                ));
            }
        }
        let present: Vec<&&PciFunction> =
            vfs.iter().filter(|f| current(f) == Some(type_id)).collect();
        let have = present.len() as u32;
        if have > want {
            let mut surplus = have - want;
            for vf in present.iter().rev().filter(|f| owned.contains(&f.address)) {
                if surplus == 0 {
                    break;
                }
                surplus -= 1;
                self.removals.push(PlannedAction::new(
                    Action::ClearVgpuType {
                        vf: vf.address,
                        type_id,
                    },
                    format!(
                        "rule {:?} wants {want} × {label} on {desc}; {have} exist",
                        rule.name
                    ),
                    Some(&rule.name),
                    Some(gpu),
                ));
            }
            if surplus > 0 {
                self.refuse(
                    RefusalKind::NotOwned,
                    gpu,
                    rule,
                    format!("{desc} has {surplus} more {label} than wanted that gpuvirt did not create; they are left alone"),
                );
            }
            return;
        }
        let missing = (want - have) as usize;
        let free: Vec<&&PciFunction> = vfs
            .iter()
            .filter(|f| {
                f.nvidia_vgpu.as_ref().is_some_and(|v| {
                    v.current_type.is_none() && v.creatable_types.iter().any(|t| t.id == type_id)
                })
            })
            .take(missing)
            .collect();
        for vf in &free {
            self.creations.push(PlannedAction::new(
                Action::SetVgpuType {
                    vf: vf.address,
                    type_id,
                    type_name: offer.name.clone(),
                },
                format!(
                    "rule {:?} wants {want} × {label} on {desc}; {have} exist",
                    rule.name
                ),
                Some(&rule.name),
                Some(gpu),
            ));
        }
        if free.len() < missing {
            self.refuse(
                RefusalKind::NoCapacity,
                gpu,
                rule,
                format!(
                    "{desc} has {} free VFs that can take {label} but rule {:?} wants {missing} more",
                    free.len(),
                    rule.name
                ),
            );
        }
    }

    fn shard_sriov(&mut self, gpu: PciAddress, rule: &GpuRule, want: u32) {
        let desc = describe_gpu(self.inventory, gpu);
        let Some(sriov) = self
            .inventory
            .functions
            .get(&gpu)
            .and_then(|f| f.sriov.as_ref())
        else {
            return;
        };
        let have = sriov.num_vfs;
        if have == want {
            return;
        }
        if have != 0 && !self.state.owned_sriov.contains(&gpu) {
            self.refuse(
                RefusalKind::NotOwned,
                gpu,
                rule,
                format!("{desc} has {have} VFs that gpuvirt did not enable; changing the count to {want} would remove them"),
            );
            return;
        }
        let action = PlannedAction::new(
            Action::SetSriovNumVfs {
                pf: gpu,
                from: have,
                to: want,
            },
            format!(
                "rule {:?} wants {want} VFs on {desc}; {have} exist",
                rule.name
            ),
            Some(&rule.name),
            Some(gpu),
        );
        if want < have {
            self.removals.push(action);
        } else {
            self.creations.push(action);
        }
    }
}

/// Writes and removals that bring gpuvirt's boot files to what the policy wants, and an
/// initramfs rebuild when modprobe.d changes (naming the tool the executor will run), with a
/// note when no tool is installed.
fn boot_actions(
    policy: &Policy,
    inventory: &Inventory,
    state: &PlanState,
    early: &[EarlyCard],
) -> (Vec<PlannedAction>, Vec<String>) {
    let wanted = boot::wanted_boot_files(policy, inventory, early, &state.original_drivers);
    let mut actions = Vec::new();
    let mut initramfs = false;
    let why_of = |path: &PathBuf| -> String {
        if boot::is_modprobe_conf(path) {
            "module blacklist/options and early vfio-pci ids for the next boot".to_string()
        } else {
            "early vfio-pci binding of passthrough slots at the next boot".to_string()
        }
    };
    for (path, contents) in &wanted {
        if state.boot_files.get(path) != Some(contents) {
            initramfs |= boot::is_modprobe_conf(path);
            actions.push(PlannedAction::new(
                Action::WriteBootFile {
                    path: path.clone(),
                    contents: contents.clone(),
                },
                why_of(path),
                None,
                None,
            ));
        }
    }
    for path in state.boot_files.keys() {
        if !wanted.contains_key(path) && BOOT_FILES.iter().any(|b| PathBuf::from(b) == *path) {
            initramfs |= boot::is_modprobe_conf(path);
            actions.push(PlannedAction::new(
                Action::RemoveBootFile { path: path.clone() },
                format!("no longer wanted by the policy ({})", why_of(path)),
                None,
                None,
            ));
        }
    }
    let mut notes = Vec::new();
    if initramfs {
        let why = "the initramfs carries a copy of modprobe.d";
        let mut planned = PlannedAction::new(Action::RegenerateInitramfs, why.into(), None, None);
        match state.initramfs_tool {
            InitramfsTooling::Unknown => {}
            InitramfsTooling::Found(tool) => {
                let argv = tool.argv();
                planned.reason = format!("{why}; gpuvirt runs `{}`", argv.join(" "));
                planned.steps = vec![Step::Run {
                    argv: argv.iter().map(|a| a.to_string()).collect(),
                }];
            }
            InitramfsTooling::Missing => {
                // Still planned: the boot files are written either way, and the apply then
                // stops at this step with the same advice instead of forgetting the rebuild.
                planned.reason = format!("{why}; no tool to regenerate it is installed");
                notes.push(
                    "neither update-initramfs nor dracut is installed, so the initramfs cannot \
                     be regenerated and the apply will fail at that step: install \
                     initramfs-tools (then run `update-initramfs -u`) or dracut (then run \
                     `dracut -f`)"
                        .to_string(),
                );
            }
        }
        actions.push(planned);
    }
    (actions, notes)
}
