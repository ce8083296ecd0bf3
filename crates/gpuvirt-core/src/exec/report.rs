//! What the executor reports: one step, one action, one plan ([`ApplyReport`]).
//! May import: crate::error, exec/error, exec/write.

use std::fmt;
use std::path::PathBuf;

use super::error::ExecError;
use super::write::errno_name;

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    Done,
    /// Nothing to do (already in the wanted state).
    Skipped {
        why: String,
    },
    Failed {
        /// The errno of a failed write, when the step was one.
        errno: Option<String>,
        message: String,
    },
}

/// One step of an action: a write, a read-back, a command, a ledger update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StepReport {
    /// What the step does, for people (`write vfio-pci to .../driver_override`).
    pub description: String,
    /// The file concerned, relative to the root.
    pub path: Option<PathBuf>,
    pub outcome: StepOutcome,
    /// Part of undoing a failed action.
    pub rollback: bool,
    pub millis: u64,
}

/// The outcome of one action.
#[derive(Debug)]
pub struct ActionReport {
    /// The action, as [`Action`](crate::plan::Action)'s `Display` writes it.
    pub action: String,
    pub rule: Option<String>,
    pub steps: Vec<StepReport>,
    /// `None` when the action succeeded.
    pub error: Option<ExecError>,
    /// For a failed slot bind: whether every function is back on its original driver.
    pub rolled_back: Option<bool>,
}

impl ActionReport {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

impl fmt::Display for ActionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => write!(f, "done: {}", self.action)?,
            Some(e) => write!(
                f,
                "failed: {}: {}",
                self.action,
                crate::error_chain(e as &dyn std::error::Error)
            )?,
        }
        match self.rolled_back {
            Some(true) => write!(
                f,
                " (rolled back: every function is on its original driver)"
            ),
            Some(false) => write!(
                f,
                " (rollback incomplete: the ledger keeps the original drivers)"
            ),
            None => Ok(()),
        }
    }
}

/// The outcome of a plan: done actions, the first failure, and what was not attempted.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub done: Vec<ActionReport>,
    pub failed: Option<ActionReport>,
    /// Actions after the failure, as `Display` writes them.
    pub not_attempted: Vec<String>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.failed.is_none()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.done {
            writeln!(f, "{a}")?;
        }
        if let Some(a) = &self.failed {
            writeln!(f, "{a}")?;
        }
        for a in &self.not_attempted {
            writeln!(f, "not attempted: {a}")?;
        }
        Ok(())
    }
}

/// The failed outcome of a step that ended in `err`.
pub(super) fn failed(err: &ExecError) -> StepOutcome {
    StepOutcome::Failed {
        errno: err.errno().map(errno_name),
        message: crate::error::error_chain(err as &dyn std::error::Error),
    }
}
