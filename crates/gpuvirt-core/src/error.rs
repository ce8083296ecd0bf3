//! The core's error vocabulary: [`ErrorKind`], what went wrong in words any front end can map
//! (the daemon maps it to its bus errors), and [`error_chain`]. May import: std only (except
//! the transitional block at the bottom).

/// What went wrong, in the core's neutral terms. Every operation error of the core
/// ([`crate::exec::ExecError`], [`crate::interlock::Refusal`], [`crate::shard::ShardError`])
/// says which kind it is through `kind()`; front ends name the kinds in their own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ErrorKind {
    /// The device, mdev parent or mdev is not there (or went away).
    NoSuchDevice,
    /// Something still uses the device.
    Busy,
    /// The card is the host's boot/console GPU.
    BootVga,
    /// The card's IOMMU group holds devices that cannot go with it.
    GroupNotViable,
    /// The device did not end up on the wanted driver.
    DriverBind,
    /// No room for another mdev or VF.
    NoCapacity,
    /// The mdev already exists.
    AlreadyExists,
    /// The parent does not offer that type.
    UnknownType,
    /// The host or the device cannot do it (no SR-IOV, no IOMMU, no tool).
    NotSupported,
    /// gpuvirt does not own what it was asked to change.
    PolicyViolation,
    /// The request itself is malformed.
    InvalidArgs,
    /// Anything else: I/O failures, a tool that failed.
    Failed,
}

/// An error and its sources as one line, `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

// Transitional: the daemon's bus/errors.rs takes over this mapping (issue 17); delete then.
// Everything below spells D-Bus error names (`org.gpuvirt.GpuVirt1.Error.<name>`); it is the
// only place in the core that does, and the only part of this file that imports upward.

impl ErrorKind {
    /// The D-Bus error name's last element (`Busy`); `Failed` for generic I/O failures.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NoSuchDevice => "NoSuchDevice",
            ErrorKind::Busy => "Busy",
            ErrorKind::BootVga => "BootVga",
            ErrorKind::GroupNotViable => "GroupNotViable",
            ErrorKind::DriverBind => "DriverBind",
            ErrorKind::NoCapacity => "NoCapacity",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::UnknownType => "UnknownType",
            ErrorKind::NotSupported => "NotSupported",
            ErrorKind::PolicyViolation => "PolicyViolation",
            ErrorKind::InvalidArgs => "InvalidArgs",
            ErrorKind::Failed => "Failed",
        }
    }
}

impl crate::interlock::Refusal {
    /// The D-Bus error name's last element (`org.gpuvirt.GpuVirt1.Error.<name>`).
    pub fn dbus_name(&self) -> &'static str {
        self.kind().name()
    }
}

impl crate::shard::ShardError {
    /// The D-Bus error this maps to (`org.gpuvirt.GpuVirt1.Error.<name>`), one of the names
    /// design.md §3 fixes.
    pub fn dbus_name(&self) -> &'static str {
        self.kind().name()
    }
}
