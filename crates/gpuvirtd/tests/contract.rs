//! The contract files: introspection XML generated from the live daemon, the systemd unit,
//! the bus policy, activation file and udev rule.
//!
//! Regenerate `dbus/org.gpuvirt.GpuVirt1.xml` after an intended API change with
//! `GPUVIRT_BLESS=1 cargo test -p gpuvirtd --test contract`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use gpuvirt_api as api;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `<interface name="org.gpuvirt...">` blocks of an introspection document.
fn gpuvirt_interfaces(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<interface name=\"") {
        let tail = &rest[start..];
        let Some(end) = tail.find("</interface>") else {
            break;
        };
        let block = &tail[..end + "</interface>".len()];
        let name = block["<interface name=\"".len()..]
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        if name.starts_with("org.gpuvirt.") {
            // Normalise indentation so the file reads well on its own.
            let body: Vec<String> = block
                .lines()
                .map(|l| format!("  {}", l.trim_start()))
                .map(|l| {
                    if l.trim_start().starts_with("<interface")
                        || l.trim_start().starts_with("</interface")
                    {
                        l
                    } else {
                        format!("  {l}")
                    }
                })
                .collect();
            out.push((name, body.join("\n")));
        }
        rest = &tail[end..];
    }
    out
}

/// The runbook host with one mdev (so that every interface is served somewhere), a bus and
/// gpuvirtd on it.
async fn runbook_with_an_mdev() -> (SimHost, Bus, Daemon) {
    let host = SimHost::boot("runbook");
    host.write(
        "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
        "aa618089-8b16-4d01-a136-25a0f3c73123",
    )
    .unwrap();
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, host.root(), "none", host.dir.path()).await;
    (host, bus, daemon)
}

/// The introspection of a finished job's object: the runbook's V100 passed through on a host
/// of its own (the other host's V100 carries an mdev gpuvirt did not make, which refuses it).
async fn job_introspection() -> String {
    let host = SimHost::boot("runbook");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, host.root(), "none", host.dir.path()).await;
    let reply = busctl(
        &bus,
        &[
            "call",
            api::BUS_NAME,
            "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0",
            api::GPU_INTERFACE,
            "AssignPassthrough",
            "a{sv}",
            "0",
            "--json=short",
        ],
    );
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let job = value["data"][0].as_str().unwrap().to_owned();
    assert!(job.starts_with("/org/gpuvirt/GpuVirt1/jobs/"), "{reply}");
    let xml = busctl(
        &bus,
        &[
            "call",
            api::BUS_NAME,
            &job,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
            "--json=short",
        ],
    );
    let value: serde_json::Value = serde_json::from_str(&xml).unwrap();
    value["data"][0].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_matches_the_contract_file() {
    if !fuse_available() {
        return;
    }
    let (_host, bus, _daemon) = runbook_with_an_mdev().await;
    let mut interfaces = std::collections::BTreeMap::new();
    for path in [
        api::MANAGER_PATH,
        "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0",
        "/org/gpuvirt/GpuVirt1/iommu_groups/66",
        "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123",
    ] {
        let xml = busctl(
            &bus,
            &[
                "call",
                api::BUS_NAME,
                path,
                "org.freedesktop.DBus.Introspectable",
                "Introspect",
                "--json=short",
            ],
        );
        let value: serde_json::Value = serde_json::from_str(&xml).unwrap();
        let text = value["data"][0].as_str().unwrap();
        interfaces.extend(gpuvirt_interfaces(text));
    }
    interfaces.extend(gpuvirt_interfaces(&job_introspection().await));
    let names: Vec<&String> = interfaces.keys().collect();
    let mut expected: Vec<&str> = api::INTERFACES.to_vec();
    // Jobs exist only while an operation runs (and a minute after): one is made for this.
    expected.push(api::JOB_INTERFACE);
    expected.sort();
    assert_eq!(names, expected);
    let mut generated = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- gpuvirtd's D-Bus API, generated from the live daemon by\n     `GPUVIRT_BLESS=1 cargo test -p gpuvirtd, test \"contract\"`. Do not edit by hand. -->\n<node>\n",
    );
    for block in interfaces.values() {
        generated.push_str(block);
        generated.push('\n');
    }
    generated.push_str("</node>\n");
    let file = repo().join("dbus/org.gpuvirt.GpuVirt1.xml");
    if std::env::var_os("GPUVIRT_BLESS").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the live daemon; if the change is intended, rerun with GPUVIRT_BLESS=1.\n--- generated ---\n{generated}",
        file.display()
    );
}

/// Every object path below the root with the interfaces it carries, from the root's
/// `Introspect` (zbus answers it from the object server itself, nested to the leaves, not from
/// gpuvirtd's tree).
async fn introspected(conn: &zbus::Connection) -> std::collections::BTreeMap<String, Vec<String>> {
    let xml: String = conn
        .call_method(
            Some(api::BUS_NAME),
            api::ROOT_PATH,
            Some("org.freedesktop.DBus.Introspectable"),
            "Introspect",
            &(),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut stack: Vec<String> = Vec::new();
    let name = |tag: &str| tag.split('"').nth(1).unwrap_or_default().to_owned();
    for tag in xml.split('<').skip(1).map(|t| t.split('>').next().unwrap()) {
        if tag.starts_with("node") {
            let path = match stack.last() {
                None => api::ROOT_PATH.to_owned(),
                Some(parent) => format!("{parent}/{}", name(tag)),
            };
            out.entry(path.clone()).or_insert_with(Vec::new);
            if !tag.ends_with('/') {
                stack.push(path);
            }
        } else if tag == "/node" {
            stack.pop();
        } else if tag.starts_with("interface ") {
            out.get_mut(stack.last().unwrap()).unwrap().push(name(tag));
        }
    }
    for ifaces in out.values_mut() {
        ifaces.sort();
    }
    out
}

/// `GetManagedObjects` (gpuvirtd's own, answered from its tree) lists every object the object
/// server has, with what each interface's `GetAll` answers; `Manager.GetObjects` serves the
/// same less the Manager, filtered by interface, and names a bad argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_managed_objects_and_get_objects_match_the_objects() {
    if !fuse_available() {
        return;
    }
    let (_host, bus, _daemon) = runbook_with_an_mdev().await;
    let conn = bus.connect().await;
    let all = managed_objects(&conn).await;
    // Against the object server: the same paths (those with an interface of gpuvirt's; the
    // bare nodes above them are not objects) and, per interface, what GetAll says.
    let nodes = introspected(&conn).await;
    let served: Vec<&String> = nodes
        .iter()
        .filter(|(_, ifaces)| ifaces.iter().any(|i| i.starts_with("org.gpuvirt.")))
        .map(|(path, _)| path)
        .collect();
    let mut listed: Vec<String> = all.keys().map(|p| p.to_string()).collect();
    listed.sort();
    assert_eq!(listed.iter().collect::<Vec<_>>(), served, "{nodes:?}");
    for (path, ifaces) in &all {
        let gpuvirt: Vec<&String> = nodes[path.as_str()]
            .iter()
            .filter(|i| i.starts_with("org.gpuvirt."))
            .collect();
        let mut listed: Vec<String> = ifaces.keys().map(|i| i.to_string()).collect();
        listed.sort();
        assert_eq!(listed.iter().collect::<Vec<_>>(), gpuvirt, "{path}");
        let props = zbus::fdo::PropertiesProxy::builder(&conn)
            .destination(api::BUS_NAME)
            .unwrap()
            .path(path.clone())
            .unwrap()
            .build()
            .await
            .unwrap();
        for (iface, values) in ifaces {
            let got = props.get_all(iface.as_ref()).await.unwrap();
            assert_eq!(&got, values, "{path} {iface}");
        }
    }
    let manager = api::ManagerProxy::new(&conn).await.unwrap();
    let none = std::collections::HashMap::new;
    let object_interfaces = [
        api::GPU_INTERFACE,
        api::SHARD_PARENT_INTERFACE,
        api::IOMMU_GROUP_INTERFACE,
        api::MDEV_INTERFACE,
    ];
    // Every object but the Manager.
    let mut objects = all.clone();
    objects.retain(|_, ifaces| {
        ifaces
            .keys()
            .any(|i| object_interfaces.contains(&i.as_str()))
    });
    assert_eq!(objects.len(), all.len() - 1, "{all:?}");
    assert_eq!(manager.get_objects(&[], none()).await.unwrap(), objects);
    for interface in object_interfaces {
        let mut expected = all.clone();
        expected.retain(|_, ifaces| ifaces.keys().any(|i| i.as_str() == interface));
        assert!(!expected.is_empty(), "{interface} is served somewhere");
        let got = manager.get_objects(&[interface], none()).await.unwrap();
        assert_eq!(got, expected, "{interface}");
    }
    // Bad arguments: InvalidArgs naming the argument (on the wire, not as the proxy shows it).
    let mut bogus = none();
    bogus.insert("bogus", zbus::zvariant::Value::from(true));
    for (args, argument) in [
        ((vec!["org.example.Nope"], none()), "interfaces"),
        ((vec![], bogus), "options"),
    ] {
        let err = call_manager(&conn, "GetObjects", &args).await.unwrap_err();
        let zbus::Error::MethodError(name, message, _) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            name.as_str(),
            "org.freedesktop.DBus.Error.InvalidArgs",
            "{err:?}"
        );
        let message = message.clone().unwrap_or_default();
        assert!(
            message.contains(&format!("argument '{argument}'")),
            "{message}"
        );
    }
}

/// `Manager.ListMdevs` has a row per Mdev object, sorted by path, each holding what the
/// object's `GetAll` says (all but the `IommuGroup` path), and names a bad option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_mdevs_rows_are_the_mdev_objects_properties() {
    if !fuse_available() {
        return;
    }
    let (_host, bus, _daemon) = runbook_with_an_mdev().await;
    let conn = bus.connect().await;
    let all = managed_objects(&conn).await;
    let manager = api::ManagerProxy::new(&conn).await.unwrap();
    let rows = manager
        .list_mdevs(std::collections::HashMap::new())
        .await
        .unwrap();
    let mut mdev_paths: Vec<String> = all
        .iter()
        .filter(|(_, ifaces)| ifaces.keys().any(|i| i.as_str() == api::MDEV_INTERFACE))
        .map(|(path, _)| path.to_string())
        .collect();
    mdev_paths.sort();
    assert!(!mdev_paths.is_empty(), "the fixture has an mdev");
    let row_paths: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
    assert_eq!(row_paths, mdev_paths);
    for (path, uuid, parent, parent_name, type_id, type_name, active, driver, group) in rows {
        let props = &all[&path][api::MDEV_INTERFACE];
        let get = |name: &str| props.get(name).unwrap_or_else(|| panic!("{path} {name}"));
        assert_eq!(
            String::try_from(get("Uuid").try_clone().unwrap()).unwrap(),
            uuid
        );
        assert_eq!(
            zbus::zvariant::OwnedObjectPath::try_from(get("Parent").try_clone().unwrap()).unwrap(),
            parent
        );
        assert_eq!(
            String::try_from(get("ParentName").try_clone().unwrap()).unwrap(),
            parent_name
        );
        assert_eq!(
            String::try_from(get("Type").try_clone().unwrap()).unwrap(),
            type_id
        );
        assert_eq!(
            String::try_from(get("TypeName").try_clone().unwrap()).unwrap(),
            type_name
        );
        assert_eq!(bool::try_from(get("Active")).unwrap(), active);
        assert_eq!(
            String::try_from(get("Driver").try_clone().unwrap()).unwrap(),
            driver
        );
        assert_eq!(i32::try_from(get("IommuGroupId")).unwrap(), group);
        // Known from the fixture, so a row of defaults would not pass.
        assert!(!uuid.is_empty() && !parent_name.is_empty() && !type_id.is_empty());
    }
    let mut bogus = std::collections::HashMap::new();
    bogus.insert("bogus", zbus::zvariant::Value::from(true));
    let err = call_manager(&conn, "ListMdevs", &(bogus,))
        .await
        .unwrap_err();
    let zbus::Error::MethodError(name, message, _) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.InvalidArgs");
    let message = message.clone().unwrap_or_default();
    assert!(message.contains("argument 'options'"), "{message}");
    assert!(message.contains("ListMdevs takes none"), "{message}");
}

#[test]
fn systemd_unit_verifies_and_keeps_sys_writable() {
    let unit = std::fs::read_to_string(repo().join("systemd/gpuvirtd.service")).unwrap();
    for forbidden in [
        "ProtectKernelTunables",
        "PrivateNetwork",
        "PrivateUsers",
        "PrivateDevices",
    ] {
        assert!(
            !unit.lines().any(|l| l.trim_start().starts_with(forbidden)),
            "{forbidden} breaks sysfs writes or udev"
        );
    }
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("BusName=org.gpuvirt.GpuVirt1"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP systemd-analyze verify: not installed");
        return;
    }
    // Verify against the binary just built (the unit names its installed path).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gpuvirtd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/libexec/gpuvirtd", env!("CARGO_BIN_EXE_gpuvirtd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("gpuvirtd.service"),
        "systemd-analyze verify complained: {stderr}"
    );
}

#[test]
fn bus_files_name_the_service() {
    let conf = std::fs::read_to_string(repo().join("dbus/org.gpuvirt.GpuVirt1.conf")).unwrap();
    assert!(conf.contains("<policy user=\"root\">"));
    assert!(conf.contains("<allow own=\"org.gpuvirt.GpuVirt1\"/>"));
    assert!(conf.contains("<policy context=\"default\">"));
    // Only root may own the name: no `own` outside the root policy.
    assert_eq!(conf.matches("allow own=").count(), 1);
    let service =
        std::fs::read_to_string(repo().join("dbus/org.gpuvirt.GpuVirt1.service")).unwrap();
    assert!(service.contains("Name=org.gpuvirt.GpuVirt1"));
    assert!(service.contains("SystemdService=gpuvirtd.service"));
    let rule = std::fs::read_to_string(repo().join("udev/70-gpuvirt.rules")).unwrap();
    assert!(rule.contains("TAG+=\"systemd\""));
    assert!(rule.contains("ENV{SYSTEMD_WANTS}+=\"gpuvirtd.service\""));
    assert!(rule.contains("ATTR{class}==\"0x03*\""));
    // The policy file parses as XML the bus accepts: run a bus with it included.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>session</type><listen>unix:dir={}</listen><policy context=\"default\"><allow send_destination=\"*\"/><allow own=\"*\"/></policy><include>{}</include></busconfig>",
            dir.path().display(),
            repo().join("dbus/org.gpuvirt.GpuVirt1.conf").display()
        ),
    )
    .unwrap();
    // A bus that includes the policy starts (prints its address) only if it accepts it.
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--print-address=1", "--nofork", "--nopidfile"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.starts_with("unix:"),
        "dbus-daemon rejected the policy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The contract files are installed for strict XML consumers (gdbus-codegen, expat, polkit): they
/// must be well-formed, which a comment containing `--` once broke.
#[test]
fn contract_xml_files_are_well_formed() {
    for file in [
        "dbus/org.gpuvirt.GpuVirt1.xml",
        "dbus/org.gpuvirt.GpuVirt1.policy",
    ] {
        let path = repo().join(file);
        let out = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom as m; m.parse(sys.argv[1])",
            ])
            .arg(&path)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{file} is not well-formed XML: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
