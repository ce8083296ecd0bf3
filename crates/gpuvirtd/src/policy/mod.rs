//! The device policy's run time, owned by the actor: loading and validating the policy,
//! refusing manual operations on cards it manages, reconciling (plan, apply, retry), and
//! serving what it says. It reaches the actor only through [`PolicyHost`].
//! May import: crate::tree, crate::events, crate::ledger, crate::error, crate::auth.

mod host;
mod load;
mod manual;
mod props;
mod reconcile;
mod requests;
mod runtime;

pub use host::PolicyHost;
pub use manual::{check_manual_subjects, ManualSubject, PolicyViolation};
pub use reconcile::{after_events, on_due};
pub use requests::{answer, Request};
pub use runtime::{sleep_until, PolicyRuntime};
