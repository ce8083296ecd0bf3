//! gpuvirtctl: the command-line client of gpuvirtd. It only talks D-Bus; it never reads sysfs.

// First: its out!/outln! macros are used by the modules below.
#[macro_use]
mod out;
mod doctor;
mod errors;
mod exit;
mod jobwait;
mod mdev;
mod monitor;
mod mutating;
mod passthrough;
mod policy;
mod polkit_agent;
mod render;
mod table;
mod tree;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpuvirt_api as api;
use gpuvirt_cli_gen as cli_gen;
use serde::Serialize;

use crate::errors::{classify, classify_api, CliError};
use crate::exit::Exit;
use crate::table::print_table;
use crate::view::{GpuView, Host, ShardView};

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
    #[command(flatten)]
    Mutate(mutating::MutateCommand),
}

impl Command {
    /// Whether gpuvirtd may ask polkit about this command (so a password prompt may be needed).
    fn needs_authorization(&self) -> bool {
        match self {
            Command::Policy { command } => command.needs_authorization(),
            Command::Mutate(command) => command.needs_authorization(),
            _ => false,
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = cli_gen::intercept(<Cli as clap::CommandFactory>::command(), "1") {
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
    let (builder, bus) = match (&cli.bus_address, cli.session) {
        (Some(a), _) => (
            zbus::connection::Builder::address(a.as_str()),
            format!("bus at {a}"),
        ),
        (None, true) => (zbus::connection::Builder::session(), "session bus".into()),
        (None, false) => (zbus::connection::Builder::system(), "system bus".into()),
    };
    let connection = match builder {
        Ok(b) => b.build().await,
        Err(e) => Err(e),
    }
    .map_err(|source| CliError::Connect {
        bus: bus.clone(),
        reason: source.to_string(),
    })?;
    let call_error = |e: zbus::Error| classify(e, &bus);
    let ctx = mutating::Ctx {
        connection: &connection,
        bus: &bus,
        allow_interactive_auth: !cli.no_ask_password,
    };

    match cli.command {
        Command::Policy { command } => policy::run(&ctx, command).await,
        Command::Mutate(command) => mutating::run(&ctx, command).await,
        Command::Tree { json } => {
            // The GPUs, parents and groups, and the mdevs as typed rows, asked together.
            let (host, mdevs) = tokio::join!(
                view::fetch_objects(
                    &connection,
                    &[
                        api::GPU_INTERFACE,
                        api::SHARD_PARENT_INTERFACE,
                        api::IOMMU_GROUP_INTERFACE,
                    ],
                ),
                view::fetch_mdevs(&connection),
            );
            let mut host = host.map_err(call_error)?;
            host.mdevs = mdevs.map_err(call_error)?;
            let groups = tree::build(&host);
            if json {
                print_json(&groups)
            } else {
                out!("{}", tree::render(&groups))?;
                Ok(())
            }
        }
        Command::Monitor { json } => monitor::run(&connection, &bus, json).await,
        Command::Version { json } => {
            let client = env!("CARGO_PKG_VERSION");
            let daemon = api::ManagerProxy::new(&connection)
                .await
                .map_err(call_error)?
                .version()
                .await
                .map_err(call_error)?;
            if json {
                print_json(&serde_json::json!({ "client": client, "daemon": daemon }))
            } else {
                print_table(&[row(["client:", client]), row(["daemon:", &daemon])])?;
                Ok(())
            }
        }
        Command::List { json } => {
            let host = fetch_gpus(&connection).await.map_err(call_error)?;
            if json {
                print_json(&host.gpus)
            } else {
                print_list(&host)?;
                Ok(())
            }
        }
        Command::Show { address, json } if address.contains('-') => {
            // A UUID: the mdev of that UUID (addresses never contain '-').
            let path = api::ManagerProxy::new(&connection)
                .await
                .map_err(call_error)?
                .get_mdev_by_uuid(&address)
                .await
                .map_err(|e| classify_api(e, &bus))?;
            let host = fetch(&connection).await.map_err(call_error)?;
            let Some(mdev) = host.mdevs.iter().find(|m| m.path == path.as_str()) else {
                return Err(CliError::Daemon(format!("{address} disappeared")));
            };
            if json {
                print_json(mdev)
            } else {
                print_table(&[
                    row(["UUID:", &mdev.uuid]),
                    row(["Object:", &mdev.path]),
                    row(["Parent:", &mdev.parent]),
                    row(["Type:", &mdev.type_id]),
                    row(["Type name:", &or_dash(&mdev.type_name)]),
                    row(["Active:", yes_no(mdev.active)]),
                    row(["Driver:", &or_dash(&mdev.driver)]),
                    row([
                        "IOMMU group:",
                        &mdev.iommu_group.map_or("-".to_owned(), |g| g.to_string()),
                    ]),
                ])?;
                Ok(())
            }
        }
        Command::Show { address, json } => {
            let manager = api::ManagerProxy::new(&connection)
                .await
                .map_err(call_error)?;
            let path = manager
                .get_gpu_by_pci_address(&address)
                .await
                .map_err(|e| classify_api(e, &bus))?;
            let host = fetch(&connection).await.map_err(call_error)?;
            let Some(gpu) = host.gpus.iter().find(|g| g.path == path.as_str()) else {
                return Err(CliError::Daemon(format!("{address} disappeared")));
            };
            if json {
                print_json(gpu)
            } else {
                print_show(gpu, &host)?;
                Ok(())
            }
        }
        Command::Groups { json } => {
            let host = view::fetch_objects(&connection, &[api::IOMMU_GROUP_INTERFACE])
                .await
                .map_err(call_error)?;
            if json {
                return print_json(&host.groups);
            }
            let mut rows = vec![row(["GROUP", "VIABLE", "MEMBER", "CLASS", "DRIVER"])];
            for g in &host.groups {
                for (i, m) in g.members.iter().enumerate() {
                    let (id, viable) = if i == 0 {
                        (g.id.to_string(), yes_no(g.viable).to_owned())
                    } else {
                        (String::new(), String::new())
                    };
                    rows.push(vec![
                        id,
                        viable,
                        m.name.clone(),
                        m.class.clone(),
                        or_dash(&m.driver),
                    ]);
                }
            }
            print_table(&rows)?;
            for g in host
                .groups
                .iter()
                .filter(|g| !g.viability_problems.is_empty())
            {
                for p in &g.viability_problems {
                    outln!("group {}: {p}", g.id)?;
                }
            }
            Ok(())
        }
        Command::Types { json } => {
            let host = view::fetch_objects(
                &connection,
                &[api::GPU_INTERFACE, api::SHARD_PARENT_INTERFACE],
            )
            .await
            .map_err(call_error)?;
            let parents: Vec<&ShardView> = host
                .gpus
                .iter()
                .filter_map(|g| g.shard.as_ref())
                .chain(host.other_parents.iter())
                .collect();
            if json {
                return print_json(&parents);
            }
            let mut rows = vec![row([
                "PARENT",
                "BACKEND",
                "TYPE",
                "NAME",
                "AVAILABLE",
                "API",
                "DESCRIPTION",
            ])];
            for p in parents {
                for t in &p.types {
                    rows.push(vec![
                        p.name.clone(),
                        p.backend.clone(),
                        t.id.clone(),
                        t.name.clone(),
                        t.available_instances.to_string(),
                        or_dash(&t.device_api),
                        or_dash(&t.description),
                    ]);
                }
            }
            print_table(&rows)?;
            Ok(())
        }
        Command::Mdevs { json } => {
            let mdevs = view::fetch_mdevs(&connection).await.map_err(call_error)?;
            if json {
                return print_json(&mdevs);
            }
            let mut rows = vec![row([
                "UUID", "PARENT", "TYPE", "NAME", "DRIVER", "GROUP", "ACTIVE",
            ])];
            for m in &mdevs {
                rows.push(vec![
                    m.uuid.clone(),
                    m.parent.clone(),
                    m.type_id.clone(),
                    or_dash(&m.type_name),
                    or_dash(&m.driver),
                    m.iommu_group.map(|g| g.to_string()).unwrap_or("-".into()),
                    yes_no(m.active).to_owned(),
                ]);
            }
            print_table(&rows)?;
            Ok(())
        }
    }
}

/// Every object (one `Manager.GetObjects` call; see [`view::fetch_objects`]).
async fn fetch(connection: &zbus::Connection) -> zbus::Result<Host> {
    view::fetch_objects(connection, &[]).await
}

/// Only the GPU objects: `list` needs nothing else, and on big hosts the mdevs and groups are
/// most of the tree.
async fn fetch_gpus(connection: &zbus::Connection) -> zbus::Result<Host> {
    view::fetch_objects(connection, &[api::GPU_INTERFACE]).await
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    out::json(value)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

fn print_list(host: &Host) -> Result<(), CliError> {
    let mut rows = vec![row([
        "ADDRESS", "IDS", "DRIVER", "STATE", "GROUP", "SHARD", "NAME",
    ])];
    for g in &host.gpus {
        let shard = g
            .shard
            .as_ref()
            .map(|s| {
                format!(
                    "{} ({} types, {} children)",
                    s.backend,
                    s.types.len(),
                    s.children.len()
                )
            })
            .unwrap_or_else(|| "-".to_owned());
        let name = match (g.vendor_name.as_str(), g.product_name.as_str()) {
            ("", "") => "-".to_owned(),
            (v, "") => v.to_owned(),
            (_, p) => p.to_owned(),
        };
        rows.push(vec![
            g.pci_address.clone(),
            format!("{}:{}", g.vendor_id, g.device_id),
            or_dash(&g.driver),
            g.state.clone(),
            g.iommu_group.map(|i| i.to_string()).unwrap_or("-".into()),
            shard,
            name,
        ]);
    }
    print_table(&rows)
}

fn print_show(g: &GpuView, host: &Host) -> Result<(), CliError> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut kv = |k: &str, v: String| rows.push(vec![format!("{k}:"), v]);
    kv("Address", g.pci_address.clone());
    kv("Object", g.path.clone());
    kv(
        "Vendor",
        format!("{} [{}]", or_dash(&g.vendor_name), g.vendor_id),
    );
    kv(
        "Device",
        format!("{} [{}]", or_dash(&g.product_name), g.device_id),
    );
    kv(
        "Subsystem",
        format!(
            "{} [{}:{}]",
            or_dash(&g.subsystem_name),
            g.subsystem_vendor_id,
            g.subsystem_device_id
        ),
    );
    kv("Class", g.class_code.clone());
    kv("Driver", or_dash(&g.driver));
    kv("Driver override", or_dash(&g.driver_override));
    kv("Kernel modules", or_dash(&g.kernel_modules.join(", ")));
    kv("State", g.state.clone());
    kv("Boot VGA", yes_no(g.boot_vga).to_owned());
    kv("NUMA node", g.numa_node.to_string());
    kv("Reset methods", or_dash(&g.reset_methods.join(" ")));
    kv("Companions", or_dash(&g.companions.join(", ")));
    if !g.physical_function.is_empty() {
        kv("Physical function", g.physical_function.clone());
    }
    if g.sriov_total_vfs > 0 {
        kv(
            "SR-IOV",
            format!("{} of {} VFs enabled", g.sriov_num_vfs, g.sriov_total_vfs),
        );
    }
    match g
        .iommu_group
        .and_then(|id| host.groups.iter().find(|x| x.id == id))
    {
        Some(group) => {
            kv(
                "IOMMU group",
                format!(
                    "{} ({})",
                    group.id,
                    if group.viable { "viable" } else { "not viable" }
                ),
            );
            for m in &group.members {
                kv(
                    "  member",
                    format!("{} {} {}", m.name, or_dash(&m.class), or_dash(&m.driver)),
                );
            }
            for p in &group.viability_problems {
                kv("  problem", p.clone());
            }
        }
        None => kv(
            "IOMMU group",
            g.iommu_group
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
    }
    if let Some(s) = &g.shard {
        kv("Shard backend", s.backend.clone());
        for t in &s.types {
            kv(
                "  type",
                format!(
                    "{} {} (available {})",
                    t.id,
                    or_dash(&t.name),
                    t.available_instances
                ),
            );
        }
        for c in &s.children {
            kv("  child", c.clone());
        }
    }
    print_table(&rows)
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
