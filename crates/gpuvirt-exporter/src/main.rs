//! gpuvirt-exporter: an unprivileged D-Bus client of gpuvirtd that keeps a live cache of its
//! state and serves it as Prometheus metrics over HTTP and/or as a node_exporter textfile.
//! May import: its own modules, gpuvirt_api, zbus, tokio, clap, anyhow (here only).

mod cache;
mod http;
mod render;
mod snapshot;
mod textfile;

#[cfg(test)]
mod render_tests;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::snapshot::{ExporterCounters, Snapshot};

/// Default listen address: 127.0.0.1 only (put a reverse proxy or a firewall rule in front to
/// scrape from elsewhere, or pass --listen 0.0.0.0:9835). Port 9835 is unassigned on the
/// Prometheus default-port allocation wiki page at the time of writing.
const DEFAULT_LISTEN: &str = "127.0.0.1:9835";

/// Prometheus metrics for gpuvirtd.
#[derive(Debug, Parser)]
#[command(name = "gpuvirt-exporter", version)]
struct Args {
    /// Address to serve /metrics on (port 0: any free port; the bound address is printed on
    /// stderr as "listening on ADDR").
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// D-Bus address of the bus gpuvirtd is on (default: the system bus, or
    /// DBUS_SYSTEM_BUS_ADDRESS).
    #[arg(long)]
    bus_address: Option<String>,
    /// Also write DIR/gpuvirt.prom for node_exporter's textfile collector, atomically, on
    /// every change.
    #[arg(long, value_name = "DIR")]
    textfile: Option<PathBuf>,
    /// Serve no HTTP (textfile only; needs --textfile).
    #[arg(long, requires = "textfile")]
    no_http: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (counters_tx, _counters_rx) = watch::channel(ExporterCounters::default());
    let published = cache::Published {
        snapshot: snapshot_tx,
        counters: counters_tx.clone(),
    };
    tokio::spawn(cache::run(args.bus_address.clone(), published));
    if let Some(dir) = args.textfile.clone() {
        let mut rx = snapshot_rx.clone();
        tokio::spawn(async move {
            loop {
                let text = render::render(&rx.borrow_and_update().clone(), None);
                if let Err(e) = textfile::write(&dir, &text) {
                    eprintln!(
                        "gpuvirt-exporter: {e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    );
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    if args.no_http {
        std::future::pending::<()>().await;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("gpuvirt-exporter: listening on {}", listener.local_addr()?);
    http::serve(listener, snapshot_rx, counters_tx).await;
    Ok(())
}
