//! The core's error vocabulary: [`ErrorKind`], what went wrong in words any front end can map
//! (the daemon maps it to its bus errors), and [`error_chain`]. May import: std only.

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
