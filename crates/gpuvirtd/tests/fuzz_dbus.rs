//! D-Bus method arguments, fuzzed against a live gpuvirtd on a private bus (simulated runbook
//! host through FUSE): hostile strings (traversal, multi-byte characters at awkward offsets,
//! huge values) and wrong argument types (`u`, `()`, `ss`, `a{sv}` with wrong variants) sent
//! to every method the Manager serves. Every call gets a typed error (never a timeout), and
//! afterwards the daemon is still running, still answers, and logged no panic.
//!
//! 256 generated strings per method by default; `GPUVIRT_FUZZ_CASES=N` (or `PROPTEST_CASES`)
//! scales up, and the run reports its executions (see `fuzz_support`). Skipped where FUSE is
//! unavailable, like the other live tests. The mutating methods are in `fuzz_mutators.rs`.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../gpuvirt-core/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use fuzz_support::Fuzz;
use gpuvirt_api as api;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use zbus::zvariant::Value;

const GPU: &str = "0000:41:00.0";
const METHODS: &[&str] = &["GetGpuByPciAddress", "GetMdevByUuid"];

/// `reply`, or a panic naming `method` and the start of the hostile string `s` after 10 s.
async fn within_10s(
    method: &str,
    s: &str,
    reply: impl std::future::Future<Output = zbus::Result<zbus::Message>>,
) -> zbus::Result<zbus::Message> {
    tokio::time::timeout(Duration::from_secs(10), reply)
        .await
        .unwrap_or_else(|_| panic!("{method}({:?}) timed out", &s[..s.len().min(40)]))
}

/// Strings a hostile caller sends. D-Bus itself forbids NUL and invalid UTF-8 in strings, so
/// those never reach the daemon.
fn hostile_strings(n: usize) -> Vec<String> {
    let mut fixed: Vec<String> = [
        "",
        "..",
        "../../etc",
        "0000:41:00.0/../../..",
        "0000:41:00.0\n",
        // 12 bytes with a two-byte character across byte 4: panicked before the fix.
        "000é41:00.0",
        "0000:41:00.0é",
        "ABCD:EF:1F.7",
        "aa618089-8b16-4d01-a136-25a0f3c7312/",
        "{aa618089-8b16-4d01-a136-25a0f3c73123}",
        "urn:uuid:aa618089-8b16-4d01-a136-25a0f3c73123",
        "aa618089_8b16_4d01_a136_25a0f3c73123",
        "-rf",
        "\u{202e}0.00:14:0000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fixed.push("a".repeat(1 << 20));
    fixed.push("0".repeat(64 * 1024) + ":41:00.0");
    let strategy = proptest::prop_oneof![
        "[0-9a-fA-F:./-]{0,40}",
        "[^\\x00]{0,24}",
        "(\\.\\./){1,6}[a-z]{0,8}",
    ];
    let mut runner = TestRunner::deterministic();
    for _ in 0..n {
        fixed.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    fixed
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.as_str().to_string(),
        other => format!("not a method error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_method_arguments_get_typed_errors() {
    if !fuse_available() {
        return;
    }
    let fuzz = Fuzz::new(file!(), "hostile_method_arguments", 256);
    let cases = fuzz.config().cases as usize;
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

    let started = Instant::now();
    let mut calls = 0usize;
    let allowed = [
        api::INVALID_ARGS_ERROR.to_string(),
        format!("{}.NoSuchDevice", api::ERROR_PREFIX),
    ];
    for s in hostile_strings(cases) {
        for method in METHODS {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                call_manager(&conn, method, &(s.as_str(),)),
            )
            .await
            .unwrap_or_else(|_| panic!("{method}({:?}) timed out", &s[..s.len().min(40)]));
            calls += 1;
            fuzz.hit();
            match reply {
                // A string that happens to name the GPU (in any accepted spelling) is fine.
                Ok(_) => assert!(
                    *method == "GetGpuByPciAddress"
                        && s.parse::<gpuvirt_core::PciAddress>().unwrap().to_string() == GPU,
                    "{method}({s:?}) succeeded"
                ),
                Err(e) => {
                    let name = error_name(&e);
                    assert!(allowed.contains(&name), "{method}: {name} for {s:?}");
                    if let zbus::Error::MethodError(_, Some(msg), _) = &e {
                        assert!(!msg.is_empty());
                        assert!(msg.len() < 512, "the error echoes the whole argument");
                    }
                }
            }
        }
        // GetObjects: the string as an interface name, and as an option's name; ListMdevs:
        // as an option's name.
        let mut option: HashMap<&str, Value<'_>> = HashMap::new();
        option.insert(s.as_str(), Value::from(true));
        let no_options: HashMap<&str, Value<'_>> = HashMap::new();
        let replies = [
            (
                "GetObjects",
                within_10s(
                    "GetObjects",
                    &s,
                    call_manager(&conn, "GetObjects", &(vec![s.as_str()], no_options)),
                )
                .await,
            ),
            (
                "GetObjects",
                within_10s(
                    "GetObjects",
                    &s,
                    call_manager(&conn, "GetObjects", &(Vec::<&str>::new(), option.clone())),
                )
                .await,
            ),
            (
                "ListMdevs",
                within_10s(
                    "ListMdevs",
                    &s,
                    call_manager(&conn, "ListMdevs", &(option,)),
                )
                .await,
            ),
        ];
        for (method, reply) in replies {
            calls += 1;
            fuzz.hit();
            let e = reply.expect_err("a hostile string is no interface and no option");
            assert_eq!(error_name(&e), api::INVALID_ARGS_ERROR, "{method}: {s:?}");
            if let zbus::Error::MethodError(_, Some(msg), _) = &e {
                assert!(msg.len() < 512, "the error echoes the whole argument");
            }
        }
    }

    // Wrong argument types: zbus refuses them before the handler runs.
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    options.insert("dry-run", Value::from("yes"));
    options.insert("force", Value::from(7u32));
    for method in METHODS {
        let replies = [
            conn.call_method(
                Some(api::BUS_NAME),
                api::MANAGER_PATH,
                Some(api::MANAGER_INTERFACE),
                *method,
                &(42u32,),
            )
            .await,
            conn.call_method(
                Some(api::BUS_NAME),
                api::MANAGER_PATH,
                Some(api::MANAGER_INTERFACE),
                *method,
                &(),
            )
            .await,
            conn.call_method(
                Some(api::BUS_NAME),
                api::MANAGER_PATH,
                Some(api::MANAGER_INTERFACE),
                *method,
                &(GPU, GPU),
            )
            .await,
            conn.call_method(
                Some(api::BUS_NAME),
                api::MANAGER_PATH,
                Some(api::MANAGER_INTERFACE),
                *method,
                &(&options,),
            )
            .await,
            conn.call_method(
                Some(api::BUS_NAME),
                api::MANAGER_PATH,
                Some(api::MANAGER_INTERFACE),
                *method,
                &(GPU, &options),
            )
            .await,
        ];
        for r in replies {
            calls += 1;
            fuzz.hit();
            let e = r.expect_err("a call with the wrong signature succeeded");
            // zbus 5 answers a body that does not deserialise with its own generic error name
            // before the handler runs; either name is a refusal, never a reply or a timeout.
            let name = error_name(&e);
            assert!(
                name == api::INVALID_ARGS_ERROR || name == "org.freedesktop.zbus.Error",
                "{method}: {name}"
            );
        }
    }
    let elapsed = started.elapsed();

    // Still alive and answering.
    let manager = api::ManagerProxy::new(&conn).await.unwrap();
    let path = manager.get_gpu_by_pci_address(GPU).await.unwrap();
    assert!(path.as_str().ends_with("0000_41_00_0"));
    assert!(
        std::path::Path::new(&format!("/proc/{}", daemon.pid())).exists(),
        "gpuvirtd exited"
    );
    let log = daemon.log();
    assert!(!log.contains("panicked"), "{log}");
    fuzz.report();
    eprintln!(
        "fuzz_dbus: {calls} calls in {:.1} s ({:.2} ms each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / calls as f64
    );
}
