//! Every method of the API in one table: which interface it belongs to, whether it changes the
//! host (and so needs authorization), and the polkit action that guards it. May import:
//! crate::names.
//!
//! gpuvirtd's default-deny table and the tests that deny every mutator to an unauthorized
//! caller can be built from [`METHODS`]; a test here checks it against the introspection XML
//! and the polkit actions file, so a method added to the daemon without an entry here (or a
//! mutator without an action) fails.

use crate::names::{
    GPU_INTERFACE, JOB_INTERFACE, MANAGER_INTERFACE, MDEV_INTERFACE, SHARD_PARENT_INTERFACE,
};

/// polkit action for giving cards to VMs and taking them back.
pub const ACTION_PASSTHROUGH: &str = "org.gpuvirt.GpuVirt1.passthrough";
/// polkit action for creating, removing and (un)defining vGPUs.
pub const ACTION_SHARD: &str = "org.gpuvirt.GpuVirt1.shard";
/// polkit action for changing the device policy.
pub const ACTION_POLICY: &str = "org.gpuvirt.GpuVirt1.policy";

/// One method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The full interface name (`org.gpuvirt.GpuVirt1.Gpu`).
    pub interface: &'static str,
    /// The D-Bus method name (`AssignPassthrough`).
    pub name: &'static str,
    /// Whether it changes the host. A dry run of a mutator is answered before authorization.
    pub mutating: bool,
    /// The polkit action that guards it; `None` for reads, and for `Job.Cancel`, which only
    /// the caller that started the job may call (checked by ownership, not polkit).
    pub action: Option<&'static str>,
}

impl MethodInfo {
    /// `Interface.Method` with the common `org.gpuvirt.GpuVirt1.` prefix dropped
    /// (`Gpu.AssignPassthrough`), the key gpuvirtd's authorization table uses.
    pub fn key(&self) -> String {
        let short = self
            .interface
            .strip_prefix("org.gpuvirt.GpuVirt1.")
            .unwrap_or(self.interface);
        format!("{short}.{}", self.name)
    }
}

const fn read(interface: &'static str, name: &'static str) -> MethodInfo {
    MethodInfo {
        interface,
        name,
        mutating: false,
        action: None,
    }
}

const fn guarded(interface: &'static str, name: &'static str, action: &'static str) -> MethodInfo {
    MethodInfo {
        interface,
        name,
        mutating: true,
        action: Some(action),
    }
}

/// Every method, by interface in the XML's order. Reads first within an interface.
pub const METHODS: &[MethodInfo] = &[
    guarded(GPU_INTERFACE, "AssignPassthrough", ACTION_PASSTHROUGH),
    guarded(GPU_INTERFACE, "ReturnToHost", ACTION_PASSTHROUGH),
    read(MANAGER_INTERFACE, "GetGpuByPciAddress"),
    read(MANAGER_INTERFACE, "GetMdevByUuid"),
    read(MANAGER_INTERFACE, "GetObjects"),
    read(MANAGER_INTERFACE, "ListMdevs"),
    read(MANAGER_INTERFACE, "ValidatePolicy"),
    read(MANAGER_INTERFACE, "PlanPolicy"),
    read(MANAGER_INTERFACE, "ListMdevDefinitions"),
    read(MANAGER_INTERFACE, "RenderHostdev"),
    read(MANAGER_INTERFACE, "CanPassthrough"),
    read(MANAGER_INTERFACE, "CanShard"),
    read(MANAGER_INTERFACE, "CanManagePolicy"),
    guarded(MANAGER_INTERFACE, "ReloadPolicy", ACTION_POLICY),
    guarded(MANAGER_INTERFACE, "Reconcile", ACTION_POLICY),
    guarded(MANAGER_INTERFACE, "DefineMdev", ACTION_SHARD),
    guarded(MANAGER_INTERFACE, "UndefineMdev", ACTION_SHARD),
    guarded(MANAGER_INTERFACE, "ModifyMdev", ACTION_SHARD),
    guarded(MANAGER_INTERFACE, "ImportMdevDefinition", ACTION_SHARD),
    guarded(MANAGER_INTERFACE, "StartMdev", ACTION_SHARD),
    guarded(MANAGER_INTERFACE, "StopMdev", ACTION_SHARD),
    guarded(MDEV_INTERFACE, "Remove", ACTION_SHARD),
    guarded(SHARD_PARENT_INTERFACE, "CreateMdev", ACTION_SHARD),
    MethodInfo {
        interface: JOB_INTERFACE,
        name: "Cancel",
        mutating: true,
        action: None,
    },
];

/// The entry of `interface.name`; `None` for a method the API does not have.
pub fn method(interface: &str, name: &str) -> Option<&'static MethodInfo> {
    METHODS
        .iter()
        .find(|m| m.interface == interface && m.name == name)
}

/// The polkit action guarding the method whose [`MethodInfo::key`] is `key`
/// (`Gpu.AssignPassthrough`); `None` for reads and unknown methods (deny those).
pub fn action_for(key: &str) -> Option<&'static str> {
    METHODS
        .iter()
        .find(|m| m.key() == key)
        .and_then(|m| m.action)
}
