//! Syntax and schema: walks a `toml_edit` document (which keeps byte spans) into a typed
//! [`Policy`], collecting every problem with its position instead of stopping at the first.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, TableLike, Value};

use super::diagnostic::{suggest, Location, PolicyDiagnostic, Severity, SourceMap};
use super::{
    EarlyMethod, Enforcement, GpuRule, HostSettings, Match, Policy, Role, RoleSettings, ShardCount,
    ShardSpec, POLICY_VERSION,
};
use crate::model::PciAddress;

const TOP_KEYS: &[&str] = &["version", "default_role", "enforcement", "host", "gpu"];
const HOST_KEYS: &[&str] = &["blacklist", "options"];
const RULE_KEYS: &[&str] = &[
    "name",
    "match",
    "role",
    "early",
    "early_method",
    "shard",
    "allow_boot_vga",
];
const MATCH_KEYS: &[&str] = &[
    "address",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "name",
    "driver",
    "boot_vga",
];
const SHARD_KEYS: &[&str] = &["type", "count"];
const ROLES: &str = "\"host\", \"passthrough\", \"shard\", \"unmanaged\"";
const ID_ALLOWED: &str =
    "four hex digits as a string (\"10de\", \"0x10de\") or an integer (0x10de)";
const NAME_ALLOWED: &str =
    "letters, digits, '-', '_' and '.', starting with a letter or digit (at most 64)";
const MODULE_ALLOWED: &str = "a kernel module name: letters, digits, '_' and '-'";

pub(super) fn parse(text: &str, file_name: &str) -> Result<Policy, Vec<PolicyDiagnostic>> {
    let map = SourceMap::new(file_name, text);
    let mut p = Parser {
        map,
        diagnostics: Vec::new(),
        locations: BTreeMap::new(),
        names: Vec::new(),
    };
    let root_location = p.map.locate(0..0);
    p.locations.insert(String::new(), root_location);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let loc = p.map.locate(span);
            let message = format!("the file is not valid TOML: {}", e.message().trim_end());
            let d = p.map.diagnostic(Severity::Error, &loc, "", message, None);
            return Err(vec![d]);
        }
    };
    let policy = p.document(doc.as_table());
    let mut diagnostics = p.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostics.iter().any(PolicyDiagnostic::is_error) {
        return Err(diagnostics);
    }
    let mut policy = policy;
    policy.warnings = diagnostics;
    policy.source = p.map;
    policy.locations = p.locations;
    Ok(policy)
}

struct Parser {
    map: SourceMap,
    diagnostics: Vec<PolicyDiagnostic>,
    locations: BTreeMap<String, Location>,
    /// Rule names as parsed, in file order: key path, name, location.
    names: Vec<(String, String, Location)>,
}

/// A value found under a key: the item, its key path and where it is.
struct Found<'t> {
    item: &'t Item,
    path: String,
    span: Range<usize>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// "a string", "an integer", …: what the file holds, for type errors.
fn kind(item: &Item) -> &'static str {
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

fn is_rule_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

impl Parser {
    fn error_at(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        allowed: Option<String>,
    ) {
        let loc = self.map.locate(span);
        let d = self
            .map
            .diagnostic(Severity::Error, &loc, path, message, allowed);
        self.diagnostics.push(d);
    }

    fn warn_at(
        &mut self,
        span: Range<usize>,
        path: &str,
        message: String,
        allowed: Option<String>,
    ) {
        let loc = self.map.locate(span);
        let d = self
            .map
            .diagnostic(Severity::Warning, &loc, path, message, allowed);
        self.diagnostics.push(d);
    }

    /// The source text of a span, shortened for messages.
    fn shown(&self, span: &Range<usize>) -> String {
        let text = self.map_text(span).trim();
        let first_line = text.lines().next().unwrap_or("");
        if first_line.chars().count() > 60 || first_line.len() < text.len() {
            let short: String = first_line.chars().take(57).collect();
            format!("{short}...")
        } else {
            first_line.to_string()
        }
    }

    fn map_text(&self, span: &Range<usize>) -> &str {
        self.map_source().get(span.clone()).unwrap_or("")
    }

    fn map_source(&self) -> &str {
        self.map.text()
    }

    /// Reports keys of `table` not in `allowed`, with a suggestion.
    fn unknown_keys(
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
    fn get<'t>(&mut self, table: &'t dyn TableLike, prefix: &str, key: &str) -> Option<Found<'t>> {
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

    fn type_error(&mut self, found: &Found<'_>, expected: &str, allowed: Option<String>) {
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

    fn string<'t>(&mut self, found: &Found<'t>, allowed: Option<String>) -> Option<&'t str> {
        match found.item.as_str() {
            Some(s) => Some(s),
            None => {
                self.type_error(found, "a string", allowed);
                None
            }
        }
    }

    fn boolean(&mut self, found: &Found<'_>) -> Option<bool> {
        match found.item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(found, "a boolean", Some("true, false".into()));
                None
            }
        }
    }

    fn table<'t>(&mut self, found: &Found<'t>, allowed: &[&str]) -> Option<&'t dyn TableLike> {
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

    fn document(&mut self, root: &toml_edit::Table) -> Policy {
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

    fn host(&mut self, table: &dyn TableLike) -> HostSettings {
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

    fn rules(&mut self, found: &Found<'_>) -> Vec<GpuRule> {
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

    fn rule(&mut self, table: &dyn TableLike, prefix: &str, span: Range<usize>) -> Option<GpuRule> {
        self.unknown_keys(table, prefix, "a [[gpu]] rule", RULE_KEYS);
        let name = match self.get(table, prefix, "name") {
            None => {
                self.error_at(
                    span.clone(),
                    &join(prefix, "name"),
                    "missing key `name`: every [[gpu]] rule needs a name (it is reported as the rule behind each action)".into(),
                    Some(NAME_ALLOWED.into()),
                );
                None
            }
            Some(found) => match self.string(&found, Some(NAME_ALLOWED.into())) {
                Some(n) if is_rule_name(n) => {
                    let loc = self.map.locate(found.span.clone());
                    self.names.push((found.path.clone(), n.to_string(), loc));
                    Some(n.to_string())
                }
                Some(n) => {
                    self.error_at(
                        found.span.clone(),
                        &found.path,
                        format!("rule name {} is not allowed", quoted(n)),
                        Some(NAME_ALLOWED.into()),
                    );
                    None
                }
                None => None,
            },
        };
        let matcher = match self.get(table, prefix, "match") {
            None => {
                self.error_at(
                    span.clone(),
                    &join(prefix, "match"),
                    "missing key `match`: a rule must say which cards it is for".into(),
                    Some(format!("match = {{ {} }}", MATCH_KEYS.join(", "))),
                );
                None
            }
            Some(found) => self
                .table(&found, MATCH_KEYS)
                .and_then(|t| self.matcher(t, &found)),
        };
        let role = match self.get(table, prefix, "role") {
            None => {
                self.error_at(
                    span.clone(),
                    &join(prefix, "role"),
                    "missing key `role`: a rule must say what its cards are for".into(),
                    Some(ROLES.into()),
                );
                None
            }
            Some(found) => match self.string(&found, Some(ROLES.into())) {
                Some(r) => match Role::from_name(r) {
                    Some(role) => Some(role),
                    None => {
                        let names: Vec<&str> = Role::ALL.iter().map(Role::as_str).collect();
                        let hint = suggest(r, &names)
                            .map(|s| format!("; did you mean \"{s}\"?"))
                            .unwrap_or_default();
                        self.error_at(
                            found.span.clone(),
                            &found.path,
                            format!("unknown role {}{hint}", quoted(r)),
                            Some(ROLES.into()),
                        );
                        None
                    }
                },
                None => None,
            },
        };

        let early = self.get(table, prefix, "early");
        let early_value = early.as_ref().and_then(|f| self.boolean(f));
        let early_method = self.get(table, prefix, "early_method");
        let method_allowed = "\"driver-override\", \"modprobe\"".to_string();
        let early_method_value = early_method.as_ref().and_then(|f| {
            match self.string(f, Some(method_allowed.clone())) {
                Some("driver-override") => Some(EarlyMethod::DriverOverride),
                Some("modprobe") => Some(EarlyMethod::Modprobe),
                Some(other) => {
                    let hint = suggest(other, &["driver-override", "modprobe"])
                        .map(|s| format!("; did you mean \"{s}\"?"))
                        .unwrap_or_default();
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("unknown early_method {}{hint}", quoted(other)),
                        Some(method_allowed.clone()),
                    );
                    None
                }
                None => None,
            }
        });
        let shard = self.get(table, prefix, "shard");
        let shard_value = shard
            .as_ref()
            .and_then(|f| self.table(f, SHARD_KEYS).map(|t| (t, f)))
            .and_then(|(t, f)| self.shard(t, f));
        let allow_boot_vga = self.get(table, prefix, "allow_boot_vga");
        let allow_boot_vga_value = allow_boot_vga.as_ref().and_then(|f| self.boolean(f));

        // Settings that belong to another role are mistakes, not silently ignored.
        if let Some(role) = role {
            if role != Role::Passthrough {
                for found in [&early, &early_method].into_iter().flatten() {
                    self.error_at(
                        found.span.clone(),
                        &found.path,
                        format!(
                            "`{}` only applies to role = \"passthrough\", not \"{role}\"",
                            found.path.rsplit('.').next().unwrap_or("")
                        ),
                        Some(format!("for role \"{role}\": {}", role_keys(role))),
                    );
                }
                if let Some(found) = &allow_boot_vga {
                    self.warn_at(
                        found.span.clone(),
                        &found.path,
                        format!("`allow_boot_vga` has no effect with role = \"{role}\": only passthrough detaches a card from the host"),
                        None,
                    );
                }
            }
            if role != Role::Shard {
                if let Some(found) = &shard {
                    self.error_at(
                        found.span.clone(),
                        &found.path,
                        format!("`shard` only applies to role = \"shard\", not \"{role}\""),
                        Some(format!("for role \"{role}\": {}", role_keys(role))),
                    );
                }
            } else if shard.is_none() {
                self.error_at(
                    span.clone(),
                    &join(prefix, "shard"),
                    "missing key `shard`: role = \"shard\" needs the vGPU type and how many".into(),
                    Some("shard = { type = \"GRID V100-8C\", count = 2 }".into()),
                );
            }
            if role == Role::Passthrough && early_value != Some(true) {
                if let (Some(found), Some(_)) = (&early_method, early_method_value) {
                    self.warn_at(
                        found.span.clone(),
                        &found.path,
                        "`early_method` has no effect unless early = true".into(),
                        None,
                    );
                }
            }
        }

        let name = name?;
        let matcher = matcher?;
        let settings = match role? {
            Role::Host => RoleSettings::Host,
            Role::Unmanaged => RoleSettings::Unmanaged,
            Role::Passthrough => RoleSettings::Passthrough {
                early: early_value.unwrap_or(false),
                early_method: early_method_value.unwrap_or_default(),
            },
            Role::Shard => RoleSettings::Shard(shard_value?),
        };
        Some(GpuRule {
            name,
            matcher,
            settings,
            allow_boot_vga: allow_boot_vga_value.unwrap_or(false),
        })
    }

    fn matcher(&mut self, table: &dyn TableLike, found: &Found<'_>) -> Option<Match> {
        let prefix = found.path.as_str();
        self.unknown_keys(table, prefix, "`match`", MATCH_KEYS);
        let mut m = Match::default();
        let mut ok = true;
        if let Some(f) = self.get(table, prefix, "address") {
            let allowed =
                Some("a PCI function address DDDD:BB:DD.F, e.g. \"0000:41:00.0\"".to_string());
            match self.string(&f, allowed.clone()) {
                Some(s) => match s.parse::<PciAddress>() {
                    Ok(a) => m.address = Some(a),
                    Err(_) => {
                        ok = false;
                        self.error_at(
                            f.span.clone(),
                            &f.path,
                            format!("{} is not a PCI address", quoted(s)),
                            allowed,
                        );
                    }
                },
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("vendor", &mut m.vendor),
            ("device", &mut m.device),
            ("subsystem_vendor", &mut m.subsystem_vendor),
            ("subsystem_device", &mut m.subsystem_device),
        ] {
            if let Some(f) = self.get(table, prefix, key) {
                match self.pci_id(&f) {
                    Some(id) => *slot = Some(id),
                    None => ok = false,
                }
            }
        }
        if let Some(f) = self.get(table, prefix, "name") {
            let allowed = Some("a glob over the pci.ids product name, e.g. \"*V100*\" (`*` and `?` are wildcards, case is ignored)".to_string());
            match self.string(&f, allowed.clone()) {
                Some(s) if !s.trim().is_empty() => m.name = Some(s.to_string()),
                Some(_) => {
                    ok = false;
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        "`name` must not be empty".into(),
                        allowed,
                    );
                }
                None => ok = false,
            }
        }
        if let Some(f) = self.get(table, prefix, "driver") {
            match self.string(&f, Some(MODULE_ALLOWED.into())) {
                Some(s) if is_module_name(s) => m.driver = Some(s.to_string()),
                Some(s) => {
                    ok = false;
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("{} is not a driver name", quoted(s)),
                        Some(MODULE_ALLOWED.into()),
                    );
                }
                None => ok = false,
            }
        }
        if let Some(f) = self.get(table, prefix, "boot_vga") {
            match self.boolean(&f) {
                Some(b) => m.boot_vga = Some(b),
                None => ok = false,
            }
        }
        if ok && m.is_empty() && table.iter().all(|(k, _)| MATCH_KEYS.contains(&k)) {
            self.error_at(
                found.span.clone(),
                &found.path,
                "`match` is empty: a rule that matches every card is what default_role is for"
                    .into(),
                Some(MATCH_KEYS.join(", ")),
            );
            ok = false;
        }
        ok.then_some(m)
    }

    fn pci_id(&mut self, f: &Found<'_>) -> Option<u16> {
        match f.item.as_value() {
            Some(Value::String(s)) => {
                let text = s.value();
                let digits = text
                    .strip_prefix("0x")
                    .or_else(|| text.strip_prefix("0X"))
                    .unwrap_or(text);
                if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    u16::from_str_radix(digits, 16).ok()
                } else {
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("{} is not a PCI id", quoted(text)),
                        Some(ID_ALLOWED.into()),
                    );
                    None
                }
            }
            Some(Value::Integer(i)) => match u16::try_from(*i.value()) {
                Ok(id) => Some(id),
                Err(_) => {
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("{} is out of range for a PCI id", i.value()),
                        Some(ID_ALLOWED.into()),
                    );
                    None
                }
            },
            _ => {
                self.type_error(f, "a PCI id", Some(ID_ALLOWED.into()));
                None
            }
        }
    }

    fn shard(&mut self, table: &dyn TableLike, found: &Found<'_>) -> Option<ShardSpec> {
        let prefix = found.path.as_str();
        self.unknown_keys(table, prefix, "`shard`", SHARD_KEYS);
        let type_allowed = "a type id (\"nvidia-300\"), name (\"GRID V100-8C\") or short name (\"V100-8C\"); \"vf\" for plain SR-IOV".to_string();
        let type_spec = match self.get(table, prefix, "type") {
            None => {
                self.error_at(
                    found.span.clone(),
                    &join(prefix, "type"),
                    "missing key `shard.type`: which vGPU type to create".into(),
                    Some(type_allowed),
                );
                None
            }
            Some(f) => match self.string(&f, Some(type_allowed.clone())) {
                Some(s) if !s.trim().is_empty() && !s.contains(['/', '\n', '\0']) => {
                    Some(s.trim().to_string())
                }
                Some(s) => {
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("{} is not a vGPU type", quoted(s)),
                        Some(type_allowed),
                    );
                    None
                }
                None => None,
            },
        };
        let count_allowed = "a whole number from 1 up, or \"max\"".to_string();
        let count = match self.get(table, prefix, "count") {
            None => {
                self.error_at(
                    found.span.clone(),
                    &join(prefix, "count"),
                    "missing key `shard.count`: how many vGPUs to create".into(),
                    Some(count_allowed),
                );
                None
            }
            Some(f) => match f.item.as_value() {
                Some(Value::Integer(i)) => match u32::try_from(*i.value()) {
                    Ok(n) if n >= 1 => Some(ShardCount::Count(n)),
                    _ => {
                        self.error_at(
                            f.span.clone(),
                            &f.path,
                            format!("count {} is not allowed (to have no vGPUs, give the card role \"host\")", i.value()),
                            Some(count_allowed),
                        );
                        None
                    }
                },
                Some(Value::String(s)) if s.value() == "max" => Some(ShardCount::Max),
                Some(Value::String(s)) => {
                    self.error_at(
                        f.span.clone(),
                        &f.path,
                        format!("count {} is not allowed", quoted(s.value())),
                        Some(count_allowed),
                    );
                    None
                }
                _ => {
                    self.type_error(&f, "an integer or \"max\"", Some(count_allowed));
                    None
                }
            },
        };
        Some(ShardSpec {
            type_spec: type_spec?,
            count: count?,
        })
    }

    /// Reports every rule name already used by an earlier rule.
    fn duplicate_names(&mut self) {
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

fn role_keys(role: Role) -> &'static str {
    match role {
        Role::Passthrough => "name, match, role, early, early_method, allow_boot_vga",
        Role::Shard => "name, match, role, shard",
        Role::Host | Role::Unmanaged => "name, match, role",
    }
}
