//! What gpuvirtctl says when something fails: one table from D-Bus error names to plain words
//! and what to do, and the exit code each failure ends with. No raw zbus error reaches the user.

use gpuvirt_api as api;

use crate::exit::Exit;

/// What a D-Bus error name means for the person at the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// The error name, `org.gpuvirt.GpuVirt1.Error.Busy` or `org.freedesktop.DBus.Error.*`.
    pub name: &'static str,
    /// What went wrong, in plain words.
    pub meaning: &'static str,
    /// What to do about it.
    pub todo: &'static str,
    pub exit: Exit,
}

const fn advice(
    name: &'static str,
    meaning: &'static str,
    todo: &'static str,
    exit: Exit,
) -> Advice {
    Advice {
        name,
        meaning,
        todo,
        exit,
    }
}

/// Every error name gpuvirtctl explains. gpuvirt's own names come first, in the order of
/// `gpuvirt_api::Error`; a test checks that none is missing.
pub const ADVICE: &[Advice] = &[
    advice(
        "org.gpuvirt.GpuVirt1.Error.NoSuchDevice",
        "no such device",
        "check the PCI address or UUID with `gpuvirtctl list`, `gpuvirtctl mdevs` or `gpuvirtctl tree`",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.PolicyViolation",
        "the device policy forbids this",
        "see `gpuvirtctl policy check`; change the policy file if the change is intended",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.PolicyInvalid",
        "the policy file is not valid",
        "fix the file (see gpuvirt-policy(5)) and run `gpuvirtctl policy check`",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.Busy",
        "the device is in use",
        "stop the VM or process holding it (or wait for the running operation), then retry",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.GroupNotViable",
        "the IOMMU group holds devices the host still uses",
        "see `gpuvirtctl groups`; move the card to another slot or hand over the whole group",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.BootVga",
        "this is the GPU the host boots and displays on",
        "give the host another display (or run headless) before passing this GPU through",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.NotSupported",
        "the device or kernel cannot do this",
        "see `gpuvirtctl doctor` for what the host lacks",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.UnknownType",
        "the parent offers no such vGPU type",
        "list the types with `gpuvirtctl types`",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.NoCapacity",
        "no instances of that vGPU type are left",
        "remove an unused vGPU or pick a smaller type (`gpuvirtctl types` shows what is available)",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.AlreadyExists",
        "a mediated device with that UUID exists already",
        "pick another UUID or leave it out to get a fresh one",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.TimedOut",
        "the kernel did not finish in time",
        "check `journalctl -u gpuvirtd` and whether something still holds the device, then retry",
        Exit::Failure,
    ),
    advice(
        "org.gpuvirt.GpuVirt1.Error.DriverBind",
        "binding or unbinding a driver failed",
        "check `journalctl -u gpuvirtd` and `dmesg`; the driver may not support this device",
        Exit::Failure,
    ),
    advice(
        "org.freedesktop.DBus.Error.AccessDenied",
        "you are not allowed to do this",
        "run it as root or as a user polkit allows (actions org.gpuvirt.*), on a terminal to be asked",
        Exit::Denied,
    ),
    advice(
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "this needs authorization, and no one could be asked",
        "run it from a terminal, or as root",
        Exit::Denied,
    ),
    advice(
        "org.freedesktop.DBus.Error.InvalidArgs",
        "an argument is not valid",
        "correct the argument the message names (`gpuvirtctl help` shows the expected forms)",
        Exit::Failure,
    ),
    advice(
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "gpuvirtd is not running",
        "start it with `systemctl start gpuvirtd`",
        Exit::NotRunning,
    ),
    advice(
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "gpuvirtd is not running",
        "start it with `systemctl start gpuvirtd`",
        Exit::NotRunning,
    ),
    advice(
        "org.freedesktop.DBus.Error.UnknownMethod",
        "the running gpuvirtd does not know this call",
        "gpuvirtctl and gpuvirtd differ in version (see `gpuvirtctl version`); restart gpuvirtd after an upgrade",
        Exit::Failure,
    ),
    advice(
        "org.freedesktop.DBus.Error.UnknownObject",
        "the object is gone",
        "the device disappeared while gpuvirtctl ran; run the command again",
        Exit::Failure,
    ),
    advice(
        "org.freedesktop.DBus.Error.NoReply",
        "gpuvirtd did not answer in time",
        "check `systemctl status gpuvirtd` and `journalctl -u gpuvirtd`",
        Exit::Failure,
    ),
];

/// The advice for an error name; `None` for names gpuvirtctl does not know.
pub fn advice_for(name: &str) -> Option<&'static Advice> {
    ADVICE.iter().find(|a| a.name == name)
}

/// Why a command failed; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot connect to the {bus}: {reason}; check the address, or whether the bus is running"
    )]
    Connect { bus: String, reason: String },
    #[error("gpuvirtd is not running on the {bus} ({} has no owner); start it with `systemctl start gpuvirtd`", api::BUS_NAME)]
    NotRunning { bus: String },
    /// A D-Bus error reply: shown through the [`ADVICE`] table.
    #[error("{}", explain(name, message))]
    Dbus { name: String, message: String },
    /// A failure gpuvirtctl itself detected, already in plain words.
    #[error("{0}")]
    Daemon(String),
    #[error("the D-Bus connection failed: {0}")]
    Call(String),
    #[error("cannot write JSON")]
    Json(#[source] serde_json::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Standard output refused the text; a closed pipe (`| head`) ends the command quietly
    /// (see [`CliError::is_closed_pipe`]).
    #[error("cannot write to standard output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The exit code this failure ends gpuvirtctl with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Connect { .. } | CliError::NotRunning { .. } => Exit::NotRunning,
            CliError::Dbus { name, .. } => advice_for(name).map_or(Exit::Failure, |a| a.exit),
            CliError::Daemon(_)
            | CliError::Call(_)
            | CliError::Json(_)
            | CliError::Runtime(_)
            | CliError::Output(_) => Exit::Failure,
        }
    }

    /// Whoever read standard output stopped reading (`gpuvirtctl tree | head`): what they
    /// wanted arrived, so gpuvirtctl stops without a message and exits 0, as `rg` does.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `<meaning>: <daemon's message> (<name>)`, then `what to do` on the next line.
fn explain(name: &str, message: &str) -> String {
    match advice_for(name) {
        Some(a) if message.is_empty() => format!("{} ({name})\n  {}", a.meaning, a.todo),
        Some(a) => format!("{}: {message} ({name})\n  {}", a.meaning, a.todo),
        None if message.is_empty() => format!("gpuvirtd refused the call ({name})"),
        None => format!("gpuvirtd refused the call: {message} ({name})"),
    }
}

/// Turns a failed D-Bus call into a [`CliError`]: a missing daemon says so plainly, error
/// replies go through the advice table, and transport failures are described in words.
pub fn classify(e: zbus::Error, bus: &str) -> CliError {
    let (name, message) = match e {
        zbus::Error::MethodError(name, message, _) => {
            (name.to_string(), message.unwrap_or_default())
        }
        zbus::Error::FDO(f) => {
            let name = zbus::DBusError::name(&*f).to_string();
            let message = zbus::DBusError::description(&*f)
                .unwrap_or_default()
                .to_owned();
            (name, message)
        }
        zbus::Error::InputOutput(io) => {
            return CliError::Call(format!("lost the connection to the {bus} ({io})"))
        }
        other => return CliError::Call(other.to_string()),
    };
    if advice_for(&name).is_some_and(|a| a.exit == Exit::NotRunning) {
        return CliError::NotRunning {
            bus: bus.to_owned(),
        };
    }
    CliError::Dbus { name, message }
}

/// Like [`classify`], for a typed gpuvirt error from a proxy call.
pub fn classify_api(e: api::Error, bus: &str) -> CliError {
    match e {
        api::Error::ZBus(e) => classify(e, bus),
        other => CliError::Dbus {
            name: zbus::DBusError::name(&other).to_string(),
            message: zbus::DBusError::description(&other)
                .unwrap_or_default()
                .to_owned(),
        },
    }
}

/// The whole message for stderr: the error and its sources, each once.
pub fn report(e: &CliError) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_gpuvirt_error_name_has_advice() {
        let names = [
            api::Error::NoSuchDevice(String::new()),
            api::Error::PolicyViolation(String::new()),
            api::Error::PolicyInvalid(String::new()),
            api::Error::Busy(String::new()),
            api::Error::GroupNotViable(String::new()),
            api::Error::BootVga(String::new()),
            api::Error::NotSupported(String::new()),
            api::Error::UnknownType(String::new()),
            api::Error::NoCapacity(String::new()),
            api::Error::AlreadyExists(String::new()),
            api::Error::TimedOut(String::new()),
            api::Error::DriverBind(String::new()),
        ];
        for e in &names {
            let name = zbus::DBusError::name(e).to_string();
            assert!(advice_for(&name).is_some(), "no advice for {name}");
        }
        let doc = include_str!("../../../docs/cli.md");
        for a in ADVICE {
            let short = a.name.rsplit('.').next().unwrap();
            assert!(doc.contains(short), "docs/cli.md does not mention {short}");
        }
    }

    #[test]
    fn access_denied_is_exit_3_with_what_to_do() {
        let e = classify(
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from("org.freedesktop.DBus.Error.AccessDenied")
                    .unwrap(),
                Some("polkit said no".into()),
                zbus::message::Message::method_call("/", "X")
                    .unwrap()
                    .build(&())
                    .unwrap(),
            ),
            "system bus",
        );
        assert_eq!(e.exit(), Exit::Denied);
        let text = report(&e);
        assert!(text.starts_with("you are not allowed to do this: polkit said no"));
        assert!(text.contains("run it as root"), "{text}");
    }

    #[test]
    fn missing_daemon_is_exit_4() {
        let e = classify(
            zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("x".into()))),
            "system bus",
        );
        assert_eq!(e.exit(), Exit::NotRunning);
        assert!(report(&e).contains("systemctl start gpuvirtd"));
    }

    #[test]
    fn unknown_names_keep_the_name_and_message() {
        let e = CliError::Dbus {
            name: "com.example.Weird".into(),
            message: "odd".into(),
        };
        assert_eq!(e.exit(), Exit::Failure);
        assert_eq!(
            report(&e),
            "gpuvirtd refused the call: odd (com.example.Weird)"
        );
    }
}
