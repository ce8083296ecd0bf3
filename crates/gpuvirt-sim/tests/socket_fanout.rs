//! The seqpacket uevent socket: ordering, "only what happens after you connect", slow and dead
//! clients, in-process subscribers and socket file lifecycle. No FUSE needed.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gpuvirt_sim::socket::{Broadcaster, SocketError, UeventReader};
use gpuvirt_sim::Uevent;

const WAIT: Duration = Duration::from_secs(10);

fn event(seqnum: u64) -> Uevent {
    let mut ev = Uevent::new("change", "/devices/pci0000:40/0000:41:00.0", "pci")
        .with("MDEV_STATE", "registered");
    ev.seqnum = seqnum;
    ev
}

#[test]
fn clients_get_every_later_event_in_order_and_nothing_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uevent.sock");
    let events = Broadcaster::new();
    events.listen(&path).unwrap();
    events.publish(&[event(1)]);
    // Accepted lazily by the next publish: connect() alone must be enough to get later events.
    let mut early = UeventReader::connect(&path).unwrap();
    events.publish(&[event(2), event(3)]);
    let mut late = UeventReader::connect(&path).unwrap();
    events.publish(&[event(4)]);
    events.publish(&[]);

    let seqs = |r: &mut UeventReader, n| -> Vec<u64> {
        (0..n)
            .map(|_| r.recv_timeout(WAIT).unwrap().seqnum)
            .collect()
    };
    assert_eq!(seqs(&mut early, 3), vec![2, 3, 4]);
    assert_eq!(seqs(&mut late, 1), vec![4]);
    assert!(matches!(
        early.recv_timeout(Duration::from_millis(20)),
        Err(SocketError::TimedOut)
    ));
    let got = late.recv_timeout(Duration::from_millis(20));
    assert!(matches!(got, Err(SocketError::TimedOut)), "{got:?}");
    assert_eq!(events.client_count(), 2);
}

#[test]
fn messages_are_kernel_wire_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uevent.sock");
    let events = Broadcaster::new();
    events.listen(&path).unwrap();
    let reader = UeventReader::connect(&path).unwrap();
    let sent = event(7);
    events.publish(std::slice::from_ref(&sent));
    // Read the raw message to check the framing, not just our own parser.
    let socket = std::os::unix::net::UnixDatagram::from(reader.into_fd());
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..len], sent.to_wire().as_slice());
    assert!(buf[..len].starts_with(b"change@/devices/pci0000:40/0000:41:00.0\0ACTION=change\0"));
}

#[test]
fn a_slow_client_is_dropped_without_blocking_the_publisher() {
    const TOTAL: u64 = 20_000;
    const CAPACITY: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uevent.sock");
    let events = Arc::new(Broadcaster::with_capacity(CAPACITY));
    events.listen(&path).unwrap();
    let mut slow = UeventReader::connect(&path).unwrap();
    let mut fast = UeventReader::connect(&path).unwrap();
    events.publish(&[]);
    assert_eq!(events.client_count(), 2);

    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let fast_thread = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while let Ok(ev) = fast.recv_timeout(WAIT) {
            seqs.push(ev.seqnum);
            counter.store(seqs.len() as u64, Ordering::Release);
            if seqs.len() as u64 == TOTAL {
                break;
            }
        }
        seqs
    });

    // The publisher runs on its own thread so that a blocking publish fails the test instead of
    // hanging it. It paces itself on the fast reader only, so the fast one never falls behind
    // while the slow one, which reads nothing, must overflow.
    let (done_tx, done_rx) = mpsc::channel();
    let publisher = Arc::clone(&events);
    let pacer = Arc::clone(&received);
    std::thread::spawn(move || {
        for seq in 1..=TOTAL {
            publisher.publish(&[event(seq)]);
            if seq % 32 == 0 {
                let deadline = Instant::now() + WAIT;
                while pacer.load(Ordering::Acquire) < seq && Instant::now() < deadline {
                    std::thread::yield_now();
                }
            }
        }
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("publishing blocked on a slow client");

    let seqs = fast_thread.join().unwrap();
    assert_eq!(
        seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "fast client got everything in order"
    );
    assert_eq!(events.dropped_for_overflow(), 1);
    assert_eq!(events.client_count(), 1);

    // The slow client sees a prefix in order (empty when its writer thread had not run before
    // the queue filled), then end of stream: its cue to reconnect and rescan.
    let mut last = 0;
    loop {
        match slow.recv_timeout(WAIT) {
            Ok(ev) => {
                assert_eq!(ev.seqnum, last + 1);
                last = ev.seqnum;
            }
            Err(SocketError::Closed) => break,
            Err(e) => panic!("slow client: {e:?}"),
        }
    }
    assert!(last < TOTAL, "slow client got {last}");
}

#[test]
fn disconnected_clients_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uevent.sock");
    let events = Broadcaster::new();
    events.listen(&path).unwrap();
    let reader = UeventReader::connect(&path).unwrap();
    assert_eq!(events.client_count(), 1);
    drop(reader);
    let deadline = Instant::now() + WAIT;
    let mut seq = 0;
    while events.client_count() > 0 && Instant::now() < deadline {
        seq += 1;
        events.publish(&[event(seq)]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(events.client_count(), 0);
    assert_eq!(
        events.dropped_for_overflow(),
        0,
        "a departure is not an overflow"
    );
}

#[test]
fn in_process_subscribers_overflow_like_socket_clients() {
    let events = Broadcaster::with_capacity(4);
    let keeps_up = events.subscribe();
    let lags = events.subscribe();
    for seq in 1..=3 {
        events.publish(&[event(seq)]);
        assert_eq!(keeps_up.recv().unwrap().seqnum, seq);
    }
    events.publish(&[event(4), event(5)]);
    assert_eq!(events.dropped_for_overflow(), 1);
    let got: Vec<u64> = lags.iter().map(|e| e.seqnum).collect();
    assert_eq!(got, vec![1, 2, 3, 4], "a prefix, then disconnected");
    let got: Vec<u64> = keeps_up.try_iter().map(|e| e.seqnum).collect();
    assert_eq!(got, vec![4, 5]);
}

#[test]
fn socket_file_is_replaced_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uevent.sock");
    {
        let first = Broadcaster::new();
        first.listen(&path).unwrap();
        // A second server on a path left by an earlier one takes it over.
        let stale = Broadcaster::new();
        stale.listen(&path).unwrap();
        assert!(path.exists());
        let mut reader = UeventReader::connect(&path).unwrap();
        stale.publish(&[event(1)]);
        assert_eq!(reader.recv_timeout(WAIT).unwrap().seqnum, 1);
    }
    assert!(!path.exists(), "removed on drop");
    assert!(matches!(
        UeventReader::connect(&path),
        Err(SocketError::Connect { .. })
    ));
    // A regular file at the path is not clobbered.
    std::fs::write(&path, "not a socket").unwrap();
    assert!(matches!(
        Broadcaster::new().listen(&path),
        Err(SocketError::Listen { .. })
    ));
}
