//! `gpuvirtctl passthrough|return ADDR`: Gpu.AssignPassthrough / Gpu.ReturnToHost, then wait for
//! the job. A dry run or a no-op answers with job `/` and the plan only.

use std::io::Write;

use gpuvirt_api as api;
use zbus::zvariant::OwnedObjectPath;

use crate::errors::{classify_api, CliError};
use crate::jobwait;
use crate::mutating::{options, print_json, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Assign,
    Return,
}

impl Direction {
    fn method(self) -> &'static str {
        match self {
            Direction::Assign => "AssignPassthrough",
            Direction::Return => "ReturnToHost",
        }
    }
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
    let gpu = api::ManagerProxy::new(ctx.connection)
        .await
        .map_err(|e| ctx.error(e))?
        .get_gpu_by_pci_address(address)
        .await
        .map_err(|e| classify_api(e, ctx.bus))?;
    let opts = options(&[("dry-run", dry_run.then_some(true))]);
    let (job, plan): (OwnedObjectPath, String) = ctx
        .call(
            gpu.as_str(),
            api::GPU_INTERFACE,
            direction.method(),
            &(opts,),
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
    outln!("done: {message}")?;
    Ok(())
}
