//! What a card can be split into: its sharding backend (mdev, NVIDIA per-VF vGPU, plain
//! SR-IOV) and the types it offers with how many of each it can hold, read off an inventory.
//!
//! May import: crate::model, crate::state::vgpu_names.

use serde::Serialize;

use crate::model::{Inventory, PciAddress};

/// How a card is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShardBackend {
    /// `mdev_supported_types/<type>/create` on the card's mdev parent.
    Mdev,
    /// NVIDIA vGPU 17+ on Ada/Hopper-class cards: enable VFs, then `<VF>/nvidia/current_vgpu_type`.
    NvidiaVf,
    /// Plain SR-IOV virtual functions (`sriov_numvfs`).
    Sriov,
}

impl ShardBackend {
    pub fn as_str(&self) -> &'static str {
        match self {
            ShardBackend::Mdev => "mdev",
            ShardBackend::NvidiaVf => "nvidia-vf",
            ShardBackend::Sriov => "sriov",
        }
    }
}

/// The type id plain SR-IOV cards offer.
pub const SRIOV_VF_TYPE: &str = "vf";

/// One type a card offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardOffer {
    /// mdev type id (`nvidia-300`), NVIDIA vGPU type id (`557`) or `vf`.
    pub id: String,
    pub name: Option<String>,
    /// How many of this type the card can hold now: those that exist plus those that can
    /// still be created.
    pub capacity: u32,
    /// How many of this type exist on the card now.
    pub existing: u32,
}

impl ShardOffer {
    /// `nvidia-300 (GRID V100-8C)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) if *name != self.id => format!("{} ({name})", self.id),
            _ => self.id.clone(),
        }
    }
}

/// A card's backend and offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardOffers {
    pub backend: ShardBackend,
    /// The mdev parent's `mdev_bus` name (mdev backend only).
    pub mdev_parent: Option<String>,
    pub offers: Vec<ShardOffer>,
    /// False for an NVIDIA per-VF card whose VFs are not enabled yet: its types can only be
    /// read once they are.
    pub types_known: bool,
    /// SR-IOV total VFs (0 for mdev).
    pub total_vfs: u32,
}

/// Why a type spec names no single offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    Unknown,
    Ambiguous(Vec<String>),
}

impl ShardOffers {
    /// The offer a type spec names: an exact id, else an exact name (case ignored), else the
    /// name's last word (`V100-8C` for `GRID V100-8C`) when exactly one offer has it.
    pub fn resolve(&self, spec: &str) -> Result<&ShardOffer, ResolveError> {
        if let Some(o) = self.offers.iter().find(|o| o.id == spec) {
            return Ok(o);
        }
        let named = |o: &&ShardOffer| {
            o.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(spec))
        };
        if let Some(o) = self.offers.iter().find(named) {
            return Ok(o);
        }
        let short: Vec<&ShardOffer> = self
            .offers
            .iter()
            .filter(|o| {
                o.name
                    .as_deref()
                    .and_then(|n| n.split_whitespace().last())
                    .is_some_and(|w| w.eq_ignore_ascii_case(spec))
            })
            .collect();
        match short.as_slice() {
            [one] => Ok(one),
            [] => Err(ResolveError::Unknown),
            many => Err(ResolveError::Ambiguous(
                many.iter().map(|o| o.label()).collect(),
            )),
        }
    }

    /// Every offer with its capacity, for "allowed" lists.
    pub fn describe(&self) -> String {
        if self.offers.is_empty() {
            return "none".to_string();
        }
        self.offers
            .iter()
            .map(|o| format!("{} ×{}", o.label(), o.capacity))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The backend and offers of the card at `gpu`, `None` when it cannot be split.
pub fn shard_offers(inventory: &Inventory, gpu: PciAddress) -> Option<ShardOffers> {
    if let Some(parent) = inventory
        .mdev_parents
        .values()
        .find(|p| p.pci_address == Some(gpu))
    {
        let offers = parent
            .types
            .iter()
            .map(|t| {
                let existing = inventory
                    .mdevs
                    .values()
                    .filter(|m| m.parent == parent.name && m.type_id.as_deref() == Some(&t.id))
                    .count() as u32;
                ShardOffer {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    capacity: existing + t.available_instances.unwrap_or(0),
                    existing,
                }
            })
            .collect();
        return Some(ShardOffers {
            backend: ShardBackend::Mdev,
            mdev_parent: Some(parent.name.clone()),
            offers,
            types_known: true,
            total_vfs: 0,
        });
    }
    let f = inventory.functions.get(&gpu)?;
    let sriov = f.sriov.as_ref().filter(|s| s.total_vfs > 0)?;
    let vgpu_vfs: Vec<_> = sriov
        .vfs
        .iter()
        .filter_map(|vf| inventory.functions.get(vf))
        .filter_map(|vf| vf.nvidia_vgpu.as_ref())
        .collect();
    if !vgpu_vfs.is_empty() {
        let mut offers: Vec<ShardOffer> = Vec::new();
        let mut offer = |id: u32, name: Option<&str>| -> usize {
            let key = id.to_string();
            match offers.iter().position(|o| o.id == key) {
                Some(i) => {
                    if offers[i].name.is_none() {
                        offers[i].name = name.map(str::to_string);
                    }
                    i
                }
                None => {
                    offers.push(ShardOffer {
                        id: key,
                        name: name.map(str::to_string),
                        capacity: 0,
                        existing: 0,
                    });
                    offers.len() - 1
                }
            }
        };
        let mut per_vf: Vec<(Vec<usize>, Option<usize>)> = Vec::new();
        for vgpu in &vgpu_vfs {
            let creatable: Vec<usize> = vgpu
                .creatable_types
                .iter()
                .map(|t| offer(t.id, Some(&t.name)))
                .collect();
            let current = vgpu.current_type.map(|t| offer(t, None));
            per_vf.push((creatable, current));
        }
        // A VF holds one vGPU: it counts towards its current type, or else towards each type
        // it could create.
        for (creatable, current) in per_vf {
            match current {
                Some(i) => {
                    offers[i].existing += 1;
                    offers[i].capacity += 1;
                }
                None => {
                    for i in creatable {
                        offers[i].capacity += 1;
                    }
                }
            }
        }
        // A type no VF can create any more is named from what earlier reads saw.
        for o in offers.iter_mut().filter(|o| o.name.is_none()) {
            if let Ok(id) = o.id.parse::<u32>() {
                o.name = crate::state::vgpu_names::remembered(inventory, f, id).map(str::to_string);
            }
        }
        return Some(ShardOffers {
            backend: ShardBackend::NvidiaVf,
            mdev_parent: None,
            offers,
            types_known: true,
            total_vfs: sriov.total_vfs,
        });
    }
    if f.ids.vendor == 0x10de && sriov.num_vfs == 0 {
        return Some(ShardOffers {
            backend: ShardBackend::NvidiaVf,
            mdev_parent: None,
            offers: Vec::new(),
            types_known: false,
            total_vfs: sriov.total_vfs,
        });
    }
    Some(ShardOffers {
        backend: ShardBackend::Sriov,
        mdev_parent: None,
        offers: vec![ShardOffer {
            id: SRIOV_VF_TYPE.to_string(),
            name: Some("SR-IOV virtual function".to_string()),
            capacity: sriov.total_vfs,
            existing: sriov.num_vfs,
        }],
        types_known: true,
        total_vfs: sriov.total_vfs,
    })
}
