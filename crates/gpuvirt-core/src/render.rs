//! What a VM definition needs to use a device gpuvirt prepared: libvirt `<hostdev>` XML and
//! QEMU `-device` arguments, for a whole card (every function of its slot), an mdev, or an
//! NVIDIA per-VF vGPU (its VF, handed over as a PCI device).
//!
//! PCI hostdevs are `managed='no'`: gpuvirt, not libvirt, binds the card to vfio-pci, and a
//! managed hostdev would make libvirt rebind it behind gpuvirt's back. A card with several
//! functions (GPU + HDMI audio) needs them in one guest slot with `multifunction='on'` on
//! function 0 to look like one card to the guest driver; that takes a guest slot, which only
//! the VM's author can choose ([`GuestSlot`]). Without one, libvirt and QEMU give each function
//! a slot of its own.
//!
//! May import: crate::error, crate::model.

use std::fmt::Write;

use serde::Serialize;
use uuid::Uuid;

use crate::error::ErrorKind;
use crate::model::{Inventory, PciAddress, PciFunction};

/// Where a card's functions go in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSlot {
    /// libvirt's guest PCI bus number (a `pcie-root-port` controller's index).
    pub bus: u8,
    /// Device number on that bus.
    pub slot: u8,
    /// QEMU's id of the same bus (`-device pcie-root-port,id=<qemu_bus>`).
    pub qemu_bus: String,
}

/// How to render a whole card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassthroughOptions {
    /// QEMU `x-vga=on`: legacy VGA ranges for the card, for guests that boot on it. Only for a
    /// VGA-class function 0; libvirt has no attribute for it (it would go in
    /// `<qemu:commandline>`), so the XML leaves it out.
    pub x_vga: bool,
    pub guest: Option<GuestSlot>,
}

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

/// A device's libvirt XML and QEMU arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// One `<hostdev>` element per function, each ending in a newline.
    pub libvirt_xml: String,
    /// `-device`, `<spec>` pairs, ready for `Command::args`.
    pub qemu_args: Vec<String>,
}

impl Rendered {
    /// The QEMU arguments as a shell command-line fragment, one `-device` per line.
    pub fn qemu_lines(&self) -> String {
        let mut text = String::new();
        for pair in self.qemu_args.chunks(2) {
            text.push_str(&pair.join(" "));
            text.push('\n');
        }
        text
    }
}

/// Why a device cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("no PCI function {address} is present")]
    NoSuchDevice { address: PciAddress },
    #[error("{address} is a virtual function; render its vGPU, not a card")]
    IsVirtualFunction { address: PciAddress },
    #[error("{address} is not a VF with an NVIDIA vGPU")]
    NotAVgpu { address: PciAddress },
    #[error("no mdev {uuid} is active")]
    NoSuchMdev { uuid: Uuid },
    #[error("x-vga needs a VGA-class function 0, and {address} has class {class:06x}")]
    NotVga { address: PciAddress, class: u32 },
    #[error("mdev {uuid} has device API {device_api:?}, which has no VFIO device model")]
    UnknownDeviceApi { uuid: Uuid, device_api: String },
}

impl RenderError {
    /// The neutral kind front ends map: a target that is not there, or one that cannot be
    /// rendered.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RenderError::NoSuchDevice { .. } | RenderError::NoSuchMdev { .. } => {
                ErrorKind::NoSuchDevice
            }
            _ => ErrorKind::NotSupported,
        }
    }
}

/// The VFIO device models mdevs can have (an mdev type's `device_api`).
const MDEV_MODELS: [&str; 3] = ["vfio-pci", "vfio-ccw", "vfio-ap"];

/// Renders `target` as found in `inventory`.
pub fn render(
    inventory: &Inventory,
    target: RenderTarget,
    options: &PassthroughOptions,
) -> Result<Rendered, RenderError> {
    match target {
        RenderTarget::Card(address) => render_card(inventory, address, options),
        RenderTarget::Mdev(uuid) => render_mdev(inventory, uuid),
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
            Ok(Rendered {
                libvirt_xml: pci_hostdev(vf, None),
                qemu_args: vec!["-device".into(), format!("vfio-pci,host={vf}")],
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
    options: &PassthroughOptions,
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
    let mut xml = String::new();
    let mut args = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let guest = options.guest.as_ref();
        let mut xml_guest = None;
        let mut spec = format!("vfio-pci,host={}", f.address);
        if let Some(g) = guest {
            xml_guest = Some(format!(
                "<address type='pci' domain='0x0000' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'{}/>",
                g.bus,
                g.slot,
                f.address.function,
                if i == 0 && multifunction { " multifunction='on'" } else { "" }
            ));
            let _ = write!(
                spec,
                ",bus={},addr={:02x}.{:x}",
                g.qemu_bus, g.slot, f.address.function
            );
        }
        if i == 0 && options.x_vga {
            spec.push_str(",x-vga=on");
        }
        // Only a shared guest slot makes the functions one multifunction device.
        if i == 0 && multifunction && guest.is_some() {
            spec.push_str(",multifunction=on");
        }
        xml.push_str(&pci_hostdev(f.address, xml_guest.as_deref()));
        args.push("-device".to_string());
        args.push(spec);
    }
    Ok(Rendered {
        libvirt_xml: xml,
        qemu_args: args,
    })
}

fn pci_hostdev(host: PciAddress, guest_address: Option<&str>) -> String {
    let mut xml = String::new();
    xml.push_str("<hostdev mode='subsystem' type='pci' managed='no'>\n");
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

fn render_mdev(inventory: &Inventory, uuid: Uuid) -> Result<Rendered, RenderError> {
    let mdev = inventory
        .mdevs
        .get(&uuid)
        .ok_or(RenderError::NoSuchMdev { uuid })?;
    let device_api = mdev.type_id.as_ref().and_then(|id| {
        inventory
            .mdev_parents
            .get(&mdev.parent)?
            .types
            .iter()
            .find(|t| t.id == *id)?
            .device_api
            .clone()
    });
    let model = match device_api {
        None => "vfio-pci",
        Some(api) => MDEV_MODELS.iter().copied().find(|m| *m == api).ok_or(
            RenderError::UnknownDeviceApi {
                uuid,
                device_api: api.chars().take(64).collect(),
            },
        )?,
    };
    Ok(mdev_device(uuid, model))
}

/// The hostdev XML and QEMU arguments of the mdev `uuid` with VFIO device `model`
/// (`vfio-pci` for vGPUs). `display='off'`: a vGPU's display needs the guest driver and a
/// licence, and display-capable sample types (mbochs) need ramfb set up by hand.
pub fn mdev_device(uuid: Uuid, model: &str) -> Rendered {
    let uuid = uuid.hyphenated();
    Rendered {
        libvirt_xml: format!(
            "<hostdev mode='subsystem' type='mdev' model='{model}' display='off'>\n  <source>\n    <address uuid='{uuid}'/>\n  </source>\n</hostdev>\n"
        ),
        qemu_args: vec![
            "-device".to_string(),
            format!("{model},sysfsdev=/sys/bus/mdev/devices/{uuid}"),
        ],
    }
}
