//! Impersonation: an unprivileged caller (uid 65534 via `setpriv`) on a real `dbus-daemon`
//! cannot act as someone else by naming them in its options (`pid`, `uid`, `subject`,
//! `sender`, polkit-style keys): each is refused with InvalidArgs naming the option, before
//! polkit is asked. The polkit subject gpuvirtd sends is the caller's own unique bus name as the
//! bus stamped it on the message, asserted from what python-dbusmock's polkitd template
//! received, and never the name the caller claimed.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;
use zbus::zvariant::OwnedValue;

const V100: &str = "0000:41:00.0";
const GPU_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const MANAGER_PATH: &str = "/org/gpuvirt/GpuVirt1/Manager";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";

/// One call as uid 65534 with dbus-python. argv: address path interface method args-json
/// options-json, options as {"key": ["signature", value]}. Prints the caller's unique name on
/// the first line, then OK or the error name and message.
const CLIENT: &str = r#"
import sys, json, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
print(bus.get_unique_name())
obj = bus.get_object("org.gpuvirt.GpuVirt1", sys.argv[2], introspect=False)
make = {"s": dbus.String, "u": dbus.UInt32, "i": dbus.Int32, "b": dbus.Boolean,
        "o": dbus.ObjectPath,
        "(sa{sv})": lambda v: dbus.Struct((v[0], dbus.Dictionary(
            {k: dbus.UInt32(x) if isinstance(x, int) else dbus.String(x) for k, x in v[1].items()},
            signature="sv")), signature="sa{sv}")}
opts = {k: make[t](v) for k, (t, v) in json.loads(sys.argv[6]).items()}
args = [dbus.String(a) for a in json.loads(sys.argv[5])] + [dbus.Dictionary(opts, signature="sv")]
try:
    obj.get_dbus_method(sys.argv[4], sys.argv[3])(*args)
    print("OK")
except dbus.exceptions.DBusException as e:
    print(e.get_dbus_name() + " " + str(e.get_dbus_message()))
"#;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (caller's unique name, outcome line).
fn as_nobody(
    address: &str,
    path: &str,
    iface: &str,
    method: &str,
    args: &[&str],
    options: &str,
) -> (String, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            CLIENT,
        ])
        .args([
            address,
            path,
            &format!("org.gpuvirt.GpuVirt1.{iface}"),
            method,
            &serde_json::to_string(args).unwrap(),
            options,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let (Some(name), Some(outcome)) = (lines.next(), lines.next()) else {
        panic!("client failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    (name.to_string(), outcome.to_string())
}

/// The subjects of every `CheckAuthorization` the mock polkitd received, as
/// (kind, name detail, action).
async fn polkit_subjects(conn: &zbus::Connection) -> Vec<(String, String, String)> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            POLKIT_PATH,
            Some("org.freedesktop.DBus.Mock"),
            "GetMethodCalls",
            &("CheckAuthorization",),
        )
        .await
        .unwrap();
    let calls: Vec<(u64, Vec<OwnedValue>)> = reply.body().deserialize().unwrap();
    calls
        .into_iter()
        .map(|(_, args)| {
            let (kind, details): (String, std::collections::HashMap<String, OwnedValue>) =
                args[0].clone().try_into().unwrap();
            let name = details
                .get("name")
                .map(|v| String::try_from(v.clone()).unwrap())
                .unwrap_or_default();
            let action = String::try_from(args[1].clone()).unwrap();
            (kind, name, action)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_cannot_name_another_subject_and_polkit_sees_the_caller() {
    if !fuse_available() {
        return;
    }
    let have_dbusmock = Command::new("/usr/bin/python3")
        .args(["-c", "import dbusmock, dbus"])
        .status()
        .unwrap()
        .success();
    if !have_dbusmock {
        eprintln!("SKIP: needs python3-dbusmock (scripts/setup.sh installs it)");
        return;
    }
    let host = SimHost::boot("runbook");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let busdir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(busdir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = busdir.path().join("bus");
    let conf = busdir.path().join("bus.conf");
    std::fs::write(&conf, format!(r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow send_destination="*" eavesdrop="true"/><allow receive_sender="*"/><allow eavesdrop="true"/><allow own="*"/></policy></busconfig>"#, socket.display())).unwrap();
    let _bus = Proc(
        Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    // Listening, not only bound: the socket file exists a moment before connect works.
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let address = format!("unix:path={}", socket.display());
    let d = Gpuvirtd::start(
        &address,
        host.root(),
        &format!("sim:{}", host.socket.display()),
        &host.dir.path().join("state"),
        &[],
    )
    .await;
    let conn = zbus::connection::Builder::address(address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let root_name = conn.unique_name().unwrap().to_string();
    let daemon_name = zbus::fdo::DBusProxy::new(&conn)
        .await
        .unwrap()
        .get_name_owner("org.gpuvirt.GpuVirt1".try_into().unwrap())
        .await
        .unwrap()
        .to_string();

    // polkit (the mock) allows only the passthrough action, so a shard call by nobody is
    // denied unless gpuvirtd were fooled into asking about someone else.
    let mock = Proc(
        Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--session", "--template", "polkitd"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut mock = mock;
    while !dbus
        .name_has_owner("org.freedesktop.PolicyKit1".try_into().unwrap())
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "dbusmock's polkitd never came up"
        );
        assert!(mock.0.try_wait().unwrap().is_none(), "dbusmock exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Options naming another subject: root's pid and uid, the daemon's and this test's bus
    // names, a polkit subject struct, polkit's own detail keys.
    let forged: Vec<(&str, String)> = vec![
        ("pid", r#"{"pid": ["u", 1]}"#.to_string()),
        ("uid", r#"{"uid": ["u", 0]}"#.to_string()),
        ("uid", r#"{"uid": ["i", 0]}"#.to_string()),
        ("sender", format!(r#"{{"sender": ["s", "{root_name}"]}}"#)),
        ("sender", format!(r#"{{"sender": ["s", "{daemon_name}"]}}"#)),
        (
            "subject",
            format!(
                r#"{{"subject": ["(sa{{sv}})", ["system-bus-name", {{"name": "{root_name}"}}]]}}"#
            ),
        ),
        (
            "subject",
            r#"{"subject": ["(sa{sv})", ["unix-process", {"pid": 1, "start-time": 0}]]}"#
                .to_string(),
        ),
        (
            "polkit.subject-pid",
            r#"{"polkit.subject-pid": ["u", 1]}"#.to_string(),
        ),
        ("caller", format!(r#"{{"caller": ["s", "{root_name}"]}}"#)),
    ];
    let methods: [(&str, &str, &str, Vec<&str>); 4] = [
        (GPU_PATH, "Gpu", "AssignPassthrough", vec![]),
        (
            GPU_PATH,
            "ShardParent",
            "CreateMdev",
            vec!["nvidia-300", ""],
        ),
        (
            MANAGER_PATH,
            "Manager",
            "DefineMdev",
            vec![V100, "nvidia-300", ""],
        ),
        (
            MANAGER_PATH,
            "Manager",
            "StartMdev",
            vec!["aa618089-8b16-4d01-a136-25a0f3c73123"],
        ),
    ];
    for (path, iface, method, args) in &methods {
        for (key, options) in &forged {
            let (_, r) = as_nobody(&address, path, iface, method, args, options);
            assert!(
                r.starts_with("org.freedesktop.DBus.Error.InvalidArgs"),
                "{method} with {options}: {r}"
            );
            assert!(r.contains(&format!("unknown option '{key}'")), "{r}");
        }
    }
    // Refused before authorization: polkit was never asked.
    assert_eq!(polkit_subjects(&conn).await, vec![], "{}", d.log());
    // Nothing changed hands.
    assert_eq!(driver(host.root(), V100).as_deref(), Some("nvidia"));

    // A well-formed shard call by nobody: polkit is asked about nobody's own unique name, and
    // says no (the shard action is not allowed).
    conn.call_method(
        Some("org.freedesktop.PolicyKit1"),
        POLKIT_PATH,
        Some("org.freedesktop.DBus.Mock"),
        "SetAllowed",
        &(vec!["org.gpuvirt.GpuVirt1.passthrough"],),
    )
    .await
    .unwrap();
    let (nobody, r) = as_nobody(
        &address,
        GPU_PATH,
        "ShardParent",
        "CreateMdev",
        &["nvidia-300", ""],
        "{}",
    );
    assert!(
        r.starts_with("org.freedesktop.DBus.Error.AccessDenied"),
        "{r}"
    );
    assert!(r.contains(&nobody), "the denial names the caller: {r}");
    let subjects = polkit_subjects(&conn).await;
    assert_eq!(
        subjects,
        vec![(
            "system-bus-name".to_string(),
            nobody.clone(),
            "org.gpuvirt.GpuVirt1.shard".to_string()
        )]
    );
    assert_ne!(nobody, root_name);
    assert_ne!(nobody, daemon_name);

    // An allowed action: the passthrough goes through, and the subject is again the
    // caller (a new connection, a new unique name), never the daemon or root.
    let (nobody2, r) = as_nobody(&address, GPU_PATH, "Gpu", "AssignPassthrough", &[], "{}");
    assert!(!r.contains("AccessDenied"), "{r}");
    let subjects = polkit_subjects(&conn).await;
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert_eq!(
        subjects[1],
        (
            "system-bus-name".to_string(),
            nobody2.clone(),
            "org.gpuvirt.GpuVirt1.passthrough".to_string()
        )
    );
    for (kind, name, _) in &subjects {
        assert_eq!(kind, "system-bus-name");
        assert!(name != &root_name && name != &daemon_name, "{subjects:?}");
    }
    // The allowed passthrough really ran, as a job, on the caller's authority.
    eventually("the V100 on vfio-pci", || {
        driver(host.root(), V100).as_deref() == Some("vfio-pci")
    })
    .await;
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}
