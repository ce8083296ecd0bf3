//! DRM nodes: a device with a `drm_minor` bound to a DRM driver gets `drm/card<N>` (and
//! `drm/renderD<128+N>` when its driver renders) below its directory, `sys/class/drm` links,
//! and what udev makes for them: `dev/dri/card<N>`, `dev/dri/renderD<M>` and the
//! `dev/dri/by-path/pci-<address>-card` / `-render` links. Unbinding (to vfio-pci, or none)
//! takes them away, binding a DRM driver again brings them back, as a real kernel and udev do.
//! May import: super (the model types), crate::fixture; calls only kernel.rs queries.
//!
//! The simulation sends no `drm` uevents: gpuvirt follows the PCI `bind`/`unbind` that come
//! after the kernel's own DRM changes. `dev` is not part of the FUSE-served `sys`: a mount
//! copies `dev/dri` out again after each change ([`Kernel::take_dri_changed`]).

use gpuvirt_core::PciAddress;

use super::{Device, Kernel};
use crate::fixture::DrmSupport;

/// The DRM character major (`226:<minor>`).
const DRM_MAJOR: u32 = 226;

/// Render nodes are numbered from here (`renderD128` for minor 0).
const RENDER_BASE: u32 = 128;

/// The nodes of minor `minor`: (name, its minor number, by-path suffix).
fn nodes(minor: u32, support: DrmSupport) -> Vec<(String, u32, &'static str)> {
    let mut out = Vec::new();
    if support != DrmSupport::None {
        out.push((format!("card{minor}"), minor, "card"));
    }
    if support == DrmSupport::Render {
        let m = RENDER_BASE + minor;
        out.push((format!("renderD{m}"), m, "render"));
    }
    out
}

impl Kernel {
    /// Which nodes `a` has now: none unless it has a minor and its bound driver is a DRM one.
    fn drm_support(&self, d: &Device) -> DrmSupport {
        d.driver
            .as_ref()
            .and_then(|drv| self.drivers.get(drv))
            .map_or(DrmSupport::None, |drv| drv.spec.drm)
    }

    /// The names of the DRM nodes `d` has now, card first (for the expected inventory).
    pub(super) fn drm_names(&self, d: &Device) -> Vec<String> {
        d.drm_minor
            .map(|m| nodes(m, self.drm_support(d)))
            .unwrap_or_default()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect()
    }

    /// Makes `a`'s DRM nodes match its driver (idempotent: nodes already there stay).
    pub(super) fn render_drm(&mut self, a: PciAddress) {
        let Some(d) = self.devices.get(&a).cloned() else {
            return;
        };
        let Some(minor) = d.drm_minor else {
            return;
        };
        let want = nodes(minor, self.drm_support(&d));
        if want.is_empty() {
            self.unrender_drm(&d);
            return;
        }
        let dir = format!("{}/drm", d.path);
        for (name, number, kind) in &want {
            let node = format!("{dir}/{name}");
            if self.tree.exists(&format!("{node}/dev")) {
                continue;
            }
            self.tree
                .attr(&format!("{node}/dev"), format_args!("{DRM_MAJOR}:{number}"));
            self.tree.set_file(
                &format!("{node}/uevent"),
                format!(
                    "MAJOR={DRM_MAJOR}\nMINOR={number}\nDEVNAME=dri/{name}\nDEVTYPE=drm_minor\n"
                ),
                0o644,
            );
            self.tree
                .link_rel(&format!("{node}/subsystem"), "sys/class/drm");
            self.tree.link_rel(&format!("{node}/device"), &d.path);
            self.tree.link_rel(&format!("sys/class/drm/{name}"), &node);
            self.tree.set_file(&format!("dev/dri/{name}"), "", 0o660);
            self.tree.link(
                &format!("dev/dri/by-path/pci-{a}-{kind}"),
                format!("../{name}"),
            );
            self.dri_changed = true;
        }
        // A driver without a render node after one with it (not seen, but kept exact).
        for (name, _, kind) in nodes(minor, DrmSupport::Render) {
            if !want.iter().any(|(n, _, _)| *n == name) {
                self.remove_node(a, &dir, &name, kind);
            }
        }
    }

    /// Removes every DRM node `d` may have had (its device directory stays).
    pub(super) fn unrender_drm(&mut self, d: &Device) {
        let Some(minor) = d.drm_minor else {
            return;
        };
        let dir = format!("{}/drm", d.path);
        for (name, _, kind) in nodes(minor, DrmSupport::Render) {
            self.remove_node(d.addr, &dir, &name, kind);
        }
        self.tree.remove(&dir);
    }

    fn remove_node(&mut self, a: PciAddress, dir: &str, name: &str, kind: &str) {
        let mut gone = self.tree.remove(&format!("{dir}/{name}"));
        gone |= self.tree.remove(&format!("sys/class/drm/{name}"));
        gone |= self.tree.remove(&format!("dev/dri/{name}"));
        gone |= self.tree.remove(&format!("dev/dri/by-path/pci-{a}-{kind}"));
        self.dri_changed |= gone;
    }

    /// Whether `dev/dri` changed since the last call (a mount then copies it out again).
    pub fn take_dri_changed(&mut self) -> bool {
        std::mem::take(&mut self.dri_changed)
    }
}
