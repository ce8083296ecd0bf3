//! `gpuvirtctl show ADDRESS|UUID`: everything about one GPU or one vGPU. May import:
//! crate::client, crate::errors, crate::table, crate::view.

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::{or_dash, print_table, row, yes_no};
use crate::view::{GpuView, Host};

pub async fn run(ctx: &Ctx<'_>, address: &str, json: bool) -> Result<(), CliError> {
    if address.contains('-') {
        // A UUID: the mdev of that UUID (addresses never contain '-').
        return show_mdev(ctx, address, json).await;
    }
    let path = ctx.gpu_by_address(address).await?;
    let host = ctx.host().await?;
    let Some(gpu) = host.gpus.iter().find(|g| g.path == path.as_str()) else {
        return Err(CliError::Daemon(format!("{address} disappeared")));
    };
    if json {
        print_json(gpu)
    } else {
        print_show(gpu, &host)
    }
}

async fn show_mdev(ctx: &Ctx<'_>, uuid: &str, json: bool) -> Result<(), CliError> {
    let path = ctx.mdev_by_uuid(uuid).await?;
    let host = ctx.host().await?;
    let Some(mdev) = host.mdevs.iter().find(|m| m.path == path.as_str()) else {
        return Err(CliError::Daemon(format!("{uuid} disappeared")));
    };
    if json {
        return print_json(mdev);
    }
    print_table(&[
        row(["UUID:", &mdev.uuid]),
        row(["Object:", &mdev.path]),
        row(["Parent:", &mdev.parent]),
        row(["Type:", &mdev.type_id]),
        row(["Type name:", &or_dash(&mdev.type_name)]),
        row(["Active:", yes_no(mdev.active)]),
        row(["Driver:", &or_dash(&mdev.driver)]),
        row([
            "IOMMU group:",
            &mdev.iommu_group.map_or("-".to_owned(), |g| g.to_string()),
        ]),
    ])
}

fn print_show(g: &GpuView, host: &Host) -> Result<(), CliError> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut kv = |k: &str, v: String| rows.push(vec![format!("{k}:"), v]);
    kv("Address", g.pci_address.clone());
    kv("Object", g.path.clone());
    kv(
        "Vendor",
        format!("{} [{}]", or_dash(&g.vendor_name), g.vendor_id),
    );
    kv(
        "Device",
        format!("{} [{}]", or_dash(&g.product_name), g.device_id),
    );
    kv(
        "Subsystem",
        format!(
            "{} [{}:{}]",
            or_dash(&g.subsystem_name),
            g.subsystem_vendor_id,
            g.subsystem_device_id
        ),
    );
    kv("Class", g.class_code.clone());
    kv("Driver", or_dash(&g.driver));
    kv("Driver override", or_dash(&g.driver_override));
    kv("Kernel modules", or_dash(&g.kernel_modules.join(", ")));
    kv("State", g.state.clone());
    kv("Boot VGA", yes_no(g.boot_vga).to_owned());
    kv("NUMA node", g.numa_node.to_string());
    kv("Reset methods", or_dash(&g.reset_methods.join(" ")));
    kv("Companions", or_dash(&g.companions.join(", ")));
    if let Some(d) = &g.drm {
        // The stable udev name beside the minor, which can change between boots.
        let node = |path: &str, by_path: &str| match (path, by_path) {
            ("", _) => "-".to_owned(),
            (p, "") => p.to_owned(),
            (p, b) => format!("{p} ({b})"),
        };
        kv("DRM card", node(&d.card, &d.card_by_path));
        kv(
            "DRM render node",
            node(&d.render_node, &d.render_node_by_path),
        );
    }
    if !g.physical_function.is_empty() {
        kv("Physical function", g.physical_function.clone());
    }
    if g.sriov_total_vfs > 0 {
        kv(
            "SR-IOV",
            format!("{} of {} VFs enabled", g.sriov_num_vfs, g.sriov_total_vfs),
        );
    }
    match g
        .iommu_group
        .and_then(|id| host.groups.iter().find(|x| x.id == id))
    {
        Some(group) => {
            kv(
                "IOMMU group",
                format!(
                    "{} ({})",
                    group.id,
                    if group.viable { "viable" } else { "not viable" }
                ),
            );
            for m in &group.members {
                kv(
                    "  member",
                    format!("{} {} {}", m.name, or_dash(&m.class), or_dash(&m.driver)),
                );
            }
            for p in &group.viability_problems {
                kv("  problem", p.clone());
            }
        }
        None => kv(
            "IOMMU group",
            g.iommu_group
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
    }
    if let Some(s) = &g.shard {
        kv("Shard backend", s.backend.clone());
        for t in &s.types {
            kv(
                "  type",
                format!(
                    "{} {} (available {})",
                    t.id,
                    or_dash(&t.name),
                    t.available_instances
                ),
            );
        }
        for c in &s.children {
            kv("  child", c.clone());
        }
    }
    print_table(&rows)
}
