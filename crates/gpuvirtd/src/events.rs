//! Kernel device events: one owned type fed by the udev monitor or the simulated kernel's
//! socket, and the mapping from an event (or a write of ours) to what must be re-read.
//! The bottom layer of the daemon: may import only gpuvirt-core.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuvirt_core::pathsafe::is_safe_component;
use gpuvirt_core::PciAddress;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use uuid::Uuid;

/// One uevent, owned, whatever its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub action: String,
    /// Relative to `/sys`, starting with `/`.
    pub devpath: String,
    pub subsystem: String,
    /// The event's own `DRIVER` property: the kernel sets it on `bind` only. It is never
    /// re-read from sysfs here, where it may already name the next driver.
    pub driver: Option<String>,
    /// `MDEV_STATE` (`registered`/`unregistered`) on mdev parents' `change` events.
    pub mdev_state: Option<String>,
    pub seqnum: Option<u64>,
}

/// What an event source hands the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMessage {
    Event(KernelEvent),
    /// Events may have been lost (overflow, reconnect): re-read everything.
    Resync(&'static str),
}

/// What to re-read; mirrors the core scanner's `RefreshTarget`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Pci(PciAddress),
    Mdev(Uuid),
    MdevParent(String),
    /// An mdev of this parent was created or removed: only its instance counts changed.
    MdevInstances(String),
    IommuGroup(u32),
    Modules,
    All,
}

/// What creating, starting or removing `uuid` on `parent` changes: the parent's instance
/// counts and the mdev itself.
pub fn mdev_targets(parent: &str, uuid: Uuid) -> Vec<Target> {
    vec![
        Target::MdevInstances(parent.to_string()),
        Target::Mdev(uuid),
    ]
}

/// Parses the kernel netlink wire form `ACTION@DEVPATH\0KEY=VALUE\0...`; `None` if malformed.
pub fn parse_wire(buf: &[u8]) -> Option<KernelEvent> {
    let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
    let header = std::str::from_utf8(fields.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    let mut ev = KernelEvent {
        action: action.to_owned(),
        devpath: devpath.to_owned(),
        subsystem: String::new(),
        driver: None,
        mdev_state: None,
        seqnum: None,
    };
    for field in fields {
        let field = std::str::from_utf8(field).ok()?;
        let (key, value) = field.split_once('=')?;
        match key {
            "ACTION" if value != action => return None,
            "DEVPATH" if value != devpath => return None,
            "SUBSYSTEM" => ev.subsystem = value.to_owned(),
            "DRIVER" => ev.driver = Some(value.to_owned()),
            "MDEV_STATE" => ev.mdev_state = Some(value.to_owned()),
            "SEQNUM" => ev.seqnum = value.parse().ok(),
            _ => {}
        }
    }
    if ev.subsystem.is_empty() || !ev.devpath.starts_with('/') {
        return None;
    }
    Some(ev)
}

/// What an event makes stale. Anything not understood maps to [`Target::All`].
pub fn targets(ev: &KernelEvent) -> Vec<Target> {
    let name = ev.devpath.rsplit('/').next().unwrap_or_default();
    let parent_name = ev
        .devpath
        .rsplit('/')
        .nth(1)
        .filter(|p| is_safe_component(p))
        .map(str::to_owned);
    if ev.mdev_state.is_some() {
        // The name becomes `/sys/class/mdev_bus/<name>`: one that is not a plain component
        // (`..`, empty) is not a parent the kernel announced, so read everything instead.
        if !is_safe_component(name) {
            return vec![Target::All];
        }
        // A parent (un)registering with the mdev core: its types appear or vanish.
        let mut out = vec![Target::MdevParent(name.to_owned())];
        out.extend(name.parse().ok().map(Target::Pci));
        return out;
    }
    match ev.subsystem.as_str() {
        "pci" => match name.parse::<PciAddress>() {
            Ok(address) => vec![Target::Pci(address)],
            Err(_) => vec![Target::All],
        },
        "mdev" => match name.parse::<Uuid>() {
            // The parent's available_instances change with every create/remove (only they:
            // its types' names and APIs stay). A bind or unbind changes only the mdev:
            // re-reading the parent then is the most expensive part of the pass (one `add`
            // is followed by a `bind`).
            Ok(uuid) => {
                let mut out = vec![Target::Mdev(uuid)];
                if matches!(ev.action.as_str(), "add" | "remove") {
                    out.extend(parent_name.map(Target::MdevInstances));
                }
                out
            }
            Err(_) => vec![Target::All],
        },
        "vfio" => match name.parse::<u32>() {
            Ok(group) => vec![Target::IommuGroup(group)],
            // /dev/vfio/vfio itself: the module came or went.
            Err(_) => vec![Target::Modules],
        },
        "module" => match name {
            // mdev's class directory exists only while mdev.ko is loaded.
            "mdev" => vec![Target::All],
            _ => vec![Target::Modules],
        },
        _ => match nearest_device_ancestor(&ev.devpath) {
            // drm/sound/... children of a PCI device: the device's own state may change.
            Some(Ancestor::Pci(address)) => vec![Target::Pci(address)],
            // A child of an mdev (its `vfio-dev/vfioN` node, made with every vfio mdev on
            // kernels since 6.0): only the mdev. Re-reading the parent card instead, all its
            // types' names and descriptions included, was most of one CreateMdev's refresh.
            Some(Ancestor::Mdev(uuid)) => vec![Target::Mdev(uuid)],
            None => vec![Target::All],
        },
    }
}

/// The device an event's child node belongs to.
#[derive(Debug, PartialEq, Eq)]
enum Ancestor {
    Pci(PciAddress),
    Mdev(Uuid),
}

/// The nearest PCI function or mdev above the event's own node.
fn nearest_device_ancestor(devpath: &str) -> Option<Ancestor> {
    devpath.rsplit('/').skip(1).find_map(|part| {
        if let Ok(address) = part.parse::<PciAddress>() {
            Some(Ancestor::Pci(address))
        } else {
            // Only the hyphenated form: sysfs names mdevs by it.
            (part.len() == 36)
                .then(|| part.parse::<Uuid>().ok())
                .flatten()
                .map(Ancestor::Mdev)
        }
    })
}

/// Why an event source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to the simulated kernel's uevent socket {}", path.display())]
    SimConnect {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open the udev monitor")]
    Udev(#[source] std::io::Error),
    #[error("cannot register the event socket with tokio")]
    Register(#[source] std::io::Error),
}

/// Forwards messages to the actor; on a full queue drops events and owes a resync instead,
/// so a burst never blocks the reader (the kernel's queue would overflow meanwhile).
#[derive(Debug)]
struct Forwarder {
    tx: mpsc::Sender<SourceMessage>,
    owes_resync: bool,
}

impl Forwarder {
    /// Once the source is drained, waits for room to deliver an owed resync: otherwise a burst
    /// that overflowed and then stopped would leave its last events lost until the next one.
    /// False when the actor is gone.
    async fn flush(&mut self) -> bool {
        if self.owes_resync {
            if self
                .tx
                .send(SourceMessage::Resync("event queue overflow"))
                .await
                .is_err()
            {
                return false;
            }
            self.owes_resync = false;
        }
        true
    }

    /// False when the actor is gone.
    fn send(&mut self, msg: SourceMessage) -> bool {
        if self.owes_resync {
            match self
                .tx
                .try_send(SourceMessage::Resync("event queue overflow"))
            {
                Ok(()) => self.owes_resync = false,
                Err(mpsc::error::TrySendError::Full(_)) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.owes_resync = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Registers an owned descriptor with tokio.
///
/// `with_interest` is deprecated for I/O safety because a borrowed descriptor could be closed
/// while registered; here the `AsyncFd` owns the value (an `OwnedFd` or the udev monitor), so
/// that cannot happen, and the safe replacement is `unsafe`, which this workspace denies.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(inner, Interest::READABLE)
}

fn connect_seqpacket(path: &Path) -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(fd)
}

/// Connects to the simulated kernel's uevent socket now (so nothing emitted after this call
/// is missed) and forwards its events from a task. On disconnect it reconnects and asks for a
/// resync.
pub fn start_sim(
    path: PathBuf,
    tx: mpsc::Sender<SourceMessage>,
) -> Result<tokio::task::JoinHandle<()>, SourceError> {
    // The simulator may still be starting: try for a few seconds.
    let mut attempt = 0;
    let fd = loop {
        match connect_seqpacket(&path) {
            Ok(fd) => break fd,
            Err(e) if attempt < 50 => {
                tracing::debug!(error = %e, "uevent socket not ready, retrying");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(SourceError::SimConnect { path, source }),
        }
    };
    let fd = register(fd).map_err(SourceError::Register)?;
    Ok(tokio::spawn(sim_loop(path, fd, tx)))
}

async fn sim_loop(path: PathBuf, mut fd: AsyncFd<OwnedFd>, tx: mpsc::Sender<SourceMessage>) {
    let mut fwd = Forwarder {
        tx,
        owes_resync: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let mut disconnected = false;
        loop {
            let raw = std::os::fd::AsRawFd::as_raw_fd(guard.get_inner());
            match socket::recv(raw, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    disconnected = true;
                    break;
                }
                Ok(n) => {
                    let msg = match buf.get(..n).and_then(parse_wire) {
                        Some(ev) => SourceMessage::Event(ev),
                        None => {
                            tracing::warn!(bytes = n, "malformed uevent; rescanning");
                            SourceMessage::Resync("malformed uevent")
                        }
                    };
                    if !fwd.send(msg) {
                        return;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "uevent socket failed");
                    disconnected = true;
                    break;
                }
            }
        }
        drop(guard);
        if !fwd.flush().await {
            return;
        }
        if disconnected {
            tracing::warn!(path = %path.display(), "uevent socket closed; reconnecting");
            fd = loop {
                if fwd.tx.is_closed() {
                    return;
                }
                match connect_seqpacket(&path)
                    .map_err(std::io::Error::from)
                    .and_then(register)
                {
                    Ok(fd) => break fd,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            // Whatever happened while disconnected is unknown.
            if !fwd.send(SourceMessage::Resync("uevent socket reconnected")) {
                return;
            }
        }
    }
}

/// Subsystems whose events matter; parents of mdevs can be in any subsystem, so those are
/// recognised by their `MDEV_STATE` property instead.
const UDEV_SUBSYSTEMS: [&str; 4] = ["pci", "mdev", "vfio", "module"];

/// Opens a udev monitor now and forwards its events from a task.
pub fn start_udev(
    tx: mpsc::Sender<SourceMessage>,
) -> Result<tokio::task::JoinHandle<()>, SourceError> {
    // No subsystem filter: non-PCI mdev parents (mbochs, mtty) announce MDEV_STATE in their
    // own subsystem; irrelevant events are dropped below.
    let monitor = udev::MonitorBuilder::new()
        .and_then(|b| b.listen())
        .map_err(SourceError::Udev)?;
    // Bursts overflow the default buffer; as bolt does, ask for a large one (needs
    // CAP_NET_ADMIN for the forced variant; the plain one is capped by rmem_max).
    const BUFFER: usize = 128 * 1024 * 1024;
    if socket::setsockopt(&monitor.as_fd(), socket::sockopt::RcvBufForce, &BUFFER).is_err() {
        let _ = socket::setsockopt(&monitor.as_fd(), socket::sockopt::RcvBuf, &BUFFER);
    }
    let fd = register(monitor).map_err(SourceError::Register)?;
    Ok(tokio::spawn(udev_loop(fd, tx)))
}

async fn udev_loop(mut fd: AsyncFd<udev::MonitorSocket>, tx: mpsc::Sender<SourceMessage>) {
    let mut fwd = Forwarder {
        tx,
        owes_resync: false,
    };
    loop {
        // `readable_mut`: the monitor is Send but not Sync.
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        for event in guard.get_inner().iter() {
            // Convert at the edge: udev::Device must not cross tasks.
            let property = |k: &str| {
                event
                    .property_value(k)
                    .map(|v| v.to_string_lossy().into_owned())
            };
            let subsystem = event
                .subsystem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mdev_state = property("MDEV_STATE");
            if mdev_state.is_none() && !UDEV_SUBSYSTEMS.contains(&subsystem.as_str()) {
                continue;
            }
            let ev = KernelEvent {
                action: property("ACTION").unwrap_or_default(),
                devpath: event.devpath().to_string_lossy().into_owned(),
                subsystem,
                driver: property("DRIVER"),
                mdev_state,
                seqnum: Some(event.sequence_number()),
            };
            if !fwd.send(SourceMessage::Event(ev)) {
                return;
            }
        }
        // libudev reports a receive error only as "no event" with errno set; ENOBUFS means
        // the kernel dropped events.
        if std::io::Error::last_os_error().raw_os_error() == Some(nix::libc::ENOBUFS)
            && !fwd.send(SourceMessage::Resync("udev monitor overflow (ENOBUFS)"))
        {
            return;
        }
        guard.clear_ready();
        drop(guard);
        if !fwd.flush().await {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wire(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    fn ev(action: &str, devpath: &str, subsystem: &str) -> KernelEvent {
        KernelEvent {
            action: action.into(),
            devpath: devpath.into(),
            subsystem: subsystem.into(),
            driver: None,
            mdev_state: None,
            seqnum: None,
        }
    }

    #[test]
    fn parses_kernel_wire_format() {
        let buf = wire(&[
            "bind@/devices/pci0000:40/0000:40:01.1/0000:41:00.0",
            "ACTION=bind",
            "DEVPATH=/devices/pci0000:40/0000:40:01.1/0000:41:00.0",
            "SUBSYSTEM=pci",
            "DRIVER=vfio-pci",
            "PCI_SLOT_NAME=0000:41:00.0",
            "SEQNUM=1262",
        ]);
        let e = parse_wire(&buf).unwrap();
        assert_eq!(e.action, "bind");
        assert_eq!(e.subsystem, "pci");
        assert_eq!(e.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(e.seqnum, Some(1262));
        assert_eq!(targets(&e), [Target::Pci("0000:41:00.0".parse().unwrap())]);
    }

    #[test]
    fn rejects_malformed_wire() {
        assert_eq!(parse_wire(b""), None);
        assert_eq!(parse_wire(b"junk"), None);
        assert_eq!(parse_wire(&wire(&["add@/devices/x", "ACTION=add"])), None);
        assert_eq!(
            parse_wire(&wire(&["add@/devices/x", "ACTION=remove", "SUBSYSTEM=pci"])),
            None
        );
        assert_eq!(parse_wire(&wire(&["add@x", "SUBSYSTEM=pci"])), None);
        assert_eq!(parse_wire(&[0xff, b'@', b'/', 0]), None);
    }

    #[test]
    fn maps_events_to_targets() {
        let uuid = "aa618089-8b16-4d01-a136-25a0f3c73123";
        let mdev = ev(
            "add",
            &format!("/devices/pci0000:40/0000:40:01.1/0000:41:00.0/{uuid}"),
            "mdev",
        );
        assert_eq!(
            targets(&mdev),
            [
                Target::Mdev(uuid.parse().unwrap()),
                Target::MdevInstances("0000:41:00.0".into())
            ]
        );
        // Binding changes the mdev alone; its parent's types stay as they were.
        let bind = ev(
            "bind",
            &format!("/devices/pci0000:40/0000:40:01.1/0000:41:00.0/{uuid}"),
            "mdev",
        );
        assert_eq!(targets(&bind), [Target::Mdev(uuid.parse().unwrap())]);
        let mut parent = ev("change", "/devices/virtual/mbochs/mbochs", "mbochs");
        parent.mdev_state = Some("registered".into());
        assert_eq!(targets(&parent), [Target::MdevParent("mbochs".into())]);
        assert_eq!(
            targets(&ev("add", "/devices/virtual/vfio/66", "vfio")),
            [Target::IommuGroup(66)]
        );
        assert_eq!(
            targets(&ev("add", "/module/vfio_pci", "module")),
            [Target::Modules]
        );
        assert_eq!(
            targets(&ev(
                "add",
                "/devices/pci0000:00/0000:00:02.0/drm/card0",
                "drm"
            )),
            [Target::Pci("0000:00:02.0".parse().unwrap())]
        );
        // An mdev's vfio device node (kernel >= 6.0) concerns the mdev, not its parent card.
        assert_eq!(
            targets(&ev(
                "add",
                &format!("/devices/pci0000:40/0000:40:01.1/0000:41:00.0/{uuid}/vfio-dev/vfio3"),
                "vfio-dev"
            )),
            [Target::Mdev(uuid.parse().unwrap())]
        );
        // A 32-digit name without hyphens is not an mdev: sysfs names mdevs hyphenated.
        assert_eq!(
            targets(&ev(
                "add",
                "/devices/pci0000:00/0000:00:02.0/aa6180898b164d01a13625a0f3c73123/x",
                "misc"
            )),
            [Target::Pci("0000:00:02.0".parse().unwrap())]
        );
        assert_eq!(
            targets(&ev("add", "/devices/virtual/net/lo", "net")),
            [Target::All]
        );
        assert_eq!(
            targets(&ev("add", "/devices/pci0000:00/junk", "pci")),
            [Target::All]
        );
    }

    #[test]
    fn forwarder_owes_resync_after_overflow() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut fwd = Forwarder {
            tx,
            owes_resync: false,
        };
        let e = SourceMessage::Event(ev("add", "/devices/virtual/vfio/1", "vfio"));
        assert!(fwd.send(e.clone()));
        assert!(fwd.send(e.clone()), "full queue drops, does not fail");
        assert!(fwd.owes_resync);
        assert_eq!(rx.try_recv().unwrap(), e);
        assert!(fwd.send(e.clone()));
        assert_eq!(
            rx.try_recv().unwrap(),
            SourceMessage::Resync("event queue overflow")
        );
        assert!(
            rx.try_recv().is_err(),
            "the event after the resync was dropped"
        );
        drop(rx);
        assert!(!fwd.send(e));
    }
}
