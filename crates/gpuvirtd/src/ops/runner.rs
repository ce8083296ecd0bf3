//! Running operations: claims on busy objects, the ledger lock, one blocking worker per
//! operation bounded by a timeout, and the read-back of what it changed. A mutator's last
//! check is its [`Prepared`] value, whose `commit` takes the bouncer's [`Grant`], so nothing
//! runs unauthorised. May import: crate::actor (ActorHandle), crate::ledger, crate::auth,
//! crate::error, crate::events.
//!
//! Only one operation runs at a time, policy applies included: every ledger writer opens its
//! executor while holding the one lock of the [`LedgerDoor`]. A write that hangs keeps the
//! lock until the kernel returns; the caller gets `TimedOut` and the daemon keeps serving:
//! the ledger already records the slot's original drivers, so recovery at the next start-up
//! finishes the job if the daemon is restarted meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuvirt_core::exec::{ExecError, Executor};
use gpuvirt_core::ledger::{Ledger, MdevRecord};
use gpuvirt_core::plan::{Action, Step};
use gpuvirt_core::shard;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::actor::ActorHandle;
use crate::auth::{Grant, Method};
use crate::error::{ErrorKind, OpError};
use crate::events::{mdev_targets, Target};
use crate::ledger::{ExecGuard, LedgerDoor, Snapshot};

/// The work of one operation, on the executor it runs with.
pub(super) type Work = Box<dyn FnOnce(&mut Executor) -> Result<String, OpError> + Send>;

/// What the mutating methods share: the ledger's door, the actor, the claims.
#[derive(Debug)]
pub struct Runner {
    door: Arc<LedgerDoor>,
    actor: ActorHandle,
    /// Longest wait for one operation's kernel writes.
    timeout: Duration,
    /// Objects with a queued or running operation, and what it is.
    in_flight: Arc<Mutex<BTreeMap<String, String>>>,
}

/// An object's in-flight mark, removed when the operation ends, however it ends.
#[derive(Debug)]
pub(super) struct InFlight {
    key: String,
    in_flight: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Runner {
    pub fn new(door: Arc<LedgerDoor>, actor: ActorHandle, timeout: Duration) -> Self {
        Self {
            door,
            actor,
            timeout,
            in_flight: Arc::default(),
        }
    }

    pub fn actor(&self) -> &ActorHandle {
        &self.actor
    }

    pub(super) fn door(&self) -> &LedgerDoor {
        &self.door
    }

    /// The ledger as saved now (other writers, such as the policy runtime, may have changed
    /// it since this daemon last ran an operation).
    pub(super) fn ledger(&self) -> Result<Ledger, OpError> {
        self.door
            .load()
            .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))
    }

    /// The operation's one read of the ledger: its checks answer from it, and its run keeps
    /// the executor when no other writer saved meanwhile.
    pub(super) fn snapshot(&self) -> Result<Snapshot, OpError> {
        self.door
            .snapshot()
            .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))
    }

    pub(super) fn claim(&self, key: String, operation: &str) -> Result<InFlight, OpError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = in_flight.get(&key) {
            return Err(OpError::new(
                ErrorKind::Busy,
                format!("{key} is busy: '{running}' is still running; wait for it to finish"),
            ));
        }
        in_flight.insert(key.clone(), operation.to_string());
        Ok(InFlight {
            key,
            in_flight: self.in_flight.clone(),
        })
    }

    /// The lock for a synchronous call: waits at most the timeout for an earlier one.
    pub(super) async fn lock_now(&self) -> Result<ExecGuard, OpError> {
        self.door.lock_within(self.timeout).await.ok_or_else(|| {
            OpError::new(
                ErrorKind::Busy,
                "an earlier operation is still waiting for the kernel; retry later",
            )
        })
    }

    /// The lock for a task of its own (a job, a recreation), which nothing would ask again if
    /// it gave up: waits as long as it takes.
    pub(super) async fn lock_wait(&self) -> ExecGuard {
        self.door.lock().await
    }

    /// Runs `work` in a blocking worker, bounded by the timeout, then refreshes `targets` so
    /// the tree (and its signals) show the result. The executor is the snapshot's when the
    /// ledger is unchanged since it was read, else a fresh one (opened under the lock).
    pub(super) async fn run(
        &self,
        what: &str,
        lock: ExecGuard,
        snapshot: Option<Snapshot>,
        targets: Vec<Target>,
        work: Work,
    ) -> Result<String, OpError> {
        let door = self.door.clone();
        // Open until the refresh has taken the events these writes cause (see
        // `crate::actor::Writes`).
        let window = self.actor.writing();
        let handle = tokio::task::spawn_blocking(move || {
            // Held until the kernel returns, even when the caller stopped waiting.
            let lock = lock;
            let mut executor = door
                .executor_for(snapshot, &lock)
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            work(&mut executor)
        });
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(OpError::failed(format!("{what} crashed: {e}"))),
            Err(_) => Err(OpError::new(
                ErrorKind::TimedOut,
                format!(
                    "{what} did not finish within {} s: the kernel has not returned from a \
                     sysfs write (a hung unbind or reset). gpuvirtd keeps serving; the ledger \
                     keeps the original drivers, and the operation finishes or rolls back when \
                     the kernel returns (or at gpuvirtd's next start). Later operations wait \
                     until then",
                    self.timeout.as_secs()
                ),
            )),
        };
        let worked = started.elapsed();
        if targets.is_empty() {
            drop(window);
        } else {
            self.actor.refresh(targets, window).await;
        }
        tracing::debug!(what, ?worked, elapsed = ?started.elapsed(), "operation ran");
        result
    }
}

impl Runner {
    /// Creates every auto-start mdev gpuvirt defined that is not active, whose parent is
    /// present and that `wanted` selects (boot: all; a parent's appearance: that parent's; a
    /// new auto definition: itself). A stopped definition is not restarted by another's
    /// event. Nothing is created twice: active UUIDs are skipped, and EEXIST of a wanted mdev
    /// counts as success.
    pub async fn recreate(&self, wanted: impl Fn(&Uuid, &MdevRecord) -> bool) {
        let Ok(mut ledger) = self.ledger() else {
            return;
        };
        ledger.mdevs.retain(|uuid, record| wanted(uuid, record));
        let Ok(plan) = self
            .actor
            .inspect(move |inv| shard::recreate_plan(&ledger, inv))
            .await
        else {
            return;
        };
        for inactive in &plan.inactive {
            tracing::debug!(uuid = %inactive.uuid, parent = inactive.parent, reason = ?inactive.reason, "defined mdev stays inactive");
        }
        if plan.actions.is_empty() {
            return;
        }
        // This runs in its own task: wait for a running operation or policy apply to finish
        // rather than give up (nothing would ask again until the next parent event).
        let lock = self.lock_wait().await;
        let mut targets = Vec::new();
        for a in &plan.actions {
            if let Action::CreateMdev { parent, uuid, .. } = a {
                targets.extend(mdev_targets(parent, *uuid));
            }
        }
        let actions = plan.actions;
        let result = self
            .run(
                "recreating defined mdevs",
                lock,
                None,
                targets,
                Box::new(move |ex| {
                    let mut done = Vec::new();
                    for a in &actions {
                        let r = ex.run(a, None);
                        match &r.error {
                            None => done.push(r.action.clone()),
                            Some(ExecError::AlreadyExists { .. }) => {}
                            Some(e) => tracing::warn!(
                                "recreating: {}: {}",
                                r.action,
                                gpuvirt_core::error_chain(e as &dyn std::error::Error)
                            ),
                        }
                    }
                    Ok(done.join("; "))
                }),
            )
            .await;
        match result {
            Ok(done) if !done.is_empty() => tracing::info!("recreated: {done}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("recreating defined mdevs: {}", e.message),
        }
    }

    /// Recreates defined mdevs now and, for the parents named, whenever shard parents appear.
    pub async fn recreate_loop(
        &self,
        mut parent_added: mpsc::UnboundedReceiver<std::collections::BTreeSet<String>>,
    ) {
        self.recreate(|_, _| true).await;
        while let Some(mut parents) = parent_added.recv().await {
            // A parent's add and its MDEV_STATE=registered come together: one pass for both.
            while let Ok(more) = parent_added.try_recv() {
                parents.extend(more);
            }
            self.recreate(|_, record| parents.contains(&record.parent))
                .await;
        }
    }
}

/// What a synchronous mutator does once authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    Nothing,
    /// Start these auto definitions now where their parents are present.
    Recreate(Vec<Uuid>),
}

/// A checked synchronous operation: everything is known but the caller's authorization.
pub struct Prepared {
    pub(super) method: Method,
    /// The object to mark busy and the operation's name for the mark.
    pub(super) claim: Option<(String, &'static str)>,
    /// What it does, for messages (`creating mdev ...`).
    pub(super) what: String,
    pub(super) targets: Vec<Target>,
    pub(super) snapshot: Option<Snapshot>,
    pub(super) work: Work,
    pub(super) after: After,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("method", &self.method)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

/// A mutator's answer after its checks: one given at once (a no-op, a dry run), or the
/// reply it gives once [`Prepared::commit`] succeeds.
#[derive(Debug)]
pub enum Outcome<R> {
    Answered(R),
    Commit(Box<Prepared>, R),
}

impl Prepared {
    /// The method whose authorization commits it.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Claims, locks and runs the operation; `grant` proves the caller may.
    pub async fn commit(self: Box<Self>, runner: &Runner, grant: Grant) -> Result<String, OpError> {
        grant.allows(self.method)?;
        let _in_flight = match &self.claim {
            Some((key, operation)) => Some(runner.claim(key.clone(), operation)?),
            None => None,
        };
        let lock = runner.lock_now().await?;
        let done = runner
            .run(&self.what, lock, self.snapshot, self.targets, self.work)
            .await?;
        drop(_in_flight);
        if let After::Recreate(uuids) = self.after {
            runner.recreate(|u, _| uuids.contains(u)).await;
        }
        Ok(done)
    }
}

/// Runs `actions` in order, stopping at the first failure (with what its rollback did).
pub(super) fn run_actions(executor: &mut Executor, actions: &[Action]) -> Result<String, OpError> {
    let mut done = Vec::new();
    for action in actions {
        let report = executor.run(action, None);
        match &report.error {
            None => done.push(report.to_string()),
            Some(e) => {
                let mut err = OpError::from_exec(e);
                if let Some(rolled) = report.rolled_back {
                    err.message.push_str(if rolled {
                        " (rolled back: every function is on its original driver)"
                    } else {
                        " (rollback incomplete: the ledger keeps the original drivers)"
                    });
                }
                return Err(err);
            }
        }
    }
    Ok(done.join("\n"))
}

/// A plan as text: each action and its exact filesystem steps.
pub fn plan_text(actions: &[Action]) -> String {
    let mut text = String::new();
    for action in actions {
        text.push_str(&action.to_string());
        text.push('\n');
        for step in action.steps() {
            let line = match step {
                Step::Write { path, value } => {
                    let v = value.trim_end_matches('\n');
                    if v.is_empty() {
                        format!("clear {}", path.display())
                    } else {
                        format!("write {v} to {}", path.display())
                    }
                }
                Step::Modprobe { module } => format!("modprobe {module}"),
                Step::WriteFile { path, .. } => format!("write file {}", path.display()),
                Step::RemoveFile { path } => format!("remove file {}", path.display()),
                Step::Run { argv } => format!("run {}", argv.join(" ")),
            };
            text.push_str("  ");
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gpuvirt_core::plan::SlotFunction;
    use gpuvirt_core::PciAddress;

    use super::*;

    #[test]
    fn plan_text_lists_every_write() {
        let a: PciAddress = "0000:41:00.0".parse().unwrap();
        let text = plan_text(&[Action::BindSlotToVfio {
            slot: a.slot(),
            functions: vec![SlotFunction {
                address: a,
                driver: Some("nvidia".into()),
            }],
        }]);
        assert!(
            text.contains("write vfio-pci to sys/bus/pci/devices/0000:41:00.0/driver_override"),
            "{text}"
        );
        assert!(
            text.contains("write 0000:41:00.0 to sys/bus/pci/drivers/nvidia/unbind"),
            "{text}"
        );
        assert!(text.contains("drivers_probe"), "{text}");
    }
}
