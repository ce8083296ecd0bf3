//! The one owner of the inventory: applies events, diffs, updates the served objects.
//!
//! D-Bus handlers never touch the inventory: lookups read an immutable index from a `watch`
//! channel. Only this task writes, so there is no lock to hold across `.await`.

use std::collections::BTreeSet;
use std::sync::Arc;

use gpuvirt_core::{Inventory, RefreshScope};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dbus;
use crate::events::{self, SourceMessage, Target};
use crate::objects::{self, Change, Iface, Kind, Lookup, ObjectTree};

/// Reads the host. The daemon uses the core scanner; tests can substitute a fake.
pub trait InventorySource: Send + Sync + 'static {
    fn scan(&self) -> Inventory;
    /// Re-reads what `targets` touch in `inv` (one batch of events: see the core's
    /// `Scanner::refresh_batch`); returns the entries it may have changed.
    fn refresh(&self, inv: &mut Inventory, targets: &BTreeSet<Target>) -> RefreshScope;
}

impl InventorySource for gpuvirt_core::Scanner {
    fn scan(&self) -> Inventory {
        gpuvirt_core::Scanner::scan(self)
    }

    fn refresh(&self, inv: &mut Inventory, targets: &BTreeSet<Target>) -> RefreshScope {
        use gpuvirt_core::RefreshTarget as R;
        let targets: Vec<R> = targets
            .iter()
            .map(|target| match target {
                Target::Pci(a) => R::Pci(*a),
                Target::Mdev(u) => R::Mdev(*u),
                Target::MdevParent(n) => R::MdevParent(n.clone()),
                Target::MdevInstances(n) => R::MdevInstances(n.clone()),
                Target::IommuGroup(g) => R::IommuGroup(*g),
                Target::Modules => R::Modules,
                Target::All => R::All,
            })
            .collect();
        gpuvirt_core::Scanner::refresh_batch(self, inv, &targets).1
    }
}

/// Requests from the rest of the daemon.
#[derive(Debug)]
pub enum Command {
    /// Re-read everything (SIGHUP, later policy reload); replies when the tree is updated.
    Rescan(oneshot::Sender<()>),
    /// Liveness check for the systemd watchdog.
    Ping(oneshot::Sender<()>),
    /// A device-policy request (see `policy_runtime`).
    Policy(crate::policy_runtime::Request),
    /// Runs a closure on the inventory the tree shows (validating a mutating call). It runs on
    /// the actor's task, so it must be quick: copy out what it needs and reply.
    Inspect(Inspector),
    /// Re-reads `targets` now (after a mutation, without waiting for its uevents); replies
    /// when the tree is updated.
    Refresh(Vec<Target>, oneshot::Sender<()>),
    /// The served objects that carry any of these interfaces (all objects when empty), as
    /// the tree holds them (the properties are shared, not copied).
    Objects(
        Vec<String>,
        oneshot::Sender<Vec<(String, objects::ObjectSpec)>>,
    ),
}

/// A closure for [`Command::Inspect`].
pub struct Inspector(pub Box<dyn FnOnce(&Inventory) + Send>);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspector(..)")
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
    fn of(inv: &Inventory) -> Self {
        Counts {
            gpus: inv.gpus.len(),
            mdevs: inv.mdevs.len(),
            groups: inv.groups.len(),
        }
    }
}

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
    /// What the served tree was built from ([`objects::served_part`]: the inventory less the
    /// functions and groups no object shows), compared with `inventory` after each refresh:
    /// the entries that differ say which objects to rebuild.
    served: Inventory,
    tree: ObjectTree,
    server: zbus::ObjectServer,
    lookup: watch::Sender<Arc<Lookup>>,
    counts: watch::Sender<Counts>,
    /// Told which shard parents appeared (hotplug, driver load, `MDEV_STATE=registered`), so
    /// defined mdevs are recreated on the parent's own readiness event, not after a sleep.
    parent_added: Option<mpsc::UnboundedSender<BTreeSet<String>>>,
    /// The device policy in force and the executor that applies it.
    pub(crate) policy: Option<crate::policy_runtime::PolicyRuntime>,
    /// Read right after the command being handled has replied (see [`Actor::defer_refresh`]).
    deferred: BTreeSet<Target>,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("objects", &self.tree.objects.len())
            .finish_non_exhaustive()
    }
}

impl Actor {
    /// `inventory` and `tree` are what is already served.
    pub fn new(
        source: Arc<dyn InventorySource>,
        mut inventory: Inventory,
        tree: ObjectTree,
        server: zbus::ObjectServer,
        lookup: watch::Sender<Arc<Lookup>>,
        counts: watch::Sender<Counts>,
    ) -> Self {
        counts.send_replace(Counts::of(&inventory));
        Actor {
            source,
            served: objects::served_part(&mut inventory),
            inventory,
            tree,
            server,
            lookup,
            counts,
            parent_added: None,
            policy: None,
            deferred: BTreeSet::new(),
        }
    }

    /// Sends the names of the shard parents that appeared on `tx` (see [`appeared_parents`]).
    pub fn notify_parent_added(mut self, tx: mpsc::UnboundedSender<BTreeSet<String>>) -> Self {
        self.parent_added = Some(tx);
        self
    }

    /// Gives the actor the device-policy runtime (it reconciles once the loop runs).
    pub fn with_policy(mut self, policy: crate::policy_runtime::PolicyRuntime) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The inventory the served tree shows.
    pub(crate) fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub(crate) fn server(&self) -> &zbus::ObjectServer {
        &self.server
    }

    /// Serves the device policy's verdict on each GPU (`Role`, `PolicyRule`), announcing
    /// the objects whose verdict changed.
    pub(crate) async fn set_policy_facts(
        &mut self,
        facts: std::collections::BTreeMap<gpuvirt_core::PciAddress, objects::PolicyFacts>,
    ) {
        let changes = objects::set_policy_facts(&mut self.tree, facts);
        if changes.is_empty() {
            return;
        }
        if let Err(e) = dbus::apply(&self.server, changes).await {
            tracing::error!(error = %e, "updating the GPUs' policy properties failed");
        }
    }

    /// Reads `targets` once the command being handled has replied, before the next one:
    /// an apply whose every write the kernel confirmed replies without waiting for the
    /// read-back of what it changed (the tree follows, with its signals, right after).
    pub(crate) fn defer_refresh(&mut self, targets: impl IntoIterator<Item = Target>) {
        self.deferred.extend(targets);
    }

    /// Re-reads everything and updates the tree (after applying changes).
    pub(crate) async fn rescan(&mut self) {
        self.update(BTreeSet::from([Target::All])).await;
    }

    /// Runs until the command channel closes. A closed event channel (`--events none`, or a
    /// source that ended) stops only the event branch: methods and the policy keep working.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceMessage>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut events_open = true;
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
                self.update_and_react(targets, announced).await;
                continue;
            }
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
                    self.update_and_react(targets, announced).await;
                }
                _ = crate::policy_runtime::sleep_until(self.policy.as_ref().and_then(|p| p.due())) => {
                    crate::policy_runtime::on_due(&mut self).await;
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Rescan(reply)) => {
                        self.update(BTreeSet::from([Target::All])).await;
                        let _ = reply.send(());
                    }
                    Some(Command::Ping(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Command::Inspect(Inspector(f))) => f(&self.inventory),
                    Some(Command::Objects(interfaces, reply)) => {
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
                    Some(Command::Refresh(targets, reply)) => {
                        // A mutation asks right after its sysfs writes, whose uevents may
                        // still be in the socket: let the event source run (yield_now resumes
                        // after the I/O driver was polled), then fold what it queued into this
                        // pass, rather than a second pass for them that finds nothing left to
                        // change. (Events handled before this request still leave one such
                        // pass: this one, the price of replying once the tree shows the change.)
                        tokio::task::yield_now().await;
                        let mut targets: BTreeSet<Target> = targets.into_iter().collect();
                        let mut announced = BTreeSet::new();
                        let folded = fold_queued(&mut events, &mut targets, &mut announced);
                        let touched = (folded && self.policy.is_some()).then(|| targets.clone());
                        self.update_announced(targets, announced).await;
                        let _ = reply.send(());
                        if let Some(touched) = touched {
                            crate::policy_runtime::after_events(&mut self, &touched).await;
                        }
                    }
                    Some(Command::Policy(request)) => {
                        crate::policy_runtime::handle(&mut self, request).await;
                    }
                    None => break,
                },
            }
        }
    }

    /// Refreshes `targets` from events (see [`Actor::update_announced`]), then lets the
    /// device policy react to what they touched.
    async fn update_and_react(&mut self, targets: BTreeSet<Target>, announced: BTreeSet<String>) {
        let touched = self.policy.is_some().then(|| targets.clone());
        self.update_announced(targets, announced).await;
        if let Some(touched) = touched {
            crate::policy_runtime::after_events(self, &touched).await;
        }
    }

    async fn update(&mut self, targets: BTreeSet<Target>) {
        self.update_announced(targets, BTreeSet::new()).await;
    }

    /// Like `update`; `announced` names devices whose own events said they appeared or
    /// became ready (see [`appeared_parents`]).
    async fn update_announced(&mut self, targets: BTreeSet<Target>, announced: BTreeSet<String>) {
        let started = std::time::Instant::now();
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
        let synced = objects::sync_inventory(&mut self.served, &mut self.inventory, &scope);
        let changes = objects::update(&mut self.tree, &self.inventory, synced);
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
        let appeared = appeared_parents(&changes, announced, &self.inventory);
        if let Err(e) = dbus::apply(&self.server, changes).await {
            tracing::error!(error = %e, "updating the D-Bus objects failed");
        }
        if !appeared.is_empty() {
            if let Some(tx) = &self.parent_added {
                let _ = tx.send(appeared);
            }
        }
        let counts = Counts::of(&self.inventory);
        self.counts.send_if_modified(|c| {
            let changed = *c != counts;
            *c = counts;
            changed
        });
        tracing::debug!(changes = n, elapsed = ?started.elapsed(), "inventory updated");
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
