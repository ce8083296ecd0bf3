//! mdevctl's persistent definitions, `<root>/etc/mdevctl.d/<parent>/<uuid>`: reading and
//! validating them, importing them into the ledger (owner mdevctl) and writing gpuvirt's
//! definitions in the same format, byte for byte as mdevctl writes them, so libvirt and
//! mdevctl users keep working.
//!
//! The format, as mdevctl 1.x reads and writes it (`src/mdev.rs`): a JSON object with
//! `mdev_type` (string), `start` (`"auto"` or `"manual"`) and `attrs`, an ordered list of
//! one-entry objects `{"name": "value"}` written to the mdev's sysfs attributes in list order
//! after creation. mdevctl serialises with `serde_json::to_string_pretty` and `preserve_order`:
//! keys in the order `mdev_type`, `start`, `attrs`; two-space indentation; `"attrs": []` when
//! empty; no trailing newline. Unknown top-level keys are ignored, as mdevctl does.
//!
//! The format itself (parsing, validating, writing one definition's text, the dumpjson
//! document) is the pure `gpuvirt_types::mdevctl`, re-exported here; this module adds the
//! files below a root and the ledger; `modify` changes one definition as `mdevctl modify` does.
//! May import: gpuvirt-types, crate::host, crate::state::ledger.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

pub use gpuvirt_types::mdevctl::{
    dump_json, is_dumpjson, is_safe_parent_name, names_from_path, parse_config, parse_document,
    parse_import, MdevctlConfig, MdevctlError,
};

mod modify;

pub use modify::{AttrChange, Modification, ModifyError, Replacement};

use crate::host::atomic::Replace;
use crate::host::root::Root;
use crate::state::ledger::{Ledger, MdevRecord, Owner};

/// mdevctl's directory of callout and notifier scripts: inside `mdevctl.d`, but not a parent.
const SCRIPTS_DIR: &str = "scripts.d";
/// A definition larger than this is not one mdevctl wrote.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Every definition found, and every file that could not be used (one bad file does not hide
/// the others).
#[derive(Debug, Default)]
pub struct MdevctlScan {
    pub configs: Vec<MdevctlConfig>,
    pub errors: Vec<MdevctlError>,
}

/// `<root>/etc/mdevctl.d`.
pub fn config_dir(root: &Root) -> PathBuf {
    root.etc().join("mdevctl.d")
}

/// Reads one definition file; its parent and UUID come from its path.
pub fn read_config(path: &Path) -> Result<MdevctlConfig, MdevctlError> {
    let (parent, uuid) = gpuvirt_types::mdevctl::names_from_path(path)?;
    let parent = parent.ok_or_else(|| MdevctlError::BadParentName {
        name: path.display().to_string(),
    })?;
    let parent = parent.as_str();
    let read_err = |source| MdevctlError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_CONFIG_BYTES + 1), &mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(MdevctlError::Malformed {
            path: path.to_path_buf(),
            reason: format!("it is larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| MdevctlError::Malformed {
        path: path.to_path_buf(),
        reason: "it is not UTF-8".to_string(),
    })?;
    parse_config(path, parent, uuid, &text)
}

/// Reads every definition below `<root>/etc/mdevctl.d`, sorted by parent then UUID. A missing
/// directory is no definitions.
pub fn read_all(root: &Root) -> MdevctlScan {
    let dir = config_dir(root);
    let mut scan = MdevctlScan::default();
    let parents = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return scan,
        Err(source) => {
            scan.errors.push(MdevctlError::Read { path: dir, source });
            return scan;
        }
    };
    let mut parent_dirs: Vec<PathBuf> = parents
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != SCRIPTS_DIR)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    parent_dirs.sort();
    for parent_dir in parent_dirs {
        let entries = match fs::read_dir(&parent_dir) {
            Ok(entries) => entries,
            Err(source) => {
                scan.errors.push(MdevctlError::Read {
                    path: parent_dir,
                    source,
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            // Dot files are editors' and our own temporaries, never definitions.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            match read_config(&file) {
                Ok(c) => scan.configs.push(c),
                Err(e) => scan.errors.push(e),
            }
        }
    }
    scan
}

/// What the core adds to a definition: where its file sits below a root, and its ledger
/// record. (A trait because [`MdevctlConfig`] lives in gpuvirt-types.)
pub trait MdevctlConfigExt {
    /// The file's path below `root`.
    fn path(&self, root: &Root) -> PathBuf;
    /// The definition of a ledger record.
    fn from_record(uuid: Uuid, record: &MdevRecord) -> Self;
    /// The ledger record of an imported definition: defined, not created by gpuvirt.
    fn to_record(&self) -> MdevRecord;
}

impl MdevctlConfigExt for MdevctlConfig {
    fn path(&self, root: &Root) -> PathBuf {
        config_dir(root)
            .join(&self.parent)
            .join(self.uuid.hyphenated().to_string())
    }

    fn from_record(uuid: Uuid, record: &MdevRecord) -> Self {
        Self {
            uuid,
            parent: record.parent.clone(),
            mdev_type: record.type_id.clone(),
            start: record.start,
            attrs: record.attrs.clone(),
        }
    }

    fn to_record(&self) -> MdevRecord {
        MdevRecord {
            parent: self.parent.clone(),
            type_id: self.mdev_type.clone(),
            start: self.start,
            attrs: self.attrs.clone(),
            rule: None,
            defined: true,
            created_by_gpuvirt: false,
        }
    }
}

/// Writes a definition below `root` (the parent's directory is created), replacing the file
/// atomically through a dot-named temporary that mdevctl and [`read_all`] skip.
pub fn write_config(root: &Root, config: &MdevctlConfig) -> Result<PathBuf, MdevctlError> {
    if !is_safe_parent_name(&config.parent) {
        return Err(MdevctlError::BadParentName {
            name: config.parent.chars().take(64).collect(),
        });
    }
    let path = config.path(root);
    let dir = config_dir(root).join(&config.parent);
    let tmp = dir.join(format!(".{}.tmp", config.uuid.hyphenated()));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MdevctlError::Write { path, source }
    };
    // Not fsynced, as mdevctl writes its own definitions.
    Replace::new(&path, &tmp)
        .create_dir()
        .not_durable()
        .write(config.to_json().as_bytes())
        .map_err(|e| {
            // A failed rename has always named the definition itself, not the temporary.
            let failed = if e.op == "rename" { &path } else { &e.path };
            write_err(failed)(e.source)
        })?;
    Ok(path)
}

/// Removes a definition; a missing file is not an error (already undefined).
pub fn remove_config(root: &Root, parent: &str, uuid: Uuid) -> Result<(), MdevctlError> {
    if !is_safe_parent_name(parent) {
        return Err(MdevctlError::BadParentName {
            name: parent.chars().take(64).collect(),
        });
    }
    let path = config_dir(root)
        .join(parent)
        .join(uuid.hyphenated().to_string());
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MdevctlError::Write { path, source }),
    }
}

/// What [`import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Definitions recorded (new or updated), owner mdevctl.
    pub imported: Vec<Uuid>,
    /// Definitions whose UUID gpuvirt itself created: the ledger's record is kept.
    pub kept_gpuvirt: Vec<Uuid>,
}

/// Records mdevctl's definitions in the ledger with owner mdevctl (`created_by_gpuvirt =
/// false`), so they are reported and never removed by gpuvirt. A UUID gpuvirt created keeps its
/// record: the file is then gpuvirt's own export.
pub fn import(ledger: &mut Ledger, configs: &[MdevctlConfig]) -> ImportReport {
    let mut report = ImportReport::default();
    for config in configs {
        if ledger.owns_mdev(&config.uuid) {
            report.kept_gpuvirt.push(config.uuid);
            continue;
        }
        add_definition(ledger, config.uuid, config.to_record());
        report.imported.push(config.uuid);
    }
    report
}

/// gpuvirt's own defined mdevs as mdevctl definitions (for `gpuvirtctl mdev export --mdevctl`).
/// A UUID defined under several parents is exported under each.
pub fn export(ledger: &Ledger) -> Vec<MdevctlConfig> {
    all_definitions(ledger)
        .filter(|(_, r)| r.created_by_gpuvirt)
        .map(|(uuid, r)| MdevctlConfig::from_record(uuid, r))
        .collect()
}

/// Every defined record of the ledger with its UUID: those of [`Ledger::mdevs`] and those
/// under other parents ([`Ledger::more_mdev_definitions`]).
pub fn all_definitions(ledger: &Ledger) -> impl Iterator<Item = (Uuid, &MdevRecord)> {
    let primary = ledger.mdevs.iter().filter(|(_, r)| r.defined);
    let more = ledger
        .more_mdev_definitions
        .iter()
        .flat_map(|(u, list)| list.iter().map(move |r| (u, r)));
    primary.chain(more).map(|(u, r)| (*u, r))
}

/// Every definition of `uuid` in the ledger, sorted by parent.
pub fn definitions_of<'a>(ledger: &'a Ledger, uuid: &Uuid) -> Vec<&'a MdevRecord> {
    let mut out: Vec<&MdevRecord> = ledger
        .mdevs
        .get(uuid)
        .filter(|r| r.defined)
        .into_iter()
        .collect();
    out.extend(ledger.more_mdev_definitions.get(uuid).into_iter().flatten());
    out.sort_by(|a, b| a.parent.cmp(&b.parent));
    out
}

/// Why a request naming a UUID (and perhaps a parent) does not name one definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error(
        "mdev {uuid} is defined under {} parents ({}); say which with the parent option",
        parents.len(),
        parents.join(", ")
    )]
    Ambiguous { uuid: Uuid, parents: Vec<String> },
    #[error("mdev {uuid} is not defined under {parent}; it is defined under {}", parents.join(", "))]
    NotUnder {
        uuid: Uuid,
        parent: String,
        parents: Vec<String>,
    },
}

/// The definition of `uuid` a request means: the one under `parent`, or the only one.
/// `Ok(None)`: `uuid` is not defined at all (in the ledger).
pub fn pick_definition<'a>(
    ledger: &'a Ledger,
    uuid: &Uuid,
    parent: Option<&str>,
) -> Result<Option<&'a MdevRecord>, PickError> {
    let all = definitions_of(ledger, uuid);
    let parents = || all.iter().map(|r| r.parent.clone()).collect::<Vec<_>>();
    match parent {
        _ if all.is_empty() => Ok(None),
        Some(p) => all
            .iter()
            .find(|r| r.parent == p)
            .map(|r| Some(*r))
            .ok_or_else(|| PickError::NotUnder {
                uuid: *uuid,
                parent: p.to_string(),
                parents: parents(),
            }),
        None if all.len() == 1 => Ok(Some(all[0])),
        None => Err(PickError::Ambiguous {
            uuid: *uuid,
            parents: parents(),
        }),
    }
}

/// Records a definition of `uuid`. It becomes the record in [`Ledger::mdevs`] unless that
/// holds one under another parent (defined, or the record of an active device), beside which
/// it is kept in [`Ledger::more_mdev_definitions`]. One under the same parent is replaced.
pub fn add_definition(ledger: &mut Ledger, uuid: Uuid, record: MdevRecord) {
    match ledger.mdevs.get(&uuid) {
        Some(r) if r.parent != record.parent => {
            let list = ledger.more_mdev_definitions.entry(uuid).or_default();
            list.retain(|m| m.parent != record.parent);
            list.push(record);
            list.sort_by(|a, b| a.parent.cmp(&b.parent));
        }
        _ => {
            ledger.mdevs.insert(uuid, record);
        }
    }
}

/// Makes the definition of `uuid` under `parent` the record in [`Ledger::mdevs`], so that
/// starting it keeps its start mode and attrs; the definition there before moves beside it.
/// Nothing changes when it is there already or `uuid` is not defined under `parent`.
pub fn make_primary(ledger: &mut Ledger, uuid: Uuid, parent: &str) {
    let Some(list) = ledger.more_mdev_definitions.get_mut(&uuid) else {
        return;
    };
    let Some(i) = list.iter().position(|r| r.parent == parent) else {
        return;
    };
    let chosen = list.remove(i);
    if let Some(old) = ledger.mdevs.insert(uuid, chosen) {
        if old.defined {
            list.push(old);
            list.sort_by(|a, b| a.parent.cmp(&b.parent));
        }
    }
    if list.is_empty() {
        ledger.more_mdev_definitions.remove(&uuid);
    }
}

/// Moves the record of `uuid` out of [`Ledger::mdevs`] before a device of that UUID is created
/// from a definition the ledger does not hold (one of mdevctl's files): a definition is kept
/// beside, under its parent, where [`settle`] finds it again; an undefined record is dropped.
pub fn step_aside(ledger: &mut Ledger, uuid: Uuid) {
    if let Some(old) = ledger.mdevs.remove(&uuid) {
        if old.defined {
            let list = ledger.more_mdev_definitions.entry(uuid).or_default();
            list.retain(|m| m.parent != old.parent);
            list.push(old);
            list.sort_by(|a, b| a.parent.cmp(&b.parent));
        }
    }
}

/// Drops the definition of `uuid` under `parent`. When it is the record in
/// [`Ledger::mdevs`] and the device is `active`, the record stays, no longer defined (the
/// device is then a transient one, as `mdevctl undefine` leaves it); else another parent's
/// definition, if any, takes its place.
pub fn remove_definition(ledger: &mut Ledger, uuid: Uuid, parent: &str, active: bool) {
    if let Some(list) = ledger.more_mdev_definitions.get_mut(&uuid) {
        list.retain(|r| r.parent != parent);
        if list.is_empty() {
            ledger.more_mdev_definitions.remove(&uuid);
        }
    }
    match ledger.mdevs.get_mut(&uuid) {
        Some(r) if r.parent == parent && active => r.defined = false,
        Some(r) if r.parent == parent => {
            ledger.mdevs.remove(&uuid);
        }
        _ => {}
    }
    settle(ledger, uuid);
}

/// Keeps [`Ledger::more_mdev_definitions`] beside a record: when [`Ledger::mdevs`] lost
/// the record of `uuid` (its device was removed and it was not defined), another parent's
/// definition takes its place.
pub fn settle(ledger: &mut Ledger, uuid: Uuid) {
    if ledger.mdevs.contains_key(&uuid) {
        return;
    }
    let Some(list) = ledger.more_mdev_definitions.get_mut(&uuid) else {
        return;
    };
    if !list.is_empty() {
        let first = list.remove(0);
        ledger.mdevs.insert(uuid, first);
    }
    if list.is_empty() {
        ledger.more_mdev_definitions.remove(&uuid);
    }
}

/// One persistent mdev definition as gpuvirt reports it (`Manager.ListMdevDefinitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Definition {
    pub config: MdevctlConfig,
    /// [`Owner::Gpuvirt`] for gpuvirt's own definitions (it creates and may remove them),
    /// [`Owner::Mdevctl`] for mdevctl's files and definitions imported from them as mdevctl's.
    pub owner: Owner,
    /// An mdev with this UUID exists now, on this definition's parent.
    pub active: bool,
}

/// Every definition gpuvirt knows, sorted by parent, UUID, then owner: the ledger's defined
/// records and mdevctl's files below `mdevctl.d` (`configs`, as [`read_all`] found them).
///
/// A ledger record imported from mdevctl is shown only while no file names its UUID: the file
/// is the current truth for mdevctl's own definitions. A file with the UUID of one of gpuvirt's
/// definitions is listed beside it, because mdevctl acts on that file too. A UUID defined
/// under several parents is listed under each; `is_active(uuid, parent)` says whether the
/// device is active on that parent.
pub fn definitions(
    ledger: &Ledger,
    configs: &[MdevctlConfig],
    is_active: impl Fn(&Uuid, &str) -> bool,
) -> Vec<Definition> {
    let mut out: Vec<Definition> = Vec::new();
    for (uuid, record) in all_definitions(ledger) {
        let owner = if record.created_by_gpuvirt {
            Owner::Gpuvirt
        } else {
            Owner::Mdevctl
        };
        if owner == Owner::Mdevctl && configs.iter().any(|c| c.uuid == uuid) {
            continue;
        }
        out.push(Definition {
            config: MdevctlConfig::from_record(uuid, record),
            owner,
            active: is_active(&uuid, &record.parent),
        });
    }
    out.extend(configs.iter().map(|c| Definition {
        config: c.clone(),
        owner: Owner::Mdevctl,
        active: is_active(&c.uuid, &c.parent),
    }));
    out.sort_by(|a, b| {
        (&a.config.parent, a.config.uuid, a.owner.as_str()).cmp(&(
            &b.config.parent,
            b.config.uuid,
            b.owner.as_str(),
        ))
    });
    out
}
