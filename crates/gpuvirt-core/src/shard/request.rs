//! Manual shard requests (create and remove, as D-Bus and the CLI make them) checked against
//! the live inventory and the ownership ledger, and turned into [`Action`]s or a refusal.
//!
//! Removal rule: gpuvirt removes only what its ledger says it created. An mdev made by
//! mdevctl, libvirt or anything else is removed only with `force`, and the caller must pass
//! `force` only when a person asked for it on a card the policy leaves `unmanaged` (design.md
//! §1: manual operations are allowed on those only). These functions do not see the policy, so
//! that check is the caller's.
//!
//! May import: crate::model, crate::plan::action, crate::policy::shard, crate::state::{ledger,
//! mdevctl}, shard/parent.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::parent::{free_vfs_for, shard_parent, ShardError};
use crate::model::{Inventory, PciAddress};
use crate::plan::Action;
use crate::policy::shard::ShardBackend as Backend;
use crate::state::ledger::Ledger;
pub use crate::state::ledger::Owner;
use crate::state::mdevctl::MdevctlConfig;

/// Who owns the mdev `uuid`: gpuvirt when its ledger records the creation; mdevctl when an
/// mdevctl config names the UUID, or the ledger holds one imported from mdevctl; else other.
pub fn owner_of(uuid: &Uuid, ledger: &Ledger, mdevctl: &[MdevctlConfig]) -> Owner {
    if ledger.owns_mdev(uuid) {
        Owner::Gpuvirt
    } else if ledger.mdevs.contains_key(uuid) || mdevctl.iter().any(|c| c.uuid == *uuid) {
        Owner::Mdevctl
    } else {
        Owner::Other
    }
}

/// Plans `count` new vGPUs of `type_spec` (id or name, see
/// [`super::ShardParent::resolve_type`]) on `parent`, with `uuid` for a single mdev (a random
/// v4 UUID otherwise, as mdevctl does).
///
/// Refuses, touching nothing, when the parent or type is unknown, the UUID is taken
/// (`AlreadyExists`), or the parent has no room (`NoCapacity`, naming the capacity). For NVIDIA
/// per-VF cards the vGPUs go to the first free VFs that list the type; plain SR-IOV enables
/// `count` VFs on a PF that has none.
pub fn plan_create(
    inventory: &Inventory,
    parent: &str,
    type_spec: &str,
    uuid: Option<Uuid>,
    count: u32,
) -> Result<Vec<Action>, ShardError> {
    if count == 0 {
        return Err(ShardError::InvalidRequest {
            reason: "the count must be at least 1".to_string(),
        });
    }
    if uuid.is_some() && count != 1 {
        return Err(ShardError::InvalidRequest {
            reason: format!("a UUID names one mdev, but {count} were requested"),
        });
    }
    let parent = shard_parent(inventory, parent)?;
    let no_uuid = |what: &str| ShardError::NotSupported {
        parent: parent.name.clone(),
        reason: format!("{what} have no UUID; leave it out"),
    };
    match parent.backend {
        Backend::Mdev => {
            let t = parent.resolve_type(type_spec)?;
            if let Some(u) = uuid {
                // The mdev bus is host-wide: the kernel refuses a UUID in use on any parent.
                if let Some(existing) = inventory.mdevs.get(&u) {
                    return Err(ShardError::AlreadyExists {
                        uuid: u,
                        parent: existing.parent.clone(),
                    });
                }
            }
            if t.available < count {
                return Err(parent.no_capacity(t, count));
            }
            let mut taken: BTreeSet<Uuid> = inventory.mdevs.keys().copied().collect();
            let uuids: Vec<Uuid> = match uuid {
                Some(u) => vec![u],
                None => (0..count)
                    .map(|_| loop {
                        let u = Uuid::new_v4();
                        if taken.insert(u) {
                            break u;
                        }
                    })
                    .collect(),
            };
            Ok(uuids
                .into_iter()
                .map(|uuid| Action::CreateMdev {
                    parent: parent.name.clone(),
                    type_id: t.id.clone(),
                    type_name: t.name.clone(),
                    uuid,
                })
                .collect())
        }
        Backend::NvidiaVf => {
            if uuid.is_some() {
                return Err(no_uuid("NVIDIA per-VF vGPUs are addressed by their VF and"));
            }
            let t = parent.resolve_type(type_spec)?;
            let type_id: u32 = t.id.parse().map_err(|_| ShardError::UnknownType {
                parent: parent.name.clone(),
                spec: type_spec.to_string(),
                choices: parent.choices(),
            })?;
            let free = free_vfs_for(inventory, &parent, type_id);
            if (free.len() as u64) < u64::from(count) {
                return Err(parent.no_capacity(t, count));
            }
            Ok(free
                .into_iter()
                .take(count as usize)
                .map(|vf| Action::SetVgpuType {
                    vf,
                    type_id,
                    type_name: t.name.clone(),
                })
                .collect())
        }
        Backend::Sriov => {
            if uuid.is_some() {
                return Err(no_uuid("SR-IOV VFs"));
            }
            let t = parent.resolve_type(type_spec)?;
            if parent.num_vfs != 0 {
                return Err(ShardError::NotSupported {
                    parent: parent.name.clone(),
                    reason: format!(
                        "it has {} VFs enabled and the kernel changes the count only through 0, \
                         which would remove them; disable them first",
                        parent.num_vfs
                    ),
                });
            }
            if t.available < count {
                return Err(parent.no_capacity(t, count));
            }
            let pf = parent.pci_address.ok_or_else(|| ShardError::NotSupported {
                parent: parent.name.clone(),
                reason: "it is not a PCI function".to_string(),
            })?;
            Ok(vec![Action::SetSriovNumVfs {
                pf,
                from: 0,
                to: count,
            }])
        }
    }
}

/// Plans removing the active mdev `uuid`. See the module documentation for `force`.
pub fn plan_remove(
    inventory: &Inventory,
    ledger: &Ledger,
    uuid: Uuid,
    force: bool,
) -> Result<Vec<Action>, ShardError> {
    let mdev = inventory
        .mdevs
        .get(&uuid)
        .ok_or(ShardError::NoSuchMdev { uuid })?;
    let owner = owner_of(&uuid, ledger, &[]);
    if owner != Owner::Gpuvirt && !force {
        return Err(ShardError::NotOwned {
            what: format!("mdev {uuid} on {}", mdev.parent),
            owner,
        });
    }
    Ok(vec![Action::RemoveMdev {
        parent: mdev.parent.clone(),
        type_id: mdev.type_id.clone(),
        uuid,
    }])
}

/// Plans destroying the NVIDIA vGPU on `vf` (writing 0 to `current_vgpu_type`). gpuvirt owns it
/// when its ledger records the VF; otherwise as [`plan_remove`].
pub fn plan_remove_vgpu(
    inventory: &Inventory,
    ledger: &Ledger,
    vf: PciAddress,
    force: bool,
) -> Result<Vec<Action>, ShardError> {
    let type_id = inventory
        .functions
        .get(&vf)
        .and_then(|f| f.nvidia_vgpu.as_ref())
        .and_then(|v| v.current_type)
        .ok_or(ShardError::NoSuchVgpu { vf })?;
    if !ledger.vgpus.contains_key(&vf) && !force {
        return Err(ShardError::NotOwned {
            what: format!("the vGPU of type {type_id} on {vf}"),
            owner: Owner::Other,
        });
    }
    Ok(vec![Action::ClearVgpuType { vf, type_id }])
}
