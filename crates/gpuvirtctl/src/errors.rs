//! What gpuvirtctl says when something fails: D-Bus error names (gpuvirt-api's one list,
//! [`api::ErrorName`]) in plain words with what to do, and the exit code each failure ends
//! with. No raw zbus error reaches the user. May import: crate::exit.

use gpuvirt_api::{self as api, ErrorName};

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

/// What to do about each error. The match has no catch-all: a name added to
/// [`api::ErrorName`] does not compile until it says what to do here.
const fn todo(name: ErrorName) -> &'static str {
    match name {
        ErrorName::NoSuchDevice => {
            "check the PCI address or UUID with `gpuvirtctl list`, `gpuvirtctl mdevs` or `gpuvirtctl tree`"
        }
        ErrorName::PolicyViolation => {
            "see `gpuvirtctl policy check`; change the policy file if the change is intended"
        }
        ErrorName::PolicyInvalid => {
            "fix the file (see gpuvirt-policy(5)) and run `gpuvirtctl policy check`"
        }
        ErrorName::Busy => {
            "stop the VM or process holding it (or wait for the running operation), then retry"
        }
        ErrorName::GroupNotViable => {
            "see `gpuvirtctl groups`; move the card to another slot or hand over the whole group"
        }
        ErrorName::BootVga => {
            "give the host another display (or run headless) before passing this GPU through"
        }
        ErrorName::NotSupported => "see `gpuvirtctl doctor` for what the host lacks",
        ErrorName::UnknownType => "list the types with `gpuvirtctl types`",
        ErrorName::NoCapacity => {
            "remove an unused vGPU or pick a smaller type (`gpuvirtctl types` shows what is available)"
        }
        ErrorName::AlreadyExists => "pick another UUID or leave it out to get a fresh one",
        ErrorName::TimedOut => {
            "check `journalctl -u gpuvirtd` and whether something still holds the device, then retry"
        }
        ErrorName::DriverBind => {
            "check `journalctl -u gpuvirtd` and `dmesg`; the driver may not support this device"
        }
        ErrorName::AccessDenied => {
            "run it as root or as a user polkit allows (actions org.gpuvirt.*), on a terminal to be asked"
        }
        ErrorName::InteractiveAuthorizationRequired => "run it from a terminal, or as root",
        ErrorName::InvalidArgs => {
            "correct the argument the message names (`gpuvirtctl help` shows the expected forms)"
        }
        ErrorName::ServiceUnknown | ErrorName::NameHasNoOwner => {
            "start it with `systemctl start gpuvirtd`"
        }
        ErrorName::UnknownMethod => {
            "gpuvirtctl and gpuvirtd differ in version (see `gpuvirtctl version`); restart gpuvirtd after an upgrade"
        }
        ErrorName::UnknownObject => {
            "the device disappeared while gpuvirtctl ran; run the command again"
        }
        ErrorName::NoReply => "check `systemctl status gpuvirtd` and `journalctl -u gpuvirtd`",
    }
}

/// The advice for one name of gpuvirt-api's list: its meaning and exit code come from there.
pub const fn advice(name: ErrorName) -> Advice {
    Advice {
        name: name.dbus_name(),
        meaning: name.meaning(),
        todo: todo(name),
        exit: Exit::from_code(name.cli_exit_code()),
    }
}

/// Every error name gpuvirtctl explains, in the order of gpuvirt-api's [`ErrorName::ALL`].
#[cfg(test)]
const ADVICE: &[Advice] = &{
    let mut all = [advice(ErrorName::ALL[0]); ErrorName::ALL.len()];
    let mut i = 1;
    while i < all.len() {
        all[i] = advice(ErrorName::ALL[i]);
        i += 1;
    }
    all
};

/// The advice for an error name; `None` for names gpuvirtctl does not know.
pub fn advice_for(name: &str) -> Option<Advice> {
    ErrorName::from_dbus_name(name).map(advice)
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
    /// A D-Bus error reply: shown through [`advice_for`].
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
    fn every_error_name_has_advice_and_its_documented_exit_code() {
        let doc = include_str!("../../../docs/cli.md");
        for name in ErrorName::ALL {
            let a = advice(name);
            assert_eq!(advice_for(name.dbus_name()), Some(a));
            assert_eq!(a.exit.code(), name.cli_exit_code(), "{name}");
            assert!(!a.todo.is_empty(), "{name}");
            assert!(
                doc.contains(name.short_name()),
                "docs/cli.md does not mention {}",
                name.short_name()
            );
        }
        // gpuvirt's own errors, as the typed proxies return them, all have advice.
        for name in ErrorName::ALL.into_iter().filter(|n| n.is_gpuvirt()) {
            let e = name.to_error("m").unwrap();
            match classify_api(e, "system bus") {
                CliError::Dbus { name: got, message } => {
                    assert_eq!(got, name.dbus_name());
                    assert_eq!(message, "m");
                }
                other => panic!("{name} classified as {other:?}"),
            }
        }
        assert_eq!(advice_for("org.freedesktop.DBus.Error.Failed"), None);
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
