//! The mutating D-Bus API: passthrough (`Gpu.AssignPassthrough`, `Gpu.ReturnToHost`) and
//! sharding (`ShardParent.CreateMdev`, `Mdev.Remove`, mdevctl-like
//! `Manager.DefineMdev/UndefineMdev/StartMdev/StopMdev`), plus `Manager.RenderHostdev`.
//!
//! Every call goes: parse arguments (InvalidArgs naming the argument) → validate against the
//! live inventory and the ownership ledger (interlocks, no-ops answered at once) → authorize
//! ([`crate::auth`]) → run the executor in a blocking worker with a timeout. Passthrough runs
//! as a [`crate::jobs`] job because an unbind can hang; mdev operations are single sysfs writes
//! and answer directly (still bounded by the same timeout).
//!
//! Only one operation runs at a time, policy applies included: every ledger writer opens its
//! executor while holding the one [`ExecLock`] (a fresh executor reads the ledger as saved, so
//! nothing another writer recorded is overwritten by a stale copy). A write that hangs
//! keeps that slot until the kernel returns; the caller gets `TimedOut` and the daemon keeps
//! serving: the ledger already records the slot's original drivers, so `recover()` at the next
//! start-up finishes the job if the daemon is restarted meanwhile.
//!
//! The served interfaces are rebuilt from plain properties by the object tree, so their
//! methods reach this module through one process-wide [`Mutator`] installed at start-up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gpuvirt_api::{self as api, CallError};
use gpuvirt_core::exec::{self, ExecError, Executor};
use gpuvirt_core::interlock::{self, Allowances, Facts, Refusal};
use gpuvirt_core::ledger::{Ledger, LedgerStore, MdevRecord, MdevStart};
use gpuvirt_core::plan::{Action, SlotFunction, SlotReturn, Step};
use gpuvirt_core::render::{self, PassthroughOptions, RenderError, RenderTarget};
use gpuvirt_core::shard::{self, ShardError};
use gpuvirt_core::{Inventory, PciAddress, PciSlot, Root};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::actor::{Command, Inspector};
use crate::auth::{self, Bouncer};
use crate::events::Target;
use crate::jobs::{Job, Jobs};
use crate::policy_runtime::{ManualSubject, Request as PolicyRequest};

/// A failed operation: the D-Bus error name's last element (`Busy`; `InvalidArgs` and
/// `Failed` are the standard ones) and the message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub name: &'static str,
    pub message: String,
}

impl OpError {
    fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }

    fn failed(message: impl Into<String>) -> Self {
        Self::new("Failed", message)
    }

    /// The full D-Bus error name.
    pub fn dbus_name(&self) -> String {
        match self.name {
            "InvalidArgs" | "Failed" | "AccessDenied" => {
                format!("org.freedesktop.DBus.Error.{}", self.name)
            }
            other => format!("{}.{other}", api::ERROR_PREFIX),
        }
    }

    fn from_exec(e: &ExecError) -> Self {
        let message = gpuvirt_core::error_chain(e as &dyn std::error::Error);
        Self::new(e.kind().name(), message)
    }

    fn from_shard(e: &ShardError) -> Self {
        Self::new(e.dbus_name(), e.to_string())
    }

    /// Every refusal in one message; the name is the first one's (they come in a stable
    /// order: device, IOMMU, boot VGA, group, holders).
    fn from_refusals(refusals: &[Refusal]) -> Self {
        let name = refusals.first().map_or("Failed", Refusal::dbus_name);
        let message = refusals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        Self::new(name, message)
    }
}

impl From<OpError> for CallError {
    fn from(e: OpError) -> Self {
        let m = e.message;
        match e.name {
            "NoSuchDevice" => api::Error::NoSuchDevice(m).into(),
            "PolicyViolation" => api::Error::PolicyViolation(m).into(),
            "PolicyInvalid" => api::Error::PolicyInvalid(m).into(),
            "Busy" => api::Error::Busy(m).into(),
            "GroupNotViable" => api::Error::GroupNotViable(m).into(),
            "BootVga" => api::Error::BootVga(m).into(),
            "NotSupported" => api::Error::NotSupported(m).into(),
            "UnknownType" => api::Error::UnknownType(m).into(),
            "NoCapacity" => api::Error::NoCapacity(m).into(),
            "AlreadyExists" => api::Error::AlreadyExists(m).into(),
            "TimedOut" => api::Error::TimedOut(m).into(),
            "DriverBind" => api::Error::DriverBind(m).into(),
            "InvalidArgs" => CallError::Fdo(zbus::fdo::Error::InvalidArgs(m)),
            "AccessDenied" => CallError::Fdo(zbus::fdo::Error::AccessDenied(m)),
            _ => CallError::Fdo(zbus::fdo::Error::Failed(m)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

/// The `a{sv}` options of mutating methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub dry_run: bool,
    pub force: bool,
    pub interactive: bool,
    /// `auto` of DefineMdev (start when the parent appears); default true.
    pub auto: bool,
    /// `x-vga` of RenderHostdev.
    pub x_vga: bool,
}

/// Parses `options`, allowing only the keys in `allowed`; an unknown key or a value that is
/// not a boolean is InvalidArgs naming it.
pub fn parse_options(
    options: &HashMap<String, OwnedValue>,
    allowed: &[&str],
) -> Result<Options, CallError> {
    let mut parsed = Options {
        dry_run: false,
        force: false,
        interactive: auth::interactive(options)?,
        auto: true,
        x_vga: false,
    };
    for (key, value) in options {
        if !allowed.contains(&key.as_str()) && key != "auth.no_user_interaction" {
            let shown: String = key.chars().take(64).collect();
            return Err(CallError::invalid_arg(
                "options",
                format!(
                    "unknown option '{shown}'; this method takes: {}",
                    allowed
                        .iter()
                        .chain(["auth.no_user_interaction"].iter())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let Value::Bool(b) = **value else {
            return Err(CallError::invalid_arg(
                "options",
                format!(
                    "option '{key}' must be a boolean (b), not {}",
                    value.value_signature()
                ),
            ));
        };
        match key.as_str() {
            "dry-run" => parsed.dry_run = b,
            "force" => parsed.force = b,
            "auto" => parsed.auto = b,
            "x-vga" => parsed.x_vga = b,
            _ => {}
        }
    }
    Ok(parsed)
}

/// Longest mdev type id or name accepted: the path-component limit. A longer one can name no
/// type, and refusing it here keeps a caller's megabyte out of the UnknownType error text.
const MAX_TYPE_SPEC: usize = 128;

fn check_type_spec(type_spec: &str) -> Result<(), CallError> {
    if type_spec.trim().is_empty() {
        return Err(CallError::invalid_arg(
            "type",
            "empty; give a type id or name",
        ));
    }
    if type_spec.len() > MAX_TYPE_SPEC {
        return Err(CallError::invalid_arg(
            "type",
            format!(
                "{} bytes is longer than any mdev type id or name (at most {MAX_TYPE_SPEC})",
                type_spec.len()
            ),
        ));
    }
    Ok(())
}

fn parse_uuid(argument: &str, text: &str) -> Result<Uuid, CallError> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        CallError::invalid_arg(argument, format!("'{shown}' is not a UUID"))
    })
}

fn sender(header: &Header<'_>) -> String {
    header.sender().map(|s| s.to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The mutator
// ---------------------------------------------------------------------------------------

/// Serialises every ledger writer (the mutating API and the policy runtime): held from
/// opening an executor until its last write returns.
pub type ExecLock = Arc<tokio::sync::Mutex<()>>;

/// What the mutating methods need, shared by all of them.
#[derive(Debug)]
pub struct Mutator {
    root: Root,
    state_dir: PathBuf,
    actor: mpsc::Sender<Command>,
    bouncer: Bouncer,
    jobs: Jobs,
    /// Longest wait for one operation's kernel writes.
    timeout: Duration,
    /// One operation at a time. Held by the blocking worker itself, so a write that outlives
    /// its timeout keeps later operations out until the kernel returns.
    exec_lock: ExecLock,
    /// Objects with a queued or running operation, and what it is.
    in_flight: Mutex<BTreeMap<String, String>>,
}

static MUTATOR: OnceLock<Mutator> = OnceLock::new();

/// Makes the mutating methods work; before this they fail with `Failed` ("starting").
pub fn install(mutator: Mutator) -> &'static Mutator {
    MUTATOR.get_or_init(|| mutator)
}

fn mutator() -> Result<&'static Mutator, CallError> {
    MUTATOR.get().ok_or_else(|| {
        CallError::Fdo(zbus::fdo::Error::Failed(
            "gpuvirtd is still starting; retry in a moment".to_string(),
        ))
    })
}

/// Finishes what a killed daemon left half done (slots `pending` or `returning` go back to
/// their original drivers). Runs before the first scan and before READY.
pub fn recover(root: &Root, state_dir: &std::path::Path) {
    match Executor::open(root.clone(), LedgerStore::new(state_dir)) {
        Ok((mut executor, warning)) => {
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            for report in executor.recover() {
                if report.succeeded() {
                    tracing::info!("recovered: {report}");
                } else {
                    tracing::error!("recovery failed: {report}");
                }
            }
        }
        Err(e) => tracing::error!(
            "cannot open the ownership ledger: {}",
            gpuvirt_core::error_chain(&e)
        ),
    }
}

/// Removes an object's in-flight mark when the operation ends, however it ends.
struct InFlight {
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = MUTATOR.get() {
            m.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.key);
        }
    }
}

/// The outcome of a blocking operation on the executor.
type Work = Box<dyn FnOnce(&mut Executor) -> Result<String, OpError> + Send>;

impl Mutator {
    pub fn new(
        root: Root,
        state_dir: PathBuf,
        actor: mpsc::Sender<Command>,
        connection: zbus::Connection,
        timeout: Duration,
        exec_lock: ExecLock,
    ) -> Self {
        let server = connection.object_server().clone();
        Self {
            root,
            state_dir,
            actor,
            bouncer: Bouncer::new(connection),
            jobs: Jobs::new(server),
            timeout,
            exec_lock,
            in_flight: Mutex::new(BTreeMap::new()),
        }
    }

    /// The ledger as saved now (other writers, such as the policy runtime, may have changed
    /// it since this daemon last ran an operation).
    fn ledger(&self) -> Result<Ledger, OpError> {
        LedgerStore::new(&self.state_dir)
            .load()
            .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))
    }

    /// Runs `f` on the inventory the tree shows, on the actor's task.
    async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inventory) -> R + Send + 'static,
    ) -> Result<R, OpError> {
        let (tx, rx) = oneshot::channel();
        let gone = || OpError::failed("gpuvirtd is shutting down");
        self.actor
            .send(Command::Inspect(Inspector(Box::new(move |inv| {
                let _ = tx.send(f(inv));
            }))))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Refuses with `PolicyViolation` (naming the rule and the way out) when the device policy
    /// manages the card behind any of `subjects`. Asked of the actor, which owns the policy;
    /// every mutator calls it before authorizing (a refused call never prompts) and before
    /// its dry-run answer, so a dry run says the real call would be refused.
    async fn check_policy(&self, subjects: Vec<ManualSubject>) -> Result<(), OpError> {
        let (tx, rx) = oneshot::channel();
        let gone = || OpError::failed("gpuvirtd is shutting down");
        self.actor
            .send(Command::Policy(PolicyRequest::CheckManual {
                subjects,
                reply: tx,
            }))
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|v| OpError::new("PolicyViolation", v.to_string()))
    }

    fn claim(&self, key: String, operation: &str) -> Result<InFlight, OpError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = in_flight.get(&key) {
            return Err(OpError::new(
                "Busy",
                format!("{key} is busy: '{running}' is still running; wait for it to finish"),
            ));
        }
        in_flight.insert(key.clone(), operation.to_string());
        Ok(InFlight { key })
    }

    /// Runs `work` on a fresh executor in a blocking worker, bounded by the timeout, then
    /// refreshes `targets` so the tree (and its signals) show the result.
    async fn run(
        &self,
        what: &str,
        lock: tokio::sync::OwnedMutexGuard<()>,
        targets: Vec<Target>,
        work: Work,
    ) -> Result<String, OpError> {
        let root = self.root.clone();
        let store = LedgerStore::new(&self.state_dir);
        let handle = tokio::task::spawn_blocking(move || {
            // Held until the kernel returns, even when the caller stopped waiting.
            let _lock = lock;
            let (mut executor, warning) = Executor::open(root, store)
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            work(&mut executor)
        });
        let result = match tokio::time::timeout(self.timeout, handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(OpError::failed(format!("{what} crashed: {e}"))),
            Err(_) => Err(OpError::new(
                "TimedOut",
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
        self.refresh(targets).await;
        result
    }

    async fn refresh(&self, targets: Vec<Target>) {
        let (tx, rx) = oneshot::channel();
        if self.actor.send(Command::Refresh(targets, tx)).await.is_ok() {
            // Bounded: the uevents refresh the tree anyway if the actor is slow.
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// The executor for a synchronous call: waits at most the timeout for an earlier one.
    async fn lock_now(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, OpError> {
        tokio::time::timeout(self.timeout, self.exec_lock.clone().lock_owned())
            .await
            .map_err(|_| {
                OpError::new(
                    "Busy",
                    "an earlier operation is still waiting for the kernel; retry later",
                )
            })
    }

    /// Starts `work` as a job and returns its path.
    async fn start_job(
        &'static self,
        header: &Header<'_>,
        operation: String,
        objects: Vec<OwnedObjectPath>,
        in_flight: InFlight,
        targets: Vec<Target>,
        work: Work,
    ) -> Result<OwnedObjectPath, OpError> {
        let job: Job = self
            .jobs
            .create(operation.clone(), objects, sender(header))
            .await
            .map_err(|e| OpError::failed(format!("cannot export the job: {e}")))?;
        let path = job.path().clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let lock = self.exec_lock.clone().lock_owned().await;
            if !job.start() {
                job.complete(Err((
                    "org.freedesktop.DBus.Error.Failed".to_string(),
                    format!("{operation}: cancelled before it started"),
                )))
                .await;
                return;
            }
            job.set_progress(0.1).await;
            let result = self.run(&operation, lock, targets, work).await;
            match &result {
                Ok(m) => tracing::info!(operation, "job done: {m}"),
                Err(e) => tracing::warn!(operation, error = e.name, "job failed: {}", e.message),
            }
            job.complete(result.map_err(|e| (e.dbus_name(), e.message)))
                .await;
        });
        Ok(path)
    }
}

fn run_actions(executor: &mut Executor, actions: &[Action]) -> Result<String, OpError> {
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

// ---------------------------------------------------------------------------------------
// Passthrough
// ---------------------------------------------------------------------------------------

/// The card's functions (VFs excluded) and their drivers, its groups, and whether vfio-pci is
/// loaded.
#[derive(Debug)]
struct Card {
    functions: Vec<(PciAddress, Option<String>)>,
    groups: Vec<u32>,
    vfio_pci_loaded: bool,
}

fn slot_targets(card: &Card) -> Vec<Target> {
    let mut targets: Vec<Target> = card
        .functions
        .iter()
        .map(|(a, _)| Target::Pci(*a))
        .collect();
    targets.extend(card.groups.iter().map(|g| Target::IommuGroup(*g)));
    targets.push(Target::Modules);
    targets
}

/// The slot of `address` as the inventory shows it.
fn card_of(inv: &Inventory, address: PciAddress) -> Result<Card, OpError> {
    let functions = render::card_functions(inv, address)
        .map_err(|e| OpError::new("NoSuchDevice", e.to_string()))?;
    let mut groups: Vec<u32> = functions.iter().filter_map(|f| f.iommu_group).collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(Card {
        functions: functions
            .into_iter()
            .map(|f| (f.address, f.driver.clone()))
            .collect(),
        groups,
        vfio_pci_loaded: inv.modules.vfio_pci,
    })
}

/// Reads the card and the interlock facts; the facts read /proc, so off the actor's task.
async fn card_and_facts(
    m: &Mutator,
    address: PciAddress,
) -> Result<(Card, Facts, Arc<Inventory>), OpError> {
    // Plan against what sysfs says now, not what the last processed uevent said: a rebind
    // whose uevents are still queued would otherwise be planned from the old driver.
    let stale = m
        .inspect(move |inv| card_of(inv, address).ok().map(|c| slot_targets(&c)))
        .await?;
    if let Some(targets) = stale {
        m.refresh(targets).await;
    }
    let inv = m.inspect(|inv| Arc::new(inv.clone())).await?;
    let card = card_of(&inv, address)?;
    let root = m.root.clone();
    let inv2 = inv.clone();
    let facts = tokio::task::spawn_blocking(move || Facts::gather(&root, &inv2, address.slot()))
        .await
        .map_err(|e| OpError::failed(format!("reading the holders failed: {e}")))?;
    Ok((card, facts, inv))
}

fn gpu_objects(address: PciAddress) -> Vec<OwnedObjectPath> {
    vec![api::gpu_path(&address)]
}

/// `Gpu.AssignPassthrough(a{sv}) -> (o job, s plan)`.
pub async fn assign_passthrough(
    address: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<(OwnedObjectPath, String), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &["dry-run"])?;
    let address: PciAddress = address
        .parse()
        .map_err(|e| CallError::invalid_arg("address", e))?;
    let slot = address.slot();
    m.check_policy(vec![ManualSubject::Pci(address)]).await?;
    let (card, facts, inv) = card_and_facts(m, address).await?;
    let ledger = m.ledger()?;
    let all_vfio = card
        .functions
        .iter()
        .all(|(_, d)| d.as_deref() == Some("vfio-pci"));
    if all_vfio && ledger.slot(slot).is_some() {
        return Ok((
            api::no_object(),
            format!("nothing to do: slot {slot} is assigned to vfio-pci already\n"),
        ));
    }
    interlock::check_passthrough(&inv, slot, &facts, Allowances::default())
        .map_err(|r| OpError::from_refusals(&r))?;
    let mut actions = Vec::new();
    if !card.vfio_pci_loaded {
        actions.push(Action::LoadModule {
            module: "vfio-pci".to_string(),
        });
    }
    actions.push(Action::BindSlotToVfio {
        slot,
        functions: card
            .functions
            .iter()
            .map(|(a, d)| SlotFunction {
                address: *a,
                driver: d.clone(),
            })
            .collect(),
    });
    run_slot_job(
        m,
        header,
        "Gpu.AssignPassthrough",
        format!("assign slot {slot} to vfio-pci"),
        (slot, &card, address),
        actions,
        &opts,
    )
    .await
}

/// The shared end of AssignPassthrough and ReturnToHost: the plan text, or (after
/// authorization) the slot's job running `actions`.
async fn run_slot_job(
    m: &'static Mutator,
    header: &Header<'_>,
    method: &str,
    operation: String,
    (slot, card, address): (PciSlot, &Card, PciAddress),
    actions: Vec<Action>,
    opts: &Options,
) -> Result<(OwnedObjectPath, String), CallError> {
    let plan = plan_text(&actions);
    if opts.dry_run {
        return Ok((api::no_object(), plan));
    }
    m.bouncer
        .authorize(header, method, opts.interactive)
        .await?;
    let in_flight = m.claim(format!("slot {slot}"), &operation)?;
    let job = m
        .start_job(
            header,
            operation,
            gpu_objects(address),
            in_flight,
            slot_targets(card),
            Box::new(move |ex| run_actions(ex, &actions)),
        )
        .await?;
    Ok((job, plan))
}

/// `Gpu.ReturnToHost(a{sv}) -> (o job, s plan)`.
pub async fn return_to_host(
    address: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<(OwnedObjectPath, String), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &["dry-run"])?;
    let address: PciAddress = address
        .parse()
        .map_err(|e| CallError::invalid_arg("address", e))?;
    let slot: PciSlot = address.slot();
    m.check_policy(vec![ManualSubject::Pci(address)]).await?;
    let (card, facts, _inv) = card_and_facts(m, address).await?;
    let ledger = m.ledger()?;
    let any_vfio = card
        .functions
        .iter()
        .any(|(_, d)| d.as_deref() == Some("vfio-pci"));
    if ledger.slot(slot).is_none() && !any_vfio {
        return Ok((
            api::no_object(),
            format!("nothing to do: slot {slot} is with the host already\n"),
        ));
    }
    interlock::check_return(&ledger, slot, &facts).map_err(|r| OpError::from_refusals(&r))?;
    let record = ledger
        .slot(slot)
        .ok_or_else(|| OpError::failed("the ledger changed while checking"))?;
    let current: HashMap<PciAddress, Option<String>> = card.functions.iter().cloned().collect();
    let actions = vec![Action::ReturnSlotToHost {
        slot,
        functions: record
            .functions
            .iter()
            .map(|f| SlotReturn {
                address: f.address,
                driver: current.get(&f.address).cloned().flatten(),
                original_driver: f.original_driver.clone(),
            })
            .collect(),
    }];
    run_slot_job(
        m,
        header,
        "Gpu.ReturnToHost",
        format!("return slot {slot} to the host"),
        (slot, &card, address),
        actions,
        &opts,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Sharding
// ---------------------------------------------------------------------------------------

/// What creating, starting or removing `uuid` on `parent` changes.
pub(crate) fn mdev_targets(parent: &str, uuid: Uuid) -> Vec<Target> {
    vec![
        Target::MdevInstances(parent.to_string()),
        Target::Mdev(uuid),
    ]
}

/// `ShardParent.CreateMdev(s type, s uuid, a{sv}) -> o mdev`: an empty `uuid` is generated.
pub async fn create_mdev(
    parent: &str,
    type_spec: &str,
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<OwnedObjectPath, CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &[])?;
    check_type_spec(type_spec)?;
    let uuid = if uuid.is_empty() {
        None
    } else {
        Some(parse_uuid("uuid", uuid)?)
    };
    m.check_policy(vec![ManualSubject::MdevParent(parent.to_string())])
        .await?;
    let (parent_name, spec) = (parent.to_string(), type_spec.to_string());
    let actions = m
        .inspect(move |inv| shard::plan_create(inv, &parent_name, &spec, uuid, 1))
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(Action::CreateMdev { uuid, .. }) = actions.first() else {
        return Err(OpError::new(
            "NotSupported",
            format!(
                "{parent} is not an mdev parent; its vGPUs are made by the device policy (shard rule)"
            ),
        )
        .into());
    };
    let uuid = *uuid;
    m.bouncer
        .authorize(header, "ShardParent.CreateMdev", opts.interactive)
        .await?;
    let _in_flight = m.claim(format!("mdev {uuid}"), "create")?;
    let lock = m.lock_now().await?;
    m.run(
        &format!("creating mdev {uuid}"),
        lock,
        mdev_targets(parent, uuid),
        Box::new(move |ex| run_actions(ex, &actions)),
    )
    .await?;
    Ok(api::mdev_path(&uuid))
}

/// `Mdev.Remove(a{sv})`: gpuvirt's own mdevs; another tool's only with `force`. A defined
/// mdev keeps its definition (it is stopped, as `mdevctl stop` does).
pub async fn remove_mdev(
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<(), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &["force"])?;
    let uuid = parse_uuid("uuid", uuid)?;
    stop(m, uuid, opts, header, "Mdev.Remove").await
}

async fn stop(
    m: &'static Mutator,
    uuid: Uuid,
    opts: Options,
    header: &Header<'_>,
    method: &str,
) -> Result<(), CallError> {
    let ledger = m.ledger()?;
    let mut subjects = vec![ManualSubject::Mdev(uuid)];
    if let Some(record) = ledger.mdevs.get(&uuid) {
        subjects.push(ManualSubject::MdevParent(record.parent.clone()));
    }
    m.check_policy(subjects).await?;
    let force = opts.force;
    let ledger2 = ledger.clone();
    let actions = m
        .inspect(move |inv| shard::plan_remove(inv, &ledger2, uuid, force))
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(Action::RemoveMdev { parent, .. }) = actions.first() else {
        return Err(OpError::failed("the planner returned no removal").into());
    };
    let parent = parent.clone();
    m.bouncer
        .authorize(header, method, opts.interactive)
        .await?;
    let _in_flight = m.claim(format!("mdev {uuid}"), "remove")?;
    let lock = m.lock_now().await?;
    let root = m.root.clone();
    m.run(
        &format!("removing mdev {uuid}"),
        lock,
        mdev_targets(&parent, uuid),
        Box::new(move |ex| {
            let record = ex.ledger().mdevs.get(&uuid).cloned();
            if ex.ledger().owns_mdev(&uuid) {
                run_actions(ex, &actions)?;
                // The executor forgets a removed mdev; a definition outlives the device.
                if let Some(record) = record.filter(|r| r.defined) {
                    ex.update_ledger(|l| {
                        l.mdevs.insert(uuid, record);
                    })
                    .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                }
                Ok(format!("removed mdev {uuid}"))
            } else {
                // Forced removal of another tool's mdev: one write, no ledger entry.
                let path = root.join(format!("sys/bus/mdev/devices/{uuid}/remove"));
                exec::write_attr(&path, "1").map_err(|e| {
                    if e.errno == libc_ebusy() {
                        OpError::new(
                            "Busy",
                            format!("mdev {uuid} is in use (EBUSY): a VM is using it; shut the VM down or detach the device first"),
                        )
                    } else {
                        OpError::failed(format!("removing mdev {uuid}: {e}"))
                    }
                })?;
                Ok(format!("removed mdev {uuid} (forced; it was not gpuvirt's)"))
            }
        }),
    )
    .await?;
    Ok(())
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// `Manager.DefineMdev(s parent, s type, s uuid, a{sv}) -> s uuid`: a persistent definition
/// (mdevctl define). Option `auto` (default true): create it whenever the parent is present.
/// The parent may be absent; then `type` must be a type id.
pub async fn define_mdev(
    parent: &str,
    type_spec: &str,
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<String, CallError> {
    let opts = parse_options(&options, &["auto"])?;
    let start = if opts.auto {
        MdevStart::Auto
    } else {
        MdevStart::Manual
    };
    let definition = Definition {
        type_spec,
        start,
        attrs: Vec::new(),
        method: "Manager.DefineMdev",
    };
    define(parent, uuid, definition, header, opts).await
}

/// `Manager.ImportMdevDefinition(s parent, s uuid, s config, a{sv}) -> s uuid`: defines an
/// mdev from mdevctl's file format (`mdev_type`, `start`, ordered `attrs`), as `mdevctl define
/// --jsonfile` does; the definition is gpuvirt's from then on. An empty `uuid` is generated.
pub async fn import_mdev_definition(
    parent: &str,
    uuid: &str,
    config: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<String, CallError> {
    let opts = parse_options(&options, &[])?;
    if exec::names::mdev_parent(parent).is_err() {
        return Err(CallError::invalid_arg(
            "parent",
            "not an mdev parent name (an mdev_bus entry such as 0000:41:00.0)",
        ));
    }
    // The UUID only names the definition while it is checked.
    let checked_uuid = if uuid.is_empty() {
        Uuid::nil()
    } else {
        parse_uuid("uuid", uuid)?
    };
    let parsed = gpuvirt_core::mdevctl::parse_config(
        std::path::Path::new("the config argument"),
        parent,
        checked_uuid,
        config,
    )
    .map_err(|e| CallError::invalid_arg("config", e))?;
    let definition = Definition {
        type_spec: &parsed.mdev_type,
        start: parsed.start,
        attrs: parsed.attrs.clone(),
        method: "Manager.ImportMdevDefinition",
    };
    define(parent, uuid, definition, header, opts).await
}

/// `Manager.ListMdevDefinitions(a{sv}) -> a(sssssa(ss)b)`: every persistent definition,
/// gpuvirt's (its ledger) and mdevctl's (`/etc/mdevctl.d` under the root, read now), with
/// owner, start mode, ordered attrs and whether the device is active. Reads only.
pub async fn list_mdev_definitions(
    options: HashMap<String, OwnedValue>,
) -> Result<Vec<api::MdevDefinitionWire>, CallError> {
    let m = mutator()?;
    parse_options(&options, &[])?;
    let ledger = m.ledger()?;
    let root = m.root.clone();
    let scan = tokio::task::spawn_blocking(move || gpuvirt_core::mdevctl::read_all(&root))
        .await
        .map_err(|e| OpError::failed(format!("reading mdevctl's definitions failed: {e}")))?;
    for e in &scan.errors {
        tracing::warn!(
            "skipping an mdevctl definition: {}",
            gpuvirt_core::error_chain(e as &dyn std::error::Error)
        );
    }
    let active: BTreeSet<Uuid> = m.inspect(|inv| inv.mdevs.keys().copied().collect()).await?;
    Ok(
        gpuvirt_core::mdevctl::definitions(&ledger, &scan.configs, |u| active.contains(u))
            .into_iter()
            .map(|d| {
                (
                    d.config.uuid.hyphenated().to_string(),
                    d.config.parent,
                    d.config.mdev_type,
                    d.owner.as_str().to_string(),
                    match d.config.start {
                        MdevStart::Auto => "auto",
                        MdevStart::Manual => "manual",
                    }
                    .to_string(),
                    d.config.attrs,
                    d.active,
                )
            })
            .collect(),
    )
}

/// What DefineMdev and ImportMdevDefinition record.
struct Definition<'a> {
    type_spec: &'a str,
    start: MdevStart,
    attrs: Vec<(String, String)>,
    /// The method, for authorization.
    method: &'static str,
}

async fn define(
    parent: &str,
    uuid: &str,
    definition: Definition<'_>,
    header: &Header<'_>,
    opts: Options,
) -> Result<String, CallError> {
    let m = mutator()?;
    let type_spec = definition.type_spec;
    if exec::names::mdev_parent(parent).is_err() {
        return Err(CallError::invalid_arg(
            "parent",
            "not an mdev parent name (an mdev_bus entry such as 0000:41:00.0)",
        ));
    }
    check_type_spec(type_spec)?;
    let uuid = if uuid.is_empty() {
        Uuid::new_v4()
    } else {
        parse_uuid("uuid", uuid)?
    };
    m.check_policy(vec![ManualSubject::MdevParent(parent.to_string())])
        .await?;
    let (p, spec) = (parent.to_string(), type_spec.to_string());
    let (type_id, active) = m
        .inspect(move |inv| {
            let active = inv
                .mdevs
                .get(&uuid)
                .map(|d| (d.parent.clone(), d.type_id.clone()));
            let resolved = match shard::shard_parent(inv, &p) {
                Ok(sp) => sp.resolve_type(&spec).map(|t| t.id.clone()),
                Err(ShardError::NoSuchParent { .. }) => Ok(spec.trim().to_string()),
                Err(e) => Err(e),
            };
            resolved.map(|t| (t, active))
        })
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    if exec::names::mdev_type(&type_id).is_err() {
        return Err(CallError::invalid_arg("type", "not a valid mdev type id"));
    }
    let ledger = m.ledger()?;
    if ledger.mdevs.get(&uuid).is_some_and(|r| r.defined) {
        return Err(
            OpError::new("AlreadyExists", format!("mdev {uuid} is defined already")).into(),
        );
    }
    if let Some((ap, at)) = &active {
        if !ledger.owns_mdev(&uuid) {
            return Err(OpError::new(
                "PolicyViolation",
                format!(
                    "mdev {uuid} is active and belongs to another tool; gpuvirt does not define it"
                ),
            )
            .into());
        }
        if ap != parent || at.as_deref() != Some(type_id.as_str()) {
            return Err(OpError::new(
                "AlreadyExists",
                format!("mdev {uuid} is active on {ap} with another type"),
            )
            .into());
        }
    }
    m.bouncer
        .authorize(header, definition.method, opts.interactive)
        .await?;
    let start = definition.start;
    let record = MdevRecord {
        parent: parent.to_string(),
        type_id,
        start,
        attrs: definition.attrs,
        rule: None,
        defined: true,
        // gpuvirt makes it (now or when the parent appears), so gpuvirt may remove it.
        created_by_gpuvirt: true,
    };
    let lock = m.lock_now().await?;
    m.run(
        &format!("defining mdev {uuid}"),
        lock,
        Vec::new(),
        Box::new(move |ex| {
            ex.update_ledger(|l| {
                l.mdevs.insert(uuid, record);
            })
            .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            Ok(format!("defined mdev {uuid}"))
        }),
    )
    .await?;
    // An auto definition on a present parent starts at once, as mdevctl's udev rule would.
    if start == MdevStart::Auto {
        m.recreate(|u, _| *u == uuid).await;
    }
    Ok(uuid.hyphenated().to_string())
}

/// `Manager.UndefineMdev(s uuid, a{sv})`: drops the definition; an active mdev stays, as a
/// transient one (mdevctl undefine).
pub async fn undefine_mdev(
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<(), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &[])?;
    let uuid = parse_uuid("uuid", uuid)?;
    let ledger = m.ledger()?;
    let Some(record) = ledger.mdevs.get(&uuid).filter(|r| r.defined) else {
        return Err(OpError::new("NoSuchDevice", format!("no mdev {uuid} is defined")).into());
    };
    m.check_policy(vec![
        ManualSubject::MdevParent(record.parent.clone()),
        ManualSubject::Mdev(uuid),
    ])
    .await?;
    let active = m.inspect(move |inv| inv.mdevs.contains_key(&uuid)).await?;
    m.bouncer
        .authorize(header, "Manager.UndefineMdev", opts.interactive)
        .await?;
    let lock = m.lock_now().await?;
    m.run(
        &format!("undefining mdev {uuid}"),
        lock,
        Vec::new(),
        Box::new(move |ex| {
            ex.update_ledger(|l| {
                if active {
                    if let Some(r) = l.mdevs.get_mut(&uuid) {
                        r.defined = false;
                    }
                } else {
                    l.mdevs.remove(&uuid);
                }
            })
            .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            Ok(format!("undefined mdev {uuid}"))
        }),
    )
    .await?;
    Ok(())
}

/// `Manager.StartMdev(s uuid, a{sv}) -> o mdev`: creates a defined mdev (mdevctl start).
pub async fn start_mdev(
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<OwnedObjectPath, CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &[])?;
    let uuid = parse_uuid("uuid", uuid)?;
    let ledger = m.ledger()?;
    let Some(record) = ledger.mdevs.get(&uuid).filter(|r| r.defined).cloned() else {
        return Err(OpError::new(
            "NoSuchDevice",
            format!("no mdev {uuid} is defined; define it first (DefineMdev)"),
        )
        .into());
    };
    m.check_policy(vec![ManualSubject::MdevParent(record.parent.clone())])
        .await?;
    let (parent, type_id) = (record.parent.clone(), record.type_id.clone());
    let planned = m
        .inspect(move |inv| {
            if inv.mdevs.contains_key(&uuid) {
                return Ok(None);
            }
            shard::plan_create(inv, &parent, &type_id, Some(uuid), 1).map(Some)
        })
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(actions) = planned else {
        return Ok(api::mdev_path(&uuid));
    };
    m.bouncer
        .authorize(header, "Manager.StartMdev", opts.interactive)
        .await?;
    let _in_flight = m.claim(format!("mdev {uuid}"), "start")?;
    let lock = m.lock_now().await?;
    m.run(
        &format!("starting mdev {uuid}"),
        lock,
        mdev_targets(&record.parent, uuid),
        Box::new(move |ex| run_actions(ex, &actions)),
    )
    .await?;
    Ok(api::mdev_path(&uuid))
}

/// `Manager.StopMdev(s uuid, a{sv})`: removes the device, keeps the definition (mdevctl stop).
pub async fn stop_mdev(
    uuid: &str,
    header: &Header<'_>,
    options: HashMap<String, OwnedValue>,
) -> Result<(), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &[])?;
    let uuid = parse_uuid("uuid", uuid)?;
    let active = m.inspect(move |inv| inv.mdevs.contains_key(&uuid)).await?;
    if !active {
        return Ok(());
    }
    stop(m, uuid, opts, header, "Manager.StopMdev").await
}

impl Mutator {
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
        let lock = self.exec_lock.clone().lock_owned().await;
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
    pub async fn recreate_loop(&self, mut parent_added: mpsc::UnboundedReceiver<BTreeSet<String>>) {
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

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

/// `Manager.RenderHostdev(s target, a{sv}) -> (s xml, as args)`: libvirt `<hostdev>` XML and
/// QEMU arguments for a card (any function's PCI address), an NVIDIA per-VF vGPU (its VF's
/// address) or an mdev (its UUID). Option `x-vga` for a card. Reads only: no authorization.
pub async fn render_hostdev(
    target: &str,
    options: HashMap<String, OwnedValue>,
) -> Result<(String, Vec<String>), CallError> {
    let m = mutator()?;
    let opts = parse_options(&options, &["x-vga"])?;
    let target_text = target.trim().to_string();
    let rendered = m
        .inspect(move |inv| {
            let target = if let Ok(uuid) = target_text.parse::<Uuid>() {
                RenderTarget::Mdev(uuid)
            } else if let Ok(address) = target_text.parse::<PciAddress>() {
                let is_vgpu = inv
                    .functions
                    .get(&address)
                    .is_some_and(|f| f.physfn.is_some() && f.nvidia_vgpu.is_some());
                if is_vgpu {
                    RenderTarget::VgpuVf(address)
                } else {
                    RenderTarget::Card(address)
                }
            } else {
                return Err(None);
            };
            render::render(
                inv,
                target,
                &PassthroughOptions {
                    x_vga: opts.x_vga,
                    guest: None,
                },
            )
            .map_err(Some)
        })
        .await?;
    match rendered {
        Ok(r) => Ok((r.libvirt_xml, r.qemu_args)),
        Err(None) => Err(CallError::invalid_arg(
            "target",
            "neither a PCI address nor an mdev UUID",
        )),
        Err(Some(e)) => Err(match e {
            RenderError::NoSuchDevice { .. } | RenderError::NoSuchMdev { .. } => {
                OpError::new("NoSuchDevice", e.to_string())
            }
            _ => OpError::new("NotSupported", e.to_string()),
        }
        .into()),
    }
}

/// Authorizes one of the Manager's policy methods (`ReloadPolicy`, `Reconcile`) with the same
/// default-deny bouncer the device mutators use; the subject is the caller's bus name.
pub async fn authorize_manager(
    header: &Header<'_>,
    method: &str,
    options: &HashMap<String, OwnedValue>,
) -> Result<(), CallError> {
    let interactive = auth::interactive(options)?;
    mutator()?
        .bouncer
        .authorize(header, method, interactive)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn options_parse_and_refuse() {
        let o = parse_options(
            &opts(&[
                ("dry-run", Value::Bool(true)),
                ("auth.no_user_interaction", Value::Bool(true)),
            ]),
            &["dry-run"],
        )
        .unwrap();
        assert!(o.dry_run && !o.interactive && !o.force);
        let e = parse_options(&opts(&[("dry-run", Value::from("yes"))]), &["dry-run"]).unwrap_err();
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(ref m)) if m.contains("dry-run") && m.contains("boolean")),
            "{e}"
        );
        let e = parse_options(&opts(&[("force", Value::Bool(true))]), &["dry-run"]).unwrap_err();
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(ref m)) if m.contains("unknown option 'force'")),
            "{e}"
        );
        let e =
            parse_options(&opts(&[("auth.no_user_interaction", Value::U32(1))]), &[]).unwrap_err();
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(_))),
            "{e}"
        );
    }

    #[test]
    fn error_names() {
        assert_eq!(
            OpError::new("Busy", "x").dbus_name(),
            "org.gpuvirt.GpuVirt1.Error.Busy"
        );
        assert_eq!(
            OpError::new("InvalidArgs", "x").dbus_name(),
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
        let c: CallError = OpError::new("TimedOut", "slow").into();
        assert_eq!(
            zbus::DBusError::name(&c).as_str(),
            "org.gpuvirt.GpuVirt1.Error.TimedOut"
        );
    }

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
