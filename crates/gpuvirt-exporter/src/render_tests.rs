//! Tests of the metric rendering against a fake cache: the golden text in tests/golden
//! (regenerate with GPUVIRT_BLESS=1) and label escaping. May import: crate::render,
//! crate::snapshot, gpuvirt_api.

use std::collections::HashMap;
use std::path::PathBuf;

use gpuvirt_api::{
    GpuProps, IommuGroupProps, ManagerProps, ObjectInterfaces, Objects, ShardParentProps,
};
use zbus::zvariant::OwnedObjectPath;

use crate::render::{escape_label_value, render};
use crate::snapshot::{DaemonState, ExporterCounters, Snapshot};

fn path(p: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(p).expect("valid object path")
}

fn gpu(pci: &str, driver: &str, role: &str, group: &str, companions: &[&str]) -> ObjectInterfaces {
    ObjectInterfaces {
        gpu: Some(Box::new(GpuProps {
            pci_address: pci.into(),
            vendor_id: 0x10de,
            device_id: 0x1eb8,
            product_name: "TU104GL [Tesla T4]".into(),
            driver: driver.into(),
            numa_node: 0,
            iommu_group: path(group),
            companions: companions.iter().map(|c| c.to_string()).collect(),
            state: if driver == "vfio-pci" {
                "passthrough"
            } else {
                "host"
            }
            .into(),
            role: role.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn group(id: u32, viable: bool, members: &[(&str, &str)]) -> ObjectInterfaces {
    ObjectInterfaces {
        iommu_group: Some(Box::new(IommuGroupProps {
            id,
            members: members
                .iter()
                .map(|(n, d)| (n.to_string(), 0x030000, d.to_string()))
                .collect(),
            viable,
            viability_problems: if viable {
                vec![]
            } else {
                vec!["shares the group with a \"bridge\"".into()]
            },
        })),
        ..Default::default()
    }
}

fn fake_daemon() -> DaemonState {
    let mut types = HashMap::new();
    types.insert(
        "nvidia-222".to_string(),
        (
            "GRID T4-1Q".to_string(),
            "num_heads=4".to_string(),
            "vfio-pci".to_string(),
            14u32,
        ),
    );
    types.insert(
        "nvidia-223".to_string(),
        (
            "GRID T4-2Q".to_string(),
            String::new(),
            "vfio-pci".to_string(),
            7u32,
        ),
    );
    let mut parent = gpu(
        "0000:41:00.0",
        "nvidia",
        "vgpu",
        "/org/gpuvirt/GpuVirt1/iommu_groups/66",
        &[],
    );
    parent.shard_parent = Some(Box::new(ShardParentProps {
        name: "0000:41:00.0".into(),
        backend: "mdev".into(),
        types,
        children: vec![path("/org/gpuvirt/GpuVirt1/mdevs/0b5a_1")],
    }));
    let objects = Objects(vec![
        (path("/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"), parent),
        (
            path("/org/gpuvirt/GpuVirt1/gpus/0000_42_00_0"),
            gpu(
                "0000:42:00.0",
                "vfio-pci",
                "passthrough",
                "/org/gpuvirt/GpuVirt1/iommu_groups/67",
                &["0000:42:00.1"],
            ),
        ),
        (
            path("/org/gpuvirt/GpuVirt1/gpus/0000_43_00_0"),
            gpu(
                "0000:43:00.0",
                "vfio-pci",
                "passthrough",
                "/org/gpuvirt/GpuVirt1/iommu_groups/68",
                &["0000:43:00.1"],
            ),
        ),
        (
            path("/org/gpuvirt/GpuVirt1/iommu_groups/66"),
            group(66, true, &[("0000:41:00.0", "nvidia")]),
        ),
        (
            path("/org/gpuvirt/GpuVirt1/iommu_groups/67"),
            group(
                67,
                true,
                &[("0000:42:00.0", "vfio-pci"), ("0000:42:00.1", "vfio-pci")],
            ),
        ),
        (
            path("/org/gpuvirt/GpuVirt1/iommu_groups/68"),
            group(
                68,
                false,
                &[
                    ("0000:43:00.0", "vfio-pci"),
                    ("0000:43:00.1", "snd_hda_intel"),
                ],
            ),
        ),
    ]);
    DaemonState {
        manager: ManagerProps {
            version: "0.1.0".into(),
            kernel_release: "6.1.0-28-amd64".into(),
            iommu_enabled: true,
            vfio_available: true,
            mdev_available: true,
            enforcement_mode: "enforce".into(),
            reboot_required: true,
            reboot_reasons: vec!["kernel command line lacks intel_iommu=on".into()],
            drift: vec!["a".into(), "b".into()],
            last_apply: "applied 3 changes".into(),
            ..Default::default()
        },
        objects,
        mdevs: vec![(
            path("/org/gpuvirt/GpuVirt1/mdevs/0b5a_1"),
            "0b5a1c3e-0000-4000-8000-000000000001".into(),
            path("/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"),
            "0000:41:00.0".into(),
            "nvidia-222".into(),
            "GRID T4-1Q".into(),
            true,
            "nvidia-vgpu-vfio".into(),
            12,
        )],
    }
}

fn golden(name: &str, actual: &str) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("GPUVIRT_BLESS").is_some() {
        std::fs::write(&file, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (GPUVIRT_BLESS=1 writes it)", file.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (GPUVIRT_BLESS=1 rewrites it)",
        file.display()
    );
}

#[test]
fn full_host_matches_golden() {
    let snapshot = Snapshot {
        daemon: Some(fake_daemon()),
    };
    let counters = ExporterCounters {
        scrapes: 5,
        refreshes: 3,
        refresh_failures: 1,
    };
    golden("full-host.prom", &render(&snapshot, Some(counters)));
}

#[test]
fn textfile_has_gauges_only() {
    let snapshot = Snapshot {
        daemon: Some(fake_daemon()),
    };
    let text = render(&snapshot, None);
    golden("full-host.textfile.prom", &text);
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        assert!(line.ends_with(" gauge"), "not a gauge: {line}");
    }
}

#[test]
fn daemon_gone_renders_only_up_zero() {
    let text = render(&Snapshot::default(), None);
    assert_eq!(
        text,
        "# HELP gpuvirt_up Whether gpuvirtd answered the exporter's last read (1) or is gone (0).\n\
         # TYPE gpuvirt_up gauge\ngpuvirt_up 0\n"
    );
}

#[test]
fn passthrough_ready_needs_companions_on_vfio_and_a_viable_group() {
    let text = render(
        &Snapshot {
            daemon: Some(fake_daemon()),
        },
        None,
    );
    assert!(text.contains("gpuvirt_gpu_passthrough_ready{pci=\"0000:41:00.0\"} 0\n"));
    assert!(text.contains("gpuvirt_gpu_passthrough_ready{pci=\"0000:42:00.0\"} 1\n"));
    assert!(text.contains("gpuvirt_gpu_passthrough_ready{pci=\"0000:43:00.0\"} 0\n"));
}

#[test]
fn no_free_text_in_labels() {
    let text = render(
        &Snapshot {
            daemon: Some(fake_daemon()),
        },
        None,
    );
    for free in ["intel_iommu", "bridge", "Tesla", "applied 3", "num_heads"] {
        assert!(
            !text.contains(free),
            "free text {free:?} leaked into the metrics"
        );
    }
}

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    escape_label_value(&mut out, "a\\b\"c\nd é");
    assert_eq!(out, "a\\\\b\\\"c\\nd é");
    let mut daemon = fake_daemon();
    daemon.manager.version = "1.0 \"beta\"\nx\\y".into();
    let text = render(
        &Snapshot {
            daemon: Some(daemon),
        },
        None,
    );
    assert!(text.contains("gpuvirt_build_info{version=\"1.0 \\\"beta\\\"\\nx\\\\y\",kernel_release=\"6.1.0-28-amd64\"} 1\n"));
}
