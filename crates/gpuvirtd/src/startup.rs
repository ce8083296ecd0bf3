//! Start-up and the signal loop: subscribe to events, scan, export every object, take the
//! bus name, then tell systemd READY=1; afterwards SIGHUP reloads, SIGTERM stops, and the
//! watchdog is pinged while the actor answers. Events that arrive during the scan are queued
//! and re-applied, which is harmless because applying an event twice changes nothing.
//! May import: every layer (it wires them): crate::bus, crate::ops, crate::actor,
//! crate::policy, crate::tree, crate::ledger, crate::auth, crate::events, crate::sd_notify,
//! crate::args, crate::follow.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gpuvirt_api as api;
use gpuvirt_core::{Root, Scanner};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::actor::{Actor, ActorHandle, Counts, InventorySource, RememberingScanner, Writes};
use crate::args::{Args, EventSource};
use crate::auth::Bouncer;
use crate::bus::{BusSink, Jobs, ManagerInterface, RootObjectManager, Services};
use crate::events;
use crate::follow;
use crate::ledger::LedgerDoor;
use crate::ops::Runner;
use crate::policy::{PolicyRuntime, Request};
use crate::sd_notify::Notifier;
use crate::tree::{self, Change, Lookup, ObjectTree, Sink};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the event source")]
    Events(#[from] events::SourceError),
    #[error("cannot create the state directory {}", .0.display())]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot connect to the D-Bus bus")]
    Bus(#[source] zbus::Error),
    #[error("cannot export the objects")]
    Export(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot take the bus name {}", api::BUS_NAME)]
    Name(#[source] zbus::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

pub async fn run(args: Args) -> Result<(), StartError> {
    let notifier = Notifier::from_env();
    let root = Root::new(&args.root);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| root.join("var/lib/gpuvirt"));
    std::fs::create_dir_all(&state_dir).map_err(|e| StartError::StateDir(state_dir.clone(), e))?;
    // The one owner of the ledger and its lock: policy applies and manual operations take
    // turns on it.
    let door = Arc::new(LedgerDoor::new(root.clone(), state_dir.clone()));
    // A daemon killed mid-operation left slots half rebound: put them back from the ledger
    // before scanning, so the first tree already shows the host as it will stay.
    door.recover();

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
    let scanner: Arc<dyn InventorySource> = Arc::new(RememberingScanner::new(
        Scanner::new(root.clone()),
        &state_dir,
    ));
    let started = std::time::Instant::now();
    // On this thread, not a blocking-pool one: nothing is served yet. (On a large host the
    // scan splits its per-device reads over short-lived threads of its own; what they read
    // lives on in their malloc arenas, about 1 MiB more RSS on the 5000-function bench host.)
    let inventory = scanner.scan();
    let tree = tree::build(&inventory);
    tracing::info!(
        root = %args.root.display(),
        gpus = inventory.gpus.len(),
        groups = inventory.groups.len(),
        mdevs = inventory.mdevs.len(),
        elapsed = ?started.elapsed(),
        "scanned"
    );

    // Slots whose card left or came back while no daemon watched: the ledger follows.
    follow::at_start(&door, &inventory, &door.lock().await);

    // 3. Export everything, without a name yet.
    let (lookup_tx, lookup_rx) = watch::channel(Arc::new(Lookup::of(&inventory)));
    // The policy is validated against the scan; applying it waits for the actor's loop.
    let policy_runtime = PolicyRuntime::start(args.policy.clone(), door.clone(), &inventory);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let writes = Writes::default();
    let actor_handle = ActorHandle::new(cmd_tx, writes.clone());
    let builder = match (&args.bus_address, args.session) {
        (Some(address), _) => zbus::connection::Builder::address(address.as_str()),
        (None, true) => zbus::connection::Builder::session(),
        (None, false) => zbus::connection::Builder::system(),
    }
    .map_err(StartError::Bus)?;
    let connection = builder.build().await.map_err(StartError::Bus)?;
    let server = connection.object_server().clone();
    // Mutating methods work from the moment the name is taken; they wait on the actor's
    // queue until its loop runs.
    let services = Arc::new(Services {
        runner: Arc::new(Runner::new(
            door.clone(),
            actor_handle.clone(),
            Duration::from_secs(args.unbind_timeout),
        )),
        bouncer: Bouncer::new(connection.clone()).await,
        jobs: Jobs::new(server.clone()),
    });
    let manager = ManagerInterface {
        props: RwLock::new(tree.manager.clone()),
        policy: RwLock::new(policy_runtime.served_props()),
        lookup: lookup_rx,
        services: services.clone(),
        root: root.clone(),
    };
    let export = async {
        server
            .at(
                api::ROOT_PATH,
                RootObjectManager {
                    actor: actor_handle.clone(),
                },
            )
            .await?;
        server.at(api::MANAGER_PATH, manager).await
    };
    export.await.map_err(|e| StartError::Export(Box::new(e)))?;
    let sink: Arc<dyn Sink> = Arc::new(BusSink {
        server: server.clone(),
        services: services.clone(),
    });
    let initial: Vec<_> = tree::diff(&ObjectTree::default(), &tree)
        .into_iter()
        .filter(|c| !matches!(c, Change::Updated { .. }))
        .collect();
    sink.apply(initial).await.map_err(StartError::Export)?;

    let (parent_tx, parent_rx) = mpsc::unbounded_channel();

    // 4. Only now take the name: an activated client never sees a half-built tree.
    connection
        .request_name(api::BUS_NAME)
        .await
        .map_err(StartError::Name)?;
    let (counts_tx, mut counts_rx) = watch::channel(Counts::default());
    let actor = Actor::new(scanner, inventory, tree, sink, lookup_tx, counts_tx)
        .with_policy(policy_runtime)
        .hold_events_during(writes)
        .notify_parent_added(parent_tx)
        .follow_ledger(follow::spawn(door.clone()));
    tokio::spawn(actor.run(event_rx, cmd_rx));
    let runner = services.runner.clone();
    tokio::spawn(async move { runner.recreate_loop(parent_rx).await });

    // 5. READY, with the signal handlers in place first: a SIGHUP (systemd's ExecReload) or
    // SIGTERM sent the moment READY arrives would otherwise meet the default action and kill
    // the daemon (seen as a lost reload in the live test, under load).
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let status = |c: Counts| {
        format!(
            "STATUS=Serving {} GPUs, {} IOMMU groups, {} mdevs",
            c.gpus, c.groups, c.mdevs
        )
    };
    let counts = *counts_rx.borrow_and_update();
    notifier.notify(&format!("READY=1\n{}", status(counts)));
    tracing::info!(name = api::BUS_NAME, "ready");

    let watchdog = Notifier::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                // The reload hook: a full rescan, then the policy file again.
                tracing::info!("SIGHUP: reloading");
                notifier.notify("RELOADING=1");
                let _ = actor_handle.rescan().await;
                // A rejected file keeps the previous one (logged, PolicyError). SIGHUP comes
                // from whoever may signal the daemon (root), so it needs no polkit grant.
                let grant = services.bouncer.grant_for_signal(crate::auth::Method::ReloadPolicy);
                let _ = actor_handle.policy(|reply| Request::Reload { grant, reply }).await;
                notifier.notify("READY=1");
            }
            Ok(()) = counts_rx.changed() => {
                let counts = *counts_rx.borrow_and_update();
                notifier.notify(&status(counts));
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // Ping only while the actor answers: a wedged actor should get us restarted.
                if actor_handle.ping(Duration::from_secs(5)).await {
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
