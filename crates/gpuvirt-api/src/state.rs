//! Observed state of a GPU function (the Gpu `State` property), as it travels: a lowercase
//! string. May import: nothing.

/// No driver bound.
pub const UNBOUND: &str = "unbound";
/// Bound to a VFIO driver (or pci-stub): ready for a VM.
pub const VFIO: &str = "vfio";
/// Bound to any other (host) driver.
pub const HOST: &str = "host";
