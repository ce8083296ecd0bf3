//! `gpuvirtctl doctor`: can this host pass GPUs through? The runbook's checks (IOMMU on in
//! dmesg, vfio modules, each GPU's IOMMU group) answered from gpuvirtd's properties only. May
//! import: crate::client, crate::errors, crate::view.

use gpuvirt_api as api;

use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::view::Host;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Worth knowing; passthrough still works.
    Note,
    /// Passthrough (of that device, or at all) cannot work until this is fixed.
    Blocking,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do; empty when nothing is needed.
    pub todo: String,
}

fn finding(check: &str, verdict: Verdict, detail: String, todo: &str) -> Finding {
    Finding {
        check: check.to_owned(),
        verdict,
        detail,
        todo: todo.to_owned(),
    }
}

/// The Manager properties doctor reads.
#[derive(Debug, Default, Clone)]
pub struct HostFacts {
    pub iommu_enabled: bool,
    pub iommu_reasons: Vec<String>,
    pub vfio_available: bool,
    pub mdev_available: bool,
    pub kernel_release: String,
    pub scan_warnings: Vec<String>,
    pub reboot_required: bool,
    pub reboot_reasons: Vec<String>,
}

impl HostFacts {
    fn from_props(p: api::ManagerProps) -> Self {
        Self {
            iommu_enabled: p.iommu_enabled,
            iommu_reasons: p.iommu_reasons,
            vfio_available: p.vfio_available,
            mdev_available: p.mdev_available,
            kernel_release: p.kernel_release,
            scan_warnings: p.scan_warnings,
            reboot_required: p.reboot_required,
            reboot_reasons: p.reboot_reasons,
        }
    }
}

/// Every finding, host-wide first, then one per GPU.
pub fn diagnose(facts: &HostFacts, host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    let reasons = facts.iommu_reasons.join("; ");
    if facts.iommu_enabled {
        out.push(finding(
            "iommu",
            Verdict::Ok,
            format!("IOMMU enabled ({reasons})"),
            "",
        ));
    } else {
        out.push(finding(
            "iommu",
            Verdict::Blocking,
            if reasons.is_empty() {
                "IOMMU not enabled".to_owned()
            } else {
                format!("IOMMU not enabled: {reasons}")
            },
            "enable VT-d/AMD-Vi in the firmware and add intel_iommu=on (Intel) or amd_iommu=on (AMD) \
             and iommu=pt to the kernel command line, then reboot",
        ));
    }
    // Interrupt remapping shows in the daemon's reasons when the kernel reported it.
    if let Some(r) = facts
        .iommu_reasons
        .iter()
        .find(|r| r.to_ascii_lowercase().contains("remapping"))
    {
        out.push(finding("interrupt-remapping", Verdict::Ok, r.clone(), ""));
    }
    if facts.vfio_available {
        out.push(finding(
            "vfio",
            Verdict::Ok,
            "vfio-pci available".to_owned(),
            "",
        ));
    } else {
        out.push(finding(
            "vfio",
            Verdict::Blocking,
            "vfio-pci is not available".to_owned(),
            "install the kernel's vfio modules and load them (`modprobe vfio-pci`), \
             or list vfio vfio_iommu_type1 vfio_pci in /etc/modules-load.d",
        ));
    }
    out.push(if facts.mdev_available {
        finding(
            "mdev",
            Verdict::Ok,
            "mediated devices available".to_owned(),
            "",
        )
    } else {
        finding(
            "mdev",
            Verdict::Note,
            "no mediated-device support (vGPU sharding unavailable)".to_owned(),
            "load the vendor's vGPU host driver if you want to share GPUs",
        )
    });
    // Boot-time changes (blacklists, early vfio-pci binding) take hold only after a reboot;
    // until then the running host differs from what the policy asked for.
    if facts.reboot_required {
        out.push(finding(
            "reboot",
            Verdict::Note,
            if facts.reboot_reasons.is_empty() {
                "a reboot is required".to_owned()
            } else {
                format!("a reboot is required: {}", facts.reboot_reasons.join("; "))
            },
            "reboot, then check `journalctl -b -u gpuvirtd`; the note stays while the running \
             host still differs from the boot files",
        ));
    }
    for w in &facts.scan_warnings {
        out.push(finding("scan", Verdict::Note, w.clone(), ""));
    }
    for gpu in &host.gpus {
        let check = format!("gpu {}", gpu.pci_address);
        if gpu.boot_vga {
            out.push(finding(
                &check,
                Verdict::Note,
                "boot VGA: the host displays on it; gpuvirt will not pass it through".to_owned(),
                "give the host another display (or run headless) to pass this one through",
            ));
            continue;
        }
        let Some(id) = gpu.iommu_group else {
            out.push(finding(
                &check,
                Verdict::Blocking,
                "in no IOMMU group".to_owned(),
                "enable the IOMMU (see the iommu check)",
            ));
            continue;
        };
        match host.groups.iter().find(|g| g.id == id) {
            Some(g) if g.viable => out.push(finding(
                &check,
                Verdict::Ok,
                format!("IOMMU group {id} is viable ({} members)", g.members.len()),
                "",
            )),
            Some(g) => out.push(finding(
                &check,
                Verdict::Blocking,
                format!(
                    "IOMMU group {id} is not viable: {}",
                    if g.viability_problems.is_empty() {
                        "the daemon gave no reason".to_owned()
                    } else {
                        g.viability_problems.join("; ")
                    }
                ),
                "move the card to a slot with its own group, or hand the whole group to the VM",
            )),
            None => out.push(finding(
                &check,
                Verdict::Note,
                format!("IOMMU group {id} is not served by gpuvirtd"),
                "",
            )),
        }
    }
    out
}

pub async fn run(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let props = ctx.manager_properties().await?;
    let facts = HostFacts::from_props(props);
    let host = ctx.host().await?;
    let findings = diagnose(&facts, &host);
    let blocking = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Blocking)
        .count();
    if json {
        print_json(&serde_json::json!({
            "kernel": facts.kernel_release,
            "passthrough_possible": blocking == 0,
            "findings": findings,
        }))?;
    } else {
        if !facts.kernel_release.is_empty() {
            outln!("kernel {}", facts.kernel_release)?;
        }
        for f in &findings {
            let mark = match f.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Note => "note",
                Verdict::Blocking => "FAIL",
            };
            outln!("{mark} {}: {}", f.check, f.detail)?;
            if !f.todo.is_empty() && f.verdict != Verdict::Ok {
                outln!("     → {}", f.todo)?;
            }
        }
    }
    if blocking > 0 {
        return Err(CliError::Daemon(format!(
            "{blocking} problem{} block{} passthrough",
            if blocking == 1 { "" } else { "s" },
            if blocking == 1 { "s" } else { "" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{GpuView, GroupView};

    fn gpu(address: &str, group: u32, boot_vga: bool) -> GpuView {
        GpuView {
            path: String::new(),
            pci_address: address.into(),
            vendor_id: String::new(),
            device_id: String::new(),
            subsystem_vendor_id: String::new(),
            subsystem_device_id: String::new(),
            vendor_name: String::new(),
            product_name: String::new(),
            subsystem_name: String::new(),
            class_code: String::new(),
            driver: String::new(),
            driver_override: String::new(),
            kernel_modules: vec![],
            boot_vga,
            numa_node: 0,
            reset_methods: vec![],
            iommu_group: Some(group),
            companions: vec![],
            state: String::new(),
            physical_function: String::new(),
            virtual_functions: vec![],
            sriov_total_vfs: 0,
            sriov_num_vfs: 0,
            shard: None,
            drm: None,
        }
    }

    fn group(id: u32, viable: bool) -> GroupView {
        GroupView {
            path: String::new(),
            id,
            viable,
            members: vec![],
            viability_problems: if viable {
                vec![]
            } else {
                vec!["a NIC shares it".into()]
            },
        }
    }

    fn blocking(f: &[Finding]) -> Vec<String> {
        f.iter()
            .filter(|f| f.verdict == Verdict::Blocking)
            .map(|f| f.check.clone())
            .collect()
    }

    #[test]
    fn iommu_off_and_no_vfio_block() {
        let f = diagnose(&HostFacts::default(), &Host::default());
        assert_eq!(blocking(&f), ["iommu", "vfio"]);
    }

    #[test]
    fn unviable_group_blocks_that_gpu_but_boot_vga_is_only_a_note() {
        let facts = HostFacts {
            iommu_enabled: true,
            vfio_available: true,
            ..HostFacts::default()
        };
        let host = Host {
            gpus: vec![gpu("0000:01:00.0", 1, true), gpu("0000:02:00.0", 2, false)],
            groups: vec![group(1, true), group(2, false)],
            ..Host::default()
        };
        let f = diagnose(&facts, &host);
        assert_eq!(blocking(&f), ["gpu 0000:02:00.0"]);
        assert!(f.iter().any(|x| x.detail.contains("a NIC shares it")));
    }

    #[test]
    fn reboot_required_is_a_note_with_the_reasons() {
        let quiet = diagnose(&HostFacts::default(), &Host::default());
        assert!(quiet.iter().all(|f| f.check != "reboot"));
        let facts = HostFacts {
            reboot_required: true,
            reboot_reasons: vec!["nouveau is still loaded".into()],
            ..HostFacts::default()
        };
        let f = diagnose(&facts, &Host::default());
        let reboot = f
            .iter()
            .find(|f| f.check == "reboot")
            .expect("a reboot finding");
        assert_eq!(reboot.verdict, Verdict::Note);
        assert!(
            reboot.detail.contains("nouveau is still loaded"),
            "{reboot:?}"
        );
        assert!(reboot.todo.contains("reboot"));
    }
}
