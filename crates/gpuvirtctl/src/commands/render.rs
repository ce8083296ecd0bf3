//! `gpuvirtctl xml|qemu-args TARGET [OPTIONS]`: Manager.RenderHostdev, printed as libvirt XML or
//! as QEMU arguments (one per line, ready for a shell's `$(...)` or a script's array); the
//! flags are its options (guest bus and slot, `x-vga`, `managed`, a vGPU's display, the
//! runbook's graphics paths and display back ends). May
//! import: crate::client, crate::errors.

use std::collections::HashMap;

use zbus::zvariant::Value;

use crate::client::Ctx;
use crate::errors::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Xml,
    QemuArgs,
}

/// Where and how the device goes into the guest: RenderHostdev's options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RenderArgs {
    /// Guest PCI bus: libvirt's controller index (0 is q35's root bus pcie.0; 1-255 a
    /// pcie-root-port, which gpuvirt prints for QEMU as gpuvirt-rpN). Default 1 for a
    /// multi-function card; a single-function device is placed only when asked.
    #[arg(long, value_name = "BUS", value_parser = number, conflicts_with = "guest_address")]
    pub guest_bus: Option<u32>,
    /// Device number on that bus (0-31; a root port has only slot 0).
    #[arg(long, value_name = "SLOT", value_parser = number, conflicts_with = "guest_address")]
    pub guest_slot: Option<u32>,
    /// Guest bus and slot at once, in hex as lspci and libvirt write them (`01:00`).
    #[arg(long, value_name = "BB:SS", value_parser = guest_address)]
    pub guest_address: Option<(u32, u32)>,
    /// QEMU id of a bus the VM already has (`-device pcie-root-port,id=ID`): gpuvirt then
    /// prints no root port and any slot goes.
    #[arg(long, value_name = "ID")]
    pub qemu_bus: Option<String>,
    /// Mark the card as the guest's primary VGA (x-vga=on; QEMU only).
    #[arg(long)]
    pub x_vga: bool,
    /// libvirt's managed attribute of a PCI hostdev. Default no: gpuvirt binds the card to
    /// vfio-pci (`gpuvirtctl passthrough`); yes lets libvirt bind it at start and rebind it at stop.
    #[arg(long, value_name = "yes|no", value_parser = ["yes", "no"])]
    pub managed: Option<String>,
    /// A vGPU's display (QEMU display=on,rombar=0). Default: on when its type can display.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub display: Option<String>,
    /// A boot display for the vGPU (QEMU vfio-pci-nohotplug,ramfb=on; libvirt ramfb='on').
    #[arg(long)]
    pub ramfb: bool,
    /// The guest's display, as the runbook's Graphics section: virgl (3D virtio-gpu on this
    /// GPU's render node; the GPU stays with the host), primary (the passed-through card is the
    /// guest's screen), vgpu-display (the vGPU's own display).
    #[arg(long, value_name = "PATH", value_parser = ["virgl", "primary", "vgpu-display"])]
    pub graphics: Option<String>,
    /// How the host shows it: gtk (default, -display gtk,gl=on), egl-headless, spice (local
    /// socket, GL) or vnc (127.0.0.1).
    #[arg(long, value_name = "BACKEND", requires = "graphics",
          value_parser = ["gtk", "egl-headless", "spice", "vnc"])]
    pub display_backend: Option<String>,
    /// The /dev/dri render node GL uses, over the default (the GPU's own, by-path name first).
    #[arg(long, value_name = "NODE", requires = "graphics")]
    pub render_node: Option<String>,
}

/// A decimal or `0x` hexadecimal number.
fn number(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a number"))
}

/// `BB:SS`, both hexadecimal.
fn guest_address(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{text}' is not BB:SS (guest bus and slot in hex, e.g. 01:00)");
    let (bus, slot) = text.split_once(':').ok_or_else(bad)?;
    let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
    Ok((hex(bus)?, hex(slot)?))
}

impl RenderArgs {
    /// The `a{sv}` options; absent flags are absent keys (the daemon's defaults).
    fn options(&self) -> HashMap<&'static str, Value<'_>> {
        let mut o = HashMap::new();
        let (bus, slot) = match self.guest_address {
            Some((bus, slot)) => (Some(bus), Some(slot)),
            None => (self.guest_bus, self.guest_slot),
        };
        if let Some(bus) = bus {
            o.insert("guest-bus", Value::U32(bus));
        }
        if let Some(slot) = slot {
            o.insert("guest-slot", Value::U32(slot));
        }
        if let Some(id) = &self.qemu_bus {
            o.insert("qemu-bus", Value::from(id.as_str()));
        }
        if self.x_vga {
            o.insert("x-vga", Value::Bool(true));
        }
        if let Some(m) = &self.managed {
            o.insert("managed", Value::Bool(m == "yes"));
        }
        if let Some(d) = &self.display {
            o.insert("display", Value::Bool(d == "on"));
        }
        if self.ramfb {
            o.insert("ramfb", Value::Bool(true));
        }
        for (key, value) in [
            ("graphics", &self.graphics),
            ("display-backend", &self.display_backend),
            ("render-node", &self.render_node),
        ] {
            if let Some(v) = value {
                o.insert(key, Value::from(v.as_str()));
            }
        }
        o
    }
}

pub async fn run(
    ctx: &Ctx<'_>,
    target: &str,
    args: &RenderArgs,
    output: Output,
) -> Result<(), CliError> {
    let (xml, qemu_args) = ctx
        .manager()
        .await?
        .render_hostdev(target, args.options())
        .await
        .map_err(|e| ctx.api_error(e))?;
    match output {
        Output::Xml => {
            out!("{xml}")?;
            if !xml.ends_with('\n') {
                outln!()?;
            }
        }
        Output::QemuArgs => {
            for arg in &qemu_args {
                outln!("{arg}")?;
            }
        }
    }
    Ok(())
}
