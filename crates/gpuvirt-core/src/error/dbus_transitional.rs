//! TRANSITIONAL, to be deleted: the core's last spelling of the daemon's bus error names.
//! When gpuvirtd maps [`ErrorKind`] to its `...Error.<name>` names itself (its one error map,
//! issue 17), this file and its `mod` line in error.rs go; callers use `kind()` instead.
//!
//! What is here, and who calls it (so the daemon and the tests keep compiling meanwhile):
//! - `ErrorKind::name()`: gpuvirtd (mutate.rs, `OpError` from an `ExecError`), the sim's
//!   shard_exec tests.
//! - `Refusal::dbus_name()`: gpuvirtd (mutate.rs), the core's interlock tests.
//! - `ShardError::dbus_name()`: gpuvirtd (mutate.rs), the core's shard tests, the sim's
//!   shard_kernel tests.
//!
//! May import: crate::error, crate::interlock, crate::shard (the types it names).

use super::ErrorKind;
use crate::interlock::Refusal;
use crate::shard::ShardError;

impl ErrorKind {
    /// The bus error name's last element (`Busy`); `Failed` for generic I/O failures.
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

impl Refusal {
    /// The bus error name's last element (`Busy`), as the daemon's interface spells it.
    pub fn dbus_name(&self) -> &'static str {
        self.kind().name()
    }
}

impl ShardError {
    /// The bus error name's last element this maps to, one of the names design.md §3 fixes.
    pub fn dbus_name(&self) -> &'static str {
        self.kind().name()
    }
}
