//! An mdev as a hostdev: its VFIO device model, whether and how its display is on, and the
//! per-driver table of types that can display. May import: crate::model, super::error,
//! super::graphics, super::options, super::output, super::placement.

use std::fmt::Write;

use uuid::Uuid;

use super::error::RenderError;
use super::graphics::{DisplayBackend, GraphicsPath};
use super::options::RenderOptions;
use super::output::{with_display, Rendered};
use super::placement::Placement;
use crate::model::{Inventory, MdevType};

/// The VFIO device models mdevs can have (an mdev type's `device_api`).
const MDEV_MODELS: [&str; 3] = ["vfio-pci", "vfio-ccw", "vfio-ap"];

pub(super) fn render_mdev(
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
    let shows_display = options.graphics == Some(GraphicsPath::VgpuDisplay);
    let type_displays = mdev_type.is_some_and(mdev_type_can_display);
    if shows_display && options.display.is_none() && !type_displays {
        return Err(RenderError::Option {
            option: "graphics",
            problem: format!(
                "mdev {uuid}'s type {} shows no display as far as gpuvirt can tell (see docs/passthrough-snippets.md); add display=on if it does",
                mdev.type_id.as_deref().unwrap_or("(unknown)")
            ),
        });
    }
    let display = options.display.unwrap_or(shows_display || type_displays);
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
    let device = mdev_device(uuid, model, display, Placement::of(options, false).as_ref());
    if !shows_display {
        return Ok(device);
    }
    // The parent GPU's render node imports the vGPU's dmabufs (GVT-g); a virtual parent
    // (mdpy, mbochs) has none and QEMU picks one itself.
    let backend = options.display_backend.unwrap_or(DisplayBackend::Gtk);
    let parent_node = inventory
        .mdev_parents
        .get(&mdev.parent)
        .and_then(|p| p.pci_address)
        .and_then(|a| inventory.functions.get(&a))
        .and_then(|f| f.drm.as_ref())
        .and_then(|d| d.preferred_render())
        .map(str::to_owned);
    let node = options.render_node.clone().or(parent_node);
    Ok(with_display(
        device,
        backend,
        node.as_deref(),
        node.is_some(),
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
