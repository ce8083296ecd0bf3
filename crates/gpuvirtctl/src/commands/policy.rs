//! `gpuvirtctl policy ...`: check, plan, apply and reload the device policy through gpuvirtd's
//! Manager (ValidatePolicy, PlanPolicy, Reconcile, ReloadPolicy). The one thing judged here is
//! `policy check` with no daemon to ask (`--offline`, no bus, nobody owning the name): the file
//! is checked offline by gpuvirt-policy, the daemon's own parser, and a line says that the
//! host-dependent checks were not made. May import: crate::client, crate::errors,
//! gpuvirt_policy.

use std::path::{Path, PathBuf};

use gpuvirt_api as api;

use crate::client::{options, Ctx};
use crate::errors::CliError;

/// The file name the daemon gives diagnostics of a text it validates.
const DAEMON_FILE_NAME: &str = "policy.toml";

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file against the live host (default: the daemon's policy file);
    /// prints compiler-style diagnostics, exits 1 on errors. With no gpuvirtd to ask, checks
    /// offline (syntax, schema, the rules that need no host) and says what was not checked.
    Check {
        /// The policy to check (offline, without it: /etc/gpuvirt/policy.toml).
        file: Option<PathBuf>,
        /// Check offline even where gpuvirtd runs: the same diagnostics, without the
        /// host-dependent checks (for CI and configuration-management `validate` steps).
        #[arg(long)]
        offline: bool,
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

    /// `policy check`'s file and whether `--offline` was given; `None` for the other commands.
    pub fn check_args(&self) -> Option<(Option<&Path>, bool)> {
        match self {
            PolicyCommand::Check { file, offline } => Some((file.as_deref(), *offline)),
            _ => None,
        }
    }
}

/// Why `policy check` goes offline after `e`: no bus to connect to, or nobody owning the name.
/// `None` for every other failure (access denied, a daemon of another version, ...), which
/// stays the error it is.
pub fn offline_reason(e: &CliError) -> Option<String> {
    match e {
        CliError::Connect { bus, reason } => {
            Some(format!("cannot connect to the {bus} ({reason})"))
        }
        CliError::NotRunning { bus } => Some(format!("gpuvirtd is not running on the {bus}")),
        _ => None,
    }
}

/// Where the daemon reads its policy unless told otherwise (gpuvirtd's `--policy`): what an
/// offline `policy check` without FILE checks.
const DEFAULT_POLICY_PATH: &str = "/etc/gpuvirt/policy.toml";

/// Checks `file` (default: [`DEFAULT_POLICY_PATH`]) offline with gpuvirt-policy, the first half
/// of the daemon's own check, and prints what the daemon prints, then one line saying that the
/// host-dependent half was not made and `why`.
pub fn check_offline(file: Option<&Path>, why: &str) -> Result<(), CliError> {
    let file = file.unwrap_or(Path::new(DEFAULT_POLICY_PATH));
    let text = read_policy(file)?;
    let shown = file.display().to_string();
    let (_, diagnostics) = gpuvirt_policy::check(&text, &shown);
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let note = format!(
        "note: checked offline: syntax, schema and host-independent rules only; the \
         host-dependent checks (which GPUs each rule matches, what the host offers) were not \
         made: {why}"
    );
    report(&shown, &rendered, Some(&note))
}

fn read_policy(file: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(file)
        .map_err(|e| CliError::Daemon(format!("cannot read {}: {e}", file.display())))
}

/// Prints rendered diagnostics (each followed by a blank line), then `note`, then the verdict:
/// an error naming the counts when any diagnostic is an error, else `FILE: valid`.
fn report(shown: &str, diagnostics: &[String], note: Option<&str>) -> Result<(), CliError> {
    let mut errors = 0;
    for d in diagnostics {
        if d.lines().next().is_some_and(|l| l.contains(": error: ")) {
            errors += 1;
        }
        outln!("{d}\n")?;
    }
    if let Some(note) = note {
        outln!("{note}")?;
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

/// `policy check`: the full check when gpuvirtd answers, else offline.
async fn check(ctx: &Ctx<'_>, file: Option<&Path>, offline: bool) -> Result<(), CliError> {
    if offline {
        return check_offline(file, "--offline was given");
    }
    match check_online(ctx, file).await {
        Err(e) => match offline_reason(&e) {
            Some(why) => check_offline(file, &why),
            None => Err(e),
        },
        done => done,
    }
}

/// The full check: the daemon validates the text against the live host.
async fn check_online(ctx: &Ctx<'_>, file: Option<&Path>) -> Result<(), CliError> {
    let file = match file {
        Some(f) => f.to_owned(),
        None => {
            let manager = api::ManagerProxy::new(ctx.connection)
                .await
                .map_err(|e| ctx.error(e))?;
            PathBuf::from(manager.policy_path().await.map_err(|e| ctx.error(e))?)
        }
    };
    let text = read_policy(&file)?;
    let diagnostics = ctx
        .manager()
        .await?
        .validate_policy(&text)
        .await
        .map_err(|e| ctx.api_error(e))?;
    let shown = file.display().to_string();
    // The daemon saw only the text; name the file the user gave.
    let diagnostics: Vec<String> = diagnostics
        .into_iter()
        .map(|d| match d.strip_prefix(DAEMON_FILE_NAME) {
            Some(rest) if rest.starts_with(':') => format!("{shown}{rest}"),
            _ => d,
        })
        .collect();
    report(&shown, &diagnostics, None)
}

/// Runs one policy command. Method calls go through `ctx` (which sets the interactive
/// authorization flag); properties are read through a plain proxy.
pub async fn run(ctx: &Ctx<'_>, command: PolicyCommand) -> Result<(), CliError> {
    match command {
        PolicyCommand::Check { file, offline } => check(ctx, file.as_deref(), offline).await,
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
            let mode = api::ManagerProxy::new(ctx.connection)
                .await
                .map_err(|e| ctx.error(e))?
                .enforcement_mode()
                .await
                .map_err(|e| ctx.error(e))?;
            outln!("policy reloaded ({mode} mode)")?;
            Ok(())
        }
    }
}
