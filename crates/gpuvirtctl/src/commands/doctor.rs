//! `gpuvirtctl doctor`: can this host pass GPUs through? The runbook's checks (IOMMU on in
//! dmesg, vfio modules, each GPU's IOMMU group, `systemctl status nvidia-vgpu-mgr`) answered
//! from gpuvirtd's properties only, then which of the runbook's three graphics paths (3D with
//! virgl, PCI passthrough, vGPUs) the host can serve and why not. May import: crate::client,
//! crate::errors, crate::view.

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
    /// `running`, `not-running`, or empty (no NVIDIA driver).
    pub nvidia_vgpu_manager: String,
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
            nvidia_vgpu_manager: p.nvidia_vgpu_manager,
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
    out.extend(graphics_paths(facts, host).into_iter().map(|p| p.finding));
    out
}

/// One of the runbook's graphics paths and whether the host can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphicsPathVerdict {
    /// `3d`, `passthrough`, `vgpu`.
    pub path: &'static str,
    pub possible: bool,
    /// The finding doctor prints (`path <name>`): ok when possible, a note otherwise.
    pub finding: Finding,
}

fn path_verdict(
    path: &'static str,
    possible: bool,
    detail: String,
    todo: &str,
) -> GraphicsPathVerdict {
    let verdict = if possible { Verdict::Ok } else { Verdict::Note };
    GraphicsPathVerdict {
        path,
        possible,
        finding: finding(&format!("path {path}"), verdict, detail, todo),
    }
}

/// The runbook's Graphics section, host by host: 3D through virtio-gpu/virgl (a render node,
/// no IOMMU), native performance by passthrough (IOMMU, vfio-pci, a card that may go), and
/// sharing a card as vGPUs (a vGPU parent with types; NVIDIA's manager daemon).
pub fn graphics_paths(facts: &HostFacts, host: &Host) -> Vec<GraphicsPathVerdict> {
    let mut out = Vec::new();
    // 3D: any GPU with a render node on the host.
    let renderers: Vec<String> = host
        .gpus
        .iter()
        .filter_map(|g| {
            let d = g.drm.as_ref()?;
            let node = [&d.render_node_by_path, &d.render_node]
                .into_iter()
                .find(|n| !n.is_empty())?;
            Some(format!("{} ({}, {node})", g.pci_address, g.driver))
        })
        .collect();
    out.push(if renderers.is_empty() {
        // Grouped by reason: a host of eight cards on one driver gives one line, not eight.
        let mut why: Vec<(String, Vec<&str>)> = Vec::new();
        for g in &host.gpus {
            let reason = match g.driver.as_str() {
                "" => "no driver".to_owned(),
                "vfio-pci" => "on vfio-pci".to_owned(),
                d => format!("on {d}, which registers no render node"),
            };
            match why.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, gpus)) => gpus.push(&g.pci_address),
                None => why.push((reason, vec![&g.pci_address])),
            }
        }
        let why: Vec<String> = why
            .into_iter()
            .map(|(reason, gpus)| format!("{} {reason}", gpus.join(", ")))
            .collect();
        path_verdict(
            "3d",
            false,
            if why.is_empty() {
                "3D with virgl: no GPU on this host".to_owned()
            } else {
                format!(
                    "3D with virgl: no GPU has a DRM render node ({})",
                    why.join("; ")
                )
            },
            "bind a GPU to its DRM driver (i915, amdgpu, nouveau, ...) to render for guests \
             (`gpuvirtctl xml GPU --graphics virgl`); no IOMMU is needed",
        )
    } else {
        path_verdict(
            "3d",
            true,
            format!(
                "3D with virgl can render on {} (no IOMMU needed; `--graphics virgl`)",
                renderers.join(", ")
            ),
            "",
        )
    });
    // Passthrough: the host-wide checks, then a card that may go.
    let ready: Vec<&str> = host
        .gpus
        .iter()
        .filter(|g| !g.boot_vga && g.physical_function.is_empty())
        .filter(|g| {
            g.iommu_group
                .and_then(|id| host.groups.iter().find(|x| x.id == id))
                .is_some_and(|x| x.viable)
        })
        .map(|g| g.pci_address.as_str())
        .collect();
    let mut missing = Vec::new();
    if !facts.iommu_enabled {
        missing.push("the IOMMU is off".to_owned());
    }
    if !facts.vfio_available {
        missing.push("vfio-pci is not available".to_owned());
    }
    if ready.is_empty() {
        missing.push("no card is outside the boot VGA with a viable IOMMU group".to_owned());
    }
    out.push(if missing.is_empty() {
        path_verdict(
            "passthrough",
            true,
            format!("PCI passthrough of {}", ready.join(", ")),
            "",
        )
    } else {
        path_verdict(
            "passthrough",
            false,
            format!("PCI passthrough: {}", missing.join("; ")),
            "see the iommu, vfio and gpu findings above",
        )
    });
    // vGPUs: a parent offering types, and for NVIDIA the manager daemon.
    let parents: Vec<String> = host
        .gpus
        .iter()
        .filter_map(|g| g.shard.as_ref())
        .chain(host.other_parents.iter())
        .filter(|p| !p.types.is_empty())
        .map(|p| format!("{} ({}, {} types)", p.name, p.backend, p.types.len()))
        .collect();
    let nvidia_parent = host
        .gpus
        .iter()
        .any(|g| g.shard.is_some() && g.driver == "nvidia");
    out.push(if parents.is_empty() {
        path_verdict(
            "vgpu",
            false,
            "vGPUs: no GPU offers vGPU types (no vGPU host driver bound)".to_owned(),
            "install and load the vendor's vGPU host driver (NVIDIA vGPU, i915 GVT-g) to share a card",
        )
    } else if nvidia_parent && facts.nvidia_vgpu_manager == "not-running" {
        path_verdict(
            "vgpu",
            false,
            format!(
                "vGPUs on {}: nvidia-vgpu-mgr is not running, so a guest gets no working vGPU",
                parents.join(", ")
            ),
            "start it: `systemctl enable --now nvidia-vgpu-mgr` (from NVIDIA's vGPU host package)",
        )
    } else {
        let manager = if nvidia_parent && facts.nvidia_vgpu_manager == "running" {
            "; nvidia-vgpu-mgr is running"
        } else {
            ""
        };
        path_verdict(
            "vgpu",
            true,
            format!("vGPUs on {}{manager}", parents.join(", ")),
            "",
        )
    });
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
        let paths: serde_json::Map<String, serde_json::Value> = graphics_paths(&facts, &host)
            .into_iter()
            .map(|p| (p.path.to_owned(), serde_json::Value::Bool(p.possible)))
            .collect();
        print_json(&serde_json::json!({
            "kernel": facts.kernel_release,
            "passthrough_possible": blocking == 0,
            "graphics_paths": paths,
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

    fn path<'a>(paths: &'a [GraphicsPathVerdict], name: &str) -> &'a GraphicsPathVerdict {
        paths.iter().find(|p| p.path == name).expect("the path")
    }

    #[test]
    fn graphics_paths_say_what_the_host_lacks() {
        let mut nvidia = gpu("0000:41:00.0", 1, false);
        nvidia.driver = "nvidia".into();
        nvidia.shard = Some(crate::view::ShardView {
            path: String::new(),
            name: "0000:41:00.0".into(),
            backend: "mdev".into(),
            types: vec![gpuvirt_api::TypeInfo {
                id: "nvidia-300".into(),
                name: "GRID V100-8C".into(),
                description: String::new(),
                device_api: "vfio-pci".into(),
                available_instances: 2,
            }],
            children: vec![],
        });
        let mut igpu = gpu("0000:00:02.0", 2, true);
        igpu.driver = "i915".into();
        igpu.drm = Some(crate::view::DrmView {
            card: "/dev/dri/card0".into(),
            render_node: "/dev/dri/renderD128".into(),
            card_by_path: String::new(),
            render_node_by_path: String::new(),
        });
        let host = Host {
            gpus: vec![igpu, nvidia],
            groups: vec![group(1, true), group(2, true)],
            ..Host::default()
        };
        let mut facts = HostFacts {
            iommu_enabled: true,
            vfio_available: true,
            mdev_available: true,
            nvidia_vgpu_manager: "not-running".into(),
            ..HostFacts::default()
        };
        let paths = graphics_paths(&facts, &host);
        assert!(path(&paths, "3d").possible);
        assert!(path(&paths, "3d")
            .finding
            .detail
            .contains("/dev/dri/renderD128"));
        // The boot VGA stays; the V100 may go.
        assert!(path(&paths, "passthrough")
            .finding
            .detail
            .ends_with("of 0000:41:00.0"));
        let vgpu = path(&paths, "vgpu");
        assert!(!vgpu.possible, "{vgpu:?}");
        assert!(vgpu
            .finding
            .detail
            .contains("nvidia-vgpu-mgr is not running"));
        assert!(vgpu
            .finding
            .todo
            .contains("systemctl enable --now nvidia-vgpu-mgr"));
        facts.nvidia_vgpu_manager = "running".into();
        facts.iommu_enabled = false;
        let paths = graphics_paths(&facts, &host);
        assert!(path(&paths, "vgpu").possible);
        assert!(!path(&paths, "passthrough").possible);
        assert!(path(&paths, "passthrough")
            .finding
            .detail
            .contains("the IOMMU is off"));
        // Only the paths' notes, never a blocking verdict: doctor's exit code stays passthrough's.
        assert!(paths.iter().all(|p| p.finding.verdict != Verdict::Blocking));
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
