//! Authorization matrix on a private bus: a second uid (`nobody`, via `setpriv`) is denied
//! with `org.freedesktop.DBus.Error.AccessDenied` for every mutating method while polkit is
//! absent (uid 0 is allowed) and while polkit says no, and gets through once python-dbusmock's
//! polkitd template allows the actions. Once polkit is known to be absent, the daemon stops
//! asking it (a bus monitor counts the CheckAuthorization calls) until its name has an owner.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use common::*;
use support::*;
use zbus::zvariant::Value;

const V100: &str = "0000:41:00.0";
const GPU_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const U1: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";
const U2: &str = "b6e2ae8c-3f1c-4b7a-9b4d-3f2f3a1e8c01";
const U1_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs/aa618089_8b16_4d01_a136_25a0f3c73123";

/// A caller as uid 65534: one method call with dbus-python; prints OK or the error name.
const CLIENT: &str = r#"
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
obj = bus.get_object("org.gpuvirt.GpuVirt1", sys.argv[2], introspect=False)
args = [dbus.String(a) for a in sys.argv[5:]] + [dbus.Dictionary({}, signature="sv")]
try:
    obj.get_dbus_method(sys.argv[4], sys.argv[3])(*args)
    print("OK")
except dbus.exceptions.DBusException as e:
    print(e.get_dbus_name() + " " + str(e.get_dbus_message()))
"#;

/// A `Can*` query as uid 65534: prints the answer or the error name.
const CAN_CLIENT: &str = r#"
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
obj = bus.get_object("org.gpuvirt.GpuVirt1", "/org/gpuvirt/GpuVirt1/Manager", introspect=False)
try:
    print(obj.get_dbus_method(sys.argv[2], "org.gpuvirt.GpuVirt1.Manager")())
except dbus.exceptions.DBusException as e:
    print(e.get_dbus_name() + " " + str(e.get_dbus_message()))
"#;

/// The three `Can*` answers for uid 65534: passthrough, shard, policy.
fn can_as_nobody(address: &str) -> [String; 3] {
    ["CanPassthrough", "CanShard", "CanManagePolicy"].map(|method| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", CAN_CLIENT, address, method])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// The three `Can*` answers for this test's own connection (root).
async fn can_as(conn: &zbus::Connection) -> [String; 3] {
    let mut answers = [String::new(), String::new(), String::new()];
    for (answer, method) in
        answers
            .iter_mut()
            .zip(["CanPassthrough", "CanShard", "CanManagePolicy"])
    {
        let reply = conn
            .call_method(
                Some("org.gpuvirt.GpuVirt1"),
                "/org/gpuvirt/GpuVirt1/Manager",
                Some("org.gpuvirt.GpuVirt1.Manager"),
                method,
                &(),
            )
            .await
            .unwrap();
        *answer = reply.body().deserialize::<String>().unwrap();
    }
    answers
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn as_nobody(address: &str, path: &str, iface: &str, method: &str, args: &[&str]) -> String {
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
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !text.is_empty(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Every mutating method with arguments that are valid and not a no-op at that moment.
fn matrix() -> Vec<(&'static str, &'static str, &'static str, Vec<&'static str>)> {
    vec![
        (GPU_PATH, "Gpu", "ReturnToHost", vec![]),
        (
            GPU_PATH,
            "ShardParent",
            "CreateMdev",
            vec!["nvidia-300", ""],
        ),
        (U1_PATH, "Mdev", "Remove", vec![]),
        (
            "/org/gpuvirt/GpuVirt1/Manager",
            "Manager",
            "DefineMdev",
            vec![V100, "nvidia-300", ""],
        ),
        (
            "/org/gpuvirt/GpuVirt1/Manager",
            "Manager",
            "ImportMdevDefinition",
            vec![
                V100,
                "",
                "{\"mdev_type\": \"nvidia-300\", \"start\": \"manual\", \"attrs\": []}",
            ],
        ),
        (
            "/org/gpuvirt/GpuVirt1/Manager",
            "Manager",
            "UndefineMdev",
            vec![U2],
        ),
        (
            "/org/gpuvirt/GpuVirt1/Manager",
            "Manager",
            "StartMdev",
            vec![U2],
        ),
        (
            "/org/gpuvirt/GpuVirt1/Manager",
            "Manager",
            "StopMdev",
            vec![U1],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_callers_are_denied_until_polkit_allows() {
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
    // A bus any uid may connect to, in a directory nobody can enter.
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

    // Root (this test) is allowed without polkit: set up the objects the matrix needs.
    let (job, _) = passthrough(&conn, V100, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(ok, "{name}: {message}\n{}", d.log());
    call(
        &conn,
        GPU_PATH,
        "org.gpuvirt.GpuVirt1.ShardParent",
        "CreateMdev",
        &("nvidia-300", U1, no_opts()),
    )
    .await
    .unwrap_err();
    // A card on vfio-pci offers no mdev types; return it and set up the mdevs instead.
    let (job, _) = passthrough(&conn, V100, "ReturnToHost", no_opts())
        .await
        .unwrap();
    assert!(wait_job(&conn, job.as_str()).await.0);
    call(
        &conn,
        GPU_PATH,
        "org.gpuvirt.GpuVirt1.ShardParent",
        "CreateMdev",
        &("nvidia-300", U1, no_opts()),
    )
    .await
    .unwrap();
    call(
        &conn,
        "/org/gpuvirt/GpuVirt1/Manager",
        "org.gpuvirt.GpuVirt1.Manager",
        "DefineMdev",
        &(
            V100,
            "nvidia-300",
            U2,
            opts(&[("auto", Value::Bool(false))]),
        ),
    )
    .await
    .unwrap();

    // Without polkit: nobody is denied everything (AssignPassthrough included), and the
    // daemon, which found polkit absent during the set-up above, does not ask it again.
    let asked = count_polkit_calls(&address).await;
    let mut cases = matrix();
    cases.insert(0, (GPU_PATH, "Gpu", "AssignPassthrough", vec![]));
    cases.retain(|c| c.2 != "ReturnToHost"); // with the host now: a no-op, answered before polkit
    for (path, iface, method, args) in &cases {
        let r = as_nobody(&address, path, iface, method, args);
        assert!(
            r.starts_with("org.freedesktop.DBus.Error.AccessDenied"),
            "{method} without polkit: {r}"
        );
        assert!(r.contains("only root"), "{r}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "CheckAuthorization calls while polkit is known to be absent"
    );
    // The Can* queries say the same before anyone tries, and ask polkit nothing either.
    assert_eq!(can_as_nobody(&address), ["no", "no", "no"]);
    assert_eq!(can_as(&conn).await, ["yes", "yes", "yes"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "CheckAuthorization from Can*"
    );
    // Reads stay open, and validation comes before authorization.
    let r = as_nobody(
        &address,
        GPU_PATH,
        "ShardParent",
        "CreateMdev",
        &["nvidia-300", "junk"],
    );
    assert!(
        r.starts_with("org.freedesktop.DBus.Error.InvalidArgs"),
        "{r}"
    );

    // polkit present, saying no.
    let mut mock = Proc(
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
    for (path, iface, method, args) in &cases {
        let r = as_nobody(&address, path, iface, method, args);
        assert!(
            r.starts_with("org.freedesktop.DBus.Error.AccessDenied"),
            "{method} with polkit saying no: {r}"
        );
        assert!(r.contains("polkit does not allow"), "{r}");
    }
    assert_eq!(can_as_nobody(&address), ["no", "no", "no"]);
    // The monitor sees polkit asked again once it is there (so the zero above counts).
    assert!(
        asked.load(Ordering::SeqCst) >= cases.len(),
        "CheckAuthorization calls with polkit present: {}",
        asked.load(Ordering::SeqCst)
    );

    // polkit says yes: every call gets through authorization.
    conn.call_method(
        Some("org.freedesktop.PolicyKit1"),
        "/org/freedesktop/PolicyKit1/Authority",
        Some("org.freedesktop.DBus.Mock"),
        "SetAllowed",
        &(vec![
            "org.gpuvirt.GpuVirt1.passthrough",
            "org.gpuvirt.GpuVirt1.shard",
        ],),
    )
    .await
    .unwrap();
    for (path, iface, method, args) in matrix() {
        let r = as_nobody(&address, path, iface, method, &args);
        assert!(
            !r.contains("AccessDenied"),
            "{method} allowed by polkit: {r}"
        );
    }
    // Can* follows polkit per action: the policy action was not allowed.
    assert_eq!(can_as_nobody(&address), ["yes", "yes", "no"]);
    // polkit would ask for a password (auth_admin): `challenge`, and no prompt is started.
    conn.call_method(
        Some("org.freedesktop.PolicyKit1"),
        "/org/freedesktop/PolicyKit1/Authority",
        Some("org.freedesktop.DBus.Mock"),
        "AddMethod",
        &(
            "org.freedesktop.PolicyKit1.Authority",
            "CheckAuthorization",
            "(sa{sv})sa{ss}us",
            "(bba{ss})",
            "ret = (False, args[3] == 0, {})",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        can_as_nobody(&address),
        ["challenge", "challenge", "challenge"]
    );
}

/// Counts, from now on, the CheckAuthorization calls anyone sends on the bus at `address` (a
/// monitor connection, kept by its counting task).
async fn count_polkit_calls(address: &str) -> Arc<AtomicUsize> {
    let monitor = zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::MethodCall)
        .member("CheckAuthorization")
        .unwrap()
        .build();
    zbus::fdo::MonitoringProxy::new(&monitor)
        .await
        .unwrap()
        .become_monitor(&[rule], 0)
        .await
        .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let mut messages = zbus::MessageStream::from(&monitor);
    tokio::spawn(async move {
        let _keep = &monitor;
        while let Some(Ok(m)) = messages.next().await {
            if m.header()
                .member()
                .is_some_and(|n| n == "CheckAuthorization")
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    count
}
