//! `Manager.RenderHostdev`: libvirt `<hostdev>` XML and QEMU arguments for a card, an NVIDIA
//! per-VF vGPU or an mdev. Reads only: no authorization. The options are checked before the
//! target is looked at. May import: crate::actor, crate::error.

use gpuvirt_core::render::{self, RenderOptions, RenderTarget};
use gpuvirt_core::PciAddress;
use uuid::Uuid;

use crate::actor::ActorHandle;
use crate::error::OpError;

/// Renders `target` (any function's PCI address, a VF's address, or an mdev's UUID) as the
/// actor's inventory shows it: (libvirt XML, QEMU arguments).
pub async fn render_hostdev(
    actor: &ActorHandle,
    target: &str,
    opts: RenderOptions,
) -> Result<(String, Vec<String>), OpError> {
    opts.check().map_err(OpError::from_render)?;
    let target_text = target.trim().to_string();
    let rendered = actor
        .inspect(move |inv| {
            let target = if let Ok(uuid) = target_text.parse::<Uuid>() {
                RenderTarget::Mdev(uuid)
            } else if let Ok(address) = target_text.parse::<PciAddress>() {
                let is_vgpu = inv
                    .functions
                    .get(&address)
                    .is_some_and(|f| f.physfn.is_some() && f.nvidia_vgpu.is_some());
                if is_vgpu {
                    RenderTarget::VgpuVf(address)
                } else {
                    RenderTarget::Card(address)
                }
            } else {
                return Err(None);
            };
            render::render(inv, target, &opts).map_err(Some)
        })
        .await?;
    match rendered {
        Ok(r) => Ok((r.libvirt_xml, r.qemu_args)),
        Err(None) => Err(OpError::invalid_arg(
            "target",
            "neither a PCI address nor an mdev UUID",
        )),
        Err(Some(e)) => Err(OpError::from_render(e)),
    }
}
