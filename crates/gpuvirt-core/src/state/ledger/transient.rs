//! The ledger's second file: records of mdevs with no persistent definition, which live only
//! as long as the device does (until it is removed, or the host reboots).
//!
//! Such a record says one thing: gpuvirt wrote this device's `create`, so it may remove it.
//! The device cannot outlive a power loss, so neither needs its record: the file is replaced
//! atomically (temporary + rename, so a killed daemon finds the old file or the new one) but
//! not fsynced, as mdevctl does not sync its files either. That takes the two fsyncs (about
//! 10 ms on an ext4 /var) out of every `CreateMdev` of a transient vGPU. Everything else (slots,
//! defined mdevs, VFs, SR-IOV counts) stays in the durable main file, which is rewritten only
//! when its bytes change. Generic over the record type, so it needs nothing of its parent.
//! May import: crate::host::atomic.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::host::atomic::{AtomicError, Replace};

/// The transient records' file name inside the state directory.
pub const LEDGER_TRANSIENT_FILE: &str = "ledger-transient.json";
pub(super) const LEDGER_TRANSIENT_TMP_FILE: &str = "ledger-transient.json.tmp";

/// What the transient file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "R: DeserializeOwned"))]
struct TransientFile<R> {
    version: u32,
    #[serde(default = "BTreeMap::new")]
    mdevs: BTreeMap<Uuid, R>,
}

/// The file's bytes for `mdevs`, in format `version`.
pub(super) fn encode<R: Serialize + Clone>(version: u32, mdevs: &BTreeMap<Uuid, R>) -> Vec<u8> {
    let file = TransientFile {
        version,
        mdevs: mdevs.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&file).unwrap_or_default();
    text.push(b'\n');
    text
}

/// What reading the transient file found.
pub(super) enum Read<R> {
    /// No file: no transient records.
    Missing,
    /// Unusable, and why.
    Bad(String),
    Good {
        mdevs: BTreeMap<Uuid, R>,
        bytes: Vec<u8>,
    },
}

/// Reads the transient file at `path` (at most `max_bytes`, format `version` or older); only
/// an I/O error other than "not found" is an error.
pub(super) fn read<R: DeserializeOwned>(
    path: &Path,
    version: u32,
    max_bytes: u64,
) -> io::Result<Read<R>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    if bytes.len() as u64 > max_bytes {
        return Ok(Read::Bad(format!("it is larger than {max_bytes} bytes")));
    }
    let file: TransientFile<R> = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => return Ok(Read::Bad(format!("it is not a valid ledger file: {e}"))),
    };
    if file.version > version {
        return Ok(Read::Bad(format!(
            "it has format version {}, newer than this gpuvirt understands ({version})",
            file.version
        )));
    }
    Ok(Read::Good {
        mdevs: file.mdevs,
        bytes,
    })
}

/// Replaces the transient file with `bytes` (atomic, not synced; see the module comment).
pub(super) fn write(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    Replace::new(path, tmp)
        .create_dir()
        .not_durable()
        .write(bytes)
}
