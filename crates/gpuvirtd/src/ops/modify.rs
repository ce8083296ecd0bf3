//! Changing one of gpuvirt's persistent definitions in place (`Manager.ModifyMdev`), as
//! `mdevctl modify` does: type, start mode, one attribute added or deleted, or the whole
//! definition from a JSON document. The whole request is checked before the ledger is
//! written once; an active device keeps running as it is (only the definition changes).
//! May import: ops/runner.rs, ops/options.rs, ops/definitions.rs, crate::actor,
//! crate::policy, crate::auth, crate::error.

use gpuvirt_core::ledger::MdevStart;
use gpuvirt_core::mdevctl::{
    self, AttrChange, MdevctlConfigExt, Modification, ModifyError, Replacement,
};
use gpuvirt_core::shard::{self, ShardError};
use uuid::Uuid;

use super::definitions::{check_parent, pick};
use super::options::{check_type_spec, parse_uuid, Options};
use super::runner::{After, Outcome, Prepared, Runner};
use crate::auth::Method;
use crate::error::{ErrorKind, OpError};
use crate::policy::ManualSubject;

/// The options of `Manager.ModifyMdev`, decoded at the bus edge (names as mdevctl's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModifyRequest {
    /// Picks one of a UUID defined under several parents (the parent itself cannot change).
    pub parent: Option<String>,
    /// A new type id or name.
    pub mdev_type: Option<String>,
    pub auto: bool,
    pub manual: bool,
    /// `addattr` (a name) with `value`, at `index` or the end.
    pub addattr: Option<String>,
    pub value: Option<String>,
    /// Deletes the attribute at `index`, or the last one.
    pub delattr: bool,
    pub index: Option<u32>,
    /// The contents of mdevctl's `--jsonfile`: a definition's JSON replacing type, start
    /// mode and attrs.
    pub jsonfile: Option<String>,
    /// Change the running device too (mdevctl's `--live`): not supported.
    pub live: bool,
}

/// What ModifyMdev answers: the definition's parent and its new JSON, as mdevctl's file.
pub type Modified = (String, String);

/// The modification the options ask for, the arguments checked against each other; the
/// definition itself is checked by [`Modification::apply`].
fn modification(req: &ModifyRequest, parent: &str, uuid: Uuid) -> Result<Modification, OpError> {
    let conflict = |a: &str, b: &str| {
        OpError::invalid_arg(
            "options",
            format!("'{a}' and '{b}' cannot be given together"),
        )
    };
    if req.auto && req.manual {
        return Err(conflict("auto", "manual"));
    }
    if req.addattr.is_some() && req.delattr {
        return Err(conflict("addattr", "delattr"));
    }
    if req.addattr.is_some() != req.value.is_some() {
        return Err(OpError::invalid_arg(
            if req.addattr.is_some() {
                "value"
            } else {
                "addattr"
            },
            "'addattr' (the attribute's name) and 'value' go together",
        ));
    }
    if req.index.is_some() && req.addattr.is_none() && !req.delattr {
        return Err(OpError::invalid_arg(
            "index",
            "an index says where to add or delete an attribute; give 'addattr' or 'delattr' with it",
        ));
    }
    if let Some(t) = &req.mdev_type {
        check_type_spec(t)?;
    }
    let index = req.index.map(|i| i as usize);
    let attr = match (&req.addattr, &req.value) {
        (Some(name), Some(value)) => Some(AttrChange::Add {
            name: name.clone(),
            value: value.clone(),
            index,
        }),
        _ if req.delattr => Some(AttrChange::Delete { index }),
        _ => None,
    };
    let replace = match &req.jsonfile {
        None => None,
        Some(text) => {
            let c = mdevctl::parse_config(std::path::Path::new("jsonfile"), parent, uuid, text)
                .map_err(|e| OpError::invalid_arg("jsonfile", e.reason()))?;
            Some(Replacement {
                mdev_type: c.mdev_type,
                start: c.start,
                attrs: c.attrs,
            })
        }
    };
    Ok(Modification {
        mdev_type: req.mdev_type.clone(),
        start: if req.auto {
            Some(MdevStart::Auto)
        } else if req.manual {
            Some(MdevStart::Manual)
        } else {
            None
        },
        attr,
        replace,
    })
}

/// A refused modification, as the option it concerns.
fn refused(e: ModifyError) -> OpError {
    let option = match &e {
        ModifyError::Nothing => "options",
        ModifyError::ReplaceAndMore { .. } => "jsonfile",
        ModifyError::IndexOutOfRange { .. } => "index",
        ModifyError::NoAttribute => "delattr",
        ModifyError::BadAttrName { .. } => "addattr",
        ModifyError::BadType(_) => "type",
    };
    OpError::invalid_arg(option, e)
}

/// `Manager.ModifyMdev(s uuid, a{sv}) -> (s parent, s config)`: changes one of gpuvirt's
/// definitions as `mdevctl modify` does and answers the new definition as mdevctl's file.
/// mdevctl's own files are not gpuvirt's to change (NotSupported, naming the file); a
/// definition a policy rule made is the policy's (PolicyViolation).
pub async fn prepare_modify(
    runner: &Runner,
    uuid: &str,
    req: ModifyRequest,
    opts: Options,
) -> Result<Outcome<Modified>, OpError> {
    let uuid = parse_uuid("uuid", uuid)?;
    if let Some(p) = &req.parent {
        check_parent(p)?;
    }
    if req.live {
        return Err(OpError::new(
            ErrorKind::NotSupported,
            "'live' (changing the running device itself) is not supported: gpuvirt changes \
             the definition only; stop and start the device to apply it",
        ));
    }
    let snapshot = runner.snapshot()?;
    let Some(record) = pick(snapshot.ledger(), &uuid, req.parent.as_deref())? else {
        return Err(not_gpuvirts(runner, uuid, req.parent.as_deref()).await?);
    };
    if !record.created_by_gpuvirt {
        return Err(OpError::new(
            ErrorKind::NotSupported,
            format!(
                "mdev {uuid} under {} is mdevctl's definition; gpuvirt changes only its own \
                 (use mdevctl modify)",
                record.parent
            ),
        ));
    }
    if let Some(rule) = &record.rule {
        return Err(OpError::new(
            ErrorKind::PolicyViolation,
            format!("mdev {uuid} is made by the policy's rule {rule}; change the policy instead"),
        ));
    }
    let mut change = modification(&req, &record.parent, uuid)?;
    // A type name becomes the parent's type id, as DefineMdev resolves it.
    let parent = record.parent.clone();
    let spec = change.mdev_type.clone();
    let on = parent.clone();
    let originals = snapshot.ledger().original_drivers();
    let resolved = runner
        .actor()
        .check(
            vec![
                ManualSubject::MdevParent(parent.clone()),
                ManualSubject::Mdev(uuid),
            ],
            originals,
            None,
            move |inv| match spec {
                None => Ok(None),
                Some(spec) => match shard::shard_parent(inv, &on) {
                    Ok(sp) => sp.resolve_type(&spec).map(|t| Some(t.id.clone())),
                    Err(ShardError::NoSuchParent { .. }) => Ok(Some(spec.trim().to_string())),
                    Err(e) => Err(e),
                },
            },
        )
        .await?
        .map_err(|e| OpError::from_shard(&e))?;
    if resolved.is_some() {
        change.mdev_type = resolved;
    }
    let new = change.apply(&record).map_err(refused)?;
    let config = mdevctl::MdevctlConfig::from_record(uuid, &new).to_json();
    let answer = (parent.clone(), config);
    if opts.dry_run || new == record {
        return Ok(Outcome::Answered(answer));
    }
    Ok(Outcome::Commit(
        Box::new(Prepared {
            method: Method::ModifyMdev,
            claim: None,
            what: format!("modifying mdev {uuid} under {parent}"),
            targets: Vec::new(),
            snapshot: Some(snapshot),
            work: Box::new(move |ex| {
                // The ledger as it is under the lock: a definition dropped meanwhile stays
                // dropped.
                ex.update_ledger(|l| {
                    if let Ok(Some(now)) = mdevctl::pick_definition(l, &uuid, Some(&parent)) {
                        if let Ok(next) = change.apply(now) {
                            mdevctl::add_definition(l, uuid, next);
                        }
                    }
                })
                .map_err(|e| OpError::failed(gpuvirt_core::error_chain(&e)))?;
                Ok(format!("modified mdev {uuid} under {parent}"))
            }),
            after: After::Nothing,
        }),
        answer,
    ))
}

/// Why a UUID the ledger does not define cannot be modified: mdevctl's file, or nothing.
async fn not_gpuvirts(
    runner: &Runner,
    uuid: Uuid,
    parent: Option<&str>,
) -> Result<OpError, OpError> {
    let root = runner.door().root().clone();
    let scan = tokio::task::spawn_blocking(move || mdevctl::read_all(&root))
        .await
        .map_err(|e| OpError::failed(format!("reading mdevctl's definitions failed: {e}")))?;
    let under = parent.map(|p| format!(" under {p}")).unwrap_or_default();
    Ok(
        match scan
            .configs
            .iter()
            .find(|c| c.uuid == uuid && parent.is_none_or(|p| p == c.parent))
        {
            Some(c) => OpError::new(
                ErrorKind::NotSupported,
                format!(
                    "mdev {uuid} under {} is mdevctl's definition (/etc/mdevctl.d/{}/{uuid}); \
                     gpuvirt changes only its own (use mdevctl modify)",
                    c.parent, c.parent
                ),
            ),
            None => OpError::new(
                ErrorKind::NoSuchDevice,
                format!("no mdev {uuid} is defined{under}"),
            ),
        },
    )
}
