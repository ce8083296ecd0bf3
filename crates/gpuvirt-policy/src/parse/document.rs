//! The top of a policy file: `version`, `default_role`, `enforcement`, `[host]` and the
//! `[[gpu]]` array (each rule is parsed by parse/rule.rs), and duplicate rule names.
//! May import: crate::{diagnostic, types}, parse/parser.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{Item, Key, TableLike, Value};

use super::parser::{is_module_name, quoted, Found, Parser, HOST_KEYS, MODULE_ALLOWED, TOP_KEYS};
use crate::diagnostic::{suggest, Severity, SourceMap};
use crate::types::{Enforcement, GpuRule, HostSettings, Policy, Role, POLICY_VERSION};

impl Parser {
    pub(super) fn document(&mut self, root: &toml_edit::Table) -> Policy {
        self.unknown_keys(root, "", "the policy", TOP_KEYS);
        let version = match self.get(root, "", "version") {
            None => {
                self.error_at(
                    0..0,
                    "version",
                    "missing key `version`: the policy must say which format it uses".into(),
                    Some(format!("version = {POLICY_VERSION}")),
                );
                POLICY_VERSION
            }
            Some(found) => match found.item.as_integer() {
                Some(POLICY_VERSION) => POLICY_VERSION,
                Some(other) => {
                    self.error_at(
                        found.span.clone(),
                        "version",
                        format!("policy format version {other} is not supported by this gpuvirt"),
                        Some(format!("{POLICY_VERSION}")),
                    );
                    other
                }
                None => {
                    self.type_error(&found, "an integer", Some(format!("{POLICY_VERSION}")));
                    POLICY_VERSION
                }
            },
        };
        let default_role = match self.get(root, "", "default_role") {
            None => Role::Unmanaged,
            Some(found) => {
                let allowed = "\"unmanaged\", \"host\"".to_string();
                match self.string(&found, Some(allowed.clone())) {
                    Some("unmanaged") => Role::Unmanaged,
                    Some("host") => Role::Host,
                    Some(other) => {
                        let why = if Role::from_name(other).is_some() {
                            format!(
                                "default_role {} is not allowed: a card that no rule names cannot be given one (it needs a rule with its settings)",
                                quoted(other)
                            )
                        } else {
                            format!("unknown default_role {}", quoted(other))
                        };
                        self.error_at(found.span.clone(), "default_role", why, Some(allowed));
                        Role::Unmanaged
                    }
                    None => Role::Unmanaged,
                }
            }
        };
        let enforcement = match self.get(root, "", "enforcement") {
            None => Enforcement::Enforce,
            Some(found) => {
                let allowed = "\"enforce\", \"monitor\"".to_string();
                match self.string(&found, Some(allowed.clone())) {
                    Some("enforce") => Enforcement::Enforce,
                    Some("monitor") => Enforcement::Monitor,
                    Some(other) => {
                        let hint = suggest(other, &["enforce", "monitor"])
                            .map(|s| format!("; did you mean \"{s}\"?"))
                            .unwrap_or_default();
                        self.error_at(
                            found.span.clone(),
                            "enforcement",
                            format!("unknown enforcement mode {}{hint}", quoted(other)),
                            Some(allowed),
                        );
                        Enforcement::Enforce
                    }
                    None => Enforcement::Enforce,
                }
            }
        };
        let host = match self.get(root, "", "host") {
            None => HostSettings::default(),
            Some(found) => match self.table(&found, HOST_KEYS) {
                Some(t) => self.host(t),
                None => HostSettings::default(),
            },
        };
        let rules = match self.get(root, "", "gpu") {
            None => Vec::new(),
            Some(found) => self.rules(&found),
        };
        self.duplicate_names();
        Policy {
            version,
            default_role,
            enforcement,
            host,
            rules,
            warnings: Vec::new(),
            source: SourceMap::new("", ""),
            locations: BTreeMap::new(),
        }
    }

    pub(super) fn host(&mut self, table: &dyn TableLike) -> HostSettings {
        self.unknown_keys(table, "host", "[host]", HOST_KEYS);
        let mut host = HostSettings::default();
        if let Some(found) = self.get(table, "host", "blacklist") {
            match found.item.as_array() {
                Some(array) => {
                    for (i, v) in array.iter().enumerate() {
                        let path = format!("host.blacklist[{i}]");
                        let span = v.span().unwrap_or(found.span.clone());
                        match v.as_str() {
                            Some(m) if is_module_name(m) => host.blacklist.push(m.to_string()),
                            _ => {
                                let shown = self.shown(&span);
                                self.error_at(
                                    span,
                                    &path,
                                    format!("{shown} is not a kernel module name"),
                                    Some(MODULE_ALLOWED.into()),
                                );
                            }
                        }
                    }
                }
                None => self.type_error(
                    &found,
                    "an array of module names",
                    Some("blacklist = [\"nouveau\"]".into()),
                ),
            }
        }
        if let Some(found) = self.get(table, "host", "options") {
            if let Some(options) = self.table(&found, &["<module> = \"<options>\""]) {
                for (module, _) in options.iter() {
                    let Some(value) = self.get(options, "host.options", module) else {
                        continue;
                    };
                    let key_span = options.key(module).and_then(Key::span).unwrap_or(0..0);
                    if !is_module_name(module) {
                        self.error_at(
                            key_span,
                            &value.path,
                            format!("{} is not a kernel module name", quoted(module)),
                            Some(MODULE_ALLOWED.into()),
                        );
                        continue;
                    }
                    let allowed = Some(
                        "module parameters as one string, e.g. nouveau = \"modeset=0\"".to_string(),
                    );
                    if let Some(text) = self.string(&value, allowed.clone()) {
                        if text.contains('\n') || text.trim().is_empty() {
                            self.error_at(
                                value.span.clone(),
                                &value.path,
                                format!("options for {module} must be one non-empty line"),
                                allowed,
                            );
                        } else {
                            host.options
                                .insert(module.to_string(), text.trim().to_string());
                        }
                    }
                }
            }
        }
        host
    }

    pub(super) fn rules(&mut self, found: &Found<'_>) -> Vec<GpuRule> {
        // `[[gpu]]` tables, or `gpu = [{ … }, …]` inline tables: both are arrays of tables.
        let tables: Vec<(&dyn TableLike, Range<usize>)> = match found.item {
            Item::ArrayOfTables(a) => a
                .iter()
                .map(|t| (t as &dyn TableLike, t.span().unwrap_or(found.span.clone())))
                .collect(),
            Item::Value(Value::Array(a)) if a.iter().all(|v| v.is_inline_table()) => a
                .iter()
                .filter_map(|v| {
                    v.as_inline_table()
                        .map(|t| (t as &dyn TableLike, v.span().unwrap_or(found.span.clone())))
                })
                .collect(),
            _ => {
                self.type_error(found, "an array of tables ([[gpu]] sections)", None);
                return Vec::new();
            }
        };
        let mut rules = Vec::new();
        for (i, (table, span)) in tables.into_iter().enumerate() {
            let prefix = format!("gpu[{i}]");
            let loc = self.map.locate(span.clone());
            self.locations.insert(prefix.clone(), loc);
            if let Some(rule) = self.rule(table, &prefix, span) {
                rules.push(rule);
            }
        }
        rules
    }

    /// Reports every rule name already used by an earlier rule.
    pub(super) fn duplicate_names(&mut self) {
        let mut first: BTreeMap<String, usize> = BTreeMap::new();
        let names = std::mem::take(&mut self.names);
        for (path, name, loc) in names {
            match first.get(&name) {
                Some(line) => {
                    let d = self.map.diagnostic(
                        Severity::Error,
                        &loc,
                        &path,
                        format!(
                            "duplicate rule name {}: already used by the rule on line {line}",
                            quoted(&name)
                        ),
                        Some("a name used by no other rule".into()),
                    );
                    self.diagnostics.push(d);
                }
                None => {
                    first.insert(name, loc.line);
                }
            }
        }
    }
}
