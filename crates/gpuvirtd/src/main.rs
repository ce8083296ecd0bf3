//! gpuvirtd: watches the kernel's devices and serves the live GPU inventory on D-Bus.
//!
//! The layers, top down (each may import only those below it): `startup` wires them; `bus`
//! is the D-Bus edge; `ops` checks and runs the mutating operations; `actor` owns the
//! inventory; `policy` is the device policy's run time (it reaches the actor through
//! `PolicyHost`); `tree` is the served tree and the `Sink` every property leaves by;
//! `events` reads the kernel's uevents. `auth`, `error`, `ledger`, `args` and `sd_notify`
//! sit at ground level. This file only starts the runtime. May import: crate::args,
//! crate::startup.

mod actor;
mod args;
mod auth;
mod bus;
mod error;
mod events;
mod follow;
mod ledger;
mod ops;
mod policy;
mod sd_notify;
mod startup;
mod tree;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Args;

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd the journal adds its own timestamps and cannot show colours.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let colour = !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if journal {
        builder.without_time().with_target(false).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    if let Some(code) = gpuvirt_cli_gen::intercept(<Args as clap::CommandFactory>::command, "8") {
        return code;
    }
    let args = Args::parse();
    init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(startup::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", gpuvirt_core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
