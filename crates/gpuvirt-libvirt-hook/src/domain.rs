//! The domain XML libvirt hands the hook on stdin, reduced to what gpuvirt may have to ready:
//! the `<hostdev mode='subsystem'>` devices of type `mdev` (by UUID) and `pci` (by host
//! address). May import: roxmltree, crate::error.

use crate::error::HookError;

/// One PCI hostdev: the host function's address as gpuvirt spells it (`DDDD:BB:DD.F`) and
/// whether libvirt manages it (`managed='yes'`: libvirt detaches it from its host driver itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostdev {
    pub address: String,
    pub managed: bool,
}

/// The hostdevs of a domain that gpuvirt may know, in document order, duplicates dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hostdevs {
    /// The UUIDs of `<hostdev type='mdev'>`, lowercase.
    pub mdevs: Vec<String>,
    pub pci: Vec<PciHostdev>,
}

impl Hostdevs {
    pub fn is_empty(&self) -> bool {
        self.mdevs.is_empty() && self.pci.is_empty()
    }
}

/// Reads the hostdevs out of a libvirt domain XML document.
pub fn parse(xml: &str) -> Result<Hostdevs, HookError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| HookError::DomainXml(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(HookError::DomainXml(format!(
            "the document is a <{}>, not a <domain>",
            root.tag_name().name()
        )));
    }
    let mut out = Hostdevs::default();
    let hostdevs = root
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children())
        .filter(|n| n.has_tag_name("hostdev") && n.attribute("mode") == Some("subsystem"));
    for hostdev in hostdevs {
        // The host side is `<source><address .../></source>`; a `<address>` directly under
        // `<hostdev>` is the guest's slot, not the host device.
        let Some(source) = hostdev
            .children()
            .find(|n| n.has_tag_name("source"))
            .and_then(|s| s.children().find(|n| n.has_tag_name("address")))
        else {
            continue;
        };
        match hostdev.attribute("type") {
            Some("mdev") => {
                let uuid = source
                    .attribute("uuid")
                    .ok_or_else(|| HookError::DomainXml("an mdev hostdev has no uuid".into()))?
                    .to_ascii_lowercase();
                if !out.mdevs.contains(&uuid) {
                    out.mdevs.push(uuid);
                }
            }
            Some("pci") => {
                let address = pci_address(source)?;
                let managed = hostdev.attribute("managed") == Some("yes");
                if !out.pci.iter().any(|p| p.address == address) {
                    out.pci.push(PciHostdev { address, managed });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `<address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>` as `0000:41:00.0`.
fn pci_address(address: roxmltree::Node<'_, '_>) -> Result<String, HookError> {
    let field = |name: &str, max: u32| -> Result<u32, HookError> {
        // libvirt writes hex with 0x; decimal is accepted in hand-written XML.
        let bad = || {
            HookError::DomainXml(format!(
                "a pci hostdev's source address has no valid {name}"
            ))
        };
        let text = match address.attribute(name) {
            Some(t) => t,
            None if name == "domain" => "0",
            None => return Err(bad()),
        };
        let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        }
        .map_err(|_| bad())?;
        if value > max {
            return Err(bad());
        }
        Ok(value)
    };
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field("domain", 0xffff)?,
        field("bus", 0xff)?,
        field("slot", 0x1f)?,
        field("function", 7)?
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm' id='3'>
  <name>vm1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>
      <source>
        <address uuid='B2E1C4A6-3F0D-4D7E-9A51-6C2F8E0D1A33'/>
      </source>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source>
        <address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>
      </source>
      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0' multifunction='on'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci'>
      <source><address bus='1' slot='0' function='1'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x1234'/><product id='0xbeef'/></source>
    </hostdev>
    <hostdev mode='capabilities' type='storage'>
      <source><block>/dev/sdf1</block></source>
    </hostdev>
  </devices>
</domain>"#;

    #[test]
    fn reads_mdev_and_pci_hostdevs_with_their_host_addresses() {
        let h = parse(XML).unwrap();
        assert_eq!(h.mdevs, vec!["b2e1c4a6-3f0d-4d7e-9a51-6c2f8e0d1a33"]);
        assert_eq!(
            h.pci,
            vec![
                PciHostdev {
                    address: "0000:41:00.0".into(),
                    managed: true
                },
                PciHostdev {
                    address: "0000:01:00.1".into(),
                    managed: false
                },
            ]
        );
    }

    #[test]
    fn a_domain_without_hostdevs_has_none() {
        let h = parse("<domain type='qemu'><name>x</name><devices/></domain>").unwrap();
        assert!(h.is_empty());
    }

    #[test]
    fn bad_documents_are_named() {
        assert!(matches!(parse("<domain>"), Err(HookError::DomainXml(_))));
        let e = parse("<network/>").unwrap_err().to_string();
        assert!(e.contains("<network>"), "{e}");
        let bad = "<domain><devices><hostdev mode='subsystem' type='pci'><source>\
                   <address bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>";
        assert!(parse(bad).unwrap_err().to_string().contains("bus"));
    }
}
