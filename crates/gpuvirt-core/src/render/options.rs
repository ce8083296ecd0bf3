//! RenderHostdev's options as one value, and the checks they get on their own, before any
//! device is looked at. May import: super::error, super::graphics.

use super::error::RenderError;
use super::graphics::{self, DisplayBackend, GraphicsPath};

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
    /// `graphics`: the guest's display path; `None`: devices only, no display arguments.
    pub graphics: Option<GraphicsPath>,
    /// `display-backend`: how the host shows it; `None`: `gtk` (the runbook's). Needs
    /// `graphics` virgl or vgpu-display.
    pub display_backend: Option<DisplayBackend>,
    /// `render-node`: the `/dev/dri` node GL renders on, over the default (the target GPU's,
    /// or the vGPU parent's; by-path name first). Not with `gtk`, whose GL is the desktop's.
    pub render_node: Option<String>,
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
        self.check_graphics()
    }

    /// The `graphics`, `display-backend` and `render-node` options together.
    fn check_graphics(&self) -> Result<(), RenderError> {
        let bad =
            |option: &'static str, problem: String| Err(RenderError::Option { option, problem });
        if let Some(node) = &self.render_node {
            if let Some(problem) = graphics::render_node_problem(node) {
                return bad("render-node", problem);
            }
        }
        match self.graphics {
            None if self.display_backend.is_some() || self.render_node.is_some() => {
                let option = if self.display_backend.is_some() {
                    "display-backend"
                } else {
                    "render-node"
                };
                bad(
                    option,
                    "needs the graphics option (virgl or vgpu-display)".into(),
                )
            }
            Some(GraphicsPath::Primary) if self.display_backend.is_some() => bad(
                "display-backend",
                "graphics=primary has no host display: the card's own outputs are the screen"
                    .into(),
            ),
            Some(GraphicsPath::Primary) if self.render_node.is_some() => bad(
                "render-node",
                "graphics=primary renders on the passed-through card itself".into(),
            ),
            Some(GraphicsPath::VgpuDisplay) if self.display == Some(false) => bad(
                "display",
                "graphics=vgpu-display shows the vGPU's display, so it cannot be off".into(),
            ),
            Some(GraphicsPath::Virgl | GraphicsPath::VgpuDisplay)
                if self.render_node.is_some()
                    && self.display_backend.unwrap_or(DisplayBackend::Gtk)
                        == DisplayBackend::Gtk =>
            {
                bad(
                    "render-node",
                    "the gtk back end draws with the desktop's GL context, which takes no render \
                     node: choose display-backend egl-headless, spice or vnc"
                        .into(),
                )
            }
            _ => Ok(()),
        }
    }

    /// Whether any option places the device in the guest.
    pub(super) fn places(&self) -> bool {
        self.guest_bus.is_some() || self.guest_slot.is_some() || self.qemu_bus.is_some()
    }
}
