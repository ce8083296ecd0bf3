//! The ledger follows the hardware (issue 18 point 9), through the daemon on the FUSE sim: a
//! card hot-removed while passed through has its record closed as `removed` (ledger.json
//! says so, originals kept); the card back on its host driver drops the record and there is
//! nothing to return; back on vfio-pci (early binding, as `vfio-pci ids=` does) it is
//! `assigned` again and a real return rebinds it to its original drivers. Also at start: a
//! record whose card left while no daemon watched is closed.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::path::Path;

use common::*;
use support::*;
use zbus::zvariant::Value;

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const SLOT: &str = "0000:01:00";

async fn workstation() -> (SimHost, Bus, Gpuvirtd, zbus::Connection) {
    let host = SimHost::boot("workstation");
    host.with_kernel_mut(|k| k.load_module("vfio_pci").unwrap());
    let bus = Bus::start();
    let (d, conn, _) = start_on(&host, &bus, &[]).await;
    (host, bus, d, conn)
}

/// The slot's record in `<state>/ledger.json` as JSON (`null` when there is none).
fn record(state: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(state.join("ledger.json")).unwrap_or_default();
    let ledger: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    ledger["slots"][SLOT].clone()
}

fn record_state(state: &Path) -> String {
    record(state)["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

async fn record_becomes(state: &Path, want: &str, d: &Gpuvirtd) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while record_state(state) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "record {} never became {want}\n{}",
            record(state),
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn assign(conn: &zbus::Connection, d: &Gpuvirtd) {
    let (job, _) = passthrough(conn, GPU, "AssignPassthrough", no_opts())
        .await
        .unwrap();
    let (ok, name, message) = wait_job(conn, job.as_str()).await;
    assert!(ok, "{name}: {message}\n{}", d.log());
}

async fn dry_return(conn: &zbus::Connection) -> String {
    let (job, plan) = passthrough(
        conn,
        GPU,
        "ReturnToHost",
        opts(&[("dry-run", Value::Bool(true))]),
    )
    .await
    .unwrap();
    assert_eq!(job.as_str(), "/");
    plan
}

/// Removes the card and waits until the daemon closed its record.
async fn remove_card(host: &SimHost, state: &Path, d: &Gpuvirtd) {
    host.with_kernel_mut(|k| {
        for f in [AUDIO, GPU] {
            k.hot_remove(f.parse().unwrap()).unwrap();
        }
    });
    record_becomes(state, "removed", d).await;
    let r = record(state);
    assert_eq!(r["functions"][0]["original_driver"], "nouveau", "{r}");
    assert_eq!(r["functions"][1]["original_driver"], "snd_hda_intel", "{r}");
    assert_eq!(r["removal"]["was"], "assigned", "{r}");
    assert!(r["removal"]["at"].as_u64().unwrap() > 0, "{r}");
    assert!(r["removal"]["ids"][GPU].is_string(), "{r}");
    assert!(
        d.log().contains(&format!(
            "slot {SLOT} removed while passed through; its record is kept until a card \
             returns to that slot"
        )),
        "{}",
        d.log()
    );
}

fn replug(host: &SimHost) {
    host.with_kernel_mut(|k| {
        for f in [GPU, AUDIO] {
            k.replug(f.parse().unwrap()).unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_removed_while_passed_through_and_back_on_its_host_driver() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn) = workstation().await;
    let root = host.root().to_path_buf();
    let state = host.dir.path().join("state");
    assign(&conn, &d).await;
    assert_eq!(record_state(&state), "assigned");

    remove_card(&host, &state, &d).await;
    replug(&host);
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));
    record_becomes(&state, "none", &d).await;
    assert!(
        d.log().contains("nothing to return; its record is dropped"),
        "{}",
        d.log()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let plan = loop {
        match passthrough(
            &conn,
            GPU,
            "ReturnToHost",
            opts(&[("dry-run", Value::Bool(true))]),
        )
        .await
        {
            Ok((_, plan)) => break plan,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        plan,
        format!("nothing to do: slot {SLOT} is with the host already\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_removed_while_passed_through_and_back_on_vfio_pci() {
    if !fuse_available() {
        return;
    }
    let (host, _bus, d, conn) = workstation().await;
    let root = host.root().to_path_buf();
    let state = host.dir.path().join("state");
    let ids = |a: &str| {
        let read = |attr: &str| {
            std::fs::read_to_string(root.join(format!("sys/bus/pci/devices/{a}/{attr}")))
                .unwrap()
                .trim()
                .trim_start_matches("0x")
                .to_string()
        };
        format!("{} {}", read("vendor"), read("device"))
    };
    let (gpu_ids, audio_ids) = (ids(GPU), ids(AUDIO));
    assign(&conn, &d).await;

    remove_card(&host, &state, &d).await;
    // Early binding, as `vfio-pci ids=` does: only vfio-pci claims the card when it is back.
    host.with_kernel_mut(|k| {
        k.unload_module("nouveau").unwrap();
        k.unload_module("snd_hda_intel").unwrap();
        for i in [&gpu_ids, &audio_ids] {
            k.write_str("sys/bus/pci/drivers/vfio-pci/new_id", i)
                .unwrap();
        }
    });
    replug(&host);
    assert_eq!(driver(&root, GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("vfio-pci"));
    record_becomes(&state, "assigned", &d).await;
    let r = record(&state);
    assert!(r.get("removal").is_none(), "{r}");
    assert_eq!(r["functions"][0]["original_driver"], "nouveau", "{r}");
    assert!(
        d.log().contains("the card came back on vfio-pci"),
        "{}",
        d.log()
    );

    host.with_kernel_mut(|k| {
        k.load_module("nouveau").unwrap();
        k.load_module("snd_hda_intel").unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let plan = loop {
        match passthrough(
            &conn,
            GPU,
            "ReturnToHost",
            opts(&[("dry-run", Value::Bool(true))]),
        )
        .await
        {
            Ok((_, plan)) => break plan,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        plan.contains(&format!("write {GPU} to sys/bus/pci/drivers/nouveau/bind")),
        "{plan}"
    );
    let (job, _) = passthrough(&conn, GPU, "ReturnToHost", no_opts())
        .await
        .unwrap();
    let (ok, name, message) = wait_job(&conn, job.as_str()).await;
    assert!(ok, "{name}: {message}\n{}", d.log());
    assert_eq!(driver(&root, GPU).as_deref(), Some("nouveau"));
    assert_eq!(driver(&root, AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(record_state(&state), "none");
    assert!(dry_return(&conn).await.starts_with("nothing to do"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_removed_while_no_daemon_watched_is_closed_at_start() {
    if !fuse_available() {
        return;
    }
    let (host, bus, mut d, conn) = workstation().await;
    let state = host.dir.path().join("state");
    assign(&conn, &d).await;
    d.kill();
    host.with_kernel_mut(|k| {
        for f in [AUDIO, GPU] {
            k.hot_remove(f.parse().unwrap()).unwrap();
        }
    });
    assert_eq!(record_state(&state), "assigned");
    let (d, _conn, _) = start_on(&host, &bus, &[]).await;
    assert_eq!(record_state(&state), "removed", "{}", d.log());
}
