//! `gpuvirtctl mdevs`: every mediated device, one line each. May import: crate::client,
//! crate::errors, crate::table.

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{or_dash, print_table, row, yes_no};

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let mdevs = ctx.mdevs().await?;
    if json {
        return print_json(&mdevs);
    }
    let mut rows = vec![row([
        "UUID", "PARENT", "TYPE", "NAME", "DRIVER", "GROUP", "ACTIVE",
    ])];
    for m in &mdevs {
        rows.push(vec![
            m.uuid.clone(),
            m.parent.clone(),
            m.type_id.clone(),
            or_dash(&m.type_name),
            or_dash(&m.driver),
            m.iommu_group.map(|g| g.to_string()).unwrap_or("-".into()),
            yes_no(m.active).to_owned(),
        ]);
    }
    print_table(&rows)
}
