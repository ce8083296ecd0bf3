//! Renders a [`Snapshot`] as Prometheus text exposition format 0.0.4. May import:
//! crate::snapshot, gpuvirt_api (property structs).
//!
//! Why a small own writer instead of a client library: the output must be 0.0.4 for both
//! consumers. node_exporter's textfile collector and promtool 2.42 parse only 0.0.4 (an
//! OpenMetrics `info` family gives `node_textfile_scrape_error 1`; see fleet-notes (b)1), and
//! Prometheus accepts 0.0.4 over HTTP too. The official `prometheus-client` crate encodes only
//! OpenMetrics, and tikv `prometheus` would pull a registry whose metrics we would rebuild from
//! the cache on every change anyway. Everything here is a gauge (`*_info` gauges are 1), except
//! the exporter's own `*_total` counters, which go to HTTP only. The format is small: one
//! `# HELP`/`# TYPE` per family, label values escaped (`\\`, `\"`, `\n`), newline-terminated.
//!
//! Labels are bounded: PCI addresses, ids, enumerations, UUIDs and type ids/names. No free text
//! (messages, reasons, policy errors) goes into a label; those are counted instead. The product
//! name from pci.ids is left out of `gpuvirt_gpu_info` on purpose: it changes with a hwdata
//! update (which would start a new series for the same card) and `vendor_id`/`device_id`
//! identify the model exactly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use gpuvirt_api::ObjectInterfaces;

use crate::snapshot::{DaemonState, ExporterCounters, Snapshot};

/// One metric family being written: its samples follow its `# HELP`/`# TYPE` header.
struct Family<'o> {
    out: &'o mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

fn family<'o>(out: &'o mut String, name: &'static str, kind: &str, help: &str) -> Family<'o> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

fn gauge<'o>(out: &'o mut String, name: &'static str, help: &str) -> Family<'o> {
    family(out, name, "gauge", help)
}

/// A label value as 0.0.4 wants it: backslash, double quote and newline escaped.
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The text for a scrape or the textfile. `counters`: the exporter's own counters, `None` for
/// the textfile (gauges only there).
pub fn render(snapshot: &Snapshot, counters: Option<ExporterCounters>) -> String {
    let mut out = String::with_capacity(4096);
    gauge(
        &mut out,
        "gpuvirt_up",
        "Whether gpuvirtd answered the exporter's last read (1) or is gone (0).",
    )
    .sample(&[], flag(snapshot.daemon.is_some()));
    if let Some(daemon) = &snapshot.daemon {
        render_daemon(&mut out, daemon);
    }
    if let Some(c) = counters {
        family(
            &mut out,
            "gpuvirt_exporter_scrapes_total",
            "counter",
            "HTTP scrapes of /metrics answered.",
        )
        .sample(&[], c.scrapes as f64);
        family(
            &mut out,
            "gpuvirt_exporter_refreshes_total",
            "counter",
            "Reads of gpuvirtd's state into the exporter's cache.",
        )
        .sample(&[], c.refreshes as f64);
        family(
            &mut out,
            "gpuvirt_exporter_refresh_failures_total",
            "counter",
            "Reads of gpuvirtd's state that failed (daemon gone or erroring).",
        )
        .sample(&[], c.refresh_failures as f64);
    }
    out
}

fn render_daemon(out: &mut String, d: &DaemonState) {
    let m = &d.manager;
    gauge(
        out,
        "gpuvirt_build_info",
        "gpuvirtd's version and the host kernel; always 1.",
    )
    .sample(
        &[
            ("version", &m.version),
            ("kernel_release", &m.kernel_release),
        ],
        1.0,
    );
    gauge(
        out,
        "gpuvirt_iommu_enabled",
        "Whether the IOMMU is on (Manager.IommuEnabled).",
    )
    .sample(&[], flag(m.iommu_enabled));
    gauge(
        out,
        "gpuvirt_vfio_available",
        "Whether vfio-pci is available.",
    )
    .sample(&[], flag(m.vfio_available));
    gauge(
        out,
        "gpuvirt_mdev_available",
        "Whether the mdev framework is available.",
    )
    .sample(&[], flag(m.mdev_available));
    gauge(
        out,
        "gpuvirt_reboot_required",
        "Whether applying the policy needs a reboot.",
    )
    .sample(&[], flag(m.reboot_required));
    gauge(
        out,
        "gpuvirt_reboot_reasons",
        "How many reasons gpuvirtd gives for a reboot.",
    )
    .sample(&[], m.reboot_reasons.len() as f64);
    gauge(
        out,
        "gpuvirt_policy_valid",
        "Whether the device policy loaded without error.",
    )
    .sample(&[], flag(m.policy_error.is_empty()));
    gauge(
        out,
        "gpuvirt_policy_drift_items",
        "How many ways the host differs from the policy.",
    )
    .sample(&[], m.drift.len() as f64);
    gauge(
        out,
        "gpuvirt_policy_applied",
        "Whether the policy was applied since gpuvirtd started (Manager.LastApply is set).",
    )
    .sample(&[], flag(!m.last_apply.is_empty()));
    gauge(
        out,
        "gpuvirt_enforcement_mode_info",
        "The policy's enforcement mode; always 1.",
    )
    .sample(&[("mode", &m.enforcement_mode)], 1.0);
    gauge(
        out,
        "gpuvirt_scan_warnings",
        "How many warnings the last inventory scan gave.",
    )
    .sample(&[], m.scan_warnings.len() as f64);
    render_gpus(out, d);
    render_groups(out, d);
    render_parents(out, d);
    render_mdevs(out, d);
}

fn objects<'d, T>(
    d: &'d DaemonState,
    pick: impl Fn(&'d ObjectInterfaces) -> Option<&'d T>,
) -> Vec<&'d T> {
    d.objects.0.iter().filter_map(|(_, i)| pick(i)).collect()
}

fn render_gpus(out: &mut String, d: &DaemonState) {
    let gpus = objects(d, |i| i.gpu.as_deref());
    // Driver of every device an exported IOMMU group lists (companions are group members).
    let member_driver: HashMap<&str, &str> = objects(d, |i| i.iommu_group.as_deref())
        .into_iter()
        .flat_map(|g| {
            g.members
                .iter()
                .map(|(n, _, drv)| (n.as_str(), drv.as_str()))
        })
        .collect();
    let group_viable: HashMap<&str, bool> = d
        .objects
        .0
        .iter()
        .filter_map(|(p, i)| i.iommu_group.as_deref().map(|g| (p.as_str(), g.viable)))
        .collect();
    let mut f = gauge(
        out,
        "gpuvirt_gpu_info",
        "A GPU gpuvirt sees, with its identity and state; always 1.",
    );
    for g in &gpus {
        f.sample(
            &[
                ("pci", &g.pci_address),
                ("vendor_id", &format!("{:04x}", g.vendor_id)),
                ("device_id", &format!("{:04x}", g.device_id)),
                ("driver", &g.driver),
                ("role", &g.role),
                ("state", &g.state),
                ("numa_node", &g.numa_node.to_string()),
            ],
            1.0,
        );
    }
    let mut f = gauge(
        out,
        "gpuvirt_gpu_passthrough_ready",
        "Whether the GPU and all its slot functions are on vfio-pci and its IOMMU group is viable.",
    );
    for g in &gpus {
        let companions_on_vfio = g
            .companions
            .iter()
            .all(|c| member_driver.get(c.as_str()) == Some(&"vfio-pci"));
        let viable = group_viable
            .get(g.iommu_group.as_str())
            .copied()
            .unwrap_or(false);
        f.sample(
            &[("pci", &g.pci_address)],
            flag(g.driver == "vfio-pci" && companions_on_vfio && viable),
        );
    }
    let sriov: Vec<_> = gpus.iter().filter(|g| g.sriov_total_vfs > 0).collect();
    let mut f = gauge(
        out,
        "gpuvirt_sriov_vfs",
        "SR-IOV virtual functions enabled on the GPU.",
    );
    for g in &sriov {
        f.sample(&[("pci", &g.pci_address)], g.sriov_num_vfs as f64);
    }
    let mut f = gauge(
        out,
        "gpuvirt_sriov_total_vfs",
        "SR-IOV virtual functions the GPU supports.",
    );
    for g in &sriov {
        f.sample(&[("pci", &g.pci_address)], g.sriov_total_vfs as f64);
    }
}

fn render_groups(out: &mut String, d: &DaemonState) {
    let groups = objects(d, |i| i.iommu_group.as_deref());
    let mut f = gauge(
        out,
        "gpuvirt_iommu_group_viable",
        "Whether the IOMMU group can go to a VM as a whole.",
    );
    for g in &groups {
        f.sample(&[("group", &g.id.to_string())], flag(g.viable));
    }
    let mut f = gauge(
        out,
        "gpuvirt_iommu_group_members",
        "Devices in the IOMMU group.",
    );
    for g in &groups {
        f.sample(&[("group", &g.id.to_string())], g.members.len() as f64);
    }
}

fn render_parents(out: &mut String, d: &DaemonState) {
    // (parent, type id) → existing mdevs, from ListMdevs rows: (_, _, _, parent name, type, ..).
    let mut instances: HashMap<(&str, &str), u32> = HashMap::new();
    for row in &d.mdevs {
        *instances
            .entry((row.3.as_str(), row.4.as_str()))
            .or_default() += 1;
    }
    // Sorted by parent, then type id, so the output is stable.
    let mut rows: BTreeMap<(&str, &str), (&str, u32)> = BTreeMap::new();
    for p in objects(d, |i| i.shard_parent.as_deref()) {
        for (type_id, (name, _, _, available)) in &p.types {
            rows.insert(
                (p.name.as_str(), type_id.as_str()),
                (name.as_str(), *available),
            );
        }
    }
    let mut f = gauge(
        out,
        "gpuvirt_mdev_type_available_instances",
        "How many more vGPUs of the type the parent can create now.",
    );
    for ((parent, type_id), (name, available)) in &rows {
        f.sample(
            &[("parent", parent), ("type", type_id), ("type_name", name)],
            *available as f64,
        );
    }
    let mut f = gauge(
        out,
        "gpuvirt_mdev_type_instances",
        "vGPUs of the type that exist on the parent.",
    );
    for ((parent, type_id), (name, _)) in &rows {
        let n = instances.get(&(*parent, *type_id)).copied().unwrap_or(0);
        f.sample(
            &[("parent", parent), ("type", type_id), ("type_name", name)],
            n as f64,
        );
    }
}

fn render_mdevs(out: &mut String, d: &DaemonState) {
    let mut rows: Vec<_> = d.mdevs.iter().collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    let mut f = gauge(
        out,
        "gpuvirt_mdev_info",
        "A vGPU (mdev) that exists; always 1.",
    );
    for (_, uuid, _, parent, type_id, _, active, driver, group) in rows {
        f.sample(
            &[
                ("uuid", uuid),
                ("parent", parent),
                ("type", type_id),
                ("active", if *active { "true" } else { "false" }),
                ("driver", driver),
                ("iommu_group", &group.to_string()),
            ],
            1.0,
        );
    }
}
