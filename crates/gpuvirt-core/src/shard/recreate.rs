//! Persistence of defined mdevs: which of them to create again, with the same UUID, when the
//! host boots or a parent appears (hotplug, driver load, `MDEV_STATE=registered`), and which
//! must wait because their parent is away or full.
//!
//! Only definitions gpuvirt made are recreated. Definitions imported from mdevctl stay
//! mdevctl's to start (its udev rule does so); starting them from both sides is the burst of
//! failing creates of mdevctl#53.
//!
//! May import: crate::model, crate::plan::action, crate::state::ledger.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use crate::model::Inventory;
use crate::plan::Action;
use crate::state::ledger::{Ledger, MdevStart};

/// Why a defined mdev is not active and is not being recreated now. It stays in the ledger:
/// inactive, not forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InactiveReason {
    /// The parent is not registered with the mdev core (unplugged, driver not loaded).
    ParentAbsent,
    /// The parent is present but does not offer the type.
    TypeUnavailable,
    /// The type's `available_instances` is used up, by other mdevs or earlier recreations.
    NoCapacity,
}

/// A defined mdev that stays inactive for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InactiveMdev {
    pub uuid: Uuid,
    pub parent: String,
    pub type_id: String,
    pub reason: InactiveReason,
}

/// What to create, and what must wait.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecreatePlan {
    /// `CreateMdev` with each definition's own UUID, in UUID order.
    pub actions: Vec<Action>,
    pub inactive: Vec<InactiveMdev>,
}

/// For every auto-start mdev gpuvirt defined whose UUID is not active: a `CreateMdev` with the
/// same UUID when its parent is registered and offers the type with room left, else an
/// [`InactiveMdev`] saying why. Active UUIDs are skipped, so running this again after the
/// actions succeeded (or on a duplicate event) plans nothing twice.
///
/// Room is counted per type from `available_instances`, lowered by each planned creation. Types
/// sharing a pool also lower each other in the kernel; that is not visible here, so the kernel
/// may still refuse a later creation with ENOSPC, which the executor reports.
pub fn recreate_plan(ledger: &Ledger, inventory: &Inventory) -> RecreatePlan {
    let mut plan = RecreatePlan::default();
    let mut room: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (uuid, record) in &ledger.mdevs {
        if !record.defined || !record.created_by_gpuvirt || record.start != MdevStart::Auto {
            continue;
        }
        if inventory.mdevs.contains_key(uuid) {
            continue;
        }
        let inactive = |reason| InactiveMdev {
            uuid: *uuid,
            parent: record.parent.clone(),
            type_id: record.type_id.clone(),
            reason,
        };
        let Some(parent) = inventory.mdev_parents.get(&record.parent) else {
            plan.inactive.push(inactive(InactiveReason::ParentAbsent));
            continue;
        };
        let Some(t) = parent.types.iter().find(|t| t.id == record.type_id) else {
            plan.inactive
                .push(inactive(InactiveReason::TypeUnavailable));
            continue;
        };
        let left = room
            .entry((record.parent.as_str(), record.type_id.as_str()))
            .or_insert(t.available_instances.unwrap_or(0));
        if *left == 0 {
            plan.inactive.push(inactive(InactiveReason::NoCapacity));
            continue;
        }
        *left -= 1;
        plan.actions.push(Action::CreateMdev {
            parent: record.parent.clone(),
            type_id: record.type_id.clone(),
            type_name: t.name.clone(),
            uuid: *uuid,
        });
    }
    plan
}
