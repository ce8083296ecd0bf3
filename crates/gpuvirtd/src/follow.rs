//! The ledger follows the hardware: a slot whose every function was hot-removed while its
//! record was open has the record closed (`removed`, originals kept), and a card that comes
//! back to such a slot is judged by what it is bound to now (issue 18 point 9).
//!
//! The actor tells what it saw ([`seen`], one cheap pass over the targets it refreshed) on a
//! channel and never waits: a task of its own ([`spawn`]) takes the ledger's lock like every
//! other writer and writes in a blocking worker, in the order the actor saw things. At start
//! [`at_start`] settles what changed while no daemon was watching.
//! Ground level: may import crate::ledger, crate::events (refresh targets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gpuvirt_core::ledger::{Ledger, PresentFunction, SlotState};
use gpuvirt_core::{Inventory, PciAddress, PciSlot};
use tokio::sync::mpsc;

use crate::events::Target;
use crate::ledger::{ExecGuard, LedgerDoor};

/// What one refresh pass saw of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSeen {
    /// The slot's last function is gone; the ids (vendor, device) of those that left.
    Gone {
        slot: PciSlot,
        ids: BTreeMap<PciAddress, (u16, u16)>,
    },
    /// A function of the slot appeared; every function of the slot as it is now.
    Back {
        slot: PciSlot,
        functions: Vec<PresentFunction>,
    },
}

impl SlotSeen {
    fn slot(&self) -> PciSlot {
        match self {
            SlotSeen::Gone { slot, .. } | SlotSeen::Back { slot, .. } => *slot,
        }
    }
}

/// The sending end the actor holds.
pub type Follow = mpsc::UnboundedSender<Vec<SlotSeen>>;

/// Before a pass: the functions (virtual functions left out) that `targets` may remove, with
/// their ids. Only PCI targets, or every function for a full rescan.
pub fn before(inv: &Inventory, targets: &BTreeSet<Target>) -> BTreeMap<PciAddress, (u16, u16)> {
    let keep = |f: &gpuvirt_core::PciFunction| f.physfn.is_none();
    let ids = |f: &gpuvirt_core::PciFunction| (f.address, (f.ids.vendor, f.ids.device));
    if targets.contains(&Target::All) {
        return inv
            .functions
            .values()
            .filter(|f| keep(f))
            .map(ids)
            .collect();
    }
    targets
        .iter()
        .filter_map(|t| match t {
            Target::Pci(a) => inv.functions.get(a),
            _ => None,
        })
        .filter(|f| keep(f))
        .map(ids)
        .collect()
}

/// After a pass: the slots whose last function left, and those where one appeared.
pub fn seen(
    before: &BTreeMap<PciAddress, (u16, u16)>,
    inv: &Inventory,
    targets: &BTreeSet<Target>,
) -> Vec<SlotSeen> {
    let mut gone: BTreeMap<PciSlot, BTreeMap<PciAddress, (u16, u16)>> = BTreeMap::new();
    for (a, ids) in before {
        if !inv.functions.contains_key(a) {
            gone.entry(a.slot()).or_default().insert(*a, *ids);
        }
    }
    let appeared: BTreeSet<PciSlot> = if targets.contains(&Target::All) {
        inv.functions
            .keys()
            .filter(|a| !before.contains_key(a))
            .map(|a| a.slot())
            .collect()
    } else {
        targets
            .iter()
            .filter_map(|t| match t {
                Target::Pci(a) if !before.contains_key(a) && inv.functions.contains_key(a) => {
                    Some(a.slot())
                }
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    for (slot, ids) in gone {
        if present(inv, slot).is_empty() {
            out.push(SlotSeen::Gone { slot, ids });
        }
    }
    for slot in appeared {
        let functions = present(inv, slot);
        if !functions.is_empty() {
            out.push(SlotSeen::Back { slot, functions });
        }
    }
    out
}

/// The slot's functions in `inv` (virtual functions left out).
fn present(inv: &Inventory, slot: PciSlot) -> Vec<PresentFunction> {
    let first = PciAddress::new(slot.domain, slot.bus, slot.device, 0);
    inv.functions
        .range(first..)
        .take_while(|(a, _)| a.slot() == slot)
        .filter(|(_, f)| f.physfn.is_none())
        .map(|(a, f)| PresentFunction {
            address: *a,
            vendor: f.ids.vendor,
            device: f.ids.device,
            driver: f.driver.clone(),
        })
        .collect()
}

/// Whether `seen` would change `ledger`: a record to close or to judge.
fn concerns(ledger: &Ledger, seen: &[SlotSeen]) -> bool {
    seen.iter().any(|s| {
        ledger.slot(s.slot()).is_some_and(|r| match s {
            SlotSeen::Gone { .. } => r.is_open(),
            SlotSeen::Back { .. } => r.state == SlotState::Removed,
        })
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Applies `seen` to the ledger, in order, logging each change (blocking: it may fsync).
fn apply(door: &LedgerDoor, lock: &ExecGuard, seen: &[SlotSeen]) {
    let result = door.update(lock, |ledger| {
        for s in seen {
            match s {
                SlotSeen::Gone { slot, ids } => {
                    if ledger.close_removed_slot(*slot, now(), ids) {
                        tracing::info!(
                            "slot {slot} removed while passed through; its record is kept \
                             until a card returns to that slot"
                        );
                    }
                }
                SlotSeen::Back { slot, functions } => {
                    if let Some(returned) = ledger.card_returned(*slot, functions) {
                        tracing::info!("slot {slot} removed while passed through: {returned}");
                    }
                }
            }
        }
    });
    if let Err(e) = result {
        tracing::error!(
            "cannot record what the hardware did in the ownership ledger: {}",
            gpuvirt_core::error_chain(&e)
        );
    }
}

/// The task that writes what the actor saw; returns the actor's end of its channel.
pub fn spawn(door: Arc<LedgerDoor>) -> Follow {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<SlotSeen>>();
    tokio::spawn(async move {
        while let Some(mut seen) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                seen.extend(more);
            }
            // Most passes that add or remove a function touch no record (a VF, a card
            // gpuvirt never had): a read without the lock says so.
            let d = door.clone();
            let (s, relevant) = match tokio::task::spawn_blocking(move || {
                let relevant = d.load().map(|l| concerns(&l, &seen)).unwrap_or(true);
                (seen, relevant)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "reading the ledger failed");
                    continue;
                }
            };
            if !relevant {
                continue;
            }
            let lock = door.lock().await;
            let d = door.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || apply(&d, &lock, &s)).await {
                tracing::error!(error = %e, "writing the ledger failed");
            }
        }
    });
    tx
}

/// At start, before the actor runs: what the ledger records against what `inv` shows (a
/// card removed or returned while no daemon was watching). Blocking, as [`LedgerDoor::recover`].
pub fn at_start(door: &LedgerDoor, inv: &Inventory, lock: &ExecGuard) {
    let Ok(ledger) = door.load() else {
        return;
    };
    let seen: Vec<SlotSeen> = ledger
        .slots
        .values()
        .filter_map(|r| r.functions.first().map(|f| (f.address.slot(), r)))
        .filter_map(|(slot, r)| {
            let functions = present(inv, slot);
            match (r.is_open(), functions.is_empty()) {
                (true, true) => Some(SlotSeen::Gone {
                    slot,
                    ids: BTreeMap::new(),
                }),
                (false, false) => Some(SlotSeen::Back { slot, functions }),
                _ => None,
            }
        })
        .collect();
    if !seen.is_empty() {
        apply(door, lock, &seen);
    }
}
