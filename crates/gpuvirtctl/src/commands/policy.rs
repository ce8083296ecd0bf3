//! `gpuvirtctl policy ...`: check, plan, apply and reload the device policy through gpuvirtd's
//! Manager (ValidatePolicy, PlanPolicy, Reconcile, ReloadPolicy); nothing is judged locally.
//! May import: crate::client, crate::errors.

use std::path::PathBuf;

use gpuvirt_api as api;

use crate::client::{options, Ctx};
use crate::errors::CliError;

/// The file name the daemon gives diagnostics of a text it validates.
const DAEMON_FILE_NAME: &str = "policy.toml";

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file against the live host (default: the daemon's policy file);
    /// prints compiler-style diagnostics, exits 1 on errors.
    Check {
        /// The policy to check.
        file: Option<PathBuf>,
    },
    /// Show what applying the policy in force would do, with the reason and rule of each step.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Apply the policy now (also in monitor mode) and report what was done.
    Apply,
    /// Re-read the daemon's policy file; an invalid file is rejected and the previous
    /// policy stays in force.
    Reload,
}

impl PolicyCommand {
    /// Whether gpuvirtd asks polkit before doing this (so a password prompt may be needed).
    pub fn needs_authorization(&self) -> bool {
        matches!(self, PolicyCommand::Apply | PolicyCommand::Reload)
    }
}

/// Runs one policy command. Method calls go through `ctx` (which sets the interactive
/// authorization flag); properties are read through a plain proxy.
pub async fn run(ctx: &Ctx<'_>, command: PolicyCommand) -> Result<(), CliError> {
    let call_error = |e: zbus::Error| ctx.error(e);
    let manager = api::ManagerProxy::new(ctx.connection)
        .await
        .map_err(&call_error)?;
    match command {
        PolicyCommand::Check { file } => {
            let file = match file {
                Some(f) => f,
                None => PathBuf::from(manager.policy_path().await.map_err(&call_error)?),
            };
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Daemon(format!("cannot read {}: {e}", file.display())))?;
            let diagnostics = ctx
                .manager()
                .await?
                .validate_policy(&text)
                .await
                .map_err(|e| ctx.api_error(e))?;
            let shown = file.display().to_string();
            let mut errors = 0;
            for d in &diagnostics {
                // The daemon saw only the text; name the file the user gave.
                let d = match d.strip_prefix(DAEMON_FILE_NAME) {
                    Some(rest) if rest.starts_with(':') => format!("{shown}{rest}"),
                    _ => d.clone(),
                };
                if d.lines().next().is_some_and(|l| l.contains(": error: ")) {
                    errors += 1;
                }
                outln!("{d}\n")?;
            }
            let warnings = diagnostics.len() - errors;
            if errors > 0 {
                return Err(CliError::Daemon(format!(
                    "{shown}: {errors} error(s), {warnings} warning(s)"
                )));
            }
            outln!("{shown}: valid ({warnings} warning(s))")?;
            Ok(())
        }
        PolicyCommand::Plan { json } => {
            let (human, json_text) = ctx
                .manager()
                .await?
                .plan_policy(options(&[]))
                .await
                .map_err(|e| ctx.api_error(e))?;
            if json {
                outln!("{json_text}")?;
            } else {
                out!("{human}")?;
            }
            Ok(())
        }
        PolicyCommand::Apply => {
            let (ok, report) = ctx
                .manager()
                .await?
                .reconcile(options(&[]))
                .await
                .map_err(|e| ctx.api_error(e))?;
            out!("{report}")?;
            if ok {
                Ok(())
            } else {
                Err(CliError::Daemon(
                    "applying the policy stopped at the failure above; nothing after it was attempted"
                        .to_owned(),
                ))
            }
        }
        PolicyCommand::Reload => {
            ctx.manager()
                .await?
                .reload_policy(options(&[]))
                .await
                .map_err(|e| ctx.api_error(e))?;
            let mode = manager.enforcement_mode().await.map_err(&call_error)?;
            outln!("policy reloaded ({mode} mode)")?;
            Ok(())
        }
    }
}
