//! PCI addresses and slots: [`PciAddress`] (`DDDD:BB:DD.F`), parsed strictly so its
//! `Display` form is a safe path component, and [`PciSlot`]. May import: std, serde.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PCI function address, `DDDD:BB:DD.F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:41:00.0)")]
pub struct PciAddressError {
    pub input: String,
}

impl PciAddress {
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Self {
        Self {
            domain,
            bus,
            device,
            function,
        }
    }

    /// The slot this function belongs to (all functions of one card share it).
    pub fn slot(&self) -> PciSlot {
        PciSlot {
            domain: self.domain,
            bus: self.bus,
            device: self.device,
        }
    }

    /// The D-Bus object path element, `0000_41_00_0`.
    pub fn object_path_element(&self) -> String {
        format!(
            "{:04x}_{:02x}_{:02x}_{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    /// Accepts exactly `DDDD:BB:DD.F` with hex digits (any case); `BB:DD.F` is taken as domain 0.
    /// Anything else (path separators, NUL, extra text) is rejected, so a parsed address is safe
    /// to use as a path component.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PciAddressError {
            input: s.chars().take(64).collect(),
        };
        let hex = |part: &str, len: usize| -> Option<u32> {
            if part.len() != len || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        let (domain, rest) = match s.len() {
            // `get`, not indexing: a multi-byte character across byte 4 is an error, not a panic.
            12 => (
                hex(s.get(..4).ok_or_else(err)?, 4).ok_or_else(err)?,
                s.get(4..).ok_or_else(err)?,
            ),
            7 => (0, s),
            _ => return Err(err()),
        };
        let rest = if s.len() == 12 {
            rest.strip_prefix(':').ok_or_else(err)?
        } else {
            rest
        };
        let (bus, rest) = rest.split_once(':').ok_or_else(err)?;
        let (device, function) = rest.split_once('.').ok_or_else(err)?;
        let bus = hex(bus, 2).ok_or_else(err)?;
        let device = hex(device, 2).ok_or_else(err)?;
        let function = hex(function, 1).ok_or_else(err)?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(Self::new(
            domain as u16,
            bus as u8,
            device as u8,
            function as u8,
        ))
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A PCI slot, `DDDD:BB:DD` (a card's functions share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciSlot {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
}

impl fmt::Display for PciSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_round_trips() {
        let a: PciAddress = "0000:41:00.0".parse().unwrap();
        assert_eq!(a, PciAddress::new(0, 0x41, 0, 0));
        assert_eq!(a.to_string(), "0000:41:00.0");
        assert_eq!(a.object_path_element(), "0000_41_00_0");
        assert_eq!(
            "41:00.1".parse::<PciAddress>().unwrap().to_string(),
            "0000:41:00.1"
        );
        assert_eq!(
            "ABCD:EF:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "abcd:ef:1f.7"
        );
    }

    #[test]
    fn pci_address_rejects_junk() {
        for bad in [
            "",
            "0000:41:00",
            "0000:41:00.8",
            "0000:41:20.0",
            "../41:00.0",
            "0000:41:00.0\0",
            "0000/41:00.0",
            "0000:41:00.0 ",
            "g000:41:00.0",
            "0000:4:000.0",
            "+000:41:00.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} parsed");
        }
    }
}
