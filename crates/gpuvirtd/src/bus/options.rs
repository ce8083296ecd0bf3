//! Decoding the `a{sv}` options of the methods into [`Options`]: an unknown key, or a value
//! of another type than its option's (a boolean; a string for `parent`, `type`, `addattr`,
//! `value`, `jsonfile`, `qemu-bus`; a number for `index`, `guest-bus`, `guest-slot`), is InvalidArgs
//! naming it. May import: crate::ops (Options),
//! crate::error.

use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use crate::error::OpError;
use crate::ops::{shown, Options};

/// Reads the `auth.no_user_interaction` option (a boolean); wrong types are the caller's error.
pub fn interactive(options: &HashMap<String, OwnedValue>) -> Result<bool, OpError> {
    match options.get("auth.no_user_interaction") {
        None => Ok(true),
        Some(v) => match **v {
            Value::Bool(b) => Ok(!b),
            _ => Err(OpError::invalid_arg(
                "options",
                "auth.no_user_interaction must be a boolean",
            )),
        },
    }
}

/// Parses `options`, allowing only the keys in `allowed` (and `auth.no_user_interaction`).
pub fn parse_options(
    options: &HashMap<String, OwnedValue>,
    allowed: &[&str],
) -> Result<Options, OpError> {
    let mut parsed = Options {
        interactive: interactive(options)?,
        ..Options::default()
    };
    for (key, value) in options {
        if !allowed.contains(&key.as_str()) && key != "auth.no_user_interaction" {
            return Err(OpError::invalid_arg(
                "options",
                format!(
                    "unknown option '{}'; this method takes: {}",
                    shown(key),
                    allowed
                        .iter()
                        .chain(["auth.no_user_interaction"].iter())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if STRING_OPTIONS.contains(&key.as_str()) {
            // Read by string_option; checked here only for its type.
            string_option(options, key)?;
            continue;
        }
        if NUMBER_OPTIONS.contains(&key.as_str()) {
            // Read by uint_option; checked here only for its type.
            uint_option(options, key)?;
            continue;
        }
        let Value::Bool(b) = **value else {
            return Err(OpError::invalid_arg(
                "options",
                format!(
                    "option '{key}' must be a boolean (b), not {}",
                    value.value_signature()
                ),
            ));
        };
        match key.as_str() {
            "dry-run" => parsed.dry_run = b,
            "force" => parsed.force = b,
            "auto" => parsed.auto = b,
            _ => {}
        }
    }
    Ok(parsed)
}

/// The options whose value is a string (`s`), not a boolean.
const STRING_OPTIONS: [&str; 9] = [
    "parent",
    "type",
    "addattr",
    "value",
    "jsonfile",
    "qemu-bus",
    "graphics",
    "display-backend",
    "render-node",
];

/// The options whose value is an unsigned number.
const NUMBER_OPTIONS: [&str; 3] = ["index", "guest-bus", "guest-slot"];

/// Reads the boolean option `key` when it is present (parse_options checked its type).
pub fn bool_option(options: &HashMap<String, OwnedValue>, key: &str) -> bool {
    matches!(options.get(key).map(|v| &**v), Some(Value::Bool(true)))
}

/// Reads the `index` option of ModifyMdev (see [`uint_option`]).
pub fn index_option(options: &HashMap<String, OwnedValue>) -> Result<Option<u32>, OpError> {
    uint_option(options, "index")
}

/// Reads the boolean option `key`: `None` when absent (parse_options checked its type), for
/// options whose absence means "decide for me".
pub fn tristate_option(options: &HashMap<String, OwnedValue>, key: &str) -> Option<bool> {
    options.get(key).map(|v| matches!(**v, Value::Bool(true)))
}

/// Reads the number option `key` (`index` of ModifyMdev, `guest-bus`, `guest-slot` of
/// RenderHostdev): an unsigned integer (`u`, `t`, `q`, `y`) or a non-negative signed one
/// (`i`, `x`, `n`), as different clients send numbers; `None` when absent.
pub fn uint_option(
    options: &HashMap<String, OwnedValue>,
    key: &str,
) -> Result<Option<u32>, OpError> {
    let Some(v) = options.get(key) else {
        return Ok(None);
    };
    let n: Option<i64> = match **v {
        Value::U8(n) => Some(n.into()),
        Value::U16(n) => Some(n.into()),
        Value::U32(n) => Some(n.into()),
        Value::U64(n) => i64::try_from(n).ok(),
        Value::I16(n) => Some(n.into()),
        Value::I32(n) => Some(n.into()),
        Value::I64(n) => Some(n),
        _ => {
            return Err(OpError::invalid_arg(
                "options",
                format!(
                    "option '{key}' must be an unsigned integer (u), not {}",
                    v.value_signature()
                ),
            ))
        }
    };
    n.and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            OpError::invalid_arg("options", format!("option '{key}' must not be negative"))
        })
}

/// Reads the string option `key` (`parent` of StartMdev and UndefineMdev): `None` when it is
/// absent; any other type than a string is InvalidArgs naming it.
pub fn string_option(
    options: &HashMap<String, OwnedValue>,
    key: &str,
) -> Result<Option<String>, OpError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match &**v {
            Value::Str(s) => Ok(Some(s.as_str().to_owned())),
            other => Err(OpError::invalid_arg(
                "options",
                format!(
                    "option '{key}' must be a string (s), not {}",
                    other.value_signature()
                ),
            )),
        },
    }
}

/// Refuses any option, naming it, for the methods that define none yet (a typo is not
/// silently ignored).
pub fn no_options(method: &str, options: &HashMap<String, OwnedValue>) -> Result<(), OpError> {
    match options.keys().next() {
        Some(name) => Err(OpError::invalid_arg(
            "options",
            format!("unknown option '{}' ({method} takes none)", shown(name)),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gpuvirt_api::CallError;

    use super::*;

    fn opts(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v.clone()).unwrap()))
            .collect()
    }

    fn call_error(r: Result<Options, OpError>) -> CallError {
        r.unwrap_err().into()
    }

    #[test]
    fn options_parse_and_refuse() {
        let o = parse_options(
            &opts(&[
                ("dry-run", Value::Bool(true)),
                ("auth.no_user_interaction", Value::Bool(true)),
            ]),
            &["dry-run"],
        )
        .unwrap();
        assert!(o.dry_run && !o.interactive && !o.force);
        let e = call_error(parse_options(
            &opts(&[("dry-run", Value::from("yes"))]),
            &["dry-run"],
        ));
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(ref m)) if m.contains("dry-run") && m.contains("boolean")),
            "{e}"
        );
        let e = call_error(parse_options(
            &opts(&[("force", Value::Bool(true))]),
            &["dry-run"],
        ));
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(ref m)) if m.contains("unknown option 'force'")),
            "{e}"
        );
        let e = call_error(parse_options(
            &opts(&[("auth.no_user_interaction", Value::U32(1))]),
            &[],
        ));
        assert!(
            matches!(e, CallError::Fdo(zbus::fdo::Error::InvalidArgs(_))),
            "{e}"
        );
    }
}
