//! The error vocabulary of the API: gpuvirt's own D-Bus errors ([`Error`]), what a method can
//! fail with ([`CallError`]), and [`ErrorName`], the one list of every error name a caller is
//! told about, with its meaning and the exit code gpuvirtctl ends with. May import: zbus only.

/// The prefix of every gpuvirt error name.
pub const ERROR_PREFIX: &str = "org.gpuvirt.GpuVirt1.Error";
/// The standard error for a malformed argument; its message names the argument.
pub const INVALID_ARGS_ERROR: &str = "org.freedesktop.DBus.Error.InvalidArgs";
/// What the bus answers a call to an object that does not exist.
pub const UNKNOWN_OBJECT_ERROR: &str = "org.freedesktop.DBus.Error.UnknownObject";
/// What the bus answers a call to an object that lacks the interface called.
pub const UNKNOWN_INTERFACE_ERROR: &str = "org.freedesktop.DBus.Error.UnknownInterface";
/// gpuvirt's own D-Bus errors, `org.gpuvirt.GpuVirt1.Error.<Variant>`; the string is the
/// human-readable message. Error names are API: never rename a variant.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.gpuvirt.GpuVirt1.Error")]
pub enum Error {
    /// A transport or protocol error, not one of gpuvirt's own.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No such GPU, mdev, group or type.
    NoSuchDevice(String),
    /// The device policy forbids the operation.
    PolicyViolation(String),
    /// The policy file does not validate.
    PolicyInvalid(String),
    /// The device is in use (holders, EBUSY) or another operation is running on it.
    Busy(String),
    /// The IOMMU group holds members the host still uses.
    GroupNotViable(String),
    /// The operation would take the boot/console GPU away from the host.
    BootVga(String),
    /// The device or kernel cannot do this.
    NotSupported(String),
    /// The parent offers no such type.
    UnknownType(String),
    /// No instances of the type are left.
    NoCapacity(String),
    /// An mdev with that UUID exists already.
    AlreadyExists(String),
    /// The kernel did not finish in time.
    TimedOut(String),
    /// Binding or unbinding a driver failed.
    DriverBind(String),
}

/// What a gpuvirtd method can fail with: one of gpuvirt's errors or a standard
/// `org.freedesktop.DBus.Error.*` one (InvalidArgs for a malformed argument, AccessDenied).
#[derive(Debug)]
pub enum CallError {
    Api(Error),
    Fdo(zbus::fdo::Error),
}

impl CallError {
    /// `org.freedesktop.DBus.Error.InvalidArgs` whose message names the argument.
    pub fn invalid_arg(argument: &str, problem: impl std::fmt::Display) -> Self {
        CallError::Fdo(zbus::fdo::Error::InvalidArgs(format!(
            "argument '{argument}': {problem}"
        )))
    }

    /// `org.gpuvirt.GpuVirt1.Error.NoSuchDevice`.
    pub fn no_such_device(message: impl Into<String>) -> Self {
        CallError::Api(Error::NoSuchDevice(message.into()))
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Api(e)
    }
}

impl From<zbus::fdo::Error> for CallError {
    fn from(e: zbus::fdo::Error) -> Self {
        CallError::Fdo(e)
    }
}

impl From<zbus::Error> for CallError {
    fn from(e: zbus::Error) -> Self {
        CallError::Api(Error::ZBus(e))
    }
}

impl zbus::DBusError for CallError {
    fn name(&self) -> zbus::names::ErrorName<'_> {
        match self {
            CallError::Api(e) => e.name(),
            CallError::Fdo(e) => e.name(),
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            CallError::Api(e) => e.description(),
            CallError::Fdo(e) => e.description(),
        }
    }

    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        match self {
            CallError::Api(e) => e.create_reply(call),
            CallError::Fdo(e) => e.create_reply(call),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => e.fmt(f),
            CallError::Fdo(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CallError {}

/// The prefix of the standard error names (`org.freedesktop.DBus.Error.InvalidArgs`).
pub const FDO_ERROR_PREFIX: &str = "org.freedesktop.DBus.Error";

/// Every error name a gpuvirt caller is told about: gpuvirt's own ([`Error`]'s variants, in
/// its order), then the standard ones gpuvirtd or the bus answer with. One list, so a new name
/// cannot be missed: [`Error::error_name`] matches every [`Error`] variant, and gpuvirtctl's
/// advice matches every `ErrorName`, both without a catch-all.
///
/// `org.freedesktop.DBus.Error.Failed` is deliberately absent: it says nothing beyond its
/// message, and callers show it as "gpuvirtd refused the call".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorName {
    NoSuchDevice,
    PolicyViolation,
    PolicyInvalid,
    Busy,
    GroupNotViable,
    BootVga,
    NotSupported,
    UnknownType,
    NoCapacity,
    AlreadyExists,
    TimedOut,
    DriverBind,
    AccessDenied,
    InteractiveAuthorizationRequired,
    InvalidArgs,
    ServiceUnknown,
    NameHasNoOwner,
    UnknownMethod,
    UnknownObject,
    NoReply,
}

impl ErrorName {
    /// Every name, gpuvirt's own first (in [`Error`]'s order), then the standard ones.
    pub const ALL: [ErrorName; 20] = [
        ErrorName::NoSuchDevice,
        ErrorName::PolicyViolation,
        ErrorName::PolicyInvalid,
        ErrorName::Busy,
        ErrorName::GroupNotViable,
        ErrorName::BootVga,
        ErrorName::NotSupported,
        ErrorName::UnknownType,
        ErrorName::NoCapacity,
        ErrorName::AlreadyExists,
        ErrorName::TimedOut,
        ErrorName::DriverBind,
        ErrorName::AccessDenied,
        ErrorName::InteractiveAuthorizationRequired,
        ErrorName::InvalidArgs,
        ErrorName::ServiceUnknown,
        ErrorName::NameHasNoOwner,
        ErrorName::UnknownMethod,
        ErrorName::UnknownObject,
        ErrorName::NoReply,
    ];

    /// The full D-Bus error name (`org.gpuvirt.GpuVirt1.Error.Busy`).
    pub const fn dbus_name(self) -> &'static str {
        use ErrorName::*;
        match self {
            NoSuchDevice => "org.gpuvirt.GpuVirt1.Error.NoSuchDevice",
            PolicyViolation => "org.gpuvirt.GpuVirt1.Error.PolicyViolation",
            PolicyInvalid => "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
            Busy => "org.gpuvirt.GpuVirt1.Error.Busy",
            GroupNotViable => "org.gpuvirt.GpuVirt1.Error.GroupNotViable",
            BootVga => "org.gpuvirt.GpuVirt1.Error.BootVga",
            NotSupported => "org.gpuvirt.GpuVirt1.Error.NotSupported",
            UnknownType => "org.gpuvirt.GpuVirt1.Error.UnknownType",
            NoCapacity => "org.gpuvirt.GpuVirt1.Error.NoCapacity",
            AlreadyExists => "org.gpuvirt.GpuVirt1.Error.AlreadyExists",
            TimedOut => "org.gpuvirt.GpuVirt1.Error.TimedOut",
            DriverBind => "org.gpuvirt.GpuVirt1.Error.DriverBind",
            AccessDenied => "org.freedesktop.DBus.Error.AccessDenied",
            InteractiveAuthorizationRequired => {
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
            }
            InvalidArgs => "org.freedesktop.DBus.Error.InvalidArgs",
            ServiceUnknown => "org.freedesktop.DBus.Error.ServiceUnknown",
            NameHasNoOwner => "org.freedesktop.DBus.Error.NameHasNoOwner",
            UnknownMethod => "org.freedesktop.DBus.Error.UnknownMethod",
            UnknownObject => "org.freedesktop.DBus.Error.UnknownObject",
            NoReply => "org.freedesktop.DBus.Error.NoReply",
        }
    }

    /// The name a full D-Bus error name stands for; `None` for a name not in the list.
    pub fn from_dbus_name(name: &str) -> Option<ErrorName> {
        Self::ALL.into_iter().find(|n| n.dbus_name() == name)
    }

    /// The last element of the name (`Busy`), as gpuvirtd's operations spell a failure.
    pub fn short_name(self) -> &'static str {
        let full = self.dbus_name();
        full.rsplit('.').next().unwrap_or(full)
    }

    /// Whether this is one of gpuvirt's own names (`org.gpuvirt.GpuVirt1.Error.*`).
    pub fn is_gpuvirt(self) -> bool {
        self.dbus_name().starts_with(ERROR_PREFIX)
    }

    /// What went wrong, in plain words for the person at the terminal (one line).
    pub const fn meaning(self) -> &'static str {
        use ErrorName::*;
        match self {
            NoSuchDevice => "no such device",
            PolicyViolation => "the device policy forbids this",
            PolicyInvalid => "the policy file is not valid",
            Busy => "the device is in use",
            GroupNotViable => "the IOMMU group holds devices the host still uses",
            BootVga => "this is the GPU the host boots and displays on",
            NotSupported => "the device or kernel cannot do this",
            UnknownType => "the parent offers no such vGPU type",
            NoCapacity => "no instances of that vGPU type are left",
            AlreadyExists => "a mediated device with that UUID exists already",
            TimedOut => "the kernel did not finish in time",
            DriverBind => "binding or unbinding a driver failed",
            AccessDenied => "you are not allowed to do this",
            InteractiveAuthorizationRequired => {
                "this needs authorization, and no one could be asked"
            }
            InvalidArgs => "an argument is not valid",
            ServiceUnknown | NameHasNoOwner => "gpuvirtd is not running",
            UnknownMethod => "the running gpuvirtd does not know this call",
            UnknownObject => "the object is gone",
            NoReply => "gpuvirtd did not answer in time",
        }
    }

    /// The exit code gpuvirtctl ends with on this error (docs/cli.md; scripts depend on it):
    /// 3 when the caller is not allowed, 4 when gpuvirtd is not running, else 1.
    pub const fn cli_exit_code(self) -> u8 {
        use ErrorName::*;
        match self {
            AccessDenied | InteractiveAuthorizationRequired => 3,
            ServiceUnknown | NameHasNoOwner => 4,
            NoSuchDevice | PolicyViolation | PolicyInvalid | Busy | GroupNotViable | BootVga
            | NotSupported | UnknownType | NoCapacity | AlreadyExists | TimedOut | DriverBind
            | InvalidArgs | UnknownMethod | UnknownObject | NoReply => 1,
        }
    }

    /// gpuvirt's own error of this name carrying `message`; `None` for a standard name.
    pub fn to_error(self, message: impl Into<String>) -> Option<Error> {
        use ErrorName::*;
        let m = message.into();
        Some(match self {
            NoSuchDevice => Error::NoSuchDevice(m),
            PolicyViolation => Error::PolicyViolation(m),
            PolicyInvalid => Error::PolicyInvalid(m),
            Busy => Error::Busy(m),
            GroupNotViable => Error::GroupNotViable(m),
            BootVga => Error::BootVga(m),
            NotSupported => Error::NotSupported(m),
            UnknownType => Error::UnknownType(m),
            NoCapacity => Error::NoCapacity(m),
            AlreadyExists => Error::AlreadyExists(m),
            TimedOut => Error::TimedOut(m),
            DriverBind => Error::DriverBind(m),
            AccessDenied
            | InteractiveAuthorizationRequired
            | InvalidArgs
            | ServiceUnknown
            | NameHasNoOwner
            | UnknownMethod
            | UnknownObject
            | NoReply => return None,
        })
    }
}

impl std::fmt::Display for ErrorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dbus_name())
    }
}

impl Error {
    /// This error's name in [`ErrorName`]'s list; `None` for a transport error. Matches every
    /// variant, so a new error cannot be added without its name.
    pub fn error_name(&self) -> Option<ErrorName> {
        Some(match self {
            Error::ZBus(_) => return None,
            Error::NoSuchDevice(_) => ErrorName::NoSuchDevice,
            Error::PolicyViolation(_) => ErrorName::PolicyViolation,
            Error::PolicyInvalid(_) => ErrorName::PolicyInvalid,
            Error::Busy(_) => ErrorName::Busy,
            Error::GroupNotViable(_) => ErrorName::GroupNotViable,
            Error::BootVga(_) => ErrorName::BootVga,
            Error::NotSupported(_) => ErrorName::NotSupported,
            Error::UnknownType(_) => ErrorName::UnknownType,
            Error::NoCapacity(_) => ErrorName::NoCapacity,
            Error::AlreadyExists(_) => ErrorName::AlreadyExists,
            Error::TimedOut(_) => ErrorName::TimedOut,
            Error::DriverBind(_) => ErrorName::DriverBind,
        })
    }
}
