//! `gpuvirtctl groups`: the IOMMU groups gpuvirt can act on, their members and viability.
//! May import: crate::client, crate::errors, crate::table.

use gpuvirt_api as api;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{or_dash, print_table, row, yes_no};

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let host = ctx.objects(&[api::IOMMU_GROUP_INTERFACE]).await?;
    if json {
        return print_json(&host.groups);
    }
    let mut rows = vec![row(["GROUP", "VIABLE", "MEMBER", "CLASS", "DRIVER"])];
    for g in &host.groups {
        for (i, m) in g.members.iter().enumerate() {
            let (id, viable) = if i == 0 {
                (g.id.to_string(), yes_no(g.viable).to_owned())
            } else {
                (String::new(), String::new())
            };
            rows.push(vec![
                id,
                viable,
                m.name.clone(),
                m.class.clone(),
                or_dash(&m.driver),
            ]);
        }
    }
    print_table(&rows)?;
    for g in host
        .groups
        .iter()
        .filter(|g| !g.viability_problems.is_empty())
    {
        // Each problem names its group ("... shares IOMMU group 12 and ...").
        for p in &g.viability_problems {
            outln!("{p}")?;
        }
    }
    Ok(())
}
