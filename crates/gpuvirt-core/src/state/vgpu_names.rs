//! Names of NVIDIA per-VF vGPU types, remembered per card model.
//!
//! NVIDIA's per-VF files name a type only in `creatable_vgpu_types`, which lists it only while
//! one more can be created: on a full card the types in use are bare ids. A policy or a caller
//! naming a type ("NVIDIA H100XM-40C") would then be told the type does not exist. The names
//! seen in every read are kept here by card model (the PF's `vendor:device`: NVIDIA type ids
//! and names belong to the GPU model, not to one card) and saved in the state directory, so
//! a daemon restarted on a full card still knows them. The scan itself never invents a name:
//! the inventory carries this memory in [`Inventory::vgpu_type_names`], filled by its keeper.
//!
//! May import: crate::host::atomic, crate::model.

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};

use crate::host::atomic::Replace;
use crate::model::{Inventory, PciFunction, PciIds};

pub use crate::model::VgpuTypeNames;

/// The model key of a PF: `10de:2330`.
pub fn model_key(ids: &PciIds) -> String {
    format!("{:04x}:{:04x}", ids.vendor, ids.device)
}

/// The remembered name of type `id` on the model of `pf`.
pub fn remembered<'i>(inventory: &'i Inventory, pf: &PciFunction, id: u32) -> Option<&'i str> {
    inventory
        .vgpu_type_names
        .get(&model_key(&pf.ids))
        .and_then(|names| names.get(&id))
        .map(String::as_str)
}

/// Adds to `names` what `inventory`'s VFs list in `creatable_vgpu_types` (a renamed type takes
/// its new name); true when `names` changed.
pub fn learn(inventory: &Inventory, names: &mut VgpuTypeNames) -> bool {
    let mut changed = false;
    for vf in inventory.functions.values() {
        let (Some(vgpu), Some(pf)) = (&vf.nvidia_vgpu, vf.physfn) else {
            continue;
        };
        if vgpu.creatable_types.is_empty() {
            continue;
        }
        let Some(pf) = inventory.functions.get(&pf) else {
            continue;
        };
        let model = names.entry(model_key(&pf.ids)).or_default();
        for offer in &vgpu.creatable_types {
            if model.get(&offer.id) != Some(&offer.name) {
                model.insert(offer.id, offer.name.clone());
                changed = true;
            }
        }
    }
    names.retain(|_, m| !m.is_empty());
    changed
}

/// The file name of the saved names in the state directory.
pub const NAMES_FILE: &str = "vgpu-type-names.json";

/// Why the saved names could not be read or written. Reading problems are not fatal: the
/// names are relearned from the next card with room.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error("cannot read the remembered vGPU type names {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the remembered vGPU type names {} are not valid ({why}); starting without them", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("cannot {op} {}; the names saved before stay", path.display())]
    Write {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The names file of a state directory.
#[derive(Debug, Clone)]
pub struct NamesStore {
    dir: PathBuf,
}

impl NamesStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NamesStore { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(NAMES_FILE)
    }

    /// The saved names; empty when none were saved yet.
    pub fn load(&self) -> Result<VgpuTypeNames, NamesError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(VgpuTypeNames::new()),
            Err(source) => return Err(NamesError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| NamesError::Invalid {
            path,
            why: e.to_string(),
        })
    }

    /// Replaces the saved names whole: a temporary beside the file, fsync, rename, fsync of the
    /// directory. On an error the file is what it was (the temporary is removed).
    pub fn save(&self, names: &VgpuTypeNames) -> Result<(), NamesError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{NAMES_FILE}.tmp"));
        let err = |op: &'static str, p: &Path| {
            let path = p.to_path_buf();
            move |source| NamesError::Write { op, path, source }
        };
        let mut text = serde_json::to_vec_pretty(names).map_err(|e| NamesError::Write {
            op: "serialise",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        Replace::new(&path, &tmp)
            .create_dir()
            .write(&text)
            .map_err(|e| err(e.op, &e.path)(e.source))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
