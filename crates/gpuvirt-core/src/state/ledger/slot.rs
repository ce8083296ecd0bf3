//! A slot's record in the ledger and its life: `pending` → `assigned` → `returning`, and
//! `removed` when the hardware leaves while the record is open. A removed record keeps the
//! original drivers only until a card comes back to the slot; that card is judged by what it
//! is bound to then ([`SlotRecord::judge_return`]).
//! May import: crate::model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::PciAddress;

/// The driver a passed-through function is bound to.
const VFIO_PCI: &str = "vfio-pci";

/// Where a slot is in its passthrough life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Originals recorded, rebinding to vfio-pci started but not verified (a crash here means:
    /// put the slot back to its original drivers).
    Pending,
    /// Every function verified bound to vfio-pci.
    Assigned,
    /// Returning to the host started but not verified.
    Returning,
    /// Every function of the slot was hot-removed while the record was open: the original
    /// drivers are kept (see [`SlotRecord::removal`]) until a card comes back to the slot.
    Removed,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotState::Pending => "pending",
            SlotState::Assigned => "assigned",
            SlotState::Returning => "returning",
            SlotState::Removed => "removed",
        })
    }
}

/// One function of a slot gpuvirt rebound, and the driver it found on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub address: PciAddress,
    /// The driver bound before gpuvirt touched it; `None`: it was unbound.
    pub original_driver: Option<String>,
}

/// When and how a slot's card left (a record in [`SlotState::Removed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// When gpuvirtd saw the slot empty, in seconds since the Unix epoch.
    pub at: u64,
    /// The state the record was in when the card left.
    pub was: SlotState,
    /// Each function's `vendor:device` ids (lowercase hex) as last seen, when known: a card
    /// with other ids in the slot is another card.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<PciAddress, String>,
}

/// A slot (a whole card) gpuvirt gave, or is giving, to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub functions: Vec<FunctionRecord>,
    /// The policy rule behind it; `None` for a manual D-Bus request.
    pub rule: Option<String>,
    pub state: SlotState,
    /// Set while the record is [`SlotState::Removed`]; written only then, so older ledgers
    /// read and write as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
}

/// A function of a slot as the host shows it now (virtual functions left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentFunction {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
}

/// The `vendor:device` form [`Removal::ids`] keeps.
pub fn ids_text(vendor: u16, device: u16) -> String {
    format!("{vendor:04x}:{device:04x}")
}

/// What became of a removed record when a card came back to its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Every function is on a host driver or on none: there is nothing to return, and the
    /// record is dropped. Each function with the driver it is on.
    OnHost(Vec<(PciAddress, Option<String>)>),
    /// The card came back on vfio-pci (early binding, `vfio-pci ids=`): the record is
    /// `assigned` again with its original drivers, for a later return.
    Reassigned,
    /// Another card is in the slot (the reason): the removed card's record is dropped.
    Different(String),
}

impl Returned {
    /// Whether the record goes.
    pub fn drops_record(&self) -> bool {
        !matches!(self, Returned::Reassigned)
    }
}

impl fmt::Display for Returned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Returned::OnHost(bound) => {
                let bound: Vec<String> = bound
                    .iter()
                    .map(|(a, d)| match d {
                        Some(d) => format!("{a} on {d}"),
                        None => format!("{a} unbound"),
                    })
                    .collect();
                write!(
                    f,
                    "the card back in it is with the host ({}): nothing to return; its \
                     record is dropped",
                    bound.join(", ")
                )
            }
            Returned::Reassigned => f.write_str(
                "the card came back on vfio-pci: its record is assigned again, with the \
                 original drivers to return it to",
            ),
            Returned::Different(why) => write!(
                f,
                "another card is in it ({why}): the removed card's record is dropped"
            ),
        }
    }
}

impl SlotRecord {
    /// The recorded original driver of `address`, `None` when the function is not in the slot.
    pub fn original_driver(&self, address: PciAddress) -> Option<Option<&str>> {
        self.functions
            .iter()
            .find(|f| f.address == address)
            .map(|f| f.original_driver.as_deref())
    }

    /// Whether the record is open: the card is (being) passed through or returned.
    pub fn is_open(&self) -> bool {
        self.state != SlotState::Removed
    }

    /// Closes an open record whose slot has no function left: `removed`, keeping the
    /// original drivers, the time `at` and the departed functions' `ids` (vendor, device).
    /// False (nothing changed) when the record is removed already.
    pub fn close_removed(&mut self, at: u64, ids: &BTreeMap<PciAddress, (u16, u16)>) -> bool {
        if !self.is_open() {
            return false;
        }
        self.removal = Some(Removal {
            at,
            was: self.state,
            ids: self
                .functions
                .iter()
                .filter_map(|f| {
                    ids.get(&f.address)
                        .map(|(v, d)| (f.address, ids_text(*v, *d)))
                })
                .collect(),
        });
        self.state = SlotState::Removed;
        true
    }

    /// Judges the card in the slot of a removed record by what it is bound to now, and puts
    /// the record back to `assigned` when the card came back on vfio-pci. `None`: the record
    /// is not removed, or the card has not fully come back yet (a recorded function is still
    /// missing, and those present match the record).
    pub fn judge_return(&mut self, present: &[PresentFunction]) -> Option<Returned> {
        if self.is_open() || present.is_empty() {
            return None;
        }
        let recorded: BTreeSet<PciAddress> = self.functions.iter().map(|f| f.address).collect();
        let ids = self.removal.as_ref().map(|r| &r.ids);
        for f in present {
            if !recorded.contains(&f.address) {
                return Some(Returned::Different(format!(
                    "{} was not a function of the removed card",
                    f.address
                )));
            }
            let now = ids_text(f.vendor, f.device);
            if let Some(was) = ids.and_then(|ids| ids.get(&f.address)) {
                if *was != now {
                    return Some(Returned::Different(format!(
                        "{} is {now}, the removed card's was {was}",
                        f.address
                    )));
                }
            }
        }
        if present.len() < recorded.len() {
            return None;
        }
        if present
            .iter()
            .any(|f| f.driver.as_deref() == Some(VFIO_PCI))
        {
            self.state = SlotState::Assigned;
            self.removal = None;
            return Some(Returned::Reassigned);
        }
        Some(Returned::OnHost(
            present
                .iter()
                .map(|f| (f.address, f.driver.clone()))
                .collect(),
        ))
    }
}
