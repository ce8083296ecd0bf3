//! The served object tree: a pure projection of the inventory ([`build`], [`update`]), the
//! diff of two trees ([`diff`]) and the [`Sink`] every change leaves by. The daemon never
//! patches D-Bus objects by hand: after every change it derives the tree the new inventory
//! implies and diffs it with the one it serves, so a duplicate event changes and emits
//! nothing. May import: gpuvirt-api, gpuvirt-core (this layer sits above `crate::events` only).

mod diff;
mod project;
mod sink;
mod sync;
#[cfg(test)]
mod tests;
mod types;

pub use diff::diff;
pub use project::{build, set_policy_facts};
pub use sink::{Sink, SinkFuture};
pub use sync::{served_part, sync_inventory, update};
pub use types::{
    Change, ChangedProperties, GpuProps, Iface, IommuGroupProps, Kind, Lookup, ManagerProps,
    MdevProps, ObjectSpec, ObjectTree, PolicyFacts, PolicyProps, ShardParentProps,
};

#[cfg(test)]
use sync::same_function;
