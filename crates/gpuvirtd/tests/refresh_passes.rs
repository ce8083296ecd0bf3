//! One manual mutation, one read-back: the uevents a `CreateMdev` or `Remove` causes (the
//! mdev's `add`/`remove`, its vfio group and device nodes, `bind`/`unbind`) arrive while its
//! write is in flight; they are held and read in the operation's own refresh, so the caller
//! waits for one refresh pass, not for a pass of the events and then the refresh repeating
//! it. Counted from the daemon's debug log (one "inventory updated" line per pass). Needs
//! `/dev/fuse` and root; skips with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "shard_support/mod.rs"]
mod support;

use std::time::Duration;

use common::{exported, fuse_available, Bus, SimHost};
use gpuvirt_api as api;
use support::{call, gpu_path, no_opts, start_on, Gpuvirtd};

const V100: &str = "0000:41:00.0";
const UUID: &str = "aa618089-8b16-4d01-a136-25a0f3c73123";

fn passes(log: &str) -> usize {
    log.matches("inventory updated").count()
}

/// Waits until no pass has started for `quiet`, then returns the count.
async fn settled_passes(d: &Gpuvirtd, quiet: Duration) -> usize {
    let mut last = passes(&d.log());
    loop {
        tokio::time::sleep(quiet).await;
        let now = passes(&d.log());
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_and_a_remove_each_cost_one_refresh_pass() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let (d, conn, _) = start_on(&host, &bus, &[]).await;
    // A pass after the next uevent costs more than HOLD_LIMIT only on a machine this loaded.
    let quiet = Duration::from_millis(400);
    let before = settled_passes(&d, quiet).await;

    call(
        &conn,
        &gpu_path(V100),
        api::SHARD_PARENT_INTERFACE,
        "CreateMdev",
        &("nvidia-300", UUID, no_opts()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    // The reply comes once the tree shows the device.
    let uuid: uuid::Uuid = UUID.parse().unwrap();
    assert!(exported(&conn)
        .await
        .contains_key(&api::mdev_path(&uuid).to_string()));
    let created = settled_passes(&d, quiet).await;
    assert_eq!(
        created - before,
        1,
        "CreateMdev took {} refresh passes\n{}",
        created - before,
        d.log()
    );

    call(
        &conn,
        api::mdev_path(&uuid).as_str(),
        api::MDEV_INTERFACE,
        "Remove",
        &(no_opts(),),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert!(!exported(&conn)
        .await
        .contains_key(&api::mdev_path(&uuid).to_string()));
    let removed = settled_passes(&d, quiet).await;
    assert_eq!(
        removed - created,
        1,
        "Remove took {} refresh passes\n{}",
        removed - created,
        d.log()
    );
}
