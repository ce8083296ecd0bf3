//! A simulated Linux kernel for gpuvirt: host fixtures, a sysfs tree with the kernel's write
//! semantics, kernel-format uevents, a FUSE mount of it and a plain-directory materialisation.

pub mod backend;
pub mod expected;
pub mod fixture;
pub mod fuse;
pub mod generate;
pub mod host;
pub mod kernel;
pub mod materialize;
pub mod socket;
pub mod tree;
pub mod uevent;

pub use backend::Backend;
pub use tree::{Ino, NodeKind, Tree};
pub use uevent::Uevent;
