//! `gpuvirtctl mdev ...`: mediated devices the mdevctl way (create/remove transient ones,
//! define/undefine/start/stop persistent ones, list active or defined ones, import and export
//! mdevctl's JSON), through ShardParent.CreateMdev, Mdev.Remove,
//! Manager.Define/Undefine/Start/StopMdev, Manager.ImportMdevDefinition and
//! Manager.ListMdevDefinitions. May import: crate::client, crate::errors, crate::table,
//! crate::view.

use gpuvirt_api as api;
use gpuvirt_api::mdevctl::{self, MdevctlConfig};
use gpuvirt_api::{MdevStart, Uuid};
use zbus::zvariant::OwnedObjectPath;

use crate::client::{options, print_json, Ctx};
use crate::errors::CliError;
use crate::table::print_table;
use crate::view::Host;

#[derive(Debug, clap::Subcommand)]
pub enum MdevCommand {
    /// Create a mediated device now (transient, like `mdevctl start -p PARENT -t TYPE`).
    Create {
        /// The parent device: a PCI address or a parent's name (`gpuvirtctl types`).
        parent: String,
        /// The mdev type, e.g. nvidia-300.
        mdev_type: String,
        /// The new device's UUID (default: a fresh one).
        #[arg(long)]
        uuid: Option<String>,
    },
    /// Remove a mediated device (a defined one keeps its definition).
    Remove {
        uuid: String,
        /// Also remove a device another tool created.
        #[arg(long)]
        force: bool,
    },
    /// Define a persistent mediated device (like `mdevctl define`).
    Define {
        /// The parent device: a PCI address or a parent's name.
        parent: String,
        /// The mdev type, e.g. nvidia-300.
        mdev_type: String,
        /// The device's UUID (default: a fresh one).
        #[arg(long)]
        uuid: Option<String>,
        /// Create it whenever the parent is present (the default).
        #[arg(long, conflicts_with = "manual")]
        auto: bool,
        /// Create it only on `gpuvirtctl mdev start`.
        #[arg(long)]
        manual: bool,
    },
    /// Drop a definition (an active device stays, as a transient one).
    Undefine {
        uuid: String,
        /// The parent whose definition to drop, for a UUID defined under several parents.
        #[arg(short, long)]
        parent: Option<String>,
    },
    /// Create a defined mediated device (gpuvirt's, or mdevctl's from /etc/mdevctl.d).
    Start {
        uuid: String,
        /// The parent whose definition to start, for a UUID defined under several parents.
        #[arg(short, long)]
        parent: Option<String>,
    },
    /// Remove a defined mediated device, keeping its definition.
    Stop { uuid: String },
    /// List mediated devices: UUID, parent, type, state.
    List {
        /// Persistent definitions instead (gpuvirt's and mdevctl's), with start mode and owner.
        #[arg(long)]
        defined: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print definitions as mdevctl JSON, with no trailing newline (the bytes of mdevctl's
    /// files): one device's file contents, or every definition (and every active device
    /// without one) as `mdevctl list --dumpjson` prints them (`[]` when there are none). A
    /// UUID defined under several parents prints that document, holding each.
    Export {
        /// mdevctl's format (`mdevctl define --jsonfile` reads it); the only format.
        #[arg(long, required = true)]
        mdevctl: bool,
        /// One device (default: all).
        uuid: Option<String>,
        /// Only the definitions under this parent.
        #[arg(short, long)]
        parent: Option<String>,
    },
    /// Define mediated devices from mdevctl JSON (like `mdevctl define --jsonfile`), all or
    /// none; they are gpuvirt's definitions from then on. `[]` is nothing to do.
    Import {
        /// mdevctl's format; the only format.
        #[arg(long, required = true)]
        mdevctl: bool,
        /// A definition file (`/etc/mdevctl.d/PARENT/UUID`) or `mdevctl list --dumpjson`
        /// output; `-` reads standard input.
        file: String,
        /// The parent of a single definition (default: the file's directory name).
        #[arg(long)]
        parent: Option<String>,
        /// The UUID of a single definition (default: the file's name).
        #[arg(long)]
        uuid: Option<String>,
    },
}

pub async fn run(ctx: &Ctx<'_>, command: MdevCommand) -> Result<(), CliError> {
    match command {
        MdevCommand::Create {
            parent,
            mdev_type,
            uuid,
        } => {
            // One trip: CreateMdev on the path the parent's object must have; the whole tree
            // is read (to find it by name, or to say it is none) only when nothing is there.
            let (mdev_type, uuid) = (mdev_type.as_str(), uuid.as_deref().unwrap_or(""));
            let call = |at: OwnedObjectPath| async move {
                ctx.shard_parent(at.as_str())
                    .await?
                    .create_mdev(mdev_type, uuid, options(&[]))
                    .await
                    .map_err(|e| ctx.api_error(e))
            };
            let lookup = async {
                let host = ctx.host().await?;
                find_parent(&host, &parent)
            };
            let path = ctx.call_at(parent_paths(&parent), lookup, call).await?;
            // The reply names the new mdev's object, and its path names its UUID.
            let created = match api::uuid_from_mdev_path(path.as_str()) {
                Some(u) => u.hyphenated().to_string(),
                None => ctx.mdev_uuid(path.as_str()).await?,
            };
            outln!("{created}")?;
            Ok(())
        }
        MdevCommand::Remove { uuid, force } => {
            let call = |at: OwnedObjectPath| async move {
                let opts = options(&[("force", force.then_some(true))]);
                ctx.mdev(at.as_str())
                    .await?
                    .remove(opts)
                    .await
                    .map_err(|e| ctx.api_error(e))
            };
            ctx.call_at(api::mdev_path_for(&uuid), ctx.mdev_by_uuid(&uuid), call)
                .await
        }
        MdevCommand::Define {
            parent,
            mdev_type,
            uuid,
            auto: _,
            manual,
        } => {
            // The daemon's default is auto; only --manual needs saying.
            let opts = options(&[("auto", manual.then_some(false))]);
            let defined = ctx
                .manager()
                .await?
                .define_mdev(&parent, &mdev_type, uuid.as_deref().unwrap_or(""), opts)
                .await
                .map_err(|e| ctx.api_error(e))?;
            outln!("{defined}")?;
            Ok(())
        }
        MdevCommand::Undefine { uuid, parent } => ctx
            .manager()
            .await?
            .undefine_mdev(&uuid, parent_option(parent.as_deref()))
            .await
            .map_err(|e| ctx.api_error(e)),
        MdevCommand::Start { uuid, parent } => {
            let _path = ctx
                .manager()
                .await?
                .start_mdev(&uuid, parent_option(parent.as_deref()))
                .await
                .map_err(|e| ctx.api_error(e))?;
            Ok(())
        }
        MdevCommand::Stop { uuid } => ctx
            .manager()
            .await?
            .stop_mdev(&uuid, options(&[]))
            .await
            .map_err(|e| ctx.api_error(e)),
        MdevCommand::List { defined, json } => {
            if defined {
                return list_defined(ctx, json).await;
            }
            // Only the mdevs, as typed rows (see view::fetch_mdevs), sorted.
            let mdevs = ctx.mdevs().await?;
            if json {
                return print_json(&mdevs);
            }
            let mut rows = vec![["UUID", "PARENT", "TYPE", "STATE"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()];
            for m in mdevs {
                rows.push(vec![
                    m.uuid.clone(),
                    m.parent.clone(),
                    m.type_id.clone(),
                    if m.active { "active" } else { "inactive" }.to_owned(),
                ]);
            }
            print_table(&rows)?;
            Ok(())
        }
        MdevCommand::Export {
            mdevctl: _,
            uuid,
            parent,
        } => export(ctx, uuid.as_deref(), parent.as_deref()).await,
        MdevCommand::Import {
            mdevctl: _,
            file,
            parent,
            uuid,
        } => import(ctx, &file, parent.as_deref(), uuid.as_deref()).await,
    }
}

async fn definitions(ctx: &Ctx<'_>) -> Result<Vec<api::MdevDefinition>, CliError> {
    let wire = ctx
        .manager()
        .await?
        .list_mdev_definitions(options(&[]))
        .await
        .map_err(|e| ctx.api_error(e))?;
    Ok(wire.into_iter().map(api::MdevDefinition::from).collect())
}

async fn list_defined(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let defs = definitions(ctx).await?;
    if json {
        return print_json(&defs);
    }
    let mut rows = vec![["UUID", "PARENT", "TYPE", "START", "OWNER", "STATE"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>()];
    for d in defs {
        rows.push(vec![
            d.uuid,
            d.parent,
            d.type_id,
            d.start,
            d.owner,
            if d.active { "active" } else { "inactive" }.to_owned(),
        ]);
    }
    print_table(&rows)?;
    Ok(())
}

/// The `parent` option of StartMdev and UndefineMdev (a string), when given.
fn parent_option(
    parent: Option<&str>,
) -> std::collections::HashMap<&'static str, zbus::zvariant::Value<'_>> {
    let mut opts = options(&[]);
    if let Some(p) = parent {
        opts.insert("parent", zbus::zvariant::Value::from(p));
    }
    opts
}

/// Definitions as they are (start mode and attrs included), one per UUID and parent
/// (gpuvirt's before mdevctl's), then active devices nobody defined, as mdevctl shows a
/// transient device: started manually, no attrs. Printed as mdevctl writes its files: no
/// trailing newline (mdevctl 1.2 and 1.3 print one more, see docs/cli.md).
async fn export(ctx: &Ctx<'_>, uuid: Option<&str>, parent: Option<&str>) -> Result<(), CliError> {
    let wanted = match uuid {
        Some(u) => Some(
            u.parse::<Uuid>()
                .map_err(|_| CliError::Daemon(format!("{u:?} is not a UUID")))?,
        ),
        None => None,
    };
    let malformed = || CliError::Daemon("gpuvirtd sent a malformed definition".to_owned());
    let mut configs: Vec<MdevctlConfig> = Vec::new();
    let mut defs = definitions(ctx).await?;
    // gpuvirt's own first, so it wins a UUID and parent mdevctl also has a file for.
    defs.sort_by_key(|d| d.owner != "gpuvirt");
    let same = |a: &MdevctlConfig, b: &MdevctlConfig| a.uuid == b.uuid && a.parent == b.parent;
    for d in &defs {
        let c = d.to_mdevctl().ok_or_else(malformed)?;
        if !configs.iter().any(|k| same(k, &c)) {
            configs.push(c);
        }
    }
    let host = ctx.host().await?;
    for m in &host.mdevs {
        let Ok(u) = m.uuid.parse::<Uuid>() else {
            continue;
        };
        if !configs.iter().any(|k| k.uuid == u) {
            configs.push(MdevctlConfig {
                uuid: u,
                parent: m.parent.clone(),
                mdev_type: m.type_id.clone(),
                start: MdevStart::Manual,
                attrs: Vec::new(),
            });
        }
    }
    configs.retain(|c| wanted.is_none_or(|u| c.uuid == u) && parent.is_none_or(|p| c.parent == p));
    if let Some(u) = wanted {
        // As `mdevctl list --dumpjson -u`: one definition alone, as in its file; several (one
        // UUID under several parents) as the whole document.
        match configs.as_slice() {
            [] => {
                return Err(CliError::Daemon(format!(
                    "no mdev {u} is defined or active{}; `gpuvirtctl mdev list --defined` lists definitions",
                    parent.map(|p| format!(" under {p}")).unwrap_or_default()
                )))
            }
            [one] => {
                out!("{}", one.to_json())?;
                return Ok(());
            }
            _ => {}
        }
    }
    out!("{}", mdevctl::dump_json(&configs))?;
    Ok(())
}

/// Reads `file` and has the daemon define what it holds, all or none (the daemon checks the
/// whole document again before it records anything); prints each UUID defined. `[]` is
/// nothing to do.
async fn import(
    ctx: &Ctx<'_>,
    file: &str,
    parent: Option<&str>,
    uuid: Option<&str>,
) -> Result<(), CliError> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| CliError::Daemon(format!("cannot read {file}: {e}")))?;
    let path = std::path::Path::new(file);
    let parsed_uuid = match uuid {
        Some(u) => Some(
            u.parse::<Uuid>()
                .map_err(|_| CliError::Daemon(format!("{u:?} is not a UUID")))?,
        ),
        None => None,
    };
    if file == "-" && !mdevctl::is_dumpjson(&text) && (parent.is_none() || parsed_uuid.is_none()) {
        return Err(CliError::Daemon(
            "standard input holds one definition, which names neither its parent nor its UUID; \
             give --parent and --uuid"
                .to_owned(),
        ));
    }
    // Checked here first, so that errors name the file; the daemon checks again.
    let configs = mdevctl::parse_import(path, &text, parent, parsed_uuid).map_err(|e| match e {
        mdevctl::MdevctlError::BadFileName { .. } => CliError::Daemon(format!(
            "{e}; give --uuid (and --parent) to import it from a file named otherwise"
        )),
        mdevctl::MdevctlError::Unnamed { missing, .. } => {
            CliError::Daemon(format!("{e} (--{})", missing.to_lowercase()))
        }
        e => CliError::Daemon(e.to_string()),
    })?;
    let (parent, uuid) = if mdevctl::is_dumpjson(&text) {
        if configs.is_empty() && (parent.is_some() || uuid.is_some()) {
            let all = mdevctl::parse_document(path, &text, None, None)
                .map_err(|e| CliError::Daemon(e.to_string()))?;
            if !all.is_empty() {
                return Err(CliError::Daemon(format!(
                    "{file} holds no definition for the given parent and UUID"
                )));
            }
        }
        (
            parent.unwrap_or("").to_owned(),
            uuid.unwrap_or("").to_owned(),
        )
    } else {
        // One definition: parent and UUID as its path or the options named them.
        let c = configs
            .first()
            .ok_or_else(|| CliError::Daemon(format!("{file} holds no definition")))?;
        (c.parent.clone(), c.uuid.hyphenated().to_string())
    };
    let defined = ctx
        .manager()
        .await?
        .import_mdev_definition(&parent, &uuid, &text, options(&[]))
        .await
        .map_err(|e| ctx.api_error(e))?;
    for line in defined.lines() {
        outln!("{line}")?;
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
