//! The ground floor: where things are on a root-prefixed host, and how gpuvirt reads and
//! writes them safely. May import: std and crate::error only (nothing above it).

pub mod atomic;
pub mod names;
pub mod root;
pub mod sysfs;
pub mod tools;
