//! `gpuvirtctl policy ...`: check, plan, apply and reload the device policy through gpuvirtd's
//! Manager (ValidatePolicy, PlanPolicy, Reconcile, ReloadPolicy); nothing is judged locally.

use std::collections::HashMap;
use std::path::PathBuf;

use gpuvirt_api as api;
use zbus::zvariant::OwnedValue;

use crate::errors::CliError;
use crate::mutating::Ctx;

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

fn options() -> HashMap<String, OwnedValue> {
    HashMap::new()
}

/// Runs one policy command. Method calls go through `ctx` (which sets the interactive
/// authorization flag); properties are read through a plain proxy.
pub async fn run(ctx: &Ctx<'_>, command: PolicyCommand) -> Result<(), CliError> {
    let call_error = |e: zbus::Error| ctx.error(e);
    let manager = zbus::Proxy::new(
        ctx.connection,
        api::BUS_NAME,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
    )
    .await
    .map_err(&call_error)?;
    match command {
        PolicyCommand::Check { file } => {
            let file = match file {
                Some(f) => f,
                None => PathBuf::from(
                    manager
                        .get_property::<String>("PolicyPath")
                        .await
                        .map_err(&call_error)?,
                ),
            };
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Daemon(format!("cannot read {}: {e}", file.display())))?;
            let diagnostics: Vec<String> = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "ValidatePolicy",
                    &(text.as_str(),),
                )
                .await?;
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
            let (human, json_text): (String, String) = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "PlanPolicy",
                    &(options(),),
                )
                .await?;
            if json {
                outln!("{json_text}")?;
            } else {
                out!("{human}")?;
            }
            Ok(())
        }
        PolicyCommand::Apply => {
            let (ok, report): (bool, String) = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "Reconcile",
                    &(options(),),
                )
                .await?;
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
            let () = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "ReloadPolicy",
                    &(options(),),
                )
                .await?;
            let mode: String = manager
                .get_property("EnforcementMode")
                .await
                .map_err(&call_error)?;
            outln!("policy reloaded ({mode} mode)")?;
            Ok(())
        }
    }
}
