//! Persistent mdev definitions, as mdevctl keeps them (`Manager.DefineMdev`,
//! `ImportMdevDefinition`, `UndefineMdev`, `ListMdevDefinitions`). The recreation of defined
//! mdevs lives with the runner. May import: ops/runner.rs, ops/options.rs, crate::actor,
//! crate::policy, crate::auth, crate::error.

use std::collections::BTreeSet;

use gpuvirt_core::exec;
use gpuvirt_core::ledger::{MdevRecord, MdevStart};
use gpuvirt_core::mdevctl;
use gpuvirt_core::shard::{self, ShardError};
use uuid::Uuid;

use super::options::{check_type_spec, parse_uuid, Options};
use super::runner::{After, Outcome, Prepared, Runner};
use crate::auth::Method;
use crate::error::{ErrorKind, OpError};
use crate::policy::ManualSubject;

/// What DefineMdev and ImportMdevDefinition record.
#[derive(Debug)]
pub struct NewDefinition {
    pub type_spec: String,
    pub start: MdevStart,
    pub attrs: Vec<(String, String)>,
    /// The method, for authorization.
    pub method: Method,
}

fn check_parent(parent: &str) -> Result<(), OpError> {
    if exec::names::mdev_parent(parent).is_err() {
        return Err(OpError::invalid_arg(
            "parent",
            "not an mdev parent name (an mdev_bus entry such as 0000:41:00.0)",
        ));
    }
    Ok(())
}

/// `Manager.DefineMdev(s parent, s type, s uuid, a{sv}) -> s uuid`: a persistent definition
/// (mdevctl define). Option `auto` (default true): create it whenever the parent is present.
/// The parent may be absent; then `type` must be a type id.
pub async fn prepare_define_mdev(
    runner: &Runner,
    parent: &str,
    type_spec: &str,
    uuid: &str,
    opts: Options,
) -> Result<Outcome<Uuid>, OpError> {
    let start = if opts.auto {
        MdevStart::Auto
    } else {
        MdevStart::Manual
    };
    let definition = NewDefinition {
        type_spec: type_spec.to_owned(),
        start,
        attrs: Vec::new(),
        method: Method::DefineMdev,
    };
    prepare_define(runner, parent, uuid, definition).await
}

/// `Manager.ImportMdevDefinition(s parent, s uuid, s config, a{sv}) -> s uuid`: defines an
/// mdev from mdevctl's file format (`mdev_type`, `start`, ordered `attrs`), as `mdevctl define
/// --jsonfile` does; the definition is gpuvirt's from then on. An empty `uuid` is generated.
pub async fn prepare_import(
    runner: &Runner,
    parent: &str,
    uuid: &str,
    config: &str,
    _opts: Options,
) -> Result<Outcome<Uuid>, OpError> {
    check_parent(parent)?;
    // The UUID only names the definition while it is checked.
    let checked_uuid = if uuid.is_empty() {
        Uuid::nil()
    } else {
        parse_uuid("uuid", uuid)?
    };
    let parsed = mdevctl::parse_config(
        std::path::Path::new("the config argument"),
        parent,
        checked_uuid,
        config,
    )
    .map_err(|e| OpError::invalid_arg("config", e))?;
    let definition = NewDefinition {
        type_spec: parsed.mdev_type.clone(),
        start: parsed.start,
        attrs: parsed.attrs.clone(),
        method: Method::ImportMdevDefinition,
    };
    prepare_define(runner, parent, uuid, definition).await
}

async fn prepare_define(
    runner: &Runner,
    parent: &str,
    uuid: &str,
    definition: NewDefinition,
) -> Result<Outcome<Uuid>, OpError> {
    check_parent(parent)?;
    check_type_spec(&definition.type_spec)?;
    let uuid = if uuid.is_empty() {
        Uuid::new_v4()
    } else {
        parse_uuid("uuid", uuid)?
    };
    let snapshot = runner.snapshot()?;
    let originals = snapshot.ledger().original_drivers();
    let (p, spec) = (parent.to_string(), definition.type_spec.clone());
    let (type_id, active) = runner
        .actor()
        .check(
            vec![ManualSubject::MdevParent(parent.to_string())],
            originals,
            None,
            move |inv| {
                let active = inv
                    .mdevs
                    .get(&uuid)
                    .map(|d| (d.parent.clone(), d.type_id.clone()));
                let resolved = match shard::shard_parent(inv, &p) {
                    Ok(sp) => sp.resolve_type(&spec).map(|t| t.id.clone()),
                    Err(ShardError::NoSuchParent { .. }) => Ok(spec.trim().to_string()),
                    Err(e) => Err(e),
                };
                resolved.map(|t| (t, active))
            },
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    if exec::names::mdev_type(&type_id).is_err() {
        return Err(OpError::invalid_arg("type", "not a valid mdev type id"));
    }
    let ledger = snapshot.ledger();
    if ledger.mdevs.get(&uuid).is_some_and(|r| r.defined) {
        return Err(OpError::new(
            ErrorKind::AlreadyExists,
            format!("mdev {uuid} is defined already"),
        ));
    }
    if let Some((ap, at)) = &active {
        if !ledger.owns_mdev(&uuid) {
            return Err(OpError::new(
                ErrorKind::PolicyViolation,
                format!(
                    "mdev {uuid} is active and belongs to another tool; gpuvirt does not define it"
                ),
            ));
        }
        if ap != parent || at.as_deref() != Some(type_id.as_str()) {
            return Err(OpError::new(
                ErrorKind::AlreadyExists,
                format!("mdev {uuid} is active on {ap} with another type"),
            ));
        }
    }
    let start = definition.start;
    let record = MdevRecord {
        parent: parent.to_string(),
        type_id,
        start,
        attrs: definition.attrs,
        rule: None,
        defined: true,
        // gpuvirt makes it (now or when the parent appears), so gpuvirt may remove it.
        created_by_gpuvirt: true,
    };
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: definition.method,
            claim: None,
            what: format!("defining mdev {uuid}"),
            targets: Vec::new(),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| {
                ex.update_ledger(|l| {
                    l.mdevs.insert(uuid, record);
                })
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                Ok(format!("defined mdev {uuid}"))
            }),
            // An auto definition on a present parent starts at once, as mdevctl's udev
            // rule would.
            after: if start == MdevStart::Auto {
                After::Recreate(uuid)
            } else {
                After::Nothing
            },
        }),
        uuid,
    ))
}

/// `Manager.UndefineMdev(s uuid, a{sv})`: drops the definition; an active mdev stays, as a
/// transient one (mdevctl undefine).
pub async fn prepare_undefine(
    runner: &Runner,
    uuid: &str,
    _opts: Options,
) -> Result<Outcome<()>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    let snapshot = runner.snapshot()?;
    let Some(record) = snapshot.ledger().mdevs.get(&uuid).filter(|r| r.defined) else {
        return Err(OpError::new(
            ErrorKind::NoSuchDevice,
            format!("no mdev {uuid} is defined"),
        ));
    };
    let subjects = vec![
        ManualSubject::MdevParent(record.parent.clone()),
        ManualSubject::Mdev(uuid),
    ];
    let originals = snapshot.ledger().original_drivers();
    let active = runner
        .actor()
        .check(subjects, originals, None, move |inv| {
            inv.mdevs.contains_key(&uuid)
        })
        .await?;
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: Method::UndefineMdev,
            claim: None,
            what: format!("undefining mdev {uuid}"),
            targets: Vec::new(),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| {
                ex.update_ledger(|l| {
                    if active {
                        if let Some(r) = l.mdevs.get_mut(&uuid) {
                            r.defined = false;
                        }
                    } else {
                        l.mdevs.remove(&uuid);
                    }
                })
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                Ok(format!("undefined mdev {uuid}"))
            }),
            after: After::Nothing,
        }),
        (),
    ))
}

/// `Manager.ListMdevDefinitions(a{sv})`: every persistent definition, gpuvirt's (its ledger)
/// and mdevctl's (`/etc/mdevctl.d` under the root, read now), with owner, start mode,
/// ordered attrs and whether the device is active. Reads only.
pub async fn list_definitions(runner: &Runner) -> Result<Vec<mdevctl::Definition>, OpError> {
    let ledger = runner.ledger()?;
    let root = runner.door().root().clone();
    let scan = tokio::task::spawn_blocking(move || mdevctl::read_all(&root))
        .await
        .map_err(|e| OpError::failed(format!("reading mdevctl's definitions failed: {e}")))?;
    for e in &scan.errors {
        tracing::warn!(
            "skipping an mdevctl definition: {}",
            gpuvirt_core::error_chain(e as &dyn std::error::Error)
        );
    }
    let active: BTreeSet<Uuid> = runner
        .actor()
        .inspect(|inv| inv.mdevs.keys().copied().collect())
        .await?;
    Ok(mdevctl::definitions(&ledger, &scan.configs, |u| {
        active.contains(u)
    }))
}
