//! Semantic checks of a parsed policy against a live inventory, reported at the positions of
//! the rules concerned: the host-dependent rules (which GPUs each rule matches, rules that
//! disagree on one card, what a card can be split into). Every rule that needs no host is the
//! parser's, in gpuvirt-policy, so `gpuvirtctl policy check` makes it without a daemon.
//!
//! May import: crate::model, gpuvirt_policy, policy/{matching, shard}.

use gpuvirt_policy::{
    EarlyMethod, Policy, PolicyDiagnostic, Role, RoleSettings, Severity, ShardCount,
};

use super::matching::{assign, describe_gpu, governed_gpus, matching_rules, OriginalDrivers};
use super::shard::{shard_offers, ResolveError};
use crate::model::Inventory;

pub(super) fn validate(policy: &Policy, inventory: &Inventory) -> Vec<PolicyDiagnostic> {
    let mut out = Vec::new();
    let none = OriginalDrivers::new();
    let assignments = assign(policy, inventory, &none);
    let line_of = |i: usize| policy.location(&format!("gpu[{i}]")).line;

    for (i, rule) in policy.rules.iter().enumerate() {
        let prefix = format!("gpu[{i}]");
        let matched: Vec<_> = governed_gpus(inventory)
            .filter(|f| matching_rules(policy, f, &none).contains(&i))
            .collect();
        if matched.is_empty() {
            out.push(policy.diagnostic(
                Severity::Warning,
                &format!("{prefix}.match"),
                format!(
                    "rule {:?} matches no GPU on this host{}",
                    rule.name,
                    no_match_hint(policy, i, inventory)
                ),
                None,
            ));
        }
        if let RoleSettings::Passthrough {
            early: true,
            early_method: EarlyMethod::Modprobe,
            ..
        } = rule.settings
        {
            // vfio-pci's ids= option binds every card with those ids, not just this rule's.
            for f in &matched {
                let caught: Vec<String> = governed_gpus(inventory)
                    .filter(|o| o.ids.vendor == f.ids.vendor && o.ids.device == f.ids.device)
                    .filter(|o| {
                        assignments
                            .get(&o.address)
                            .is_none_or(|a| a.role != Role::Passthrough)
                    })
                    .map(|o| describe_gpu(inventory, o.address))
                    .collect();
                if !caught.is_empty() {
                    out.push(policy.diagnostic(
                        Severity::Error,
                        &format!("{prefix}.early_method"),
                        format!(
                            "early_method = \"modprobe\" binds vfio-pci by id {:04x}:{:04x} at boot, which would also take {}, not passed through by this policy",
                            f.ids.vendor,
                            f.ids.device,
                            caught.join(", ")
                        ),
                        Some("\"driver-override\" (binds per slot)".into()),
                    ));
                }
            }
        }
    }

    for a in assignments.values() {
        let Some(governing) = a.rule else { continue };
        let gpu = describe_gpu(inventory, a.gpu);
        for &other in &a.conflicts {
            let (first, second) = (&policy.rules[governing], &policy.rules[other]);
            let what = if first.role() == second.role() {
                format!("different {} settings", first.role())
            } else {
                format!(
                    "different roles ({:?} and {:?})",
                    first.role().as_str(),
                    second.role().as_str()
                )
            };
            out.push(policy.diagnostic(
                Severity::Error,
                &format!("gpu[{other}].match"),
                format!(
                    "rules {:?} (line {}) and {:?} both match {gpu} but give it {what}",
                    first.name,
                    line_of(governing),
                    second.name
                ),
                Some("matches that overlap only where rules agree; narrow one (e.g. by address or boot_vga = false)".into()),
            ));
        }
        if a.in_conflict() {
            continue;
        }
        let rule = &policy.rules[governing];
        let RoleSettings::Shard(spec) = &rule.settings else {
            continue;
        };
        let prefix = format!("gpu[{governing}]");
        let Some(offers) = shard_offers(inventory, a.gpu) else {
            out.push(policy.diagnostic(
                Severity::Error,
                &format!("{prefix}.shard"),
                format!("rule {:?} shards {gpu}, which cannot be split (it is no mdev parent and has no SR-IOV)", rule.name),
                Some("role \"host\", \"passthrough\" or \"unmanaged\" for this card".into()),
            ));
            continue;
        };
        if !offers.types_known {
            // NVIDIA per-VF cards list their types only once VFs exist; the planner enables
            // them and the type is checked on the next pass.
            continue;
        }
        let offer = match offers.resolve(&spec.type_spec) {
            Ok(o) => o,
            Err(e) => {
                let why = match e {
                    ResolveError::Unknown => format!(
                        "{gpu} offers no vGPU type {:?} ({} backend)",
                        spec.type_spec,
                        offers.backend.as_str()
                    ),
                    ResolveError::Ambiguous(names) => format!(
                        "vGPU type {:?} is ambiguous on {gpu}: it could be {}",
                        spec.type_spec,
                        names.join(" or ")
                    ),
                };
                out.push(policy.diagnostic(
                    Severity::Error,
                    &format!("{prefix}.shard.type"),
                    why,
                    Some(format!("types of {}: {}", a.gpu, offers.describe())),
                ));
                continue;
            }
        };
        match spec.count {
            ShardCount::Count(n) if n > offer.capacity => out.push(policy.diagnostic(
                Severity::Error,
                &format!("{prefix}.shard.count"),
                format!(
                    "count {n} is more than {gpu} can hold of {}: {}",
                    offer.label(),
                    offer.capacity
                ),
                Some(if offer.capacity == 0 {
                    format!("none left; types of {}: {}", a.gpu, offers.describe())
                } else {
                    format!("1 to {}, or \"max\"", offer.capacity)
                }),
            )),
            ShardCount::Max if offer.capacity == 0 => out.push(policy.diagnostic(
                Severity::Error,
                &format!("{prefix}.shard.count"),
                format!("{gpu} can hold no {} now", offer.label()),
                Some(format!("types of {}: {}", a.gpu, offers.describe())),
            )),
            _ => {}
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    out
}

/// Why an address match finds nothing, when the address names a function that is not a GPU.
fn no_match_hint(policy: &Policy, rule: usize, inventory: &Inventory) -> String {
    let Some(address) = policy.rules[rule].matcher.address else {
        return String::new();
    };
    let Some(f) = inventory.functions.get(&address) else {
        return format!(" (there is no PCI function {address})");
    };
    if let Some(pf) = f.physfn {
        return format!(
            " ({address} is a virtual function of {pf}; it follows its physical function)"
        );
    }
    if let Some(gpu) = inventory
        .gpus
        .values()
        .find(|g| g.companions.contains(&address))
    {
        return format!(
            " ({address} is not a GPU but a companion of {}; match the GPU, its slot follows it)",
            gpu.address
        );
    }
    if !f.is_display() {
        return format!(" ({address} is not a GPU: class {:#08x})", f.class);
    }
    String::new()
}
