//! `gpuvirtctl types`: the vGPU/mdev types every shardable device offers. May import:
//! crate::client, crate::errors, crate::table, crate::view.

use gpuvirt_api as api;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{or_dash, print_table, row};
use crate::view::ShardView;

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let host = ctx
        .objects(&[api::GPU_INTERFACE, api::SHARD_PARENT_INTERFACE])
        .await?;
    let parents: Vec<&ShardView> = host
        .gpus
        .iter()
        .filter_map(|g| g.shard.as_ref())
        .chain(host.other_parents.iter())
        .collect();
    if json {
        return print_json(&parents);
    }
    let mut rows = vec![row([
        "PARENT",
        "BACKEND",
        "TYPE",
        "NAME",
        "AVAILABLE",
        "API",
        "DESCRIPTION",
    ])];
    for p in parents {
        for t in &p.types {
            rows.push(vec![
                p.name.clone(),
                p.backend.clone(),
                t.id.clone(),
                t.name.clone(),
                t.available_instances.to_string(),
                or_dash(&t.device_api),
                or_dash(&t.description),
            ]);
        }
    }
    print_table(&rows)
}
