//! The narrow way the policy runtime reaches the actor, in the manner of cloud-hypervisor's
//! `RequestHandler`: the runtime never names the actor's type, it asks a [`PolicyHost`] for
//! the inventory, a rescan, a deferred read-back, and to serve what the policy says.
//! May import: crate::tree (the served property types), crate::events (refresh targets).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use gpuvirt_core::{Inventory, PciAddress};

use crate::events::Target;
use crate::tree::{ChangedProperties, PolicyFacts, PolicyProps};

/// What the policy runtime may ask of the inventory's owner.
pub trait PolicyHost: Send {
    /// The inventory the served tree shows.
    fn inventory(&self) -> &Inventory;

    /// Re-reads everything and updates the served tree.
    fn rescan(&mut self) -> impl Future<Output = ()> + Send;

    /// Reads `targets` once the request being handled has replied, before the next one.
    fn defer_refresh(&mut self, targets: BTreeSet<Target>);

    /// Serves the policy's verdict on each GPU (`Role`, `PolicyRule`).
    fn set_policy_facts(
        &mut self,
        facts: BTreeMap<PciAddress, PolicyFacts>,
    ) -> impl Future<Output = ()> + Send;

    /// Serves the Manager's policy properties `props`, announcing `changed`.
    fn publish_policy(
        &mut self,
        props: PolicyProps,
        changed: ChangedProperties,
    ) -> impl Future<Output = ()> + Send;
}
