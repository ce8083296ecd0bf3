//! The shard model: what a parent is ([`ShardParent`], its [`ShardType`]s and
//! [`ShardChild`]ren), read off an [`Inventory`] for the three kernel interfaces, and
//! [`ShardError`] with its neutral kind. May import: crate::error, crate::model,
//! crate::policy::shard, crate::state::ledger (Owner).

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::error::ErrorKind;
use crate::model::{Inventory, PciAddress, PciFunction};
use crate::policy::shard::ShardBackend as Backend;
use crate::policy::shard::SRIOV_VF_TYPE;
use crate::state::ledger::Owner;

/// NVIDIA's vendor id: a PF of this vendor with SR-IOV but no VFs enabled yet is taken to be a
/// per-VF vGPU card whose types can only be read once its VFs exist.
const NVIDIA_VENDOR: u16 = 0x10de;

/// One type a parent offers, with the kernel's live numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardType {
    /// mdev type id (`nvidia-300`), NVIDIA vGPU type id (`1151`), or `vf` for plain SR-IOV.
    pub id: String,
    /// The kernel's name (`GRID V100-8C`); may be prose (`Single port serial`) or absent.
    pub name: Option<String>,
    pub description: Option<String>,
    /// `vfio-pci`, `vfio-ccw`, `vfio-ap` (mdev only).
    pub device_api: Option<String>,
    /// How many more can be created now. For mdev this is `available_instances`, which already
    /// accounts for a shared pool (creating one type lowers the others); for NVIDIA per-VF the
    /// free VFs whose `creatable_vgpu_types` list it; for SR-IOV the VFs not yet enabled.
    pub available: u32,
    /// How many of this type exist on the parent now.
    pub in_use: u32,
}

impl ShardType {
    /// The name without the vendor's product prefix: `V100-8C` for `GRID V100-8C`,
    /// `H100XM-40C` for `NVIDIA H100XM-40C`; `None` for a one-word name.
    pub fn short_name(&self) -> Option<&str> {
        let name = self.name.as_deref()?.trim();
        let (_, rest) = name.split_once(char::is_whitespace)?;
        let rest = rest.trim_start();
        (!rest.is_empty()).then_some(rest)
    }

    /// What people call the type: its name when it has one, else its id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    /// `nvidia-300 (GRID V100-8C)`, or just the id when the name adds nothing.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) if *name != self.id => format!("{} ({name})", self.id),
            _ => self.id.clone(),
        }
    }

    /// Existing plus creatable: the most of this type the parent could hold right now.
    pub fn capacity(&self) -> u32 {
        self.in_use.saturating_add(self.available)
    }
}

/// One vGPU (or VF) that exists on a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ShardChild {
    /// An active mdev.
    Mdev { uuid: Uuid, type_id: Option<String> },
    /// A VF carrying an NVIDIA vGPU of `type_id`.
    Vgpu { vf: PciAddress, type_id: u32 },
    /// An enabled plain SR-IOV VF.
    Vf { vf: PciAddress },
}

/// Something a card can be split on: an mdev parent, or a PF with NVIDIA per-VF vGPU or plain
/// SR-IOV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardParent {
    /// The `mdev_bus` name (a PCI address, or `mbochs` for a virtual parent), or the PF's
    /// address for the SR-IOV backends.
    pub name: String,
    pub backend: Backend,
    pub pci_address: Option<PciAddress>,
    /// False for an NVIDIA per-VF card whose VFs are not enabled: its types can only be read
    /// once they are, so [`ShardParent::types`] is empty.
    pub types_known: bool,
    pub types: Vec<ShardType>,
    pub children: Vec<ShardChild>,
    /// SR-IOV `sriov_totalvfs` and `sriov_numvfs` (0 for mdev parents).
    pub total_vfs: u32,
    pub num_vfs: u32,
}

/// Why a shard request cannot be planned. Every variant is a refusal made before anything is
/// touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error(
        "{parent:?} is neither an mdev parent nor a GPU with SR-IOV; shard parents: {}",
        list_or_none(known)
    )]
    NoSuchParent { parent: String, known: Vec<String> },
    #[error(
        "{parent} offers no type {spec:?}; valid types: {}",
        list_or_none(choices)
    )]
    UnknownType {
        parent: String,
        spec: String,
        /// Every type of the card as `id (name)`.
        choices: Vec<String>,
    },
    #[error("type {spec:?} is ambiguous on {parent}: it names {}", matches.join(" and "))]
    AmbiguousType {
        parent: String,
        spec: String,
        matches: Vec<String>,
    },
    #[error(
        "{type_name} on {parent} has {capacity} instances, {in_use} in use; {requested} more requested"
    )]
    NoCapacity {
        parent: String,
        type_id: String,
        type_name: String,
        capacity: u32,
        in_use: u32,
        requested: u32,
    },
    #[error("mdev {uuid} already exists on {parent}")]
    AlreadyExists { uuid: Uuid, parent: String },
    #[error("no mdev {uuid} is active")]
    NoSuchMdev { uuid: Uuid },
    #[error("{vf} is not a VF with an NVIDIA vGPU")]
    NoSuchVgpu { vf: PciAddress },
    #[error("{what} belongs to {owner}, not gpuvirt; gpuvirt removes it only when forced")]
    NotOwned { what: String, owner: Owner },
    #[error("the vGPU types of {parent} can only be read once its VFs are enabled (sriov_numvfs)")]
    TypesUnknown { parent: String },
    #[error("{parent}: {reason}")]
    NotSupported { parent: String, reason: String },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
}

impl ShardError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShardError::NoSuchParent { .. }
            | ShardError::NoSuchMdev { .. }
            | ShardError::NoSuchVgpu { .. } => ErrorKind::NoSuchDevice,
            ShardError::UnknownType { .. } | ShardError::AmbiguousType { .. } => {
                ErrorKind::UnknownType
            }
            ShardError::NoCapacity { .. } => ErrorKind::NoCapacity,
            ShardError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            ShardError::NotOwned { .. } => ErrorKind::PolicyViolation,
            ShardError::TypesUnknown { .. } | ShardError::NotSupported { .. } => {
                ErrorKind::NotSupported
            }
            ShardError::InvalidRequest { .. } => ErrorKind::InvalidArgs,
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

impl fmt::Display for ShardParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.backend.as_str())
    }
}

impl ShardParent {
    /// The type a user's spec names: an id (exact, then ignoring case), else a full name, else
    /// a short name (the name without its vendor prefix, `V100-8C`), names ignoring case.
    /// Several types with that name → [`ShardError::AmbiguousType`]; none →
    /// [`ShardError::UnknownType`] listing every type of this parent.
    pub fn resolve_type(&self, spec: &str) -> Result<&ShardType, ShardError> {
        if !self.types_known {
            return Err(ShardError::TypesUnknown {
                parent: self.name.clone(),
            });
        }
        let spec_trimmed = spec.trim();
        if let Some(t) = self.types.iter().find(|t| t.id == spec_trimmed) {
            return Ok(t);
        }
        let by_id: Vec<&ShardType> = self
            .types
            .iter()
            .filter(|t| t.id.eq_ignore_ascii_case(spec_trimmed))
            .collect();
        let by_name: Vec<&ShardType> = self
            .types
            .iter()
            .filter(|t| {
                t.name
                    .as_deref()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(spec_trimmed))
            })
            .collect();
        let by_short: Vec<&ShardType> = self
            .types
            .iter()
            .filter(|t| {
                t.short_name()
                    .is_some_and(|n| n.eq_ignore_ascii_case(spec_trimmed))
            })
            .collect();
        for candidates in [by_id, by_name, by_short] {
            match candidates.as_slice() {
                [] => continue,
                [one] => return Ok(one),
                many => {
                    return Err(ShardError::AmbiguousType {
                        parent: self.name.clone(),
                        spec: spec.to_string(),
                        matches: many.iter().map(|t| t.label()).collect(),
                    })
                }
            }
        }
        Err(ShardError::UnknownType {
            parent: self.name.clone(),
            spec: spec.to_string(),
            choices: self.choices(),
        })
    }

    /// Every type as `id (name)`, for error messages. NVIDIA's per-VF files name a type only in
    /// `creatable_vgpu_types`, so a type in use that no VF can create any more has no name
    /// unless an earlier read saw it ([`crate::vgpu_names`]).
    pub fn choices(&self) -> Vec<String> {
        self.types
            .iter()
            .map(|t| match (&t.name, self.backend) {
                (None, Backend::NvidiaVf) => format!(
                    "{} (in use; NVIDIA lists its name only while one more can be created)",
                    t.id
                ),
                _ => t.label(),
            })
            .collect()
    }

    /// The refusal for wanting `requested` more of `t` than the parent has room for.
    pub fn no_capacity(&self, t: &ShardType, requested: u32) -> ShardError {
        ShardError::NoCapacity {
            parent: self.name.clone(),
            type_id: t.id.clone(),
            type_name: t.display_name().to_string(),
            capacity: t.capacity(),
            in_use: t.in_use,
            requested,
        }
    }
}

/// Every shard parent of a host: each mdev parent (PCI or virtual), then each display-class
/// PF with SR-IOV that is not an mdev parent.
pub fn shard_parents(inventory: &Inventory) -> Vec<ShardParent> {
    let mut parents: Vec<ShardParent> = inventory
        .mdev_parents
        .keys()
        .filter_map(|name| mdev_parent(inventory, name))
        .collect();
    for f in inventory.functions.values() {
        if f.physfn.is_none() && !is_mdev_parent(inventory, f.address) {
            if let Some(p) = sriov_parent(inventory, f) {
                parents.push(p);
            }
        }
    }
    parents
}

/// The shard parent called `name`: an `mdev_bus` name, or a PCI address (any spelling
/// [`PciAddress`] parses) of an mdev parent or an SR-IOV GPU.
pub fn shard_parent(inventory: &Inventory, name: &str) -> Result<ShardParent, ShardError> {
    let not_found = || ShardError::NoSuchParent {
        parent: name.chars().take(64).collect(),
        known: shard_parents(inventory)
            .into_iter()
            .map(|p| p.name)
            .collect(),
    };
    if let Some(p) = mdev_parent(inventory, name) {
        return Ok(p);
    }
    let address: PciAddress = name.parse().map_err(|_| not_found())?;
    if let Some(p) = inventory
        .mdev_parents
        .values()
        .find(|p| p.pci_address == Some(address))
    {
        return mdev_parent(inventory, &p.name).ok_or_else(not_found);
    }
    let f = inventory.functions.get(&address).ok_or_else(not_found)?;
    sriov_parent(inventory, f).ok_or_else(not_found)
}

fn is_mdev_parent(inventory: &Inventory, address: PciAddress) -> bool {
    inventory
        .mdev_parents
        .values()
        .any(|p| p.pci_address == Some(address))
}

fn mdev_parent(inventory: &Inventory, name: &str) -> Option<ShardParent> {
    let parent = inventory.mdev_parents.get(name)?;
    let children: Vec<ShardChild> = inventory
        .mdevs
        .values()
        .filter(|m| m.parent == parent.name)
        .map(|m| ShardChild::Mdev {
            uuid: m.uuid,
            type_id: m.type_id.clone(),
        })
        .collect();
    let types = parent
        .types
        .iter()
        .map(|t| ShardType {
            id: t.id.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            device_api: t.device_api.clone(),
            // Unreadable reads as none available: planning must not promise what the kernel
            // may refuse.
            available: t.available_instances.unwrap_or(0),
            in_use: children
                .iter()
                .filter(|c| matches!(c, ShardChild::Mdev { type_id: Some(id), .. } if *id == t.id))
                .count() as u32,
        })
        .collect();
    Some(ShardParent {
        name: parent.name.clone(),
        backend: Backend::Mdev,
        pci_address: parent.pci_address,
        types_known: true,
        types,
        children,
        total_vfs: 0,
        num_vfs: 0,
    })
}

/// The SR-IOV shard parent (NVIDIA per-VF vGPU or plain SR-IOV) of a display-class PF,
/// `None` for a function that cannot have VFs.
pub fn sriov_parent(inventory: &Inventory, pf: &PciFunction) -> Option<ShardParent> {
    if !pf.is_display() || pf.physfn.is_some() {
        return None;
    }
    let sriov = pf.sriov.as_ref().filter(|s| s.total_vfs > 0)?;
    let vfs: Vec<&PciFunction> = sriov
        .vfs
        .iter()
        .filter_map(|a| inventory.functions.get(a))
        .collect();
    let base = ShardParent {
        name: pf.address.to_string(),
        backend: Backend::Sriov,
        pci_address: Some(pf.address),
        types_known: true,
        types: Vec::new(),
        children: Vec::new(),
        total_vfs: sriov.total_vfs,
        num_vfs: sriov.num_vfs,
    };
    if vfs.iter().any(|vf| vf.nvidia_vgpu.is_some()) {
        return Some(nvidia_vf_parent(inventory, pf, base, &vfs));
    }
    if pf.ids.vendor == NVIDIA_VENDOR && sriov.num_vfs == 0 {
        return Some(ShardParent {
            backend: Backend::NvidiaVf,
            types_known: false,
            ..base
        });
    }
    Some(ShardParent {
        types: vec![ShardType {
            id: SRIOV_VF_TYPE.to_string(),
            name: Some("SR-IOV virtual function".to_string()),
            description: None,
            device_api: Some("vfio-pci".to_string()),
            available: sriov.total_vfs.saturating_sub(sriov.num_vfs),
            in_use: sriov.num_vfs,
        }],
        children: vfs
            .iter()
            .map(|vf| ShardChild::Vf { vf: vf.address })
            .collect(),
        ..base
    })
}

fn nvidia_vf_parent(
    inventory: &Inventory,
    pf: &PciFunction,
    base: ShardParent,
    vfs: &[&PciFunction],
) -> ShardParent {
    let mut types: Vec<ShardType> = Vec::new();
    let mut children = Vec::new();
    let entry = |types: &mut Vec<ShardType>, id: u32, name: Option<&str>| -> usize {
        let key = id.to_string();
        if let Some(i) = types.iter().position(|t| t.id == key) {
            if types[i].name.is_none() {
                types[i].name = name.map(str::to_string);
            }
            return i;
        }
        types.push(ShardType {
            id: key,
            name: name.map(str::to_string),
            description: None,
            device_api: Some("vfio-pci".to_string()),
            available: 0,
            in_use: 0,
        });
        types.len() - 1
    };
    for vf in vfs {
        let Some(vgpu) = &vf.nvidia_vgpu else {
            continue;
        };
        // A VF holds one vGPU: it counts towards its current type, or else towards each type
        // it could still create.
        match vgpu.current_type {
            Some(id) => {
                let name = vgpu
                    .creatable_types
                    .iter()
                    .find(|t| t.id == id)
                    .map(|t| t.name.as_str());
                let i = entry(&mut types, id, name);
                types[i].in_use += 1;
                children.push(ShardChild::Vgpu {
                    vf: vf.address,
                    type_id: id,
                });
            }
            None => {
                for offer in &vgpu.creatable_types {
                    let i = entry(&mut types, offer.id, Some(&offer.name));
                    types[i].available += 1;
                }
            }
        }
    }
    // A type no VF can create any more is named from what earlier reads saw.
    for t in types.iter_mut().filter(|t| t.name.is_none()) {
        if let Ok(id) = t.id.parse::<u32>() {
            t.name = crate::state::vgpu_names::remembered(inventory, pf, id).map(str::to_string);
        }
    }
    types.sort_by_key(|t| t.id.parse::<u32>().unwrap_or(u32::MAX));
    ShardParent {
        backend: Backend::NvidiaVf,
        types,
        children,
        ..base
    }
}

/// The VFs of an NVIDIA per-VF parent that carry no vGPU and can take type `type_id` now, in VF
/// order.
pub(crate) fn free_vfs_for(
    inventory: &Inventory,
    parent: &ShardParent,
    type_id: u32,
) -> Vec<PciAddress> {
    let Some(pf) = parent.pci_address.and_then(|a| inventory.functions.get(&a)) else {
        return Vec::new();
    };
    pf.sriov
        .iter()
        .flat_map(|s| s.vfs.iter())
        .filter_map(|a| inventory.functions.get(a))
        .filter(|vf| {
            vf.nvidia_vgpu.as_ref().is_some_and(|v| {
                v.current_type.is_none() && v.creatable_types.iter().any(|t| t.id == type_id)
            })
        })
        .map(|vf| vf.address)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
