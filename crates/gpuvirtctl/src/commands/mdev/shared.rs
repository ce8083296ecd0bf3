//! What several `mdev` verbs need: the definitions as mdevctl holds them (one per UUID and
//! parent, gpuvirt's before mdevctl's), UUID arguments, the `parent` option, reading a file
//! named on the command line. May import: crate::client, crate::errors.

use std::collections::HashMap;

use gpuvirt_api as api;
use gpuvirt_api::mdevctl::MdevctlConfig;
use gpuvirt_api::Uuid;
use zbus::zvariant::Value;

use crate::client::{options, Ctx};
use crate::errors::CliError;

/// Every definition gpuvirtd reports (`Manager.ListMdevDefinitions`), sorted by parent and
/// UUID.
pub async fn definitions(ctx: &Ctx<'_>) -> Result<Vec<api::MdevDefinition>, CliError> {
    let wire = ctx
        .manager()
        .await?
        .list_mdev_definitions(options(&[]))
        .await
        .map_err(|e| ctx.api_error(e))?;
    Ok(wire.into_iter().map(api::MdevDefinition::from).collect())
}

/// One definition per UUID and parent, as mdevctl sees `/etc/mdevctl.d`: gpuvirt's own
/// first, so it wins a UUID and parent mdevctl also has a file for. In `defs`' order
/// otherwise (sorted by parent and UUID).
pub fn configs_of(defs: &[api::MdevDefinition]) -> Result<Vec<MdevctlConfig>, CliError> {
    let malformed = || CliError::Daemon("gpuvirtd sent a malformed definition".to_owned());
    let mut ordered: Vec<&api::MdevDefinition> = defs.iter().collect();
    ordered.sort_by_key(|d| d.owner != "gpuvirt");
    let mut configs: Vec<MdevctlConfig> = Vec::new();
    for d in ordered {
        let c = d.to_mdevctl().ok_or_else(malformed)?;
        if !configs
            .iter()
            .any(|k| k.uuid == c.uuid && k.parent == c.parent)
        {
            configs.push(c);
        }
    }
    configs.sort_by(|a, b| (&a.parent, a.uuid).cmp(&(&b.parent, b.uuid)));
    Ok(configs)
}

/// A UUID argument, refused by the client when it is not one.
pub fn parse_uuid(text: &str) -> Result<Uuid, CliError> {
    text.parse::<Uuid>()
        .map_err(|_| CliError::Daemon(format!("{text:?} is not a UUID")))
}

/// The `parent` option of StartMdev and UndefineMdev (a string), when given.
pub fn parent_option(parent: Option<&str>) -> HashMap<&'static str, Value<'_>> {
    let mut opts = options(&[]);
    if let Some(p) = parent {
        opts.insert("parent", Value::from(p));
    }
    opts
}

/// The text of `file` (`-` is standard input), or an error naming it.
pub fn read_text(file: &str) -> Result<String, CliError> {
    if file == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| CliError::Daemon(format!("cannot read {file}: {e}")))
}

/// The one value of an argument mdevctl names by a flag and gpuvirtctl also takes in its
/// place (`define P T`, `start UUID`); clap refuses both at once.
pub fn either(flag: Option<String>, positional: Option<String>) -> Option<String> {
    flag.or(positional)
}
