//! Which rule governs each GPU: every matching rule is considered, the first in file order
//! governs, and matching rules that disagree on role or settings put the card in conflict.
//! Companion functions of a slot follow their GPU; SR-IOV virtual functions follow their PF.
//!
//! The functions here are the bodies of [`PolicyOnHost`](super::PolicyOnHost)'s methods (the
//! policy's types live in gpuvirt-policy, so the core adds to them through that trait).
//!
//! May import: crate::model, gpuvirt_policy (the types).

use std::collections::BTreeMap;

use serde::Serialize;

use gpuvirt_policy::{Match, Policy, Role};

use crate::model::{Inventory, PciAddress, PciFunction};

/// Drivers gpuvirt rebound, by function: the driver it found there (`None`: unbound). Matching
/// by `driver` uses these so a card does not stop matching once it sits on vfio-pci.
pub type OriginalDrivers = BTreeMap<PciAddress, Option<String>>;

/// The verdict for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub gpu: PciAddress,
    /// The governing rule's role, or the policy's default role when no rule matches.
    pub role: Role,
    /// Index into [`Policy::rules`] of the governing rule.
    pub rule: Option<usize>,
    /// The governing rule's name.
    pub rule_name: Option<String>,
    /// Other matching rules that give the card a different role or settings.
    pub conflicts: Vec<usize>,
}

impl Assignment {
    pub fn in_conflict(&self) -> bool {
        !self.conflicts.is_empty()
    }
}

/// Whether the function fits every key of `m`. `original_driver` is the driver gpuvirt found
/// before rebinding the function, when it did.
fn matches(m: &Match, f: &PciFunction, original_driver: Option<&Option<String>>) -> bool {
    if m.address.is_some_and(|a| a != f.address) {
        return false;
    }
    let ids = &f.ids;
    if m.vendor.is_some_and(|v| v != ids.vendor)
        || m.device.is_some_and(|v| v != ids.device)
        || m.subsystem_vendor
            .is_some_and(|v| v != ids.subsystem_vendor)
        || m.subsystem_device
            .is_some_and(|v| v != ids.subsystem_device)
    {
        return false;
    }
    if let Some(pattern) = &m.name {
        match &f.device_name {
            Some(name) if glob_matches(pattern, name) => {}
            _ => return false,
        }
    }
    if let Some(want) = &m.driver {
        let effective = match original_driver {
            Some(original) => original.as_deref(),
            None => f.driver.as_deref(),
        };
        if effective != Some(want.as_str()) {
            return false;
        }
    }
    if let Some(want) = m.boot_vga {
        if f.boot_vga.unwrap_or(false) != want {
            return false;
        }
    }
    true
}

/// Case-insensitive glob with `*` (any run) and `?` (one character); everything else is
/// literal (pci.ids names contain brackets).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The GPUs a policy governs: display functions that are not SR-IOV virtual functions.
pub fn governed_gpus(inventory: &Inventory) -> impl Iterator<Item = &PciFunction> {
    inventory
        .gpus
        .keys()
        .filter_map(|a| inventory.functions.get(a))
        .filter(|f| f.physfn.is_none())
}

/// Indices of the rules whose match fits `gpu`, in file order.
pub(super) fn matching_rules(
    policy: &Policy,
    gpu: &PciFunction,
    original_drivers: &OriginalDrivers,
) -> Vec<usize> {
    let original = original_drivers.get(&gpu.address);
    policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| matches(&r.matcher, gpu, original))
        .map(|(i, _)| i)
        .collect()
}

/// The verdict for every governed GPU of the inventory.
pub(super) fn assign(
    policy: &Policy,
    inventory: &Inventory,
    original_drivers: &OriginalDrivers,
) -> BTreeMap<PciAddress, Assignment> {
    governed_gpus(inventory)
        .map(|f| (f.address, assign_gpu(policy, f, original_drivers)))
        .collect()
}

fn assign_gpu(
    policy: &Policy,
    gpu: &PciFunction,
    original_drivers: &OriginalDrivers,
) -> Assignment {
    let matching = matching_rules(policy, gpu, original_drivers);
    let Some((&first, rest)) = matching.split_first() else {
        return Assignment {
            gpu: gpu.address,
            role: policy.default_role,
            rule: None,
            rule_name: None,
            conflicts: Vec::new(),
        };
    };
    let governing = &policy.rules[first];
    let conflicts = rest
        .iter()
        .copied()
        .filter(|&i| policy.rules[i].settings != governing.settings)
        .collect();
    Assignment {
        gpu: gpu.address,
        role: governing.role(),
        rule: Some(first),
        rule_name: Some(governing.name.clone()),
        conflicts,
    }
}

/// The verdict for any PCI function: a GPU's own, its slot's GPU's for a companion, the
/// physical function's for a virtual function; `None` for functions no GPU owns.
pub(super) fn assignment_for(
    policy: &Policy,
    inventory: &Inventory,
    original_drivers: &OriginalDrivers,
    function: PciAddress,
) -> Option<Assignment> {
    let f = inventory.functions.get(&function)?;
    if let Some(pf) = f.physfn {
        return assignment_for(policy, inventory, original_drivers, pf);
    }
    let gpu = if inventory.gpus.contains_key(&function) {
        function
    } else {
        inventory
            .gpus
            .values()
            .find(|g| g.companions.contains(&function))?
            .address
    };
    let gpu = inventory.functions.get(&gpu)?;
    Some(assign_gpu(policy, gpu, original_drivers))
}

/// A GPU's one-line description for messages: `0000:41:00.0 (GV100GL [Tesla V100 PCIe 16GB])`.
pub(crate) fn describe_gpu(inventory: &Inventory, address: PciAddress) -> String {
    match inventory
        .functions
        .get(&address)
        .and_then(|f| f.device_name.as_deref())
    {
        Some(name) => format!("{address} ({name})"),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_pci_ids_names() {
        let name = "GV100GL [Tesla V100 PCIe 16GB]";
        assert!(glob_matches("*V100*", name));
        assert!(glob_matches("gv100gl [tesla v100 pcie ??gb]", name));
        assert!(glob_matches("*", name));
        assert!(!glob_matches("*A100*", name));
        assert!(!glob_matches("V100*", name));
        assert!(glob_matches("*16GB]", name));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "x"));
    }
}
