//! Authorization of mutating calls, in the manner of bolt's bouncer: every mutating method is
//! a [`Method`], each with its polkit action (an exhaustive match, so a new method cannot
//! compile without one), and the [`Bouncer`] asks polkit about the *caller* (its unique bus
//! name). What it hands back on success is a [`Grant`], which only this file can make: the
//! operations' commit step takes one, so a mutator that skips authorization does not compile.
//!
//! Reads and dry runs are open and never come here. When polkit is not on the bus the
//! bouncer fails closed: only callers running as uid 0 are allowed. Once a call has found
//! polkit absent, later calls skip asking it until its name gets an owner again (watched
//! through NameOwnerChanged), which saves each of them a round trip.
//! Ground level: may import crate::error.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::{FutureExt, StreamExt};
use zbus::zvariant::Value;

use crate::error::{ErrorKind, OpError};

/// polkit action for giving cards to VMs and taking them back.
pub const ACTION_PASSTHROUGH: &str = "org.gpuvirt.GpuVirt1.passthrough";
/// polkit action for creating, removing and (un)defining vGPUs.
pub const ACTION_SHARD: &str = "org.gpuvirt.GpuVirt1.shard";
/// polkit action for changing the device policy.
pub const ACTION_POLICY: &str = "org.gpuvirt.GpuVirt1.policy";

/// Every mutating method of the D-Bus API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    AssignPassthrough,
    ReturnToHost,
    CreateMdev,
    RemoveMdev,
    DefineMdev,
    ImportMdevDefinition,
    UndefineMdev,
    ModifyMdev,
    StartMdev,
    StopMdev,
    ReloadPolicy,
    Reconcile,
}

impl Method {
    #[cfg(test)]
    pub const ALL: [Method; 12] = [
        Method::AssignPassthrough,
        Method::ReturnToHost,
        Method::CreateMdev,
        Method::RemoveMdev,
        Method::DefineMdev,
        Method::ImportMdevDefinition,
        Method::UndefineMdev,
        Method::ModifyMdev,
        Method::StartMdev,
        Method::StopMdev,
        Method::ReloadPolicy,
        Method::Reconcile,
    ];

    /// `Interface.Method`, the interface without the common prefix (for messages and logs).
    pub fn name(self) -> &'static str {
        match self {
            Method::AssignPassthrough => "Gpu.AssignPassthrough",
            Method::ReturnToHost => "Gpu.ReturnToHost",
            Method::CreateMdev => "ShardParent.CreateMdev",
            Method::RemoveMdev => "Mdev.Remove",
            Method::DefineMdev => "Manager.DefineMdev",
            Method::ImportMdevDefinition => "Manager.ImportMdevDefinition",
            Method::UndefineMdev => "Manager.UndefineMdev",
            Method::ModifyMdev => "Manager.ModifyMdev",
            Method::StartMdev => "Manager.StartMdev",
            Method::StopMdev => "Manager.StopMdev",
            Method::ReloadPolicy => "Manager.ReloadPolicy",
            Method::Reconcile => "Manager.Reconcile",
        }
    }

    /// The polkit action that guards the method.
    pub fn action(self) -> &'static str {
        match self {
            Method::AssignPassthrough | Method::ReturnToHost => ACTION_PASSTHROUGH,
            Method::CreateMdev
            | Method::RemoveMdev
            | Method::DefineMdev
            | Method::ImportMdevDefinition
            | Method::UndefineMdev
            | Method::ModifyMdev
            | Method::StartMdev
            | Method::StopMdev => ACTION_SHARD,
            Method::ReloadPolicy | Method::Reconcile => ACTION_POLICY,
        }
    }
}

/// The polkit action guarding the method named `method` (`Interface.Method`), `None` (deny)
/// for a name that is not a mutating method.
#[cfg(test)]
pub fn action_for(method: &str) -> Option<&'static str> {
    Method::ALL
        .iter()
        .find(|m| m.name() == method)
        .map(|m| m.action())
}

/// Who is calling, as the bus stamped the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's unique bus name; `None` on a peer-to-peer connection.
    pub sender: Option<String>,
    /// Whether polkit may prompt: the caller did not pass `auth.no_user_interaction` AND its
    /// message carries ALLOW_INTERACTIVE_AUTHORIZATION, which the D-Bus spec makes the
    /// caller's way of saying it can wait for a prompt (`gpuvirtctl --no-ask-password` and
    /// `gdbus call` without `--interactive` leave it out).
    pub interactive: bool,
}

/// Proof that the bouncer allowed one caller one method. Its private field means only this
/// file can make one.
#[derive(Debug)]
pub struct Grant {
    method: Method,
    _sealed: (),
}

impl Grant {
    /// Fails with `AccessDenied` unless the grant is for `method`: a grant for one method
    /// cannot commit another.
    pub fn allows(&self, method: Method) -> Result<(), OpError> {
        if self.method == method {
            Ok(())
        } else {
            Err(denied(format!(
                "authorization for {} does not cover {}",
                self.method.name(),
                method.name()
            )))
        }
    }
}

const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const POLKIT_INTERFACE: &str = "org.freedesktop.PolicyKit1.Authority";
/// `CheckAuthorizationFlags.AllowUserInteraction`.
const ALLOW_USER_INTERACTION: u32 = 1;

/// Decides whether a caller may run a mutating method.
#[derive(Debug)]
pub struct Bouncer {
    connection: zbus::Connection,
    /// Unix uid by unique bus name. Unique names are never reused on a bus, so an entry can
    /// never describe another process.
    uids: Mutex<HashMap<String, u32>>,
    polkit: Mutex<PolkitWatch>,
}

/// What the bouncer knows of polkit's presence.
#[derive(Debug)]
struct PolkitWatch {
    /// A call found polkit's name without an owner, and no owner has appeared since.
    absent: bool,
    /// NameOwnerChanged of polkit's name; `None` when it could not be subscribed (then
    /// every call asks polkit, as if it were present).
    changes: Option<zbus::fdo::NameOwnerChangedStream>,
}

impl PolkitWatch {
    /// Whether polkit is known to be absent now. The bus delivers messages in order, and
    /// zbus queues a signal to its stream before it dispatches a later method call, so a
    /// call sent after polkit took its name finds that change queued here.
    fn known_absent(&mut self) -> bool {
        while let Some(stream) = self.changes.as_mut() {
            match stream.next().now_or_never() {
                Some(Some(signal)) => match signal.args() {
                    Ok(args) => self.absent = args.new_owner().is_none(),
                    Err(_) => self.absent = false,
                },
                Some(None) => {
                    // The subscription ended (the connection is closing): ask every time.
                    self.changes = None;
                    self.absent = false;
                }
                None => break,
            }
        }
        self.absent && self.changes.is_some()
    }
}

fn denied(message: impl Into<String>) -> OpError {
    OpError::new(ErrorKind::AccessDenied, message)
}

impl Bouncer {
    /// A bouncer on `connection`, subscribed to polkit's name owner changes.
    pub async fn new(connection: zbus::Connection) -> Self {
        let changes = match Self::watch_polkit(&connection).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch polkit's name; asking it on every call");
                None
            }
        };
        Self {
            connection,
            uids: Mutex::new(HashMap::new()),
            polkit: Mutex::new(PolkitWatch {
                absent: false,
                changes,
            }),
        }
    }

    async fn watch_polkit(
        connection: &zbus::Connection,
    ) -> zbus::Result<zbus::fdo::NameOwnerChangedStream> {
        let dbus = zbus::fdo::DBusProxy::new(connection).await?;
        dbus.receive_name_owner_changed_with_args(&[(0, POLKIT_NAME)])
            .await
    }

    fn polkit_known_absent(&self) -> bool {
        self.polkit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .known_absent()
    }

    fn note_polkit_absent(&self) {
        let mut watch = self.polkit.lock().unwrap_or_else(|e| e.into_inner());
        // Changes queued before this answer came belong to the past: take them first.
        watch.known_absent();
        watch.absent = true;
    }

    /// Allows `caller` to run `method` (a [`Grant`]) or fails with `AccessDenied`.
    pub async fn authorize(&self, caller: &Caller, method: Method) -> Result<Grant, OpError> {
        let name = method.name();
        let action = method.action();
        let Some(sender) = caller.sender.as_deref() else {
            return Err(denied("the call has no sender"));
        };
        let grant = Grant {
            method,
            _sealed: (),
        };
        let answer = if self.polkit_known_absent() {
            Err(PolkitAbsent)
        } else {
            self.ask_polkit(sender, action, caller.interactive).await
        };
        match answer {
            Ok(true) => Ok(grant),
            Ok(false) => Err(denied(format!(
                "polkit does not allow {sender} to {name} (action {action})"
            ))),
            Err(PolkitAbsent) => {
                self.note_polkit_absent();
                // Fail closed: without polkit only root may change the host.
                let uid = self.uid_of(sender).await?;
                if uid == 0 {
                    Ok(grant)
                } else {
                    Err(denied(format!(
                        "polkit is not running, so only root may {name}; the caller runs as uid {uid}"
                    )))
                }
            }
        }
    }

    /// Whether `sender` may take `action`, asked without side effects and without a prompt
    /// (polkit's CheckAuthorization with no flags), for clients that show what a user may do
    /// before they try. The same fail-closed rule as [`Bouncer::authorize`]: without polkit
    /// only uid 0 gets `yes`. It makes no [`Grant`]: knowing is not doing.
    pub async fn capability(&self, sender: Option<&str>, action: &str) -> Capability {
        let Some(sender) = sender else {
            return Capability::No;
        };
        let answer = if self.polkit_known_absent() {
            Err(PolkitAbsent)
        } else {
            self.query_polkit(sender, action, 0).await
        };
        match answer {
            Ok((true, _)) => Capability::Yes,
            Ok((false, true)) => Capability::Challenge,
            Ok((false, false)) => Capability::No,
            Err(PolkitAbsent) => {
                self.note_polkit_absent();
                match self.uid_of(sender).await {
                    Ok(0) => Capability::Yes,
                    _ => Capability::No,
                }
            }
        }
    }

    /// The grant for what a signal asks (SIGHUP's reload): only root, or the daemon's own
    /// user, can signal the daemon, so the kernel has authorised it already.
    pub fn grant_for_signal(&self, method: Method) -> Grant {
        Grant {
            method,
            _sealed: (),
        }
    }

    /// polkit's answer; `Err` when polkit is not on the bus. Any other failure is a "no".
    async fn ask_polkit(
        &self,
        sender: &str,
        action: &str,
        interactive: bool,
    ) -> Result<bool, PolkitAbsent> {
        let flags = if interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        self.query_polkit(sender, action, flags)
            .await
            .map(|(authorized, _challenge)| authorized)
    }

    /// polkit's (authorized, challenge) for `sender` and `action` under `flags`; `Err` when
    /// polkit is not on the bus. Any other failure is a "no" without a challenge.
    async fn query_polkit(
        &self,
        sender: &str,
        action: &str,
        flags: u32,
    ) -> Result<(bool, bool), PolkitAbsent> {
        // The subject is the caller's unique name: polkit then checks the process behind it,
        // never the daemon's own (which is root).
        let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
        subject_details.insert("name", Value::from(sender));
        let subject = ("system-bus-name", subject_details);
        let details: HashMap<&str, &str> = HashMap::new();
        let reply = self
            .connection
            .call_method(
                Some(POLKIT_NAME),
                POLKIT_PATH,
                Some(POLKIT_INTERFACE),
                "CheckAuthorization",
                &(subject, action, details, flags, ""),
            )
            .await;
        let message = match reply {
            Ok(m) => m,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown"
                    || name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
            {
                return Err(PolkitAbsent)
            }
            Err(e) => {
                tracing::warn!(error = %e, action, sender, "polkit check failed; denying");
                return Ok((false, false));
            }
        };
        match message
            .body()
            .deserialize::<(bool, bool, HashMap<String, String>)>()
        {
            Ok((authorized, challenge, _details)) => Ok((authorized, challenge)),
            Err(e) => {
                tracing::warn!(error = %e, "polkit replied with an unexpected body; denying");
                Ok((false, false))
            }
        }
    }

    async fn uid_of(&self, sender: &str) -> Result<u32, OpError> {
        if let Some(uid) = self
            .uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sender)
        {
            return Ok(*uid);
        }
        let dbus = zbus::fdo::DBusProxy::new(&self.connection)
            .await
            .map_err(|e| denied(format!("cannot ask the bus who the caller is: {e}")))?;
        let name = zbus::names::BusName::try_from(sender)
            .map_err(|e| denied(format!("the sender is not a bus name: {e}")))?;
        let uid = dbus
            .get_connection_unix_user(name)
            .await
            .map_err(|e| denied(format!("cannot ask the bus who the caller is: {e}")))?;
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        // Callers come and go; the cache only saves a round trip for a busy one.
        if uids.len() > 1024 {
            uids.clear();
        }
        uids.insert(sender.to_string(), uid);
        Ok(uid)
    }
}

/// polkit is not on the bus.
#[derive(Debug)]
struct PolkitAbsent;

/// What a `Can*` query answers, in logind's words: whether the caller would be allowed the
/// action now (`yes`), only after proving who it is to polkit (`challenge`), or not (`no`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Yes,
    Challenge,
    No,
}

impl Capability {
    /// The lowercase word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Yes => "yes",
            Capability::Challenge => "challenge",
            Capability::No => "no",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_default_deny() {
        assert_eq!(
            action_for("Gpu.AssignPassthrough"),
            Some(ACTION_PASSTHROUGH)
        );
        assert_eq!(action_for("Mdev.Remove"), Some(ACTION_SHARD));
        assert_eq!(action_for("Gpu.Frobnicate"), None);
        assert_eq!(action_for(""), None);
    }

    #[test]
    fn the_table_is_the_apis() {
        let guarded: Vec<(String, &str)> = gpuvirt_api::METHODS
            .iter()
            .filter_map(|m| Some((m.key(), m.action?)))
            .collect();
        let ours: Vec<(String, &str)> = Method::ALL
            .iter()
            .map(|m| (m.name().to_owned(), m.action()))
            .collect();
        for entry in &guarded {
            assert!(ours.contains(entry), "{entry:?} has no Method");
        }
        assert_eq!(ours.len(), guarded.len());
    }

    #[test]
    fn every_action_is_declared_in_the_polkit_file() {
        let file = include_str!("../../../dbus/org.gpuvirt.GpuVirt1.policy");
        for (method, action) in Method::ALL.map(|m| (m.name(), m.action())) {
            assert!(
                file.contains(&format!("<action id=\"{action}\">")),
                "{method}'s action {action} is missing from the polkit actions file"
            );
        }
    }
}
