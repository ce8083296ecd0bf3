//! [`ActorHandle`]: the typed way to ask the actor something. Every request is a send and a
//! one-shot reply; a closed channel means the daemon is stopping ([`OpError::gone`]).
//! May import: actor/command.rs, actor/writes.rs, crate::policy, crate::error, crate::events, crate::tree.

use std::time::Duration;

use gpuvirt_core::policy::matching::OriginalDrivers;
use gpuvirt_core::Inventory;
use tokio::sync::{mpsc, oneshot};

use super::command::{Check, Command, FreshTargets, Inspector};
use super::writes::{WriteWindow, Writes};
use crate::error::OpError;
use crate::events::Target;
use crate::policy::{ManualSubject, Request};
use crate::tree::ObjectSpec;

/// The sending side of the actor's command queue.
#[derive(Debug, Clone)]
pub struct ActorHandle {
    commands: mpsc::Sender<Command>,
    writes: Writes,
}

impl ActorHandle {
    /// `writes` is the count the actor watches (see [`Writes`]).
    pub fn new(commands: mpsc::Sender<Command>, writes: Writes) -> Self {
        Self { commands, writes }
    }

    /// Opens the window of one operation's kernel writes; pass it to [`ActorHandle::refresh`].
    pub fn writing(&self) -> WriteWindow {
        self.writes.open()
    }

    /// Sends the command `make` builds around a reply channel and waits for the reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, OpError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| OpError::gone())?;
        rx.await.map_err(|_| OpError::gone())
    }

    /// Re-reads everything; returns when the tree is updated.
    pub async fn rescan(&self) -> Result<(), OpError> {
        self.ask(Command::Rescan).await
    }

    /// Whether the actor answers within `wait` (the watchdog's question).
    pub async fn ping(&self, wait: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Ping(tx)).await.is_err() {
            return false;
        }
        tokio::time::timeout(wait, rx).await.is_ok()
    }

    /// A device-policy request built around its reply channel.
    pub async fn policy<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, OpError> {
        self.ask(|tx| Command::Policy(make(tx))).await
    }

    /// Runs `f` on the inventory the tree shows, on the actor's task.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inventory) -> R + Send + 'static,
    ) -> Result<R, OpError> {
        self.ask(|tx| {
            Command::Inspect(Inspector(Box::new(move |inv| {
                let _ = tx.send(f(inv));
            })))
        })
        .await
    }

    /// One manual mutation's checks in one trip: refused with `PolicyViolation` when the
    /// policy manages the card behind any of `subjects` (so a refused call never prompts,
    /// and a dry run says the real call would be refused); else `fresh` is re-read (if any)
    /// and `f` runs on the live inventory.
    pub async fn check<R: Send + 'static>(
        &self,
        subjects: Vec<ManualSubject>,
        originals: OriginalDrivers,
        fresh: Option<FreshTargets>,
        f: impl FnOnce(&Inventory) -> R + Send + 'static,
    ) -> Result<R, OpError> {
        self.ask(|tx| {
            Command::Check(Check {
                subjects,
                originals,
                fresh,
                answer: Box::new(move |verdict| {
                    let _ = tx.send(verdict.map(f).map_err(OpError::from));
                }),
            })
        })
        .await?
    }

    /// Re-reads `targets` so the tree (and its signals) show a mutation's result, with the
    /// events held while `window` was open. Bounded: the uevents refresh the tree anyway if
    /// the actor is slow.
    pub async fn refresh(&self, targets: Vec<Target>, window: WriteWindow) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Refresh(targets, window, tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// The served objects carrying any of `interfaces` (all when empty).
    pub async fn objects(
        &self,
        interfaces: Vec<String>,
    ) -> Result<Vec<(String, ObjectSpec)>, OpError> {
        self.ask(|tx| Command::Objects(interfaces, tx)).await
    }
}
