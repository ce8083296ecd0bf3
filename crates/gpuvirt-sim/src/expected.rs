//! The description-side view of a host that tests compare a scan against. May import: nothing
//! of this crate (only `gpuvirt_core`); the kernel projects its model onto it.

use std::collections::BTreeMap;

use gpuvirt_core::{PciAddress, PciIds};
use uuid::Uuid;

/// The description-side view of a host: what an inventory read through the simulated sysfs must
/// contain. Both a `Kernel` (from its model, not its tree) and a
/// [`gpuvirt_core::Inventory`] (from a scan) project onto it, so a test compares the two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedInventory {
    pub functions: BTreeMap<PciAddress, ExpectedFunction>,
    /// Group id → member names (PCI addresses and mdev UUIDs), sorted.
    pub groups: BTreeMap<u32, Vec<String>>,
    /// Registered mdev parent → type id → type.
    pub parents: BTreeMap<String, BTreeMap<String, ExpectedType>>,
    /// Active mdev → (parent, type id).
    pub mdevs: BTreeMap<Uuid, (String, String)>,
}

/// The facts compared per PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFunction {
    pub class: u32,
    pub ids: PciIds,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// DRM node names (`card1`, `renderD129`), card first.
    pub drm: Vec<String>,
}

/// The facts compared per mdev type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedType {
    pub name: String,
    pub description: Option<String>,
    pub device_api: String,
    pub available_instances: u32,
}

impl ExpectedInventory {
    /// Projects a scanned inventory onto the same view.
    pub fn from_inventory(inv: &gpuvirt_core::Inventory) -> Self {
        let functions = inv
            .functions
            .iter()
            .map(|(a, f)| {
                (
                    *a,
                    ExpectedFunction {
                        class: f.class,
                        ids: f.ids,
                        driver: f.driver.clone(),
                        iommu_group: f.iommu_group,
                        drm: f
                            .drm
                            .iter()
                            .flat_map(|n| [&n.card, &n.render])
                            .flatten()
                            .map(|p| p.trim_start_matches("/dev/dri/").to_owned())
                            .collect(),
                    },
                )
            })
            .collect();
        let groups = inv
            .groups
            .iter()
            .map(|(id, g)| {
                let mut names: Vec<String> = g.members.iter().map(|m| m.name.clone()).collect();
                names.sort();
                (*id, names)
            })
            .collect();
        let parents = inv
            .mdev_parents
            .iter()
            .map(|(name, p)| {
                let types = p
                    .types
                    .iter()
                    .map(|t| {
                        (
                            t.id.clone(),
                            ExpectedType {
                                name: t.name.clone().unwrap_or_default(),
                                description: t.description.clone(),
                                device_api: t.device_api.clone().unwrap_or_default(),
                                available_instances: t.available_instances.unwrap_or(0),
                            },
                        )
                    })
                    .collect();
                (name.clone(), types)
            })
            .collect();
        let mdevs = inv
            .mdevs
            .iter()
            .map(|(u, m)| {
                (
                    *u,
                    (m.parent.clone(), m.type_id.clone().unwrap_or_default()),
                )
            })
            .collect();
        Self {
            functions,
            groups,
            parents,
            mdevs,
        }
    }
}
