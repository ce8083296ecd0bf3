//! Creating, starting, stopping and removing mdevs (`ShardParent.CreateMdev`, `Mdev.Remove`,
//! `Manager.StartMdev`, `Manager.StopMdev`): single sysfs writes, answered directly (still
//! bounded by the runner's timeout). Each reads the ledger once and asks the actor once for
//! its checks. May import: ops/runner.rs, ops/options.rs, crate::actor, crate::policy,
//! crate::auth, crate::error, crate::events.

use gpuvirt_core::exec;
use gpuvirt_core::plan::Action;
use gpuvirt_core::shard;
use uuid::Uuid;

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
            // The executor forgets a removed mdev; a definition outlives the device.
            if let Some(record) = record.filter(|r| r.defined) {
                ex.update_ledger(|l| {
                    l.mdevs.insert(uuid, record);
                })
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

/// `Manager.StartMdev(s uuid, a{sv}) -> o mdev`: creates a defined mdev (mdevctl start).
pub async fn prepare_start(
    runner: &Runner,
    uuid: &str,
    _opts: Options,
) -> Result<Outcome<Uuid>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    let snapshot = runner.snapshot()?;
    let Some(record) = snapshot
        .ledger()
        .mdevs
        .get(&uuid)
        .filter(|r| r.defined)
        .cloned()
    else {
        return Err(OpError::new(
            ErrorKind::NoSuchDevice,
            format!("no mdev {uuid} is defined; define it first (DefineMdev)"),
        ));
    };
    let originals = snapshot.ledger().original_drivers();
    let (parent, type_id) = (record.parent.clone(), record.type_id.clone());
    let planned = runner
        .actor()
        .check(
            vec![ManualSubject::MdevParent(record.parent.clone())],
            originals,
            None,
            move |inv| {
                if inv.mdevs.contains_key(&uuid) {
                    return Ok(None);
                }
                shard::plan_create(inv, &parent, &type_id, Some(uuid), 1).map(Some)
            },
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let Some(actions) = planned else {
        return Ok(Outcome::Answered(uuid));
    };
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: Method::StartMdev,
            claim: Some((format!("mdev {uuid}"), "start")),
            what: format!("starting mdev {uuid}"),
            targets: mdev_targets(&record.parent, uuid),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| run_actions(ex, &actions)),
            after: After::Nothing,
        }),
        uuid,
    ))
}
