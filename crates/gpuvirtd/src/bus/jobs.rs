//! Job objects (`/org/gpuvirt/GpuVirt1/jobs/<n>`, `org.gpuvirt.GpuVirt1.Job`) for operations
//! that can block longer than a D-Bus call may wait (25 s in libdbus, GDBus and sd-bus):
//! unbinding a driver can hang on real hardware.
//!
//! A job is exported before its method call returns, so a client always finds it. It reports
//! its end twice: the `Completed(b success, s message)` signal and the `Finished`/`Success`/
//! `ErrorName`/`Message` properties, so a client that subscribed late reads the result instead
//! of waiting for a signal it missed. Finished jobs stay exported for [`KEEP_FINISHED`].
//! May import: gpuvirt-api only (nothing of this crate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuvirt_api::{self as api, CallError};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use api::JOBS_PATH;
/// How long a finished job stays readable.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for an earlier operation to finish; can still be cancelled.
    Queued,
    /// Writing to the kernel; a sysfs write cannot be interrupted.
    Running,
    Finished,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    cancel_requested: bool,
    progress: f64,
    success: bool,
    error_name: String,
    message: String,
}

/// `org.gpuvirt.GpuVirt1.Job`.
#[derive(Debug)]
pub struct JobInterface {
    operation: String,
    objects: Vec<OwnedObjectPath>,
    /// The unique bus name that started it: only that caller may cancel it.
    owner: String,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Every critical section only assigns fields: a poisoned state is still whole.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[zbus::interface(name = "org.gpuvirt.GpuVirt1.Job")]
impl JobInterface {
    /// Cancels the job if it has not started writing to the kernel yet. Only the caller that
    /// started it may; a running job fails with Busy (a sysfs write cannot be interrupted).
    async fn cancel(&self, #[zbus(header)] header: Header<'_>) -> Result<(), CallError> {
        let caller = header.sender().map(|s| s.to_string()).unwrap_or_default();
        if caller != self.owner {
            return Err(CallError::Fdo(zbus::fdo::Error::AccessDenied(
                "only the caller that started a job may cancel it".to_string(),
            )));
        }
        let mut state = lock(&self.state);
        match state.phase {
            Phase::Queued => {
                state.cancel_requested = true;
                Ok(())
            }
            Phase::Running => Err(api::Error::Busy(format!(
                "{} is writing to the kernel already; a sysfs write cannot be interrupted",
                self.operation
            ))
            .into()),
            Phase::Finished => Err(api::Error::NotSupported(format!(
                "{} has finished; there is nothing to cancel",
                self.operation
            ))
            .into()),
        }
    }

    /// What the job does, in words (`assign 0000:41:00 to vfio-pci`).
    #[zbus(property)]
    fn operation(&self) -> String {
        self.operation.clone()
    }

    /// The objects it changes.
    #[zbus(property)]
    fn objects(&self) -> Vec<OwnedObjectPath> {
        self.objects.clone()
    }

    /// 0.0 to 1.0.
    #[zbus(property)]
    fn progress(&self) -> f64 {
        lock(&self.state).progress
    }

    #[zbus(property)]
    fn finished(&self) -> bool {
        lock(&self.state).phase == Phase::Finished
    }

    /// Meaningful once `Finished` is true.
    #[zbus(property)]
    fn success(&self) -> bool {
        lock(&self.state).success
    }

    /// The D-Bus error name of a failure (`org.gpuvirt.GpuVirt1.Error.TimedOut`), else empty.
    #[zbus(property)]
    fn error_name(&self) -> String {
        lock(&self.state).error_name.clone()
    }

    /// What happened, for people.
    #[zbus(property)]
    fn message(&self) -> String {
        lock(&self.state).message.clone()
    }

    /// Sent once, when the job ends.
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Creates job objects.
#[derive(Debug)]
pub struct Jobs {
    server: zbus::ObjectServer,
    next: AtomicU64,
}

/// How a job ended: a message, or an error name and message.
pub type Outcome = Result<String, (String, String)>;

impl Jobs {
    pub fn new(server: zbus::ObjectServer) -> Self {
        Self {
            server,
            next: AtomicU64::new(1),
        }
    }

    /// Exports a new queued job.
    pub async fn create(
        &self,
        operation: String,
        objects: Vec<OwnedObjectPath>,
        owner: String,
    ) -> zbus::Result<Job> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = OwnedObjectPath::from(ObjectPath::try_from(format!("{JOBS_PATH}/{n}"))?);
        let state = Arc::new(Mutex::new(State {
            phase: Phase::Queued,
            cancel_requested: false,
            progress: 0.0,
            success: false,
            error_name: String::new(),
            message: String::new(),
        }));
        self.server
            .at(
                path.as_str(),
                JobInterface {
                    operation,
                    objects,
                    owner,
                    state: state.clone(),
                },
            )
            .await?;
        Ok(Job {
            path,
            server: self.server.clone(),
            state,
        })
    }
}

/// The runner's handle on one job.
#[derive(Debug)]
pub struct Job {
    path: OwnedObjectPath,
    server: zbus::ObjectServer,
    state: Arc<Mutex<State>>,
}

impl Job {
    pub fn path(&self) -> &OwnedObjectPath {
        &self.path
    }

    /// Moves the job to running unless it was cancelled while queued (then `false`).
    pub fn start(&self) -> bool {
        let mut state = lock(&self.state);
        if state.cancel_requested {
            return false;
        }
        state.phase = Phase::Running;
        true
    }

    pub async fn set_progress(&self, progress: f64) {
        lock(&self.state).progress = progress.clamp(0.0, 1.0);
        if let Ok(r) = self
            .server
            .interface::<_, JobInterface>(self.path.as_str())
            .await
        {
            let emitter = r.signal_emitter().clone();
            let _ = r.get().await.progress_changed(&emitter).await;
        }
    }

    /// Records the outcome, emits PropertiesChanged and Completed, and removes the object
    /// after [`KEEP_FINISHED`].
    pub async fn complete(self, outcome: Outcome) {
        let (success, message) = {
            let mut state = lock(&self.state);
            state.phase = Phase::Finished;
            state.progress = 1.0;
            match outcome {
                Ok(message) => {
                    state.success = true;
                    state.message = message;
                }
                Err((name, message)) => {
                    state.success = false;
                    state.error_name = name;
                    state.message = message;
                }
            }
            let message = if state.success {
                state.message.clone()
            } else {
                format!("{}: {}", state.error_name, state.message)
            };
            (state.success, message)
        };
        let path = self.path.clone();
        if let Ok(r) = self
            .server
            .interface::<_, JobInterface>(path.as_str())
            .await
        {
            let emitter = r.signal_emitter().clone();
            let iface = r.get().await;
            // Properties first: a client woken by Completed reads the final state.
            let _ = iface.progress_changed(&emitter).await;
            let _ = iface.success_changed(&emitter).await;
            let _ = iface.error_name_changed(&emitter).await;
            let _ = iface.message_changed(&emitter).await;
            let _ = iface.finished_changed(&emitter).await;
            drop(iface);
            let _ = JobInterface::completed(&emitter, success, &message).await;
        }
        let server = self.server;
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_FINISHED).await;
            let _ = server.remove::<JobInterface, _>(path.as_str()).await;
        });
    }
}
