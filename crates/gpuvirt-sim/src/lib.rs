//! A simulated Linux kernel for gpuvirt: host fixtures, a sysfs tree with the kernel's write
//! semantics, kernel-format uevents, a FUSE mount of it and a plain-directory materialisation.
//! Declares the modules only. From the ground up: tree, uevent, expected -> backend, socket,
//! materialize, fixture -> kernel, generate, fuse -> host; each imports only modules below it.

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
