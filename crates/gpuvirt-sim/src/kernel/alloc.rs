//! Making model objects: IOMMU group ids, VF devices and a device from its spec. May import:
//! super (the model types), crate::fixture; calls only kernel.rs queries.

use std::collections::BTreeSet;

use gpuvirt_core::{PciAddress, PciIds};

use super::{invalid, Device, Kernel, NvidiaVgpu, Sriov};
use crate::fixture::{FixtureError, IommuVendor, PciSpec};

impl Kernel {
    pub(super) fn device_from_spec(
        &mut self,
        s: &PciSpec,
        upstream: Option<PciAddress>,
    ) -> Result<Device, FixtureError> {
        let ids = s.ids()?;
        let bridge = s.class >> 8 == 0x0604;
        let sriov = match &s.sriov {
            Some(sr) => {
                let vf_ids = match &sr.vf_id {
                    Some(id) => crate::fixture::parse_id_pair(id)
                        .ok_or_else(|| invalid(format!("{}: bad vf_id {id:?}", s.address)))?,
                    None => (ids.vendor, ids.device),
                };
                Some(Sriov {
                    total: sr.total_vfs,
                    num: 0,
                    vf_ids,
                    offset: sr.offset,
                    stride: sr.stride.max(1),
                })
            }
            None => None,
        };
        let irq = s.irq.unwrap_or_else(|| {
            self.next_irq += 1;
            self.next_irq
        });
        Ok(Device {
            addr: s.address,
            path: String::new(),
            upstream,
            class: s.class,
            ids,
            revision: s.revision,
            driver: None,
            driver_override: s.driver_override.clone(),
            numa: s.numa_node,
            boot_vga: s.boot_vga,
            reset_method: s.reset_method.clone().unwrap_or_else(|| {
                if bridge {
                    Vec::new()
                } else {
                    vec!["flr".into(), "bus".into()]
                }
            }),
            irq,
            group: None,
            secondary_bus: s.secondary_bus,
            sriov,
            physfn: None,
            vgpu: s.nvidia_vgpu.as_ref().map(|v| NvidiaVgpu {
                framebuffer_mb: v.framebuffer_mb,
                homogeneous: v.homogeneous,
                types: v.types.clone(),
            }),
            vgpu_current: None,
            drm_minor: s.drm_minor,
        })
    }

    /// A VF device (not inserted), with its own IOMMU group when the host has an IOMMU.
    pub(super) fn make_vf(
        &mut self,
        pf_addr: PciAddress,
        index: u32,
    ) -> Result<Device, FixtureError> {
        let addr = self
            .vf_address(pf_addr, index)
            .ok_or_else(|| invalid(format!("{pf_addr}: VF {index} has no address")))?;
        if self.devices.contains_key(&addr) {
            return Err(invalid(format!(
                "{pf_addr}: VF {index} would take {addr}, which is already a device"
            )));
        }
        let pf = self
            .devices
            .get(&pf_addr)
            .ok_or_else(|| invalid(format!("{pf_addr} is not a device")))?;
        let sr = pf
            .sriov
            .as_ref()
            .ok_or_else(|| invalid(format!("{pf_addr} has no SR-IOV")))?;
        let parent_dir = pf
            .path
            .rsplit_once('/')
            .map(|(d, _)| d.to_owned())
            .unwrap_or_default();
        let mut vf = Device {
            addr,
            path: format!("{parent_dir}/{addr}"),
            upstream: pf.upstream,
            class: pf.class,
            ids: PciIds {
                vendor: sr.vf_ids.0,
                device: sr.vf_ids.1,
                subsystem_vendor: pf.ids.subsystem_vendor,
                subsystem_device: pf.ids.subsystem_device,
            },
            revision: pf.revision,
            driver: None,
            driver_override: None,
            numa: pf.numa,
            boot_vga: false,
            reset_method: vec!["flr".into()],
            irq: 0,
            group: None,
            secondary_bus: None,
            sriov: None,
            physfn: Some((pf_addr, index)),
            vgpu: None,
            vgpu_current: None,
            drm_minor: None,
        };
        if self.iommu != IommuVendor::None {
            let g = self.alloc_group();
            vf.group = Some(g);
            *self.group_refs.entry(g).or_insert(0) += 1;
        }
        Ok(vf)
    }

    pub(super) fn set_group(&mut self, a: PciAddress, g: u32) {
        if let Some(d) = self.devices.get_mut(&a) {
            d.group = Some(g);
            *self.group_refs.entry(g).or_insert(0) += 1;
        }
    }

    /// The lowest free group id (the kernel allocates group ids from an IDA).
    pub(super) fn alloc_group(&mut self) -> u32 {
        let mut g = self.group_hint;
        while self.group_refs.contains_key(&g) {
            g += 1;
        }
        self.group_hint = g + 1;
        // Reserve it so the next allocation does not return the same id before it is used.
        self.group_refs.insert(g, 0);
        g
    }

    pub(super) fn release_group(&mut self, g: u32) -> bool {
        let gone = match self.group_refs.get_mut(&g) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if gone {
            self.group_refs.remove(&g);
            self.group_hint = self.group_hint.min(g);
        }
        gone
    }
}

/// The lowest number not in `used` (the kernel's IDA for minors and vfio-dev indices).
pub(super) fn lowest_free(used: impl Iterator<Item = u32>) -> u32 {
    let set: BTreeSet<u32> = used.collect();
    (0..).find(|i| !set.contains(i)).unwrap_or(0)
}
