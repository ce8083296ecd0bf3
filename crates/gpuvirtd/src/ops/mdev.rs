//! Creating, starting, stopping and removing mdevs (`ShardParent.CreateMdev`, `Mdev.Remove`,
//! `Manager.StartMdev`, `Manager.StopMdev`): single sysfs writes, answered directly (still
//! bounded by the runner's timeout). Each reads the ledger once and asks the actor once for
//! its checks. May import: ops/runner.rs, ops/options.rs, ops/definitions.rs (which
//! definition a UUID names), crate::actor, crate::policy,
//! crate::auth, crate::error, crate::events.

use gpuvirt_core::exec;
use gpuvirt_core::mdevctl;
use gpuvirt_core::plan::Action;
use gpuvirt_core::shard;
use uuid::Uuid;

use super::definitions::pick;
use super::options::{check_type_spec, parse_uuid, Options};
use super::runner::{run_actions, After, Outcome, Prepared, Runner};
use crate::auth::Method;
use crate::error::{ErrorKind, OpError};
use crate::events::mdev_targets;
use crate::policy::ManualSubject;

/// `ShardParent.CreateMdev(s type, s uuid, a{sv}) -> o mdev`: an empty `uuid` is generated.
/// Returns the new mdev's UUID.
pub async fn prepare_create(
    runner: &Runner,
    parent: &str,
    type_spec: &str,
    uuid: &str,
    _opts: Options,
) -> Result<Outcome<Uuid>, OpError> {
    check_type_spec(type_spec)?;
    let uuid = if uuid.is_empty() {
        None
    } else {
        Some(parse_uuid("uuid", uuid)?)
    };
    let snapshot = runner.snapshot()?;
    let originals = snapshot.ledger().original_drivers();
    let (parent_name, spec) = (parent.to_string(), type_spec.to_string());
    let actions = runner
        .actor()
        .check(
            vec![ManualSubject::MdevParent(parent.to_string())],
            originals,
            None,
            move |inv| shard::plan_create(inv, &parent_name, &spec, uuid, 1),
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(Action::CreateMdev { uuid, .. }) = actions.first() else {
        return Err(OpError::new(
            ErrorKind::NotSupported,
            format!(
                "{parent} is not an mdev parent; its vGPUs are made by the device policy (shard rule)"
            ),
        ));
    };
    let uuid = *uuid;
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: Method::CreateMdev,
            claim: Some((format!("mdev {uuid}"), "create")),
            what: format!("creating mdev {uuid}"),
            targets: mdev_targets(parent, uuid),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| run_actions(ex, &actions)),
            after: After::Nothing,
        }),
        uuid,
    ))
}

/// `Mdev.Remove(a{sv})`: gpuvirt's own mdevs; another tool's only with `force`. A defined
/// mdev keeps its definition (it is stopped, as `mdevctl stop` does).
pub async fn prepare_remove(
    runner: &Runner,
    uuid: &str,
    opts: Options,
) -> Result<Outcome<()>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    prepare_stop(runner, uuid, opts, Method::RemoveMdev).await
}

/// `Manager.StopMdev(s uuid, a{sv})`: removes the device, keeps the definition (mdevctl stop).
pub async fn prepare_stop_mdev(
    runner: &Runner,
    uuid: &str,
    opts: Options,
) -> Result<Outcome<()>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    // An inactive mdev is stopped already, whatever the policy says of its parent.
    let active = runner
        .actor()
        .inspect(move |inv| inv.mdevs.contains_key(&uuid))
        .await?;
    if !active {
        return Ok(Outcome::Answered(()));
    }
    prepare_stop(runner, uuid, opts, Method::StopMdev).await
}

async fn prepare_stop(
    runner: &Runner,
    uuid: Uuid,
    opts: Options,
    method: Method,
) -> Result<Outcome<()>, OpError> {
    let snapshot = runner.snapshot()?;
    let ledger = snapshot.ledger().clone();
    let mut subjects = vec![ManualSubject::Mdev(uuid)];
    if let Some(record) = ledger.mdevs.get(&uuid) {
        subjects.push(ManualSubject::MdevParent(record.parent.clone()));
    }
    let force = opts.force;
    let originals = ledger.original_drivers();
    let actions = runner
        .actor()
        .check(subjects, originals, None, move |inv| {
            shard::plan_remove(inv, &ledger, uuid, force)
        })
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(Action::RemoveMdev { parent, .. }) = actions.first() else {
        return Err(OpError::failed("the planner returned no removal"));
    };
    let parent = parent.clone();
    let root = runner.door().root().clone();
    let work = Box::new(move |ex: &mut exec::Executor| {
        let record = ex.ledger().mdevs.get(&uuid).cloned();
        if ex.ledger().owns_mdev(&uuid) {
            run_actions(ex, &actions)?;
            // The executor forgets a removed mdev; a definition outlives the device, and so
            // do the UUID's definitions under other parents.
            if let Some(record) = record.filter(|r| r.defined) {
                ex.update_ledger(|l| {
                    l.mdevs.insert(uuid, record);
                })
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            } else if ex.ledger().more_mdev_definitions.contains_key(&uuid) {
                ex.update_ledger(|l| mdevctl::settle(l, uuid))
                    .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
            }
            Ok(format!("removed mdev {uuid}"))
        } else {
            // Forced removal of another tool's mdev: one write, no ledger entry.
            let path = root.join(format!("sys/bus/mdev/devices/{uuid}/remove"));
            exec::write_attr(&path, "1").map_err(|e| {
                if e.errno == nix::errno::Errno::EBUSY as i32 {
                    OpError::new(
                        ErrorKind::Busy,
                        format!("mdev {uuid} is in use (EBUSY): a VM is using it; shut the VM down or detach the device first"),
                    )
                } else {
                    OpError::failed(format!("removing mdev {uuid}: {e}"))
                }
            })?;
            Ok(format!(
                "removed mdev {uuid} (forced; it was not gpuvirt's)"
            ))
        }
    });
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method,
            claim: Some((format!("mdev {uuid}"), "remove")),
            what: format!("removing mdev {uuid}"),
            targets: mdev_targets(&parent, uuid),
            snapshot: Some(snapshot),
            work,
            after: After::Nothing,
        }),
        (),
    ))
}

/// A definition StartMdev may start: the ledger's (gpuvirt's), or one of mdevctl's files.
#[derive(Debug, Clone)]
struct Startable {
    parent: String,
    type_id: String,
    /// mdevctl's file below `etc/mdevctl.d`, not in the ledger.
    mdevctl_file: bool,
}

/// The definition of `uuid` to start: the ledger's (the `parent` option picks one of several),
/// else mdevctl's file (what `mdev list --defined` shows as mdevctl's), as `mdevctl start -u`
/// starts it.
async fn startable(
    runner: &Runner,
    ledger: &gpuvirt_core::ledger::Ledger,
    uuid: Uuid,
    parent: Option<&str>,
) -> Result<Startable, OpError> {
    let from_ledger = pick(ledger, &uuid, parent);
    if let Ok(Some(r)) = &from_ledger {
        return Ok(Startable {
            parent: r.parent.clone(),
            type_id: r.type_id.clone(),
            mdevctl_file: false,
        });
    }
    // Ambiguous among the ledger's own: the caller must say which.
    if let Err(e) = &from_ledger {
        if e.kind == ErrorKind::InvalidArgs {
            return Err(e.clone());
        }
    }
    let root = runner.door().root().clone();
    let scan = tokio::task::spawn_blocking(move || mdevctl::read_all(&root))
        .await
        .map_err(|e| OpError::failed(format!("reading mdevctl's definitions failed: {e}")))?;
    let files: Vec<_> = scan
        .configs
        .into_iter()
        .filter(|c| c.uuid == uuid && parent.is_none_or(|p| p == c.parent))
        .collect();
    match files.as_slice() {
        [one] => Ok(Startable {
            parent: one.parent.clone(),
            type_id: one.mdev_type.clone(),
            mdevctl_file: true,
        }),
        [] => Err(from_ledger.err().unwrap_or_else(|| {
            OpError::new(
                ErrorKind::NoSuchDevice,
                format!(
                    "no mdev {uuid} is defined{}; define it first (DefineMdev)",
                    parent.map(|p| format!(" under {p}")).unwrap_or_default()
                ),
            )
        })),
        many => Err(OpError::new(
            ErrorKind::InvalidArgs,
            format!(
                "mdev {uuid} is defined under {} parents ({}); say which with the parent option",
                many.len(),
                many.iter()
                    .map(|c| c.parent.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `Manager.StartMdev(s uuid, a{sv}) -> o mdev`: creates a defined mdev (mdevctl start): one
/// of gpuvirt's definitions or one of mdevctl's files. Option `parent` picks one of a UUID
/// defined under several parents.
pub async fn prepare_start(
    runner: &Runner,
    uuid: &str,
    parent: Option<&str>,
    _opts: Options,
) -> Result<Outcome<Uuid>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    let snapshot = runner.snapshot()?;
    let chosen = startable(runner, snapshot.ledger(), uuid, parent).await?;
    let originals = snapshot.ledger().original_drivers();
    let (parent, type_id) = (chosen.parent.clone(), chosen.type_id.clone());
    let planned = runner
        .actor()
        .check(
            vec![ManualSubject::MdevParent(chosen.parent.clone())],
            originals,
            None,
            move |inv| {
                match inv.mdevs.get(&uuid) {
                    Some(m) if m.parent == parent => return Ok(Ok(None)),
                    Some(m) => return Ok(Err(m.parent.clone())),
                    None => {}
                }
                shard::plan_create(inv, &parent, &type_id, Some(uuid), 1).map(|a| Ok(Some(a)))
            },
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let actions = match planned {
        Ok(None) => return Ok(Outcome::Answered(uuid)),
        Ok(Some(actions)) => actions,
        Err(on) => {
            return Err(OpError::new(
                ErrorKind::AlreadyExists,
                format!(
                "mdev {uuid} is active on {on}; stop it before starting its definition under {}",
                chosen.parent
            ),
            ))
        }
    };
    let (parent, from_file) = (chosen.parent.clone(), chosen.mdevctl_file);
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: Method::StartMdev,
            claim: Some((format!("mdev {uuid}"), "start")),
            what: format!("starting mdev {uuid}"),
            targets: mdev_targets(&chosen.parent, uuid),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| {
                // The executor keeps what the record of this UUID in the ledger says (start
                // mode, attrs): make it the definition being started.
                let primary = ex.ledger().mdevs.get(&uuid).map(|r| r.parent.clone());
                if primary.is_some_and(|p| p != parent) {
                    ex.update_ledger(|l| {
                        if from_file {
                            mdevctl::step_aside(l, uuid);
                        } else {
                            mdevctl::make_primary(l, uuid, &parent);
                        }
                    })
                    .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                }
                run_actions(ex, &actions)
            }),
            after: After::Nothing,
        }),
        uuid,
    ))
}
