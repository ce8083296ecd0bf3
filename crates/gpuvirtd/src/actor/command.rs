//! What the rest of the daemon may ask of the actor: the [`Command`]s its loop answers, and
//! the counters it publishes. May import: actor/writes.rs, crate::policy (its requests),
//! crate::tree, crate::events.

use gpuvirt_core::policy::matching::OriginalDrivers;
use gpuvirt_core::Inventory;
use tokio::sync::oneshot;

use super::writes::WriteWindow;
use crate::events::Target;
use crate::policy::{ManualSubject, PolicyViolation, Request};
use crate::tree::ObjectSpec;

/// Requests from the rest of the daemon.
#[derive(Debug)]
pub enum Command {
    /// Re-read everything (SIGHUP, later policy reload); replies when the tree is updated.
    Rescan(oneshot::Sender<()>),
    /// Liveness check for the systemd watchdog.
    Ping(oneshot::Sender<()>),
    /// A device-policy request (see `crate::policy`).
    Policy(Request),
    /// Runs a closure on the inventory the tree shows. It runs on the actor's task, so it
    /// must be quick: copy out what it needs and reply.
    Inspect(Inspector),
    /// The checks of one manual mutation in one trip: the policy's verdict on its subjects,
    /// then (when allowed) its closure on the live inventory.
    Check(Check),
    /// Re-reads `targets` now (after a mutation, without waiting for its uevents), with the
    /// events held while its writes ran; replies when the tree is updated. The window closes
    /// once they are taken.
    Refresh(Vec<Target>, WriteWindow, oneshot::Sender<()>),
    /// The served objects that carry any of these interfaces (all objects when empty), as
    /// the tree holds them (the properties are shared, not copied).
    Objects(Vec<String>, oneshot::Sender<Vec<(String, ObjectSpec)>>),
}

/// A closure for [`Command::Inspect`].
pub struct Inspector(pub Box<dyn FnOnce(&Inventory) + Send>);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspector(..)")
    }
}

/// What to re-read before a check is answered, chosen from the inventory.
pub type FreshTargets = Box<dyn FnOnce(&Inventory) -> Vec<Target> + Send>;

/// A closure answered with the inventory, or with the policy's refusal.
pub type CheckAnswer = Box<dyn FnOnce(Result<&Inventory, PolicyViolation>) + Send>;

/// [`Command::Check`]: a manual mutation's subjects and checks.
pub struct Check {
    /// What the operation touches; the policy refuses cards it manages.
    pub subjects: Vec<ManualSubject>,
    /// The original drivers the operation's one ledger read records.
    pub originals: OriginalDrivers,
    /// Re-read these before answering, after the policy's verdict (a passthrough is planned
    /// from what sysfs says now, not from the last processed uevent).
    pub fresh: Option<FreshTargets>,
    pub answer: CheckAnswer,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// Counters for the status line and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub gpus: usize,
    pub mdevs: usize,
    pub groups: usize,
}

impl Counts {
    pub fn of(inv: &Inventory) -> Self {
        Counts {
            gpus: inv.gpus.len(),
            mdevs: inv.mdevs.len(),
            groups: inv.groups.len(),
        }
    }
}
