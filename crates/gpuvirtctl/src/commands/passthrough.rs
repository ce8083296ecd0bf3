//! `gpuvirtctl passthrough|return ADDR`: Gpu.AssignPassthrough / Gpu.ReturnToHost, then wait for
//! the job. A dry run or a no-op answers with job `/` and the plan only. May import:
//! crate::client, crate::errors, crate::jobwait.

use std::io::Write;

use gpuvirt_api as api;
use zbus::zvariant::OwnedObjectPath;

use crate::client::{options, print_json, Ctx};
use crate::errors::CliError;
use crate::jobwait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Assign,
    Return,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    address: String,
    dry_run: bool,
    plan: String,
    /// `null` when nothing ran (dry run or nothing to do).
    job: Option<jobwait::JobOutcome>,
}

pub async fn run(
    ctx: &Ctx<'_>,
    direction: Direction,
    address: &str,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    // The GPU's own path, so the method is the only call; the lookup only when it is not there.
    let call = |gpu: OwnedObjectPath| async move {
        let gpu = ctx.gpu(gpu.as_str()).await?;
        let opts = options(&[("dry-run", dry_run.then_some(true))]);
        match direction {
            Direction::Assign => gpu.assign_passthrough(opts).await,
            Direction::Return => gpu.return_to_host(opts).await,
        }
        .map_err(|e| ctx.api_error(e))
    };
    let (job, plan) = ctx
        .call_at(
            api::gpu_path_for(address),
            ctx.gpu_by_address(address),
            call,
        )
        .await?;
    let plan = plan.trim_end().to_owned();
    if job.as_str() == "/" {
        if json {
            return print_json(&Report {
                address: address.to_owned(),
                dry_run,
                plan,
                job: None,
            });
        }
        outln!("{plan}")?;
        return Ok(());
    }
    if !json {
        outln!("{plan}")?;
    }
    let show_progress = !json;
    let outcome = jobwait::wait(ctx.connection, job.as_str(), ctx.bus, |p| {
        if show_progress {
            // Progress on stderr: stdout stays the plan and the result.
            let mut err = std::io::stderr();
            let _ = writeln!(err, "  {:>3.0}%", (p * 100.0).clamp(0.0, 100.0));
        }
    })
    .await?;
    if json {
        let success = outcome.success;
        print_json(&Report {
            address: address.to_owned(),
            dry_run,
            plan,
            job: Some(outcome.clone()),
        })?;
        if success {
            return Ok(());
        }
        return outcome.into_result().map(|_| ());
    }
    let message = outcome.into_result()?;
    outln!("{}", finished_text(&message))?;
    Ok(())
}

/// A finished job's message as printed: the daemon already writes one `done: <action>` line
/// per action, so only a line without that prefix gets it (and an empty message reads `done`).
fn finished_text(message: &str) -> String {
    if message.trim().is_empty() {
        return "done".to_owned();
    }
    message
        .lines()
        .map(|line| {
            if line.starts_with("done: ") {
                line.to_owned()
            } else {
                format!("done: {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::finished_text;

    #[test]
    fn a_finished_job_says_done_once_per_action() {
        assert_eq!(
            finished_text("done: bind 0000:01:00 to vfio-pci\ndone: load vfio_pci"),
            "done: bind 0000:01:00 to vfio-pci\ndone: load vfio_pci"
        );
        assert_eq!(
            finished_text("returned 0000:01:00"),
            "done: returned 0000:01:00"
        );
        assert_eq!(finished_text(""), "done");
    }
}
