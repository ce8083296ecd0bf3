//! Where a device's functions go in the guest: a bus (gpuvirt's own root port, q35's root bus
//! or a bus of the VM's) and a slot, as libvirt `<address>` and QEMU `bus=,addr=`. May import:
//! super::options.

use super::options::{RenderOptions, DEFAULT_GUEST_BUS};

/// Where a device's functions go in the guest, resolved from [`RenderOptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement {
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
    pub(super) fn of(options: &RenderOptions, multifunction: bool) -> Option<Placement> {
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
    pub(super) fn xml(&self, function: u8, multifunction_on: bool) -> String {
        format!(
            "<address type='pci' domain='0x0000' bus='0x{:02x}' slot='0x{:02x}' function='0x{function:x}'{}/>",
            self.bus,
            self.slot,
            if multifunction_on { " multifunction='on'" } else { "" }
        )
    }

    /// QEMU's `,bus=B,addr=SS.F`.
    pub(super) fn qemu(&self, function: u8) -> String {
        format!(",bus={},addr={:02x}.{function:x}", self.qemu_bus, self.slot)
    }

    /// The root port's `-device` pair, if gpuvirt prints one.
    pub(super) fn push_root_port(&self, args: &mut Vec<String>) {
        if let Some(port) = &self.root_port {
            args.push("-device".into());
            args.push(port.clone());
        }
    }
}
