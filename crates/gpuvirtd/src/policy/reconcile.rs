//! Reconciling: plan the policy against the live inventory and, where the trigger and mode
//! allow, apply it in a blocking worker holding the ledger lock; and the triggers that run it
//! (the debounce after events, the retry timer).
//! May import: policy/host.rs, policy/runtime.rs, policy/props.rs, crate::ledger, crate::events.

use std::collections::BTreeSet;

use gpuvirt_core::exec::ApplyReport;
use gpuvirt_core::plan::{plan, Action, Plan};
use gpuvirt_core::policy::Enforcement;
use tokio::time::Instant;

use super::host::PolicyHost;
use super::props::{gpu_facts, publish, record_boot_change};
use super::runtime::{no_policy, PolicyRuntime, Trigger, DEBOUNCE, EXEC_LOCK_WAIT, MAX_PASSES};
use crate::error::{ErrorKind, OpError};
use crate::events::{mdev_targets, Target};

/// Called by the actor after an event-driven update: schedules a debounced re-plan when the
/// events touched a governed device, and serves the verdicts on the GPUs (a card that
/// appeared, or one whose driver a `driver` match reads, gets its `Role` now).
pub async fn after_events(
    host: &mut impl PolicyHost,
    rt: &mut PolicyRuntime,
    targets: &BTreeSet<Target>,
) {
    if rt.concerns(host.inventory(), targets) {
        rt.due = Some(Instant::now() + DEBOUNCE);
    }
    if rt.policy.is_some() {
        let facts = gpu_facts(rt, host.inventory());
        host.set_policy_facts(facts).await;
    }
}

/// Called by the actor when [`PolicyRuntime::due`] has passed.
pub async fn on_due(host: &mut impl PolicyHost, rt: &mut PolicyRuntime) {
    let now = Instant::now();
    let debounced = rt.due.is_some_and(|at| at <= now);
    let retry = rt.retry_at.is_some_and(|at| at <= now);
    if !debounced && !retry {
        // Woken early: sleep again until whichever is due.
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
        publish(host, rt).await;
    } else if let Err(e) = reconcile(host, rt, trigger).await {
        tracing::error!("{e}");
    }
}

/// Plans and, where the trigger and mode allow, applies; updates the properties.
pub(super) async fn reconcile(
    host: &mut impl PolicyHost,
    rt: &mut PolicyRuntime,
    trigger: Trigger,
) -> Result<(bool, String), OpError> {
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
        let mut planned = plan(&policy, host.inventory(), &state);
        if pass == 0 && matches!(trigger, Trigger::Events | Trigger::Retry) && !planned.is_empty() {
            // Events patch the inventory one device at a time: mid-burst it can hold an mdev's
            // removal but not its parent's freed instance. Act on (or report) drift only as a
            // full read of the host shows it, never on a view that is half updated.
            host.rescan().await;
            planned = plan(&policy, host.inventory(), &state);
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
                publish(host, rt).await;
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
            host.defer_refresh(creation_targets(&planned));
            break;
        }
        // Read back what the kernel did before planning again or reporting.
        host.rescan().await;
        if !report.succeeded() {
            success = false;
            rt.record_failure(json, enforce);
            let state = rt.plan_state();
            rt.props.drift = drift_lines(&plan(&policy, host.inventory(), &state));
            break;
        }
        rt.clear_failure();
        if !planned.refusals.is_empty() {
            rt.props.drift = refusal_lines(&planned);
        }
        if pass + 1 == MAX_PASSES {
            let state = rt.plan_state();
            let left = plan(&policy, host.inventory(), &state);
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
    publish(host, rt).await;
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
            Action::CreateMdev { parent, uuid, .. } => mdev_targets(parent, *uuid),
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
async fn execute(rt: &mut PolicyRuntime, p: &Plan) -> Result<ApplyReport, OpError> {
    let lock = rt.door.lock_within(EXEC_LOCK_WAIT).await.ok_or_else(|| {
        OpError::new(
            ErrorKind::Busy,
            format!(
                "a manual operation has held the ownership ledger for more than {} s (a kernel \
                 write that has not returned); run Reconcile once it has finished",
                EXEC_LOCK_WAIT.as_secs()
            ),
        )
    })?;
    let mut executor = match rt.door.open_executor() {
        Ok(executor) => executor,
        Err(e) => {
            tracing::error!(
                "cannot open the ownership ledger: {}",
                gpuvirt_core::error_chain(&e)
            );
            return Err(OpError::new(
                ErrorKind::NotSupported,
                "the executor is not available (the ledger could not be opened); see the daemon's log",
            ));
        }
    };
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
            Err(OpError::failed(format!("the executor failed: {e}")))
        }
    }
}
