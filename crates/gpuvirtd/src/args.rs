//! The daemon's command line. Ground level: may import nothing of this crate.

use std::path::PathBuf;

use clap::Parser;

/// Where kernel events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
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
pub struct Args {
    /// Directory every host path hangs off (sys/, proc/, etc/ ...): `/` on a real host, a
    /// simulated kernel's mount in tests.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Serve on the system bus (the default).
    #[arg(long, conflicts_with_all = ["session", "bus_address"])]
    pub system: bool,
    /// Serve on the session bus.
    #[arg(long, conflicts_with = "bus_address")]
    pub session: bool,
    /// Serve on the bus at this D-Bus address (e.g. a private test bus).
    #[arg(long, value_name = "ADDR")]
    pub bus_address: Option<String>,
    /// Kernel event source: `udev`, `sim:SOCKET` (the simulated kernel) or `none`.
    #[arg(long, default_value = "udev", value_parser = parse_event_source, value_name = "SOURCE")]
    pub events: EventSource,
    /// Where gpuvirtd keeps what it owns (default `<root>/var/lib/gpuvirt`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Longest wait, in seconds, for one operation's kernel writes (an unbind can hang on real
    /// hardware); past it the caller gets TimedOut and the daemon keeps serving.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub unbind_timeout: u64,
    /// Log filter (`info`, `debug`, `gpuvirtd=trace`, ...); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log: String,
    /// The device policy (a real config path, not under `--root`); invalid → the daemon
    /// starts with no policy enforced and the Manager's `PolicyError` says why.
    #[arg(long, default_value = "/etc/gpuvirt/policy.toml", value_name = "PATH")]
    pub policy: PathBuf,
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
