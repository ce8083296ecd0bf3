//! `gpuvirtctl list`: one line per GPU (address, ids, driver, state, IOMMU group, sharding).
//! May import: crate::client, crate::errors, crate::table, crate::view.

use gpuvirt_api as api;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{or_dash, print_table, row};
use crate::view::Host;

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    // Only the GPU objects: `list` needs nothing else, and on big hosts the mdevs and groups
    // are most of the tree.
    let host = ctx.objects(&[api::GPU_INTERFACE]).await?;
    if json {
        print_json(&host.gpus)
    } else {
        print_list(&host)
    }
}

fn print_list(host: &Host) -> Result<(), CliError> {
    let mut rows = vec![row([
        "ADDRESS", "IDS", "DRIVER", "STATE", "GROUP", "SHARD", "NAME",
    ])];
    for g in &host.gpus {
        let shard = g
            .shard
            .as_ref()
            .map(|s| {
                format!(
                    "{} ({} types, {} children)",
                    s.backend,
                    s.types.len(),
                    s.children.len()
                )
            })
            .unwrap_or_else(|| "-".to_owned());
        let name = match (g.vendor_name.as_str(), g.product_name.as_str()) {
            ("", "") => "-".to_owned(),
            (v, "") => v.to_owned(),
            (_, p) => p.to_owned(),
        };
        rows.push(vec![
            g.pci_address.clone(),
            format!("{}:{}", g.vendor_id, g.device_id),
            or_dash(&g.driver),
            g.state.clone(),
            g.iommu_group.map(|i| i.to_string()).unwrap_or("-".into()),
            shard,
            name,
        ]);
    }
    print_table(&rows)
}
