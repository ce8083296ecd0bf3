//! The device policy file, host-independent half: TOML syntax, schema and every rule that needs
//! no host (versions, roles and their settings, PCI ids and addresses, rule names and their
//! duplicates, empty matches), into a typed [`Policy`] with compiler-style diagnostics.
//!
//! Its own crate (not gpuvirt-types, not gpuvirt-core) so that `gpuvirtctl policy check` can
//! check a file with no daemon running, with the very code the daemon uses, without linking the
//! core: gpuvirt-types stays a serde-only vocabulary that every crate (the bus contract
//! included) links, and toml_edit comes only with this crate. What needs a host (which GPUs a
//! rule matches, what a card can be split into, rules that disagree on one card) is
//! `gpuvirt_core::policy`, which re-exports this crate.
//!
//! Layers, bottom up: `diagnostic` (std and serde only) → `types` → `parse/`. This file holds
//! the mod lines, the re-exports and the entry points. May import: std, serde, toml_edit,
//! gpuvirt-types (PciAddress); no other gpuvirt crate.

pub mod diagnostic;
mod parse;
mod types;

pub use diagnostic::{render_diagnostics, Location, PolicyDiagnostic, Severity};
pub use types::{
    EarlyMethod, Enforcement, GpuRule, HostSettings, Match, Owner, Policy, Role, RoleSettings,
    ShardCount, ShardSpec, POLICY_VERSION,
};

impl Policy {
    /// Parses and schema-checks a policy; on failure returns every diagnostic found (errors
    /// and warnings), in file order.
    pub fn parse(text: &str, file_name: &str) -> Result<Policy, Vec<PolicyDiagnostic>> {
        parse::parse(text, file_name)
    }
}

/// Every check that needs no host: the policy when the text has no error, and every
/// diagnostic found (a valid policy's warnings), in file order. The daemon's check is this
/// one followed by the host-dependent rules of `gpuvirt_core::policy`.
pub fn check(text: &str, file_name: &str) -> (Option<Policy>, Vec<PolicyDiagnostic>) {
    match Policy::parse(text, file_name) {
        Err(diagnostics) => (None, diagnostics),
        Ok(policy) => {
            let warnings = policy.warnings.clone();
            (Some(policy), warnings)
        }
    }
}
