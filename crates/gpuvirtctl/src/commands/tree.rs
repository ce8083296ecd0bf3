//! `gpuvirtctl tree`: the host as `virsh nodedev-list --tree` would draw it for GPU work, one
//! branch per IOMMU group with its members' drivers, and the vGPUs under the device they live on.
//! May import: crate::client, crate::errors, crate::view.

use std::collections::{HashMap, HashSet};

use gpuvirt_api as api;
use serde::Serialize;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::view::{GpuView, Host, MdevView};

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    // The GPUs, parents and groups, and the mdevs as typed rows, asked together.
    let (host, mdevs) = tokio::join!(
        ctx.objects(&[
            api::GPU_INTERFACE,
            api::SHARD_PARENT_INTERFACE,
            api::IOMMU_GROUP_INTERFACE,
        ]),
        ctx.mdevs(),
    );
    let mut host = host?;
    host.mdevs = mdevs?;
    let groups = build(&host);
    if json {
        print_json(&groups)
    } else {
        out!("{}", render(&groups))?;
        Ok(())
    }
}

/// One IOMMU group (or, with `group: null`, the devices outside any group).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TreeGroup {
    pub group: Option<u32>,
    pub viable: Option<bool>,
    pub viability_problems: Vec<String>,
    pub devices: Vec<TreeDevice>,
}

/// A member of a group: a PCI function, an mdev parent, or both.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TreeDevice {
    pub name: String,
    pub class: String,
    pub driver: String,
    /// The GPU's product name when this function is a GPU gpuvirtd serves.
    pub product: Option<String>,
    pub state: Option<String>,
    pub vgpus: Vec<TreeVgpu>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TreeVgpu {
    pub uuid: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub type_name: String,
    pub active: bool,
    pub driver: String,
    pub iommu_group: Option<u32>,
}

/// The vGPUs of `parent`, from the mdevs indexed by parent name.
fn vgpus_of(by_parent: &HashMap<&str, Vec<&MdevView>>, parent: &str) -> Vec<TreeVgpu> {
    by_parent
        .get(parent)
        .into_iter()
        .flatten()
        .map(|m| TreeVgpu {
            uuid: m.uuid.clone(),
            type_id: m.type_id.clone(),
            type_name: m.type_name.clone(),
            active: m.active,
            driver: m.driver.clone(),
            iommu_group: m.iommu_group,
        })
        .collect()
}

/// Groups in id order with their members in the daemon's order; GPUs, mdev parents and
/// vGPUs outside every group (no IOMMU, or virtual parents such as mbochs) come last.
///
/// Lookups go through indexes built once: on a host with thousands of groups and mdevs a
/// scan of every mdev per group member was most of the command's time.
pub fn build(host: &Host) -> Vec<TreeGroup> {
    let mut placed: HashSet<&str> = HashSet::new();
    let mut out: Vec<TreeGroup> = Vec::new();
    let mut by_parent: HashMap<&str, Vec<&MdevView>> = HashMap::new();
    for m in &host.mdevs {
        by_parent.entry(m.parent.as_str()).or_default().push(m);
    }
    let gpus: HashMap<&str, &GpuView> = host
        .gpus
        .iter()
        .map(|g| (g.pci_address.as_str(), g))
        .collect();
    // An mdev's own IOMMU group is not an object (gpuvirtd exports the groups it can act
    // on): each vGPU shows under its parent, with its group number.
    for g in &host.groups {
        let devices = g
            .members
            .iter()
            .map(|m| {
                let gpu = gpus.get(m.name.as_str());
                placed.insert(&m.name);
                TreeDevice {
                    name: m.name.clone(),
                    class: m.class.clone(),
                    driver: m.driver.clone(),
                    product: gpu.map(|x| x.product_name.clone()),
                    state: gpu.map(|x| x.state.clone()),
                    vgpus: vgpus_of(&by_parent, &m.name),
                }
            })
            .collect();
        out.push(TreeGroup {
            group: Some(g.id),
            viable: Some(g.viable),
            viability_problems: g.viability_problems.clone(),
            devices,
        });
    }
    let mut loose: Vec<TreeDevice> = Vec::new();
    for gpu in host
        .gpus
        .iter()
        .filter(|x| !placed.contains(x.pci_address.as_str()))
    {
        loose.push(TreeDevice {
            name: gpu.pci_address.clone(),
            class: gpu.class_code.clone(),
            driver: gpu.driver.clone(),
            product: Some(gpu.product_name.clone()),
            state: Some(gpu.state.clone()),
            vgpus: vgpus_of(&by_parent, &gpu.pci_address),
        });
    }
    let loose_names: HashSet<String> = loose.iter().map(|d| d.name.clone()).collect();
    for p in host
        .other_parents
        .iter()
        .filter(|p| !placed.contains(p.name.as_str()) && !loose_names.contains(&p.name))
    {
        loose.push(TreeDevice {
            name: p.name.clone(),
            class: String::new(),
            driver: String::new(),
            product: None,
            state: None,
            vgpus: vgpus_of(&by_parent, &p.name),
        });
    }
    // vGPUs whose parent is none of the above: `tree` reads the mdevs in a call of their own,
    // and a parent can appear between the two replies. Shown under their parent's name
    // rather than left out.
    let mut orphan_parents: Vec<&str> = by_parent
        .keys()
        .copied()
        .filter(|p| !placed.contains(p) && !loose.iter().any(|d| d.name == *p))
        .collect();
    orphan_parents.sort_unstable();
    for parent in orphan_parents {
        loose.push(TreeDevice {
            name: parent.to_owned(),
            class: String::new(),
            driver: String::new(),
            product: None,
            state: None,
            vgpus: vgpus_of(&by_parent, parent),
        });
    }
    if !loose.is_empty() {
        out.push(TreeGroup {
            group: None,
            viable: None,
            viability_problems: Vec::new(),
            devices: loose,
        });
    }
    out
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The tree as text: box-drawing branches, one line per group, device and vGPU.
pub fn render(groups: &[TreeGroup]) -> String {
    let mut out = String::new();
    for g in groups {
        match (g.group, g.viable) {
            (Some(id), Some(true)) => out.push_str(&format!("IOMMU group {id} (viable)\n")),
            (Some(id), _) => out.push_str(&format!("IOMMU group {id} (not viable)\n")),
            (None, _) => out.push_str("no IOMMU group\n"),
        }
        let name_width = g.devices.iter().map(|d| d.name.len()).max().unwrap_or(0);
        for (i, d) in g.devices.iter().enumerate() {
            let last = i + 1 == g.devices.len() && g.viability_problems.is_empty();
            let (branch, stem) = if last {
                ("└─ ", "   ")
            } else {
                ("├─ ", "│  ")
            };
            let mut line = format!(
                "{branch}{:<name_width$}  {:<6}  {}",
                d.name,
                dash(&d.class),
                dash(&d.driver)
            );
            if let Some(state) = &d.state {
                line.push_str(&format!("  [{state}]"));
            }
            if let Some(product) = d.product.as_deref().filter(|p| !p.is_empty()) {
                line.push_str(&format!("  {product}"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
            for (j, v) in d.vgpus.iter().enumerate() {
                let vbranch = if j + 1 == d.vgpus.len() {
                    "└─ "
                } else {
                    "├─ "
                };
                let name = if v.type_name.is_empty() {
                    v.type_id.clone()
                } else {
                    format!("{} ({})", v.type_id, v.type_name)
                };
                let group = v
                    .iommu_group
                    .map(|g| format!("  group {g}"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{stem}{vbranch}vGPU {}  {name}  {}  {}{group}\n",
                    v.uuid,
                    if v.active { "active" } else { "inactive" },
                    dash(&v.driver),
                ));
            }
        }
        for (k, p) in g.viability_problems.iter().enumerate() {
            let branch = if k + 1 == g.viability_problems.len() {
                "└─ "
            } else {
                "├─ "
            };
            out.push_str(&format!("{branch}problem: {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{GroupView, MemberView};

    fn mdev(parent: &str, uuid: &str) -> MdevView {
        MdevView {
            path: String::new(),
            uuid: uuid.to_owned(),
            parent: parent.to_owned(),
            type_id: "nvidia-300".to_owned(),
            type_name: String::new(),
            active: true,
            driver: "vfio_mdev".to_owned(),
            iommu_group: None,
        }
    }

    #[test]
    fn a_vgpu_of_an_unknown_parent_is_shown_under_its_name() {
        let host = Host {
            groups: vec![GroupView {
                path: String::new(),
                id: 66,
                viable: true,
                members: vec![MemberView {
                    name: "0000:41:00.0".to_owned(),
                    class: "030200".to_owned(),
                    driver: "nvidia".to_owned(),
                }],
                viability_problems: Vec::new(),
            }],
            mdevs: vec![
                mdev("0000:41:00.0", "aa618089-8b16-4d01-a136-25a0f3c73123"),
                mdev("0000:42:00.0", "bb618089-8b16-4d01-a136-25a0f3c73123"),
            ],
            ..Host::default()
        };
        let groups = build(&host);
        assert_eq!(groups.len(), 2, "{groups:#?}");
        assert_eq!(groups[0].devices[0].vgpus.len(), 1);
        assert_eq!(groups[1].group, None);
        assert_eq!(groups[1].devices[0].name, "0000:42:00.0");
        assert_eq!(
            groups[1].devices[0].vgpus[0].uuid,
            "bb618089-8b16-4d01-a136-25a0f3c73123"
        );
    }
}
