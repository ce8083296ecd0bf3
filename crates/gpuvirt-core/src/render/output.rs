//! A rendered device: its libvirt elements and QEMU arguments, and how a display back end is put
//! in front of them. May import: super::graphics.

use serde::Serialize;

use super::graphics::{self, DisplayBackend};

/// A device's libvirt XML and QEMU arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// `<devices>` children, each ending in a newline: the display's `<video>`/`<graphics>`
    /// (with a `graphics` option), then one `<hostdev>` per function.
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

/// `device` with the back end's arguments and elements before its own, as the runbook writes
/// `-display gtk,gl=on -device vfio-pci,...`.
pub(super) fn with_display(
    device: Rendered,
    backend: DisplayBackend,
    render_node: Option<&str>,
    gl: bool,
) -> Rendered {
    let mut qemu = Vec::new();
    let mut xml = String::new();
    graphics::backend(backend, render_node, gl, &mut qemu, &mut xml);
    qemu.extend(device.qemu_args);
    xml.push_str(&device.libvirt_xml);
    Rendered {
        libvirt_xml: xml,
        qemu_args: qemu,
    }
}
