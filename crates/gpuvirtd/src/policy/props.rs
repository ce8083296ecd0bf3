//! The policy's served properties: the Manager's policy half (reboot reasons included) and
//! each GPU's `Role`/`PolicyRule`/`OnDemand`/`Owner`, published through the [`PolicyHost`].
//! May import: policy/host.rs, policy/manual.rs, policy/runtime.rs, crate::tree.

use std::collections::BTreeMap;

use gpuvirt_core::plan::boot_wants;
use gpuvirt_core::policy::PolicyOnHost;
use gpuvirt_core::reboot::{self, read_boot_id, BootChangeStore, BootChanges, BootWants, Running};
use gpuvirt_core::{Inventory, PciAddress};

use super::host::PolicyHost;
use super::manual::on_demand;
use super::runtime::PolicyRuntime;
use crate::tree::PolicyFacts;

/// The policy's verdict on every GPU of `inv` (a VF follows its PF); empty with no policy
/// in force, so the GPUs' `Role` and `PolicyRule` read "".
pub(super) fn gpu_facts(rt: &PolicyRuntime, inv: &Inventory) -> BTreeMap<PciAddress, PolicyFacts> {
    let Some(policy) = &rt.policy else {
        return BTreeMap::new();
    };
    let originals = rt.original_drivers();
    inv.gpus
        .keys()
        .filter_map(|&address| {
            let a = policy.assignment_for(inv, &originals, address)?;
            let on_demand = on_demand(policy, &a);
            let rule = a.rule.map(|i| &policy.rules[i]);
            let owner = rule.map_or("gpuvirt", |r| r.owner.as_str());
            let resource_name = rule.and_then(|r| r.resource.clone()).unwrap_or_default();
            Some((
                address,
                PolicyFacts {
                    role: a.role.as_str().to_owned(),
                    rule: a.rule_name.unwrap_or_default(),
                    on_demand,
                    owner: owner.to_owned(),
                    resource_name,
                },
            ))
        })
        .collect()
}

/// Recomputes the reboot reasons and serves the properties (the Manager's and the GPUs'
/// `Role`/`PolicyRule`), emitting what changed.
pub(super) async fn publish(host: &mut impl PolicyHost, rt: &mut PolicyRuntime) {
    let facts = gpu_facts(rt, host.inventory());
    host.set_policy_facts(facts).await;
    let reasons = reboot_reasons(rt, host.inventory());
    rt.props.reboot_required = !reasons.is_empty();
    rt.props.reboot_reasons = reasons;
    let new = rt.props.clone();
    let changed = rt.served.changed(&new);
    rt.served = new.clone();
    if changed.is_empty() {
        return;
    }
    host.publish_policy(new, changed).await;
}

/// Why the running system differs from what the policy wants at boot (see
/// [`gpuvirt_core::reboot`]): boot files changed during this boot (recorded in the state dir
/// under the boot id, so a daemon restart keeps them and a reboot forgets them), blacklisted
/// modules still loaded, early passthrough slots not on vfio-pci, and an IOMMU the policy
/// needs that is off.
fn reboot_reasons(rt: &PolicyRuntime, inv: &Inventory) -> Vec<String> {
    let root = rt.door.root();
    let record = BootChangeStore::new(rt.door.state_dir())
        .load()
        .unwrap_or_else(|e| {
            tracing::warn!("{}", gpuvirt_core::error_chain(&e));
            BootChanges::default()
        });
    let boot_id = read_boot_id(root);
    let wants = match &rt.policy {
        Some(policy) => boot_wants(policy, inv, &rt.original_drivers()),
        None => BootWants::default(),
    };
    reboot::reboot_reasons(
        record.pending(boot_id.as_deref()),
        &wants,
        &Running::read(root, inv),
    )
}

/// Records a boot-time change under the running boot's id, so it stays a reboot reason
/// across daemon restarts until the host has rebooted.
pub(super) fn record_boot_change(rt: &PolicyRuntime, change: String) {
    let store = BootChangeStore::new(rt.door.state_dir());
    let mut record = store.load().unwrap_or_else(|e| {
        tracing::warn!(
            "starting a new boot-change record: {}",
            gpuvirt_core::error_chain(&e)
        );
        BootChanges::default()
    });
    // No boot id (an unusual kernel): recorded under "", which stays pending until one exists.
    record.record(&read_boot_id(rt.door.root()).unwrap_or_default(), change);
    if let Err(e) = store.save(&record) {
        tracing::error!("{}", gpuvirt_core::error_chain(&e));
    }
}
