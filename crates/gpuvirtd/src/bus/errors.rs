//! THE mapping from the daemon's error kinds to D-Bus error names: the only place in the
//! daemon that spells `org.gpuvirt.GpuVirt1.Error.*` (through gpuvirt-api's [`ErrorName`]
//! list). The core's own classifications (the executor's kind, the interlocks' refusals, the
//! shard planner's and the renderer's errors) are mapped here too, so the core knows no
//! D-Bus names. May import: crate::error.

use gpuvirt_api::{CallError, ErrorName};
use gpuvirt_core::exec::ErrorKind as ExecKind;
use gpuvirt_core::interlock::Refusal;
use gpuvirt_core::render::RenderError;
use gpuvirt_core::shard::ShardError;

use crate::error::{ErrorKind, OpError};

/// The name callers are told for `kind`; `None` for `org.freedesktop.DBus.Error.Failed`,
/// which says nothing beyond its message.
pub fn error_name(kind: &ErrorKind) -> Option<ErrorName> {
    use ErrorName as N;
    Some(match kind {
        ErrorKind::InvalidArgs => N::InvalidArgs,
        ErrorKind::AccessDenied => N::AccessDenied,
        ErrorKind::Failed => return None,
        ErrorKind::NoSuchDevice => N::NoSuchDevice,
        ErrorKind::PolicyViolation => N::PolicyViolation,
        ErrorKind::PolicyInvalid => N::PolicyInvalid,
        ErrorKind::Busy => N::Busy,
        ErrorKind::NotSupported => N::NotSupported,
        ErrorKind::AlreadyExists => N::AlreadyExists,
        ErrorKind::TimedOut => N::TimedOut,
        ErrorKind::Exec(k) => return exec_name(*k),
        ErrorKind::Refused(r) => refusal_name(r),
        ErrorKind::Shard(e) => shard_name(e),
        ErrorKind::Render(e) => render_name(e),
    })
}

fn exec_name(kind: ExecKind) -> Option<ErrorName> {
    use ErrorName as N;
    Some(match kind {
        ExecKind::NoSuchDevice => N::NoSuchDevice,
        ExecKind::Busy => N::Busy,
        ExecKind::DriverBind => N::DriverBind,
        ExecKind::NoCapacity => N::NoCapacity,
        ExecKind::AlreadyExists => N::AlreadyExists,
        ExecKind::UnknownType => N::UnknownType,
        ExecKind::NotSupported => N::NotSupported,
        ExecKind::PolicyViolation => N::PolicyViolation,
        ExecKind::InvalidArgs => N::InvalidArgs,
        ExecKind::BootVga => N::BootVga,
        ExecKind::GroupNotViable => N::GroupNotViable,
        ExecKind::Failed => return None,
    })
}

fn refusal_name(refusal: &Refusal) -> ErrorName {
    use ErrorName as N;
    match refusal {
        Refusal::NoSuchDevice { .. } => N::NoSuchDevice,
        Refusal::BootVga { .. } => N::BootVga,
        Refusal::GroupNotViable { .. } => N::GroupNotViable,
        Refusal::Busy { .. } => N::Busy,
        Refusal::IommuDisabled { .. } | Refusal::NoIommuGroup { .. } => N::NotSupported,
        Refusal::NotOwned { .. } => N::PolicyViolation,
    }
}

fn shard_name(e: &ShardError) -> ErrorName {
    use ErrorName as N;
    match e {
        ShardError::NoSuchParent { .. }
        | ShardError::NoSuchMdev { .. }
        | ShardError::NoSuchVgpu { .. } => N::NoSuchDevice,
        ShardError::UnknownType { .. } | ShardError::AmbiguousType { .. } => N::UnknownType,
        ShardError::NoCapacity { .. } => N::NoCapacity,
        ShardError::AlreadyExists { .. } => N::AlreadyExists,
        ShardError::NotOwned { .. } => N::PolicyViolation,
        ShardError::TypesUnknown { .. } | ShardError::NotSupported { .. } => N::NotSupported,
        ShardError::InvalidRequest { .. } => N::InvalidArgs,
    }
}

fn render_name(e: &RenderError) -> ErrorName {
    match e {
        RenderError::NoSuchDevice { .. } | RenderError::NoSuchMdev { .. } => {
            ErrorName::NoSuchDevice
        }
        RenderError::Option { .. } => ErrorName::InvalidArgs,
        _ => ErrorName::NotSupported,
    }
}

/// The full D-Bus error name of `e` (a job's `ErrorName`).
pub fn dbus_name(e: &OpError) -> &'static str {
    error_name(&e.kind).map_or("org.freedesktop.DBus.Error.Failed", ErrorName::dbus_name)
}

impl From<OpError> for CallError {
    fn from(e: OpError) -> Self {
        let m = e.message;
        match error_name(&e.kind) {
            None => CallError::Fdo(zbus::fdo::Error::Failed(m)),
            Some(ErrorName::InvalidArgs) => CallError::Fdo(zbus::fdo::Error::InvalidArgs(m)),
            Some(ErrorName::AccessDenied) => CallError::Fdo(zbus::fdo::Error::AccessDenied(m)),
            Some(name) => match name.to_error(m.clone()) {
                Some(api) => CallError::Api(api),
                // A standard name the daemon never answers with on its own.
                None => CallError::Fdo(zbus::fdo::Error::Failed(m)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names() {
        assert_eq!(
            dbus_name(&OpError::new(ErrorKind::Busy, "x")),
            "org.gpuvirt.GpuVirt1.Error.Busy"
        );
        assert_eq!(
            dbus_name(&OpError::new(ErrorKind::InvalidArgs, "x")),
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
        let c: CallError = OpError::new(ErrorKind::TimedOut, "slow").into();
        assert_eq!(
            zbus::DBusError::name(&c).as_str(),
            "org.gpuvirt.GpuVirt1.Error.TimedOut"
        );
    }

    #[test]
    fn failed_and_the_standard_names() {
        assert_eq!(
            dbus_name(&OpError::failed("x")),
            "org.freedesktop.DBus.Error.Failed"
        );
        let c: CallError = OpError::new(ErrorKind::AccessDenied, "no").into();
        assert_eq!(
            zbus::DBusError::name(&c).as_str(),
            "org.freedesktop.DBus.Error.AccessDenied"
        );
        let c: CallError = OpError::new(ErrorKind::Exec(ExecKind::DriverBind), "x").into();
        assert_eq!(
            zbus::DBusError::name(&c).as_str(),
            "org.gpuvirt.GpuVirt1.Error.DriverBind"
        );
    }
}
