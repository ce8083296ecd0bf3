//! The ownership ledger: what gpuvirt rebound or created, and the driver it found, kept on disk.
//!
//! gpuvirtd restores from it after a restart and consults it before removing or rebinding
//! anything, so it never touches what other tools (mdevctl, libvirt, KubeVirt) made. It is
//! written whole with write-temporary + fsync + rename + fsync-directory, and the previous
//! generation is kept as `ledger.json.prev`: a corrupted or truncated main file falls back to the
//! previous one (reported, never silent), so an original driver is not forgotten. Records of
//! mdevs with no definition, which die with the device, live in a second file written without
//! fsync ([`transient`]); loading merges the two.
//!
//! May import: gpuvirt-types (MdevStart), crate::host::atomic, crate::model.

mod slot;
mod transient;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use gpuvirt_types::MdevStart;
pub use slot::{FunctionRecord, PresentFunction, Removal, Returned, SlotRecord, SlotState};
pub use transient::LEDGER_TRANSIENT_FILE;

use crate::host::atomic::{AtomicError, Replace};
use crate::model::{PciAddress, PciSlot};

/// The on-disk format this code writes and reads.
pub const LEDGER_VERSION: u32 = 1;
/// The ledger's file name inside the state directory.
pub const LEDGER_FILE: &str = "ledger.json";
/// The previous generation, kept for recovery.
pub const LEDGER_PREV_FILE: &str = "ledger.json.prev";
const LEDGER_TMP_FILE: &str = "ledger.json.tmp";
const LEDGER_PREV_TMP_FILE: &str = "ledger.json.prev.tmp";
/// Who made an mdev, and so who may remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// gpuvirt wrote its `create` (the ledger says so).
    Gpuvirt,
    /// An mdevctl definition (`/etc/mdevctl.d/<parent>/<uuid>`) exists, or was imported.
    Mdevctl,
    /// Anything else: libvirt's node devices, KubeVirt, a hand-written `create`.
    Other,
}

impl Owner {
    pub fn as_str(&self) -> &'static str {
        match self {
            Owner::Gpuvirt => "gpuvirt",
            Owner::Mdevctl => "mdevctl",
            Owner::Other => "other",
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ledger larger than this is not one gpuvirt wrote.
const MAX_LEDGER_BYTES: u64 = 64 << 20;

/// An mdev gpuvirt knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevRecord {
    /// The parent's `mdev_bus` name.
    pub parent: String,
    pub type_id: String,
    pub start: MdevStart,
    /// Attributes written after creation, in order (order matters).
    #[serde(default)]
    pub attrs: Vec<(String, String)>,
    pub rule: Option<String>,
    /// A persistent definition exists (survives reboots).
    pub defined: bool,
    /// gpuvirt wrote the `create`; only then may it remove the device.
    pub created_by_gpuvirt: bool,
}

/// An NVIDIA per-VF vGPU gpuvirt created (`current_vgpu_type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuRecord {
    pub type_id: u32,
    pub rule: Option<String>,
}

/// A PF whose `sriov_numvfs` gpuvirt changed, and the count it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SriovRecord {
    pub num_vfs: u32,
    pub original_num_vfs: u32,
    pub rule: Option<String>,
}

/// Everything gpuvirt owns on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub version: u32,
    /// By slot, `DDDD:BB:DD` (see [`Ledger::slot_key`]).
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default)]
    pub mdevs: BTreeMap<Uuid, MdevRecord>,
    /// Definitions of a UUID under parents other than its record's in [`Ledger::mdevs`]:
    /// mdevctl lets one UUID be defined under several parents, of which only one can be
    /// active. The record in `mdevs` is the one started last (or defined first); these are
    /// each `defined`, under parents that differ from each other's and from its. Written
    /// only when there are some, so older ledgers read and write as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub more_mdev_definitions: BTreeMap<Uuid, Vec<MdevRecord>>,
    #[serde(default)]
    pub vgpus: BTreeMap<PciAddress, VgpuRecord>,
    #[serde(default)]
    pub sriov: BTreeMap<PciAddress, SriovRecord>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            version: LEDGER_VERSION,
            slots: BTreeMap::new(),
            mdevs: BTreeMap::new(),
            more_mdev_definitions: BTreeMap::new(),
            vgpus: BTreeMap::new(),
            sriov: BTreeMap::new(),
        }
    }
}

impl Ledger {
    /// The key of a slot in [`Ledger::slots`].
    pub fn slot_key(slot: PciSlot) -> String {
        slot.to_string()
    }

    pub fn slot(&self, slot: PciSlot) -> Option<&SlotRecord> {
        self.slots.get(&Self::slot_key(slot))
    }

    /// The slot record that holds `address`, if gpuvirt rebound that function.
    pub fn function(&self, address: PciAddress) -> Option<(&SlotRecord, Option<&str>)> {
        let record = self.slot(address.slot())?;
        let original = record.original_driver(address)?;
        Some((record, original))
    }

    /// Every function gpuvirt rebound and its original driver (the planner's
    /// `PlanState::original_drivers`). A removed slot's are left out: no card is there to
    /// return, and one that comes back is judged by what it is bound to then.
    pub fn original_drivers(&self) -> BTreeMap<PciAddress, Option<String>> {
        self.slots
            .values()
            .filter(|s| s.state != SlotState::Removed)
            .flat_map(|s| s.functions.iter())
            .map(|f| (f.address, f.original_driver.clone()))
            .collect()
    }

    /// Closes the open record of `slot`, whose every function is gone (see
    /// [`SlotRecord::close_removed`]); true when it changed.
    pub fn close_removed_slot(
        &mut self,
        slot: PciSlot,
        at: u64,
        ids: &BTreeMap<PciAddress, (u16, u16)>,
    ) -> bool {
        let record = self.slots.get_mut(&Self::slot_key(slot));
        record.is_some_and(|r| r.close_removed(at, ids))
    }

    /// Judges the card now in `slot` against its removed record (see
    /// [`SlotRecord::judge_return`]) and drops the record when the verdict says so.
    pub fn card_returned(
        &mut self,
        slot: PciSlot,
        present: &[PresentFunction],
    ) -> Option<Returned> {
        let key = Self::slot_key(slot);
        let returned = self.slots.get_mut(&key)?.judge_return(present)?;
        if returned.drops_record() {
            self.slots.remove(&key);
        }
        Some(returned)
    }

    /// Whether gpuvirt created this mdev (and so may remove it).
    pub fn owns_mdev(&self, uuid: &Uuid) -> bool {
        self.mdevs.get(uuid).is_some_and(|m| m.created_by_gpuvirt)
    }

    /// Checks what serde cannot: slot keys are slots and agree with their functions.
    fn check(&self) -> Result<(), String> {
        if self.version > LEDGER_VERSION {
            return Err(format!(
                "it has format version {}, newer than this gpuvirt understands ({LEDGER_VERSION})",
                self.version
            ));
        }
        for (key, record) in &self.slots {
            let slot: PciAddress = format!("{key}.0")
                .parse()
                .map_err(|_| format!("slot key {key:?} is not a PCI slot (DDDD:BB:DD)"))?;
            if Self::slot_key(slot.slot()) != *key {
                return Err(format!("slot key {key:?} is not in canonical form"));
            }
            if let Some(f) = record
                .functions
                .iter()
                .find(|f| f.address.slot() != slot.slot())
            {
                return Err(format!(
                    "slot {key} lists function {} of another slot",
                    f.address
                ));
            }
        }
        Ok(())
    }
}

/// `ledger` split into what the main file keeps and the records of mdevs without a
/// definition (which no definition keeps past the device: see [`transient`]).
fn split_transient(ledger: &Ledger) -> (Ledger, BTreeMap<Uuid, MdevRecord>) {
    let mut main = ledger.clone();
    let (transient, durable): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut main.mdevs)
        .into_iter()
        .partition(|(_, r)| !r.defined);
    main.mdevs = durable;
    (main, transient)
}

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot read the ledger {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the ledger {} is unreadable ({main}) and so is its previous generation ({prev}); \
         gpuvirt will not guess which devices it owns: inspect or restore the file, or remove \
         both to start with an empty ledger",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        main: String,
        prev: String,
    },
    #[error(
        "cannot write the ledger in {}: the file system is read-only; the previous ledger is unchanged",
        dir.display()
    )]
    ReadOnly { dir: PathBuf },
    #[error(
        "cannot write the ledger in {}: no space left on the device; the previous ledger is unchanged",
        dir.display()
    )]
    NoSpace { dir: PathBuf },
    #[error("cannot {op} {}; the previous ledger is unchanged", path.display())]
    Write {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the ledger came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerSource {
    /// No ledger yet: a fresh, empty one.
    Empty,
    Main,
    /// The main file was unusable; the previous generation was used.
    Previous,
}

/// A loaded ledger and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub ledger: Ledger,
    pub source: LedgerSource,
    /// Set when the main file was unusable, saying why (the daemon logs it as a warning).
    pub warning: Option<String>,
}

/// The ledger's files in a state directory (`/var/lib/gpuvirt` on a host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerStore {
    dir: PathBuf,
}

enum Parsed {
    Missing,
    Bad(String),
    Good(Ledger),
}

impl LedgerStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The main file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LEDGER_FILE)
    }

    /// The previous generation's path.
    pub fn prev_path(&self) -> PathBuf {
        self.dir.join(LEDGER_PREV_FILE)
    }

    /// The transient records' path (see [`transient`]).
    pub fn transient_path(&self) -> PathBuf {
        self.dir.join(LEDGER_TRANSIENT_FILE)
    }

    /// Every file a save may replace: main, previous generation, transient records.
    pub fn files(&self) -> [PathBuf; 3] {
        [self.path(), self.prev_path(), self.transient_path()]
    }

    /// Loads the ledger (see [`LedgerStore::load_reporting`] for the fallback warning).
    pub fn load(&self) -> Result<Ledger, LedgerError> {
        self.load_reporting().map(|l| l.ledger)
    }

    /// Loads the ledger: the main file, else the previous generation with a warning, else an
    /// empty ledger when neither exists. Both present and unusable is an error, never an empty
    /// ledger, because that would forget original drivers. The transient records are added
    /// (the main file wins where both hold a UUID: it is written first when a record moves
    /// there); an unusable transient file is a warning, as its mdevs then only look like
    /// another tool's, which gpuvirt does not remove.
    pub fn load_reporting(&self) -> Result<Loaded, LedgerError> {
        let mut loaded = self.load_main()?;
        let path = self.transient_path();
        match self.read_transient()? {
            transient::Read::Missing => {}
            transient::Read::Bad(why) => {
                let warning = format!(
                    "the transient ledger {} is unusable ({why}); the mdevs without a \
                     definition that it recorded are treated as another tool's until removed",
                    path.display()
                );
                loaded.warning = Some(match loaded.warning.take() {
                    Some(w) => format!("{w}; {warning}"),
                    None => warning,
                });
            }
            transient::Read::Good { mdevs, .. } => {
                for (uuid, record) in mdevs {
                    loaded.ledger.mdevs.entry(uuid).or_insert(record);
                }
            }
        }
        Ok(loaded)
    }

    /// The transient file as it is now; only an I/O error other than "not found" is an error.
    fn read_transient(&self) -> Result<transient::Read<MdevRecord>, LedgerError> {
        let path = self.transient_path();
        transient::read(&path, LEDGER_VERSION, MAX_LEDGER_BYTES)
            .map_err(|source| LedgerError::Read { path, source })
    }

    fn load_main(&self) -> Result<Loaded, LedgerError> {
        let main = self.parse(&self.path())?;
        let main_problem = match main {
            Parsed::Good(ledger) => {
                return Ok(Loaded {
                    ledger,
                    source: LedgerSource::Main,
                    warning: None,
                })
            }
            Parsed::Missing => None,
            Parsed::Bad(why) => Some(why),
        };
        match (self.parse(&self.prev_path())?, main_problem) {
            (Parsed::Missing, None) => Ok(Loaded {
                ledger: Ledger::default(),
                source: LedgerSource::Empty,
                warning: None,
            }),
            (Parsed::Good(ledger), problem) => {
                let why = problem.unwrap_or_else(|| "it is missing".to_string());
                Ok(Loaded {
                    ledger,
                    source: LedgerSource::Previous,
                    warning: Some(format!(
                        "the ledger {} is unusable ({why}); using the previous generation {}, \
                         which may lack the last change",
                        self.path().display(),
                        self.prev_path().display()
                    )),
                })
            }
            (Parsed::Missing, Some(main)) => Err(LedgerError::Corrupt {
                path: self.path(),
                main,
                prev: "it does not exist".to_string(),
            }),
            (Parsed::Bad(prev), main) => Err(LedgerError::Corrupt {
                path: self.path(),
                main: main.unwrap_or_else(|| "it is missing".to_string()),
                prev,
            }),
        }
    }

    fn parse(&self, path: &Path) -> Result<Parsed, LedgerError> {
        let read_err = |source| LedgerError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Parsed::Missing),
            Err(e) => return Err(read_err(e)),
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_LEDGER_BYTES + 1), &mut bytes)
            .map_err(read_err)?;
        if bytes.is_empty() {
            return Ok(Parsed::Bad("it is empty".to_string()));
        }
        if bytes.len() as u64 > MAX_LEDGER_BYTES {
            return Ok(Parsed::Bad(format!(
                "it is larger than {MAX_LEDGER_BYTES} bytes"
            )));
        }
        let ledger: Ledger = match serde_json::from_slice(&bytes) {
            Ok(l) => l,
            Err(e) => return Ok(Parsed::Bad(format!("it is not a valid ledger: {e}"))),
        };
        match ledger.check() {
            Ok(()) => Ok(Parsed::Good(ledger)),
            Err(why) => Ok(Parsed::Bad(why)),
        }
    }

    /// Writes `ledger` atomically: the main file (durable; the old one becomes the previous
    /// generation) only when its bytes change, the transient records (see [`transient`]) only
    /// when theirs do.
    ///
    /// On any error the ledger loads as it did before the call (temporaries are removed, a
    /// transient file already replaced is put back). A record moving into the main file
    /// (a running vGPU gaining a definition) stays in the transient file until the main file
    /// holds it, and one moving out (a definition removed from a running vGPU) is in the
    /// transient file before the main file drops it, so no instant forgets it.
    pub fn save(&self, ledger: &Ledger) -> Result<(), LedgerError> {
        let (main, new_transient) = split_transient(ledger);
        let tpath = self.transient_path();
        let ttmp = self.dir.join(transient::LEDGER_TRANSIENT_TMP_FILE);
        let (old_transient, old_bytes) = match self.read_transient()? {
            transient::Read::Good { mdevs, bytes } => (mdevs, Some(bytes)),
            transient::Read::Missing => (BTreeMap::new(), None),
            // Rewritten below: the bytes differ from any good file's.
            transient::Read::Bad(_) => (BTreeMap::new(), Some(Vec::new())),
        };
        let moving_in: BTreeMap<Uuid, MdevRecord> = old_transient
            .into_iter()
            .filter(|(uuid, _)| main.mdevs.contains_key(uuid))
            .collect();
        let mut interim = new_transient.clone();
        interim.extend(moving_in.clone());
        let interim_bytes = transient::encode(LEDGER_VERSION, &interim);
        let unchanged = match &old_bytes {
            Some(b) => *b == interim_bytes,
            None => interim.is_empty(),
        };
        let transient_err = |e: AtomicError| self.write_err(e.op, &e.path, e.source);
        if !unchanged {
            transient::write(&tpath, &ttmp, &interim_bytes).map_err(transient_err)?;
        }
        let main_bytes = Self::encode_main(&main, &self.path())?;
        if fs::read(self.path()).ok().as_deref() != Some(main_bytes.as_slice()) {
            let tmp = self.dir.join(LEDGER_TMP_FILE);
            if let Err(e) = self.save_via(&main_bytes, &tmp) {
                // Best effort: a leftover temporary is harmless (overwritten next time).
                let _ = fs::remove_file(&tmp);
                let _ = fs::remove_file(self.dir.join(LEDGER_PREV_TMP_FILE));
                if !unchanged {
                    let _ = match &old_bytes {
                        Some(b) => transient::write(&tpath, &ttmp, b),
                        None => fs::remove_file(&tpath)
                            .map_err(|e| AtomicError::new("remove", &tpath, e)),
                    };
                }
                return Err(e);
            }
        }
        if !moving_in.is_empty() {
            transient::write(
                &tpath,
                &ttmp,
                &transient::encode(LEDGER_VERSION, &new_transient),
            )
            .map_err(transient_err)?;
        }
        Ok(())
    }

    fn encode_main(main: &Ledger, path: &Path) -> Result<Vec<u8>, LedgerError> {
        let mut text = serde_json::to_vec_pretty(main).map_err(|e| LedgerError::Write {
            op: "serialise the ledger for",
            path: path.to_path_buf(),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        Ok(text)
    }

    fn save_via(&self, text: &[u8], tmp: &Path) -> Result<(), LedgerError> {
        let main = self.path();
        Replace::new(&main, tmp)
            .create_dir()
            .write_then(text, || {
                // Keep the current generation as .prev: link it under a temporary name and
                // rename that over .prev, so at every instant both a main file and a previous
                // one exist.
                let prev_tmp = self.dir.join(LEDGER_PREV_TMP_FILE);
                if main.exists() {
                    let _ = fs::remove_file(&prev_tmp);
                    fs::hard_link(&main, &prev_tmp)
                        .map_err(|e| AtomicError::new("link", &prev_tmp, e))?;
                    fs::rename(&prev_tmp, self.prev_path())
                        .map_err(|e| AtomicError::new("rename", &prev_tmp, e))?;
                }
                Ok(())
            })
            .map_err(|e| self.write_err(e.op, &e.path, e.source))
    }

    fn write_err(&self, op: &'static str, path: &Path, source: io::Error) -> LedgerError {
        match source.kind() {
            io::ErrorKind::ReadOnlyFilesystem => LedgerError::ReadOnly {
                dir: self.dir.clone(),
            },
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => LedgerError::NoSpace {
                dir: self.dir.clone(),
            },
            _ => LedgerError::Write {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}
