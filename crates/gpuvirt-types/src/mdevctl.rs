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
//! `mdevctl list --dumpjson` (`src/main.rs`, `format_json`): `[]` when nothing is listed, else
//! a one-element list of an object from parent to a list of one-entry objects from UUID to
//! the definition; one UUID may appear under several parents. With `-u UUID` and exactly one
//! match it prints that definition alone, as in its file. mdevctl 1.4 writes these bytes to
//! standard output as they are; 1.2 and 1.3 print them with `println!`, one `\n` more.
//! The documents of `tests/corpus/` are checked against these rules.
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

/// Why a definition could not be read, written or accepted. Each message has one subject:
/// the file or document (`mdevctl config PATH`) and what is wrong with it; [`MdevctlError::reason`] is the
/// message without the subject, for a caller that names the document itself (the daemon's
/// `argument 'config': ...`).
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
    #[error(
        "mdevctl config {}: the file name is not a UUID (mdevctl names each definition \
         <parent>/<uuid>)",
        path.display()
    )]
    BadFileName { path: PathBuf },
    #[error("{name:?} is not a usable mdev parent name (it must be one path component)")]
    BadParentName { name: String },
    /// One definition (not a `list --dumpjson` document), whose parent or UUID nobody gave.
    #[error(
        "mdevctl config {} is one definition, which does not name its {missing}; give the {missing}",
        path.display()
    )]
    Unnamed {
        path: PathBuf,
        missing: &'static str,
    },
    #[error("cannot write mdevctl config {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl MdevctlError {
    /// The message without the document's name: what is wrong, naming the entry and field.
    pub fn reason(&self) -> String {
        match self {
            MdevctlError::Malformed { reason, .. } => reason.clone(),
            MdevctlError::BadFileName { .. } => "the file name is not a UUID".to_string(),
            MdevctlError::Unnamed { missing, .. } => {
                format!(
                    "it is one definition, which does not name its {missing}; give the {missing}"
                )
            }
            other => other.to_string(),
        }
    }
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
        serde_json::from_str(text).map_err(|e| malformed(format!("it is not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| malformed("it is not a JSON object".to_string()))?;
    let mdev_type = match object.get("mdev_type") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => {
            // The type becomes `mdev_supported_types/<type>` when the mdev is created.
            crate::names::mdev_type(s).map_err(|e| malformed(format!("mdev_type: {e}")))?;
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
/// object from UUID to the definition, two-space indentation, no trailing newline. No
/// definitions at all is `[]`, as mdevctl prints an empty host (not a list holding `{}`).
/// One UUID may be defined under several parents (mdevctl allows it): it is listed under each.
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
    if configs.is_empty() {
        return "[]".to_string();
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

/// Where an entry of a `list --dumpjson` document is, for errors: its parent, its UUID as
/// written and its indices, so a bad entry late in a long document can be found.
fn entry_name(i: usize, parent: &str, j: usize, uuid: &str) -> String {
    format!(
        "entry [{i}][{parent:?}][{j}] ({:?} under {parent})",
        uuid.chars().take(64).collect::<String>()
    )
}

/// Reads a document holding definitions: either one definition (a file from `mdevctl.d`, or
/// `mdevctl list --dumpjson -u UUID` output without its wrapping), whose parent and UUID
/// come from `parent` and `uuid`; or the `mdevctl list --dumpjson` form, which names its
/// own (`[]` when mdevctl has nothing: no definitions, not an error). `parent` and `uuid`
/// select from such a document. `source` names the document in errors.
///
/// Every entry is checked before any is returned: an error names the entry (parent, UUID,
/// indices) and the field. The same UUID under several parents is accepted, as mdevctl
/// accepts it; the same UUID twice under one parent is not.
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
        serde_json::from_str(text).map_err(|e| malformed(format!("it is not valid JSON: {e}")))?;
    if !value.is_array() && !value.is_object() {
        return Err(malformed(
            "it is neither one definition (a JSON object) nor a `mdevctl list --dumpjson` \
             document (a JSON list)"
                .to_string(),
        ));
    }
    let serde_json::Value::Array(items) = value else {
        let parent = parent.ok_or_else(|| MdevctlError::Unnamed {
            path: source.to_path_buf(),
            missing: "parent",
        })?;
        let uuid = uuid.ok_or_else(|| MdevctlError::Unnamed {
            path: source.to_path_buf(),
            missing: "UUID",
        })?;
        return parse_config(source, parent, uuid, text).map(|c| vec![c]);
    };
    let mut configs: Vec<MdevctlConfig> = Vec::new();
    let mut seen: std::collections::BTreeMap<(String, Uuid), String> = Default::default();
    for (i, item) in items.iter().enumerate() {
        let by_parent = item.as_object().ok_or_else(|| {
            malformed(format!(
                "entry [{i}] is not an object from parent names to lists of definitions"
            ))
        })?;
        for (p, list) in by_parent {
            if !is_safe_parent_name(p) {
                return Err(malformed(format!(
                    "entry [{i}]: {:?} is not a usable mdev parent name (it must be one path component)",
                    p.chars().take(64).collect::<String>()
                )));
            }
            let list = list.as_array().ok_or_else(|| {
                malformed(format!(
                    "entry [{i}][{p:?}] (parent {p}) is not a list of definitions"
                ))
            })?;
            for (j, entry) in list.iter().enumerate() {
                let (u, config) = entry
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.iter().next())
                    .ok_or_else(|| {
                        malformed(format!(
                            "entry [{i}][{p:?}][{j}] (under {p}) is not an object with one UUID"
                        ))
                    })?;
                let here = entry_name(i, p, j, u);
                let parsed: Uuid = u
                    .parse()
                    .map_err(|_| malformed(format!("{here}: the key is not a UUID")))?;
                let config =
                    parse_config(source, p, parsed, &config.to_string()).map_err(|e| match e {
                        MdevctlError::Malformed { reason, .. } => {
                            malformed(format!("{here}: {reason}"))
                        }
                        other => other,
                    })?;
                if let Some(first) = seen.insert((p.clone(), parsed), here.clone()) {
                    return Err(malformed(format!(
                        "{here}: {parsed} is defined under {p} already, by {first}"
                    )));
                }
                if parent.is_some_and(|want| want != p) || uuid.is_some_and(|want| want != parsed) {
                    continue;
                }
                configs.push(config);
            }
        }
    }
    Ok(configs)
}

/// Whether `text` is a `mdevctl list --dumpjson` document (a JSON list) rather than one
/// definition (an object): its first character that is not white space is `[`.
pub fn is_dumpjson(text: &str) -> bool {
    text.trim_start().starts_with('[')
}

/// The parent and UUID a definition file's path names, as mdevctl lays out `mdevctl.d`
/// (`<parent>/<uuid>`): the UUID is the file name, the parent the directory's name (`None`
/// for a file without one). A file name that is not a UUID is [`MdevctlError::BadFileName`].
pub fn names_from_path(path: &Path) -> Result<(Option<String>, Uuid), MdevctlError> {
    let uuid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| Uuid::parse_str(n).ok())
        .ok_or_else(|| MdevctlError::BadFileName {
            path: path.to_path_buf(),
        })?;
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string);
    Ok((parent, uuid))
}

/// Reads a file to import (`gpuvirtctl mdev import --mdevctl FILE`): a `list --dumpjson`
/// document, from which `parent` and `uuid` select; or one definition, whose UUID is `uuid`
/// or else its file name, and whose parent is `parent` or else, for a file named by a UUID,
/// its directory's name (as in `mdevctl.d`). A single definition that is given no UUID and whose file name is not one is
/// refused for its file name ([`MdevctlError::BadFileName`]), whatever its directory says.
pub fn parse_import(
    path: &Path,
    text: &str,
    parent: Option<&str>,
    uuid: Option<Uuid>,
) -> Result<Vec<MdevctlConfig>, MdevctlError> {
    // Well-formed JSON first: a broken file is broken whatever its name.
    let value =
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| MdevctlError::Malformed {
            path: path.to_path_buf(),
            reason: format!("it is not valid JSON: {e}"),
        })?;
    if !value.is_object() || (parent.is_some() && uuid.is_some()) {
        return parse_document(path, text, parent, uuid);
    }
    // The directory names the parent only of a file laid out as in mdevctl.d (named by a UUID).
    let (from_path, named) = match (uuid, names_from_path(path)) {
        (Some(u), Ok((dir, _))) => (dir, u),
        (Some(u), Err(_)) => (None, u),
        (None, named) => named?,
    };
    let parent = parent.map(str::to_string).or(from_path);
    parse_document(path, text, parent.as_deref(), Some(named))
}
