//! Kernel writes in flight. While an operation writes to sysfs, the uevents its writes cause
//! (an mdev's `add`, its vfio group and device nodes, `bind`) arrive before the write returns.
//! Read at once, they cost a refresh pass that the operation's own refresh, right after the
//! write, repeats; the caller waits for both. So while a [`WriteWindow`] is open the actor
//! holds such events, at most [`HOLD_LIMIT`], and reads them in that one refresh.
//! May import: std and tokio only.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The longest an event waits for a write in flight: a write that hangs (an unbind stuck in
/// the kernel) delays the tree by this much per batch of events, no more.
pub const HOLD_LIMIT: Duration = Duration::from_millis(100);

/// The count of open windows, shared by the runner (which opens them) and the actor.
#[derive(Debug, Clone)]
pub struct Writes(Arc<watch::Sender<usize>>);

impl Default for Writes {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Writes {
    /// Opens a window for one operation's writes; it closes when dropped.
    pub fn open(&self) -> WriteWindow {
        self.0.send_modify(|n| *n += 1);
        WriteWindow(self.0.clone())
    }

    /// The actor's view of the count.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.0.subscribe()
    }
}

/// One operation's writes, from just before the first to the refresh that reads their result.
#[derive(Debug)]
pub struct WriteWindow(Arc<watch::Sender<usize>>);

impl Drop for WriteWindow {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
