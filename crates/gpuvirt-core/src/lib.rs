//! gpuvirt's synchronous core: the host model, root-prefixed sysfs reading and the inventory scan.
//!
//! Nothing here knows tokio, zbus or udev; the daemon and the simulated kernel build on it.
//! Start with [`Scanner`]: `Scanner::new(Root::new(dir)).scan()` reads a host into an
//! [`Inventory`]; [`Scanner::refresh`] re-reads what one uevent touched.

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

// The modules' old top-level paths, kept for the other crates.
pub use host::names as pathsafe;
pub use host::{root, sysfs};
pub use state::{ledger, mdevctl, vgpu_names};

pub use error::{error_chain, ErrorKind};
pub use model::*;
pub use root::Root;
pub use scan::{scan, RefreshScope, RefreshTarget, Scanner};
pub use sysfs::ScanStats;
