//! `gpuvirtctl mdev ...`: mediated devices the mdevctl way (create/remove transient ones,
//! define/undefine/start/stop persistent ones, list, export as mdevctl JSON), through
//! ShardParent.CreateMdev, Mdev.Remove and Manager.Define/Undefine/Start/StopMdev.

use gpuvirt_api as api;
use zbus::zvariant::OwnedObjectPath;

use crate::errors::{classify_api, CliError};
use crate::mutating::{options, print_json, Ctx};
use crate::table::print_table;
use crate::view::{Host, MdevView};

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
    Undefine { uuid: String },
    /// Create a defined mediated device.
    Start { uuid: String },
    /// Remove a defined mediated device, keeping its definition.
    Stop { uuid: String },
    /// List mediated devices: UUID, parent, type, state.
    List {
        /// Only devices whose definition gpuvirtd knows (not yet served on D-Bus: see the error).
        #[arg(long)]
        defined: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print mediated devices as mdevctl JSON definitions.
    Export {
        /// mdevctl's format (`mdevctl define --jsonfile` reads it); the only format.
        #[arg(long, required = true)]
        mdevctl: bool,
        /// One device (default: every active one).
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
            let host = ctx.host().await?;
            let parent_path = find_parent(&host, &parent)?;
            let opts = options(&[]);
            let path: OwnedObjectPath = ctx
                .call(
                    &parent_path,
                    api::SHARD_PARENT_INTERFACE,
                    "CreateMdev",
                    &(mdev_type.as_str(), uuid.as_deref().unwrap_or(""), opts),
                )
                .await?;
            let created = mdev_uuid(ctx, path.as_str()).await?;
            println!("{created}");
            Ok(())
        }
        MdevCommand::Remove { uuid, force } => {
            let path = mdev_path(ctx, &uuid).await?;
            let opts = options(&[("force", force.then_some(true))]);
            ctx.call_unit(path.as_str(), api::MDEV_INTERFACE, "Remove", &(opts,))
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
            let defined: String = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "DefineMdev",
                    &(
                        parent.as_str(),
                        mdev_type.as_str(),
                        uuid.as_deref().unwrap_or(""),
                        opts,
                    ),
                )
                .await?;
            println!("{defined}");
            Ok(())
        }
        MdevCommand::Undefine { uuid } => manager_unit(ctx, "UndefineMdev", &uuid).await,
        MdevCommand::Start { uuid } => {
            let _path: OwnedObjectPath = ctx
                .call(
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "StartMdev",
                    &(uuid.as_str(), options(&[])),
                )
                .await?;
            Ok(())
        }
        MdevCommand::Stop { uuid } => manager_unit(ctx, "StopMdev", &uuid).await,
        MdevCommand::List { defined, json } => {
            if defined {
                return Err(CliError::Daemon(
                    "gpuvirtd does not serve its mdev definitions on D-Bus yet; \
                     `gpuvirtctl mdev list` shows the active devices"
                        .to_owned(),
                ));
            }
            let host = ctx.host().await?;
            let mut mdevs: Vec<&MdevView> = host.mdevs.iter().collect();
            mdevs.sort_by(|a, b| (&a.parent, &a.uuid).cmp(&(&b.parent, &b.uuid)));
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
            print_table(&rows);
            Ok(())
        }
        MdevCommand::Export { mdevctl: _, uuid } => {
            let host = ctx.host().await?;
            let chosen: Vec<&MdevView> = match &uuid {
                Some(u) => {
                    let path = mdev_path(ctx, u).await?;
                    host.mdevs
                        .iter()
                        .filter(|m| m.path == path.as_str())
                        .collect()
                }
                None => host.mdevs.iter().collect(),
            };
            if uuid.is_some() && chosen.len() == 1 {
                return print_json(&mdevctl_json(chosen[0]));
            }
            // Several: mdevctl's `list --dumpjson` shape, parent → [{uuid: config}].
            let mut by_parent = serde_json::Map::new();
            for m in chosen {
                let entry = serde_json::json!({ m.uuid.clone(): mdevctl_json(m) });
                if let Some(list) = by_parent
                    .entry(m.parent.clone())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                    .as_array_mut()
                {
                    list.push(entry);
                }
            }
            print_json(&serde_json::Value::Array(vec![serde_json::Value::Object(
                by_parent,
            )]))
        }
    }
}

/// An mdev's definition in mdevctl's JSON: derived from the served properties, which hold
/// the type but not the start mode or attributes, so an exported device starts manually.
fn mdevctl_json(m: &MdevView) -> serde_json::Value {
    serde_json::json!({
        "mdev_type": m.type_id,
        "start": "manual",
        "attrs": [],
    })
}

async fn manager_unit(ctx: &Ctx<'_>, method: &str, uuid: &str) -> Result<(), CliError> {
    ctx.call_unit(
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        method,
        &(uuid, options(&[])),
    )
    .await
}

async fn mdev_path(ctx: &Ctx<'_>, uuid: &str) -> Result<OwnedObjectPath, CliError> {
    api::ManagerProxy::new(ctx.connection)
        .await
        .map_err(|e| ctx.error(e))?
        .get_mdev_by_uuid(uuid)
        .await
        .map_err(|e| classify_api(e, ctx.bus))
}

async fn mdev_uuid(ctx: &Ctx<'_>, path: &str) -> Result<String, CliError> {
    let value: zbus::zvariant::OwnedValue = ctx
        .call(
            path,
            "org.freedesktop.DBus.Properties",
            "Get",
            &(api::MDEV_INTERFACE, "Uuid"),
        )
        .await?;
    String::try_from(value).map_err(|e| ctx.error(e.into()))
}

/// The ShardParent object of `parent`: a parent's name, or a GPU's full or short address.
fn find_parent(host: &Host, parent: &str) -> Result<String, CliError> {
    let matches = |name: &str| name == parent || name.strip_prefix("0000:") == Some(parent);
    host.gpus
        .iter()
        .filter_map(|g| g.shard.as_ref())
        .chain(host.other_parents.iter())
        .find(|s| matches(&s.name))
        .map(|s| s.path.clone())
        .ok_or_else(|| {
            CliError::Daemon(format!(
                "{parent} is not a device that offers vGPUs; `gpuvirtctl types` lists those that do"
            ))
        })
}
