//! gpuvirt-libvirt-hook: a hook for libvirt's QEMU driver (`/etc/libvirt/hooks/qemu.d/`),
//! a thin D-Bus client of gpuvirtd. This file reads the command line libvirt gives
//! (`<domain> <operation> <sub-operation> <extra>`, the domain XML on stdin), sets the one
//! deadline and dispatches. May import: crate::lifecycle, crate::bus, crate::domain,
//! crate::record, crate::error.
//!
//! It never writes to stdout: at `restore begin` and `migrate begin` libvirt takes the hook's
//! stdout as the domain XML to use, and empty output means "unchanged".

mod bus;
mod domain;
mod error;
mod lifecycle;
mod record;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use crate::bus::Daemon;
use crate::error::HookError;
use crate::lifecycle::say;

/// libvirt QEMU hook: starts the defined vGPUs and assigns the on-demand cards a domain's
/// <hostdev>s name when it starts, and undoes that when it stops.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gpuvirtd's bus (default: DBUS_SYSTEM_BUS_ADDRESS if set, else the system bus).
    #[arg(long, value_name = "ADDR", env = "GPUVIRT_HOOK_BUS_ADDRESS")]
    bus_address: Option<String>,
    /// Where the hook records what it did per domain.
    #[arg(long, value_name = "DIR", env = "GPUVIRT_HOOK_STATE_DIR",
          default_value = record::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The most seconds one run may take, every bus call and job wait together.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "GPUVIRT_HOOK_TIMEOUT",
        default_value_t = 30.0
    )]
    timeout: f64,
    /// The domain's name.
    domain: String,
    /// libvirt's operation: prepare, start, started, stopped, release, migrate, restore, ...
    operation: String,
    /// begin or end (`-` when none).
    sub_operation: String,
    /// libvirt's extra argument (`-` when none).
    #[arg(default_value = "-")]
    extra: String,
}

/// What the hook does at an operation.
enum Act {
    Prepare,
    Release,
    Nothing,
}

fn act(operation: &str, sub_operation: &str) -> Act {
    match (operation, sub_operation) {
        // An incoming migration and a restore start the domain on this host as `prepare`
        // does (libvirt runs no `prepare` hook for them).
        ("prepare" | "restore" | "migrate", "begin") => Act::Prepare,
        // After libvirt has released the domain's resources (its managed hostdevs included).
        ("release", "end") => Act::Release,
        _ => Act::Nothing,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Read all of stdin whatever the operation, so libvirt's write never meets a closed pipe.
    let mut xml = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut xml) {
        say(
            &args.domain,
            &format!("cannot read the domain XML from stdin: {e}"),
        );
        return ExitCode::FAILURE;
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        say(
            &args.domain,
            "--timeout must be a positive number of seconds",
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say(&args.domain, &format!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args, &xml)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&args.domain, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, xml: &str) -> Result<(), HookError> {
    let start = Instant::now();
    let budget = Duration::from_secs_f64(args.timeout);
    // Undoing after a failure keeps a reserve of the budget, so the whole run, undo included,
    // ends within --timeout.
    let reserve = (budget / 4).min(Duration::from_secs(5));
    let forward = start + budget - reserve;
    let end = start + budget;
    match act(&args.operation, &args.sub_operation) {
        Act::Nothing => Ok(()),
        Act::Prepare => {
            let hostdevs = domain::parse(xml)?;
            if hostdevs.is_empty() {
                // Not a gpuvirt domain: the bus is not touched.
                return Ok(());
            }
            let mut daemon =
                match Daemon::connect(args.bus_address.as_deref(), forward, budget).await {
                    Ok(d) => d,
                    Err(e) if e.is_unreachable() => return leave_to_libvirt(&args.domain, &e),
                    Err(e) => return Err(e),
                };
            match lifecycle::prepare(&mut daemon, &args.domain, &hostdevs, &args.state_dir, end)
                .await
            {
                Err(e) if e.is_unreachable() => leave_to_libvirt(&args.domain, &e),
                other => other,
            }
        }
        Act::Release => {
            // No record: this hook did nothing for the domain, and the bus is not touched.
            if record::load(&args.state_dir, &args.domain)?.is_none() {
                return Ok(());
            }
            let daemon = Daemon::connect(args.bus_address.as_deref(), end, budget).await?;
            lifecycle::release(&daemon, &args.domain, &args.state_dir).await
        }
    }
}

/// Without gpuvirtd nothing of gpuvirt's can be readied, and nothing was: the start goes on,
/// and libvirt's own checks fail it if a device is not ready (a missing mdev, a card on its
/// host driver with managed='no').
fn leave_to_libvirt(domain: &str, e: &HookError) -> Result<(), HookError> {
    say(
        domain,
        &format!("{e}; leaving the domain's hostdevs to libvirt"),
    );
    Ok(())
}
