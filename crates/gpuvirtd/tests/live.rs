//! gpuvirtd against a simulated kernel on a private bus: the served tree, live changes and
//! the exact signals they cause, a burst of events, and the introspection contract.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use gpuvirt_api as api;

const GPU: &str = "0000:41:00.0";
const GPU_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const MDEV_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123";
const QUIET: Duration = Duration::from_millis(300);

fn manager_reasons(groups: u32) -> String {
    format!(
        "PropertiesChanged /org/gpuvirt/GpuVirt1/Manager org.gpuvirt.GpuVirt1.Manager IommuReasons=[\"{groups} IOMMU groups in /sys/kernel/iommu_groups\", \"IOMMU units in /sys/class/iommu: ivhd0\"]"
    )
}

fn has(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_tree_matches_the_fixture() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(
        &bus,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        host.dir.path(),
    )
    .await;

    let tree = busctl(&bus, &["tree", "--list", api::BUS_NAME]);
    let paths: Vec<&str> = tree.lines().collect();
    for expected in [
        "/org/gpuvirt/GpuVirt1",
        "/org/gpuvirt/GpuVirt1/Manager",
        GPU_PATH,
        "/org/gpuvirt/GpuVirt1/iommu_groups/66",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {tree}");
    }
    assert!(
        !paths.iter().any(|p| p.contains("/mdevs/")),
        "the runbook host has no mdevs yet: {tree}"
    );

    let introspect = busctl(&bus, &["introspect", api::BUS_NAME, GPU_PATH]);
    assert!(
        introspect.contains("org.gpuvirt.GpuVirt1.Gpu"),
        "{introspect}"
    );
    assert!(
        introspect.contains("org.gpuvirt.GpuVirt1.ShardParent"),
        "{introspect}"
    );
    let get = |path: &str, iface: &str, prop: &str| {
        busctl(&bus, &["get-property", api::BUS_NAME, path, iface, prop])
            .trim()
            .to_owned()
    };
    assert_eq!(
        get(GPU_PATH, api::GPU_INTERFACE, "PciAddress"),
        "s \"0000:41:00.0\""
    );
    assert_eq!(get(GPU_PATH, api::GPU_INTERFACE, "Driver"), "s \"nvidia\"");
    assert_eq!(get(GPU_PATH, api::GPU_INTERFACE, "DeviceId"), "q 7604"); // 0x1db4
    assert_eq!(
        get(GPU_PATH, api::GPU_INTERFACE, "IommuGroup"),
        "o \"/org/gpuvirt/GpuVirt1/iommu_groups/66\""
    );
    assert_eq!(
        get(GPU_PATH, api::SHARD_PARENT_INTERFACE, "Backend"),
        "s \"mdev\""
    );
    assert_eq!(
        get(
            "/org/gpuvirt/GpuVirt1/iommu_groups/66",
            api::IOMMU_GROUP_INTERFACE,
            "Viable"
        ),
        "b true"
    );
    assert_eq!(
        get(api::MANAGER_PATH, api::MANAGER_INTERFACE, "KernelRelease"),
        "s \"5.4.0-84-generic\""
    );

    // The same through the typed proxies.
    let conn = bus.connect().await;
    let manager = api::ManagerProxy::new(&conn).await.unwrap();
    assert!(manager.iommu_enabled().await.unwrap());
    let path = manager.get_gpu_by_pci_address(GPU).await.unwrap();
    assert_eq!(path.as_str(), GPU_PATH);
    // Short form, upper case: the same device.
    assert_eq!(
        manager
            .get_gpu_by_pci_address("41:00.0")
            .await
            .unwrap()
            .as_str(),
        GPU_PATH
    );
    let gpu = api::GpuProxy::builder(&conn)
        .path(path)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(gpu.vendor_id().await.unwrap(), 0x10de);
    assert_eq!(
        gpu.product_name().await.unwrap(),
        "GV100GL [Tesla V100 PCIe 16GB]"
    );
    assert_eq!(gpu.state().await.unwrap(), "host");
    assert_eq!(gpu.numa_node().await.unwrap(), 1);
    let shard = api::ShardParentProxy::builder(&conn)
        .path(GPU_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let types = shard.types().await.unwrap();
    let (name, description, device_api, available) = &types["nvidia-300"];
    assert_eq!(name, "GRID V100-8C");
    assert!(description.contains("max_instance=2"), "{description}");
    assert_eq!(device_api, "vfio-pci");
    assert_eq!(*available, 2);
    assert_eq!(shard.children().await.unwrap(), vec![]);

    // Typed errors.
    match manager.get_gpu_by_pci_address("0000:01:00.0").await {
        Err(api::Error::NoSuchDevice(msg)) => assert!(msg.contains("0000:01:00.0"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match manager.get_gpu_by_pci_address("../../etc").await {
        Err(api::Error::ZBus(zbus::Error::MethodError(name, Some(msg), _))) => {
            assert_eq!(name.as_str(), api::INVALID_ARGS_ERROR);
            assert!(msg.contains("'address'"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    match manager.get_mdev_by_uuid("not-a-uuid").await {
        Err(api::Error::ZBus(zbus::Error::MethodError(name, Some(msg), _))) => {
            assert_eq!(name.as_str(), api::INVALID_ARGS_ERROR);
            assert!(msg.contains("'uuid'"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        manager.get_mdev_by_uuid(UUID).await,
        Err(api::Error::NoSuchDevice(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_emit_exactly_the_changed_state() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let daemon = Daemon::start(
        &bus,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        host.dir.path(),
    )
    .await;
    let conn = bus.connect().await;
    let signals = SignalRecorder::start(&conn).await;
    let gpu = api::GpuProxy::builder(&conn)
        .path(GPU_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();

    // Unbind: the nvidia driver unregisters the card from the mdev core (so the ShardParent
    // goes), the GPU and its group change, nothing else.
    host.write("sys/bus/pci/drivers/nvidia/unbind", GPU)
        .unwrap();
    let got = signals
        .settle(|l| has(l, &format!("PropertiesChanged {GPU_PATH}")), QUIET)
        .await;
    assert_eq!(
        got,
        [
            format!("InterfacesRemoved {GPU_PATH} org.gpuvirt.GpuVirt1.ShardParent"),
            format!(
                "PropertiesChanged {GPU_PATH} org.gpuvirt.GpuVirt1.Gpu Driver=\"\" State=\"unbound\""
            ),
            "PropertiesChanged /org/gpuvirt/GpuVirt1/iommu_groups/66 org.gpuvirt.GpuVirt1.IommuGroup Members=[(\"0000:41:00.0\", uint32 197120, \"\")]".to_owned(),
        ],
        "{}",
        daemon.log()
    );
    assert_eq!(gpu.driver().await.unwrap(), "");
    assert_eq!(gpu.state().await.unwrap(), "unbound");

    // Bind it back: the parent registers again.
    host.write("sys/bus/pci/drivers/nvidia/bind", GPU).unwrap();
    let got = signals
        .settle(|l| has(l, &format!("PropertiesChanged {GPU_PATH}")), QUIET)
        .await;
    assert_eq!(
        got,
        [
            format!("InterfacesAdded {GPU_PATH} org.gpuvirt.GpuVirt1.ShardParent"),
            format!(
                "PropertiesChanged {GPU_PATH} org.gpuvirt.GpuVirt1.Gpu Driver=\"nvidia\" State=\"host\""
            ),
            "PropertiesChanged /org/gpuvirt/GpuVirt1/iommu_groups/66 org.gpuvirt.GpuVirt1.IommuGroup Members=[(\"0000:41:00.0\", uint32 197120, \"nvidia\")]".to_owned(),
        ]
    );
    assert_eq!(gpu.driver().await.unwrap(), "nvidia");

    // A duplicate event (the kernel resending bind) changes nothing and emits nothing.
    host.mount.events().publish(&[gpuvirt_sim::Uevent::new(
        "bind",
        "/devices/pci0000:40/0000:40:03.1/0000:41:00.0",
        "pci",
    )
    .with("DRIVER", "nvidia")]);
    tokio::time::sleep(QUIET).await;
    assert_eq!(signals.take(), Vec::<String>::new());

    // Create an mdev: a new Mdev object (and its IOMMU group), the parent's types and children.
    host.write(
        &format!("sys/bus/pci/devices/{GPU}/mdev_supported_types/nvidia-300/create"),
        UUID,
    )
    .unwrap();
    let got = signals
        .settle(|l| has(l, &format!("InterfacesAdded {MDEV_PATH}")), QUIET)
        .await;
    let mdev_group = {
        let mdev = api::MdevProxy::builder(&conn)
            .path(MDEV_PATH)
            .unwrap()
            .build()
            .await
            .unwrap();
        assert_eq!(mdev.type_id().await.unwrap(), "nvidia-300");
        assert_eq!(mdev.type_name().await.unwrap(), "GRID V100-8C");
        assert_eq!(mdev.parent().await.unwrap().as_str(), GPU_PATH);
        assert_eq!(mdev.parent_name().await.unwrap(), GPU);
        mdev.iommu_group().await.unwrap().to_string()
    };
    let mut expected = vec![format!(
        "InterfacesAdded {MDEV_PATH} org.gpuvirt.GpuVirt1.Mdev"
    )];
    // The IOMMU evidence counts groups, and the mdev brought one.
    expected.push(manager_reasons(6));
    if mdev_group != "/" {
        expected.push(format!(
            "InterfacesAdded {mdev_group} org.gpuvirt.GpuVirt1.IommuGroup"
        ));
    }
    let shard_change = got
        .iter()
        .find(|l| {
            l.starts_with(&format!(
                "PropertiesChanged {GPU_PATH} org.gpuvirt.GpuVirt1.ShardParent"
            ))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ShardParent change in {got:#?}"));
    assert!(
        shard_change.contains(&format!("Children=[objectpath \"{MDEV_PATH}\"] Types={{")),
        "{shard_change}"
    );
    // The V100 runs one type at a time: nvidia-300 has 1 left, every other type none.
    assert_eq!(
        shard_change.matches("uint32 1)").count(),
        1,
        "{shard_change}"
    );
    assert!(
        shard_change.contains("max_instance=2\", \"vfio-pci\", uint32 1)"),
        "{shard_change}"
    );
    expected.push(shard_change);
    let mut got_sorted = got.clone();
    got_sorted.sort();
    expected.sort();
    assert_eq!(got_sorted, expected);
    let shard = api::ShardParentProxy::builder(&conn)
        .path(GPU_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(shard.types().await.unwrap()["nvidia-300"].3, 1);
    let manager = api::ManagerProxy::new(&conn).await.unwrap();
    assert_eq!(
        manager.get_mdev_by_uuid(UUID).await.unwrap().as_str(),
        MDEV_PATH
    );

    // Remove it: the object goes, the parent gets its instance back.
    host.write(&format!("sys/bus/mdev/devices/{UUID}/remove"), "1")
        .unwrap();
    let got = signals
        .settle(|l| has(l, &format!("InterfacesRemoved {MDEV_PATH}")), QUIET)
        .await;
    let mut expected = vec![format!(
        "InterfacesRemoved {MDEV_PATH} org.gpuvirt.GpuVirt1.Mdev"
    )];
    expected.push(manager_reasons(5));
    if mdev_group != "/" {
        expected.push(format!(
            "InterfacesRemoved {mdev_group} org.gpuvirt.GpuVirt1.IommuGroup"
        ));
    }
    let shard_change = got
        .iter()
        .find(|l| {
            l.starts_with(&format!(
                "PropertiesChanged {GPU_PATH} org.gpuvirt.GpuVirt1.ShardParent"
            ))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ShardParent change in {got:#?}"));
    assert!(
        shard_change.contains("Children=@ao [] Types={"),
        "{shard_change}"
    );
    assert_eq!(
        shard_change.matches("uint32 0)").count(),
        0,
        "{shard_change}"
    );
    expected.push(shard_change);
    let mut got_sorted = got;
    got_sorted.sort();
    expected.sort();
    assert_eq!(got_sorted, expected);
    assert_eq!(shard.types().await.unwrap()["nvidia-300"].3, 2);

    // Hot-add a second GPU: its object and group appear.
    let added = host.with_kernel_mut(|k| {
        let mut spec = gpuvirt_sim::fixture::PciSpec::new(
            "0000:42:00.0".parse().unwrap(),
            0x030000,
            "10de:1db4",
        );
        spec.iommu_group = gpuvirt_sim::fixture::GroupSpec::Number(90);
        k.hot_add(&spec).unwrap()
    });
    assert_eq!(added.to_string(), "0000:42:00.0");
    let new_path = "/org/gpuvirt/GpuVirt1/gpus/0000_42_00_0";
    let got = signals
        .settle(|l| has(l, &format!("InterfacesAdded {new_path}")), QUIET)
        .await;
    assert_eq!(
        got,
        [
            // The group first: the GPU refers to it.
            "InterfacesAdded /org/gpuvirt/GpuVirt1/iommu_groups/90 org.gpuvirt.GpuVirt1.IommuGroup"
                .to_owned(),
            format!("InterfacesAdded {new_path} org.gpuvirt.GpuVirt1.Gpu"),
            manager_reasons(6),
        ]
    );
    assert_eq!(
        manager
            .get_gpu_by_pci_address("0000:42:00.0")
            .await
            .unwrap()
            .as_str(),
        new_path
    );

    // And hot-remove it.
    host.with_kernel_mut(|k| k.hot_remove(added).unwrap());
    let got = signals
        .settle(|l| has(l, &format!("InterfacesRemoved {new_path}")), QUIET)
        .await;
    assert_eq!(
        got,
        [
            format!("InterfacesRemoved {new_path} org.gpuvirt.GpuVirt1.Gpu"),
            "InterfacesRemoved /org/gpuvirt/GpuVirt1/iommu_groups/90 org.gpuvirt.GpuVirt1.IommuGroup".to_owned(),
            manager_reasons(5),
        ]
    );
    assert!(matches!(
        manager.get_gpu_by_pci_address("0000:42:00.0").await,
        Err(api::Error::NoSuchDevice(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_exits_cleanly_on_sigterm() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let notify_path = host.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = Daemon::start_with_env(
        &bus,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        host.dir.path(),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .await;
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(
        // Only the GPU's group is read and served (the GPU-scoped scan counts the other four).
        first.contains("STATUS=Serving 1 GPUs, 1 IOMMU groups, 0 mdevs"),
        "{first}"
    );

    // SIGHUP: the reload hook rescans and says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"RELOADING=1");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");

    let status = daemon.terminate();
    assert!(status.success(), "{status}: {}", daemon.log());
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let conn = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    assert!(!dbus
        .name_has_owner(api::BUS_NAME.try_into().unwrap())
        .await
        .unwrap());
}
