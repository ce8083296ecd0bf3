//! The one way out for served properties: the actor hands every change of the tree to a
//! [`Sink`], and so does the policy runtime for the Manager's policy properties (through the
//! actor). `bus/publish.rs` implements it on the object server; nothing below the bus knows
//! about D-Bus objects. May import: tree/types.rs.

use std::future::Future;
use std::pin::Pin;

use super::types::Change;

/// Why serving a change failed (the object server's error, boxed).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A future a [`Sink`] returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Serves changes of the tree, in order: an added or removed interface is announced
/// (InterfacesAdded/Removed), an update replaces the properties and announces exactly the
/// changed ones (PropertiesChanged).
pub trait Sink: Send + Sync + 'static {
    fn apply(&self, changes: Vec<Change>) -> SinkFuture<'_>;
}
