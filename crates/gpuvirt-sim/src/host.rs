//! Control interface of a running simulated host: a Unix stream socket taking one text command
//! per line, so test scripts and other processes can drive hotplug and fault hooks. May import:
//! crate::backend, crate::fixture, crate::fuse, crate::kernel, crate::socket, crate::tree,
//! crate::uevent (it sits on top of them all).
//!
//! Protocol: each request is one line, each answer one line: `ok`, `ok <text>`, or
//! `err <ERRNO-NAME> <message>`. Commands (see [`COMMANDS_HELP`]):
//!
//! ```text
//! ping                               -> ok pong
//! read <path>                        -> ok <content, newlines as \n>
//! write <path> <data...>             -> ok | err EBUSY ...   (as a write() through the mount)
//! hot-remove <bdf>                   surprise removal of a PCI function (and its children)
//! hot-add <spec>                     a new function appears (spec format is the backend's;
//!                                    the kernel takes an inline TOML PCI function table)
//! load-module <name>                 e.g. vfio_pci, mdev
//! unload-module <name>
//! set-mdev-busy <uuid> <0|1>         an mdev in use: remove fails with EBUSY
//! fail-next-write <path> <errno>     next write to <path> fails with errno (name or number;
//!                                    needs the backend wrapped in [`Faults`])
//! ```
//!
//! Paths are relative to the simulated root (`sys/bus/pci/...`). Uevents a command causes are
//! published to uevent clients before the answer is sent.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::backend::Backend;
use crate::fuse::lock_backend;
use crate::socket::Broadcaster;
use crate::tree::NodeKind;

/// The command summary shown by `gpuvirt-sim mount --help`.
pub const COMMANDS_HELP: &str = r#"Control socket: one command per line, one answer per line (`ok [text]` or `err ERRNO message`).
Paths are relative to the simulated root, e.g. sys/bus/pci/drivers/nvidia/unbind.
  ping                            liveness check
  read PATH                       file content (newlines escaped as \n)
  write PATH DATA...              write DATA like write() through the mount would
  hot-remove BDF                  surprise-remove a PCI function (e.g. 0000:41:00.0)
  hot-add {TOML}                  hotplug a PCI function, e.g.
                                  hot-add {address = "0000:42:00.0", class = 0x030000, id = "10de:1db4"}
  load-module NAME                load a module (vfio_pci, mdev, ...)
  unload-module NAME              unload a module
  set-mdev-busy UUID 0|1          mark an mdev in use (its remove then fails with EBUSY)
  fail-next-write PATH ERRNO      make the next write to PATH fail (EBUSY, EINVAL, 19, ...)
Example: echo 'hot-remove 0000:41:00.0' | socat - UNIX-CONNECT:/run/sim.ctl"#;

/// Why a control command failed; `errno` is what the answer names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HookError {
    pub errno: i32,
    pub message: String,
}

impl HookError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    fn unsupported(what: &str) -> Self {
        Self::new(
            libc::EOPNOTSUPP,
            format!("{what} is not supported by this backend"),
        )
    }
}

/// Test hooks of a simulated host beyond plain file writes. Every method defaults to
/// "not supported", so a backend implements only what it models.
pub trait HostHooks: Backend {
    fn hot_remove(&mut self, _bdf: &str) -> Result<(), HookError> {
        Err(HookError::unsupported("hot-remove"))
    }
    /// `spec` is the rest of the command line, in a format the backend defines.
    fn hot_add(&mut self, _spec: &str) -> Result<(), HookError> {
        Err(HookError::unsupported("hot-add"))
    }
    fn load_module(&mut self, _name: &str) -> Result<(), HookError> {
        Err(HookError::unsupported("load-module"))
    }
    fn unload_module(&mut self, _name: &str) -> Result<(), HookError> {
        Err(HookError::unsupported("unload-module"))
    }
    fn set_mdev_busy(&mut self, _uuid: &str, _busy: bool) -> Result<(), HookError> {
        Err(HookError::unsupported("set-mdev-busy"))
    }
    fn fail_next_write(&mut self, _path: &str, _errno: i32) -> Result<(), HookError> {
        Err(HookError::unsupported("fail-next-write"))
    }
}

/// One parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping,
    Read { path: String },
    Write { path: String, data: String },
    HotRemove { bdf: String },
    HotAdd { spec: String },
    LoadModule { name: String },
    UnloadModule { name: String },
    SetMdevBusy { uuid: String, busy: bool },
    FailNextWrite { path: String, errno: i32 },
}

impl Command {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, HookError> {
        let line = line.trim();
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let args: Vec<&str> = rest.split_whitespace().collect();
        let usage = |form: &str| HookError::new(libc::EINVAL, format!("usage: {form}"));
        let one = |form: &str| match args.as_slice() {
            [arg] => Ok((*arg).to_owned()),
            _ => Err(usage(form)),
        };
        Ok(match verb {
            "ping" => Command::Ping,
            "read" => Command::Read {
                path: one("read PATH")?,
            },
            "write" => {
                let (path, data) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| usage("write PATH DATA"))?;
                Command::Write {
                    path: path.to_owned(),
                    data: data.to_owned(),
                }
            }
            "hot-remove" => Command::HotRemove {
                bdf: one("hot-remove BDF")?,
            },
            "hot-add" if !rest.is_empty() => Command::HotAdd {
                spec: rest.to_owned(),
            },
            "hot-add" => return Err(usage("hot-add SPEC")),
            "load-module" => Command::LoadModule {
                name: one("load-module NAME")?,
            },
            "unload-module" => Command::UnloadModule {
                name: one("unload-module NAME")?,
            },
            "set-mdev-busy" => match args.as_slice() {
                [uuid, flag @ ("0" | "1")] => Command::SetMdevBusy {
                    uuid: (*uuid).to_owned(),
                    busy: *flag == "1",
                },
                _ => return Err(usage("set-mdev-busy UUID 0|1")),
            },
            "fail-next-write" => match args.as_slice() {
                [path, errno] => Command::FailNextWrite {
                    path: (*path).to_owned(),
                    errno: parse_errno(errno).ok_or_else(|| usage("fail-next-write PATH ERRNO"))?,
                },
                _ => return Err(usage("fail-next-write PATH ERRNO")),
            },
            "" => return Err(HookError::new(libc::EINVAL, "empty command")),
            other => {
                return Err(HookError::new(
                    libc::EINVAL,
                    format!("unknown command {other:?}"),
                ))
            }
        })
    }
}

/// Runs one command against a backend, returning the answer text of a success.
pub fn execute<B: HostHooks>(backend: &mut B, command: &Command) -> Result<String, HookError> {
    let path_of = |path: &str| path.trim_start_matches('/').to_owned();
    match command {
        Command::Ping => Ok("pong".into()),
        Command::Read { path } => backend
            .tree()
            .read(&path_of(path))
            .map(|data| String::from_utf8_lossy(data).replace('\n', "\\n"))
            .ok_or_else(|| HookError::new(libc::ENOENT, format!("no file {path}"))),
        Command::Write { path, data } => {
            // Resolve links the way the kernel does before the write reaches the attribute.
            let tree = backend.tree();
            let ino = tree
                .resolve(&path_of(path))
                .ok_or_else(|| HookError::new(libc::ENOENT, format!("no file {path}")))?;
            match tree.node(ino).map(|n| &n.kind) {
                Some(NodeKind::File { mode, .. }) if mode & 0o222 != 0 => {}
                Some(NodeKind::File { .. }) => {
                    return Err(HookError::new(libc::EACCES, format!("{path} is read-only")))
                }
                _ => {
                    return Err(HookError::new(
                        libc::EISDIR,
                        format!("{path} is not a file"),
                    ))
                }
            }
            let real = tree.path_of(ino);
            backend
                .write(&real, data.as_bytes())
                .map(|()| String::new())
                .map_err(|errno| HookError::new(errno, format!("write to {path} failed")))
        }
        Command::HotRemove { bdf } => backend.hot_remove(bdf).map(|()| String::new()),
        Command::HotAdd { spec } => backend.hot_add(spec).map(|()| String::new()),
        Command::LoadModule { name } => backend.load_module(name).map(|()| String::new()),
        Command::UnloadModule { name } => backend.unload_module(name).map(|()| String::new()),
        Command::SetMdevBusy { uuid, busy } => {
            backend.set_mdev_busy(uuid, *busy).map(|()| String::new())
        }
        Command::FailNextWrite { path, errno } => backend
            .fail_next_write(&path_of(path), *errno)
            .map(|()| String::new()),
    }
}

/// The answer line for a command's result (without the newline).
pub fn answer(result: &Result<String, HookError>) -> String {
    match result {
        Ok(text) if text.is_empty() => "ok".into(),
        Ok(text) => format!("ok {text}"),
        Err(e) => format!("err {} {}", errno_name(e.errno), e.message),
    }
}

const ERRNO_NAMES: &[(i32, &str)] = &[
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::ENXIO, "ENXIO"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EBUSY, "EBUSY"),
    (libc::EEXIST, "EEXIST"),
    (libc::ENODEV, "ENODEV"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EUSERS, "EUSERS"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
];

/// `EBUSY` for 16; the number itself for errnos outside the table.
pub fn errno_name(errno: i32) -> String {
    ERRNO_NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| errno.to_string())
}

/// Parses `EBUSY`, `ebusy` or `16`.
pub fn parse_errno(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (n > 0).then_some(n);
    }
    ERRNO_NAMES
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(text))
        .map(|(n, _)| *n)
}

/// A backend wrapper adding one-shot write faults (`fail-next-write`), so any backend can be
/// made to fail a chosen write with a chosen errno without special cases in its kernel logic.
#[derive(Debug)]
pub struct Faults<B> {
    inner: B,
    /// Canonical tree path → errno of the next write there.
    pending: std::collections::HashMap<String, i32>,
}

impl<B> Faults<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            pending: std::collections::HashMap::new(),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Backend> Backend for Faults<B> {
    fn tree(&self) -> &crate::tree::Tree {
        self.inner.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        match self.pending.remove(path) {
            Some(errno) => Err(errno),
            None => self.inner.write(path, data),
        }
    }

    fn take_uevents(&mut self) -> Vec<crate::uevent::Uevent> {
        self.inner.take_uevents()
    }

    fn take_plain_changes(&mut self) -> Vec<&'static str> {
        self.inner.take_plain_changes()
    }
}

impl<B: HostHooks> HostHooks for Faults<B> {
    fn hot_remove(&mut self, bdf: &str) -> Result<(), HookError> {
        self.inner.hot_remove(bdf)
    }
    fn hot_add(&mut self, spec: &str) -> Result<(), HookError> {
        self.inner.hot_add(spec)
    }
    fn load_module(&mut self, name: &str) -> Result<(), HookError> {
        self.inner.load_module(name)
    }
    fn unload_module(&mut self, name: &str) -> Result<(), HookError> {
        self.inner.unload_module(name)
    }
    fn set_mdev_busy(&mut self, uuid: &str, busy: bool) -> Result<(), HookError> {
        self.inner.set_mdev_busy(uuid, busy)
    }
    fn fail_next_write(&mut self, path: &str, errno: i32) -> Result<(), HookError> {
        // Writes arrive with links resolved, so key the fault by the real file's path.
        let tree = self.inner.tree();
        let ino = tree
            .resolve(path)
            .ok_or_else(|| HookError::new(libc::ENOENT, format!("no file {path}")))?;
        let canonical = tree.path_of(ino);
        self.pending.insert(canonical, errno);
        Ok(())
    }
}

/// The simulated kernel's hooks. `hot-add` takes an inline TOML table of a fixture PCI function,
/// e.g. `{address = "0000:42:00.0", class = 0x030000, id = "10de:1db4"}`.
impl HostHooks for crate::kernel::Kernel {
    fn hot_remove(&mut self, bdf: &str) -> Result<(), HookError> {
        let address = parse_address(bdf)?;
        crate::kernel::Kernel::hot_remove(self, address)
            .map_err(|errno| HookError::new(errno, format!("hot-remove {bdf} failed")))
    }

    fn hot_add(&mut self, spec: &str) -> Result<(), HookError> {
        #[derive(serde::Deserialize)]
        struct Line {
            function: crate::fixture::PciSpec,
        }
        let line: Line = toml::from_str(&format!("function = {spec}"))
            .map_err(|e| HookError::new(libc::EINVAL, format!("bad PCI function table: {e}")))?;
        crate::kernel::Kernel::hot_add(self, &line.function)
            .map(drop)
            .map_err(|e| HookError::new(libc::EINVAL, e.to_string()))
    }

    fn load_module(&mut self, name: &str) -> Result<(), HookError> {
        crate::kernel::Kernel::load_module(self, name)
            .map_err(|errno| HookError::new(errno, format!("modprobe {name} failed")))
    }

    fn unload_module(&mut self, name: &str) -> Result<(), HookError> {
        crate::kernel::Kernel::unload_module(self, name)
            .map_err(|errno| HookError::new(errno, format!("rmmod {name} failed")))
    }

    fn set_mdev_busy(&mut self, uuid: &str, busy: bool) -> Result<(), HookError> {
        let parsed = uuid::Uuid::parse_str(uuid)
            .map_err(|_| HookError::new(libc::EINVAL, format!("{uuid} is not a UUID")))?;
        if crate::kernel::Kernel::set_mdev_busy(self, parsed, busy) {
            Ok(())
        } else {
            Err(HookError::new(libc::ENODEV, format!("no mdev {uuid}")))
        }
    }
}

fn parse_address(bdf: &str) -> Result<gpuvirt_core::PciAddress, HookError> {
    bdf.parse()
        .map_err(|_| HookError::new(libc::EINVAL, format!("{bdf} is not a PCI address")))
}

/// Serves the control socket on a background thread until dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens at `path` (a stale socket there is replaced). Each command locks `backend`, runs,
    /// and publishes the uevents it caused through `events` before answering.
    pub fn start<B: HostHooks>(
        path: &Path,
        backend: Arc<Mutex<B>>,
        events: Arc<Broadcaster>,
    ) -> io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                std::fs::remove_file(path)?;
            }
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sim-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if thread_stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let backend = Arc::clone(&backend);
                    let events = Arc::clone(&events);
                    // One thread per connection: a client that idles must not hold up others.
                    let _ = std::thread::Builder::new()
                        .name("sim-control-conn".into())
                        .spawn(move || serve_connection(stream, &backend, &events));
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept so the thread sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_connection<B: HostHooks>(stream: UnixStream, backend: &Mutex<B>, events: &Broadcaster) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let result = Command::parse(&line).and_then(|command| {
            let mut guard = lock_backend(backend);
            let result = execute(&mut *guard, &command);
            // Published under the lock so they stay in order with writes through the mount.
            events.publish(&guard.take_uevents());
            result
        });
        if writeln!(out, "{}", answer(&result)).is_err() {
            break;
        }
    }
}

/// Sends one command to a control socket and returns the answer line (a small client for tests
/// and scripts without socat).
pub fn send_command(path: &Path, command: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    writeln!(stream, "{}", command.trim())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

#[cfg(test)]
mod tests;
