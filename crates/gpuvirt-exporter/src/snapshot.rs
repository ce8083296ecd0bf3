//! What the exporter knows about gpuvirtd at one moment: the cache a scrape is answered from.
//! May import: gpuvirt_api (property structs and wire rows).

use gpuvirt_api::{ManagerProps, MdevRowWire, Objects};

/// One consistent read of gpuvirtd (Manager properties, GetObjects, ListMdevs), or none while
/// the daemon is gone.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `None`: gpuvirtd is not on the bus (or its last read failed); only `gpuvirt_up 0` and the
    /// exporter's own metrics are rendered.
    pub daemon: Option<DaemonState>,
}

/// gpuvirtd's state as last read.
#[derive(Debug, Clone, Default)]
pub struct DaemonState {
    pub manager: ManagerProps,
    pub objects: Objects,
    pub mdevs: Vec<MdevRowWire>,
}

/// The exporter's own counters, rendered on HTTP only (the textfile holds gauges only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExporterCounters {
    pub scrapes: u64,
    pub refreshes: u64,
    pub refresh_failures: u64,
}
