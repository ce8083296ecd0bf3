//! The device policy: one TOML file saying what every GPU is for (`host`, `passthrough`,
//! `shard`, `unmanaged`), parsed into typed rules with positioned diagnostics.
//!
//! Two entry points: [`Policy::parse`] checks syntax and schema and yields a typed [`Policy`]
//! (or every diagnostic found); [`Policy::validate_against`] checks it against a live
//! [`Inventory`] (conflicting rules, shard types and counts the card cannot provide), still
//! with file positions. Matching is in [`matching`], what a card can be split into is in
//! [`shard`]; the planner (`crate::plan`) turns a policy and an inventory into actions.
//!
//! Matching rule: every rule whose `match` fits a GPU is considered; the first such rule in
//! file order governs the card. Rules that match one card must agree on its role and role
//! settings; when they do not, the card is in conflict (a validation error, and the planner
//! refuses to touch it). Companion functions of a GPU's slot and SR-IOV virtual functions
//! follow their GPU / physical function.
//!
//! This file holds the mod lines, the re-exports and the two entry points; the types are in
//! `policy/types.rs`. May import: crate::model, its own children.

pub mod diagnostic;
pub mod matching;
mod parse;
pub mod shard;
mod types;
mod validate;

pub use diagnostic::{render_diagnostics, Location, PolicyDiagnostic, Severity};
pub use matching::Assignment;
pub use shard::{ShardBackend, ShardOffer, ShardOffers};

pub(crate) use types::describe_gpu;
pub use types::{
    EarlyMethod, Enforcement, GpuRule, HostSettings, Match, Policy, Role, RoleSettings, ShardCount,
    ShardSpec, POLICY_VERSION,
};

use crate::model::Inventory;

impl Policy {
    /// Parses and schema-checks a policy; on failure returns every diagnostic found (errors
    /// and warnings), in file order.
    pub fn parse(text: &str, file_name: &str) -> Result<Policy, Vec<PolicyDiagnostic>> {
        parse::parse(text, file_name)
    }

    /// Checks the policy against a live inventory: rules giving one card different roles or
    /// settings, shard types and counts the matched card cannot provide (errors), and rules
    /// matching no GPU (warnings). Parse warnings are not repeated.
    pub fn validate_against(&self, inventory: &Inventory) -> Vec<PolicyDiagnostic> {
        validate::validate(self, inventory)
    }
}
