//! The device policy at run time: loads and validates the policy file, plans it against the
//! live inventory, applies it through the executor, and keeps it applied (start, reload,
//! hotplug of a governed card, drift), reporting on the Manager's policy properties.
//!
//! Everything here runs on the actor (the one owner of the inventory): D-Bus methods send a
//! [`Request`] with a oneshot reply; executing a plan happens in a blocking worker with the
//! executor moved into it, so sysfs writes never stall the runtime thread. The worker holds
//! the mutating API's [`ExecLock`] (one ledger writer at a time), so a manual operation and
//! a policy apply never save over each other's ledger records.
//!
//! `monitor` mode never acts on its own (start, hotplug, drift are only reported); an
//! explicit `Reconcile` call is a user's decision and applies in either mode.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuvirt_api::{self as api, CallError};
use gpuvirt_core::exec::{ApplyReport, Executor};
use gpuvirt_core::ledger::LedgerStore;
use gpuvirt_core::plan::{
    boot_wants, plan, read_boot_files, Action, InitramfsTooling, Plan, PlanState,
};
use gpuvirt_core::policy::{render_diagnostics, Enforcement, Policy, PolicyDiagnostic, Role};
use gpuvirt_core::reboot::{self, read_boot_id, BootChangeStore, BootChanges, BootWants, Running};
use gpuvirt_core::{Inventory, PciAddress, Root};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use zbus::zvariant::Value;

use crate::actor::Actor;
use crate::events::Target;
use crate::mutate::ExecLock;
use crate::objects::PolicyFacts;

/// The file name diagnostics of `ValidatePolicy` carry (the caller knows the real one).
pub const VALIDATE_FILE_NAME: &str = "policy.toml";

/// Longest wait for a manual operation to release the ledger before an apply gives up (the
/// actor waits meanwhile, so it must stay well below the watchdog's 30 s).
const EXEC_LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a burst of events may go quiet before the policy is re-planned.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// First wait before an automatic apply that failed is tried again (a transient EIO, a
/// manual operation holding the ledger); it doubles with each failure of the same plan.
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// Longest wait between two tries of a failing apply: a card that keeps failing is not
/// hammered, yet the host still converges once the cause is gone.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Most plan → apply → rescan passes of one reconcile (NVIDIA VFs must exist before their
/// vGPU types can be planned).
const MAX_PASSES: usize = 3;

/// Why the policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the policy file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the policy file {} is invalid:\n{}", .0.display(), .1)]
    Invalid(PathBuf, String),
}

/// A manual operation the policy forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} is managed by policy rule {rule:?} (role {role}) of {file}: the policy makes \
     the changes on cards it manages, so manual operations on them are refused; to operate on \
     it by hand, change that rule or give the card role = \"unmanaged\", then reload the policy"
)]
pub struct PolicyViolation {
    pub address: PciAddress,
    pub rule: String,
    pub role: Role,
    /// The policy file, so the way out names the file to edit.
    pub file: String,
}

/// What a manual operation touches; the card behind it is looked up in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualSubject {
    /// Any PCI function of a card (the GPU, a companion function, a VF).
    Pci(PciAddress),
    /// An mdev parent by its `mdev_bus` name (a PCI address for PCI parents).
    MdevParent(String),
    /// An active mdev: its parent's card.
    Mdev(uuid::Uuid),
}

impl ManualSubject {
    /// The PCI function behind the subject; `None` when it is not in the inventory (an
    /// absent parent, a gone mdev, a non-PCI parent): no card, so no rule governs it.
    fn address(&self, inv: &Inventory) -> Option<PciAddress> {
        let parent = |name: &str| {
            inv.mdev_parents
                .get(name)
                .and_then(|p| p.pci_address)
                .or_else(|| name.parse().ok())
        };
        match self {
            ManualSubject::Pci(a) => Some(*a),
            ManualSubject::MdevParent(name) => parent(name),
            ManualSubject::Mdev(u) => inv.mdevs.get(u).and_then(|m| parent(&m.parent)),
        }
    }
}

impl From<PolicyViolation> for CallError {
    fn from(v: PolicyViolation) -> Self {
        CallError::Api(api::Error::PolicyViolation(v.to_string()))
    }
}

/// The Manager's policy properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyProps {
    pub policy_path: String,
    pub policy_error: String,
    pub enforcement_mode: String,
    pub reboot_required: bool,
    pub reboot_reasons: Vec<String>,
    /// How the host differs from the policy while it is not corrected (monitor mode, or a
    /// failed correction).
    pub drift: Vec<String>,
    /// The last apply's report (done / failed / not attempted).
    pub last_apply: String,
}

impl PolicyProps {
    fn changed(&self, new: &Self) -> Vec<(&'static str, Value<'static>)> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($field:ident => $dbus:literal),*) => {$(
                if self.$field != new.$field {
                    out.push(($dbus, Value::from(new.$field.clone())));
                }
            )*};
        }
        cmp!(
            policy_path => "PolicyPath",
            policy_error => "PolicyError",
            enforcement_mode => "EnforcementMode",
            reboot_required => "RebootRequired",
            reboot_reasons => "RebootReasons",
            drift => "Drift",
            last_apply => "LastApply"
        );
        out
    }
}

/// What D-Bus methods ask of the runtime.
#[derive(Debug)]
pub enum Request {
    /// Parse and validate `text` against the live inventory; every diagnostic, rendered.
    Validate {
        text: String,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// The plan for the policy in force: (human, JSON).
    Plan {
        reply: oneshot::Sender<Result<(String, String), CallError>>,
    },
    /// Re-read the policy file; an invalid file keeps the previous policy.
    Reload {
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// Plan and apply now: (success, report).
    Reconcile {
        reply: oneshot::Sender<Result<(bool, String), CallError>>,
    },
    /// May a user operate by hand on the cards behind `subjects`? Refused when the policy
    /// manages one of them (any role but `unmanaged`).
    CheckManual {
        subjects: Vec<ManualSubject>,
        reply: oneshot::Sender<Result<(), PolicyViolation>>,
    },
}

/// Why a reconcile runs: decides whether monitor mode may act and how failures are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Start,
    Reload,
    /// Events touched a governed device (hotplug, drift).
    Events,
    /// The retry timer of an automatic apply that failed.
    Retry,
    /// A user asked (`Reconcile`).
    User,
}

/// The policy runtime's state, owned by the actor.
#[derive(Debug)]
pub struct PolicyRuntime {
    path: PathBuf,
    root: Root,
    policy: Option<Arc<Policy>>,
    /// The ledger's directory: an executor is opened per apply, so what the mutating API
    /// recorded meanwhile is never overwritten by a stale copy.
    state_dir: PathBuf,
    /// Shared with the mutating API: held while an apply writes the ledger.
    exec_lock: ExecLock,
    props: PolicyProps,
    /// What the Manager serves. Not the interface's own field: a policy method call holds
    /// the interface for its whole duration, so writing through it would deadlock.
    served: watch::Sender<PolicyProps>,
    /// When a debounced re-plan is due.
    due: Option<Instant>,
    /// The JSON of the last plan whose apply failed: events alone do not run it again (they
    /// would hammer the device at every uevent); the retry timer does.
    failed_plan: Option<String>,
    /// How many times in a row the apply failed, for the retry's backoff.
    failures: u32,
    /// When a failed apply is tried again (enforce mode only).
    retry_at: Option<Instant>,
    /// Whether the start-up reconcile has run.
    started: bool,
}

impl PolicyRuntime {
    /// Loads `path` (an invalid or missing file leaves no policy in force and sets
    /// `PolicyError`) and opens the executor with the ledger in `state_dir`, finishing what
    /// a killed daemon left half done. A reconcile is scheduled to run at once. Applies take
    /// `exec_lock`, the one the mutating API's operations take.
    pub fn start(
        path: PathBuf,
        root: Root,
        state_dir: &Path,
        inventory: &Inventory,
        exec_lock: ExecLock,
    ) -> Self {
        let mut rt = PolicyRuntime {
            props: PolicyProps {
                policy_path: path.display().to_string(),
                ..PolicyProps::default()
            },
            path,
            root,
            policy: None,
            state_dir: state_dir.to_owned(),
            exec_lock,
            served: watch::channel(PolicyProps::default()).0,
            due: Some(Instant::now()),
            failed_plan: None,
            failures: 0,
            retry_at: None,
            started: false,
        };
        match load(&rt.path, inventory) {
            Ok(policy) => rt.install(policy),
            Err(e) => {
                tracing::error!("no policy in force: {}", gpuvirt_core::error_chain(&e));
                rt.props.policy_error = error_text(&e);
            }
        }
        rt.served.send_replace(rt.props.clone());
        rt
    }

    /// The properties the Manager serves, kept current.
    pub fn subscribe(&self) -> watch::Receiver<PolicyProps> {
        self.served.subscribe()
    }

    /// When the debounced re-plan or the retry of a failed apply is due (the actor sleeps
    /// until then).
    pub fn due(&self) -> Option<Instant> {
        match (self.due, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets a failed apply: the host matches, or a new policy replaced the one that failed.
    fn clear_failure(&mut self) {
        self.failed_plan = None;
        self.failures = 0;
        self.retry_at = None;
    }

    /// Records that applying `json` failed and, in enforce mode, when to try again: after
    /// [`RETRY_FIRST`], doubling while the same plan keeps failing, at most [`RETRY_MAX`].
    fn record_failure(&mut self, json: String, enforce: bool) {
        let same = self.failed_plan.as_deref() == Some(json.as_str());
        self.failures = if same {
            self.failures.saturating_add(1)
        } else {
            1
        };
        self.failed_plan = Some(json);
        self.retry_at = enforce.then(|| Instant::now() + retry_delay(self.failures));
        if let Some(at) = self.retry_at {
            tracing::info!(
                failures = self.failures,
                "applying the policy failed; trying again in {:?}",
                at.saturating_duration_since(Instant::now())
            );
        }
    }

    fn install(&mut self, policy: Policy) {
        self.props.enforcement_mode = policy.enforcement.as_str().to_owned();
        self.props.policy_error.clear();
        self.policy = Some(Arc::new(policy));
        self.clear_failure();
    }

    fn open_executor(&self) -> Option<Executor> {
        match Executor::open(self.root.clone(), LedgerStore::new(&self.state_dir)) {
            Ok((executor, warning)) => {
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                Some(executor)
            }
            Err(e) => {
                tracing::error!(
                    "cannot open the ownership ledger: {}",
                    gpuvirt_core::error_chain(&e)
                );
                None
            }
        }
    }

    fn original_drivers(&self) -> gpuvirt_core::policy::matching::OriginalDrivers {
        LedgerStore::new(&self.state_dir)
            .load()
            .map(|l| l.original_drivers())
            .unwrap_or_default()
    }

    fn plan_state(&self) -> PlanState {
        let mut state = PlanState::default();
        if let Ok(ledger) = LedgerStore::new(&self.state_dir).load() {
            let ledger = &ledger;
            state.original_drivers = ledger.original_drivers();
            state.owned_mdevs = ledger
                .mdevs
                .iter()
                .filter(|(_, r)| r.created_by_gpuvirt)
                .map(|(u, _)| *u)
                .collect();
            state.owned_vgpu_vfs = ledger.vgpus.keys().copied().collect();
            state.owned_sriov = ledger.sriov.keys().copied().collect();
        }
        state.initramfs_tool = InitramfsTooling::detect(&self.root);
        match read_boot_files(&self.root) {
            Ok(files) => state.boot_files = files,
            Err(e) => tracing::warn!(error = %e, "cannot read gpuvirt's boot files"),
        }
        state
    }

    /// Whether `targets` touch a device the policy governs (with a non-`unmanaged` role).
    fn concerns(&self, inv: &Inventory, targets: &BTreeSet<Target>) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let originals = self.original_drivers();
        let governed = |addr: PciAddress| {
            policy
                .assignment_for(inv, &originals, addr)
                .is_some_and(|a| a.role != Role::Unmanaged)
        };
        targets.iter().any(|t| match t {
            Target::All | Target::Modules => true,
            Target::Pci(a) => governed(*a),
            Target::MdevParent(name) | Target::MdevInstances(name) => inv
                .mdev_parents
                .get(name)
                .and_then(|p| p.pci_address)
                .is_none_or(governed),
            // A removed mdev is gone from the inventory: re-plan to be safe.
            Target::Mdev(u) => inv
                .mdevs
                .get(u)
                .and_then(|m| inv.mdev_parents.get(&m.parent))
                .and_then(|p| p.pci_address)
                .is_none_or(governed),
            Target::IommuGroup(_) => false,
        })
    }

    /// Refuses a manual operation on `address` when the policy manages it (any role but
    /// `unmanaged`); see [`check_manual`].
    pub fn check_manual(
        &self,
        inv: &Inventory,
        address: PciAddress,
    ) -> Result<(), PolicyViolation> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let originals = self.original_drivers();
        match policy.assignment_for(inv, &originals, address) {
            Some(a) if a.role != Role::Unmanaged => Err(PolicyViolation {
                address,
                rule: a
                    .rule_name
                    .unwrap_or_else(|| format!("default_role = \"{}\"", a.role)),
                role: a.role,
                file: self.path.display().to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// Refuses a manual D-Bus operation on `address` (a GPU, a companion function, a VF or an
/// mdev parent's PCI address) when the policy manages the card, naming the rule.
pub fn check_manual(
    state: &PolicyRuntime,
    inv: &Inventory,
    address: PciAddress,
) -> Result<(), PolicyViolation> {
    state.check_manual(inv, address)
}

/// [`check_manual`] for every subject a mutating method touches; with no runtime (the daemon
/// runs without the policy) everything is allowed.
pub fn check_manual_subjects(
    state: Option<&PolicyRuntime>,
    inv: &Inventory,
    subjects: &[ManualSubject],
) -> Result<(), PolicyViolation> {
    let Some(state) = state else {
        return Ok(());
    };
    for address in subjects.iter().filter_map(|s| s.address(inv)) {
        check_manual(state, inv, address)?;
    }
    Ok(())
}

fn error_text(e: &LoadError) -> String {
    match e {
        LoadError::Invalid(_, diagnostics) => diagnostics.clone(),
        LoadError::Read(..) => gpuvirt_core::error_chain(e),
    }
}

/// Reads, parses and validates the policy at `path` against `inv`.
pub fn load(path: &Path, inv: &Inventory) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read(path.to_owned(), e))?;
    let file = path.display().to_string();
    let (policy, diagnostics) = check(&text, &file, inv);
    match policy {
        Some(p) => {
            for d in &diagnostics {
                tracing::warn!("{d}");
            }
            Ok(p)
        }
        None => Err(LoadError::Invalid(
            path.to_owned(),
            render_diagnostics(&diagnostics),
        )),
    }
}

/// Parses and validates `text`: the policy when it has no errors, and every diagnostic.
/// `gpuvirtctl policy check` and `ValidatePolicy` both end here.
pub fn check(text: &str, file: &str, inv: &Inventory) -> (Option<Policy>, Vec<PolicyDiagnostic>) {
    match Policy::parse(text, file) {
        Err(diagnostics) => (None, diagnostics),
        Ok(policy) => {
            let mut diagnostics = policy.warnings.clone();
            diagnostics.extend(policy.validate_against(inv));
            if diagnostics.iter().any(PolicyDiagnostic::is_error) {
                (None, diagnostics)
            } else {
                (Some(policy), diagnostics)
            }
        }
    }
}

/// Handles one request on the actor.
pub async fn handle(actor: &mut Actor, request: Request) {
    if let Request::Validate { text, reply } = request {
        let (_, diagnostics) = check(&text, VALIDATE_FILE_NAME, actor.inventory());
        let _ = reply.send(diagnostics.iter().map(ToString::to_string).collect());
        return;
    }
    if let Request::CheckManual { subjects, reply } = request {
        let verdict = check_manual_subjects(actor.policy.as_ref(), actor.inventory(), &subjects);
        let _ = reply.send(verdict);
        return;
    }
    // Taken out while it works so the actor can rescan meanwhile; always put back.
    let Some(mut rt) = actor.policy.take() else {
        let none = || {
            CallError::Api(api::Error::NotSupported(
                "this daemon runs without the device policy".to_owned(),
            ))
        };
        match request {
            Request::Validate { .. } | Request::CheckManual { .. } => {}
            Request::Plan { reply } => drop(reply.send(Err(none()))),
            Request::Reload { reply } => drop(reply.send(Err(none()))),
            Request::Reconcile { reply } => drop(reply.send(Err(none()))),
        }
        return;
    };
    match request {
        Request::Validate { .. } | Request::CheckManual { .. } => {}
        Request::Plan { reply } => {
            let result = match rt.policy.clone() {
                None => Err(no_policy(&rt)),
                Some(policy) => {
                    let state = rt.plan_state();
                    let p = plan(&policy, actor.inventory(), &state);
                    Ok((p.render(), p.to_json()))
                }
            };
            let _ = reply.send(result);
        }
        Request::Reload { reply } => {
            let result = reload(actor, &mut rt).await;
            let _ = reply.send(result);
        }
        Request::Reconcile { reply } => {
            let result = reconcile(actor, &mut rt, Trigger::User).await;
            let _ = reply.send(result);
        }
    }
    actor.policy = Some(rt);
}

fn no_policy(rt: &PolicyRuntime) -> CallError {
    let why = if rt.props.policy_error.is_empty() {
        String::new()
    } else {
        format!(":\n{}", rt.props.policy_error)
    };
    CallError::Api(api::Error::PolicyInvalid(format!(
        "no policy in force ({}){why}",
        rt.path.display()
    )))
}

/// Re-reads the policy file; on success it replaces the policy and is applied.
pub async fn reload(actor: &mut Actor, rt: &mut PolicyRuntime) -> Result<(), CallError> {
    let path = rt.path.clone();
    match load(&path, actor.inventory()) {
        Ok(policy) => {
            tracing::info!(path = %path.display(), mode = policy.enforcement.as_str(), "policy loaded");
            rt.install(policy);
            publish(actor, rt).await;
            match reconcile(actor, rt, Trigger::Reload).await {
                Ok(_) => Ok(()),
                // The new policy is in force; a failed apply is reported in its properties.
                Err(e) => {
                    tracing::error!("applying the reloaded policy failed: {e}");
                    Ok(())
                }
            }
        }
        Err(e) => {
            let text = error_text(&e);
            tracing::error!(
                "policy reload rejected, the previous policy stays in force: {}",
                gpuvirt_core::error_chain(&e)
            );
            rt.props.policy_error = text.clone();
            publish(actor, rt).await;
            Err(CallError::Api(api::Error::PolicyInvalid(format!(
                "{}; the previous policy stays in force",
                gpuvirt_core::error_chain(&e)
            ))))
        }
    }
}

/// Called by the actor after an event-driven update: schedules a debounced re-plan when the
/// events touched a governed device, and serves the verdicts on the GPUs (a card that
/// appeared, or one whose driver a `driver` match reads, gets its `Role` now).
pub async fn after_events(actor: &mut Actor, targets: &BTreeSet<Target>) {
    let inv = actor.inventory();
    let mut facts = None;
    if let Some(rt) = &actor.policy {
        if rt.concerns(inv, targets) {
            let due = Instant::now() + DEBOUNCE;
            if let Some(rt) = &mut actor.policy {
                rt.due = Some(due);
            }
        }
    }
    if let Some(rt) = &actor.policy {
        if rt.policy.is_some() {
            facts = Some(gpu_facts(rt, actor.inventory()));
        }
    }
    if let Some(facts) = facts {
        actor.set_policy_facts(facts).await;
    }
}

/// The policy's verdict on every GPU of `inv` (a VF follows its PF); empty with no policy
/// in force, so the GPUs' `Role` and `PolicyRule` read "".
fn gpu_facts(rt: &PolicyRuntime, inv: &Inventory) -> BTreeMap<PciAddress, PolicyFacts> {
    let Some(policy) = &rt.policy else {
        return BTreeMap::new();
    };
    let originals = rt.original_drivers();
    inv.gpus
        .keys()
        .filter_map(|&address| {
            let a = policy.assignment_for(inv, &originals, address)?;
            Some((
                address,
                PolicyFacts {
                    role: a.role.as_str().to_owned(),
                    rule: a.rule_name.unwrap_or_default(),
                },
            ))
        })
        .collect()
}

/// Sleeps until `due`, forever when there is none (a `select!` branch).
pub async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Called by the actor when [`PolicyRuntime::due`] has passed.
pub async fn on_due(actor: &mut Actor) {
    let Some(mut rt) = actor.policy.take() else {
        return;
    };
    let now = Instant::now();
    let debounced = rt.due.is_some_and(|at| at <= now);
    let retry = rt.retry_at.is_some_and(|at| at <= now);
    if !debounced && !retry {
        // Woken early: sleep again until whichever is due.
        actor.policy = Some(rt);
        return;
    }
    if debounced {
        rt.due = None;
    }
    if retry {
        rt.retry_at = None;
    }
    let trigger = if !rt.started {
        Trigger::Start
    } else if retry {
        Trigger::Retry
    } else {
        Trigger::Events
    };
    rt.started = true;
    if rt.policy.is_none() {
        publish(actor, &mut rt).await;
    } else if let Err(e) = reconcile(actor, &mut rt, trigger).await {
        tracing::error!("{e}");
    }
    actor.policy = Some(rt);
}

/// Plans and, where the trigger and mode allow, applies; updates the properties.
async fn reconcile(
    actor: &mut Actor,
    rt: &mut PolicyRuntime,
    trigger: Trigger,
) -> Result<(bool, String), CallError> {
    let Some(policy) = rt.policy.clone() else {
        return Err(no_policy(rt));
    };
    let enforce = policy.enforcement == Enforcement::Enforce;
    let may_act = trigger == Trigger::User || enforce;
    let mut report_text = String::new();
    let mut success = true;
    let mut applied_any = false;
    for pass in 0..MAX_PASSES {
        let state = rt.plan_state();
        let mut planned = plan(&policy, actor.inventory(), &state);
        if pass == 0 && matches!(trigger, Trigger::Events | Trigger::Retry) && !planned.is_empty() {
            // Events patch the inventory one device at a time: mid-burst it can hold an mdev's
            // removal but not its parent's freed instance. Act on (or report) drift only as a
            // full read of the host shows it, never on a view that is half updated.
            actor.rescan().await;
            planned = plan(&policy, actor.inventory(), &state);
        }
        if planned.actions.is_empty() {
            if pass == 0 {
                report_text.push_str(&planned.render());
            }
            rt.props.drift = refusal_lines(&planned);
            rt.clear_failure();
            break;
        }
        let json = planned.to_json();
        if !may_act {
            let drift = drift_lines(&planned);
            if drift != rt.props.drift {
                for line in &drift {
                    tracing::warn!(mode = "monitor", "host differs from the policy: {line}");
                }
            }
            rt.props.drift = drift;
            report_text.push_str(&planned.render());
            break;
        }
        if trigger == Trigger::Events && rt.failed_plan.as_deref() == Some(json.as_str()) {
            // The same correction failed before: report it; the retry timer (not every
            // uevent) runs it again.
            rt.props.drift = drift_lines(&planned);
            break;
        }
        if matches!(trigger, Trigger::Events | Trigger::Retry) && pass == 0 {
            for a in &planned.actions {
                tracing::warn!(rule = ?a.rule, "drift: {} ({}); correcting", a.action, a.reason);
            }
        }
        let report = match execute(rt, &planned).await {
            Ok(report) => report,
            Err(e) => {
                // Not run at all (the ledger busy or unreadable): the host still differs,
                // and nothing but the retry timer would ask again.
                rt.record_failure(json, enforce);
                rt.props.drift = drift_lines(&planned);
                publish(actor, rt).await;
                return Err(e);
            }
        };
        applied_any = true;
        log_report(&report, trigger);
        for a in &report.done {
            if planned
                .actions
                .iter()
                .any(|p| p.action.takes_effect_at_boot() && p.action.to_string() == a.action)
            {
                record_boot_change(rt, a.action.clone());
            }
        }
        report_text.push_str(&report.to_string());
        if report.succeeded() && creations_only(&planned) {
            // Every creation was written and listed by the kernel, and creating mdevs
            // enables no further action: the apply converged. The read-back of the parents
            // and the new mdevs runs right after this reply, not before it.
            rt.clear_failure();
            rt.props.drift.clear();
            actor.defer_refresh(creation_targets(&planned));
            break;
        }
        // Read back what the kernel did before planning again or reporting.
        actor.rescan().await;
        if !report.succeeded() {
            success = false;
            rt.record_failure(json, enforce);
            let state = rt.plan_state();
            rt.props.drift = drift_lines(&plan(&policy, actor.inventory(), &state));
            break;
        }
        rt.clear_failure();
        if !planned.refusals.is_empty() {
            rt.props.drift = refusal_lines(&planned);
        }
        if pass + 1 == MAX_PASSES {
            let state = rt.plan_state();
            let left = plan(&policy, actor.inventory(), &state);
            if !left.actions.is_empty() {
                // Every action succeeded, yet the host does not match: applying again at
                // each of the apply's own uevents would never end. Report it and leave it
                // to the retry timer's backoff.
                tracing::warn!(
                    "the host still differs from the policy after {MAX_PASSES} applies; \
                     trying again later"
                );
                success = false;
                rt.record_failure(left.to_json(), enforce);
            }
            rt.props.drift = drift_lines(&left);
        }
    }
    if applied_any {
        rt.props.last_apply = report_text.clone();
    }
    publish(actor, rt).await;
    Ok((success, report_text))
}

/// A plan of mdev creations only, with nothing refused and nothing left to plan later.
fn creations_only(p: &Plan) -> bool {
    p.refusals.is_empty()
        && p.notes.is_empty()
        && p.actions
            .iter()
            .all(|a| matches!(a.action, Action::CreateMdev { .. }))
}

/// What a plan of creations changed: each parent's instance counts and each new mdev.
fn creation_targets(p: &Plan) -> BTreeSet<Target> {
    p.actions
        .iter()
        .flat_map(|a| match &a.action {
            Action::CreateMdev { parent, uuid, .. } => crate::mutate::mdev_targets(parent, *uuid),
            _ => Vec::new(),
        })
        .collect()
}

fn drift_lines(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            let rule = a
                .rule
                .as_deref()
                .map_or("[host]".to_owned(), |r| format!("rule {r:?}"));
            format!("{} ({}; {rule})", a.action, a.reason)
        })
        .chain(refusal_lines(p))
        .collect()
}

/// How long to wait before the `failures`th retry of a failing apply.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

fn refusal_lines(p: &Plan) -> Vec<String> {
    p.refusals
        .iter()
        .map(|r| format!("refused: {}: {}", r.gpu, r.message))
        .collect()
}

fn log_report(report: &ApplyReport, trigger: Trigger) {
    for a in &report.done {
        tracing::info!(rule = ?a.rule, "applied: {}", a.action);
    }
    if let Some(f) = &report.failed {
        if trigger == Trigger::User {
            tracing::error!(rule = ?f.rule, "{f}");
        } else {
            tracing::warn!(rule = ?f.rule, "{f}");
        }
        for n in &report.not_attempted {
            tracing::warn!("not attempted: {n}");
        }
    }
}

/// Runs `p` in a blocking worker holding the ledger lock, with an executor opened under it
/// (so it starts from what the last writer saved).
async fn execute(rt: &mut PolicyRuntime, p: &Plan) -> Result<ApplyReport, CallError> {
    let lock = tokio::time::timeout(EXEC_LOCK_WAIT, rt.exec_lock.clone().lock_owned())
        .await
        .map_err(|_| {
            CallError::Api(api::Error::Busy(format!(
                "a manual operation has held the ownership ledger for more than {} s (a kernel \
                 write that has not returned); run Reconcile once it has finished",
                EXEC_LOCK_WAIT.as_secs()
            )))
        })?;
    let mut executor = rt.open_executor().ok_or_else(|| {
        CallError::Api(api::Error::NotSupported(
            "the executor is not available (the ledger could not be opened); see the daemon's log"
                .to_owned(),
        ))
    })?;
    let p = p.clone();
    match tokio::task::spawn_blocking(move || {
        // Held until the kernel returns, even if this task stopped waiting.
        let _lock = lock;
        executor.execute(&p)
    })
    .await
    {
        Ok(report) => Ok(report),
        Err(e) => {
            // A panicking executor: its ledger on disk is the truth; the next apply reopens it.
            tracing::error!(error = %e, "the executor failed");
            Err(CallError::Fdo(zbus::fdo::Error::Failed(format!(
                "the executor failed: {e}"
            ))))
        }
    }
}

/// Recomputes the reboot reasons and serves the properties (the Manager's and the GPUs'
/// `Role`/`PolicyRule`), emitting what changed.
pub async fn publish(actor: &mut Actor, rt: &mut PolicyRuntime) {
    actor
        .set_policy_facts(gpu_facts(rt, actor.inventory()))
        .await;
    let reasons = reboot_reasons(rt, actor.inventory());
    rt.props.reboot_required = !reasons.is_empty();
    rt.props.reboot_reasons = reasons;
    let new = rt.props.clone();
    let server = actor.server();
    let iface = match server
        .interface::<_, crate::dbus::ManagerInterface>(api::MANAGER_PATH)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the Manager object");
            return;
        }
    };
    let old = rt.served.send_replace(new.clone());
    let changed = old.changed(&new);
    if changed.is_empty() {
        return;
    }
    let map: HashMap<&str, Value<'_>> = changed.into_iter().collect();
    if let Err(e) = zbus::fdo::Properties::properties_changed(
        iface.signal_emitter(),
        <crate::dbus::ManagerInterface as zbus::object_server::Interface>::name(),
        map,
        Cow::Borrowed(&[]),
    )
    .await
    {
        tracing::error!(error = %e, "cannot announce the policy properties");
    }
}

/// Why the running system differs from what the policy wants at boot (see
/// [`gpuvirt_core::reboot`]): boot files changed during this boot (recorded in the state dir
/// under the boot id, so a daemon restart keeps them and a reboot forgets them), blacklisted
/// modules still loaded, early passthrough slots not on vfio-pci, and an IOMMU the policy
/// needs that is off.
fn reboot_reasons(rt: &PolicyRuntime, inv: &Inventory) -> Vec<String> {
    let record = BootChangeStore::new(&rt.state_dir)
        .load()
        .unwrap_or_else(|e| {
            tracing::warn!("{}", gpuvirt_core::error_chain(&e));
            BootChanges::default()
        });
    let boot_id = read_boot_id(&rt.root);
    let wants = match &rt.policy {
        Some(policy) => boot_wants(policy, inv, &rt.original_drivers()),
        None => BootWants::default(),
    };
    reboot::reboot_reasons(
        record.pending(boot_id.as_deref()),
        &wants,
        &Running::read(&rt.root, inv),
    )
}

/// Records a boot-time change under the running boot's id, so it stays a reboot reason
/// across daemon restarts until the host has rebooted.
fn record_boot_change(rt: &PolicyRuntime, change: String) {
    let store = BootChangeStore::new(&rt.state_dir);
    let mut record = store.load().unwrap_or_else(|e| {
        tracing::warn!(
            "starting a new boot-change record: {}",
            gpuvirt_core::error_chain(&e)
        );
        BootChanges::default()
    });
    // No boot id (an unusual kernel): recorded under "", which stays pending until one exists.
    record.record(&read_boot_id(&rt.root).unwrap_or_default(), change);
    if let Err(e) = store.save(&record) {
        tracing::error!("{}", gpuvirt_core::error_chain(&e));
    }
}

/// The Manager methods' side: argument checks, then a request to the actor.
pub mod dbus {
    use std::collections::HashMap;

    use gpuvirt_api::CallError;
    use tokio::sync::{mpsc, oneshot};
    use zbus::zvariant::OwnedValue;

    use super::Request;
    use crate::actor::Command;

    /// Biggest policy text `ValidatePolicy` accepts: real policies are a few kilobytes.
    const MAX_POLICY_BYTES: usize = 1 << 20;

    fn gone() -> CallError {
        CallError::Fdo(zbus::fdo::Error::Failed(
            "the daemon is shutting down".to_owned(),
        ))
    }

    async fn ask<T>(
        commands: &mpsc::Sender<Command>,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Policy(make(tx)))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn validate(
        commands: &mpsc::Sender<Command>,
        toml: &str,
    ) -> Result<Vec<String>, CallError> {
        if toml.len() > MAX_POLICY_BYTES {
            return Err(CallError::invalid_arg(
                "toml",
                format!(
                    "{} bytes is more than the {MAX_POLICY_BYTES} a policy may have",
                    toml.len()
                ),
            ));
        }
        let text = toml.to_owned();
        ask(commands, |reply| Request::Validate { text, reply }).await
    }

    pub async fn plan(
        commands: &mpsc::Sender<Command>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, String), CallError> {
        crate::dbus::no_options("PlanPolicy", &options)?;
        ask(commands, |reply| Request::Plan { reply }).await?
    }

    pub async fn reload(
        commands: &mpsc::Sender<Command>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), CallError> {
        crate::dbus::no_options("ReloadPolicy", &options)?;
        ask(commands, |reply| Request::Reload { reply }).await?
    }

    /// `Manager.Reconcile`: synchronous on purpose, unlike AssignPassthrough's Job. Its
    /// reply is the apply's report (done / failed / not attempted), which a Job's `Finished`
    /// would only repeat; the apply already serialises with every mutator on the ledger lock
    /// (waiting at most 10 s, then `Busy`); and `gpuvirtctl policy apply` prints the
    /// (success, report) pair it returns.
    pub async fn reconcile(
        commands: &mpsc::Sender<Command>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(bool, String), CallError> {
        crate::dbus::no_options("Reconcile", &options)?;
        ask(commands, |reply| Request::Reconcile { reply }).await?
    }
}
