//! The policy parser's state ([`Parser`]), the key lists and the typed getters every part
//! of the parse uses (a value under a key, its type checked, with positioned diagnostics).
//! May import: crate::diagnostic.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{Item, Key, TableLike, Value};

use crate::diagnostic::{suggest, Location, PolicyDiagnostic, Severity, SourceMap};

pub(super) const TOP_KEYS: &[&str] = &["version", "default_role", "enforcement", "host", "gpu"];
pub(super) const HOST_KEYS: &[&str] = &["blacklist", "options"];
pub(super) const RULE_KEYS: &[&str] = &[
    "name",
    "match",
    "role",
    "early",
    "on_demand",
    "early_method",
    "shard",
    "allow_boot_vga",
    "owner",
    "resource",
];
pub(super) const MATCH_KEYS: &[&str] = &[
    "address",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "name",
    "driver",
    "boot_vga",
];
pub(super) const SHARD_KEYS: &[&str] = &["type", "count"];
pub(super) const ROLES: &str = "\"host\", \"passthrough\", \"shard\", \"unmanaged\"";
pub(super) const OWNERS: &str = "\"gpuvirt\", \"kubevirt\", \"nova\", \"proxmox\", \"external\"";
pub(super) const ID_ALLOWED: &str =
    "four hex digits as a string (\"10de\", \"0x10de\") or an integer (0x10de)";
pub(super) const NAME_ALLOWED: &str =
    "letters, digits, '-', '_' and '.', starting with a letter or digit (at most 64)";
pub(super) const MODULE_ALLOWED: &str = "a kernel module name: letters, digits, '_' and '-'";

pub(super) struct Parser {
    pub(super) map: SourceMap,
    pub(super) diagnostics: Vec<PolicyDiagnostic>,
    pub(super) locations: BTreeMap<String, Location>,
    /// Rule names as parsed, in file order: key path, name, location.
    pub(super) names: Vec<(String, String, Location)>,
}

/// A value found under a key: the item, its key path and where it is.
pub(super) struct Found<'t> {
    pub(super) item: &'t Item,
    pub(super) path: String,
    pub(super) span: Range<usize>,
}

pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// "a string", "an integer", …: what the file holds, for type errors.
pub(super) fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "a table",
        },
    }
}

pub(super) fn is_rule_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

impl Parser {
    pub(super) fn error_at(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        allowed: Option<String>,
    ) {
        self.diagnose(Severity::Error, span, path, message, allowed);
    }

    pub(super) fn warn_at(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        allowed: Option<String>,
    ) {
        self.diagnose(Severity::Warning, span, path, message, allowed);
    }

    fn diagnose(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        path: &str,
        message: String,
        allowed: Option<String>,
    ) {
        let loc = self.map.locate(span);
        let d = self.map.diagnostic(severity, &loc, path, message, allowed);
        self.diagnostics.push(d);
    }

    /// The source text of a span, shortened for messages.
    pub(super) fn shown(&self, span: &Range<usize>) -> String {
        let text = self.map_text(span).trim();
        let first_line = text.lines().next().unwrap_or("");
        if first_line.chars().count() > 60 || first_line.len() < text.len() {
            let short: String = first_line.chars().take(57).collect();
            format!("{short}...")
        } else {
            first_line.to_string()
        }
    }

    pub(super) fn map_text(&self, span: &Range<usize>) -> &str {
        self.map_source().get(span.clone()).unwrap_or("")
    }

    pub(super) fn map_source(&self) -> &str {
        self.map.text()
    }

    /// Reports keys of `table` not in `allowed`, with a suggestion.
    pub(super) fn unknown_keys(
        &mut self,
        table: &dyn TableLike,
        prefix: &str,
        context: &str,
        allowed: &[&str],
    ) {
        let unknown: Vec<(String, Option<Range<usize>>)> = table
            .iter()
            .filter(|(k, _)| !allowed.contains(k))
            .map(|(k, _)| (k.to_string(), table.key(k).and_then(Key::span)))
            .collect();
        for (key, span) in unknown {
            let span = span.unwrap_or(0..0);
            let hint = match suggest(&key, allowed) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => String::new(),
            };
            self.error_at(
                span,
                &join(prefix, &key),
                format!("unknown key `{key}` in {context}{hint}"),
                Some(allowed.join(", ")),
            );
        }
    }

    /// Looks `key` up, records where its value is, and returns it.
    pub(super) fn get<'t>(
        &mut self,
        table: &'t dyn TableLike,
        prefix: &str,
        key: &str,
    ) -> Option<Found<'t>> {
        let (k, item) = table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        let span = item.span().or_else(|| k.span()).unwrap_or(0..0);
        let path = join(prefix, key);
        let loc = self.map.locate(span.clone());
        self.locations.insert(path.clone(), loc);
        Some(Found { item, path, span })
    }

    pub(super) fn type_error(
        &mut self,
        found: &Found<'_>,
        expected: &str,
        allowed: Option<String>,
    ) {
        let shown = self.shown(&found.span);
        self.error_at(
            found.span.clone(),
            &found.path,
            format!(
                "`{}` must be {expected}, found {} ({shown})",
                found.path,
                kind(found.item)
            ),
            allowed,
        );
    }

    pub(super) fn string<'t>(
        &mut self,
        found: &Found<'t>,
        allowed: Option<String>,
    ) -> Option<&'t str> {
        match found.item.as_str() {
            Some(s) => Some(s),
            None => {
                self.type_error(found, "a string", allowed);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, found: &Found<'_>) -> Option<bool> {
        match found.item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(found, "a boolean", Some("true, false".into()));
                None
            }
        }
    }

    pub(super) fn table<'t>(
        &mut self,
        found: &Found<'t>,
        allowed: &[&str],
    ) -> Option<&'t dyn TableLike> {
        match found.item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.type_error(
                    found,
                    "a table",
                    Some(format!("a table with keys {}", allowed.join(", "))),
                );
                None
            }
        }
    }
}
