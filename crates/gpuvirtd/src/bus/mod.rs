//! The bus edge: the served interfaces, the Manager and the root ObjectManager, the jobs,
//! decoding options, THE error-name mapping, the wire forms of big replies, and the sink that
//! every served property leaves by. The only layer (with start-up) that touches zbus server
//! types. May import: crate::ops, crate::actor, crate::policy, crate::tree, crate::auth,
//! crate::error.

mod errors;
mod interfaces;
mod jobs;
mod manager;
mod mutators;
mod object_manager;
mod options;
mod publish;
mod services;
mod wire;

pub use jobs::Jobs;
pub use manager::ManagerInterface;
pub use object_manager::RootObjectManager;
pub use publish::BusSink;
pub use services::Services;
