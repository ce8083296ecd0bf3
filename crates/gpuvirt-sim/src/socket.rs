//! Uevent transport: a Unix `SOCK_SEQPACKET` socket that fans every uevent out to every client.
//! May import: crate::uevent.
//!
//! The simulated kernel stands in for the netlink uevent socket with a listening Unix socket.
//! Each connected client receives every uevent published after it connected, one message per
//! uevent, in [`Uevent::to_wire`] form. Publishing never blocks: each client has a bounded queue
//! drained by its own writer thread, and a client whose queue overflows is disconnected, the way
//! netlink reports `ENOBUFS`; the daemon then reconnects and rescans.
//!
//! Clients whose `connect()` has returned are accepted at the next [`Broadcaster::publish`], before
//! the events are queued, so a client never misses an event emitted after it connected even if no
//! accept thread has run yet.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::uevent::Uevent;

/// Events a client may have queued before it counts as too slow and is dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Largest message a reader accepts; the kernel's own uevent buffer is 2 KiB.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why the uevent socket could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create a seqpacket socket")]
    Create(#[source] io::Error),
    #[error("cannot listen for uevent clients at {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the uevent socket at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the uevent socket was closed by the simulated kernel")]
    Closed,
    #[error("timed out waiting for a uevent")]
    TimedOut,
    #[error("received a malformed uevent message ({len} bytes)")]
    Malformed { len: usize },
    #[error("receiving a uevent failed")]
    Recv(#[source] io::Error),
}

/// Fans uevents out to socket clients and in-process subscribers.
#[derive(Debug)]
pub struct Broadcaster {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    listeners: Vec<Listener>,
    clients: Vec<Client>,
    dropped_for_overflow: u64,
}

/// A bound listening socket; its path is removed again when it is dropped.
#[derive(Debug)]
struct Listener {
    socket: Socket,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
struct Client {
    queue: SyncSender<Uevent>,
    /// The server side of a socket client, shut down to wake its writer and tell the peer.
    socket: Option<Arc<Socket>>,
}

impl Client {
    fn disconnect(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic elsewhere must not take the uevent path down with it; the state stays usable.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Broadcaster {
    fn default() -> Self {
        Self::new()
    }
}

impl Broadcaster {
    /// A broadcaster with [`DEFAULT_QUEUE_CAPACITY`] events of room per client.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_QUEUE_CAPACITY)
    }

    /// A broadcaster whose clients are dropped once `capacity` events wait for them.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Listens for clients at `path` (a stale socket file there is replaced). The file is removed
    /// when the broadcaster is dropped.
    pub fn listen(&self, path: &Path) -> Result<(), SocketError> {
        let listen_err = |source| SocketError::Listen {
            path: path.to_owned(),
            source,
        };
        let socket =
            Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(SocketError::Create)?;
        let addr = SockAddr::unix(path).map_err(listen_err)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            _ => {}
        }
        socket.bind(&addr).map_err(listen_err)?;
        let listener = Listener {
            socket,
            path: path.to_owned(),
        };
        // Non-blocking so that publish() can drain the backlog without waiting.
        listener.socket.set_nonblocking(true).map_err(listen_err)?;
        listener.socket.listen(128).map_err(listen_err)?;
        lock(&self.inner).listeners.push(listener);
        Ok(())
    }

    /// An in-process subscriber receiving every event published from now on. It is dropped (the
    /// receiver reports disconnection once drained) if it falls `capacity` events behind.
    pub fn subscribe(&self) -> Receiver<Uevent> {
        let (queue, rx) = mpsc::sync_channel(self.capacity);
        lock(&self.inner).clients.push(Client {
            queue,
            socket: None,
        });
        rx
    }

    /// Queues `events` for every client. Never blocks on a client.
    pub fn publish(&self, events: &[Uevent]) {
        let mut inner = lock(&self.inner);
        self.accept_pending(&mut inner);
        if events.is_empty() {
            return;
        }
        let mut overflowed = 0;
        inner.clients.retain(|client| {
            for event in events {
                match client.queue.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        overflowed += 1;
                        client.disconnect();
                        return false;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        client.disconnect();
                        return false;
                    }
                }
            }
            true
        });
        inner.dropped_for_overflow += overflowed;
    }

    /// Clients currently connected (socket clients waiting in the backlog are accepted first).
    pub fn client_count(&self) -> usize {
        let mut inner = lock(&self.inner);
        self.accept_pending(&mut inner);
        inner.clients.len()
    }

    /// How many clients were disconnected because their queue overflowed.
    pub fn dropped_for_overflow(&self) -> u64 {
        lock(&self.inner).dropped_for_overflow
    }

    fn accept_pending(&self, inner: &mut Inner) {
        let mut accepted = Vec::new();
        for listener in &inner.listeners {
            loop {
                match listener.socket.accept() {
                    Ok((socket, _)) => accepted.push(socket),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // WouldBlock ends the backlog; other errors (EMFILE, ...) leave the client
                    // in it for the next attempt.
                    Err(_) => break,
                }
            }
        }
        for socket in accepted {
            if let Some(client) = self.spawn_writer(socket) {
                inner.clients.push(client);
            }
        }
    }

    fn spawn_writer(&self, socket: Socket) -> Option<Client> {
        // The writer blocks in send() while the client is slow; the bounded queue absorbs that.
        socket.set_nonblocking(false).ok()?;
        let socket = Arc::new(socket);
        let (queue, rx) = mpsc::sync_channel::<Uevent>(self.capacity);
        let writer_socket = Arc::clone(&socket);
        std::thread::Builder::new()
            .name("uevent-client".into())
            .spawn(move || {
                for event in rx {
                    let wire = event.to_wire();
                    if writer_socket
                        .send_with_flags(&wire, libc::MSG_NOSIGNAL)
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = writer_socket.shutdown(std::net::Shutdown::Both);
            })
            .ok()?;
        Some(Client {
            queue,
            socket: Some(socket),
        })
    }
}

/// A blocking client of the uevent socket (for tests and simple tools).
#[derive(Debug)]
pub struct UeventReader {
    socket: Socket,
    timeout: Option<Duration>,
    buf: Vec<u8>,
}

impl UeventReader {
    /// Connects to the uevent socket at `path`; events published from now on are delivered.
    pub fn connect(path: &Path) -> Result<Self, SocketError> {
        let connect_err = |source| SocketError::Connect {
            path: path.to_owned(),
            source,
        };
        let socket =
            Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(SocketError::Create)?;
        let addr = SockAddr::unix(path).map_err(connect_err)?;
        socket.connect(&addr).map_err(connect_err)?;
        Ok(Self {
            socket,
            timeout: None,
            buf: vec![0; MAX_MESSAGE],
        })
    }

    /// Waits for the next uevent.
    pub fn recv(&mut self) -> Result<Uevent, SocketError> {
        self.set_timeout(None)?;
        self.recv_one()
    }

    /// Waits at most `timeout` for the next uevent ([`SocketError::TimedOut`] otherwise).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Uevent, SocketError> {
        // A zero timeout means "block forever" to SO_RCVTIMEO.
        self.set_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        self.recv_one()
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), SocketError> {
        if self.timeout != timeout {
            self.socket
                .set_read_timeout(timeout)
                .map_err(SocketError::Recv)?;
            self.timeout = timeout;
        }
        Ok(())
    }

    fn recv_one(&mut self) -> Result<Uevent, SocketError> {
        loop {
            match (&self.socket).read(&mut self.buf) {
                Ok(0) => return Err(SocketError::Closed),
                Ok(len) => {
                    return Uevent::from_wire(&self.buf[..len])
                        .ok_or(SocketError::Malformed { len });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(SocketError::TimedOut)
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(SocketError::Closed)
                }
                Err(e) => return Err(SocketError::Recv(e)),
            }
        }
    }

    /// The connected socket, for callers that poll it themselves (each message is one uevent in
    /// wire form).
    pub fn into_fd(self) -> OwnedFd {
        self.socket.into()
    }
}

impl AsFd for UeventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for UeventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
