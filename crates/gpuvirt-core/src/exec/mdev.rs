//! mdev creation (single and batched) and removal, with ownership in the ledger.
//! May import: crate::host, crate::model, crate::state, crate::plan, exec/{executor, error, report,
//! write}.

use std::collections::BTreeSet;
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::time::Instant;

use uuid::Uuid;

use super::error::ExecError;
use super::executor::{Executor, Steps};
use super::report::{failed, ActionReport, StepOutcome};
use super::write::{EBUSY, EEXIST, EINVAL, ENODEV, ENOENT, ENOSPC, EUSERS};
use crate::host::names;
use crate::model::PciAddress;
use crate::plan::{Action, PlannedAction};
use crate::state::ledger::{MdevRecord, MdevStart};

impl Executor {
    // -----------------------------------------------------------------------------------
    // mdevs, SR-IOV, NVIDIA vGPU
    // -----------------------------------------------------------------------------------

    pub(super) fn mdev_type_of(&self, uuid: Uuid) -> Option<String> {
        let link = self.abs(Path::new(&format!("sys/bus/mdev/devices/{uuid}/mdev_type")));
        let target = fs::read_link(link).ok()?;
        target.file_name()?.to_str().map(str::to_string)
    }

    /// Checks that `parent` and its `type_id` exist (a single creation checks before it
    /// records anything; a batch lets the write find them missing).
    pub(super) fn check_create_target(
        &self,
        parent: &str,
        type_id: &str,
    ) -> Result<PathBuf, ExecError> {
        names::mdev_parent(parent)?;
        names::mdev_type(type_id)?;
        let parent_dir = PathBuf::from(format!("sys/class/mdev_bus/{parent}"));
        if !self.exists(&parent_dir) {
            return Err(ExecError::NoSuchParent {
                parent: parent.to_string(),
            });
        }
        let type_dir = parent_dir.join("mdev_supported_types").join(type_id);
        if !self.exists(&type_dir) {
            return Err(ExecError::UnknownType {
                parent: parent.to_string(),
                type_id: type_id.to_string(),
            });
        }
        Ok(type_dir)
    }

    /// The ledger record a creation of `uuid` writes (keeping what a definition of the same
    /// UUID already says: start mode, attributes, defined).
    pub(super) fn create_record(
        &self,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        rule: Option<&str>,
    ) -> MdevRecord {
        let previous = self.ledger.mdevs.get(&uuid);
        MdevRecord {
            parent: parent.to_string(),
            type_id: type_id.to_string(),
            start: previous.map_or(MdevStart::Auto, |p| p.start),
            attrs: previous.map(|p| p.attrs.clone()).unwrap_or_default(),
            rule: rule.map(str::to_string),
            defined: previous.is_some_and(|p| p.defined),
            created_by_gpuvirt: true,
        }
    }

    /// Writes `uuid` to the type's `create` file. `Ok(true)`: created; `Ok(false)`: it
    /// already existed, gpuvirt made it (`was_ours`) and it has the wanted type.
    pub(super) fn write_create(
        &self,
        type_dir: &Path,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        was_ours: bool,
        steps: &mut Steps,
    ) -> Result<bool, ExecError> {
        let Err(e) = self.write(steps, &type_dir.join("create"), &uuid.to_string()) else {
            return Ok(true);
        };
        Err(match e.errno {
            ENOSPC | EUSERS => ExecError::NoCapacity {
                parent: parent.to_string(),
                type_id: type_id.to_string(),
            },
            EEXIST => {
                let existing = self.mdev_type_of(uuid);
                if was_ours && existing.as_deref() == Some(type_id) {
                    steps.skipped(
                        format!("create mdev {uuid}"),
                        "it already exists, gpuvirt made it and it has the wanted type",
                    );
                    return Ok(false);
                }
                ExecError::AlreadyExists {
                    uuid,
                    existing_type: existing,
                }
            }
            EINVAL => ExecError::Write {
                what: format!(
                    "creating mdev {uuid} of type {type_id} on {parent} (the parent rejected it)"
                ),
                source: e,
            },
            // A batch does not stat the parent and type before writing (each stat walks the
            // whole path again): a missing one is told apart here, on failure.
            ENOENT if !self.exists(type_dir) => {
                let parent_dir = Path::new("sys/class/mdev_bus").join(parent);
                match parent.parse::<PciAddress>() {
                    _ if self.exists(&parent_dir) => ExecError::UnknownType {
                        parent: parent.to_string(),
                        type_id: type_id.to_string(),
                    },
                    Ok(address) => self.write_error(
                        Some(address),
                        format!("creating mdev {uuid} on {parent}"),
                        e,
                    ),
                    Err(_) => ExecError::NoSuchParent {
                        parent: parent.to_string(),
                    },
                }
            }
            // A PCI parent that vanished mid-create is DeviceGone (kind NoSuchDevice);
            // a virtual parent has no address to check, so its errno stays as it is.
            _ => self.write_error(
                parent.parse().ok(),
                format!("creating mdev {uuid} on {parent}"),
                e,
            ),
        })
    }

    /// Puts the ledger records of `uuids` back to what they were before their creation
    /// was recorded (`previous`), in one save.
    pub(super) fn undo_create_records(
        &mut self,
        steps: &mut Steps,
        undo: Vec<(Uuid, Option<MdevRecord>)>,
    ) {
        if undo.is_empty() {
            return;
        }
        let why = match undo.as_slice() {
            [(uuid, _)] => format!("mdev {uuid} not created"),
            many => format!("{} mdevs not created", many.len()),
        };
        let _ = self.commit(steps, &why, |l| {
            for (uuid, previous) in undo {
                match previous {
                    Some(p) => {
                        l.mdevs.insert(uuid, p);
                    }
                    None => {
                        l.mdevs.remove(&uuid);
                    }
                }
            }
        });
    }

    pub(super) fn create_mdev(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let type_dir = self.check_create_target(parent, type_id)?;
        let was_ours = self.ledger.owns_mdev(&uuid);
        let previous = self.ledger.mdevs.get(&uuid).cloned();
        let record = self.create_record(parent, type_id, uuid, rule);
        // Recorded before the write: a crash after it still knows the mdev is gpuvirt's.
        self.commit(steps, &format!("mdev {uuid} being created"), |l| {
            l.mdevs.insert(uuid, record);
        })?;
        match self.write_create(&type_dir, parent, type_id, uuid, was_ours, steps) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                self.undo_create_records(steps, vec![(uuid, previous)]);
                return Err(err);
            }
        }
        let t = Instant::now();
        let actual = self.mdev_type_of(uuid);
        if actual.as_deref() != Some(type_id) {
            let err = ExecError::Verify {
                what: format!("mdev {uuid}'s mdev_type"),
                wanted: type_id.to_string(),
                actual: actual.unwrap_or_else(|| "nothing (no such mdev)".to_string()),
            };
            steps.push(format!("check mdev {uuid}"), None, failed(&err), t);
            return Err(err);
        }
        steps.push(
            format!("check that mdev {uuid} has type {type_id}"),
            Some(PathBuf::from(format!(
                "sys/bus/mdev/devices/{uuid}/mdev_type"
            ))),
            StepOutcome::Done,
            t,
        );
        if let Err(err) = self.write_attrs(steps, uuid) {
            self.undo_create_records(steps, vec![(uuid, previous)]);
            return Err(err);
        }
        Ok(())
    }

    /// A run of mdev creations as one batch: every record in the ledger with one save before
    /// the first write (not one save per mdev), the writes in order (a missing parent or type
    /// is found by its write, not by a stat of each beforehand, which on sysfs walks the same
    /// path again), then one listing of `/sys/bus/mdev/devices` to check that each one is there.
    /// (The type of each is checked by the read-back that follows an apply, not by one
    /// `readlink` per mdev.) Returns a report per action attempted; the first failure ends
    /// the batch, and the records of the mdevs not created are put back in one more save.
    pub(super) fn create_mdevs(&mut self, batch: &[PlannedAction]) -> Vec<ActionReport> {
        struct Item<'a> {
            planned: &'a PlannedAction,
            type_dir: PathBuf,
            uuid: Uuid,
            previous: Option<MdevRecord>,
            was_ours: bool,
            steps: Steps,
        }
        let report =
            |planned: &PlannedAction, steps: Steps, error: Option<ExecError>| ActionReport {
                action: planned.action.to_string(),
                rule: planned.rule.clone(),
                steps: steps.steps,
                error,
                rolled_back: None,
            };
        // Checks first: the batch ends before the first action whose parent or type is
        // missing; that action is reported failed, the ones before it run.
        let mut items = Vec::new();
        let mut check_failure = None;
        for planned in batch {
            let Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } = &planned.action
            else {
                break;
            };
            // Names only: the parent and type are found missing by the write itself.
            let checked = names::mdev_parent(parent)
                .and_then(|_| names::mdev_type(type_id))
                .map(|_| {
                    PathBuf::from(format!(
                        "sys/class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
                    ))
                })
                .map_err(ExecError::from);
            match checked {
                Ok(type_dir) => items.push(Item {
                    planned,
                    type_dir,
                    uuid: *uuid,
                    previous: self.ledger.mdevs.get(uuid).cloned(),
                    was_ours: self.ledger.owns_mdev(uuid),
                    steps: Steps::new(),
                }),
                Err(e) => {
                    let mut steps = Steps::new();
                    steps.push(
                        format!("check {parent} and its type {type_id}"),
                        None,
                        failed(&e),
                        Instant::now(),
                    );
                    check_failure = Some(report(planned, steps, Some(e)));
                    break;
                }
            }
        }
        let mut reports = Vec::new();
        if !items.is_empty() {
            let records: Vec<(Uuid, MdevRecord)> = items
                .iter()
                .map(|i| {
                    let Action::CreateMdev {
                        parent, type_id, ..
                    } = &i.planned.action
                    else {
                        unreachable!("only creations are batched")
                    };
                    (
                        i.uuid,
                        self.create_record(parent, type_id, i.uuid, i.planned.rule.as_deref()),
                    )
                })
                .collect();
            let why = format!("{} mdevs being created", records.len());
            let mut steps = Steps::new();
            let saved = self.commit(&mut steps, &why, |l| l.mdevs.extend(records));
            items[0].steps = steps;
            if let Err(e) = saved {
                let first = items.swap_remove(0);
                reports.push(report(first.planned, first.steps, Some(e)));
                return reports;
            }
        }
        // (item, whether this call created it): an mdev that already existed as ours is
        // not checked again.
        let mut written = Vec::new();
        let mut failure = None;
        let mut items = items.into_iter();
        for mut item in items.by_ref() {
            let Action::CreateMdev {
                parent, type_id, ..
            } = &item.planned.action
            else {
                unreachable!("only creations are batched")
            };
            match self.write_create(
                &item.type_dir,
                parent,
                type_id,
                item.uuid,
                item.was_ours,
                &mut item.steps,
            ) {
                Ok(created) => written.push((item, created)),
                Err(e) => {
                    failure = Some((item, e));
                    break;
                }
            }
        }
        if let Some((mut item, e)) = failure {
            // The failed one and those never written go back to what the ledger had. The ones
            // written before it succeeded as writes; the failure is the batch's one error
            // (what follows, such as a parent gone, is the next read-back's to find).
            let mut undo = vec![(item.uuid, item.previous.take())];
            undo.extend(items.map(|i| (i.uuid, i.previous)));
            self.undo_create_records(&mut item.steps, undo);
            reports.extend(
                written
                    .into_iter()
                    .map(|(i, _)| report(i.planned, i.steps, None)),
            );
            reports.push(report(item.planned, item.steps, Some(e)));
            return reports;
        }
        // One listing checks every creation that returned success. The first one missing
        // carries the error (naming every missing one); the others are reported as they are.
        let t = Instant::now();
        let listed: BTreeSet<String> = fs::read_dir(self.abs(Path::new("sys/bus/mdev/devices")))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<String> = written
            .iter()
            .filter(|(i, created)| *created && !listed.contains(&i.uuid.to_string()))
            .map(|(i, _)| i.uuid.to_string())
            .collect();
        let mut blamed = false;
        for (mut item, created) in written {
            let mut error = None;
            if created {
                let there = listed.contains(&item.uuid.to_string());
                if !there && !blamed {
                    blamed = true;
                    error = Some(ExecError::Verify {
                        what: format!("mdev {} after its create write", item.uuid),
                        wanted: "listed in /sys/bus/mdev/devices".to_string(),
                        actual: format!("not listed (missing: {})", missing.join(", ")),
                    });
                }
                item.steps.push(
                    format!("check that mdev {} is listed", item.uuid),
                    Some(PathBuf::from("sys/bus/mdev/devices")),
                    error.as_ref().map_or(StepOutcome::Done, failed),
                    t,
                );
                if there && error.is_none() {
                    error = self.write_attrs(&mut item.steps, item.uuid).err();
                    if error.is_some() {
                        let previous = item.previous.take();
                        self.undo_create_records(&mut item.steps, vec![(item.uuid, previous)]);
                    }
                }
            }
            reports.push(report(item.planned, item.steps, error));
        }
        // One failure per batch: a missing mdev outranks a later check that stopped the
        // batch, whose action is then reported as not attempted.
        if !blamed {
            reports.extend(check_failure);
        }
        reports
    }

    /// Writes the mdev's recorded attributes (mdevctl's `attrs`) to its sysfs directory, in
    /// order, as mdevctl does after a create. The first write that fails is the operation's
    /// error, and the half-made device is removed (its record is put back by the caller).
    fn write_attrs(&self, steps: &mut Steps, uuid: Uuid) -> Result<(), ExecError> {
        let attrs = self
            .ledger
            .mdevs
            .get(&uuid)
            .map(|r| r.attrs.clone())
            .unwrap_or_default();
        let dir = PathBuf::from(format!("sys/bus/mdev/devices/{uuid}"));
        for (name, value) in &attrs {
            let written = if gpuvirt_types::names::is_safe_component(name) {
                self.write(steps, &dir.join(name), value)
                    .map_err(|source| ExecError::Write {
                        what: format!(
                            "writing attribute {name}={value:?} of mdev {uuid} (a definition's \
                             attributes are written in order after the create; the device was \
                             removed)"
                        ),
                        source,
                    })
            } else {
                Err(ExecError::BadAttribute {
                    uuid,
                    name: name.clone(),
                })
            };
            if let Err(e) = written {
                // Best effort: the error above is what the caller needs to know.
                let _ = self.write(steps, &dir.join("remove"), "1");
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) fn remove_mdev(&mut self, uuid: Uuid, steps: &mut Steps) -> Result<(), ExecError> {
        if !self.ledger.owns_mdev(&uuid) {
            return Err(ExecError::NotOwned {
                what: format!("mdev {uuid}"),
            });
        }
        let dir = PathBuf::from(format!("sys/bus/mdev/devices/{uuid}"));
        if self.exists(&dir) {
            if let Err(e) = self.write(steps, &dir.join("remove"), "1") {
                let err = match e.errno {
                    EBUSY => ExecError::Busy {
                        what: format!("mdev {uuid}"),
                        errno: EBUSY,
                        hint: "a VM is using it; shut the VM down or detach the device first"
                            .to_string(),
                        source: e,
                    },
                    // Gone between the check and the write: that is what was wanted.
                    ENOENT | ENODEV if !self.exists(&dir) => {
                        return self.commit(steps, &format!("mdev {uuid} removed"), |l| {
                            l.mdevs.remove(&uuid);
                        })
                    }
                    _ => self.write_error(None, format!("removing mdev {uuid}"), e),
                };
                return Err(err);
            }
            if self.exists(&dir) {
                return Err(ExecError::Verify {
                    what: format!("mdev {uuid}"),
                    wanted: "removed".to_string(),
                    actual: "still present".to_string(),
                });
            }
        } else {
            steps.skipped(format!("remove mdev {uuid}"), "it does not exist");
        }
        self.commit(steps, &format!("mdev {uuid} removed"), |l| {
            l.mdevs.remove(&uuid);
        })
    }
}
