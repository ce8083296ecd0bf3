//! The hook with whole cards, on the simulated workstation host (a GeForce at 01:00.0 with its
//! HDMI audio at 01:00.1, on their host drivers): a card gpuvirt does not manage and libvirt
//! does not either (`managed='no'`) fails the start with the reason and the way out; with
//! `managed='yes'` it is libvirt's to detach, and the hook lets the start go on.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_on_its_host_driver_is_refused_unless_libvirt_manages_it() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    let bus = Bus::start();
    let d = Daemon::start(&bus, &host, None).await;
    let state = host.hook_state();
    let both = |managed| {
        format!(
            "{}\n{}",
            pci_hostdev("0000:01:00.0", managed),
            pci_hostdev("0000:01:00.1", managed)
        )
    };
    let xml = domain_xml("gamer", &both(false));
    let run = run_hook(
        &bus.address,
        &state,
        ["gamer", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}\n{}", d.log());
    for needle in [
        "domain gamer cannot start",
        "0000:01:00.0 is not on vfio-pci (0000:01:00.0 on nouveau, 0000:01:00.1 on snd_hda_intel)",
        "leaves it unmanaged",
        "gpuvirtctl passthrough 0000:01:00.0",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} missing: {run:?}");
    }
    assert_eq!(host.driver("0000:01:00.0"), "nouveau", "nothing rebound");

    let xml = domain_xml("gamer", &both(true));
    let run = run_hook(
        &bus.address,
        &state,
        ["gamer", "prepare", "begin"],
        &xml,
        &[],
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert_eq!(
        host.driver("0000:01:00.0"),
        "nouveau",
        "libvirt's to detach, not the hook's"
    );
    assert!(!state.exists(), "nothing recorded");
}
