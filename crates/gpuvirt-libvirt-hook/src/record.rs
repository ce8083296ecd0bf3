//! What the hook did for one domain, kept in `<state dir>/<domain>.json` between `prepare`
//! and `release` so that `release` undoes only that. Written atomically (a temporary file in
//! the same directory, fsync, rename). May import: serde_json, crate::error.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::HookError;

/// The default state directory (a tmpfs: a reboot forgets what no longer exists either).
pub const DEFAULT_STATE_DIR: &str = "/run/gpuvirt/libvirt-hook";

/// The changes the hook made for a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub domain: String,
    /// mdevs the hook started (StartMdev); `release` stops them.
    #[serde(default)]
    pub started_mdevs: Vec<String>,
    /// Cards the hook gave to vfio-pci (AssignPassthrough), by their GPU's address;
    /// `release` returns them.
    #[serde(default)]
    pub assigned_cards: Vec<String>,
}

impl Record {
    pub fn is_empty(&self) -> bool {
        self.started_mdevs.is_empty() && self.assigned_cards.is_empty()
    }
}

/// The record file of `domain` under `dir`. libvirt forbids `/` in names, but the name is
/// still escaped: only `[A-Za-z0-9._-]` stay, anything else becomes `%XX`, and a leading `.`
/// too (no hidden files, no `..`).
pub fn path(dir: &Path, domain: &str) -> PathBuf {
    let mut name = String::new();
    for (i, b) in domain.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    dir.join(format!("{name}.json"))
}

/// The record of `domain`; `None` when there is none.
pub fn load(dir: &Path, domain: &str) -> Result<Option<Record>, HookError> {
    let file = path(dir, domain);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HookError::Record {
                doing: "read",
                path: file.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| HookError::Record {
            doing: "parse",
            path: file.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Writes `record` (an empty one removes the file).
pub fn store(dir: &Path, record: &Record) -> Result<(), HookError> {
    let file = path(dir, &record.domain);
    let failed = |doing: &'static str, source: std::io::Error| HookError::Record {
        doing,
        path: file.display().to_string(),
        source,
    };
    if record.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed("remove", e)),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir).map_err(|e| failed("create the directory of", e))?;
    let mut text = serde_json::to_string_pretty(record)
        .map_err(|e| failed("encode", std::io::Error::other(e)))?;
    text.push('\n');
    let tmp = file.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    written.map_err(|e| failed("write", e))?;
    std::fs::rename(&tmp, &file).map_err(|e| failed("replace", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_into_one_file_name() {
        let d = Path::new("/s");
        assert_eq!(path(d, "vm-1.a_b"), Path::new("/s/vm-1.a_b.json"));
        assert_eq!(path(d, "../x y"), Path::new("/s/%2E.%2Fx%20y.json"));
    }

    #[test]
    fn store_load_and_an_empty_record_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("hook");
        assert_eq!(load(&state, "vm").unwrap(), None);
        let r = Record {
            domain: "vm".into(),
            started_mdevs: vec!["u".into()],
            assigned_cards: vec![],
        };
        store(&state, &r).unwrap();
        assert_eq!(load(&state, "vm").unwrap(), Some(r));
        store(
            &state,
            &Record {
                domain: "vm".into(),
                ..Record::default()
            },
        )
        .unwrap();
        assert_eq!(load(&state, "vm").unwrap(), None);
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "no temporary left"
        );
    }
}
