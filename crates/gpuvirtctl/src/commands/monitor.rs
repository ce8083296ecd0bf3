//! `gpuvirtctl monitor`: follows gpuvirtd's change signals live, like `boltctl monitor`, one
//! line per signal (or one JSON object per line with `--json`) until interrupted. May import:
//! crate::client, crate::errors.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use gpuvirt_api as api;
use serde::Serialize;
use serde_json::Value as Json;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::client::Ctx;
use crate::errors::{classify, CliError};

/// One change, as `--json` prints it (see docs/cli.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Added {
        path: String,
        interfaces: Vec<String>,
    },
    Removed {
        path: String,
        interfaces: Vec<String>,
    },
    Changed {
        path: String,
        interface: String,
        properties: BTreeMap<String, Json>,
        invalidated: Vec<String>,
    },
    /// gpuvirtd left or took the bus name.
    Daemon { running: bool },
}

/// A D-Bus value as JSON: numbers, strings, arrays, objects for dictionaries, arrays for structs.
pub fn value_json(v: &Value<'_>) -> Json {
    match v {
        Value::U8(x) => Json::from(*x),
        Value::Bool(x) => Json::from(*x),
        Value::I16(x) => Json::from(*x),
        Value::U16(x) => Json::from(*x),
        Value::I32(x) => Json::from(*x),
        Value::U32(x) => Json::from(*x),
        Value::I64(x) => Json::from(*x),
        Value::U64(x) => Json::from(*x),
        Value::F64(x) => Json::from(*x),
        Value::Str(s) => Json::from(s.as_str()),
        Value::Signature(s) => Json::from(s.to_string()),
        Value::ObjectPath(p) => Json::from(p.as_str()),
        Value::Value(inner) => value_json(inner),
        Value::Array(a) => Json::Array(a.iter().map(value_json).collect()),
        Value::Dict(d) => Json::Object(
            d.iter()
                .map(|(k, v)| {
                    let key = match value_json(k) {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, value_json(v))
                })
                .collect(),
        ),
        Value::Structure(s) => Json::Array(s.fields().iter().map(value_json).collect()),
        #[allow(unreachable_patterns)]
        other => Json::from(other.to_string()),
    }
}

fn short(interface: &str) -> &str {
    interface
        .strip_prefix(api::BUS_NAME)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(interface)
}

impl Event {
    /// The human line: `added|removed|changed|daemon` then the object and what changed.
    pub fn line(&self) -> String {
        let names = |ifaces: &[String]| {
            ifaces
                .iter()
                // Every object has the standard interfaces: naming them says nothing.
                .filter(|i| !i.starts_with("org.freedesktop.DBus."))
                .map(|i| short(i).to_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Event::Added { path, interfaces } => format!("added    {path}  {}", names(interfaces)),
            Event::Removed { path, interfaces } => {
                format!("removed  {path}  {}", names(interfaces))
            }
            Event::Changed {
                path,
                interface,
                properties,
                invalidated,
            } => {
                let mut line = format!("changed  {path}  {}", short(interface));
                for (k, v) in properties {
                    match v {
                        Json::String(s) => line.push_str(&format!("  {k}={s:?}")),
                        other => line.push_str(&format!("  {k}={other}")),
                    }
                }
                for k in invalidated {
                    line.push_str(&format!("  {k}=?"));
                }
                line
            }
            Event::Daemon { running: true } => "daemon   started".to_owned(),
            Event::Daemon { running: false } => "daemon   stopped".to_owned(),
        }
    }
}

type Props = std::collections::HashMap<String, OwnedValue>;

/// The event a signal stands for; `None` for signals monitor does not report.
pub fn event(msg: &zbus::Message) -> Option<Event> {
    let header = msg.header();
    let member = header.member()?.to_string();
    let path = header.path()?.to_string();
    let body = msg.body();
    match member.as_str() {
        "PropertiesChanged" => {
            let (interface, changed, mut invalidated): (String, Props, Vec<String>) =
                body.deserialize().ok()?;
            invalidated.sort();
            Some(Event::Changed {
                path,
                interface,
                properties: changed
                    .iter()
                    .map(|(k, v)| (k.clone(), value_json(v)))
                    .collect(),
                invalidated,
            })
        }
        "InterfacesAdded" => {
            let (object, ifaces): (OwnedObjectPath, std::collections::HashMap<String, Props>) =
                body.deserialize().ok()?;
            let mut interfaces: Vec<String> = ifaces.into_keys().collect();
            interfaces.sort();
            Some(Event::Added {
                path: object.to_string(),
                interfaces,
            })
        }
        "InterfacesRemoved" => {
            let (object, mut interfaces): (OwnedObjectPath, Vec<String>) =
                body.deserialize().ok()?;
            interfaces.sort();
            Some(Event::Removed {
                path: object.to_string(),
                interfaces,
            })
        }
        "NameOwnerChanged" => {
            let (name, _old, new): (String, String, String) = body.deserialize().ok()?;
            (name == api::BUS_NAME).then_some(Event::Daemon {
                running: !new.is_empty(),
            })
        }
        _ => None,
    }
}

/// Prints every change until the connection ends. Fails at once when gpuvirtd is not running,
/// so a typo in the bus address is not mistaken for a quiet host.
pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let (connection, bus) = (ctx.connection, ctx.bus);
    let call_error = |e: zbus::Error| classify(e, bus);
    let signals = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(api::BUS_NAME)
        .map_err(call_error)?
        .build();
    let owner = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .and_then(|b| b.member("NameOwnerChanged"))
        .and_then(|b| b.arg(0, api::BUS_NAME))
        .map_err(call_error)?
        .build();
    // Subscribed before the check below, so nothing between the two is lost.
    let signals = zbus::MessageStream::for_match_rule(signals, connection, Some(4096))
        .await
        .map_err(call_error)?;
    let owner = zbus::MessageStream::for_match_rule(owner, connection, Some(64))
        .await
        .map_err(call_error)?;
    let version = api::ManagerProxy::new(connection)
        .await
        .map_err(call_error)?
        .version()
        .await
        .map_err(call_error)?;
    // On stderr so `--json` output stays pure; it also tells scripts the subscription is live.
    eprintln!("Monitoring gpuvirtd {version} on the {bus}; Ctrl-C to stop");
    let mut stream = futures_util::stream::select(signals, owner);
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let Some(e) = event(&msg) else { continue };
        if json {
            outln!("{}", serde_json::to_string(&e).map_err(CliError::Json)?)?;
        } else {
            outln!("{}", e.line())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_become_plain_json() {
        let mut dict = std::collections::HashMap::new();
        dict.insert("a".to_owned(), 1u32);
        let v = Value::from(dict);
        assert_eq!(value_json(&v), serde_json::json!({"a": 1}));
        assert_eq!(
            value_json(&Value::from(vec!["x", "y"])),
            serde_json::json!(["x", "y"])
        );
        assert_eq!(
            value_json(&Value::from((1u8, "s"))),
            serde_json::json!([1, "s"])
        );
    }

    #[test]
    fn lines_name_the_object_and_the_change() {
        let e = Event::Changed {
            path: "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0".into(),
            interface: api::GPU_INTERFACE.into(),
            properties: [("Driver".to_owned(), Json::from("vfio-pci"))].into(),
            invalidated: vec![],
        };
        assert_eq!(
            e.line(),
            "changed  /org/gpuvirt/GpuVirt1/gpus/0000_41_00_0  Gpu  Driver=\"vfio-pci\""
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap()["event"],
            Json::from("changed")
        );
    }
}
