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
//! May import: crate::error, crate::model.

use std::fmt::Write;

use serde::Serialize;
use uuid::Uuid;

use crate::error::ErrorKind;
use crate::model::{Inventory, MdevType, PciAddress, PciFunction};

/// The guest bus a card goes on when no option names one: a `pcie-root-port`'s, as the runbook's
/// `bus=1,addr=00.0`.
pub const DEFAULT_GUEST_BUS: u8 = 1;

/// How to render a device. Every field is a `RenderHostdev` option of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// QEMU `x-vga=on`: legacy VGA ranges for the card, for guests that boot on it. Only for a
    /// VGA-class function 0 of a card; libvirt has no attribute for it (it would go in
    /// `<qemu:commandline>`), so the XML leaves it out.
    pub x_vga: bool,
    /// `guest-bus`: the guest PCI bus, libvirt's controller index (0: q35's `pcie-root`, QEMU's
    /// `pcie.0`; 1-255: a `pcie-root-port`, unless `qemu_bus` names QEMU's bus).
    pub guest_bus: Option<u8>,
    /// `guest-slot`: the device number on that bus (0-31; a root port has only slot 0).
    pub guest_slot: Option<u8>,
    /// `qemu-bus`: the QEMU id of a bus the VM already has (`bus=<id>`); gpuvirt then prints no
    /// root port of its own and any slot 0-31 goes.
    pub qemu_bus: Option<String>,
    /// `managed`: libvirt `managed='yes'` (libvirt binds the PCI device to vfio-pci at start and
    /// back at stop) instead of `managed='no'`. PCI only.
    pub managed: bool,
    /// `display`: the vGPU's display on or off; `None`: on when the type can display. mdev only.
    pub display: Option<bool>,
    /// `ramfb`: a boot display for the vGPU (QEMU's `vfio-pci-nohotplug,ramfb=on`, libvirt's
    /// `ramfb='on'`); needs the display on.
    pub ramfb: bool,
}

/// Longest `qemu-bus` id accepted.
const MAX_QEMU_ID: usize = 64;

impl RenderOptions {
    /// Checks the options on their own, before any device is looked at: a slot past 31, a
    /// root port's slot other than 0, bus 0's slot 0 (the host bridge), a QEMU id QEMU would
    /// refuse, `ramfb` with the display off.
    pub fn check(&self) -> Result<(), RenderError> {
        let bad =
            |option: &'static str, problem: String| Err(RenderError::Option { option, problem });
        if let Some(slot) = self.guest_slot {
            if slot > 31 {
                return bad(
                    "guest-slot",
                    format!("{slot} is past 31, a PCI bus's last slot"),
                );
            }
        }
        if let Some(id) = &self.qemu_bus {
            let ok = id.len() <= MAX_QEMU_ID
                && id.starts_with(|c: char| c.is_ascii_alphabetic())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                return bad(
                    "qemu-bus",
                    format!(
                        "'{}' is not a QEMU id (a letter, then letters, digits, '-', '.', '_'; at most {MAX_QEMU_ID})",
                        id.chars().take(MAX_QEMU_ID).collect::<String>()
                    ),
                );
            }
        } else {
            let bus = self.guest_bus.unwrap_or(DEFAULT_GUEST_BUS);
            match (bus, self.guest_slot) {
                (0, None | Some(0)) => {
                    return bad(
                        "guest-slot",
                        "bus 0 is the guest's root bus (pcie.0), whose slot 0 is the host bridge: give a slot 1-31".into(),
                    )
                }
                (1.., Some(slot @ 1..)) => {
                    return bad(
                        "guest-slot",
                        format!(
                            "bus {bus} is a pcie-root-port, which has only slot 0, not {slot}; name a bus with more slots with qemu-bus"
                        ),
                    )
                }
                _ => {}
            }
        }
        if self.ramfb && self.display == Some(false) {
            return bad("ramfb", "a boot display needs the display on".into());
        }
        Ok(())
    }

    /// Whether any option places the device in the guest.
    fn places(&self) -> bool {
        self.guest_bus.is_some() || self.guest_slot.is_some() || self.qemu_bus.is_some()
    }
}

/// Where a device's functions go in the guest, resolved from [`RenderOptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    /// libvirt's bus number.
    bus: u8,
    slot: u8,
    /// QEMU's id of the same bus.
    qemu_bus: String,
    /// The root port gpuvirt prints for that bus, when no `qemu-bus` names the VM's own.
    root_port: Option<String>,
}

impl Placement {
    /// The placement `options` ask for, or for a multi-function device the default one.
    fn of(options: &RenderOptions, multifunction: bool) -> Option<Placement> {
        if !options.places() && !multifunction {
            return None;
        }
        let bus = options.guest_bus.unwrap_or(DEFAULT_GUEST_BUS);
        let slot = options.guest_slot.unwrap_or(0);
        Some(match (&options.qemu_bus, bus) {
            (Some(id), _) => Placement {
                bus,
                slot,
                qemu_bus: id.clone(),
                root_port: None,
            },
            (None, 0) => Placement {
                bus,
                slot,
                qemu_bus: "pcie.0".into(),
                root_port: None,
            },
            (None, _) => Placement {
                bus,
                slot,
                qemu_bus: format!("gpuvirt-rp{bus}"),
                root_port: Some(format!(
                    "pcie-root-port,id=gpuvirt-rp{bus},bus=pcie.0,chassis={bus}"
                )),
            },
        })
    }

    /// libvirt's guest `<address>` of `function`.
    fn xml(&self, function: u8, multifunction_on: bool) -> String {
        format!(
            "<address type='pci' domain='0x0000' bus='0x{:02x}' slot='0x{:02x}' function='0x{function:x}'{}/>",
            self.bus,
            self.slot,
            if multifunction_on { " multifunction='on'" } else { "" }
        )
    }

    /// QEMU's `,bus=B,addr=SS.F`.
    fn qemu(&self, function: u8) -> String {
        format!(",bus={},addr={:02x}.{function:x}", self.qemu_bus, self.slot)
    }

    /// The root port's `-device` pair, if gpuvirt prints one.
    fn push_root_port(&self, args: &mut Vec<String>) {
        if let Some(port) = &self.root_port {
            args.push("-device".into());
            args.push(port.clone());
        }
    }
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
    /// An option that is malformed, or that the target does not take.
    #[error("option '{option}': {problem}")]
    Option {
        option: &'static str,
        problem: String,
    },
}

impl RenderError {
    /// The neutral kind front ends map: a target that is not there, a bad option, or one that
    /// cannot be rendered.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RenderError::NoSuchDevice { .. } | RenderError::NoSuchMdev { .. } => {
                ErrorKind::NoSuchDevice
            }
            RenderError::Option { .. } => ErrorKind::InvalidArgs,
            _ => ErrorKind::NotSupported,
        }
    }
}

fn not_for(option: &'static str, what: &str) -> RenderError {
    RenderError::Option {
        option,
        problem: format!("applies to {what}"),
    }
}

/// The VFIO device models mdevs can have (an mdev type's `device_api`).
const MDEV_MODELS: [&str; 3] = ["vfio-pci", "vfio-ccw", "vfio-ap"];

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
    match target {
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

fn render_mdev(
    inventory: &Inventory,
    uuid: Uuid,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let mdev = inventory
        .mdevs
        .get(&uuid)
        .ok_or(RenderError::NoSuchMdev { uuid })?;
    let mdev_type = mdev.type_id.as_ref().and_then(|id| {
        inventory
            .mdev_parents
            .get(&mdev.parent)?
            .types
            .iter()
            .find(|t| t.id == *id)
    });
    let model = match mdev_type.and_then(|t| t.device_api.as_deref()) {
        None => "vfio-pci",
        Some(api) => MDEV_MODELS.iter().copied().find(|m| *m == api).ok_or(
            RenderError::UnknownDeviceApi {
                uuid,
                device_api: api.chars().take(64).collect(),
            },
        )?,
    };
    let display = options
        .display
        .unwrap_or_else(|| mdev_type.is_some_and(mdev_type_can_display));
    if display && model != "vfio-pci" {
        return Err(RenderError::Option {
            option: "display",
            problem: format!("a {model} mdev has no display"),
        });
    }
    if options.ramfb && !display {
        return Err(RenderError::Option {
            option: "ramfb",
            problem: format!("a boot display needs the display on, and mdev {uuid}'s type shows none (set display)"),
        });
    }
    let display = Display {
        on: display,
        ramfb: options.ramfb,
    };
    Ok(mdev_device(
        uuid,
        model,
        display,
        Placement::of(options, false).as_ref(),
    ))
}

/// An mdev's display as rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Display {
    on: bool,
    ramfb: bool,
}

/// The hostdev XML and QEMU arguments of the mdev `uuid` with VFIO device `model`
/// (`vfio-pci` for vGPUs). With the display on, QEMU gets the runbook's `display=on,rombar=0`
/// (a vGPU has no option ROM to map); with `ramfb` the device is `vfio-pci-nohotplug`, the
/// only one QEMU gives a `ramfb` property.
fn mdev_device(uuid: Uuid, model: &str, display: Display, place: Option<&Placement>) -> Rendered {
    let uuid = uuid.hyphenated();
    let mut args = Vec::new();
    let device = if display.ramfb {
        "vfio-pci-nohotplug"
    } else {
        model
    };
    let mut spec = format!("{device},sysfsdev=/sys/bus/mdev/devices/{uuid}");
    if let Some(p) = place {
        p.push_root_port(&mut args);
        spec.push_str(&p.qemu(0));
    }
    if display.on {
        spec.push_str(",display=on");
        if display.ramfb {
            spec.push_str(",ramfb=on");
        }
        spec.push_str(",rombar=0");
    }
    args.extend(["-device".to_string(), spec]);
    let mut xml = format!(
        "<hostdev mode='subsystem' type='mdev' model='{model}' display='{}'{}>\n  <source>\n    <address uuid='{uuid}'/>\n  </source>\n",
        if display.on { "on" } else { "off" },
        if display.ramfb { " ramfb='on'" } else { "" },
    );
    if let Some(p) = place {
        let _ = writeln!(xml, "  {}", p.xml(0, false));
    }
    xml.push_str("</hostdev>\n");
    Rendered {
        libvirt_xml: xml,
        qemu_args: args,
    }
}

/// Whether vGPUs of type `t` have a display QEMU can show (`display=on`). The kernel has no
/// attribute for it, so this reads what the drivers do expose:
///
/// | driver | what it exposes | display |
/// |---|---|---|
/// | mdpy, mbochs (kernel samples) | `description` "virtual display, ..." | yes |
/// | i915 GVT-g | type id `i915-GVTg_V5_*` / `i915-GVTg_V4_*` | yes |
/// | NVIDIA vGPU | `name` "GRID V100-8Q", "NVIDIA A40-4B": the profile letter | Q, B: yes; A, C: no |
/// | anything else (mtty, vfio-ccw, vfio-ap, unknown) | | no |
///
/// A type whose `device_api` is not `vfio-pci` never displays. The `display` option of
/// RenderHostdev overrides this either way.
pub fn mdev_type_can_display(t: &MdevType) -> bool {
    if t.device_api.as_deref().is_some_and(|api| api != "vfio-pci") {
        return false;
    }
    if t.description
        .as_deref()
        .is_some_and(|d| d.trim_start().starts_with("virtual display"))
    {
        return true;
    }
    if t.id.starts_with("i915-GVTg") {
        return true;
    }
    t.name.as_deref().is_some_and(nvidia_display_profile)
}

/// An NVIDIA profile name (`GRID V100-8Q`, `NVIDIA A40-48B`) whose series has a display: the
/// letter after the framebuffer size, Q (workstation) or B (virtual PC).
fn nvidia_display_profile(name: &str) -> bool {
    if !(name.starts_with("GRID ") || name.starts_with("NVIDIA ")) {
        return false;
    }
    let Some((_, profile)) = name.rsplit_once('-') else {
        return false;
    };
    let digits = profile.trim_start_matches(|c: char| c.is_ascii_digit());
    digits.len() < profile.len() && matches!(digits, "Q" | "B")
}
