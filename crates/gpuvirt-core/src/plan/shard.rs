//! Planning a shard card: mdevs, NVIDIA per-VF vGPUs or plain SR-IOV VFs, as its backend
//! offers. May import: crate::model, crate::policy, plan/{action, types, planner}.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::action::Action;
use super::planner::Planner;
use super::types::{mdev_uuid, PlannedAction, RefusalKind};
use crate::model::{PciAddress, PciFunction};
use crate::policy::shard::{shard_offers, ResolveError, ShardBackend, ShardOffer, ShardOffers};
use crate::policy::{describe_gpu, GpuRule, RoleSettings, ShardCount};

impl Planner<'_> {
    pub(super) fn shard(&mut self, gpu: PciAddress, rule: &GpuRule) {
        let RoleSettings::Shard(spec) = &rule.settings else {
            return;
        };
        let desc = describe_gpu(self.inventory, gpu);
        // A card gpuvirt passed through earlier must be back on its driver first; its vGPU
        // parent appears only then, and the next plan creates the vGPUs.
        if self.return_slot(
            gpu,
            Some(&rule.name),
            &format!("rule {:?} shards {desc}", rule.name),
        ) {
            self.notes.push(format!(
                "{gpu}: vGPUs are planned once the card is back on its driver; plan again after applying"
            ));
            return;
        }
        let Some(offers) = shard_offers(self.inventory, gpu) else {
            self.refuse(
                RefusalKind::NotShardable,
                gpu,
                rule,
                format!("{desc} cannot be split: it is no mdev parent and has no SR-IOV"),
            );
            return;
        };
        if !offers.types_known {
            self.creations.push(PlannedAction::new(
                Action::SetSriovNumVfs {
                    pf: gpu,
                    from: 0,
                    to: offers.total_vfs,
                },
                format!(
                    "rule {:?} shards {desc} with NVIDIA per-VF vGPU; its VFs must exist before a type can be set",
                    rule.name
                ),
                Some(&rule.name),
                Some(gpu),
            ));
            self.notes.push(format!(
                "{gpu}: vGPU types are read once its VFs exist; plan again after applying"
            ));
            return;
        }
        let offer = match offers.resolve(&spec.type_spec) {
            Ok(o) => o.clone(),
            Err(e) => {
                let why = match e {
                    ResolveError::Unknown => {
                        format!("{desc} offers no vGPU type {:?}", spec.type_spec)
                    }
                    ResolveError::Ambiguous(n) => format!(
                        "vGPU type {:?} is ambiguous on {desc}: {}",
                        spec.type_spec,
                        n.join(" or ")
                    ),
                };
                self.refuse(
                    RefusalKind::UnknownType,
                    gpu,
                    rule,
                    format!("{why}; types: {}", offers.describe()),
                );
                return;
            }
        };
        let want = match spec.count {
            ShardCount::Count(n) => n,
            ShardCount::Max => offer.capacity,
        };
        match offers.backend {
            ShardBackend::Mdev => self.shard_mdev(gpu, rule, &offers, &offer, want),
            ShardBackend::NvidiaVf => self.shard_nvidia_vf(gpu, rule, &offer, want),
            ShardBackend::Sriov => self.shard_sriov(gpu, rule, want),
        }
    }

    pub(super) fn shard_mdev(
        &mut self,
        gpu: PciAddress,
        rule: &GpuRule,
        offers: &ShardOffers,
        offer: &ShardOffer,
        want: u32,
    ) {
        let Some(parent) = offers.mdev_parent.clone() else {
            return;
        };
        let desc = describe_gpu(self.inventory, gpu);
        let label = offer.label();
        let owned = &self.state.owned_mdevs;
        let on_parent: Vec<&crate::model::Mdev> = self
            .inventory
            .mdevs
            .values()
            .filter(|m| m.parent == parent)
            .collect();
        // gpuvirt's mdevs of another type came from an earlier policy: they only take room.
        let freed = self.remove_owned_vgpus(
            gpu,
            Some(&rule.name),
            &format!(
                "rule {:?} wants only {label} on {desc}; gpuvirt created this one of another type",
                rule.name
            ),
            |m| m.type_id.as_deref() != Some(offer.id.as_str()),
        );
        let wanted: Vec<Uuid> = (0..want)
            .map(|i| mdev_uuid(&rule.name, &parent, i))
            .collect();
        let present: Vec<&crate::model::Mdev> = on_parent
            .iter()
            .copied()
            .filter(|m| m.type_id.as_deref() == Some(offer.id.as_str()))
            .collect();
        let have = present.len() as u32;
        if have > want {
            let mut surplus = have - want;
            // gpuvirt's own, those not among the wanted UUIDs first.
            let mut removable: Vec<&crate::model::Mdev> = present
                .iter()
                .copied()
                .filter(|m| owned.contains(&m.uuid) && !wanted.contains(&m.uuid))
                .collect();
            removable.sort_by_key(|m| m.uuid);
            for m in removable.into_iter().take(surplus as usize) {
                surplus -= 1;
                self.remove_surplus(
                    Action::RemoveMdev {
                        parent: parent.clone(),
                        type_id: m.type_id.clone(),
                        uuid: m.uuid,
                    },
                    rule,
                    gpu,
                    format!("{want} × {label} on {desc}; {have} exist"),
                );
            }
            if surplus > 0 {
                self.refuse(
                    RefusalKind::NotOwned,
                    gpu,
                    rule,
                    format!(
                        "{desc} has {have} × {label}, {surplus} more than wanted, and gpuvirt did not create the extra ones; they are left alone"
                    ),
                );
            }
            return;
        }
        let missing = want - have;
        if missing == 0 {
            return;
        }
        let room = offer.capacity.saturating_sub(offer.existing) + freed as u32;
        let taken: BTreeSet<Uuid> = self.inventory.mdevs.keys().copied().collect();
        let creatable: Vec<(u32, Uuid)> = wanted
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, u)| !taken.contains(u))
            .map(|(i, u)| (i as u32, u))
            .take(missing.min(room) as usize)
            .collect();
        for (i, uuid) in &creatable {
            self.creations.push(PlannedAction::new(
                Action::CreateMdev {
                    parent: parent.clone(),
                    type_id: offer.id.clone(),
                    type_name: offer.name.clone(),
                    uuid: *uuid,
                },
                format!(
                    "rule {:?} wants {want} × {label} on {desc}; {have} exist (this is instance {})",
                    rule.name,
                    i + 1
                ),
                Some(&rule.name),
                Some(gpu),
            ));
        }
        let short = missing - creatable.len() as u32;
        if short > 0 {
            self.refuse(
                RefusalKind::NoCapacity,
                gpu,
                rule,
                format!(
                    "{desc} has room for {room} more {label} but rule {:?} wants {missing} more; types: {}",
                    rule.name,
                    offers.describe()
                ),
            );
        }
    }

    pub(super) fn shard_nvidia_vf(
        &mut self,
        gpu: PciAddress,
        rule: &GpuRule,
        offer: &ShardOffer,
        want: u32,
    ) {
        let desc = describe_gpu(self.inventory, gpu);
        let label = offer.label();
        let Ok(type_id) = offer.id.parse::<u32>() else {
            return;
        };
        let vfs: Vec<&PciFunction> = self
            .inventory
            .functions
            .get(&gpu)
            .and_then(|f| f.sriov.as_ref())
            .map(|s| {
                s.vfs
                    .iter()
                    .filter_map(|a| self.inventory.functions.get(a))
                    .collect()
            })
            .unwrap_or_default();
        let owned = &self.state.owned_vgpu_vfs;
        let current = |f: &PciFunction| f.nvidia_vgpu.as_ref().and_then(|v| v.current_type);
        // gpuvirt's vGPUs of another type came from an earlier policy.
        for vf in vfs.iter().filter(|f| owned.contains(&f.address)) {
            if let Some(t) = current(vf).filter(|t| *t != type_id) {
                self.removals.push(PlannedAction::new(
                    Action::ClearVgpuType { vf: vf.address, type_id: t },
                    format!("rule {:?} wants only {label} on {desc}; gpuvirt created this vGPU of another type", rule.name),
                    Some(&rule.name),
                    Some(gpu),
                ));
            }
        }
        let present: Vec<&&PciFunction> =
            vfs.iter().filter(|f| current(f) == Some(type_id)).collect();
        let have = present.len() as u32;
        if have > want {
            let mut surplus = have - want;
            for vf in present.iter().rev().filter(|f| owned.contains(&f.address)) {
                if surplus == 0 {
                    break;
                }
                surplus -= 1;
                self.remove_surplus(
                    Action::ClearVgpuType {
                        vf: vf.address,
                        type_id,
                    },
                    rule,
                    gpu,
                    format!("{want} × {label} on {desc}; {have} exist"),
                );
            }
            if surplus > 0 {
                self.refuse(
                    RefusalKind::NotOwned,
                    gpu,
                    rule,
                    format!("{desc} has {surplus} more {label} than wanted that gpuvirt did not create; they are left alone"),
                );
            }
            return;
        }
        let missing = (want - have) as usize;
        let free: Vec<&&PciFunction> = vfs
            .iter()
            .filter(|f| {
                f.nvidia_vgpu.as_ref().is_some_and(|v| {
                    v.current_type.is_none() && v.creatable_types.iter().any(|t| t.id == type_id)
                })
            })
            .take(missing)
            .collect();
        for vf in &free {
            self.creations.push(PlannedAction::new(
                Action::SetVgpuType {
                    vf: vf.address,
                    type_id,
                    type_name: offer.name.clone(),
                },
                format!(
                    "rule {:?} wants {want} × {label} on {desc}; {have} exist",
                    rule.name
                ),
                Some(&rule.name),
                Some(gpu),
            ));
        }
        if free.len() < missing {
            self.refuse(
                RefusalKind::NoCapacity,
                gpu,
                rule,
                format!(
                    "{desc} has {} free VFs that can take {label} but rule {:?} wants {missing} more",
                    free.len(),
                    rule.name
                ),
            );
        }
    }

    pub(super) fn shard_sriov(&mut self, gpu: PciAddress, rule: &GpuRule, want: u32) {
        let desc = describe_gpu(self.inventory, gpu);
        let Some(sriov) = self
            .inventory
            .functions
            .get(&gpu)
            .and_then(|f| f.sriov.as_ref())
        else {
            return;
        };
        let have = sriov.num_vfs;
        if have == want {
            return;
        }
        if have != 0 && !self.state.owned_sriov.contains(&gpu) {
            self.refuse(
                RefusalKind::NotOwned,
                gpu,
                rule,
                format!("{desc} has {have} VFs that gpuvirt did not enable; changing the count to {want} would remove them"),
            );
            return;
        }
        let action = PlannedAction::new(
            Action::SetSriovNumVfs {
                pf: gpu,
                from: have,
                to: want,
            },
            format!(
                "rule {:?} wants {want} VFs on {desc}; {have} exist",
                rule.name
            ),
            Some(&rule.name),
            Some(gpu),
        );
        if want < have {
            self.removals.push(action);
        } else {
            self.creations.push(action);
        }
    }
}
