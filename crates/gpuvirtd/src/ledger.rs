//! The one door to the ownership ledger: [`LedgerDoor`] is its only opener and the owner of
//! the [`ExecLock`] that serialises its writers (the mutating API and the policy runtime).
//!
//! Every ledger writer opens its executor while holding the lock, and a fresh executor reads
//! the ledger as saved, so nothing another writer recorded is overwritten by a stale copy. A
//! manual operation reads the ledger once: [`LedgerDoor::snapshot`] opens an executor before
//! the lock (its ledger answers the operation's checks), and [`LedgerDoor::executor_for`],
//! under the lock, keeps that executor when the file is unchanged since and opens a fresh
//! one when another writer saved meanwhile. Ground level: may import only gpuvirt-core.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuvirt_core::exec::Executor;
use gpuvirt_core::ledger::{Ledger, LedgerError, LedgerStore};
use gpuvirt_core::policy::matching::OriginalDrivers;
use gpuvirt_core::Root;

/// Serialises every ledger writer: held from opening an executor until its last write
/// returns (by the blocking worker itself, so a write that outlives its timeout keeps later
/// writers out until the kernel returns).
pub type ExecLock = Arc<tokio::sync::Mutex<()>>;

/// The held [`ExecLock`].
pub type ExecGuard = tokio::sync::OwnedMutexGuard<()>;

/// The state directory's ledger, its lock, and the host root its executors write below.
#[derive(Debug)]
pub struct LedgerDoor {
    root: Root,
    state_dir: PathBuf,
    lock: ExecLock,
}

/// What the ledger files looked like on disk: a save writes a temporary file and renames it
/// over the main or the transient one, so any save changes an inode (and the times).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<FileStamp>>);

/// One file's device, inode, size, mtime and ctime (seconds, nanoseconds).
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

/// An executor opened before the lock, with the ledger it read (see [`LedgerDoor::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    executor: Executor,
    stamp: Stamp,
}

impl Snapshot {
    /// The ledger as it was read.
    pub fn ledger(&self) -> &Ledger {
        self.executor.ledger()
    }
}

impl LedgerDoor {
    pub fn new(root: Root, state_dir: PathBuf) -> Self {
        Self {
            root,
            state_dir,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn store(&self) -> LedgerStore {
        LedgerStore::new(&self.state_dir)
    }

    /// Waits for the lock as long as it takes (a task of its own, which nothing would ask
    /// again if it gave up).
    pub async fn lock(&self) -> ExecGuard {
        self.lock.clone().lock_owned().await
    }

    /// Waits at most `wait` for the lock; `None` when an earlier writer still holds it.
    pub async fn lock_within(&self, wait: Duration) -> Option<ExecGuard> {
        tokio::time::timeout(wait, self.lock.clone().lock_owned())
            .await
            .ok()
    }

    /// The ledger as saved now.
    pub fn load(&self) -> Result<Ledger, LedgerError> {
        self.store().load()
    }

    /// The original drivers the ledger records (none when it cannot be read).
    pub fn original_drivers(&self) -> OriginalDrivers {
        self.load()
            .map(|l| l.original_drivers())
            .unwrap_or_default()
    }

    /// A fresh executor (the ledger read now); a recovered main file is logged.
    pub fn open_executor(&self) -> Result<Executor, LedgerError> {
        let (executor, warning) = Executor::open(self.root.clone(), self.store())?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        Ok(executor)
    }

    /// An executor opened now, without the lock, for an operation that checks the ledger
    /// before it runs.
    pub fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        // Stamped before reading: a save in between makes the stamp older than what was
        // read, which costs a second read, never a stale ledger.
        let stamp = self.stamp();
        let executor = self.open_executor()?;
        Ok(Snapshot { executor, stamp })
    }

    /// The executor to run with, under the lock: the snapshot's own when the ledger files
    /// are as they were when it read them, else a fresh one.
    pub fn executor_for(
        &self,
        snapshot: Option<Snapshot>,
        _lock: &ExecGuard,
    ) -> Result<Executor, LedgerError> {
        match snapshot {
            Some(s) if s.stamp == self.stamp() => Ok(s.executor),
            _ => self.open_executor(),
        }
    }

    /// Reads the ledger as saved, lets `change` edit it, and saves it when it changed (a
    /// writer: `_lock` proves it holds the lock). It may fsync: call it from a blocking
    /// worker.
    pub fn update<R>(
        &self,
        _lock: &ExecGuard,
        change: impl FnOnce(&mut Ledger) -> R,
    ) -> Result<R, LedgerError> {
        let store = self.store();
        let loaded = store.load_reporting()?;
        if let Some(w) = &loaded.warning {
            tracing::warn!("{w}");
        }
        let mut ledger = loaded.ledger;
        let before = ledger.clone();
        let result = change(&mut ledger);
        if ledger != before {
            store.save(&ledger)?;
        }
        Ok(result)
    }

    fn stamp(&self) -> Stamp {
        Stamp(
            self.store()
                .files()
                .iter()
                .map(|p| {
                    std::fs::metadata(p).ok().map(|m| {
                        (
                            m.dev(),
                            m.ino(),
                            m.len(),
                            m.mtime(),
                            m.mtime_nsec(),
                            m.ctime(),
                            m.ctime_nsec(),
                        )
                    })
                })
                .collect(),
        )
    }

    /// Finishes what a killed daemon left half done (slots `pending` or `returning` go back
    /// to their original drivers). Runs before the first scan and before READY.
    pub fn recover(&self) {
        match self.open_executor() {
            Ok(mut executor) => {
                for report in executor.recover() {
                    if report.succeeded() {
                        tracing::info!("recovered: {report}");
                    } else {
                        tracing::error!("recovery failed: {report}");
                    }
                }
            }
            Err(e) => tracing::error!(
                "cannot open the ownership ledger: {}",
                gpuvirt_core::error_chain(&e)
            ),
        }
    }
}
