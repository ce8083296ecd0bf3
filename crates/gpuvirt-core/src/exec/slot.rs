//! Passthrough: a whole slot to vfio-pci and back, with its originals kept in the ledger
//! first and a full rollback on failure. May import: crate::host, crate::model,
//! crate::state, crate::plan (the action vocabulary), exec/{executor, error, report, write}.

use std::fs::{self};
use std::path::Path;
use std::time::Instant;

use super::error::ExecError;
use super::executor::{pci_dev, Executor, Steps};
use super::report::{failed, StepOutcome};
use crate::host::names;
use crate::model::{PciAddress, PciSlot};
use crate::plan::action::VFIO_PCI;
use crate::state::ledger::{FunctionRecord, Ledger, SlotRecord, SlotState};

impl Executor {
    // -----------------------------------------------------------------------------------
    // Passthrough
    // -----------------------------------------------------------------------------------

    /// The functions of `slot` present now, sorted.
    pub(super) fn slot_functions(&self, slot: PciSlot) -> Result<Vec<PciAddress>, ExecError> {
        let dir = self.abs(Path::new("sys/bus/pci/devices"));
        let entries = fs::read_dir(&dir).map_err(|source| ExecError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut out: Vec<PciAddress> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<PciAddress>().ok())
            .filter(|a| a.slot() == slot)
            .collect();
        out.sort();
        Ok(out)
    }

    pub(super) fn bind_slot(
        &mut self,
        slot: PciSlot,
        planned: &[PciAddress],
        rule: Option<&str>,
        steps: &mut Steps,
        rolled_back: &mut Option<bool>,
    ) -> Result<(), ExecError> {
        if let Some(a) = planned.iter().find(|a| a.slot() != slot) {
            return Err(ExecError::ForeignFunction { slot, address: *a });
        }
        if !self.module_loaded(VFIO_PCI) && !self.exists(Path::new("sys/bus/pci/drivers/vfio-pci"))
        {
            return Err(ExecError::VfioNotLoaded { slot });
        }
        // The whole slot moves, including functions the plan did not list.
        let mut functions = self.slot_functions(slot)?;
        for a in planned {
            if !functions.contains(a) {
                return Err(ExecError::DeviceGone {
                    address: *a,
                    during: "before binding its slot to vfio-pci".to_string(),
                });
            }
        }
        functions.dedup();
        let mut current = Vec::new();
        for a in &functions {
            current.push((*a, self.current_driver(*a, "before binding to vfio-pci")?));
        }

        // Originals first: a record that already exists (a retry, an interrupted run) keeps
        // the drivers it found the first time, never vfio-pci it may show now. A removed
        // card's record speaks for the card in the slot now only where that is on vfio-pci.
        let key = Ledger::slot_key(slot);
        let previous = self.ledger.slots.get(&key).cloned();
        let record = SlotRecord {
            functions: current
                .iter()
                .map(|(a, d)| FunctionRecord {
                    address: *a,
                    original_driver: match previous.as_ref().and_then(|p| {
                        let speaks = p.is_open() || d.as_deref() == Some(VFIO_PCI);
                        speaks.then(|| p.original_driver(*a)).flatten()
                    }) {
                        Some(original) => original.map(str::to_string),
                        None => d.clone(),
                    },
                })
                .collect(),
            rule: rule
                .map(str::to_string)
                .or_else(|| previous.as_ref().and_then(|p| p.rule.clone())),
            state: SlotState::Pending,
            removal: None,
        };
        let originals = record.functions.clone();
        self.commit(
            steps,
            &format!("slot {slot} pending, original drivers kept"),
            |l| {
                l.slots.insert(key.clone(), record);
            },
        )?;

        match self.bind_functions(&current, steps) {
            Ok(()) => {
                self.commit(steps, &format!("slot {slot} assigned to vfio-pci"), |l| {
                    if let Some(r) = l.slots.get_mut(&key) {
                        r.state = SlotState::Assigned;
                    }
                })?;
                Ok(())
            }
            Err(err) => {
                steps.rollback = true;
                let complete = self.restore_functions(&originals, steps).is_empty();
                *rolled_back = Some(complete);
                if complete {
                    // Every function is as gpuvirt found it: the record goes (or goes back to
                    // what it was before this attempt).
                    let result =
                        self.commit(
                            steps,
                            &format!("slot {slot} rolled back"),
                            |l| match previous {
                                Some(p) if p.state == SlotState::Assigned => {
                                    l.slots.insert(key.clone(), p);
                                }
                                _ => {
                                    l.slots.remove(&key);
                                }
                            },
                        );
                    if let Err(e) = result {
                        // The pending record stays on disk: a later recovery redoes the
                        // (already complete) rollback, which is harmless.
                        steps.skipped("ledger cleanup".to_string(), e.to_string());
                    }
                }
                steps.rollback = false;
                Err(err)
            }
        }
    }

    /// override → unbind → probe for every function not on vfio-pci yet, then verify all.
    pub(super) fn bind_functions(
        &self,
        current: &[(PciAddress, Option<String>)],
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let pending: Vec<&(PciAddress, Option<String>)> = current
            .iter()
            .filter(|(_, d)| d.as_deref() != Some(VFIO_PCI))
            .collect();
        for (a, _) in &pending {
            self.write(steps, &pci_dev(*a).join("driver_override"), VFIO_PCI)
                .map_err(|e| {
                    self.write_error(Some(*a), format!("setting driver_override of {a}"), e)
                })?;
        }
        for (a, driver) in &pending {
            if let Some(d) = driver {
                let rel = Path::new("sys/bus/pci/drivers").join(d).join("unbind");
                self.write(steps, &rel, &a.to_string()).map_err(|e| {
                    self.write_error(Some(*a), format!("unbinding {a} from {d}"), e)
                })?;
            }
        }
        for (a, _) in &pending {
            self.write(
                steps,
                Path::new("sys/bus/pci/drivers_probe"),
                &a.to_string(),
            )
            .map_err(|e| self.write_error(Some(*a), format!("probing {a} for vfio-pci"), e))?;
        }
        for (a, _) in current {
            let t = Instant::now();
            let actual = self.current_driver(*a, "while verifying its vfio-pci binding")?;
            let ok = actual.as_deref() == Some(VFIO_PCI);
            let description = format!("check that {a} is bound to vfio-pci");
            if ok {
                steps.push(
                    description,
                    Some(pci_dev(*a).join("driver")),
                    StepOutcome::Done,
                    t,
                );
            } else {
                let err = ExecError::DriverBind {
                    address: *a,
                    wanted: Some(VFIO_PCI.to_string()),
                    actual,
                };
                steps.push(
                    description,
                    Some(pci_dev(*a).join("driver")),
                    failed(&err),
                    t,
                );
                return Err(err);
            }
        }
        Ok(())
    }

    /// Puts each function back on its original driver: clear the override, unbind what is
    /// bound instead, bind the original (its `bind` file, else `drivers_probe`), verify.
    /// Functions that are gone need nothing (a re-added device starts without an override).
    /// Returns the problems; empty means every present function is on its original driver.
    pub(super) fn restore_functions(
        &self,
        originals: &[FunctionRecord],
        steps: &mut Steps,
    ) -> Vec<ExecError> {
        let mut problems = Vec::new();
        let mut present = Vec::new();
        for f in originals {
            match self.current_driver(f.address, "while returning it to its driver") {
                Ok(d) => present.push((f, d)),
                Err(ExecError::DeviceGone { address, .. }) => steps.skipped(
                    format!("return {address} to its driver"),
                    "the device is gone",
                ),
                Err(e) => problems.push(e),
            }
        }
        for (f, _) in &present {
            let a = f.address;
            if let Err(e) = self.write(steps, &pci_dev(a).join("driver_override"), "\n") {
                problems.push(self.write_error(
                    Some(a),
                    format!("clearing driver_override of {a}"),
                    e,
                ));
            }
        }
        for (f, current) in &present {
            let a = f.address;
            let Some(d) = current else { continue };
            if Some(d) == f.original_driver.as_ref() {
                continue;
            }
            let rel = Path::new("sys/bus/pci/drivers").join(d).join("unbind");
            if let Err(e) = self.write(steps, &rel, &a.to_string()) {
                problems.push(self.write_error(Some(a), format!("unbinding {a} from {d}"), e));
            }
        }
        for (f, _) in &present {
            let a = f.address;
            let Some(original) = &f.original_driver else {
                continue;
            };
            match self.current_driver(a, "while returning it to its driver") {
                Ok(Some(d)) if d == *original => continue,
                Ok(Some(_)) => continue, // still bound elsewhere: reported by the check below
                Ok(None) => {}
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            }
            if names::driver(original).is_err() {
                problems.push(ExecError::DriverBind {
                    address: a,
                    wanted: Some(original.clone()),
                    actual: None,
                });
                continue;
            }
            let bind = Path::new("sys/bus/pci/drivers").join(original).join("bind");
            let bound = self.exists(&bind) && self.write(steps, &bind, &a.to_string()).is_ok();
            if !bound {
                // No such driver now (module not loaded) or it refused: let the kernel probe.
                if let Err(e) = self.write(
                    steps,
                    Path::new("sys/bus/pci/drivers_probe"),
                    &a.to_string(),
                ) {
                    problems.push(self.write_error(Some(a), format!("probing {a}"), e));
                }
            }
        }
        for (f, _) in &present {
            let a = f.address;
            let t = Instant::now();
            let description = format!(
                "check that {a} is bound to {}",
                f.original_driver.as_deref().unwrap_or("no driver")
            );
            match self.current_driver(a, "while verifying its return") {
                Ok(actual) if actual == f.original_driver => steps.push(
                    description,
                    Some(pci_dev(a).join("driver")),
                    StepOutcome::Done,
                    t,
                ),
                Ok(actual) => {
                    let err = ExecError::DriverBind {
                        address: a,
                        wanted: f.original_driver.clone(),
                        actual,
                    };
                    steps.push(
                        description,
                        Some(pci_dev(a).join("driver")),
                        failed(&err),
                        t,
                    );
                    problems.push(err);
                }
                Err(ExecError::DeviceGone { .. }) => {
                    steps.skipped(description, "the device is gone")
                }
                Err(e) => {
                    steps.push(description, None, failed(&e), t);
                    problems.push(e);
                }
            }
        }
        problems
    }

    pub(super) fn return_slot(
        &mut self,
        slot: PciSlot,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let key = Ledger::slot_key(slot);
        let Some(record) = self.ledger.slots.get(&key).cloned() else {
            return Err(ExecError::NotOwned {
                what: format!("slot {slot}"),
            });
        };
        self.commit(steps, &format!("slot {slot} returning"), |l| {
            if let Some(r) = l.slots.get_mut(&key) {
                r.state = SlotState::Returning;
            }
        })?;
        let mut problems = self.restore_functions(&record.functions, steps);
        if problems.is_empty() {
            self.commit(steps, &format!("slot {slot} back on the host"), |l| {
                l.slots.remove(&key);
            })?;
            return Ok(());
        }
        // The record stays `returning` with its originals, so a retry or a restart finishes.
        Err(problems.remove(0))
    }
}
