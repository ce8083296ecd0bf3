//! The live cache: reads gpuvirtd at start, on its signals and when its bus name changes owner,
//! and publishes each read as a [`Snapshot`] on a watch channel. May import: crate::snapshot,
//! gpuvirt_api (proxies), zbus.
//!
//! A scrape never waits for D-Bus: it renders the last published snapshot. Signals come in
//! bursts (a hotplug or a policy apply changes many properties at once), so after the first
//! signal the loop waits [`COALESCE`] and then does one re-read for everything that arrived in
//! that window. While gpuvirtd is gone (or the bus is), the snapshot says so (`gpuvirt_up 0`)
//! and the loop retries every [`RETRY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gpuvirt_api as api;
use tokio::sync::{watch, Notify};

use crate::snapshot::{DaemonState, ExporterCounters, Snapshot};

/// One re-read per this window of signals.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How often a gone daemon (or bus) is retried.
pub const RETRY: Duration = Duration::from_secs(2);

/// Where the cache publishes.
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub counters: watch::Sender<ExporterCounters>,
}

/// Why a read gave no state.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("gpuvirtd is not on the bus")]
    NotOnBus,
    #[error("talking to the bus failed")]
    Bus(#[from] zbus::Error),
    #[error("reading gpuvirtd's state failed")]
    Daemon(#[from] api::Error),
}

/// Reads everything a snapshot holds, in three calls. It first asks the bus whether gpuvirtd
/// owns its name: a method call to an unowned name would make the bus start gpuvirtd by D-Bus
/// activation, and an exporter retrying every 2 s must not restart a daemon someone stopped.
async fn read(connection: &zbus::Connection) -> Result<DaemonState, ReadError> {
    let bus = zbus::fdo::DBusProxy::new(connection).await?;
    let name = zbus::names::BusName::try_from(api::BUS_NAME).map_err(zbus::Error::from)?;
    if !bus.name_has_owner(name).await.map_err(zbus::Error::from)? {
        return Err(ReadError::NotOnBus);
    }
    let manager = api::ManagerProxy::builder(connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let interfaces = [
        api::GPU_INTERFACE,
        api::SHARD_PARENT_INTERFACE,
        api::IOMMU_GROUP_INTERFACE,
    ];
    let objects = manager
        .get_objects_typed(&interfaces, HashMap::new())
        .await?;
    let mdevs = manager.list_mdevs(HashMap::new()).await?;
    let manager = api::read_manager_properties(connection).await?;
    Ok(DaemonState {
        manager,
        objects,
        mdevs,
    })
}

/// Forwards every message of `rule` on `connection` as a wake-up on `notify`.
async fn watch_rule(
    connection: &zbus::Connection,
    rule: zbus::MatchRule<'static>,
    notify: Arc<Notify>,
) -> zbus::Result<tokio::task::JoinHandle<()>> {
    let mut stream = zbus::MessageStream::for_match_rule(rule, connection, Some(256)).await?;
    Ok(tokio::spawn(async move {
        while let Some(_msg) = stream.next().await {
            notify.notify_one();
        }
        notify.notify_one();
    }))
}

/// Subscribes to gpuvirtd's signals (anything under its object root: PropertiesChanged,
/// InterfacesAdded/Removed) and to NameOwnerChanged for its bus name (a restart).
async fn subscribe(
    connection: &zbus::Connection,
    notify: &Arc<Notify>,
) -> zbus::Result<Vec<tokio::task::JoinHandle<()>>> {
    let signals = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path_namespace(api::ROOT_PATH)?
        .build();
    let owner = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")?
        .interface("org.freedesktop.DBus")?
        .member("NameOwnerChanged")?
        .arg(0, api::BUS_NAME)?
        .build();
    Ok(vec![
        watch_rule(connection, signals, notify.clone()).await?,
        watch_rule(connection, owner, notify.clone()).await?,
    ])
}

async fn connect(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a)?,
        None => zbus::connection::Builder::system()?,
    };
    builder.build().await
}

/// Runs forever: connects, subscribes, reads, publishes; reconnects when the bus goes away.
pub async fn run(address: Option<String>, published: Published) {
    loop {
        let connection = match connect(address.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gpuvirt-exporter: cannot connect to the bus: {e}");
                published
                    .snapshot
                    .send_replace(Arc::new(Snapshot::default()));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let notify = Arc::new(Notify::new());
        let watchers = match subscribe(&connection, &notify).await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("gpuvirt-exporter: cannot subscribe to gpuvirtd's signals: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        refresh_loop(&connection, &notify, &published, &watchers).await;
        for w in watchers {
            w.abort();
        }
        published
            .snapshot
            .send_replace(Arc::new(Snapshot::default()));
    }
}

/// Reads and publishes on each (coalesced) wake-up, until the connection's streams end.
async fn refresh_loop(
    connection: &zbus::Connection,
    notify: &Notify,
    published: &Published,
    watchers: &[tokio::task::JoinHandle<()>],
) {
    loop {
        let result = read(connection).await;
        let up = result.is_ok();
        match result {
            Ok(state) => {
                published.counters.send_modify(|c| c.refreshes += 1);
                published.snapshot.send_replace(Arc::new(Snapshot {
                    daemon: Some(state),
                }));
            }
            Err(e) => {
                published.counters.send_modify(|c| {
                    c.refreshes += 1;
                    c.refresh_failures += 1;
                });
                if published.snapshot.borrow().daemon.is_some() {
                    eprintln!("gpuvirt-exporter: gpuvirtd is gone: {e}");
                }
                published
                    .snapshot
                    .send_replace(Arc::new(Snapshot::default()));
            }
        }
        if watchers.iter().any(|w| w.is_finished()) {
            return;
        }
        if up {
            notify.notified().await;
        } else {
            // Down: a NameOwnerChanged wakes us early, the retry timer otherwise.
            let _ = tokio::time::timeout(RETRY, notify.notified()).await;
        }
        tokio::time::sleep(COALESCE).await;
    }
}
