//! The device policy: one TOML file saying what every GPU is for (`host`, `passthrough`,
//! `shard`, `unmanaged`), parsed into typed rules with positioned diagnostics.
//!
//! Syntax, schema and every rule that needs no host are gpuvirt-policy's (re-exported here:
//! [`Policy::parse`], [`gpuvirt_policy::check`]), so `gpuvirtctl policy check` makes the same
//! checks, with the same diagnostics, without a daemon. What needs a live [`Inventory`] is
//! here, as the methods of [`PolicyOnHost`]: [`PolicyOnHost::validate_against`] (conflicting
//! rules, shard types and counts the card cannot provide, still with file positions), and
//! which rule governs each GPU ([`matching`]); what a card can be split into is in [`shard`];
//! the planner (`crate::plan`) turns a policy and an inventory into actions.
//!
//! Matching rule: every rule whose `match` fits a GPU is considered; the first such rule in
//! file order governs the card. Rules that match one card must agree on its role and role
//! settings; when they do not, the card is in conflict (a validation error, and the planner
//! refuses to touch it). Companion functions of a GPU's slot and SR-IOV virtual functions
//! follow their GPU / physical function.
//!
//! This file holds the mod lines, the re-exports and [`PolicyOnHost`]. May import:
//! crate::model, gpuvirt_policy, its own children.

pub mod matching;
pub mod shard;
mod validate;

use std::collections::BTreeMap;

pub use gpuvirt_policy::diagnostic;
pub use gpuvirt_policy::{
    check, render_diagnostics, EarlyMethod, Enforcement, GpuRule, HostSettings, Location, Match,
    Owner, Policy, PolicyDiagnostic, Role, RoleSettings, Severity, ShardCount, ShardSpec,
    POLICY_VERSION,
};
pub use matching::Assignment;
pub use shard::{ShardBackend, ShardOffer, ShardOffers};

pub(crate) use matching::describe_gpu;

use crate::model::{Inventory, PciAddress, PciFunction};
use matching::OriginalDrivers;

/// Every check of a policy text on this host: [`check`] (syntax, schema, the rules that need
/// no host), then, for a text without errors, [`PolicyOnHost::validate_against`]. The policy
/// when nothing is an error, and every diagnostic (the parse's, then the host's).
pub fn check_on_host(
    text: &str,
    file_name: &str,
    inventory: &Inventory,
) -> (Option<Policy>, Vec<PolicyDiagnostic>) {
    let (policy, mut diagnostics) = check(text, file_name);
    let Some(policy) = policy else {
        return (None, diagnostics);
    };
    diagnostics.extend(policy.validate_against(inventory));
    if diagnostics.iter().any(PolicyDiagnostic::is_error) {
        (None, diagnostics)
    } else {
        (Some(policy), diagnostics)
    }
}

/// What a policy says about a live host: the host-dependent half of the policy (the types are
/// gpuvirt-policy's, so the core adds to them through this trait).
pub trait PolicyOnHost {
    /// Checks the policy against a live inventory: rules giving one card different roles or
    /// settings, shard types and counts the matched card cannot provide (errors), and rules
    /// matching no GPU (warnings). Parse warnings are not repeated.
    fn validate_against(&self, inventory: &Inventory) -> Vec<PolicyDiagnostic>;

    /// Indices of the rules whose match fits `gpu`, in file order.
    fn matching_rules(&self, gpu: &PciFunction, original_drivers: &OriginalDrivers) -> Vec<usize>;

    /// The verdict for every governed GPU of the inventory.
    fn assign(
        &self,
        inventory: &Inventory,
        original_drivers: &OriginalDrivers,
    ) -> BTreeMap<PciAddress, Assignment>;

    /// The verdict for any PCI function: a GPU's own, its slot's GPU's for a companion, the
    /// physical function's for a virtual function; `None` for functions no GPU owns.
    fn assignment_for(
        &self,
        inventory: &Inventory,
        original_drivers: &OriginalDrivers,
        function: PciAddress,
    ) -> Option<Assignment>;
}

impl PolicyOnHost for Policy {
    fn validate_against(&self, inventory: &Inventory) -> Vec<PolicyDiagnostic> {
        validate::validate(self, inventory)
    }

    fn matching_rules(&self, gpu: &PciFunction, original_drivers: &OriginalDrivers) -> Vec<usize> {
        matching::matching_rules(self, gpu, original_drivers)
    }

    fn assign(
        &self,
        inventory: &Inventory,
        original_drivers: &OriginalDrivers,
    ) -> BTreeMap<PciAddress, Assignment> {
        matching::assign(self, inventory, original_drivers)
    }

    fn assignment_for(
        &self,
        inventory: &Inventory,
        original_drivers: &OriginalDrivers,
        function: PciAddress,
    ) -> Option<Assignment> {
        matching::assignment_for(self, inventory, original_drivers, function)
    }
}
