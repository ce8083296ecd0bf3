//! The diff of two served trees: exactly the InterfacesAdded/Removed and PropertiesChanged to
//! emit, ordered so that a client never follows a reference to a missing object.
//! May import: tree/types.rs.

use std::collections::BTreeSet;

use gpuvirt_api as api;

use super::types::{Change, Iface, Kind, ManagerProps, ObjectSpec, ObjectTree};

fn removal_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Mdev => 0,
        Kind::ShardParent => 1,
        Kind::Gpu => 2,
        Kind::IommuGroup => 3,
    }
}

fn iface_kind(iface: &Iface) -> Kind {
    match iface {
        Iface::Gpu(_) => Kind::Gpu,
        Iface::ShardParent(_) => Kind::ShardParent,
        Iface::IommuGroup(_) => Kind::IommuGroup,
        // Never added or removed; rank it with the leaves.
        Iface::Mdev(_) | Iface::Manager(_) | Iface::Policy(_) => Kind::Mdev,
    }
}

/// What turns `old` into `new`: removals first, then additions (so that references in updated
/// properties point at objects that exist), then updates; referrers are removed before and
/// added after what they refer to.
pub fn diff(old: &ObjectTree, new: &ObjectTree) -> Vec<Change> {
    let mut changes = Changes::default();
    changes.manager(&old.manager, &new.manager);
    let paths: BTreeSet<&String> = old.objects.keys().chain(new.objects.keys()).collect();
    for path in paths {
        changes.object(path, old.objects.get(path), new.objects.get(path));
    }
    changes.into_ordered()
}

/// Changes collected per kind, ordered at the end.
#[derive(Default)]
pub(super) struct Changes {
    removed: Vec<Change>,
    added: Vec<Change>,
    updated: Vec<Change>,
}

impl Changes {
    pub(super) fn manager(&mut self, old: &ManagerProps, new: &ManagerProps) {
        let changed = old.changed(new);
        if !changed.is_empty() {
            self.updated.push(Change::Updated {
                path: api::MANAGER_PATH.to_owned(),
                iface: Iface::Manager(new.clone()),
                changed,
            });
        }
    }

    pub(super) fn object(
        &mut self,
        path: &str,
        before: Option<&ObjectSpec>,
        after: Option<&ObjectSpec>,
    ) {
        let empty = ObjectSpec::default();
        let before = before.unwrap_or(&empty);
        let after = after.unwrap_or(&empty);
        if before == after {
            return;
        }
        macro_rules! slot {
            ($field:ident, $variant:ident) => {
                match (&before.$field, &after.$field) {
                    (None, None) => {}
                    (Some(_), None) => self.removed.push(Change::Removed {
                        path: path.to_owned(),
                        kind: Kind::$variant,
                    }),
                    (None, Some(n)) => self.added.push(Change::Added {
                        path: path.to_owned(),
                        iface: Iface::$variant(n.clone()),
                    }),
                    (Some(o), Some(n)) => {
                        let changed = o.changed(n);
                        if !changed.is_empty() {
                            self.updated.push(Change::Updated {
                                path: path.to_owned(),
                                iface: Iface::$variant(n.clone()),
                                changed,
                            });
                        }
                    }
                }
            };
        }
        slot!(gpu, Gpu);
        slot!(shard_parent, ShardParent);
        slot!(iommu_group, IommuGroup);
        slot!(mdev, Mdev);
    }

    pub(super) fn into_ordered(self) -> Vec<Change> {
        let Changes {
            mut removed,
            mut added,
            updated,
        } = self;
        // Referrers go before what they refer to (an mdev names its parent and group, a GPU
        // its group), and come after it: a client never follows a reference to a missing
        // object. The sorts are stable, so paths stay in order within a kind.
        removed.sort_by_key(|c| match c {
            Change::Removed { kind, .. } => removal_rank(*kind),
            _ => 0,
        });
        added.sort_by_key(|c| match c {
            Change::Added { iface, .. } => 3 - removal_rank(iface_kind(iface)),
            _ => 0,
        });
        removed.extend(added);
        removed.extend(updated);
        removed
    }
}
