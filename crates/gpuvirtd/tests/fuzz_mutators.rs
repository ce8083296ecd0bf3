//! Mutating D-Bus methods fuzzed against a live gpuvirtd (runbook V100 through FUSE, behind a
//! backend that counts every sysfs write): hostile mdev type ids, parent names and UUIDs
//! (traversal, separators, whitespace, control and multi-byte characters, 64 KiB strings) to
//! `CreateMdev`, `DefineMdev`, `StartMdev`, `StopMdev`, `UndefineMdev` and `Mdev.Remove`, and
//! `a{sv}` options with wrong variant types or unknown keys (`pid`, `uid`, `sender`, typos) to
//! every mutator. Each call is answered with InvalidArgs naming the argument or option, and the
//! simulated kernel saw no write at all: validation comes before any I/O. Calls with the wrong
//! signature are refused too (zbus names that error itself, see docs/security.md).
//!
//! `GPUVIRT_FUZZ_CASES=N` generated strings per method (default 96). Needs `/dev/fuse`.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../gpuvirt-core/tests/fuzz_support/mod.rs"]
mod fuzz_support;
#[path = "shard_support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fuzz_support::Fuzz;
use gpuvirt_api as api;
use gpuvirt_core::pathsafe;
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Tree, Uevent};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use support::*;
use zbus::zvariant::{OwnedValue, Value};

const V100: &str = "0000:41:00.0";
const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";

/// The simulated kernel, counting the writes that reach it.
struct Counting {
    kernel: Kernel,
    writes: Arc<AtomicUsize>,
}

impl Backend for Counting {
    fn tree(&self) -> &Tree {
        self.kernel.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.kernel.write(path, data)
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        self.kernel.take_uevents()
    }
}

/// Names no validator accepts: each becomes a path component if it got through.
fn hostile_names(n: usize) -> Vec<String> {
    let mut fixed: Vec<String> = [
        "",
        ".",
        "..",
        "../nvidia-300",
        "nvidia-300/../../../../etc",
        "nvidia-300/",
        "/nvidia-300",
        "nvidia-300\n/..",
        "nvidia 300/x",
        "\tnvidia-300/",
        "-nvidia-300",
        ".nvidia-300",
        "nvidia-300\u{202e}",
        "nvidïa-300",
        "nvidia-300\u{7f}",
        "..\\..\\etc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fixed.push("a".repeat(64 * 1024));
    fixed.push("../".repeat(4096));
    let strategy = proptest::prop_oneof![
        "(\\.\\./){1,8}[a-z0-9_-]{0,12}",
        "[a-z0-9_-]{0,10}[/ \\t\\n\\\\][a-z0-9_.-]{0,10}",
        "[^\\x00]{0,40}",
    ];
    let mut runner = TestRunner::deterministic();
    while fixed.len() < n + 18 {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        // Only what the validators refuse: an accepted name may legitimately be looked up.
        // (Surrounding whitespace is trimmed from a type, so " nvidia-300" is a real type.)
        if pathsafe::mdev_type(s.trim()).is_err() && pathsafe::mdev_parent(&s).is_err() {
            fixed.push(s);
        }
    }
    fixed
}

/// Texts that are no UUID at all (never empty: an empty UUID asks `CreateMdev`/`DefineMdev`
/// to generate one). The braced, URN and simple forms are UUIDs to the API: it parses them
/// into a typed value and writes the hyphenated form, so they are no path risk.
fn hostile_uuids(n: usize) -> Vec<String> {
    let mut fixed: Vec<String> = [
        " ",
        "..",
        "../aa618089-8b16-4d01-a136-25a0f3c73123",
        "aa618089-8b16-4d01-a136-25a0f3c73123/..",
        "aa618089-8b16-4d01-a136-25a0f3c7312é",
        "aa618089-8b16-4d01-a136-25a0f3c73123\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fixed.push("f".repeat(64 * 1024));
    let strategy = proptest::prop_oneof!["[0-9a-f./-]{0,40}", "[^\\x00]{0,40}"];
    let mut runner = TestRunner::deterministic();
    while fixed.len() < n + 9 {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        if !s.is_empty() && s.parse::<uuid::Uuid>().is_err() {
            fixed.push(s);
        }
    }
    fixed
}

/// Every call is answered: a hang is a failure, not a slow test.
async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("a call was not answered within 20 s")
}

fn options(pairs: Vec<(&str, Value<'static>)>) -> HashMap<String, OwnedValue> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v).unwrap()))
        .collect()
}

/// The answer must be InvalidArgs whose message names `needle`; short (no echo of a huge
/// argument). A type may also be a type *name* ("GRID V100-8C", spaces included), so an
/// unsafe type string can instead be an unknown type: any gpuvirt error, never success.
fn assert_invalid(r: Result<zbus::Message, CallErr>, needle: &str, what: &str) {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err((name, msg)) => {
            let unknown_type = needle == "type" && name.starts_with(api::ERROR_PREFIX);
            if !unknown_type {
                assert_eq!(name, api::INVALID_ARGS_ERROR, "{what}: {msg}");
                assert!(
                    msg.contains(needle),
                    "{what}: {msg:?} does not name {needle}"
                );
            }
            assert!(msg.len() < 1024, "{what}: the error echoes the argument");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mutator_arguments_are_refused_before_any_write() {
    if !fuse_available() {
        return;
    }
    let fuzz = Fuzz::new(file!(), "hostile_mutator_arguments", 96);
    let cases = fuzz.config().cases as usize;
    let mut kernel = Kernel::from_fixture(&Fixture::bundled("runbook").unwrap()).unwrap();
    kernel.load_module("vfio_pci").unwrap();
    let _ = kernel.take_uevents();
    let writes = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting {
        kernel,
        writes: writes.clone(),
    };
    let mount = SimMount::mount(Arc::new(Mutex::new(backend)), &dir.path().join("root")).unwrap();
    let socket = dir.path().join("uevent.sock");
    mount.listen_uevents(&socket).unwrap();
    let bus = Bus::start();
    let d = Gpuvirtd::start(
        &bus.address,
        mount.root(),
        &format!("sim:{}", socket.display()),
        &dir.path().join("state"),
        &[],
    )
    .await;
    let conn = bus.connect().await;
    let gpu = gpu_path(V100);
    let writes_at_start = writes.load(Ordering::SeqCst);

    // Hostile names and UUIDs in every position that becomes a path component.
    for s in hostile_names(cases) {
        let shown = &s[..s.floor_char_boundary(40)];
        fuzz.hit();
        let r = timed(call(
            &conn,
            &gpu,
            api::SHARD_PARENT_INTERFACE,
            "CreateMdev",
            &(s.as_str(), UUID, no_opts()),
        ))
        .await;
        assert_invalid(r, "type", &format!("CreateMdev type {shown:?}"));
        fuzz.hit();
        let r = timed(call(
            &conn,
            api::MANAGER_PATH,
            api::MANAGER_INTERFACE,
            "DefineMdev",
            &(s.as_str(), "nvidia-300", UUID, no_opts()),
        ))
        .await;
        assert_invalid(r, "parent", &format!("DefineMdev parent {shown:?}"));
        fuzz.hit();
        let r = timed(call(
            &conn,
            api::MANAGER_PATH,
            api::MANAGER_INTERFACE,
            "DefineMdev",
            &(V100, s.as_str(), UUID, no_opts()),
        ))
        .await;
        assert_invalid(r, "type", &format!("DefineMdev type {shown:?}"));
    }
    for s in hostile_uuids(cases) {
        let shown = &s[..s.floor_char_boundary(40)];
        fuzz.hit();
        let r = timed(call(
            &conn,
            &gpu,
            api::SHARD_PARENT_INTERFACE,
            "CreateMdev",
            &("nvidia-300", s.as_str(), no_opts()),
        ))
        .await;
        assert_invalid(r, "uuid", &format!("CreateMdev uuid {shown:?}"));
        for method in ["StartMdev", "StopMdev", "UndefineMdev"] {
            fuzz.hit();
            let r = timed(call(
                &conn,
                api::MANAGER_PATH,
                api::MANAGER_INTERFACE,
                method,
                &(s.as_str(), no_opts()),
            ))
            .await;
            assert_invalid(r, "uuid", &format!("{method} {shown:?}"));
        }
    }

    // Options: wrong variant types and unknown keys, named in the error.
    let bad_options: Vec<(HashMap<String, OwnedValue>, &str)> = vec![
        (options(vec![("dry-run", Value::from("yes"))]), "dry-run"),
        (options(vec![("dry-run", Value::U32(1))]), "dry-run"),
        (options(vec![("force", Value::from(7i32))]), "force"),
        (
            options(vec![("auth.no_user_interaction", Value::from("no"))]),
            "auth.no_user_interaction",
        ),
        (options(vec![("pid", Value::U32(1))]), "pid"),
        (options(vec![("uid", Value::U32(0))]), "uid"),
        (options(vec![("sender", Value::from(":1.0"))]), "sender"),
        (options(vec![("dryrun", Value::Bool(true))]), "dryrun"),
        (options(vec![("", Value::Bool(true))]), "''"),
        (
            options(vec![("../../etc/passwd", Value::Bool(true))]),
            "../../etc/passwd",
        ),
    ];
    for (opts, named) in &bad_options {
        let mutators: Vec<(&str, &str, &str, Result<zbus::Message, CallErr>)> = vec![
            (
                "AssignPassthrough",
                &gpu,
                api::GPU_INTERFACE,
                timed(call(
                    &conn,
                    &gpu,
                    api::GPU_INTERFACE,
                    "AssignPassthrough",
                    &(opts,),
                ))
                .await,
            ),
            (
                "ReturnToHost",
                &gpu,
                api::GPU_INTERFACE,
                timed(call(
                    &conn,
                    &gpu,
                    api::GPU_INTERFACE,
                    "ReturnToHost",
                    &(opts,),
                ))
                .await,
            ),
            (
                "CreateMdev",
                &gpu,
                api::SHARD_PARENT_INTERFACE,
                timed(call(
                    &conn,
                    &gpu,
                    api::SHARD_PARENT_INTERFACE,
                    "CreateMdev",
                    &("nvidia-300", UUID, opts),
                ))
                .await,
            ),
            (
                "DefineMdev",
                api::MANAGER_PATH,
                api::MANAGER_INTERFACE,
                timed(call(
                    &conn,
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "DefineMdev",
                    &(V100, "nvidia-300", UUID, opts),
                ))
                .await,
            ),
            (
                "StartMdev",
                api::MANAGER_PATH,
                api::MANAGER_INTERFACE,
                timed(call(
                    &conn,
                    api::MANAGER_PATH,
                    api::MANAGER_INTERFACE,
                    "StartMdev",
                    &(UUID, opts),
                ))
                .await,
            ),
        ];
        for (method, _, _, r) in mutators {
            fuzz.hit();
            // "unknown option 'pid'" or "option 'dry-run' must be a boolean".
            let needle = if *named == "''" {
                "unknown option ''".to_string()
            } else {
                format!("'{named}'")
            };
            let needle = if named.starts_with("auth.") {
                "auth.no_user_interaction".to_string()
            } else {
                needle
            };
            assert_invalid(r, &needle, &format!("{method} with {opts:?}"));
        }
    }

    // Wrong signatures on the mutators: refused (by zbus, before the handler), never a reply.
    let mut wrong_signature_names = std::collections::BTreeSet::new();
    for (path, iface, method) in [
        (gpu.as_str(), api::GPU_INTERFACE, "AssignPassthrough"),
        (gpu.as_str(), api::SHARD_PARENT_INTERFACE, "CreateMdev"),
        (api::MANAGER_PATH, api::MANAGER_INTERFACE, "DefineMdev"),
        (api::MANAGER_PATH, api::MANAGER_INTERFACE, "StartMdev"),
    ] {
        let replies = [
            timed(call(&conn, path, iface, method, &(42u32,))).await,
            timed(call(&conn, path, iface, method, &())).await,
            timed(call(
                &conn,
                path,
                iface,
                method,
                &(UUID, UUID, UUID, UUID, UUID),
            ))
            .await,
            timed(call(&conn, path, iface, method, &(no_opts(), "nvidia-300"))).await,
        ];
        for r in replies {
            fuzz.hit();
            let (name, msg) = r.expect_err("a call with the wrong signature was accepted");
            assert!(
                name == api::INVALID_ARGS_ERROR || name == "org.freedesktop.zbus.Error",
                "{method}: {name}: {msg}"
            );
            assert!(!msg.is_empty(), "{method}: {name} without a message");
            wrong_signature_names.insert(format!("{name}: {msg}"));
        }
    }
    for line in &wrong_signature_names {
        eprintln!("fuzz_mutators: wrong signature answered with {line}");
    }

    // No write reached the kernel, nothing was created, the card kept its driver.
    assert_eq!(
        writes.load(Ordering::SeqCst),
        writes_at_start,
        "a refused call wrote to sysfs"
    );
    assert_eq!(driver(mount.root(), V100).as_deref(), Some("nvidia"));
    let mdevs = support::call(
        &conn,
        api::MANAGER_PATH,
        api::MANAGER_INTERFACE,
        "GetMdevByUuid",
        &(UUID,),
    )
    .await;
    assert!(mdevs.is_err(), "an mdev was created");
    assert!(
        std::path::Path::new(&format!("/proc/{}", d.pid())).exists(),
        "gpuvirtd exited"
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
    fuzz.report();
}
