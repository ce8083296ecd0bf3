//! mdevctl's definition format, pure: one definition ([`MdevctlConfig`]) parsed and validated
//! from its text, written back byte for byte as mdevctl writes it, and the `mdevctl list
//! --dumpjson` document. Reading and writing the files below `<root>/etc/mdevctl.d`, and the
//! ledger import, are gpuvirt-core's (`state::mdevctl`).
//!
//! The format, as mdevctl 1.x reads and writes it (`src/mdev.rs`): a JSON object with
//! `mdev_type` (string), `start` (`"auto"` or `"manual"`) and `attrs`, an ordered list of
//! one-entry objects `{"name": "value"}` written to the mdev's sysfs attributes in list order
//! after creation. mdevctl serialises with `serde_json::to_string_pretty` and `preserve_order`:
//! keys in the order `mdev_type`, `start`, `attrs`; two-space indentation; `"attrs": []` when
//! empty; no trailing newline. Unknown top-level keys are ignored, as mdevctl does.
//!
//! May import: crate::names, std, serde, serde_json, uuid.

use std::io;
use std::path::{Path, PathBuf};

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether an mdev is started automatically (mdevctl's vocabulary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MdevStart {
    #[default]
    Auto,
    Manual,
}

/// One mdevctl definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MdevctlConfig {
    pub uuid: Uuid,
    /// The parent's `mdev_bus` name (the directory the file is in).
    pub parent: String,
    pub mdev_type: String,
    pub start: MdevStart,
    /// Written to the mdev's attributes after creation, in this order.
    pub attrs: Vec<(String, String)>,
}

/// Why a definition could not be read, written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum MdevctlError {
    #[error("cannot read mdevctl config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mdevctl config {} is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("mdevctl config {} is not named by a UUID", path.display())]
    BadFileName { path: PathBuf },
    #[error("{name:?} is not a usable mdev parent name (it must be one path component)")]
    BadParentName { name: String },
    #[error("cannot write mdevctl config {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether `name` can be a directory name below `mdevctl.d`: one non-empty path component
/// without control characters (PCI addresses, `mbochs`, `0.0.0001` for vfio-ccw).
pub fn is_safe_parent_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.chars().any(|c| c == '/' || c.is_control())
}

/// Parses a definition's text. `path` names the file in errors.
pub fn parse_config(
    path: &Path,
    parent: &str,
    uuid: Uuid,
    text: &str,
) -> Result<MdevctlConfig, MdevctlError> {
    let malformed = |reason: String| MdevctlError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    if !is_safe_parent_name(parent) {
        return Err(MdevctlError::BadParentName {
            name: parent.chars().take(64).collect(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| malformed("it is not a JSON object".to_string()))?;
    let mdev_type = match object.get("mdev_type") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => {
            // The type becomes `mdev_supported_types/<type>` when the mdev is created.
            crate::names::mdev_type(s).map_err(|e| malformed(e.to_string()))?;
            s.clone()
        }
        Some(serde_json::Value::String(_)) => return Err(malformed("mdev_type is empty".into())),
        Some(_) => return Err(malformed("mdev_type is not a string".into())),
        None => return Err(malformed("mdev_type is missing".into())),
    };
    let start = match object.get("start") {
        Some(serde_json::Value::String(s)) if s == "auto" => MdevStart::Auto,
        Some(serde_json::Value::String(s)) if s == "manual" => MdevStart::Manual,
        Some(other) => {
            return Err(malformed(format!(
                "start is {other}, expected \"auto\" or \"manual\""
            )))
        }
        None => return Err(malformed("start is missing".into())),
    };
    let attrs = match object.get("attrs") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let entry = item
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.iter().next())
                    .ok_or_else(|| {
                        malformed(format!("attrs[{i}] is not an object with one entry"))
                    })?;
                // Each name becomes an attribute path below the mdev when it is started.
                crate::names::attribute(entry.0)
                    .map_err(|e| malformed(format!("attrs[{i}]: {e}")))?;
                let value = entry.1.as_str().ok_or_else(|| {
                    malformed(format!(
                        "attrs[{i}] ({}) has a value that is not a string",
                        entry.0
                    ))
                })?;
                Ok((entry.0.clone(), value.to_string()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed("attrs is not a list".into())),
    };
    Ok(MdevctlConfig {
        uuid,
        parent: parent.to_string(),
        mdev_type,
        start,
        attrs,
    })
}

/// The attrs list as mdevctl writes it: a list of one-entry objects.
struct Attrs<'a>(&'a [(String, String)]);

impl Serialize for Attrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, v)| Attr(k, v)))
    }
}

struct Attr<'a>(&'a str, &'a str);

impl Serialize for Attr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

/// Field order here is the key order mdevctl writes.
#[derive(Serialize)]
struct ConfigJson<'a> {
    mdev_type: &'a str,
    start: MdevStart,
    attrs: Attrs<'a>,
}

impl MdevctlConfig {
    /// The file's contents exactly as mdevctl writes them.
    pub fn to_json(&self) -> String {
        // Serialising strings and a list cannot fail.
        serde_json::to_string_pretty(&self.json()).unwrap_or_default()
    }

    fn json(&self) -> ConfigJson<'_> {
        ConfigJson {
            mdev_type: &self.mdev_type,
            start: self.start,
            attrs: Attrs(&self.attrs),
        }
    }
}

/// Several definitions the way `mdevctl list --dumpjson` prints them: a one-element list
/// holding an object from each parent (in sorted order) to its definitions, each a one-entry
/// object from UUID to the definition, two-space indentation, no trailing newline.
pub fn dump_json(configs: &[MdevctlConfig]) -> String {
    struct ByUuid<'a>(&'a MdevctlConfig);
    impl Serialize for ByUuid<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(&self.0.uuid.hyphenated().to_string(), &self.0.json())?;
            map.end()
        }
    }
    struct ByParent<'a>(Vec<(&'a str, Vec<ByUuid<'a>>)>);
    impl Serialize for ByParent<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(p, list)| (p, list)))
        }
    }
    let mut sorted: Vec<&MdevctlConfig> = configs.iter().collect();
    sorted.sort_by(|a, b| (&a.parent, a.uuid).cmp(&(&b.parent, b.uuid)));
    let mut parents: Vec<(&str, Vec<ByUuid<'_>>)> = Vec::new();
    for c in sorted {
        match parents.last_mut() {
            Some((p, list)) if *p == c.parent => list.push(ByUuid(c)),
            _ => parents.push((&c.parent, vec![ByUuid(c)])),
        }
    }
    serde_json::to_string_pretty(&[ByParent(parents)]).unwrap_or_default()
}

/// Reads a document holding definitions: either one definition (a file from `mdevctl.d`, or
/// `mdevctl list --dumpjson -u UUID` output without its wrapping), whose parent and UUID
/// come from `parent` and `uuid`; or the `mdevctl list --dumpjson` form, which names its
/// own. `source` names the document in errors.
pub fn parse_document(
    source: &Path,
    text: &str,
    parent: Option<&str>,
    uuid: Option<Uuid>,
) -> Result<Vec<MdevctlConfig>, MdevctlError> {
    let malformed = |reason: String| MdevctlError::Malformed {
        path: source.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    let serde_json::Value::Array(items) = value else {
        let parent = parent.ok_or_else(|| {
            malformed("it is one definition; its parent must be given".to_string())
        })?;
        let uuid =
            uuid.ok_or_else(|| malformed("it is one definition; its UUID must be given".into()))?;
        return parse_config(source, parent, uuid, text).map(|c| vec![c]);
    };
    let mut configs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let by_parent = item
            .as_object()
            .ok_or_else(|| malformed(format!("[{i}] is not an object of parents")))?;
        for (p, list) in by_parent {
            let list = list
                .as_array()
                .ok_or_else(|| malformed(format!("[{i}].{p} is not a list")))?;
            for (j, entry) in list.iter().enumerate() {
                let (u, config) = entry
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.iter().next())
                    .ok_or_else(|| {
                        malformed(format!("[{i}].{p}[{j}] is not an object with one UUID"))
                    })?;
                let u: Uuid = u
                    .parse()
                    .map_err(|_| malformed(format!("[{i}].{p}[{j}]: {u:?} is not a UUID")))?;
                if parent.is_some_and(|want| want != p) || uuid.is_some_and(|want| want != u) {
                    continue;
                }
                configs.push(parse_config(source, p, u, &config.to_string())?);
            }
        }
    }
    Ok(configs)
}
