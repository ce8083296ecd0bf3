//! mdev parents (`/sys/class/mdev_bus`) with their types, and mdevs (`/sys/bus/mdev/devices`).
//! May import: crate::host, crate::model, crate::error, scan/{scanner, read, scope, counts}.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::counts::CountFiles;
use super::read::{MDEV_BUS, MDEV_DEVICES};
use super::scanner::Scanner;
use super::scope::Touched;
use crate::host::sysfs::{
    basename, is_missing, is_not_a_link, resolve_link, shown, ReadError, Reader,
};
use crate::model::{Inventory, Mdev, MdevParent, MdevType};

/// What the mdevs of one step leave to read once for all of them.
#[derive(Default)]
pub(super) struct ParentReads {
    /// Parents read in full (an mdev moved between them).
    pub(super) whole: BTreeSet<String>,
    /// Parents whose instance counts changed (an mdev appeared or went).
    pub(super) instances: BTreeSet<String>,
    /// The IOMMU groups the mdevs are or were in.
    pub(super) groups: BTreeSet<u32>,
}

impl Scanner {
    /// Reads the mdev `uuid`; what that changes on its parents and groups is added to
    /// `reads`, for the caller to read once for all the mdevs of its step.
    pub(super) fn refresh_mdev(
        &self,
        r: &mut Reader<'_>,
        inv: &mut Inventory,
        uuid: Uuid,
        touched: &mut Touched,
        reads: &mut ParentReads,
    ) {
        let name = uuid.to_string();
        let prefix = Path::new(MDEV_DEVICES).join(&name);
        inv.warnings.retain(|w| !w.path.starts_with(&prefix));
        touched.mdevs.insert(uuid);
        let new = read_mdev(r, &name);
        let old = match &new {
            Some(m) => inv.mdevs.insert(uuid, m.clone()),
            None => inv.mdevs.remove(&uuid),
        };
        // Creating or removing an mdev changes its parent's available_instances (a bind or
        // unbind does not) and its group.
        let appeared_or_went = old.is_none() != new.is_none();
        let mut parents = BTreeSet::new();
        let mut groups = BTreeSet::new();
        for m in [&old, &new].into_iter().flatten() {
            parents.insert(m.parent.clone());
            groups.extend(m.iommu_group);
        }
        // Moved between parents (a UUID reused elsewhere): both are read in full.
        let parent_changed = matches!((&old, &new), (Some(o), Some(n)) if o.parent != n.parent);
        touched.parents.extend(parents.iter().cloned());
        if parent_changed {
            reads.whole.extend(parents);
        } else if appeared_or_went {
            reads.instances.extend(parents);
        }
        reads.groups.extend(groups);
    }
}

/// Reads `/sys/class/mdev_bus/<name>` and its types (through the class link, so every
/// warning about a parent lies under its class entry).
///
/// `known` is the parent as last read: a type it lists (read without a warning) keeps its
/// name, description and device_api, which the driver fixes per type id while the parent is
/// registered, and only `available_instances` is read again; a type that appeared is read in
/// full. The refresh after each create or remove then reads one file per type, not four.
pub(super) fn read_parent(
    r: &mut Reader<'_>,
    name: &str,
    known: Option<&MdevParent>,
    counts: Option<&CountFiles>,
) -> Option<MdevParent> {
    let link = Path::new(MDEV_BUS).join(name);
    let sysfs_path = match r.read_link(&link) {
        Ok(target) => match resolve_link(Path::new("class/mdev_bus"), &target) {
            Some(p) => p,
            None => {
                r.warn(
                    &link,
                    format!("the link points outside /sys ({})", target.display()),
                );
                return None;
            }
        },
        Err(e) if is_not_a_link(&e) => PathBuf::from("class/mdev_bus").join(name),
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&link, format!("the parent link could not be read: {e}"));
            return None;
        }
    };
    let types_dir = link.join("mdev_supported_types");
    let ids = match r.list(&types_dir) {
        Ok(mut ids) => {
            ids.sort_unstable();
            ids
        }
        Err(e) => {
            let why = if is_missing(&e) {
                "the parent has no mdev_supported_types directory".to_string()
            } else {
                format!("the parent's types could not be listed: {e}")
            };
            r.warn(&types_dir, why);
            Vec::new()
        }
    };
    let mut types = Vec::with_capacity(ids.len());
    // Up to four attributes per type, often 30 types: opened relative to the types directory.
    r.anchor(&types_dir);
    for id in ids {
        let dir = types_dir.join(&id);
        let (name, description, device_api) = match known
            .and_then(|k| k.types.iter().find(|t| t.id == id))
            // A type read with a warning (a required attribute missing or empty) is read
            // again: the parent's warnings were cleared for this pass.
            .filter(|t| t.name.is_some() && t.device_api.is_some())
        {
            Some(t) => (t.name.clone(), t.description.clone(), t.device_api.clone()),
            None => (
                type_attr(r, &dir.join("name"), true),
                // mtty and other sample drivers have no description.
                type_attr(r, &dir.join("description"), false),
                type_attr(r, &dir.join("device_api"), true),
            ),
        };
        let available_path = dir.join("available_instances");
        let text = match counts {
            Some(kept) => kept.read(r, &available_path),
            None => r.read(&available_path),
        };
        let available_instances =
            attr_text(r, &available_path, true, text).and_then(|v| match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    r.warn(
                        &available_path,
                        format!("'{}' is not an instance count", shown(&v)),
                    );
                    None
                }
            });
        types.push(MdevType {
            id,
            name,
            description,
            device_api,
            available_instances,
        });
    }
    r.unanchor();
    Some(MdevParent {
        name: name.to_string(),
        sysfs_path,
        pci_address: name.parse().ok(),
        types,
    })
}

/// One mdev type attribute, trimmed; missing files are warned only when `required`.
pub(super) fn type_attr(r: &mut Reader<'_>, path: &Path, required: bool) -> Option<String> {
    let text = r.read(path);
    attr_text(r, path, required, text)
}

/// [`type_attr`] of a read already made.
fn attr_text(
    r: &mut Reader<'_>,
    path: &Path,
    required: bool,
    text: Result<String, ReadError>,
) -> Option<String> {
    match text {
        Ok(text) => {
            let value = text.trim();
            if value.is_empty() {
                if required {
                    r.warn(path, "the file is empty");
                }
                None
            } else {
                Some(value.to_string())
            }
        }
        Err(ReadError::Missing) => {
            if required {
                r.warn(path, "the file is missing");
            }
            None
        }
        Err(e) => {
            r.warn(path, crate::error_chain(&e));
            None
        }
    }
}

/// What an mdev's creation or removal changes on its parent: the instance counts (and, as
/// every read of a parent does, its link and type list). A parent not read before is read in
/// full.
pub(super) fn reload_instances(
    r: &mut Reader<'_>,
    inv: &mut Inventory,
    name: &str,
    counts: &CountFiles,
) {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return;
    }
    let Some(known) = inv.mdev_parents.get(name).cloned() else {
        return reload_parent(r, inv, name, counts);
    };
    let prefix = Path::new(MDEV_BUS).join(name);
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
    match read_parent(r, name, Some(&known), Some(counts)) {
        Some(p) => {
            inv.mdev_parents.insert(name.to_string(), p);
        }
        None => {
            counts.forget(&prefix);
            inv.mdev_parents.remove(name);
        }
    }
}

/// Reads the parent `name` in full; its kept count files are closed first (its types may
/// have changed: a full read follows an event on the parent itself).
pub(super) fn reload_parent(
    r: &mut Reader<'_>,
    inv: &mut Inventory,
    name: &str,
    counts: &CountFiles,
) {
    let prefix = Path::new(MDEV_BUS).join(name);
    // A name with a path separator cannot be an mdev_bus entry (and must not escape it).
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return;
    }
    counts.forget(&prefix);
    inv.warnings.retain(|w| !w.path.starts_with(&prefix));
    match read_parent(r, name, None, None) {
        Some(p) => {
            inv.mdev_parents.insert(name.to_string(), p);
        }
        None => {
            inv.mdev_parents.remove(name);
        }
    }
}

/// Reads `/sys/bus/mdev/devices/<name>` with one `readlink` per link (device, `mdev_type`,
/// `driver`, `iommu_group`); the parent is the directory the device link points into.
pub(super) fn read_mdev(r: &mut Reader<'_>, name: &str) -> Option<Mdev> {
    let uuid = Uuid::parse_str(name).ok()?;
    let link = Path::new(MDEV_DEVICES).join(name);
    let target = match r.read_link(&link) {
        Ok(target) => target,
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&link, format!("the mdev link could not be read: {e}"));
            return None;
        }
    };
    let parent = resolve_link(Path::new("bus/mdev/devices"), &target)
        .as_deref()
        .and_then(Path::parent)
        .and_then(basename)
        .map(str::to_string);
    let Some(parent) = parent else {
        r.warn(
            &link,
            format!(
                "the link ({}) does not name a parent device",
                target.display()
            ),
        );
        return None;
    };
    // Three more links in the device's directory: read relative to it (one lookup each on
    // a FUSE sysfs with zero TTLs, instead of a walk through the bus link every time).
    r.anchor(&link);
    let mdev = read_mdev_links(r, &link, uuid, parent);
    r.unanchor();
    mdev
}

/// The `mdev_type`, `driver` and `iommu_group` links of the mdev at `link`.
fn read_mdev_links(r: &mut Reader<'_>, link: &Path, uuid: Uuid, parent: String) -> Option<Mdev> {
    let type_link = link.join("mdev_type");
    let type_id = match r.read_link(&type_link) {
        Ok(t) => basename(&t).map(str::to_string),
        // Every live mdev has mdev_type: without it the device is being removed.
        Err(e) if is_missing(&e) => return None,
        Err(e) => {
            r.warn(&type_link, format!("the link could not be read: {e}"));
            None
        }
    };
    let driver = optional_link_name(r, &link.join("driver"));
    let group_link = link.join("iommu_group");
    let iommu_group = optional_link_name(r, &group_link).and_then(|g| match g.parse() {
        Ok(id) => Some(id),
        Err(_) => {
            r.warn(
                &group_link,
                format!("the link names '{}', not a group number", shown(&g)),
            );
            None
        }
    });
    Some(Mdev {
        uuid,
        parent,
        type_id,
        driver,
        iommu_group,
    })
}

pub(super) fn optional_link_name(r: &mut Reader<'_>, path: &Path) -> Option<String> {
    match r.read_link(path) {
        Ok(target) => basename(&target).map(str::to_string),
        Err(e) if is_missing(&e) => None,
        Err(e) => {
            r.warn(path, format!("the link could not be read: {e}"));
            None
        }
    }
}
