//! The device policy's run-time state, owned by the actor: the policy in force, the
//! debounce and retry timers with their backoff, and what the planner needs to know of the
//! ledger and the boot files (`plan_state`).
//!
//! `monitor` mode never acts on its own (start, hotplug, drift are only reported); an
//! explicit `Reconcile` call is a user's decision and applies in either mode.
//! May import: policy/load.rs, crate::tree (the Manager's policy properties), crate::ledger,
//! crate::events, crate::error.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpuvirt_core::plan::{read_boot_files, InitramfsTooling, PlanState};
use gpuvirt_core::policy::{Policy, PolicyOnHost, Role};
use gpuvirt_core::{Inventory, PciAddress};
use tokio::time::Instant;

use super::load::{error_text, load};
use crate::error::{ErrorKind, OpError};
use crate::events::Target;
use crate::ledger::LedgerDoor;
use crate::tree::PolicyProps;

/// Longest wait for a manual operation to release the ledger before an apply gives up (the
/// actor waits meanwhile, so it must stay well below the watchdog's 30 s).
pub(super) const EXEC_LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a burst of events may go quiet before the policy is re-planned.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(200);

/// First wait before an automatic apply that failed is tried again (a transient EIO, a
/// manual operation holding the ledger); it doubles with each failure of the same plan.
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// Longest wait between two tries of a failing apply: a card that keeps failing is not
/// hammered, yet the host still converges once the cause is gone.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Most plan → apply → rescan passes of one reconcile (NVIDIA VFs must exist before their
/// vGPU types can be planned).
pub(super) const MAX_PASSES: usize = 3;

/// Why a reconcile runs: decides whether monitor mode may act and how failures are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
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
    pub(super) path: PathBuf,
    pub(super) policy: Option<Arc<Policy>>,
    /// The ledger and its lock, shared with the mutating API: an executor is opened per
    /// apply under the lock, so what the mutating API recorded meanwhile is never
    /// overwritten by a stale copy.
    pub(super) door: Arc<LedgerDoor>,
    pub(super) props: PolicyProps,
    /// What the Manager serves now (the last properties published through the host).
    pub(super) served: PolicyProps,
    /// When a debounced re-plan is due.
    pub(super) due: Option<Instant>,
    /// The JSON of the last plan whose apply failed: events alone do not run it again (they
    /// would hammer the device at every uevent); the retry timer does.
    pub(super) failed_plan: Option<String>,
    /// How many times in a row the apply failed, for the retry's backoff.
    failures: u32,
    /// When a failed apply is tried again (enforce mode only).
    pub(super) retry_at: Option<Instant>,
    /// Whether the start-up reconcile has run.
    pub(super) started: bool,
}

impl PolicyRuntime {
    /// Loads `path`: an invalid file leaves no policy in force and sets `PolicyError`; a
    /// missing one is "observe only", said once at info level, `PolicyError` empty. A reconcile is scheduled to run at once. Applies open their executor
    /// through `door`, under its lock, the one the mutating API's operations take.
    pub fn start(path: PathBuf, door: Arc<LedgerDoor>, inventory: &Inventory) -> Self {
        let mut rt = PolicyRuntime {
            props: PolicyProps {
                policy_path: path.display().to_string(),
                ..PolicyProps::default()
            },
            path,
            policy: None,
            door,
            served: PolicyProps::default(),
            due: Some(Instant::now()),
            failed_plan: None,
            failures: 0,
            retry_at: None,
            started: false,
        };
        match load(&rt.path, inventory) {
            Ok(policy) => rt.install(policy),
            // Nothing installs a policy: observing is the normal state, not an error.
            Err(e) if e.is_missing() => tracing::info!(
                "no policy file at {}: observing only (gpuvirtd reports the devices and acts \
                 only when asked); install one and reload to have a policy applied",
                rt.path.display()
            ),
            Err(e) => {
                tracing::error!("no policy in force: {}", gpuvirt_core::error_chain(&e));
                rt.props.policy_error = error_text(&e);
            }
        }
        rt.served = rt.props.clone();
        rt
    }

    /// The policy properties as last served.
    pub fn served_props(&self) -> PolicyProps {
        self.served.clone()
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
    pub(super) fn clear_failure(&mut self) {
        self.failed_plan = None;
        self.failures = 0;
        self.retry_at = None;
    }

    /// Records that applying `json` failed and, in enforce mode, when to try again: after
    /// [`RETRY_FIRST`], doubling while the same plan keeps failing, at most [`RETRY_MAX`].
    pub(super) fn record_failure(&mut self, json: String, enforce: bool) {
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

    pub(super) fn install(&mut self, policy: Policy) {
        self.props.enforcement_mode = policy.enforcement.as_str().to_owned();
        self.props.policy_error.clear();
        self.policy = Some(Arc::new(policy));
        self.clear_failure();
    }

    pub(super) fn original_drivers(&self) -> gpuvirt_core::policy::matching::OriginalDrivers {
        self.door.original_drivers()
    }

    pub(super) fn plan_state(&self) -> PlanState {
        let mut state = PlanState::default();
        if let Ok(ledger) = self.door.load() {
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
        state.initramfs_tool = InitramfsTooling::detect(self.door.root());
        match read_boot_files(self.door.root()) {
            Ok(files) => state.boot_files = files,
            Err(e) => tracing::warn!(error = %e, "cannot read gpuvirt's boot files"),
        }
        state
    }

    /// Whether `targets` touch a device the policy governs (with a non-`unmanaged` role).
    pub(super) fn concerns(&self, inv: &Inventory, targets: &BTreeSet<Target>) -> bool {
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
}

/// Why a request that needs a policy cannot be answered.
pub(super) fn no_policy(rt: &PolicyRuntime) -> OpError {
    let why = if rt.props.policy_error.is_empty() {
        String::new()
    } else {
        format!(":\n{}", rt.props.policy_error)
    };
    OpError::new(
        ErrorKind::PolicyInvalid,
        format!("no policy in force ({}){why}", rt.path.display()),
    )
}

/// Sleeps until `due`, forever when there is none (a `select!` branch).
pub async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long to wait before the `failures`th retry of a failing apply.
pub(super) fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}
