//! SR-IOV VF counts and NVIDIA per-VF vGPU types. May import: crate::host, crate::model,
//! crate::state, crate::plan, exec/{executor, error, report, write}.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::error::ExecError;
use super::executor::{pci_dev, Executor, Steps};
use super::report::{failed, StepOutcome};
use super::write::{WriteError, EINVAL, ERANGE};
use crate::model::PciAddress;
use crate::state::ledger::{SriovRecord, VgpuRecord};

impl Executor {
    pub(super) fn set_num_vfs(
        &mut self,
        pf: PciAddress,
        to: u32,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let rel = pci_dev(pf).join("sriov_numvfs");
        if !self.exists(&pci_dev(pf)) {
            return Err(ExecError::DeviceGone {
                address: pf,
                during: "before setting sriov_numvfs".to_string(),
            });
        }
        if !self.exists(&rel) {
            return Err(ExecError::NoSriov { pf });
        }
        let parse = |this: &Self| -> Result<u32, ExecError> {
            let text = this.read_attr(&rel)?;
            text.trim().parse().map_err(|_| ExecError::Verify {
                what: format!("{pf} sriov_numvfs"),
                wanted: "a number".to_string(),
                actual: text,
            })
        };
        let from = parse(self)?;
        let original = self
            .ledger
            .sriov
            .get(&pf)
            .map_or(from, |r| r.original_num_vfs);
        if from == to {
            steps.skipped(format!("set {pf} sriov_numvfs to {to}"), "already set");
        } else {
            let map = |this: &Self, e: WriteError| match e.errno {
                ERANGE => ExecError::TooManyVfs { pf, wanted: to },
                _ => this.write_error(Some(pf), format!("setting {pf} sriov_numvfs"), e),
            };
            // The kernel changes a non-zero count only through 0.
            if from != 0 && to != 0 {
                self.write(steps, &rel, "0").map_err(|e| map(self, e))?;
            }
            // Recorded before VFs appear, so gpuvirt knows it changed the count.
            self.commit(steps, &format!("{pf} sriov_numvfs {to}"), |l| {
                l.sriov.insert(
                    pf,
                    SriovRecord {
                        num_vfs: to,
                        original_num_vfs: original,
                        rule: rule.map(str::to_string),
                    },
                );
            })?;
            self.write(steps, &rel, &to.to_string())
                .map_err(|e| map(self, e))?;
            let now = parse(self)?;
            if now != to {
                return Err(ExecError::Verify {
                    what: format!("{pf} sriov_numvfs"),
                    wanted: to.to_string(),
                    actual: now.to_string(),
                });
            }
        }
        if to == original {
            self.commit(
                steps,
                &format!("{pf} sriov_numvfs back to {original}"),
                |l| {
                    l.sriov.remove(&pf);
                },
            )?;
        }
        Ok(())
    }

    pub(super) fn vgpu_path(&self, vf: PciAddress) -> Result<PathBuf, ExecError> {
        if !self.exists(&pci_dev(vf)) {
            return Err(ExecError::DeviceGone {
                address: vf,
                during: "before changing its vGPU type".to_string(),
            });
        }
        let rel = pci_dev(vf).join("nvidia/current_vgpu_type");
        if !self.exists(&rel) {
            return Err(ExecError::NoVgpuInterface { vf });
        }
        Ok(rel)
    }

    pub(super) fn check_vgpu(
        &self,
        vf: PciAddress,
        rel: &Path,
        wanted: u32,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let t = Instant::now();
        let actual = self.read_attr(rel)?;
        let description = format!("check that {vf} current_vgpu_type is {wanted}");
        if actual.trim() == wanted.to_string() {
            steps.push(description, Some(rel.to_path_buf()), StepOutcome::Done, t);
            return Ok(());
        }
        let err = ExecError::Verify {
            what: format!("{vf} current_vgpu_type"),
            wanted: wanted.to_string(),
            actual,
        };
        steps.push(description, Some(rel.to_path_buf()), failed(&err), t);
        Err(err)
    }

    pub(super) fn set_vgpu_type(
        &mut self,
        vf: PciAddress,
        type_id: u32,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let rel = self.vgpu_path(vf)?;
        let previous = self.ledger.vgpus.get(&vf).cloned();
        self.commit(steps, &format!("vGPU {type_id} on {vf}"), |l| {
            l.vgpus.insert(
                vf,
                VgpuRecord {
                    type_id,
                    rule: rule.map(str::to_string),
                },
            );
        })?;
        if let Err(e) = self.write(steps, &rel, &type_id.to_string()) {
            let err = match e.errno {
                EINVAL => ExecError::UnknownType {
                    parent: vf.to_string(),
                    type_id: type_id.to_string(),
                },
                _ => self.write_error(Some(vf), format!("setting {vf} current_vgpu_type"), e),
            };
            let _ = self.commit(
                steps,
                &format!("vGPU on {vf} not created"),
                |l| match previous {
                    Some(p) => {
                        l.vgpus.insert(vf, p);
                    }
                    None => {
                        l.vgpus.remove(&vf);
                    }
                },
            );
            return Err(err);
        }
        self.check_vgpu(vf, &rel, type_id, steps)
    }

    pub(super) fn clear_vgpu_type(
        &mut self,
        vf: PciAddress,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        if !self.ledger.vgpus.contains_key(&vf) {
            return Err(ExecError::NotOwned {
                what: format!("the vGPU on {vf}"),
            });
        }
        let rel = match self.vgpu_path(vf) {
            Ok(rel) => rel,
            Err(ExecError::DeviceGone { .. }) => {
                // The VF went away (SR-IOV disabled): so did its vGPU.
                steps.skipped(format!("clear {vf} current_vgpu_type"), "the VF is gone");
                return self.commit(steps, &format!("vGPU on {vf} gone"), |l| {
                    l.vgpus.remove(&vf);
                });
            }
            Err(e) => return Err(e),
        };
        self.write(steps, &rel, "0").map_err(|e| {
            self.write_error(Some(vf), format!("clearing {vf} current_vgpu_type"), e)
        })?;
        self.check_vgpu(vf, &rel, 0, steps)?;
        self.commit(steps, &format!("vGPU on {vf} destroyed"), |l| {
            l.vgpus.remove(&vf);
        })
    }
}
