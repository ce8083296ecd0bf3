//! gpuvirt's synchronous core: the host model, root-prefixed sysfs reading, the inventory
//! scan, gpuvirt's own state, the device policy, the planner and the executor.
//!
//! Nothing here knows tokio, zbus, udev or D-Bus names; the daemon and the simulated kernel
//! build on it. Start with [`Scanner`]: `Scanner::new(Root::new(dir)).scan()` reads a host into
//! an [`Inventory`]; [`Scanner::refresh`] re-reads what one uevent touched.
//!
//! Layers, bottom up; a layer imports only the layers below it (and `error`, which imports
//! nothing):
//! - `error`: the neutral [`ErrorKind`] and [`error_chain`] (its `dbus_transitional` file
//!   is the one marked exception, to be deleted when the daemon maps kinds itself).
//! - host paths (`host/`): the [`Root`] every path is joined to, the counting sysfs reader,
//!   safe names, atomic file replacement, tool locations; `holders` reads `/proc`.
//! - model: `model` (plain data; PCI addresses come from gpuvirt-types), `iommu` (group
//!   verdicts over the model), `testing` (model builders for tests).
//! - scan (`scan/`, with its databases `pciids` and `modalias`): a root into an [`Inventory`].
//! - state (`state/`): what gpuvirt owns and remembers: the ledger, mdevctl's definition
//!   files, remembered vGPU type names, pending boot changes.
//! - policy (`policy/`): the TOML policy, typed, matched and validated against an inventory.
//! - plan (`plan/`): policy x inventory x state into actions; beside it `interlock` (safety
//!   checks before passthrough), `reboot` (whether boot changes wait for a reboot), `shard`
//!   (manual vGPU requests) and `render` (VM definitions).
//! - exec (`exec/`): runs actions against a root, keeping the ledger.
//!
//! May import (as a file): its modules, for the re-exports below.

pub mod error;
pub mod exec;
pub mod holders;
pub mod host;
pub mod interlock;
pub mod iommu;
pub mod modalias;
pub mod model;
pub mod pciids;
pub mod plan;
pub mod policy;
pub mod reboot;
pub mod render;
pub mod scan;
pub mod shard;
pub mod state;
pub mod testing;
pub mod vgpu_manager;

// The modules' old top-level paths, kept for the other crates.
pub use host::names as pathsafe;
pub use host::{root, sysfs};
pub use state::{ledger, mdevctl, vgpu_names};

pub use error::{error_chain, ErrorKind};
pub use model::*;
pub use root::Root;
pub use scan::{scan, RefreshScope, RefreshTarget, Scanner};
pub use sysfs::ScanStats;
