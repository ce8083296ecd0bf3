//! gpuvirt's synchronous core: the host model, root-prefixed sysfs reading and the inventory scan.
//!
//! Nothing here knows tokio, zbus or udev; the daemon and the simulated kernel build on it.

pub mod model;
pub mod root;

pub use model::*;
pub use root::Root;
