//! Manual operations against the policy: a card the policy manages (any role but
//! `unmanaged`) is refused to the mutating API, naming the rule and the way out; a card whose
//! passthrough rule says `on_demand = true` may still be moved whole (AssignPassthrough,
//! ReturnToHost: what the libvirt hook does when a VM starts and stops). A card whose rule
//! names another `owner` (kubevirt, nova, proxmox, external) is refused every manual
//! operation, on_demand or not: one writer per device.
//! May import: policy/runtime.rs, crate::error.

use gpuvirt_core::policy::matching::OriginalDrivers;
use gpuvirt_core::policy::{Assignment, Owner, Policy, PolicyOnHost, Role};
use gpuvirt_core::{Inventory, PciAddress};

use super::runtime::PolicyRuntime;
use crate::error::{ErrorKind, OpError};

/// A manual operation the policy forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error(
        "{address} is managed by policy rule {rule:?} (role {role}) of {file}: the policy makes \
         the changes on cards it manages, so manual operations on them are refused; to operate on \
         it by hand, change that rule or give the card role = \"unmanaged\", then reload the policy"
    )]
    Managed {
        address: PciAddress,
        rule: String,
        role: Role,
        /// The policy file, so the way out names the file to edit.
        file: String,
    },
    #[error(
        "{address} is owned by {owner} (policy rule {rule:?} of {file}): gpuvirt only observes \
         a card another engine manages and never binds, creates or removes anything on it; make \
         the change through {owner}, or set owner = \"gpuvirt\" in that rule and reload the policy"
    )]
    OwnedElsewhere {
        address: PciAddress,
        owner: Owner,
        rule: String,
        file: String,
    },
}

/// What a manual operation touches; the card behind it is looked up in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualSubject {
    /// A function of a card (the GPU, a companion function) whose whole slot goes to
    /// vfio-pci or back (AssignPassthrough, ReturnToHost): allowed also where the card's
    /// passthrough rule says `on_demand = true`.
    Slot(PciAddress),
    /// An mdev parent by its `mdev_bus` name (a PCI address for PCI parents).
    MdevParent(String),
    /// An active mdev: its parent's card.
    Mdev(uuid::Uuid),
}

impl ManualSubject {
    /// The PCI function behind the subject; `None` when it is not in the inventory (an
    /// absent parent, a gone mdev, a non-PCI parent): no card, so no rule governs it.
    fn address(&self, inv: &Inventory) -> Option<PciAddress> {
        let parent = |name: &str| {
            inv.mdev_parents
                .get(name)
                .and_then(|p| p.pci_address)
                .or_else(|| name.parse().ok())
        };
        match self {
            ManualSubject::Slot(a) => Some(*a),
            ManualSubject::MdevParent(name) => parent(name),
            ManualSubject::Mdev(u) => inv.mdevs.get(u).and_then(|m| parent(&m.parent)),
        }
    }
}

impl From<PolicyViolation> for OpError {
    fn from(v: PolicyViolation) -> Self {
        OpError::new(ErrorKind::PolicyViolation, v.to_string())
    }
}

/// Whether the card's governing rule passes it through on demand; rules in conflict leave the
/// card as it is, to the policy and to hands alike.
pub(super) fn on_demand(policy: &Policy, a: &Assignment) -> bool {
    !a.in_conflict() && a.rule.is_some_and(|i| policy.rules[i].on_demand())
}

/// Refuses a manual operation on `address` (a GPU, a companion function, a VF or an mdev
/// parent's PCI address) when the policy manages the card, naming the rule; with `slot`, a
/// card whose rule passes it through on demand is allowed. `originals` is what the ledger the
/// operation read records (the one read it makes).
fn check_manual(
    rt: &PolicyRuntime,
    inv: &Inventory,
    originals: &OriginalDrivers,
    address: PciAddress,
    slot: bool,
) -> Result<(), PolicyViolation> {
    let Some(policy) = &rt.policy else {
        return Ok(());
    };
    let Some(a) = policy.assignment_for(inv, originals, address) else {
        return Ok(());
    };
    let owner = a.rule.map_or(Owner::Gpuvirt, |i| policy.rules[i].owner);
    if !owner.is_gpuvirt() {
        return Err(PolicyViolation::OwnedElsewhere {
            address,
            owner,
            rule: a.rule_name.unwrap_or_default(),
            file: rt.path.display().to_string(),
        });
    }
    if a.role == Role::Unmanaged {
        return Ok(());
    }
    if slot && on_demand(policy, &a) {
        return Ok(());
    }
    Err(PolicyViolation::Managed {
        address,
        rule: a
            .rule_name
            .unwrap_or_else(|| format!("default_role = \"{}\"", a.role)),
        role: a.role,
        file: rt.path.display().to_string(),
    })
}

/// [`check_manual`] for every subject a mutating method touches; with no runtime (the daemon
/// runs without the policy) everything is allowed.
pub fn check_manual_subjects(
    rt: Option<&PolicyRuntime>,
    inv: &Inventory,
    originals: &OriginalDrivers,
    subjects: &[ManualSubject],
) -> Result<(), PolicyViolation> {
    let Some(rt) = rt else {
        return Ok(());
    };
    for subject in subjects {
        if let Some(address) = subject.address(inv) {
            let slot = matches!(subject, ManualSubject::Slot(_));
            check_manual(rt, inv, originals, address, slot)?;
        }
    }
    Ok(())
}
