//! One manual mutation, one read-back: the uevents a `CreateMdev` or `Remove` causes (the
//! mdev's `add`/`remove`, its vfio group and device nodes, `bind`/`unbind`) arrive while its
//! write is in flight; they are held and read in the operation's own refresh, so the caller
//! waits for one refresh pass, not for a pass of the events and then the refresh repeating
//! it. Counted from the daemon's debug log: the "inventory updated" lines (one per pass) before
//! the runner's "operation ran" line (logged when the refresh has answered). Events the
//! simulator delivers only after the write returned (its socket writer is a thread of its own)
//! are read after the reply, as udev's are on a real host, and cost the caller nothing, so
//! passes after the reply are not counted. Needs `/dev/fuse` and root; skips with a message
//! otherwise.

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

/// The passes in `log` from byte `mark` up to the first "operation ran" line after it: what
/// the caller of the operation started at `mark` waited for.
fn passes_before_reply(log: &str, mark: usize) -> usize {
    let tail = &log[mark..];
    let ran = tail
        .find("operation ran")
        .unwrap_or_else(|| panic!("no \"operation ran\" line after the call\n{tail}"));
    passes(&tail[..ran])
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
    settled_passes(&d, quiet).await;
    let mark = d.log().len();

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
    settled_passes(&d, quiet).await;
    let log = d.log();
    let created = passes_before_reply(&log, mark);
    assert_eq!(
        created, 1,
        "CreateMdev waited for {created} refresh passes\n{log}"
    );
    let mark = log.len();

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
    settled_passes(&d, quiet).await;
    let log = d.log();
    let removed = passes_before_reply(&log, mark);
    assert_eq!(
        removed, 1,
        "Remove waited for {removed} refresh passes\n{log}"
    );
}
