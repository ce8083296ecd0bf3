//! Kernel-format uevents: what the simulated kernel emits after each change. May import: nothing
//! of this crate.

use std::fmt;

/// One kernel uevent: an action, a devpath and the environment, in the kernel's key order.
///
/// Serialised the way the kernel sends them over netlink (`ACTION@DEVPATH\0KEY=VALUE\0...`) and
/// printed the way `udevadm monitor --kernel --property` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online`, `offline`.
    pub action: String,
    /// Devpath relative to `/sys`, starting with `/` (`/devices/pci0000:40/0000:41:00.0`).
    pub devpath: String,
    pub subsystem: String,
    /// Further keys in order (`DRIVER`, `PCI_CLASS`, `MDEV_STATE`, ...), without `ACTION`,
    /// `DEVPATH`, `SUBSYSTEM` and `SEQNUM`.
    pub env: Vec<(String, String)>,
    /// Assigned when the event is emitted.
    pub seqnum: u64,
}

impl Uevent {
    pub fn new(action: &str, devpath: &str, subsystem: &str) -> Self {
        Self {
            action: action.to_owned(),
            devpath: devpath.to_owned(),
            subsystem: subsystem.to_owned(),
            env: Vec::new(),
            seqnum: 0,
        }
    }

    /// Adds a key (builder style).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            "ACTION" => Some(&self.action),
            "DEVPATH" => Some(&self.devpath),
            "SUBSYSTEM" => Some(&self.subsystem),
            _ => self
                .env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// The netlink wire form: `ACTION@DEVPATH\0ACTION=..\0DEVPATH=..\0SUBSYSTEM=..\0...SEQNUM=..\0`.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(format!("{}@{}\0", self.action, self.devpath).as_bytes());
        for (k, v) in self.pairs() {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// Parses the wire form; `None` for anything malformed.
    pub fn from_wire(buf: &[u8]) -> Option<Self> {
        let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
        let header = std::str::from_utf8(fields.next()?).ok()?;
        let (action, devpath) = header.split_once('@')?;
        let mut ev = Uevent::new(action, devpath, "");
        for f in fields {
            let f = std::str::from_utf8(f).ok()?;
            let (k, v) = f.split_once('=')?;
            match k {
                "ACTION" if v == action => {}
                "DEVPATH" if v == devpath => {}
                "ACTION" | "DEVPATH" => return None,
                "SUBSYSTEM" => ev.subsystem = v.to_owned(),
                "SEQNUM" => ev.seqnum = v.parse().ok()?,
                _ => ev.env.push((k.to_owned(), v.to_owned())),
            }
        }
        if ev.subsystem.is_empty() || !ev.devpath.starts_with('/') {
            return None;
        }
        Some(ev)
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, String)> {
        [
            ("ACTION", self.action.clone()),
            ("DEVPATH", self.devpath.clone()),
            ("SUBSYSTEM", self.subsystem.clone()),
        ]
        .into_iter()
        .chain(self.env.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .chain(std::iter::once(("SEQNUM", self.seqnum.to_string())))
    }
}

impl fmt::Display for Uevent {
    /// `udevadm monitor --kernel --property` style.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "KERNEL {} {} ({})",
            self.action, self.devpath, self.subsystem
        )?;
        for (k, v) in self.pairs() {
            writeln!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let mut ev = Uevent::new(
            "bind",
            "/devices/pci0000:00/0000:00:04.0/0000:01:00.0",
            "pci",
        )
        .with("DRIVER", "vfio-pci")
        .with("PCI_SLOT_NAME", "0000:01:00.0");
        ev.seqnum = 1262;
        let wire = ev.to_wire();
        assert!(
            wire.starts_with(b"bind@/devices/pci0000:00/0000:00:04.0/0000:01:00.0\0ACTION=bind\0")
        );
        assert_eq!(Uevent::from_wire(&wire), Some(ev));
        assert_eq!(Uevent::from_wire(b"junk"), None);
    }
}
