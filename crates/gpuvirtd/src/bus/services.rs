//! What every served interface is given at start-up (no globals): the operations' runner
//! (with the actor's handle), the bouncer and the jobs; and who a message's caller is.
//! May import: crate::ops, crate::auth, crate::actor, crate::tree, bus/jobs.rs.

use std::sync::Arc;

use zbus::message::{Flags, Header};
use zbus::zvariant::OwnedObjectPath;

use super::jobs::Jobs;
use crate::actor::ActorHandle;
use crate::auth::{Bouncer, Caller};
use crate::ops::Runner;
use crate::tree::ObjectSpec;

/// The mutating API's state, shared by every interface.
#[derive(Debug)]
pub struct Services {
    pub runner: Arc<Runner>,
    pub bouncer: Bouncer,
    pub jobs: Jobs,
}

impl Services {
    pub fn actor(&self) -> &ActorHandle {
        self.runner.actor()
    }
}

/// The caller of the message in `header`. `interactive` is the caller's wish to be asked for
/// a password (false when it passed `auth.no_user_interaction`); it counts only when the
/// call also carries ALLOW_INTERACTIVE_AUTHORIZATION.
pub fn caller(header: &Header<'_>, interactive: bool) -> Caller {
    Caller {
        sender: header.sender().map(|s| s.to_string()),
        interactive: interactive
            && header
                .primary()
                .flags()
                .contains(Flags::AllowInteractiveAuth),
    }
}

/// The served objects carrying any of `interfaces` (all when empty), from the actor's tree.
pub async fn tree_objects(
    actor: &ActorHandle,
    interfaces: Vec<String>,
) -> Result<Vec<(OwnedObjectPath, ObjectSpec)>, zbus::fdo::Error> {
    let objects = actor
        .objects(interfaces)
        .await
        .map_err(|_| zbus::fdo::Error::Failed("gpuvirtd is stopping".into()))?;
    // The tree's paths were made by api's path functions: always valid object paths.
    Ok(objects
        .into_iter()
        .filter_map(|(path, spec)| Some((OwnedObjectPath::try_from(path).ok()?, spec)))
        .collect())
}
