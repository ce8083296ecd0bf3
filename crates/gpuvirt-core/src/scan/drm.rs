//! A PCI function's DRM nodes: `<device>/drm/card*` and `renderD*` from sysfs, and udev's
//! `dev/dri/by-path/pci-<address>-card` / `-render` links under the root. May import:
//! crate::host, crate::model, scan/device.
//!
//! sysfs is authoritative: a by-path link is reported only when it points at the node sysfs
//! shows now (udev makes and removes the links a moment after the kernel's own change, and a
//! stale one may name a minor another card has taken since). A root without `dev/dri/by-path`
//! (no udev, a container) gives no by-path names, and nothing is derived in their place.

use std::path::Path;

use super::device::{DeviceDir, Gone};
use crate::host::sysfs::{basename, is_missing};
use crate::model::{DrmNodes, PciAddress};

/// Where udev puts the stable names, relative to the root.
const DRI_BY_PATH: &str = "dev/dri/by-path";

/// `card<N>` or `renderD<N>`: the DRM minor names the kernel gives; connector directories
/// (`card1-HDMI-A-1`) live below the card, not here, and old kernels' `controlD*` are skipped.
fn minor_name<'n>(name: &'n str, prefix: &str) -> Option<&'n str> {
    let digits = name.strip_prefix(prefix)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

impl DeviceDir<'_, '_> {
    /// The DRM nodes under `<device>/drm` (the caller checked the listing has it).
    pub(super) fn drm_nodes(&mut self, address: PciAddress) -> Result<Option<DrmNodes>, Gone> {
        let dir = self.dir.join("drm");
        let mut names = match self.r.list(&dir) {
            Ok(names) => names,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => {
                self.r
                    .warn(&dir, format!("the DRM directory could not be listed: {e}"));
                return Ok(None);
            }
        };
        names.sort_unstable();
        let card = names.iter().find_map(|n| minor_name(n, "card"));
        let render = names.iter().find_map(|n| minor_name(n, "renderD"));
        if card.is_none() && render.is_none() {
            return Ok(None);
        }
        let card_by_path = card.and_then(|c| self.by_path(address, "card", c));
        let render_by_path = render.and_then(|r| self.by_path(address, "render", r));
        Ok(Some(DrmNodes {
            card: card.map(|c| format!("/dev/dri/{c}")),
            render: render.map(|r| format!("/dev/dri/{r}")),
            card_by_path,
            render_by_path,
        }))
    }

    /// `/dev/dri/by-path/pci-<address>-<kind>` when that link exists and names `node`.
    fn by_path(&mut self, address: PciAddress, kind: &str, node: &str) -> Option<String> {
        let name = format!("pci-{address}-{kind}");
        let link = Path::new(DRI_BY_PATH).join(&name);
        match self.r.read_link(&link) {
            Ok(target) if basename(&target) == Some(node) => Some(format!("/{}", link.display())),
            // Stale (another minor) or not udev's link: not this node's name.
            Ok(_) => None,
            Err(e) if is_missing(&e) => None,
            Err(e) => {
                self.r
                    .warn(&link, format!("the udev link could not be read: {e}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::minor_name;

    #[test]
    fn minor_names() {
        assert_eq!(minor_name("card1", "card"), Some("card1"));
        assert_eq!(minor_name("renderD128", "renderD"), Some("renderD128"));
        assert_eq!(minor_name("card1-HDMI-A-1", "card"), None);
        assert_eq!(minor_name("card", "card"), None);
        assert_eq!(minor_name("controlD64", "card"), None);
    }
}
