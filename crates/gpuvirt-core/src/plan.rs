//! The planner: policy × inventory × what gpuvirt owns → ordered [`Action`]s, each with its
//! reason and the rule behind it, plus [`Refusal`]s where a safety interlock stops it. An
//! empty plan (no actions, no refusals) means the host already matches the policy.
//!
//! Pure and synchronous: the executor (elsewhere) runs each action's [`Action::steps`].
//! Order: removals and returns first (they free capacity and drivers), then module loads
//! and vfio-pci binds, then creations, then boot files and the initramfs.
//!
//! Layout: plan/types.rs holds what a plan is made of, plan/planner.rs and plan/shard.rs
//! the walk over the cards, plan/boot_actions.rs the boot files, plan/action.rs the action
//! vocabulary, plan/boot.rs what the boot files say. This file holds the mod lines, the
//! re-exports and [`plan`]. May import: crate::model, crate::policy, its own children.

pub mod action;
pub mod boot;
mod boot_actions;
mod planner;
mod shard;
mod types;

pub use action::{Action, SlotFunction, SlotReturn, Step};
pub use boot::{boot_wants, read_boot_files, InitramfsTool, InitramfsTooling, BOOT_FILES};
pub use types::{
    mdev_uuid, Plan, PlanState, PlannedAction, Refusal, RefusalKind, MDEV_UUID_NAMESPACE,
};

use crate::model::Inventory;
use crate::policy::{Policy, PolicyOnHost};
use action::VFIO_PCI;
use boot_actions::boot_actions;
use planner::Planner;

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
