//! Persistent mdev definitions as the CLI reads them: [`MdevDefinition`], the readable view of
//! `Manager.ListMdevDefinitions`' rows, and its translation into mdevctl's format. May import:
//! crate::wire.

use gpuvirt_types::mdevctl;
use gpuvirt_types::MdevStart;

use crate::wire::MdevDefinitionWire;

/// A readable view of [`MdevDefinitionWire`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MdevDefinition {
    pub uuid: String,
    pub parent: String,
    #[serde(rename = "type")]
    pub type_id: String,
    pub owner: String,
    pub start: String,
    /// As mdevctl writes them: a list of one-entry objects, `[{"name": "value"}, ...]`.
    #[serde(serialize_with = "attrs_as_objects")]
    pub attrs: Vec<(String, String)>,
    pub active: bool,
}

impl MdevDefinition {
    /// The definition in mdevctl's terms; `None` when the daemon sent a malformed UUID or an
    /// unknown start mode.
    pub fn to_mdevctl(&self) -> Option<mdevctl::MdevctlConfig> {
        Some(mdevctl::MdevctlConfig {
            uuid: self.uuid.parse().ok()?,
            parent: self.parent.clone(),
            mdev_type: self.type_id.clone(),
            start: match self.start.as_str() {
                "auto" => MdevStart::Auto,
                "manual" => MdevStart::Manual,
                _ => return None,
            },
            attrs: self.attrs.clone(),
        })
    }
}

fn attrs_as_objects<S: serde::Serializer>(
    attrs: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    struct One<'a>(&'a str, &'a str);
    impl serde::Serialize for One<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(self.0, self.1)?;
            map.end()
        }
    }
    s.collect_seq(attrs.iter().map(|(k, v)| One(k, v)))
}

impl From<MdevDefinitionWire> for MdevDefinition {
    fn from((uuid, parent, type_id, owner, start, attrs, active): MdevDefinitionWire) -> Self {
        Self {
            uuid,
            parent,
            type_id,
            owner,
            start,
            attrs,
            active,
        }
    }
}
