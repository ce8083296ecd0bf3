//! The decoded options and string arguments of the mutating methods. The bus edge turns the
//! `a{sv}` into [`Options`]; the rest is checked here, first of all the checks.
//! May import: crate::error.

use uuid::Uuid;

use crate::error::OpError;

/// The `a{sv}` options of mutating methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub dry_run: bool,
    pub force: bool,
    pub interactive: bool,
    /// `auto` of DefineMdev (start when the parent appears); default true.
    pub auto: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            force: false,
            interactive: true,
            auto: true,
        }
    }
}

/// Longest mdev type id or name accepted: the path-component limit. A longer one can name no
/// type, and refusing it here keeps a caller's megabyte out of the UnknownType error text.
const MAX_TYPE_SPEC: usize = 128;

pub(super) fn check_type_spec(type_spec: &str) -> Result<(), OpError> {
    if type_spec.trim().is_empty() {
        return Err(OpError::invalid_arg(
            "type",
            "empty; give a type id or name",
        ));
    }
    if type_spec.len() > MAX_TYPE_SPEC {
        return Err(OpError::invalid_arg(
            "type",
            format!(
                "{} bytes is longer than any mdev type id or name (at most {MAX_TYPE_SPEC})",
                type_spec.len()
            ),
        ));
    }
    Ok(())
}

/// Parses the UUID argument `argument`, quoting at most 64 characters of a bad one.
pub fn parse_uuid(argument: &str, text: &str) -> Result<Uuid, OpError> {
    text.parse()
        .map_err(|_| OpError::invalid_arg(argument, format!("'{}' is not a UUID", shown(text))))
}

/// A caller's text shortened for an error message: a megabyte is not echoed back.
pub fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}
