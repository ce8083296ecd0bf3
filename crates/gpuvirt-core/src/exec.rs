//! The executor: runs planned [`Action`]s against a root's sysfs and boot files, with the
//! kernel's real sequences, read-back verification and the ownership [`Ledger`].
//!
//! Synchronous on purpose: the daemon runs [`Executor::run`] (or single [`write_attr`] calls)
//! in a worker with a timeout, so a hanging sysfs write stalls one step and not the daemon.
//! Every path component that comes from input is validated ([`names`]) before any I/O, and
//! every tool (`modprobe`, `update-initramfs`, `dracut`) is resolved under the root, so a test
//! root runs its own test doubles and never the host's.
//!
//! Passthrough keeps the card whole: the originals of every function of a slot are written to
//! the ledger (state `pending`) before anything is touched; any failure rolls the whole slot
//! back to those drivers, and the record is dropped only once every function is back.
//!
//! May import: crate::error, crate::host, crate::model, crate::plan (the action vocabulary),
//! crate::state::ledger, its own children.

mod boot;
mod error;
mod executor;
mod mdev;
mod report;
mod slot;
mod sriov;
mod write;

use std::time::Duration;

pub use crate::error::ErrorKind;
pub use crate::host::names;
pub use crate::host::names::NameError;
use crate::host::root::Root;
pub use crate::host::tools::Tools;
use crate::model::PciAddress;
use crate::plan::{Action, Plan};
use crate::state::ledger::{Ledger, LedgerError, LedgerStore, SlotRecord, SlotState};

pub use error::ExecError;
pub use executor::Executor;
use executor::Steps;
pub use report::{ActionReport, ApplyReport, StepOutcome, StepReport};
pub use write::{errno_name, write_attr, WriteError, OWNED_FILE_HEADER, OWNED_FILE_MARKER};

impl Executor {
    /// An executor for `root` with the ledger in `store` (loaded now; a main file recovered
    /// from its previous generation is reported by [`Executor::ledger_warning`]).
    pub fn open(root: Root, store: LedgerStore) -> Result<(Self, Option<String>), LedgerError> {
        let loaded = store.load_reporting()?;
        Ok((
            Self {
                root,
                tools: Tools::default(),
                store,
                ledger: loaded.ledger,
                module_settle: Duration::from_secs(2),
            },
            loaded.warning,
        ))
    }

    /// Uses other tool locations (relative to the root).
    pub fn with_tools(mut self, tools: Tools) -> Self {
        self.tools = tools;
        self
    }

    /// How long to wait for `/sys/module/<m>` after `modprobe` returns.
    pub fn with_module_settle(mut self, settle: Duration) -> Self {
        self.module_settle = settle;
        self
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// What gpuvirt owns, as last saved.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Changes the ledger outside an action (mdevctl-style define and undefine, which touch no
    /// device) and saves it; a failed save undoes the change.
    pub fn update_ledger(&mut self, change: impl FnOnce(&mut Ledger)) -> Result<(), LedgerError> {
        let before = self.ledger.clone();
        change(&mut self.ledger);
        if let Err(e) = self.store.save(&self.ledger) {
            self.ledger = before;
            return Err(e);
        }
        Ok(())
    }

    /// Runs a plan's actions in order, stopping at the first failure.
    pub fn execute(&mut self, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        let actions = &plan.actions;
        let mut next = 0;
        while next < actions.len() {
            // Consecutive mdev creations run as one batch (one ledger save for all).
            let creations = actions[next..]
                .iter()
                .take_while(|a| matches!(a.action, Action::CreateMdev { .. }))
                .count();
            let reports = if creations > 1 {
                let batch = &actions[next..next + creations];
                next += creations;
                self.create_mdevs(batch)
            } else {
                let planned = &actions[next];
                next += 1;
                vec![self.run(&planned.action, planned.rule.as_deref())]
            };
            let attempted = reports.len();
            // A batch reports at most one failure.
            for r in reports {
                if r.succeeded() {
                    report.done.push(r);
                } else {
                    report.failed = Some(r);
                }
            }
            if report.failed.is_some() {
                // Within a batch, what follows the failure was not attempted either.
                let skipped_in_batch = if creations > 1 {
                    creations - attempted
                } else {
                    0
                };
                next -= skipped_in_batch;
                break;
            }
        }
        report.not_attempted = actions[next..]
            .iter()
            .map(|a| a.action.to_string())
            .collect();
        report
    }

    /// Runs one action.
    pub fn run(&mut self, action: &Action, rule: Option<&str>) -> ActionReport {
        let mut steps = Steps::new();
        let mut rolled_back = None;
        let result = match action {
            Action::LoadModule { module } => self.load_module(module, &mut steps),
            Action::BindSlotToVfio { slot, functions } => {
                let addresses: Vec<PciAddress> = functions.iter().map(|f| f.address).collect();
                self.bind_slot(*slot, &addresses, rule, &mut steps, &mut rolled_back)
            }
            Action::ReturnSlotToHost { slot, .. } => self.return_slot(*slot, &mut steps),
            Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } => self.create_mdev(parent, type_id, *uuid, rule, &mut steps),
            Action::RemoveMdev { uuid, .. } => self.remove_mdev(*uuid, &mut steps),
            Action::SetSriovNumVfs { pf, to, .. } => self.set_num_vfs(*pf, *to, rule, &mut steps),
            Action::SetVgpuType { vf, type_id, .. } => {
                self.set_vgpu_type(*vf, *type_id, rule, &mut steps)
            }
            Action::ClearVgpuType { vf, .. } => self.clear_vgpu_type(*vf, &mut steps),
            Action::WriteBootFile { path, contents } => {
                self.write_boot_file(path, contents, &mut steps)
            }
            Action::RemoveBootFile { path } => self.remove_boot_file(path, &mut steps),
            Action::RegenerateInitramfs => self.regenerate_initramfs(&mut steps),
        };
        ActionReport {
            action: action.to_string(),
            rule: rule.map(str::to_string),
            steps: steps.steps,
            error: result.err(),
            rolled_back,
        }
    }

    /// Finishes what a killed daemon left half done, from the ledger: a slot still `pending`
    /// (bind interrupted) or `returning` goes back to its original drivers.
    pub fn recover(&mut self) -> Vec<ActionReport> {
        let unfinished: Vec<(String, SlotRecord)> = self
            .ledger
            .slots
            .iter()
            .filter(|(_, r)| matches!(r.state, SlotState::Pending | SlotState::Returning))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut reports = Vec::new();
        for (_, record) in unfinished {
            let Some(first) = record.functions.first() else {
                continue;
            };
            let slot = first.address.slot();
            let mut steps = Steps::new();
            let result = self.return_slot(slot, &mut steps);
            reports.push(ActionReport {
                action: format!(
                    "return slot {slot} to the host (recovering an interrupted {})",
                    match record.state {
                        SlotState::Pending => "assignment",
                        _ => "return",
                    }
                ),
                rule: record.rule.clone(),
                steps: steps.steps,
                error: result.err(),
                rolled_back: None,
            });
        }
        reports
    }
}
