//! Persistent mdev definitions, as mdevctl keeps them (`Manager.DefineMdev`,
//! `ImportMdevDefinition`, `UndefineMdev`, `ListMdevDefinitions`). The recreation of defined
//! mdevs lives with the runner. May import: ops/runner.rs, ops/options.rs, crate::actor,
//! crate::policy, crate::auth, crate::error.

use std::collections::{BTreeMap, BTreeSet};

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

/// One definition DefineMdev or ImportMdevDefinition records.
#[derive(Debug, Clone)]
pub struct NewDefinition {
    pub parent: String,
    pub uuid: Uuid,
    /// A type id or name (DefineMdev); mdevctl's files hold ids.
    pub type_spec: String,
    pub start: MdevStart,
    pub attrs: Vec<(String, String)>,
}

pub(super) fn check_parent(parent: &str) -> Result<(), OpError> {
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
    check_parent(parent)?;
    let start = if opts.auto {
        MdevStart::Auto
    } else {
        MdevStart::Manual
    };
    let uuid = if uuid.is_empty() {
        Uuid::new_v4()
    } else {
        parse_uuid("uuid", uuid)?
    };
    let definition = NewDefinition {
        parent: parent.to_owned(),
        uuid,
        type_spec: type_spec.to_owned(),
        start,
        attrs: Vec::new(),
    };
    Ok(
        match prepare_define(runner, vec![definition], Method::DefineMdev).await? {
            Outcome::Answered(_) => Outcome::Answered(uuid),
            Outcome::Commit(p, _) => Outcome::Commit(p, uuid),
        },
    )
}

/// `Manager.ImportMdevDefinition(s parent, s uuid, s config, a{sv}) -> s uuids`: defines
/// mdevs from mdevctl's formats, as `mdevctl define --jsonfile` does; they are gpuvirt's from
/// then on. `config` is one definition (the JSON of `/etc/mdevctl.d/<parent>/<uuid>`; an
/// empty `uuid` is generated) or a `mdevctl list --dumpjson` document, from which a
/// non-empty `parent` and `uuid` select. The whole document is checked (every entry, and
/// each against what is defined already) before anything is recorded, then recorded at
/// once: all or nothing. `[]` is nothing to do. Returns the UUIDs defined, one per line.
pub async fn prepare_import(
    runner: &Runner,
    parent: &str,
    uuid: &str,
    config: &str,
    _opts: Options,
) -> Result<Outcome<Vec<Uuid>>, OpError> {
    // The document is the caller's argument: errors name the argument, then the entry.
    let source = std::path::Path::new("config");
    let bad_config = |e: mdevctl::MdevctlError| OpError::invalid_arg("config", e.reason());
    let configs = if mdevctl::is_dumpjson(config) {
        let parent = (!parent.is_empty()).then_some(parent);
        if let Some(p) = parent {
            check_parent(p)?;
        }
        let uuid = match uuid {
            "" => None,
            u => Some(parse_uuid("uuid", u)?),
        };
        mdevctl::parse_document(source, config, parent, uuid).map_err(bad_config)?
    } else {
        check_parent(parent)?;
        let uuid = match uuid {
            "" => Uuid::new_v4(),
            u => parse_uuid("uuid", u)?,
        };
        vec![mdevctl::parse_config(source, parent, uuid, config).map_err(bad_config)?]
    };
    if configs.is_empty() {
        return Ok(Outcome::Answered(Vec::new()));
    }
    let definitions = configs
        .into_iter()
        .map(|c| NewDefinition {
            parent: c.parent,
            uuid: c.uuid,
            type_spec: c.mdev_type,
            start: c.start,
            attrs: c.attrs,
        })
        .collect();
    prepare_define(runner, definitions, Method::ImportMdevDefinition).await
}

/// What the inventory says of one definition to record: its resolved type, and the parent
/// and type of an active mdev with its UUID.
type Resolved = (String, Option<(String, Option<String>)>);

/// Checks every definition (names, types, what is defined and active already) before any is
/// recorded; then one ledger write records them all.
async fn prepare_define(
    runner: &Runner,
    definitions: Vec<NewDefinition>,
    method: Method,
) -> Result<Outcome<Vec<Uuid>>, OpError> {
    for d in &definitions {
        check_parent(&d.parent)?;
        check_type_spec(&d.type_spec)?;
    }
    let snapshot = runner.snapshot()?;
    let originals = snapshot.ledger().original_drivers();
    let parents: BTreeSet<String> = definitions.iter().map(|d| d.parent.clone()).collect();
    let wanted: Vec<(String, String, Uuid)> = definitions
        .iter()
        .map(|d| (d.parent.clone(), d.type_spec.clone(), d.uuid))
        .collect();
    let resolved: Vec<Resolved> = runner
        .actor()
        .check(
            parents.into_iter().map(ManualSubject::MdevParent).collect(),
            originals,
            None,
            move |inv| {
                wanted
                    .iter()
                    .map(|(p, spec, uuid)| {
                        let active = inv
                            .mdevs
                            .get(uuid)
                            .map(|d| (d.parent.clone(), d.type_id.clone()));
                        let t = match shard::shard_parent(inv, p) {
                            Ok(sp) => sp.resolve_type(spec).map(|t| t.id.clone()),
                            Err(ShardError::NoSuchParent { .. }) => Ok(spec.trim().to_string()),
                            Err(e) => Err(e),
                        };
                        t.map(|t| (t, active))
                    })
                    .collect::<Result<Vec<_>, _>>()
            },
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    let ledger = snapshot.ledger();
    let mut taken: Vec<String> = Vec::new();
    let mut records = Vec::new();
    for (d, (type_id, active)) in definitions.into_iter().zip(resolved) {
        let uuid = d.uuid;
        if exec::names::mdev_type(&type_id).is_err() {
            return Err(OpError::invalid_arg(
                "type",
                format!("mdev {uuid}: not a valid mdev type id"),
            ));
        }
        if mdevctl::definitions_of(ledger, &uuid)
            .iter()
            .any(|r| r.parent == d.parent)
        {
            taken.push(format!("mdev {uuid} is defined under {} already", d.parent));
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
            if *ap == d.parent && at.as_deref() != Some(type_id.as_str()) {
                return Err(OpError::new(
                    ErrorKind::AlreadyExists,
                    format!("mdev {uuid} is active on {ap} with another type"),
                ));
            }
        }
        records.push((
            uuid,
            MdevRecord {
                parent: d.parent,
                type_id,
                start: d.start,
                attrs: d.attrs,
                rule: None,
                defined: true,
                // gpuvirt makes it (now or when the parent appears), so gpuvirt may remove it.
                created_by_gpuvirt: true,
            },
        ));
    }
    if !taken.is_empty() {
        let n = taken.len();
        return Err(OpError::new(
            ErrorKind::AlreadyExists,
            format!(
                "{}{}",
                taken.join("; "),
                if n > 1 || records.len() > 1 {
                    "; nothing was defined"
                } else {
                    ""
                }
            ),
        ));
    }
    let uuids: Vec<Uuid> = records.iter().map(|(u, _)| *u).collect();
    // An auto definition on a present parent starts at once, as mdevctl's udev rule would.
    let auto: Vec<Uuid> = records
        .iter()
        .filter(|(_, r)| r.start == MdevStart::Auto)
        .map(|(u, _)| *u)
        .collect();
    let what = match uuids.as_slice() {
        [one] => format!("mdev {one}"),
        many => format!("{} mdevs", many.len()),
    };
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method,
            claim: None,
            what: format!("defining {what}"),
            targets: Vec::new(),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| {
                // One write: every definition or, when it fails, none.
                ex.update_ledger(|l| {
                    for (uuid, record) in records {
                        mdevctl::add_definition(l, uuid, record);
                    }
                })
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                Ok(format!("defined {what}"))
            }),
            after: if auto.is_empty() {
                After::Nothing
            } else {
                After::Recreate(auto)
            },
        }),
        uuids,
    ))
}

/// Which of the ledger's definitions of `uuid` a request means (the `parent` option picks
/// one of a UUID defined under several parents); `None` when the ledger defines none.
pub(super) fn pick(
    ledger: &gpuvirt_core::ledger::Ledger,
    uuid: &Uuid,
    parent: Option<&str>,
) -> Result<Option<MdevRecord>, OpError> {
    mdevctl::pick_definition(ledger, uuid, parent)
        .map(|r| r.cloned())
        .map_err(|e| match e {
            mdevctl::PickError::Ambiguous { .. } => {
                OpError::new(ErrorKind::InvalidArgs, e.to_string())
            }
            mdevctl::PickError::NotUnder { .. } => {
                OpError::new(ErrorKind::NoSuchDevice, e.to_string())
            }
        })
}

/// `Manager.UndefineMdev(s uuid, a{sv})`: drops the definition; an active mdev stays, as a
/// transient one (mdevctl undefine). Option `parent` picks one of a UUID defined under
/// several parents (without it such a UUID is refused, naming its parents).
pub async fn prepare_undefine(
    runner: &Runner,
    uuid: &str,
    parent: Option<&str>,
    _opts: Options,
) -> Result<Outcome<()>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    let snapshot = runner.snapshot()?;
    let Some(record) = pick(snapshot.ledger(), &uuid, parent)? else {
        let under = parent.map(|p| format!(" under {p}")).unwrap_or_default();
        return Err(OpError::new(
            ErrorKind::NoSuchDevice,
            format!("no mdev {uuid} is defined{under}"),
        ));
    };
    let subjects = vec![
        ManualSubject::MdevParent(record.parent.clone()),
        ManualSubject::Mdev(uuid),
    ];
    let originals = snapshot.ledger().original_drivers();
    let parent = record.parent.clone();
    let on = parent.clone();
    let active = runner
        .actor()
        .check(subjects, originals, None, move |inv| {
            inv.mdevs.get(&uuid).is_some_and(|m| m.parent == on)
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
                ex.update_ledger(|l| mdevctl::remove_definition(l, uuid, &parent, active))
                    .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                Ok(format!("undefined mdev {uuid} under {parent}"))
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
            "{}; it is not listed",
            gpuvirt_core::error_chain(e as &dyn std::error::Error)
        );
    }
    let active: BTreeMap<Uuid, String> = runner
        .actor()
        .inspect(|inv| {
            inv.mdevs
                .iter()
                .map(|(u, m)| (*u, m.parent.clone()))
                .collect()
        })
        .await?;
    Ok(mdevctl::definitions(&ledger, &scan.configs, |u, p| {
        active.get(u).is_some_and(|on| on == p)
    }))
}
