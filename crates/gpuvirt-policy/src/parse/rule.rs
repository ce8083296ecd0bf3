//! One `[[gpu]]` rule: its name, `match`, role and role settings (passthrough, shard).
//! May import: gpuvirt_types (PciAddress), crate::{diagnostic, types}, parse/parser.

use std::ops::Range;

use gpuvirt_types::PciAddress;
use toml_edit::{TableLike, Value};

use super::parser::{
    is_module_name, is_rule_name, join, quoted, Found, Parser, ID_ALLOWED, MATCH_KEYS,
    MODULE_ALLOWED, NAME_ALLOWED, OWNERS, ROLES, RULE_KEYS, SHARD_KEYS,
};
use crate::diagnostic::suggest;
use crate::types::{
    resource_name_problem, EarlyMethod, GpuRule, Match, Owner, Role, RoleSettings, ShardCount,
    ShardSpec,
};

impl Parser {
    pub(super) fn rule(
        &mut self,
        table: &dyn TableLike,
        prefix: &str,
        span: Range<usize>,
    ) -> Option<GpuRule> {
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
        let owner = self.owner(table, prefix);
        let role = match self.get(table, prefix, "role") {
            // Another engine's card has no gpuvirt role: gpuvirt only observes it. (After a
            // bad owner, whether a role was needed is unknown: one error is enough.)
            None if owner.is_none_or(|o| !o.is_gpuvirt()) => Some(Role::Unmanaged),
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

        if let (Some(owner), Some(role)) = (owner, role) {
            if !owner.is_gpuvirt() && role != Role::Unmanaged {
                if let Some(found) = self.get(table, prefix, "role") {
                    self.error_at(
                        found.span.clone(),
                        &found.path,
                        format!(
                            "role = \"{role}\" contradicts owner = \"{owner}\": a card {owner} \
                             owns is only observed by gpuvirt, which never binds, creates or \
                             removes anything on it"
                        ),
                        Some(
                            "drop `role` (or set role = \"unmanaged\"), or owner = \"gpuvirt\""
                                .into(),
                        ),
                    );
                }
            }
        }

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
        let on_demand = self.get(table, prefix, "on_demand");
        let on_demand_value = on_demand.as_ref().and_then(|f| self.boolean(f));
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
                for found in [&early, &early_method, &on_demand].into_iter().flatten() {
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
            // On demand, the card stays with the host until a VM takes it: keeping host
            // drivers off it from boot contradicts that.
            if role == Role::Passthrough
                && on_demand_value == Some(true)
                && early_value == Some(true)
            {
                if let Some(found) = &early {
                    self.error_at(
                        found.span.clone(),
                        &found.path,
                        "`early = true` contradicts on_demand = true: an on-demand card stays \
                         with the host until a VM that uses it starts"
                            .into(),
                        Some("one of early = true, on_demand = true".into()),
                    );
                }
            }
            // The hook assigns an on-demand card with gpuvirtd's AssignPassthrough, which
            // never takes the boot GPU: the allowance would promise what no one does.
            if role == Role::Passthrough && on_demand_value == Some(true) {
                if let Some(found) = &allow_boot_vga {
                    self.warn_at(
                        found.span.clone(),
                        &found.path,
                        "`allow_boot_vga` has no effect with on_demand = true: the libvirt \
                         hook assigns with AssignPassthrough, which never takes the boot GPU"
                            .into(),
                        None,
                    );
                }
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

        let resource = self.resource(table, prefix);
        let name = name?;
        let matcher = matcher?;
        let owner = owner?;
        let resource = resource?;
        let settings = match role? {
            Role::Host => RoleSettings::Host,
            Role::Unmanaged => RoleSettings::Unmanaged,
            Role::Passthrough => RoleSettings::Passthrough {
                early: early_value.unwrap_or(false),
                early_method: early_method_value.unwrap_or_default(),
                on_demand: on_demand_value.unwrap_or(false),
            },
            Role::Shard => RoleSettings::Shard(shard_value?),
        };
        Some(GpuRule {
            name,
            matcher,
            settings,
            allow_boot_vga: allow_boot_vga_value.unwrap_or(false),
            owner,
            resource,
        })
    }

    /// The rule's `resource` (absent: `Some(None)`); `None` after an error.
    fn resource(&mut self, table: &dyn TableLike, prefix: &str) -> Option<Option<String>> {
        let Some(found) = self.get(table, prefix, "resource") else {
            return Some(None);
        };
        let allowed =
            "a Kubernetes extended resource name <domain>/<name>, e.g. \"example.com/vdi-v100\"";
        let name = self.string(&found, Some(allowed.into()))?;
        match resource_name_problem(name) {
            None => Some(Some(name.to_owned())),
            Some(problem) => {
                self.error_at(
                    found.span.clone(),
                    &found.path,
                    format!("resource {} is not allowed: {problem}", quoted(name)),
                    Some(allowed.into()),
                );
                None
            }
        }
    }

    /// The rule's `owner` (absent: gpuvirt); `None` after an error.
    fn owner(&mut self, table: &dyn TableLike, prefix: &str) -> Option<Owner> {
        let Some(found) = self.get(table, prefix, "owner") else {
            return Some(Owner::Gpuvirt);
        };
        let name = self.string(&found, Some(OWNERS.into()))?;
        match Owner::from_name(name) {
            Some(owner) => Some(owner),
            None => {
                let names: Vec<&str> = Owner::ALL.iter().map(Owner::as_str).collect();
                let hint = suggest(name, &names)
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                self.error_at(
                    found.span.clone(),
                    &found.path,
                    format!("unknown owner {}{hint}", quoted(name)),
                    Some(OWNERS.into()),
                );
                None
            }
        }
    }

    pub(super) fn matcher(&mut self, table: &dyn TableLike, found: &Found<'_>) -> Option<Match> {
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

    pub(super) fn pci_id(&mut self, f: &Found<'_>) -> Option<u16> {
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

    pub(super) fn shard(&mut self, table: &dyn TableLike, found: &Found<'_>) -> Option<ShardSpec> {
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
}

pub(super) fn role_keys(role: Role) -> &'static str {
    match role {
        Role::Passthrough => {
            "name, match, role, early, early_method, on_demand, allow_boot_vga, owner, resource"
        }
        Role::Shard => "name, match, role, shard, owner, resource",
        Role::Host | Role::Unmanaged => "name, match, role, owner, resource",
    }
}
