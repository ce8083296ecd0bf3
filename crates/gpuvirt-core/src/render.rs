//! What a VM definition needs to use a device gpuvirt prepared: libvirt `<hostdev>` XML and
//! QEMU `-device` arguments, for a whole card (every function of its slot), an mdev, or an
//! NVIDIA per-VF vGPU (its VF, handed over as a PCI device), as the runbook writes them.
//!
//! A card with several functions (GPU + HDMI audio) is one multi-function guest device: every
//! function in one guest slot, `multifunction=on` on function 0 (QEMU `bus=B,addr=SS.F`,
//! libvirt `<address type='pci' ... multifunction='on'/>`). Unless told otherwise
//! ([`RenderOptions`]) that slot is slot 0 behind a q35 `pcie-root-port` of its own, guest bus
//! 1: libvirt's controller index 1, and for QEMU a root port gpuvirt prints first
//! (`-device pcie-root-port,id=gpuvirt-rp1,chassis=1`), as libvirt numbers its ports. A
//! single-function device goes where QEMU and libvirt put it unless a guest option is given.
//!
//! PCI hostdevs are `managed='no'` by default: gpuvirt, not libvirt, binds the card to
//! vfio-pci, and a managed hostdev would make libvirt rebind it behind gpuvirt's back.
//! An mdev gets `display='on'` where its type can display ([`mdev_type_can_display`]).
//!
//! The `graphics` options add the runbook's display choices ([`graphics`]): virgl on a host GPU
//! that stays with the host (no hostdev, a 3D virtio VGA on its render node), the card as the
//! guest's primary display, or a vGPU's display, each shown by a chosen back end.
//!
//! May import: crate::error, crate::model, its own children.

mod error;
pub mod graphics;
mod mdev;
mod options;
mod output;
mod placement;

use std::fmt::Write;

use uuid::Uuid;

use crate::model::{Inventory, PciAddress, PciFunction};
use error::not_for;
pub use error::RenderError;
pub use graphics::{DisplayBackend, GraphicsPath};
pub use mdev::mdev_type_can_display;
use mdev::render_mdev;
pub use options::{RenderOptions, DEFAULT_GUEST_BUS};
use output::with_display;
pub use output::Rendered;
use placement::Placement;

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderTarget {
    /// The card at this address (any function of its slot), all functions together.
    Card(PciAddress),
    /// An active mdev.
    Mdev(Uuid),
    /// A VF carrying an NVIDIA per-VF vGPU.
    VgpuVf(PciAddress),
}

/// Renders `target` as found in `inventory`, after [`RenderOptions::check`].
pub fn render(
    inventory: &Inventory,
    target: RenderTarget,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    options.check()?;
    let pci = matches!(target, RenderTarget::Card(_) | RenderTarget::VgpuVf(_));
    if !matches!(target, RenderTarget::Card(_)) && options.x_vga {
        return Err(not_for("x-vga", "a whole card"));
    }
    if !pci && options.managed {
        return Err(not_for(
            "managed",
            "PCI hostdevs; an mdev has no host driver for libvirt to manage",
        ));
    }
    if pci && (options.display.is_some() || options.ramfb) {
        let option = if options.ramfb { "ramfb" } else { "display" };
        return Err(not_for(option, "an mdev (a vGPU's display)"));
    }
    match (options.graphics, target) {
        (Some(GraphicsPath::Virgl | GraphicsPath::Primary), RenderTarget::Card(_)) | (None, _) => {}
        (Some(GraphicsPath::VgpuDisplay), RenderTarget::Mdev(_)) => {}
        (Some(GraphicsPath::VgpuDisplay), _) => {
            return Err(not_for(
                "graphics=vgpu-display",
                "an mdev (a vGPU's display)",
            ))
        }
        (Some(path), _) => {
            return Err(not_for(
                match path {
                    GraphicsPath::Virgl => "graphics=virgl",
                    _ => "graphics=primary",
                },
                "a whole card",
            ))
        }
    }
    match target {
        RenderTarget::Card(address) if options.graphics == Some(GraphicsPath::Virgl) => {
            render_virgl(inventory, address, options)
        }
        RenderTarget::Card(address) if options.graphics == Some(GraphicsPath::Primary) => {
            let forced = RenderOptions {
                x_vga: true,
                ..options.clone()
            };
            let mut r = render_card(inventory, address, &forced)?;
            let mut qemu = Vec::new();
            let mut xml = String::new();
            graphics::primary_display(&mut qemu, &mut xml);
            qemu.append(&mut r.qemu_args);
            xml.push_str(&r.libvirt_xml);
            Ok(Rendered {
                libvirt_xml: xml,
                qemu_args: qemu,
            })
        }
        RenderTarget::Card(address) => render_card(inventory, address, options),
        RenderTarget::Mdev(uuid) => render_mdev(inventory, uuid, options),
        RenderTarget::VgpuVf(vf) => {
            let f = inventory
                .functions
                .get(&vf)
                .ok_or(RenderError::NoSuchDevice { address: vf })?;
            if f.nvidia_vgpu
                .as_ref()
                .and_then(|v| v.current_type)
                .is_none()
            {
                return Err(RenderError::NotAVgpu { address: vf });
            }
            let place = Placement::of(options, false);
            let mut args = Vec::new();
            let mut spec = format!("vfio-pci,host={vf}");
            if let Some(p) = &place {
                p.push_root_port(&mut args);
                spec.push_str(&p.qemu(0));
            }
            args.extend(["-device".to_string(), spec]);
            Ok(Rendered {
                libvirt_xml: pci_hostdev(
                    vf,
                    options.managed,
                    place.map(|p| p.xml(0, false)).as_deref(),
                ),
                qemu_args: args,
            })
        }
    }
}

/// Every function of the card at `address`, function 0 first; VFs sharing the slot are not
/// part of the card.
pub fn card_functions(
    inventory: &Inventory,
    address: PciAddress,
) -> Result<Vec<&PciFunction>, RenderError> {
    let f = inventory
        .functions
        .get(&address)
        .ok_or(RenderError::NoSuchDevice { address })?;
    if f.physfn.is_some() {
        return Err(RenderError::IsVirtualFunction { address });
    }
    Ok(inventory
        .functions
        .values()
        .filter(|o| o.address.slot() == address.slot() && o.physfn.is_none())
        .collect())
}

fn render_card(
    inventory: &Inventory,
    address: PciAddress,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let functions = card_functions(inventory, address)?;
    let multifunction = functions.len() > 1;
    if options.x_vga {
        let first = functions[0];
        if first.class >> 8 != 0x0300 {
            return Err(RenderError::NotVga {
                address: first.address,
                class: first.class,
            });
        }
    }
    let place = Placement::of(options, multifunction);
    let mut xml = String::new();
    let mut args = Vec::new();
    if let Some(p) = &place {
        p.push_root_port(&mut args);
    }
    for (i, f) in functions.iter().enumerate() {
        // The guest function number is the host's: function 0 stays function 0.
        let function = f.address.function;
        let mut spec = format!("vfio-pci,host={}", f.address);
        let first = i == 0;
        if let Some(p) = &place {
            spec.push_str(&p.qemu(function));
            // Only a shared guest slot makes the functions one multifunction device.
            if first && multifunction {
                spec.push_str(",multifunction=on");
            }
        }
        if first && options.x_vga {
            spec.push_str(",x-vga=on");
        }
        let guest = place
            .as_ref()
            .map(|p| p.xml(function, first && multifunction));
        xml.push_str(&pci_hostdev(f.address, options.managed, guest.as_deref()));
        args.push("-device".to_string());
        args.push(spec);
    }
    Ok(Rendered {
        libvirt_xml: xml,
        qemu_args: args,
    })
}

fn pci_hostdev(host: PciAddress, managed: bool, guest_address: Option<&str>) -> String {
    let mut xml = String::new();
    let managed = if managed { "yes" } else { "no" };
    let _ = writeln!(
        xml,
        "<hostdev mode='subsystem' type='pci' managed='{managed}'>"
    );
    xml.push_str("  <source>\n");
    let _ = writeln!(
        xml,
        "    <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>",
        host.domain, host.bus, host.device, host.function
    );
    xml.push_str("  </source>\n");
    if let Some(g) = guest_address {
        let _ = writeln!(xml, "  {g}");
    }
    xml.push_str("</hostdev>\n");
    xml
}

/// virgl on the GPU at `address` (any function of its slot), which stays with the host: a 3D
/// virtio VGA for the guest and the back end on that GPU's render node; no hostdev.
fn render_virgl(
    inventory: &Inventory,
    address: PciAddress,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let functions = card_functions(inventory, address)?;
    let gpu = functions
        .iter()
        .find(|f| f.is_display())
        .copied()
        .unwrap_or(functions[0]);
    let backend = options.display_backend.unwrap_or(DisplayBackend::Gtk);
    let node = match (
        &options.render_node,
        gpu.drm.as_ref().and_then(|d| d.preferred_render()),
    ) {
        (Some(given), _) => given.clone(),
        (None, Some(own)) => own.to_owned(),
        (None, None) => {
            let why = match gpu.driver.as_deref() {
                Some("vfio-pci") => "it is on vfio-pci, passed through to VMs".to_string(),
                None => "no driver is bound to it".to_string(),
                Some(d) => format!("its driver {d} registered none"),
            };
            return Err(RenderError::NoRenderNode {
                address: gpu.address,
                why,
            });
        }
    };
    let mut device = Rendered {
        libvirt_xml: String::new(),
        qemu_args: Vec::new(),
    };
    graphics::virgl_device(&mut device.qemu_args, &mut device.libvirt_xml);
    Ok(with_display(device, backend, Some(&node), true))
}
