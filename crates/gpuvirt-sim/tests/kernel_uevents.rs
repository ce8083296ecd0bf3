//! Uevent sequences: actions, subsystems, keys and order as a real 6.1 kernel sends them.
#![allow(clippy::unwrap_used)]

use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Uevent};

fn boot(name: &str) -> Kernel {
    Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap()
}

/// `ACTION SUBSYSTEM DEVPATH` per event.
fn summary(events: &[Uevent]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {} {}", e.action, e.subsystem, e.devpath))
        .collect()
}

fn keys(e: &Uevent) -> Vec<&str> {
    e.env.iter().map(|(k, _)| k.as_str()).collect()
}

const U: &str = "993e739b-06cc-4911-aff8-db64e991371c";
const DEV: &str = "/devices/pci0000:00/0000:00:04.0/0000:01:00.0";

#[test]
fn rebind_to_vfio_pci_and_back() {
    let mut k = boot("vm-reference");
    k.load_module("vfio_pci").unwrap();
    let loaded = summary(&k.take_uevents());
    assert!(
        loaded.contains(&"add module /module/vfio_pci".to_owned()),
        "{loaded:?}"
    );
    assert!(
        loaded.contains(&"add drivers /bus/pci/drivers/vfio-pci".to_owned()),
        "{loaded:?}"
    );
    assert!(
        loaded.iter().all(|l| !l.starts_with("bind")),
        "nothing matches vfio-pci yet"
    );

    let a = "0000:01:00.0";
    k.write_str(
        "sys/bus/pci/devices/0000:01:00.0/driver_override",
        "vfio-pci",
    )
    .unwrap();
    assert!(k.take_uevents().is_empty(), "driver_override sends nothing");
    k.write_str("sys/bus/pci/devices/0000:01:00.0/driver/unbind", a)
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", a).unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            format!("unbind pci {DEV}"),
            "add vfio /devices/virtual/vfio/8".to_owned(),
            format!("add vfio-dev {DEV}/vfio-dev/vfio0"),
            format!("bind pci {DEV}"),
        ]
    );
    assert_eq!(ev[0].get("DRIVER"), None, "unbind carries no DRIVER");
    assert_eq!(
        keys(&ev[0]),
        vec![
            "PCI_CLASS",
            "PCI_ID",
            "PCI_SUBSYS_ID",
            "PCI_SLOT_NAME",
            "MODALIAS"
        ]
    );
    assert_eq!(ev[0].get("PCI_CLASS"), Some("38000"));
    assert_eq!(ev[0].get("PCI_ID"), Some("1234:1111"));
    assert_eq!(ev[0].get("PCI_SUBSYS_ID"), Some("1AF4:1100"));
    assert_eq!(
        ev[3].get("MODALIAS"),
        Some("pci:v00001234d00001111sv00001AF4sd00001100bc03sc80i00")
    );
    assert_eq!(keys(&ev[1]), vec!["MAJOR", "MINOR", "DEVNAME"]);
    assert_eq!(ev[1].get("DEVNAME"), Some("vfio/8"));
    assert_eq!(ev[2].env, vec![], "vfio-dev has no DEVNAME on 6.1");
    assert_eq!(
        keys(&ev[3]),
        vec![
            "DRIVER",
            "PCI_CLASS",
            "PCI_ID",
            "PCI_SUBSYS_ID",
            "PCI_SLOT_NAME",
            "MODALIAS"
        ]
    );
    assert_eq!(ev[3].get("DRIVER"), Some("vfio-pci"));
    let seqs: Vec<u64> = ev.iter().map(|e| e.seqnum).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    k.write_str("sys/bus/pci/devices/0000:01:00.0/driver_override", "\n")
        .unwrap();
    k.write_str("sys/bus/pci/drivers/vfio-pci/unbind", a)
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", a).unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            format!("remove vfio-dev {DEV}/vfio-dev/vfio0"),
            "remove vfio /devices/virtual/vfio/8".to_owned(),
            format!("unbind pci {DEV}"),
            format!("bind pci {DEV}"),
        ]
    );
    assert_eq!(ev[3].get("DRIVER"), Some("bochs-drm"));
    assert!(ev[0].seqnum > seqs[3]);
}

#[test]
fn mdev_create_and_remove() {
    let mut k = boot("vm-reference");
    let ty = "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small";
    k.write_str(&format!("{ty}/create"), U).unwrap();
    let ev = k.take_uevents();
    let mdev = format!("/devices/virtual/mbochs/mbochs/{U}");
    assert_eq!(
        summary(&ev),
        vec![
            format!("add mdev {mdev}"),
            "add vfio /devices/virtual/vfio/11".to_owned(),
            format!("add vfio-dev {mdev}/vfio-dev/vfio0"),
            format!("bind mdev {mdev}"),
        ]
    );
    assert!(
        ev[0].env.is_empty(),
        "mdev add has only ACTION/DEVPATH/SUBSYSTEM/SEQNUM"
    );
    assert_eq!(ev[3].env, vec![("DRIVER".to_owned(), "mbochs".to_owned())]);
    k.write_str(&format!("sys/bus/mdev/devices/{U}/remove"), "1")
        .unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            format!("remove vfio-dev {mdev}/vfio-dev/vfio0"),
            "remove vfio /devices/virtual/vfio/11".to_owned(),
            format!("unbind mdev {mdev}"),
            format!("remove mdev {mdev}"),
        ]
    );
    assert!(ev[2].env.is_empty() && ev[3].env.is_empty());
}

#[test]
fn mdev_parent_module_load_and_unload_with_live_mdevs() {
    let mut k = boot("vm-reference");
    k.unload_module("mbochs").unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            "change mbochs /devices/virtual/mbochs/mbochs",
            "remove mbochs /devices/virtual/mbochs/mbochs",
            "remove class /class/mbochs",
            "remove drivers /bus/mdev/drivers/mbochs",
            "remove module /module/mbochs",
        ]
    );
    assert_eq!(ev[0].get("MDEV_STATE"), Some("unregistered"));
    k.load_module("mbochs").unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            "add module /module/mbochs",
            "add drivers /bus/mdev/drivers/mbochs",
            "add class /class/mbochs",
            "add mbochs /devices/virtual/mbochs/mbochs",
            "change mbochs /devices/virtual/mbochs/mbochs",
        ]
    );
    assert_eq!(
        ev[4].env,
        vec![("MDEV_STATE".to_owned(), "registered".to_owned())]
    );
    // With a live mdev: the core removes it first (unbind/remove), then unregisters.
    k.write_str(
        "sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-large/create",
        U,
    )
    .unwrap();
    k.take_uevents();
    k.unload_module("mbochs").unwrap();
    let s = summary(&k.take_uevents());
    let mdev = format!("/devices/virtual/mbochs/mbochs/{U}");
    let pos = |x: &str| {
        s.iter()
            .position(|l| l == x)
            .unwrap_or_else(|| panic!("{x} in {s:?}"))
    };
    assert!(pos(&format!("unbind mdev {mdev}")) < pos(&format!("remove mdev {mdev}")));
    assert!(
        pos(&format!("remove mdev {mdev}")) < pos("change mbochs /devices/virtual/mbochs/mbochs")
    );
    assert!(
        pos("change mbochs /devices/virtual/mbochs/mbochs")
            < pos("remove mbochs /devices/virtual/mbochs/mbochs")
    );
}

#[test]
fn pci_mdev_parent_announces_registration_around_bind() {
    let mut k = boot("runbook");
    let gpu = "/devices/pci0000:40/0000:40:03.1/0000:41:00.0";
    k.write_str("sys/bus/pci/drivers/nvidia/unbind", "0000:41:00.0")
        .unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![format!("change pci {gpu}"), format!("unbind pci {gpu}")]
    );
    assert_eq!(keys(&ev[0])[..2], ["MDEV_STATE", "DRIVER"]);
    assert_eq!(ev[0].get("MDEV_STATE"), Some("unregistered"));
    k.write_str("sys/bus/pci/drivers/nvidia/bind", "0000:41:00.0")
        .unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![format!("change pci {gpu}"), format!("bind pci {gpu}")]
    );
    assert_eq!(ev[0].get("MDEV_STATE"), Some("registered"));
    assert_eq!(ev[1].get("DRIVER"), Some("nvidia"));
    assert!(
        k.tree().exists("sys/bus/mdev/drivers/vfio_mdev"),
        "vfio_mdev stays loaded"
    );
}

#[test]
fn sriov_vfs_come_and_go_with_add_bind_unbind_remove() {
    let mut k = boot("hopper-sriov");
    k.write_str("sys/bus/pci/devices/0000:9a:00.0/sriov_numvfs", "2")
        .unwrap();
    let s = summary(&k.take_uevents());
    let vf = |i: u32| format!("/devices/pci0000:97/0000:97:01.0/0000:9a:00.{i}");
    assert_eq!(
        s,
        vec![
            format!("add pci {}", vf(4)),
            format!("bind pci {}", vf(4)),
            format!("add pci {}", vf(5)),
            format!("bind pci {}", vf(5)),
        ]
    );
    k.write_str("sys/bus/pci/devices/0000:9a:00.0/sriov_numvfs", "0")
        .unwrap();
    let ev = k.take_uevents();
    assert_eq!(
        summary(&ev),
        vec![
            format!("unbind pci {}", vf(5)),
            format!("remove pci {}", vf(5)),
            format!("unbind pci {}", vf(4)),
            format!("remove pci {}", vf(4)),
        ]
    );
    assert_eq!(ev[1].get("DRIVER"), None);
    assert_eq!(ev[1].get("PCI_SLOT_NAME"), Some("0000:9a:00.5"));
}

#[test]
fn seqnums_increase_across_calls_and_wire_round_trips() {
    let mut k = boot("vm-reference");
    k.write_str("sys/bus/pci/drivers/bochs-drm/unbind", "0000:03:00.0")
        .unwrap();
    k.write_str("sys/bus/pci/drivers_probe", "0000:03:00.0")
        .unwrap();
    let a = k.take_uevents();
    k.hot_remove("0000:03:00.0".parse().unwrap()).unwrap();
    let b = k.take_uevents();
    assert_eq!(
        summary(&b)[1],
        "remove pci /devices/pci0000:00/0000:00:06.0/0000:03:00.0"
    );
    assert!(a.last().unwrap().seqnum < b[0].seqnum);
    assert_eq!(k.seqnum(), b.last().unwrap().seqnum);
    for e in a.iter().chain(&b) {
        assert_eq!(Uevent::from_wire(&e.to_wire()).as_ref(), Some(e));
    }
}
