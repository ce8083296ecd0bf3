//! The runbook's Graphics section as snippet options: which path gives the guest its display
//! ([`GraphicsPath`]: 3D through virtio-gpu/virgl on a host render node, the passed-through
//! card as the guest's primary display, or a vGPU's own display) and which host back end shows
//! it ([`DisplayBackend`]: a GTK window, headless EGL, SPICE, VNC), as QEMU arguments and as
//! libvirt `<video>`/`<graphics>` elements.
//!
//! QEMU and libvirt spell the same choices differently; the table is in
//! `docs/passthrough-snippets.md` ("Graphics and 3D"). Where one side has no form of the other's
//! choice (libvirt has no GTK display; VNC has no GL), the nearest one that starts is used and
//! documented there, never a form that would fail at VM start.
//!
//! May import: nothing of the crate (plain values; `super` assembles them with the devices).

use std::fmt::{self, Write};
use std::str::FromStr;

/// The `graphics` option: how the guest gets a display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphicsPath {
    /// `virgl`: a virtio-gpu with 3D (virglrenderer) drawing on a host GPU that stays with the
    /// host; needs a DRM render node, no IOMMU. The target is that host GPU.
    Virgl,
    /// `primary`: the passed-through card is the guest's display (its own outputs drive a
    /// monitor): no emulated VGA, no host display, `x-vga=on` for QEMU.
    Primary,
    /// `vgpu-display`: the vGPU's display (`display=on`) shown by a host back end.
    VgpuDisplay,
}

/// The `display-backend` option: where the host shows the guest's screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayBackend {
    /// `gtk`: a window on the host's desktop with a GL context (`-display gtk,gl=on`, the
    /// runbook's choice). The desktop's GPU renders: no render node can be named.
    Gtk,
    /// `egl-headless`: GL on a render node, no window (for a remote display or a screendump).
    EglHeadless,
    /// `spice`: SPICE with GL, local socket only (SPICE's GL needs a local client).
    Spice,
    /// `vnc`: VNC on 127.0.0.1, which has no GL: headless EGL renders for it where a GL
    /// context is needed.
    Vnc,
}

/// A value the option does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not one of {allowed}")]
pub struct UnknownChoice {
    pub value: String,
    pub allowed: &'static str,
}

fn unknown(value: &str, allowed: &'static str) -> UnknownChoice {
    UnknownChoice {
        value: value.chars().take(64).collect(),
        allowed,
    }
}

impl FromStr for GraphicsPath {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virgl" => Ok(GraphicsPath::Virgl),
            "primary" => Ok(GraphicsPath::Primary),
            "vgpu-display" => Ok(GraphicsPath::VgpuDisplay),
            _ => Err(unknown(s, "virgl, primary, vgpu-display")),
        }
    }
}

impl fmt::Display for GraphicsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GraphicsPath::Virgl => "virgl",
            GraphicsPath::Primary => "primary",
            GraphicsPath::VgpuDisplay => "vgpu-display",
        })
    }
}

impl FromStr for DisplayBackend {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gtk" => Ok(DisplayBackend::Gtk),
            "egl-headless" => Ok(DisplayBackend::EglHeadless),
            "spice" => Ok(DisplayBackend::Spice),
            "vnc" => Ok(DisplayBackend::Vnc),
            _ => Err(unknown(s, "gtk, egl-headless, spice, vnc")),
        }
    }
}

impl fmt::Display for DisplayBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisplayBackend::Gtk => "gtk",
            DisplayBackend::EglHeadless => "egl-headless",
            DisplayBackend::Spice => "spice",
            DisplayBackend::Vnc => "vnc",
        })
    }
}

/// Where a SPICE display listens: QEMU's SPICE GL takes only a local socket, and libvirt makes
/// its own (`<listen type='none'/>`). One path per VM: edit it for a second one.
pub const SPICE_SOCKET: &str = "/run/gpuvirt-spice.sock";

/// Why `node` cannot be a render node path: it must be a `/dev/dri/` path of the characters
/// device names and udev's by-path links use (no `,`, which would end a QEMU option, no quote,
/// no `..`).
pub fn render_node_problem(node: &str) -> Option<String> {
    let ok_chars = node
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-_.:".contains(c));
    if !node.starts_with("/dev/dri/") || node.len() <= "/dev/dri/".len() {
        Some(format!(
            "'{}' is not under /dev/dri/",
            node.chars().take(64).collect::<String>()
        ))
    } else if !ok_chars || node.contains("..") || node.len() > 128 {
        Some(format!(
            "'{}' is not a DRM node path (letters, digits, '/', '-', '_', '.', ':'; no '..')",
            node.chars().take(64).collect::<String>()
        ))
    } else {
        None
    }
}

/// The display back end's QEMU arguments and libvirt elements. `gl` says whether the guest's
/// display needs a GL context (virgl always; a vGPU when a render node is known for it).
pub(super) fn backend(
    backend: DisplayBackend,
    render_node: Option<&str>,
    gl: bool,
    qemu: &mut Vec<String>,
    xml: &mut String,
) {
    let rendernode_opt = |prefix: &str| match render_node {
        Some(n) => format!("{prefix}rendernode={n}"),
        None => String::new(),
    };
    let gl_element = match render_node {
        Some(n) => format!("  <gl enable='yes' rendernode='{n}'/>\n"),
        None => "  <gl enable='yes'/>\n".to_string(),
    };
    let egl_headless_xml = |xml: &mut String| match render_node {
        Some(n) => {
            let _ = writeln!(
                xml,
                "<graphics type='egl-headless'>\n  <gl rendernode='{n}'/>\n</graphics>"
            );
        }
        None => xml.push_str("<graphics type='egl-headless'/>\n"),
    };
    let mut pair = |a: &str, b: String| {
        qemu.push(a.to_string());
        qemu.push(b);
    };
    match backend {
        DisplayBackend::Gtk => {
            pair("-display", "gtk,gl=on".into());
            // libvirt has no GTK display: its local GL display is SPICE without a network
            // listener, which virt-manager and virt-viewer open.
            xml.push_str("<graphics type='spice'>\n  <listen type='none'/>\n");
            xml.push_str(&gl_element);
            xml.push_str("</graphics>\n");
        }
        DisplayBackend::EglHeadless => {
            pair("-display", format!("egl-headless{}", rendernode_opt(",")));
            egl_headless_xml(xml);
        }
        DisplayBackend::Spice => {
            pair(
                "-spice",
                format!(
                    "unix=on,addr={SPICE_SOCKET},disable-ticketing=on,gl=on{}",
                    rendernode_opt(",")
                ),
            );
            xml.push_str("<graphics type='spice'>\n  <listen type='none'/>\n");
            xml.push_str(&gl_element);
            xml.push_str("</graphics>\n");
        }
        DisplayBackend::Vnc => {
            if gl {
                pair("-display", format!("egl-headless{}", rendernode_opt(",")));
            }
            pair("-vnc", "127.0.0.1:0".into());
            xml.push_str(
                "<graphics type='vnc' autoport='yes'>\n  <listen type='address' address='127.0.0.1'/>\n</graphics>\n",
            );
            if gl {
                egl_headless_xml(xml);
            }
        }
    }
}

/// virgl's guest device: a virtio VGA with 3D, the only VGA (`-vga none` keeps QEMU from adding
/// its default one), and libvirt's `<video>` of the same.
pub(super) fn virgl_device(qemu: &mut Vec<String>, xml: &mut String) {
    qemu.extend(["-vga", "none", "-device", "virtio-vga-gl"].map(String::from));
    xml.push_str(
        "<video>\n  <model type='virtio' heads='1' primary='yes'>\n    <acceleration accel3d='yes'/>\n  </model>\n</video>\n",
    );
}

/// The primary path's display: no emulated VGA and no host display window (the card's outputs
/// are the screen); libvirt's `<video>` model `none`.
pub(super) fn primary_display(qemu: &mut Vec<String>, xml: &mut String) {
    qemu.extend(["-vga", "none", "-display", "none"].map(String::from));
    xml.push_str("<video>\n  <model type='none'/>\n</video>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_round_trip_and_unknown_ones_name_the_allowed() {
        for p in ["virgl", "primary", "vgpu-display"] {
            assert_eq!(p.parse::<GraphicsPath>().expect("a path").to_string(), p);
        }
        for b in ["gtk", "egl-headless", "spice", "vnc"] {
            assert_eq!(
                b.parse::<DisplayBackend>().expect("a back end").to_string(),
                b
            );
        }
        let e = "sdl".parse::<DisplayBackend>().expect_err("not a back end");
        assert_eq!(
            e.to_string(),
            "'sdl' is not one of gtk, egl-headless, spice, vnc"
        );
    }

    #[test]
    fn render_nodes_must_be_plain_dev_dri_paths() {
        assert_eq!(render_node_problem("/dev/dri/renderD128"), None);
        assert_eq!(
            render_node_problem("/dev/dri/by-path/pci-0000:00:02.0-render"),
            None
        );
        for bad in [
            "/dev/sda",
            "/dev/dri/",
            "/dev/dri/../sda",
            "/dev/dri/renderD128,gl=off",
            "/dev/dri/x'y",
        ] {
            assert!(render_node_problem(bad).is_some(), "{bad}");
        }
    }
}
