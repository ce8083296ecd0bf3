//! One module per verb of the command line (as bolt's `cli/boltctl-<verb>.c`), each with its
//! own `run`; `passthrough` serves `passthrough` and `return`, `render` serves `xml` and
//! `qemu-args`. May import: crate::client, crate::errors, crate::jobwait, crate::table,
//! crate::view; never another command, nor main.rs.

pub mod doctor;
pub mod groups;
pub mod list;
pub mod mdev;
pub mod mdevs;
pub mod monitor;
pub mod passthrough;
pub mod policy;
pub mod render;
pub mod show;
pub mod tree;
pub mod types;
pub mod version;
