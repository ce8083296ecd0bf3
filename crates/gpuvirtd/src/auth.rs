//! Authorization of mutating calls: one default-deny table from method to polkit action, and a
//! bouncer that asks polkit about the *caller* (its unique bus name), in the manner of bolt's
//! bouncer.
//!
//! Reads are open and never come here. A method missing from [`ACTIONS`] is refused for
//! everyone, so a new mutator cannot ship unguarded by accident. When polkit is not on the bus
//! the bouncer fails closed: only callers running as uid 0 are allowed.

use std::collections::HashMap;
use std::sync::Mutex;

use gpuvirt_api::CallError;
use zbus::message::Header;
use zbus::zvariant::{OwnedValue, Value};

/// polkit action for giving cards to VMs and taking them back.
pub const ACTION_PASSTHROUGH: &str = "org.gpuvirt.GpuVirt1.passthrough";
/// polkit action for creating, removing and (un)defining vGPUs.
pub const ACTION_SHARD: &str = "org.gpuvirt.GpuVirt1.shard";
/// polkit action for changing the device policy.
pub const ACTION_POLICY: &str = "org.gpuvirt.GpuVirt1.policy";

/// Every mutating method (`Interface.Method`, interface without the common prefix) and the
/// polkit action that guards it. Default deny: a method not listed here is refused.
pub const ACTIONS: &[(&str, &str)] = &[
    ("Gpu.AssignPassthrough", ACTION_PASSTHROUGH),
    ("Gpu.ReturnToHost", ACTION_PASSTHROUGH),
    ("ShardParent.CreateMdev", ACTION_SHARD),
    ("Mdev.Remove", ACTION_SHARD),
    ("Manager.DefineMdev", ACTION_SHARD),
    ("Manager.ImportMdevDefinition", ACTION_SHARD),
    ("Manager.UndefineMdev", ACTION_SHARD),
    ("Manager.StartMdev", ACTION_SHARD),
    ("Manager.StopMdev", ACTION_SHARD),
    ("Manager.ReloadPolicy", ACTION_POLICY),
    ("Manager.Reconcile", ACTION_POLICY),
];

/// The polkit action guarding `method`, `None` (deny) for a method not in the table.
pub fn action_for(method: &str) -> Option<&'static str> {
    ACTIONS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, action)| *action)
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
}

fn denied(message: impl Into<String>) -> CallError {
    CallError::Fdo(zbus::fdo::Error::AccessDenied(message.into()))
}

impl Bouncer {
    pub fn new(connection: zbus::Connection) -> Self {
        Self {
            connection,
            uids: Mutex::new(HashMap::new()),
        }
    }

    /// Allows the call in `header` to `method` or fails with
    /// `org.freedesktop.DBus.Error.AccessDenied`. `interactive` is the caller's wish to be
    /// asked for a password (false when it passed `auth.no_user_interaction`); it counts only
    /// when the call also carries ALLOW_INTERACTIVE_AUTHORIZATION, which the D-Bus spec makes
    /// the caller's way of saying it can wait for a prompt (`gpuvirtctl --no-ask-password`
    /// and `gdbus call` without `--interactive` leave it out).
    pub async fn authorize(
        &self,
        header: &Header<'_>,
        method: &str,
        interactive: bool,
    ) -> Result<(), CallError> {
        let interactive = interactive
            && header
                .primary()
                .flags()
                .contains(zbus::message::Flags::AllowInteractiveAuth);
        let Some(action) = action_for(method) else {
            return Err(denied(format!("{method} is not an authorized operation")));
        };
        let Some(sender) = header.sender().map(|s| s.to_string()) else {
            return Err(denied("the call has no sender"));
        };
        match self.ask_polkit(&sender, action, interactive).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(denied(format!(
                "polkit does not allow {sender} to {method} (action {action})"
            ))),
            Err(PolkitAbsent) => {
                // Fail closed: without polkit only root may change the host.
                let uid = self.uid_of(&sender).await?;
                if uid == 0 {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "polkit is not running, so only root may {method}; the caller runs as uid {uid}"
                    )))
                }
            }
        }
    }

    /// polkit's answer; `Err` when polkit is not on the bus. Any other failure is a "no".
    async fn ask_polkit(
        &self,
        sender: &str,
        action: &str,
        interactive: bool,
    ) -> Result<bool, PolkitAbsent> {
        // The subject is the caller's unique name: polkit then checks the process behind it,
        // never the daemon's own (which is root).
        let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
        subject_details.insert("name", Value::from(sender));
        let subject = ("system-bus-name", subject_details);
        let details: HashMap<&str, &str> = HashMap::new();
        let flags = if interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
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
                return Ok(false);
            }
        };
        match message
            .body()
            .deserialize::<(bool, bool, HashMap<String, String>)>()
        {
            Ok((authorized, _challenge, _details)) => Ok(authorized),
            Err(e) => {
                tracing::warn!(error = %e, "polkit replied with an unexpected body; denying");
                Ok(false)
            }
        }
    }

    async fn uid_of(&self, sender: &str) -> Result<u32, CallError> {
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

/// Reads the `auth.no_user_interaction` option (a boolean); wrong types are the caller's error.
pub fn interactive(options: &HashMap<String, OwnedValue>) -> Result<bool, CallError> {
    match options.get("auth.no_user_interaction") {
        None => Ok(true),
        Some(v) => match **v {
            Value::Bool(b) => Ok(!b),
            _ => Err(CallError::invalid_arg(
                "options",
                "auth.no_user_interaction must be a boolean",
            )),
        },
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
    fn every_action_is_declared_in_the_polkit_file() {
        let file = include_str!("../../../dbus/org.gpuvirt.GpuVirt1.policy");
        for (method, action) in ACTIONS {
            assert!(
                file.contains(&format!("<action id=\"{action}\">")),
                "{method}'s action {action} is missing from the polkit actions file"
            );
        }
    }
}
