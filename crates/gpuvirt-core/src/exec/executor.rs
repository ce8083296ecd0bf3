//! The executor's state and its shared reading and writing helpers: [`Executor`], the step
//! collector [`Steps`], one sysfs write with its report, ledger saves. The action files
//! (boot, mdev, slot, sriov) add their `impl Executor` blocks on top of this one.
//! May import: crate::error, crate::host, crate::model, crate::state, exec/{error, report, write}.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::ExecError;
use super::report::{StepOutcome, StepReport};
use super::write::{errno_name, write_attr, WriteError, EBUSY, ENODEV, ENOENT, ENXIO};
use crate::host::names;
use crate::host::root::Root;
use crate::host::tools::Tools;
use crate::model::PciAddress;
use crate::state::ledger::{Ledger, LedgerStore};

/// Runs actions against one root, keeping the ownership ledger.
#[derive(Debug)]
pub struct Executor {
    pub(super) root: Root,
    pub(super) tools: Tools,
    pub(super) store: LedgerStore,
    pub(super) ledger: Ledger,
    /// How long to wait for a module's `/sys/module` entry after modprobe returns.
    pub(super) module_settle: Duration,
}

/// Collects the steps of one action.
pub(super) struct Steps {
    pub(super) steps: Vec<StepReport>,
    pub(super) rollback: bool,
}

impl Steps {
    pub(super) fn new() -> Self {
        Self {
            steps: Vec::new(),
            rollback: false,
        }
    }

    pub(super) fn push(
        &mut self,
        description: String,
        path: Option<PathBuf>,
        outcome: StepOutcome,
        t: Instant,
    ) {
        self.steps.push(StepReport {
            description,
            path,
            outcome,
            rollback: self.rollback,
            millis: u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    pub(super) fn skipped(&mut self, description: String, why: impl Into<String>) {
        self.push(
            description,
            None,
            StepOutcome::Skipped { why: why.into() },
            Instant::now(),
        );
    }
}

pub(super) fn pci_dev(address: PciAddress) -> PathBuf {
    PathBuf::from(format!("sys/bus/pci/devices/{address}"))
}

impl Executor {
    pub(super) fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// One sysfs write with its step report. `rel` is relative to the root.
    pub(super) fn write(
        &self,
        steps: &mut Steps,
        rel: &Path,
        value: &str,
    ) -> Result<(), WriteError> {
        let t = Instant::now();
        let shown = value.trim_end_matches('\n');
        let description = if shown.is_empty() {
            format!("clear {}", rel.display())
        } else {
            format!("write {shown} to {}", rel.display())
        };
        let result = write_attr(&self.abs(rel), value);
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => StepOutcome::Failed {
                errno: Some(errno_name(e.errno)),
                message: e.to_string(),
            },
        };
        steps.push(description, Some(rel.to_path_buf()), outcome, t);
        result
    }

    pub(super) fn exists(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.abs(rel)).is_ok()
    }

    pub(super) fn read_attr(&self, rel: &Path) -> Result<String, ExecError> {
        let path = self.abs(rel);
        let mut text = String::new();
        File::open(&path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|source| ExecError::Read { path, source })?;
        Ok(text.trim_end_matches('\n').to_string())
    }

    /// The driver bound to `address` now; `Err(DeviceGone)` when the function is not there.
    pub(super) fn current_driver(
        &self,
        address: PciAddress,
        during: &str,
    ) -> Result<Option<String>, ExecError> {
        let dev = pci_dev(address);
        if !self.exists(&dev) {
            return Err(ExecError::DeviceGone {
                address,
                during: during.to_string(),
            });
        }
        match fs::read_link(self.abs(&dev.join("driver"))) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                // The name becomes a path component of unbind/bind writes.
                names::driver(&name)?;
                Ok(Some(name))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ExecError::Read {
                path: self.abs(&dev.join("driver")),
                source,
            }),
        }
    }

    /// Maps a failed write concerning `address` to a typed error.
    pub(super) fn write_error(
        &self,
        address: Option<PciAddress>,
        what: String,
        err: WriteError,
    ) -> ExecError {
        match err.errno {
            EBUSY => ExecError::Busy {
                what,
                errno: EBUSY,
                hint: "something still uses it (a VM, a process with its device node open); \
                       stop that and retry"
                    .to_string(),
                source: err,
            },
            ENODEV | ENOENT | ENXIO if address.is_some_and(|a| !self.exists(&pci_dev(a))) => {
                ExecError::DeviceGone {
                    // Checked just above.
                    address: address.unwrap_or(PciAddress::new(0, 0, 0, 0)),
                    during: what,
                }
            }
            _ => ExecError::Write { what, source: err },
        }
    }

    pub(super) fn save_ledger(&self, steps: &mut Steps, why: &str) -> Result<(), ExecError> {
        let t = Instant::now();
        let result = self.store.save(&self.ledger);
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => StepOutcome::Failed {
                errno: None,
                message: crate::error_chain(e as &dyn std::error::Error),
            },
        };
        steps.push(
            format!("record in the ledger: {why}"),
            Some(self.store.path()),
            outcome,
            t,
        );
        result.map_err(ExecError::from)
    }

    /// Applies a ledger change and saves it; on a failed save the in-memory ledger is put back.
    pub(super) fn commit(
        &mut self,
        steps: &mut Steps,
        why: &str,
        change: impl FnOnce(&mut Ledger),
    ) -> Result<(), ExecError> {
        let before = self.ledger.clone();
        change(&mut self.ledger);
        if let Err(e) = self.save_ledger(steps, why) {
            self.ledger = before;
            return Err(e);
        }
        Ok(())
    }
}
