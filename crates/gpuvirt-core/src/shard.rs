//! One model of how a card is split into vGPUs, over the three kernel interfaces that do it:
//! mdev (`mdev_supported_types/<type>/create`), NVIDIA's per-VF vGPU files
//! (`<VF>/nvidia/current_vgpu_type`) and plain SR-IOV (`sriov_numvfs`).
//!
//! Everything here is pure: a [`ShardParent`] is read off an
//! [`Inventory`](crate::model::Inventory) with the live capacity numbers the kernel reports
//! (mdev `available_instances`, NVIDIA `creatable_vgpu_types`, free VFs), types are resolved by
//! id or name with errors that list the valid choices, and manual requests become planned
//! [`Action`](crate::plan::Action)s ([`plan_create`], [`plan_remove`]) or a typed refusal
//! before anything is touched. Who owns an mdev is [`Owner`]; what to recreate when a parent
//! appears is [`recreate_plan`]. The executor (elsewhere) runs the actions.
//!
//! Layout: shard/parent.rs holds the model and its errors, shard/request.rs manual requests,
//! shard/recreate.rs what to recreate. This file holds the mod lines and the re-exports.
//! May import: crate::policy::shard, its own children.

mod parent;
mod recreate;
mod request;

pub use crate::policy::shard::ShardBackend as Backend;

pub use parent::{
    shard_parent, shard_parents, sriov_parent, ShardChild, ShardError, ShardParent, ShardType,
};
pub use recreate::{recreate_plan, InactiveMdev, InactiveReason, RecreatePlan};
pub use request::{owner_of, plan_create, plan_remove, plan_remove_vgpu, Owner};
