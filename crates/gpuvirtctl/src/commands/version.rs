//! `gpuvirtctl version`: this client's version and the running gpuvirtd's. May import:
//! crate::client, crate::errors, crate::table.

use gpuvirt_api as api;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{print_table, row};

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let client = env!("CARGO_PKG_VERSION");
    let daemon = api::ManagerProxy::new(ctx.connection)
        .await
        .map_err(|e| ctx.error(e))?
        .version()
        .await
        .map_err(|e| ctx.error(e))?;
    if json {
        print_json(&serde_json::json!({ "client": client, "daemon": daemon }))
    } else {
        print_table(&[row(["client:", client]), row(["daemon:", &daemon])])
    }
}
