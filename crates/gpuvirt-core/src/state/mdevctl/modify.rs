//! Changing one definition in place, as `mdevctl modify` does: its type, its start mode, one
//! attribute added or deleted, or the whole of it replaced from a JSON file. The request is
//! checked whole against the definition before anything changes ([`Modification::apply`]
//! returns the new record or the first problem, and the caller writes the ledger once).
//! May import: gpuvirt-types, crate::state::ledger.

use gpuvirt_types::names;

use crate::state::ledger::{MdevRecord, MdevStart};

/// One attribute change of `mdevctl modify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrChange {
    /// `--addattr NAME --value VALUE [--index I]`: inserted at `index` (0 = first), else
    /// appended.
    Add {
        name: String,
        value: String,
        index: Option<usize>,
    },
    /// `--delattr [--index I]`: the attribute at `index`, else the last one (mdevctl pops
    /// the end of the list).
    Delete { index: Option<usize> },
}

/// What to change in a definition. Empty fields change nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modification {
    /// A new type id (`-t/--type`).
    pub mdev_type: Option<String>,
    /// A new start mode (`-a/--auto`, `-m/--manual`).
    pub start: Option<MdevStart>,
    /// One attribute added or deleted.
    pub attr: Option<AttrChange>,
    /// `--jsonfile`: type, start mode and attrs all replaced (then nothing else may be given).
    pub replace: Option<Replacement>,
}

/// A whole definition's contents, as a JSON file gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub mdev_type: String,
    pub start: MdevStart,
    pub attrs: Vec<(String, String)>,
}

/// Why a modification cannot be made; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModifyError {
    #[error("nothing to change: give a type, a start mode, an attribute to add or delete, or a JSON file")]
    Nothing,
    #[error("a JSON file replaces the whole definition; it cannot be combined with {with}")]
    ReplaceAndMore { with: &'static str },
    #[error(
        "attribute index {index} is out of range: the definition has {len} attribute{}{}",
        if *len == 1 { "" } else { "s" },
        match (*len, *adding) {
            (0, false) => String::new(),
            (n, true) => format!(" (an added one may go at 0..={n})"),
            (n, false) => format!(" (indexes 0..={})", n - 1),
        }
    )]
    IndexOutOfRange {
        index: usize,
        len: usize,
        adding: bool,
    },
    #[error("the definition has no attribute to delete")]
    NoAttribute,
    #[error("attribute name {name:?} is not a sysfs file name")]
    BadAttrName { name: String },
    #[error("{0:?} is not a valid mdev type id")]
    BadType(String),
}

impl Modification {
    /// Whether it asks for no change at all.
    pub fn is_empty(&self) -> bool {
        self.mdev_type.is_none()
            && self.start.is_none()
            && self.attr.is_none()
            && self.replace.is_none()
    }

    /// The definition `record` would become; `record` itself is not touched.
    pub fn apply(&self, record: &MdevRecord) -> Result<MdevRecord, ModifyError> {
        if self.is_empty() {
            return Err(ModifyError::Nothing);
        }
        let mut out = record.clone();
        if let Some(Replacement {
            mdev_type,
            start,
            attrs,
        }) = &self.replace
        {
            let with = if self.mdev_type.is_some() {
                Some("a type")
            } else if self.start.is_some() {
                Some("a start mode")
            } else if self.attr.is_some() {
                Some("an attribute change")
            } else {
                None
            };
            if let Some(with) = with {
                return Err(ModifyError::ReplaceAndMore { with });
            }
            check_type(mdev_type)?;
            for (name, _) in attrs {
                check_attr(name)?;
            }
            out.type_id = mdev_type.clone();
            out.start = *start;
            out.attrs = attrs.clone();
            return Ok(out);
        }
        if let Some(t) = &self.mdev_type {
            check_type(t)?;
            out.type_id = t.clone();
        }
        if let Some(s) = self.start {
            out.start = s;
        }
        match &self.attr {
            None => {}
            Some(AttrChange::Add { name, value, index }) => {
                check_attr(name)?;
                let at = index.unwrap_or(out.attrs.len());
                if at > out.attrs.len() {
                    return Err(ModifyError::IndexOutOfRange {
                        index: at,
                        len: out.attrs.len(),
                        adding: true,
                    });
                }
                out.attrs.insert(at, (name.clone(), value.clone()));
            }
            Some(AttrChange::Delete { index }) => {
                if out.attrs.is_empty() && index.is_none() {
                    return Err(ModifyError::NoAttribute);
                }
                let at = index.unwrap_or(out.attrs.len() - 1);
                if at >= out.attrs.len() {
                    return Err(ModifyError::IndexOutOfRange {
                        index: at,
                        len: out.attrs.len(),
                        adding: false,
                    });
                }
                out.attrs.remove(at);
            }
        }
        Ok(out)
    }
}

fn check_type(t: &str) -> Result<(), ModifyError> {
    names::mdev_type(t)
        .map(|_| ())
        .map_err(|_| ModifyError::BadType(t.chars().take(64).collect()))
}

fn check_attr(name: &str) -> Result<(), ModifyError> {
    if names::is_safe_component(name) {
        Ok(())
    } else {
        Err(ModifyError::BadAttrName {
            name: name.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(attrs: &[(&str, &str)]) -> MdevRecord {
        MdevRecord {
            parent: "0000:41:00.0".into(),
            type_id: "nvidia-300".into(),
            start: MdevStart::Manual,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rule: None,
            defined: true,
            created_by_gpuvirt: true,
        }
    }

    fn add(name: &str, index: Option<usize>) -> Modification {
        Modification {
            attr: Some(AttrChange::Add {
                name: name.into(),
                value: "v".into(),
                index,
            }),
            ..Modification::default()
        }
    }

    fn names(r: &MdevRecord) -> Vec<&str> {
        r.attrs.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn adds_at_an_index_or_the_end_and_deletes_one_or_the_last() {
        let r = record(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            names(&add("x", Some(0)).apply(&r).unwrap()),
            ["x", "a", "b"]
        );
        assert_eq!(
            names(&add("x", Some(1)).apply(&r).unwrap()),
            ["a", "x", "b"]
        );
        assert_eq!(
            names(&add("x", Some(2)).apply(&r).unwrap()),
            ["a", "b", "x"]
        );
        assert_eq!(names(&add("x", None).apply(&r).unwrap()), ["a", "b", "x"]);
        let del = |index| Modification {
            attr: Some(AttrChange::Delete { index }),
            ..Modification::default()
        };
        assert_eq!(names(&del(Some(0)).apply(&r).unwrap()), ["b"]);
        assert_eq!(names(&del(None).apply(&r).unwrap()), ["a"]);
        assert_eq!(
            del(Some(2)).apply(&r).unwrap_err().to_string(),
            "attribute index 2 is out of range: the definition has 2 attributes (indexes 0..=1)"
        );
        assert_eq!(
            add("x", Some(3)).apply(&r).unwrap_err(),
            ModifyError::IndexOutOfRange {
                index: 3,
                len: 2,
                adding: true
            }
        );
        assert_eq!(
            del(None).apply(&record(&[])).unwrap_err(),
            ModifyError::NoAttribute
        );
    }

    #[test]
    fn checks_the_whole_request_before_changing_anything() {
        let r = record(&[]);
        // A bad attribute name refuses the type change that came with it.
        let mut m = add("../remove", None);
        m.mdev_type = Some("nvidia-301".into());
        assert!(matches!(m.apply(&r), Err(ModifyError::BadAttrName { .. })));
        let m = Modification {
            mdev_type: Some("a/b".into()),
            ..Modification::default()
        };
        assert!(matches!(m.apply(&r), Err(ModifyError::BadType(_))));
        assert_eq!(Modification::default().apply(&r), Err(ModifyError::Nothing));
        let m = Modification {
            start: Some(MdevStart::Auto),
            replace: Some(Replacement {
                mdev_type: "nvidia-301".into(),
                start: MdevStart::Manual,
                attrs: Vec::new(),
            }),
            ..Modification::default()
        };
        assert_eq!(
            m.apply(&r),
            Err(ModifyError::ReplaceAndMore {
                with: "a start mode"
            })
        );
        let m = Modification {
            replace: Some(Replacement {
                mdev_type: "nvidia-301".into(),
                start: MdevStart::Auto,
                attrs: vec![("k".into(), "v".into())],
            }),
            ..Modification::default()
        };
        let out = m.apply(&r).unwrap();
        assert_eq!(
            (out.type_id.as_str(), out.start, out.attrs.len()),
            ("nvidia-301", MdevStart::Auto, 1)
        );
        assert!(out.created_by_gpuvirt && out.defined);
    }
}
