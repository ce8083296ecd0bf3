//! What the Manager's policy methods ask of the runtime, and answering them on the actor.
//! A change (reload, reconcile) carries the bouncer's [`Grant`]: it cannot be asked for
//! without authorization. May import: policy/host.rs, policy/runtime.rs, policy/load.rs,
//! policy/props.rs, policy/reconcile.rs, crate::auth, crate::error.

use gpuvirt_core::plan::plan;
use tokio::sync::oneshot;

use super::host::PolicyHost;
use super::load::{check, error_text, load, VALIDATE_FILE_NAME};
use super::props::publish;
use super::reconcile::reconcile;
use super::runtime::{no_policy, PolicyRuntime, Trigger};
use crate::auth::{Grant, Method};
use crate::error::{ErrorKind, OpError};

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
        reply: oneshot::Sender<Result<(String, String), OpError>>,
    },
    /// Re-read the policy file; an invalid file keeps the previous policy.
    Reload {
        grant: Grant,
        reply: oneshot::Sender<Result<(), OpError>>,
    },
    /// Plan and apply now: (success, report).
    Reconcile {
        grant: Grant,
        reply: oneshot::Sender<Result<(bool, String), OpError>>,
    },
}

/// Answers one request on the actor; `rt` is `None` when the daemon runs without the policy.
pub async fn answer(host: &mut impl PolicyHost, rt: Option<&mut PolicyRuntime>, request: Request) {
    if let Request::Validate { text, reply } = request {
        let (_, diagnostics) = check(&text, VALIDATE_FILE_NAME, host.inventory());
        let _ = reply.send(diagnostics.iter().map(ToString::to_string).collect());
        return;
    }
    let Some(rt) = rt else {
        let none = || {
            OpError::new(
                ErrorKind::NotSupported,
                "this daemon runs without the device policy",
            )
        };
        match request {
            Request::Validate { .. } => {}
            Request::Plan { reply } => drop(reply.send(Err(none()))),
            Request::Reload { reply, .. } => drop(reply.send(Err(none()))),
            Request::Reconcile { reply, .. } => drop(reply.send(Err(none()))),
        }
        return;
    };
    match request {
        Request::Validate { .. } => {}
        Request::Plan { reply } => {
            let result = match rt.policy.clone() {
                None => Err(no_policy(rt)),
                Some(policy) => {
                    let state = rt.plan_state();
                    let p = plan(&policy, host.inventory(), &state);
                    Ok((p.render(), p.to_json()))
                }
            };
            let _ = reply.send(result);
        }
        Request::Reload { grant, reply } => {
            let result = match grant.allows(Method::ReloadPolicy) {
                Ok(()) => reload(host, rt).await,
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
        Request::Reconcile { grant, reply } => {
            let result = match grant.allows(Method::Reconcile) {
                Ok(()) => reconcile(host, rt, Trigger::User).await,
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        }
    }
}

/// Re-reads the policy file; on success it replaces the policy and is applied.
async fn reload(host: &mut impl PolicyHost, rt: &mut PolicyRuntime) -> Result<(), OpError> {
    let path = rt.path.clone();
    match load(&path, host.inventory()) {
        Ok(policy) => {
            tracing::info!(path = %path.display(), mode = policy.enforcement.as_str(), "policy loaded");
            rt.install(policy);
            publish(host, rt).await;
            match reconcile(host, rt, Trigger::Reload).await {
                Ok(_) => Ok(()),
                // The new policy is in force; a failed apply is reported in its properties.
                Err(e) => {
                    tracing::error!("applying the reloaded policy failed: {e}");
                    Ok(())
                }
            }
        }
        Err(e) => {
            // A missing file is no broken policy: PolicyError stays as it was.
            if e.is_missing() {
                tracing::info!(
                    "policy reload found no policy file at {}; the previous policy (if any) stays in force",
                    path.display()
                );
            } else {
                tracing::error!(
                    "policy reload rejected, the previous policy stays in force: {}",
                    gpuvirt_core::error_chain(&e)
                );
                rt.props.policy_error = error_text(&e);
                publish(host, rt).await;
            }
            Err(OpError::new(
                ErrorKind::PolicyInvalid,
                format!(
                    "{}; the previous policy stays in force",
                    gpuvirt_core::error_chain(&e)
                ),
            ))
        }
    }
}
