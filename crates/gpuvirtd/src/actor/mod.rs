//! The one owner of the inventory: applies events, diffs, and hands every change of the
//! served tree to the [`Sink`]. It also owns the policy runtime, which reaches it only
//! through [`PolicyHost`].
//!
//! D-Bus handlers never touch the inventory: lookups read an immutable index from a `watch`
//! channel, and everything else is a [`Command`] sent through an [`ActorHandle`]. Only this
//! task writes, so there is no lock to hold across `.await`.
//! May import: actor/*, crate::policy, crate::tree, crate::events, crate::follow.

mod command;
mod handle;
mod source;
mod writes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gpuvirt_api as api;
use gpuvirt_core::{Inventory, PciAddress, RefreshScope};
use tokio::sync::{mpsc, watch};

pub use command::{Command, Counts, Inspector};
pub use handle::ActorHandle;
pub use source::{InventorySource, RememberingScanner};
pub use writes::{Writes, HOLD_LIMIT};

use crate::events::{self, SourceMessage, Target};
use crate::follow::{self, Follow};
use crate::policy::{self, PolicyHost, PolicyRuntime};
use crate::tree::{
    self, Change, ChangedProperties, Iface, Kind, Lookup, ObjectTree, PolicyFacts, PolicyProps,
    Sink,
};

/// Most events folded into one refresh pass; bounds latency under a never-ending burst.
const MAX_BATCH: usize = 4096;

/// Adds the events already queued to `targets` (up to [`MAX_BATCH`], or until one asks for
/// everything); true when there were any.
fn fold_queued(
    events: &mut mpsc::Receiver<SourceMessage>,
    targets: &mut BTreeSet<Target>,
    announced: &mut BTreeSet<String>,
) -> bool {
    let mut folded = false;
    while targets.len() < MAX_BATCH && !targets.contains(&Target::All) {
        match events.try_recv() {
            Ok(msg) => {
                add_targets(targets, announced, &msg);
                folded = true;
            }
            Err(_) => break,
        }
    }
    folded
}

/// The actor's state.
pub struct Actor {
    source: Arc<dyn InventorySource>,
    /// The complete inventory, refreshed in place by the scanner.
    inventory: Inventory,
    /// What the served tree was built from ([`tree::served_part`]: the inventory less the
    /// functions and groups no object shows), compared with `inventory` after each refresh:
    /// the entries that differ say which objects to rebuild.
    served: Inventory,
    tree: ObjectTree,
    /// Where every change of the served tree leaves.
    sink: Arc<dyn Sink>,
    lookup: watch::Sender<Arc<Lookup>>,
    counts: watch::Sender<Counts>,
    /// Told which shard parents appeared (hotplug, driver load, `MDEV_STATE=registered`), so
    /// defined mdevs are recreated on the parent's own readiness event, not after a sleep.
    parent_added: Option<mpsc::UnboundedSender<BTreeSet<String>>>,
    /// Told which slots lost their last function or gained one, so the ledger follows the
    /// hardware (see [`follow`]); never waited on.
    follow: Option<Follow>,
    /// The device policy in force and its timers; taken out while it works (so the actor
    /// can rescan meanwhile) and always put back.
    policy: Option<PolicyRuntime>,
    /// Read right after the command being handled has replied (see [`Actor::defer_refresh`]).
    deferred: BTreeSet<Target>,
    /// Kernel writes in flight (see [`Writes`]); `None`: events are never held.
    writes: Option<watch::Receiver<usize>>,
    /// Events that came while a write was in flight, for its refresh to read.
    held: Option<Held>,
}

/// Events held for the refresh of a write in flight.
#[derive(Debug)]
struct Held {
    targets: BTreeSet<Target>,
    announced: BTreeSet<String>,
    /// Read by then, whether the write has returned or not.
    until: tokio::time::Instant,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("objects", &self.tree.objects.len())
            .finish_non_exhaustive()
    }
}

impl PolicyHost for Actor {
    fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    async fn rescan(&mut self) {
        self.update(BTreeSet::from([Target::All])).await;
    }

    /// An apply whose every write the kernel confirmed replies without waiting for the
    /// read-back of what it changed (the tree follows, with its signals, right after).
    fn defer_refresh(&mut self, targets: BTreeSet<Target>) {
        self.deferred.extend(targets);
    }

    /// Announces the objects whose verdict changed.
    async fn set_policy_facts(&mut self, facts: BTreeMap<PciAddress, PolicyFacts>) {
        let changes = tree::set_policy_facts(&mut self.tree, facts);
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.sink.apply(changes).await {
            tracing::error!(error = %e, "updating the GPUs' policy properties failed");
        }
    }

    async fn publish_policy(&mut self, props: PolicyProps, changed: ChangedProperties) {
        let change = Change::Updated {
            path: api::MANAGER_PATH.to_owned(),
            iface: Iface::Policy(props),
            changed,
        };
        if let Err(e) = self.sink.apply(vec![change]).await {
            tracing::error!(error = %e, "cannot announce the policy properties");
        }
    }
}

impl Actor {
    /// `inventory` and `tree` are what is already served.
    pub fn new(
        source: Arc<dyn InventorySource>,
        mut inventory: Inventory,
        tree: ObjectTree,
        sink: Arc<dyn Sink>,
        lookup: watch::Sender<Arc<Lookup>>,
        counts: watch::Sender<Counts>,
    ) -> Self {
        counts.send_replace(Counts::of(&inventory));
        Actor {
            source,
            served: tree::served_part(&mut inventory),
            inventory,
            tree,
            sink,
            lookup,
            counts,
            parent_added: None,
            follow: None,
            policy: None,
            deferred: BTreeSet::new(),
            writes: None,
            held: None,
        }
    }

    /// Holds the events that come while a write counted by `writes` is in flight, at most
    /// [`HOLD_LIMIT`], for the refresh that follows it.
    pub fn hold_events_during(mut self, writes: Writes) -> Self {
        self.writes = Some(writes.watch());
        self
    }

    /// Sends the names of the shard parents that appeared on `tx` (see [`appeared_parents`]).
    pub fn notify_parent_added(mut self, tx: mpsc::UnboundedSender<BTreeSet<String>>) -> Self {
        self.parent_added = Some(tx);
        self
    }

    /// Sends what each pass saw of slots coming and going on `tx` (see [`follow::seen`]).
    pub fn follow_ledger(mut self, tx: Follow) -> Self {
        self.follow = Some(tx);
        self
    }

    /// Gives the actor the device-policy runtime (it reconciles once the loop runs).
    pub fn with_policy(mut self, policy: PolicyRuntime) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Runs until the command channel closes. A closed event channel (`--events none`, or a
    /// source that ended) stops only the event branch: methods and the policy keep working.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceMessage>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut events_open = true;
        // Out of `self`, so `select!` can wait on it beside the fields it borrows.
        let mut writes = self.writes.take();
        loop {
            if !self.deferred.is_empty() {
                // The reply's task was woken on this worker: let it run and zbus write the
                // reply before this pass's reads, not after them. One `yield_now` was not
                // enough: the reply's write is another task woken by the first, and the
                // read-back of a 2048-mdev apply (then ~30 s on the FUSE bench host)
                // ran first, holding the reply back. A timer lets the runtime run every ready
                // task and poll the socket before the reads start.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let mut targets = std::mem::take(&mut self.deferred);
                let mut announced = BTreeSet::new();
                // The applied writes' own uevents are likely queued: one pass for both.
                fold_queued(&mut events, &mut targets, &mut announced);
                self.take_held(&mut targets, &mut announced);
                self.update_and_react(targets, announced).await;
                continue;
            }
            let hold_until = self.held.as_ref().map(|h| h.until);
            tokio::select! {
                msg = events.recv(), if events_open => {
                    let Some(first) = msg else {
                        events_open = false;
                        continue;
                    };
                    let mut targets = BTreeSet::new();
                    let mut announced = BTreeSet::new();
                    add_targets(&mut targets, &mut announced, &first);
                    // Fold whatever else is queued into the same pass: a burst costs one
                    // refresh per distinct device, not one per event.
                    fold_queued(&mut events, &mut targets, &mut announced);
                    let writing = writes.as_ref().is_some_and(|w| *w.borrow() > 0);
                    let now = tokio::time::Instant::now();
                    if writing && hold_until.is_none_or(|until| now < until) {
                        let held = self.held.get_or_insert_with(|| Held {
                            targets: BTreeSet::new(),
                            announced: BTreeSet::new(),
                            until: now + HOLD_LIMIT,
                        });
                        held.targets.append(&mut targets);
                        held.announced.append(&mut announced);
                        continue;
                    }
                    self.take_held(&mut targets, &mut announced);
                    self.update_and_react(targets, announced).await;
                }
                // The write returned and no refresh took the events (it had no targets), or
                // it has not returned in time: read them now.
                _ = async {
                    match writes.as_mut() {
                        Some(w) => {
                            let _ = w.wait_for(|n| *n == 0).await;
                        }
                        None => std::future::pending().await,
                    }
                }, if hold_until.is_some() => self.read_held().await,
                _ = tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)),
                    if hold_until.is_some() => self.read_held().await,
                _ = policy::sleep_until(self.policy.as_ref().and_then(|p| p.due())) => {
                    if let Some(mut rt) = self.policy.take() {
                        policy::on_due(&mut self, &mut rt).await;
                        self.policy = Some(rt);
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(command) => self.handle(command, &mut events).await,
                    None => break,
                },
            }
        }
    }

    async fn handle(&mut self, command: Command, events: &mut mpsc::Receiver<SourceMessage>) {
        match command {
            Command::Rescan(reply) => {
                self.update(BTreeSet::from([Target::All])).await;
                let _ = reply.send(());
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            Command::Inspect(Inspector(f)) => f(&self.inventory),
            Command::Check(check) => {
                let verdict = policy::check_manual_subjects(
                    self.policy.as_ref(),
                    &self.inventory,
                    &check.originals,
                    &check.subjects,
                );
                if let Err(v) = verdict {
                    (check.answer)(Err(v));
                    return;
                }
                let mut touched = None;
                if let Some(fresh) = check.fresh {
                    // Plan against what sysfs says now, not what the last processed uevent
                    // said: a rebind whose uevents are still queued would otherwise be
                    // planned from the old driver.
                    let targets = fresh(&self.inventory);
                    if !targets.is_empty() {
                        touched = self.refresh_now(targets, events).await;
                    }
                }
                (check.answer)(Ok(&self.inventory));
                self.react(touched).await;
            }
            Command::Objects(interfaces, reply) => {
                let objects = self
                    .tree
                    .objects
                    .iter()
                    .filter(|(_, spec)| {
                        interfaces.is_empty() || interfaces.iter().any(|i| spec.has(i))
                    })
                    .map(|(path, spec)| (path.clone(), spec.clone()))
                    .collect();
                let _ = reply.send(objects);
            }
            Command::Refresh(targets, window, reply) => {
                let touched = self.refresh_now(targets, events).await;
                drop(window);
                let _ = reply.send(());
                self.react(touched).await;
            }
            Command::Policy(request) => {
                let mut rt = self.policy.take();
                policy::answer(self, rt.as_mut(), request).await;
                self.policy = rt;
            }
        }
    }

    /// Re-reads `targets` with whatever events are queued; returns what the policy should
    /// look at afterwards (only when events were folded in, as an event pass would).
    async fn refresh_now(
        &mut self,
        targets: Vec<Target>,
        events: &mut mpsc::Receiver<SourceMessage>,
    ) -> Option<BTreeSet<Target>> {
        // A mutation asks right after its sysfs writes, whose uevents may still be in the
        // socket: let the event source run (yield_now resumes after the I/O driver was
        // polled), then fold what it queued into this pass, rather than a second pass for
        // them that finds nothing left to change. (Events handled before this request still
        // leave one such pass: this one, the price of replying once the tree shows the
        // change.)
        tokio::task::yield_now().await;
        let mut targets: BTreeSet<Target> = targets.into_iter().collect();
        let mut announced = BTreeSet::new();
        let folded = fold_queued(events, &mut targets, &mut announced);
        let held = self.take_held(&mut targets, &mut announced);
        let touched = ((folded || held) && self.policy.is_some()).then(|| targets.clone());
        self.update_announced(targets, announced).await;
        touched
    }

    /// Adds the held events to a pass; true when there were any.
    fn take_held(
        &mut self,
        targets: &mut BTreeSet<Target>,
        announced: &mut BTreeSet<String>,
    ) -> bool {
        let Some(mut held) = self.held.take() else {
            return false;
        };
        targets.append(&mut held.targets);
        announced.append(&mut held.announced);
        true
    }

    /// Reads the held events in a pass of their own.
    async fn read_held(&mut self) {
        let (mut targets, mut announced) = (BTreeSet::new(), BTreeSet::new());
        if self.take_held(&mut targets, &mut announced) {
            self.update_and_react(targets, announced).await;
        }
    }

    /// Lets the device policy react to what events touched.
    async fn react(&mut self, touched: Option<BTreeSet<Target>>) {
        let Some(touched) = touched else {
            return;
        };
        if let Some(mut rt) = self.policy.take() {
            policy::after_events(self, &mut rt, &touched).await;
            self.policy = Some(rt);
        }
    }

    /// Refreshes `targets` from events (see [`Actor::update_announced`]), then lets the
    /// device policy react to what they touched.
    async fn update_and_react(&mut self, targets: BTreeSet<Target>, announced: BTreeSet<String>) {
        let touched = self.policy.is_some().then(|| targets.clone());
        self.update_announced(targets, announced).await;
        self.react(touched).await;
    }

    async fn update(&mut self, targets: BTreeSet<Target>) {
        self.update_announced(targets, BTreeSet::new()).await;
    }

    /// Like `update`; `announced` names devices whose own events said they appeared or
    /// became ready (see [`appeared_parents`]).
    async fn update_announced(&mut self, targets: BTreeSet<Target>, announced: BTreeSet<String>) {
        let started = std::time::Instant::now();
        let before = self
            .follow
            .as_ref()
            .map(|_| follow::before(&self.inventory, &targets));
        let scope = if targets.contains(&Target::All) {
            // A full scan takes long on big hosts: off the runtime thread.
            let source = self.source.clone();
            match tokio::task::spawn_blocking(move || source.scan()).await {
                Ok(inv) => self.inventory = inv,
                Err(e) => {
                    tracing::error!(error = %e, "rescan failed");
                    return;
                }
            }
            RefreshScope::everything()
        } else {
            // Targeted reads, inline: a batch reads each mdev parent it touches once, however
            // many of its mdevs came or went. Off the runtime thread (the inventory moved
            // there and back) the large host's daemon grew by ~2 MiB after a burst of events:
            // the thread's allocations went to a second malloc arena.
            self.source.refresh(&mut self.inventory, &targets)
        };
        let read = started.elapsed();
        let synced = tree::sync_inventory(&mut self.served, &mut self.inventory, &scope);
        let changes = tree::update(&mut self.tree, &self.inventory, synced);
        // Publish first: a client reacting to a signal must find the object by lookup.
        if changes.iter().any(|c| match c {
            Change::Added { iface, .. } => matches!(iface, Iface::Gpu(_) | Iface::Mdev(_)),
            Change::Removed { kind, .. } => matches!(kind, Kind::Gpu | Kind::Mdev),
            Change::Updated { .. } => false,
        }) {
            self.lookup
                .send_replace(Arc::new(Lookup::of(&self.inventory)));
        }
        let n = changes.len();
        let diffed = started.elapsed();
        let appeared = appeared_parents(&changes, announced, &self.inventory);
        if let Err(e) = self.sink.apply(changes).await {
            tracing::error!(error = %e, "updating the D-Bus objects failed");
        }
        if !appeared.is_empty() {
            if let Some(tx) = &self.parent_added {
                let _ = tx.send(appeared);
            }
        }
        if let (Some(tx), Some(before)) = (&self.follow, before) {
            let seen = follow::seen(&before, &self.inventory, &targets);
            if !seen.is_empty() {
                let _ = tx.send(seen);
            }
        }
        let counts = Counts::of(&self.inventory);
        self.counts.send_if_modified(|c| {
            let changed = *c != counts;
            *c = counts;
            changed
        });
        tracing::debug!(changes = n, ?read, ?diffed, elapsed = ?started.elapsed(), "inventory updated");
    }
}

/// The shard parents that appeared in one update: a ShardParent object the diff added, or
/// a device whose own event announced it (`add`, `bind`, `MDEV_STATE=registered`) and that
/// is an mdev parent now. The events matter because a batch can hold a card's removal and
/// its return: the served tree then never loses the parent, yet its mdevs are gone. Other
/// changes (an mdev stopped, instances used up) are not appearances: a stopped definition
/// stays stopped, as with mdevctl.
fn appeared_parents(
    changes: &[Change],
    announced: BTreeSet<String>,
    inv: &Inventory,
) -> BTreeSet<String> {
    let mut appeared: BTreeSet<String> = announced
        .into_iter()
        .filter(|name| inv.mdev_parents.contains_key(name))
        .collect();
    for change in changes {
        if let Change::Added {
            iface: Iface::ShardParent(props),
            ..
        } = change
        {
            appeared.insert(props.name.clone());
        }
    }
    appeared
}

fn add_targets(
    targets: &mut BTreeSet<Target>,
    announced: &mut BTreeSet<String>,
    msg: &SourceMessage,
) {
    match msg {
        SourceMessage::Event(ev) => {
            tracing::trace!(action = %ev.action, devpath = %ev.devpath, subsystem = %ev.subsystem, driver = ?ev.driver, "uevent");
            targets.extend(events::targets(ev));
            let registered = ev.mdev_state.as_deref() == Some("registered");
            let pci_arrival = ev.subsystem == "pci" && matches!(ev.action.as_str(), "add" | "bind");
            if registered || pci_arrival {
                if let Some(name) = ev.devpath.rsplit('/').next() {
                    announced.insert(name.to_owned());
                }
            }
        }
        SourceMessage::Resync(reason) => {
            tracing::info!(reason, "full rescan");
            targets.insert(Target::All);
        }
    }
}
