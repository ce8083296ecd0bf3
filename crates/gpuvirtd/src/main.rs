//! gpuvirtd: watches the kernel's devices and serves the live GPU inventory on D-Bus.
//!
//! Start-up order matters: subscribe to events, scan, export every object, take the bus name,
//! then tell systemd READY=1. Events that arrive during the scan are queued and re-applied,
//! which is harmless because applying an event twice changes nothing.

mod actor;
mod auth;
mod dbus;
mod events;
mod jobs;
mod mutate;
mod names;
mod notify;
mod objects;
mod policy_runtime;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gpuvirt_api as api;
// One generator for both binaries; see its crate comment.
use gpuvirt_cli_gen as cli_gen;
use gpuvirt_core::{Root, Scanner};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::{Actor, Command, Counts, InventorySource};
use crate::notify::Notifier;

/// Where kernel events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EventSource {
    /// The real udev monitor.
    Udev,
    /// The simulated kernel's SOCK_SEQPACKET uevent socket.
    Sim(PathBuf),
    /// No events: the tree changes only on SIGHUP (for read-only snapshots and debugging).
    None,
}

fn parse_event_source(s: &str) -> Result<EventSource, String> {
    match s {
        "udev" => Ok(EventSource::Udev),
        "none" => Ok(EventSource::None),
        _ => match s.strip_prefix("sim:") {
            Some(path) if !path.is_empty() => Ok(EventSource::Sim(PathBuf::from(path))),
            _ => Err(format!("'{s}' is not one of udev, sim:SOCKET, none")),
        },
    }
}

/// gpuvirt daemon: live inventory of GPUs, IOMMU groups and mediated devices on D-Bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Directory every host path hangs off (sys/, proc/, etc/ ...): `/` on a real host, a
    /// simulated kernel's mount in tests.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Serve on the system bus (the default).
    #[arg(long, conflicts_with_all = ["session", "bus_address"])]
    system: bool,
    /// Serve on the session bus.
    #[arg(long, conflicts_with = "bus_address")]
    session: bool,
    /// Serve on the bus at this D-Bus address (e.g. a private test bus).
    #[arg(long, value_name = "ADDR")]
    bus_address: Option<String>,
    /// Kernel event source: `udev`, `sim:SOCKET` (the simulated kernel) or `none`.
    #[arg(long, default_value = "udev", value_parser = parse_event_source, value_name = "SOURCE")]
    events: EventSource,
    /// Where gpuvirtd keeps what it owns (default `<root>/var/lib/gpuvirt`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Longest wait, in seconds, for one operation's kernel writes (an unbind can hang on real
    /// hardware); past it the caller gets TimedOut and the daemon keeps serving.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    unbind_timeout: u64,
    /// Log filter (`info`, `debug`, `gpuvirtd=trace`, ...); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
    /// The device policy (a real config path, not under `--root`); invalid → the daemon
    /// starts with no policy enforced and the Manager's `PolicyError` says why.
    #[arg(long, default_value = "/etc/gpuvirt/policy.toml", value_name = "PATH")]
    policy: PathBuf,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot start the event source")]
    Events(#[from] events::SourceError),
    #[error("cannot create the state directory {}", .0.display())]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot connect to the D-Bus bus")]
    Bus(#[source] zbus::Error),
    #[error("cannot export the objects")]
    Export(#[source] zbus::Error),
    #[error("cannot take the bus name {}", api::BUS_NAME)]
    Name(#[source] zbus::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

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
    if let Some(code) = cli_gen::intercept(<Args as clap::CommandFactory>::command(), "8") {
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", gpuvirt_core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    let notifier = Notifier::from_env();
    let root = Root::new(&args.root);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| root.join("var/lib/gpuvirt"));
    std::fs::create_dir_all(&state_dir).map_err(|e| StartError::StateDir(state_dir.clone(), e))?;
    // A daemon killed mid-operation left slots half rebound: put them back from the ledger
    // before scanning, so the first tree already shows the host as it will stay.
    mutate::recover(&root, &state_dir);

    // 1. Subscribe before scanning, so nothing that happens during the scan is lost.
    let (event_tx, event_rx) = mpsc::channel(16 * 1024);
    let _event_task = match &args.events {
        EventSource::Udev => Some(events::start_udev(event_tx)?),
        EventSource::Sim(path) => Some(events::start_sim(path.clone(), event_tx)?),
        EventSource::None => {
            drop(event_tx);
            None
        }
    };

    // 2. Scan.
    let scanner: Arc<dyn InventorySource> = Arc::new(names::RememberingScanner::new(
        Scanner::new(root.clone()),
        &state_dir,
    ));
    let started = std::time::Instant::now();
    // On this thread, not a blocking-pool one: nothing is served yet. (On a large host the
    // scan splits its per-device reads over short-lived threads of its own; what they read
    // lives on in their malloc arenas, about 1 MiB more RSS on the 5000-function bench host.)
    let inventory = scanner.scan();
    let tree = objects::build(&inventory);
    tracing::info!(
        root = %args.root.display(),
        gpus = inventory.gpus.len(),
        groups = inventory.groups.len(),
        mdevs = inventory.mdevs.len(),
        elapsed = ?started.elapsed(),
        "scanned"
    );

    // 3. Export everything, without a name yet.
    let (lookup_tx, lookup_rx) = watch::channel(Arc::new(objects::Lookup::of(&inventory)));
    // The policy is validated against the scan; the ledger's unfinished work is recovered
    // before the name is taken. Applying it waits for the actor's loop.
    // One lock for every ledger writer: policy applies and manual operations take turns.
    let exec_lock: mutate::ExecLock = Arc::new(tokio::sync::Mutex::new(()));
    let policy_runtime = policy_runtime::PolicyRuntime::start(
        args.policy.clone(),
        root.clone(),
        &state_dir,
        &inventory,
        exec_lock.clone(),
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let manager = dbus::ManagerInterface {
        props: std::sync::RwLock::new(tree.manager.clone()),
        lookup: lookup_rx,
        policy: policy_runtime.subscribe(),
        commands: cmd_tx.clone(),
    };
    let builder = match (&args.bus_address, args.session) {
        (Some(address), _) => zbus::connection::Builder::address(address.as_str()),
        (None, true) => zbus::connection::Builder::session(),
        (None, false) => zbus::connection::Builder::system(),
    }
    .map_err(StartError::Bus)?;
    let connection = builder
        .serve_at(
            api::ROOT_PATH,
            dbus::RootObjectManager {
                commands: cmd_tx.clone(),
            },
        )
        .and_then(|b| b.serve_at(api::MANAGER_PATH, manager))
        .map_err(StartError::Export)?
        .build()
        .await
        .map_err(StartError::Bus)?;
    let server = connection.object_server().clone();
    let initial = objects::diff(&objects::ObjectTree::default(), &tree);
    let initial: Vec<_> = initial
        .into_iter()
        .filter(|c| !matches!(c, objects::Change::Updated { .. }))
        .collect();
    dbus::apply(&server, initial)
        .await
        .map_err(StartError::Export)?;

    // Mutating methods work from the moment the name is taken; they wait on the actor's
    // queue until its loop runs.
    let (parent_tx, parent_rx) = mpsc::unbounded_channel();
    let mutator = mutate::install(mutate::Mutator::new(
        root.clone(),
        state_dir.clone(),
        cmd_tx.clone(),
        connection.clone(),
        Duration::from_secs(args.unbind_timeout),
        exec_lock,
    ));

    // 4. Only now take the name: an activated client never sees a half-built tree.
    connection
        .request_name(api::BUS_NAME)
        .await
        .map_err(StartError::Name)?;
    let (counts_tx, mut counts_rx) = watch::channel(Counts::default());
    let actor = Actor::new(scanner, inventory, tree, server, lookup_tx, counts_tx)
        .with_policy(policy_runtime);
    let actor = actor.notify_parent_added(parent_tx);
    tokio::spawn(actor.run(event_rx, cmd_rx));
    tokio::spawn(mutator.recreate_loop(parent_rx));

    // 5. READY.
    let status = |c: Counts| {
        format!(
            "STATUS=Serving {} GPUs, {} IOMMU groups, {} mdevs",
            c.gpus, c.groups, c.mdevs
        )
    };
    let counts = *counts_rx.borrow_and_update();
    notifier.notify(&format!("READY=1\n{}", status(counts)));
    tracing::info!(name = api::BUS_NAME, "ready");

    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let watchdog = Notifier::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                // The reload hook: today a full rescan; the policy reload joins it later.
                tracing::info!("SIGHUP: reloading");
                notifier.notify("RELOADING=1");
                let (tx, rx) = oneshot::channel();
                if cmd_tx.send(Command::Rescan(tx)).await.is_ok() {
                    let _ = rx.await;
                }
                // Then the policy: a rejected file keeps the previous one (logged, PolicyError).
                let (tx, rx) = oneshot::channel();
                let reload = Command::Policy(policy_runtime::Request::Reload { reply: tx });
                if cmd_tx.send(reload).await.is_ok() {
                    let _ = rx.await;
                }
                notifier.notify("READY=1");
            }
            Ok(()) = counts_rx.changed() => {
                let counts = *counts_rx.borrow_and_update();
                notifier.notify(&status(counts));
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // Ping only while the actor answers: a wedged actor should get us restarted.
                let (tx, rx) = oneshot::channel();
                if cmd_tx.send(Command::Ping(tx)).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(5), rx).await.is_ok()
                {
                    notifier.notify("WATCHDOG=1");
                }
            }
        }
    }
    tracing::info!("stopping");
    notifier.notify("STOPPING=1");
    // Give the name back before the process goes, so a restart can take it at once.
    let _ = connection.release_name(api::BUS_NAME).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_source_syntax() {
        assert_eq!(parse_event_source("udev"), Ok(EventSource::Udev));
        assert_eq!(parse_event_source("none"), Ok(EventSource::None));
        assert_eq!(
            parse_event_source("sim:/run/sim.sock"),
            Ok(EventSource::Sim("/run/sim.sock".into()))
        );
        assert!(parse_event_source("sim:").is_err());
        assert!(parse_event_source("netlink").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        assert!(Args::try_parse_from(["gpuvirtd", "--session", "--system"]).is_err());
    }
}
