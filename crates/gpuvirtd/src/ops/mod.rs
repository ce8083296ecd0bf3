//! The operations of the mutating API, one file per family: passthrough, mdevs, definitions
//! (and their modification), rendering. Each runs its checks in a fixed order (arguments, policy, state, no-op or dry
//! run) and hands back either an answer or a `Prepared` value, whose commit needs the
//! bouncer's `Grant` (then claim, lock, run). Nothing here sees a D-Bus message or variant.
//! May import: crate::actor, crate::policy, crate::ledger, crate::auth, crate::error,
//! crate::events.

mod definitions;
mod hostdev;
mod mdev;
mod modify;
mod options;
mod passthrough;
mod runner;

pub use definitions::{list_definitions, prepare_define_mdev, prepare_import, prepare_undefine};
pub use hostdev::render_hostdev;
pub use mdev::{prepare_create, prepare_remove, prepare_start, prepare_stop_mdev};
pub use modify::{prepare_modify, ModifyRequest};
pub use options::{parse_uuid, shown, Options};
pub use passthrough::{prepare_assign, prepare_return, SlotJob, SlotOutcome};
pub use runner::{Outcome, Runner};
