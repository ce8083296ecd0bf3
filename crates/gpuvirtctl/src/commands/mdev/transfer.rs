//! `gpuvirtctl mdev export|import --mdevctl`: definitions out as mdevctl's bytes (one file's
//! contents or the `list --dumpjson` document) and in from either, all or none
//! (Manager.ImportMdevDefinition). May import: crate::client, crate::errors, mdev/shared.rs.

use gpuvirt_api::mdevctl::{self, MdevctlConfig};
use gpuvirt_api::{MdevStart, Uuid};

use super::shared::{configs_of, definitions, parse_uuid, read_text};
use crate::client::{options, Ctx};
use crate::errors::CliError;

/// Definitions as they are (start mode and attrs included), one per UUID and parent
/// (gpuvirt's before mdevctl's), then active devices nobody defined, as mdevctl shows a
/// transient device: started manually, no attrs. Printed as mdevctl writes its files: no
/// trailing newline (mdevctl 1.2 and 1.3 print one more, see docs/cli.md).
pub async fn export(
    ctx: &Ctx<'_>,
    uuid: Option<&str>,
    parent: Option<&str>,
) -> Result<(), CliError> {
    let wanted = uuid.map(parse_uuid).transpose()?;
    let mut configs = configs_of(&definitions(ctx).await?)?;
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
pub async fn import(
    ctx: &Ctx<'_>,
    file: &str,
    parent: Option<&str>,
    uuid: Option<&str>,
) -> Result<(), CliError> {
    let text = read_text(file)?;
    let path = std::path::Path::new(file);
    let parsed_uuid = uuid.map(parse_uuid).transpose()?;
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
