//! The planner's walk over the governed GPUs: one card's role decides its actions (host,
//! passthrough here; shard in plan/shard.rs). May import: crate::model, crate::iommu,
//! crate::policy, plan/{action, boot, types}.

use std::collections::BTreeSet;

use super::action::{Action, SlotFunction, SlotReturn, VFIO_PCI};
use super::boot::EarlyCard;
use super::types::{PlanState, PlannedAction, Refusal, RefusalKind};
use crate::iommu::assess_group_for_slot;
use crate::model::{Inventory, PciAddress, PciFunction};
use crate::policy::{describe_gpu, Assignment, GpuRule, Policy, Role, RoleSettings};

pub(super) struct Planner<'a> {
    pub(super) policy: &'a Policy,
    pub(super) inventory: &'a Inventory,
    pub(super) state: &'a PlanState,
    pub(super) removals: Vec<PlannedAction>,
    pub(super) binds: Vec<PlannedAction>,
    pub(super) creations: Vec<PlannedAction>,
    pub(super) refusals: Vec<Refusal>,
    pub(super) notes: Vec<String>,
    pub(super) early: Vec<EarlyCard>,
}

impl<'a> Planner<'a> {
    pub(super) fn refuse(
        &mut self,
        kind: RefusalKind,
        gpu: PciAddress,
        rule: &GpuRule,
        message: String,
    ) {
        self.refusals.push(Refusal {
            kind,
            gpu,
            rule: Some(rule.name.clone()),
            message,
        });
    }

    /// Plans `action`, the removal of one of more shards than `rule` wants (`why`: how many it
    /// wants of what, and how many exist).
    pub(super) fn remove_surplus(
        &mut self,
        action: Action,
        rule: &GpuRule,
        gpu: PciAddress,
        why: String,
    ) {
        self.removals.push(PlannedAction::new(
            action,
            format!("rule {:?} wants {why}", rule.name),
            Some(&rule.name),
            Some(gpu),
        ));
    }

    /// Every function of the GPU's slot, GPU first.
    pub(super) fn slot_functions(&self, gpu: PciAddress) -> Vec<&'a PciFunction> {
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

    pub(super) fn gpu(&mut self, a: &Assignment) {
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
            // On the host or on vfio-pci, both in policy: the libvirt hook (or a manual
            // AssignPassthrough/ReturnToHost) moves the card when a VM needs it.
            RoleSettings::Passthrough {
                on_demand: true, ..
            } => {}
            RoleSettings::Host => self.host(a.gpu, Some(rule)),
            RoleSettings::Passthrough {
                early,
                early_method,
                ..
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
    pub(super) fn host(&mut self, gpu: PciAddress, rule: Option<&GpuRule>) {
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
    pub(super) fn return_slot(&mut self, gpu: PciAddress, rule: Option<&str>, why: &str) -> bool {
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
    pub(super) fn remove_owned_vgpus(
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
    pub(super) fn passthrough(&mut self, gpu: PciAddress, rule: &GpuRule) -> bool {
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
                let v = assess_group_for_slot(*g, &group.members, gpu.slot());
                problems.extend(v.problems);
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
}
