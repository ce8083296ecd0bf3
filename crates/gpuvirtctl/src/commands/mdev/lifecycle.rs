//! The `mdev` verbs that change something: create/remove transient devices, define, modify,
//! undefine, start and stop persistent ones, in gpuvirtctl's own forms and mdevctl's
//! (`-p/-t/-u` flags, `--jsonfile`), through ShardParent.CreateMdev, Mdev.Remove and
//! Manager.Define/Modify/Undefine/Start/StopMdev, Manager.ImportMdevDefinition.
//! May import: crate::client, crate::errors, crate::view, mdev/shared.rs.

use std::collections::HashMap;

use gpuvirt_api as api;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::shared::{parent_option, parse_uuid, read_text};
use crate::client::{options, Ctx};
use crate::errors::CliError;
use crate::view::Host;

/// A transient device of `mdev_type` on `parent` (`mdev create`, `mdev start -p -t`);
/// prints its UUID when `print`.
pub async fn create(
    ctx: &Ctx<'_>,
    parent: &str,
    mdev_type: &str,
    uuid: Option<&str>,
    print: bool,
) -> Result<(), CliError> {
    // One trip: CreateMdev on the path the parent's object must have; the whole tree is read
    // (to find it by name, or to say it is none) only when nothing is there.
    let uuid = uuid.unwrap_or("");
    let call = |at: OwnedObjectPath| async move {
        ctx.shard_parent(at.as_str())
            .await?
            .create_mdev(mdev_type, uuid, options(&[]))
            .await
            .map_err(|e| ctx.api_error(e))
    };
    let lookup = async {
        let host = ctx.host().await?;
        find_parent(&host, parent)
    };
    let path = ctx.call_at(parent_paths(parent), lookup, call).await?;
    if !print {
        return Ok(());
    }
    // The reply names the new mdev's object, and its path names its UUID.
    let created = match api::uuid_from_mdev_path(path.as_str()) {
        Some(u) => u.hyphenated().to_string(),
        None => ctx.mdev_uuid(path.as_str()).await?,
    };
    outln!("{created}")?;
    Ok(())
}

pub async fn remove(ctx: &Ctx<'_>, uuid: &str, force: bool) -> Result<(), CliError> {
    let call = |at: OwnedObjectPath| async move {
        let opts = options(&[("force", force.then_some(true))]);
        ctx.mdev(at.as_str())
            .await?
            .remove(opts)
            .await
            .map_err(|e| ctx.api_error(e))
    };
    ctx.call_at(api::mdev_path_for(uuid), ctx.mdev_by_uuid(uuid), call)
        .await
}

/// What `mdev define` was asked, in either form.
pub struct Define {
    pub parent: Option<String>,
    pub mdev_type: Option<String>,
    pub uuid: Option<String>,
    pub jsonfile: Option<String>,
    /// Auto, manual, or the form's default (`None`).
    pub auto: Option<bool>,
    /// mdevctl's form (`-p/--parent`): manual unless `--auto`, and the UUID printed only when
    /// it was generated. gpuvirtctl's own (`define PARENT TYPE`): auto unless `--manual`,
    /// the UUID always printed.
    pub mdevctl_form: bool,
}

pub async fn define(ctx: &Ctx<'_>, d: Define) -> Result<(), CliError> {
    let print = !d.mdevctl_form || d.uuid.is_none();
    if let Some(file) = &d.jsonfile {
        // `mdevctl define --jsonfile F -p P [-u U]`: the file's type, start mode and attrs.
        let parent = d.parent.as_deref().ok_or_else(|| {
            CliError::Daemon(format!(
                "a definition from {file} needs its parent (-p/--parent)"
            ))
        })?;
        if let Some(u) = &d.uuid {
            parse_uuid(u)?;
        }
        let text = read_text(file)?;
        let uuid = d.uuid.clone().unwrap_or_default();
        let defined = ctx
            .manager()
            .await?
            .import_mdev_definition(parent, &uuid, &text, options(&[]))
            .await
            .map_err(|e| ctx.api_error(e))?;
        if print {
            for line in defined.lines() {
                outln!("{line}")?;
            }
        }
        return Ok(());
    }
    let (parent, mdev_type) = match (d.parent, d.mdev_type) {
        (Some(p), Some(t)) => (p, t),
        // `mdevctl define -u U` of an active device: its parent and type.
        (None, None) if d.uuid.is_some() => {
            let uuid = d.uuid.as_deref().unwrap_or_default();
            let active = ctx
                .mdevs()
                .await?
                .into_iter()
                .find(|m| m.uuid == uuid && m.active)
                .ok_or_else(|| {
                    CliError::Daemon(format!(
                        "mdev {uuid} is not active; give its parent (-p) and type (-t)"
                    ))
                })?;
            (active.parent, active.type_id)
        }
        (None, _) => return Err(CliError::Daemon("no parent given (-p/--parent)".to_owned())),
        (Some(_), None) => return Err(CliError::Daemon("no type given (-t/--type)".to_owned())),
    };
    let auto = d.auto.unwrap_or(!d.mdevctl_form);
    // The daemon's default is auto; only manual needs saying.
    let opts = options(&[("auto", (!auto).then_some(false))]);
    let defined = ctx
        .manager()
        .await?
        .define_mdev(&parent, &mdev_type, d.uuid.as_deref().unwrap_or(""), opts)
        .await
        .map_err(|e| ctx.api_error(e))?;
    if print {
        outln!("{defined}")?;
    }
    Ok(())
}

pub async fn undefine(ctx: &Ctx<'_>, uuid: &str, parent: Option<&str>) -> Result<(), CliError> {
    ctx.manager()
        .await?
        .undefine_mdev(uuid, parent_option(parent))
        .await
        .map_err(|e| ctx.api_error(e))
}

/// `mdev start`: a defined device by UUID (`-p` picks among parents), or with `-p P -t T` a
/// transient one, as `mdevctl start` does; a generated UUID is printed.
pub async fn start(
    ctx: &Ctx<'_>,
    uuid: Option<&str>,
    parent: Option<&str>,
    mdev_type: Option<&str>,
    jsonfile: Option<&str>,
) -> Result<(), CliError> {
    if jsonfile.is_some() {
        return Err(CliError::Daemon(
            "start --jsonfile (a device with attributes that is not defined) is not supported; \
             define it with `mdev define --jsonfile FILE -p PARENT`, then start it"
                .to_owned(),
        ));
    }
    if let Some(t) = mdev_type {
        let parent = parent
            .ok_or_else(|| CliError::Daemon("a type needs its parent (-p/--parent)".to_owned()))?;
        return create(ctx, parent, t, uuid, uuid.is_none()).await;
    }
    let uuid = uuid.ok_or_else(|| {
        CliError::Daemon(
            "the device is insufficiently specified: give its UUID (-u), or a parent and a type \
             (-p, -t)"
                .to_owned(),
        )
    })?;
    let _path = ctx
        .manager()
        .await?
        .start_mdev(uuid, parent_option(parent))
        .await
        .map_err(|e| ctx.api_error(e))?;
    Ok(())
}

pub async fn stop(ctx: &Ctx<'_>, uuid: &str) -> Result<(), CliError> {
    ctx.manager()
        .await?
        .stop_mdev(uuid, options(&[]))
        .await
        .map_err(|e| ctx.api_error(e))
}

/// What `mdev modify` was asked (mdevctl's flags).
pub struct Modify {
    pub uuid: String,
    pub parent: Option<String>,
    pub mdev_type: Option<String>,
    pub auto: bool,
    pub manual: bool,
    pub addattr: Option<String>,
    pub value: Option<String>,
    pub delattr: bool,
    pub index: Option<u32>,
    pub jsonfile: Option<String>,
    pub live: bool,
    pub dry_run: bool,
}

/// `Manager.ModifyMdev`; prints nothing, as mdevctl, unless a dry run (then the definition it
/// would become, as mdevctl's file).
pub async fn modify(ctx: &Ctx<'_>, m: Modify) -> Result<(), CliError> {
    parse_uuid(&m.uuid)?;
    let jsonfile = m.jsonfile.as_deref().map(read_text).transpose()?;
    let mut opts: HashMap<&str, Value<'_>> = options(&[
        ("auto", m.auto.then_some(true)),
        ("manual", m.manual.then_some(true)),
        ("delattr", m.delattr.then_some(true)),
        ("live", m.live.then_some(true)),
        ("dry-run", m.dry_run.then_some(true)),
    ]);
    for (key, value) in [
        ("parent", &m.parent),
        ("type", &m.mdev_type),
        ("addattr", &m.addattr),
        ("value", &m.value),
        ("jsonfile", &jsonfile),
    ] {
        if let Some(v) = value {
            opts.insert(key, Value::from(v.as_str()));
        }
    }
    if let Some(i) = m.index {
        opts.insert("index", Value::from(i));
    }
    let (_parent, config) = ctx
        .manager()
        .await?
        .modify_mdev(&m.uuid, opts)
        .await
        .map_err(|e| ctx.api_error(e))?;
    if m.dry_run {
        outln!("{config}")?;
    }
    Ok(())
}

/// Where the ShardParent object named `parent` lives if there is one: a GPU's object (a GPU's
/// parent is named by its address), then the object of a parent that is not a GPU. Only the
/// names [`find_parent`] accepts: an address in its canonical form (or without `0000:`),
/// or any other name as it is.
fn parent_paths(parent: &str) -> Vec<OwnedObjectPath> {
    match api::canonical_pci_address(parent) {
        Some(a) if a == parent || a.strip_prefix("0000:") == Some(parent) => api::gpu_path_for(&a)
            .into_iter()
            .chain([api::parent_path(&a)])
            .collect(),
        Some(_) => Vec::new(),
        None => vec![api::parent_path(parent)],
    }
}

/// The ShardParent object of `parent`: a parent's name, or a GPU's full or short address.
fn find_parent(host: &Host, parent: &str) -> Result<OwnedObjectPath, CliError> {
    let matches = |name: &str| name == parent || name.strip_prefix("0000:") == Some(parent);
    host.gpus
        .iter()
        .filter_map(|g| g.shard.as_ref())
        .chain(host.other_parents.iter())
        .find(|s| matches(&s.name))
        .and_then(|s| OwnedObjectPath::try_from(s.path.clone()).ok())
        .ok_or_else(|| {
            CliError::Daemon(format!(
                "{parent} is not a device that offers vGPUs; `gpuvirtctl types` lists those that do"
            ))
        })
}
