//! gpuvirtctl: the command-line client of gpuvirtd. It only talks D-Bus; it never reads sysfs.
//! This file only parses the command line and dispatches to one module per verb. May import:
//! crate::commands, crate::client, crate::errors, crate::exit, crate::polkit_agent,
//! crate::table.
//!
//! Layers, from the top down: `main` → `commands::*` → `jobwait` → `client` → `view`,
//! `table` → `errors`, `out` → `exit`. No module imports one above it.

// First: its out!/outln! macros are used by the modules below.
#[macro_use]
mod out;
mod client;
mod commands;
mod errors;
mod exit;
mod jobwait;
mod polkit_agent;
mod table;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpuvirt_cli_gen as cli_gen;

use crate::client::Ctx;
use crate::commands::{
    doctor, groups, list, mdev, mdevs, monitor, passthrough, policy, render, show, tree, types,
    version,
};
use crate::errors::CliError;
use crate::exit::Exit;

/// Inspect GPUs, IOMMU groups and mediated devices through gpuvirtd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Talk to gpuvirtd on the system bus (the default).
    #[arg(long, global = true, conflicts_with_all = ["session", "bus_address"])]
    system: bool,
    /// Talk to gpuvirtd on the session bus.
    #[arg(long, global = true, conflicts_with = "bus_address")]
    session: bool,
    /// Talk to gpuvirtd on the bus at this D-Bus address.
    #[arg(long, global = true, value_name = "ADDR")]
    bus_address: Option<String>,
    /// Never ask for a password: no polkit agent, no interactive authorization (for scripts).
    #[arg(long, global = true)]
    no_ask_password: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List GPUs: address, ids, driver, state, IOMMU group, sharding.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show everything about one GPU (by PCI address) or vGPU (by UUID).
    Show {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F), or an mdev's UUID.
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// List the IOMMU groups gpuvirt can act on, their members and viability.
    Groups {
        #[arg(long)]
        json: bool,
    },
    /// List the vGPU/mdev types every shardable device offers.
    Types {
        #[arg(long)]
        json: bool,
    },
    /// List mediated devices.
    Mdevs {
        #[arg(long)]
        json: bool,
    },
    /// Check, plan, apply and reload the device policy.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Draw IOMMU groups with their members' drivers and the vGPUs on each device.
    Tree {
        #[arg(long)]
        json: bool,
    },
    /// Follow changes live (devices added/removed, properties changed) until interrupted.
    Monitor {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print gpuvirtctl's version and the running gpuvirtd's.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Hand a GPU (and its IOMMU group's slot) to vfio-pci for a VM; waits for the job.
    Passthrough {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F).
        address: String,
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give a passed-through GPU back to its host drivers; waits for the job.
    Return {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F).
        address: String,
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Mediated devices (vGPUs), with mdevctl's verbs and flags: create, remove, define,
    /// modify, undefine, start, stop, list, types, export, import.
    Mdev {
        #[command(subcommand)]
        command: mdev::MdevCommand,
    },
    /// Print the libvirt <hostdev> XML for a GPU (PCI address) or a vGPU (UUID): a card's
    /// functions in one guest slot, multifunction='on' on function 0.
    Xml {
        /// PCI address (any function of the card), a vGPU's VF, or an mdev UUID.
        target: String,
        #[command(flatten)]
        render: render::RenderArgs,
    },
    /// Print the QEMU command-line arguments for a GPU (PCI address) or a vGPU (UUID), one per
    /// line: a card's functions in one guest slot, multifunction=on on function 0.
    QemuArgs {
        /// PCI address (any function of the card), a vGPU's VF, or an mdev UUID.
        target: String,
        #[command(flatten)]
        render: render::RenderArgs,
    },
    /// Check whether this host can pass GPUs through: IOMMU, vfio, each GPU's IOMMU group.
    /// Exits 1 when something blocks passthrough.
    Doctor {
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// Whether gpuvirtd may ask polkit about this command (so a password prompt may be needed).
    /// Dry runs are answered before authorization; reads never are authorized.
    fn needs_authorization(&self) -> bool {
        match self {
            Command::Policy { command } => command.needs_authorization(),
            Command::Passthrough { dry_run, .. } | Command::Return { dry_run, .. } => !dry_run,
            // Anything but the reads, so a new mdev mutator is covered without a change here.
            Command::Mdev { command } => !command.is_read(),
            Command::List { .. }
            | Command::Show { .. }
            | Command::Groups { .. }
            | Command::Types { .. }
            | Command::Mdevs { .. }
            | Command::Tree { .. }
            | Command::Monitor { .. }
            | Command::Version { .. }
            | Command::Xml { .. }
            | Command::QemuArgs { .. }
            | Command::Doctor { .. } => false,
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = cli_gen::intercept(<Cli as clap::CommandFactory>::command, "1") {
        return code;
    }
    let cli = Cli::parse();
    // Before the runtime starts threads: the agent must be the only inheritor of its pipe.
    let _agent = cli
        .command
        .needs_authorization()
        .then(|| polkit_agent::open(!cli.no_ask_password))
        .flatten();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime);
    let result = runtime.and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(e) if e.is_closed_pipe() => Exit::Ok.into(),
        Err(e) => {
            eprintln!(
                "gpuvirtctl: {}: {}",
                table::error_prefix(),
                errors::report(&e)
            );
            e.exit().into()
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    // `policy check` needs no daemon: asked to (`--offline`), or with no bus to reach it on,
    // it checks the file offline.
    let check = match &cli.command {
        Command::Policy { command } => command.check_args(),
        _ => None,
    };
    if let Some((file, true)) = check {
        return policy::check_offline(file, "--offline was given");
    }
    let (connection, bus) = match client::connect(cli.bus_address.as_deref(), cli.session).await {
        Ok(connected) => connected,
        Err(e) => {
            return match (check, policy::offline_reason(&e)) {
                (Some((file, _)), Some(why)) => policy::check_offline(file, &why),
                _ => Err(e),
            }
        }
    };
    let ctx = Ctx {
        connection: &connection,
        bus: &bus,
        allow_interactive_auth: !cli.no_ask_password,
    };
    let ctx = &ctx;
    match cli.command {
        Command::List { json } => list::run(ctx, json).await,
        Command::Show { address, json } => show::run(ctx, &address, json).await,
        Command::Groups { json } => groups::run(ctx, json).await,
        Command::Types { json } => types::run(ctx, json).await,
        Command::Mdevs { json } => mdevs::run(ctx, json).await,
        Command::Policy { command } => policy::run(ctx, command).await,
        Command::Tree { json } => tree::run(ctx, json).await,
        Command::Monitor { json } => monitor::run(ctx, json).await,
        Command::Version { json } => version::run(ctx, json).await,
        Command::Passthrough {
            address,
            dry_run,
            json,
        } => passthrough::run(ctx, passthrough::Direction::Assign, &address, dry_run, json).await,
        Command::Return {
            address,
            dry_run,
            json,
        } => passthrough::run(ctx, passthrough::Direction::Return, &address, dry_run, json).await,
        Command::Mdev { command } => mdev::run(ctx, command).await,
        Command::Xml { target, render } => {
            render::run(ctx, &target, &render, render::Output::Xml).await
        }
        Command::QemuArgs { target, render } => {
            render::run(ctx, &target, &render, render::Output::QemuArgs).await
        }
        Command::Doctor { json } => doctor::run(ctx, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["gpuvirtctl", "--session", "--system", "list"]).is_err());
        assert!(Cli::try_parse_from(["gpuvirtctl", "show"]).is_err());
    }
}
