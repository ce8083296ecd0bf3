//! Planned actions and the exact filesystem steps each one takes, so an executor can run them
//! without interpreting policy, and a reviewer can see every sysfs write before it happens.
//!
//! May import: crate::model.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::model::{PciAddress, PciSlot};

/// One function of a slot being bound to vfio-pci, with the driver it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotFunction {
    pub address: PciAddress,
    /// The driver bound now (recorded by the executor as the one to return to).
    pub driver: Option<String>,
}

/// One function of a slot going back to the driver gpuvirt found on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReturn {
    pub address: PciAddress,
    /// The driver bound now (usually vfio-pci).
    pub driver: Option<String>,
    /// The driver to return to; `None` leaves the function unbound, as gpuvirt found it.
    pub original_driver: Option<String>,
}

/// Something the planner wants done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// `modprobe <module>`: needed before `drivers_probe`, which otherwise succeeds and leaves
    /// the device driverless.
    LoadModule {
        module: String,
    },
    /// Every function of one slot to vfio-pci in one action, so execution cannot leave a
    /// half-bound card: all `driver_override`s, then all unbinds, then all probes.
    BindSlotToVfio {
        #[serde(serialize_with = "as_text")]
        slot: PciSlot,
        functions: Vec<SlotFunction>,
    },
    /// Every function of one slot back to its original driver.
    ReturnSlotToHost {
        #[serde(serialize_with = "as_text")]
        slot: PciSlot,
        functions: Vec<SlotReturn>,
    },
    CreateMdev {
        parent: String,
        type_id: String,
        type_name: Option<String>,
        uuid: Uuid,
    },
    RemoveMdev {
        parent: String,
        type_id: Option<String>,
        uuid: Uuid,
    },
    /// `sriov_numvfs`; the kernel refuses to change a non-zero count except through 0.
    SetSriovNumVfs {
        pf: PciAddress,
        from: u32,
        to: u32,
    },
    /// NVIDIA per-VF vGPU: write a type id to `<VF>/nvidia/current_vgpu_type`.
    SetVgpuType {
        vf: PciAddress,
        type_id: u32,
        type_name: Option<String>,
    },
    /// NVIDIA per-VF vGPU: write 0 to `current_vgpu_type`.
    ClearVgpuType {
        vf: PciAddress,
        type_id: u32,
    },
    /// A boot-time file gpuvirt owns (modprobe.d, udev rule, modules-load.d), written whole.
    WriteBootFile {
        path: PathBuf,
        contents: String,
    },
    RemoveBootFile {
        path: PathBuf,
    },
    /// modprobe.d changed: the initramfs carries a copy, so it must be rebuilt.
    RegenerateInitramfs,
}

fn as_text<S: serde::Serializer>(value: &PciSlot, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// One concrete operation. Paths are relative to the host root (`sys/...`, `etc/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// Write `value` to a sysfs attribute.
    Write {
        path: PathBuf,
        value: String,
    },
    Modprobe {
        module: String,
    },
    /// Replace a file atomically (write a temporary, rename).
    WriteFile {
        path: PathBuf,
        contents: String,
    },
    RemoveFile {
        path: PathBuf,
    },
    /// Run a host command (not run against a non-`/` root).
    Run {
        argv: Vec<String>,
    },
}

fn pci_device(address: PciAddress, attribute: &str) -> PathBuf {
    PathBuf::from(format!("sys/bus/pci/devices/{address}/{attribute}"))
}

fn pci_driver(driver: &str, attribute: &str) -> PathBuf {
    PathBuf::from(format!("sys/bus/pci/drivers/{driver}/{attribute}"))
}

pub const VFIO_PCI: &str = "vfio-pci";

impl Action {
    /// The exact steps, in order.
    pub fn steps(&self) -> Vec<Step> {
        match self {
            Action::LoadModule { module } => vec![Step::Modprobe {
                module: module.clone(),
            }],
            Action::BindSlotToVfio { functions, .. } => {
                let pending: Vec<&SlotFunction> = functions
                    .iter()
                    .filter(|f| f.driver.as_deref() != Some(VFIO_PCI))
                    .collect();
                let mut steps = Vec::new();
                for f in &pending {
                    steps.push(Step::Write {
                        path: pci_device(f.address, "driver_override"),
                        value: VFIO_PCI.to_string(),
                    });
                }
                for f in &pending {
                    if let Some(driver) = &f.driver {
                        steps.push(Step::Write {
                            path: pci_driver(driver, "unbind"),
                            value: f.address.to_string(),
                        });
                    }
                }
                for f in &pending {
                    steps.push(Step::Write {
                        path: PathBuf::from("sys/bus/pci/drivers_probe"),
                        value: f.address.to_string(),
                    });
                }
                steps
            }
            Action::ReturnSlotToHost { functions, .. } => {
                let mut steps = Vec::new();
                for f in functions {
                    // Writing a newline clears driver_override.
                    steps.push(Step::Write {
                        path: pci_device(f.address, "driver_override"),
                        value: "\n".to_string(),
                    });
                }
                for f in functions {
                    if let Some(driver) = &f.driver {
                        if f.original_driver.as_ref() != Some(driver) {
                            steps.push(Step::Write {
                                path: pci_driver(driver, "unbind"),
                                value: f.address.to_string(),
                            });
                        }
                    }
                }
                for f in functions {
                    if let Some(original) = &f.original_driver {
                        if f.driver.as_ref() != Some(original) {
                            steps.push(Step::Write {
                                path: pci_driver(original, "bind"),
                                value: f.address.to_string(),
                            });
                        }
                    }
                }
                steps
            }
            Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } => vec![Step::Write {
                path: PathBuf::from(format!(
                    "sys/class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
                )),
                value: uuid.to_string(),
            }],
            Action::RemoveMdev { uuid, .. } => vec![Step::Write {
                path: PathBuf::from(format!("sys/bus/mdev/devices/{uuid}/remove")),
                value: "1".to_string(),
            }],
            Action::SetSriovNumVfs { pf, from, to } => {
                let mut steps = Vec::new();
                if *from != 0 && *to != 0 {
                    steps.push(Step::Write {
                        path: pci_device(*pf, "sriov_numvfs"),
                        value: "0".to_string(),
                    });
                }
                steps.push(Step::Write {
                    path: pci_device(*pf, "sriov_numvfs"),
                    value: to.to_string(),
                });
                steps
            }
            Action::SetVgpuType { vf, type_id, .. } => vec![Step::Write {
                path: pci_device(*vf, "nvidia/current_vgpu_type"),
                value: type_id.to_string(),
            }],
            Action::ClearVgpuType { vf, .. } => vec![Step::Write {
                path: pci_device(*vf, "nvidia/current_vgpu_type"),
                value: "0".to_string(),
            }],
            Action::WriteBootFile { path, contents } => vec![Step::WriteFile {
                path: path.clone(),
                contents: contents.clone(),
            }],
            Action::RemoveBootFile { path } => vec![Step::RemoveFile { path: path.clone() }],
            Action::RegenerateInitramfs => vec![Step::Run {
                argv: ["update-initramfs", "-u", "-k", "all"]
                    .map(str::to_string)
                    .to_vec(),
            }],
        }
    }

    /// Whether the action only takes effect at the next boot.
    pub fn takes_effect_at_boot(&self) -> bool {
        matches!(
            self,
            Action::WriteBootFile { .. }
                | Action::RemoveBootFile { .. }
                | Action::RegenerateInitramfs
        )
    }
}

fn type_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if n != id => format!("{id} ({n})"),
        _ => id.to_string(),
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::LoadModule { module } => write!(f, "load kernel module {module}"),
            Action::BindSlotToVfio { slot, functions } => write!(
                f,
                "bind slot {slot} to vfio-pci ({})",
                functions
                    .iter()
                    .map(|x| format!(
                        "{} from {}",
                        x.address,
                        x.driver.as_deref().unwrap_or("no driver")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::ReturnSlotToHost { slot, functions } => write!(
                f,
                "return slot {slot} to the host ({})",
                functions
                    .iter()
                    .map(|x| format!(
                        "{} to {}",
                        x.address,
                        x.original_driver.as_deref().unwrap_or("no driver")
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::CreateMdev {
                parent,
                type_id,
                type_name,
                uuid,
            } => write!(
                f,
                "create mdev {uuid} of type {} on {parent}",
                type_label(type_id, type_name.as_deref())
            ),
            Action::RemoveMdev {
                parent,
                type_id,
                uuid,
            } => write!(
                f,
                "remove mdev {uuid} ({}) from {parent}",
                type_id.as_deref().unwrap_or("unknown type")
            ),
            Action::SetSriovNumVfs { pf, from, to } => {
                write!(f, "set {pf} sriov_numvfs from {from} to {to}")
            }
            Action::SetVgpuType {
                vf,
                type_id,
                type_name,
            } => write!(
                f,
                "create vGPU of type {} on VF {vf}",
                type_label(&type_id.to_string(), type_name.as_deref())
            ),
            Action::ClearVgpuType { vf, type_id } => {
                write!(f, "destroy vGPU of type {type_id} on VF {vf}")
            }
            Action::WriteBootFile { path, .. } => write!(f, "write /{}", path.display()),
            Action::RemoveBootFile { path } => write!(f, "remove /{}", path.display()),
            Action::RegenerateInitramfs => f.write_str("regenerate the initramfs"),
        }
    }
}
