//! Where the actor reads the host from: the [`InventorySource`] seam (tests can substitute a
//! fake), the core scanner behind it, and the scanner with a memory for NVIDIA per-VF vGPU
//! type names (see [`gpuvirt_core::vgpu_names`]): every read teaches the names the VFs list,
//! they are saved in the state directory, and every inventory handed on carries them, so a
//! type in use on a full card keeps its name across restarts (for the policy, `CreateMdev`
//! and the `Types` property). May import: crate::events.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use gpuvirt_core::vgpu_names::{self, NamesStore, VgpuTypeNames};
use gpuvirt_core::{Inventory, RefreshScope, RefreshTarget, Scanner};

use crate::events::Target;

/// Reads the host. The daemon uses the core scanner; tests can substitute a fake.
pub trait InventorySource: Send + Sync + 'static {
    fn scan(&self) -> Inventory;
    /// Re-reads what `targets` touch in `inv` (one batch of events: see the core's
    /// `Scanner::refresh_batch`); returns the entries it may have changed.
    fn refresh(&self, inv: &mut Inventory, targets: &BTreeSet<Target>) -> RefreshScope;
}

impl InventorySource for Scanner {
    fn scan(&self) -> Inventory {
        Scanner::scan(self)
    }

    fn refresh(&self, inv: &mut Inventory, targets: &BTreeSet<Target>) -> RefreshScope {
        use RefreshTarget as R;
        let targets: Vec<R> = targets
            .iter()
            .map(|target| match target {
                Target::Pci(a) => R::Pci(*a),
                Target::Mdev(u) => R::Mdev(*u),
                Target::MdevParent(n) => R::MdevParent(n.clone()),
                Target::MdevInstances(n) => R::MdevInstances(n.clone()),
                Target::IommuGroup(g) => R::IommuGroup(*g),
                Target::Modules => R::Modules,
                Target::All => R::All,
            })
            .collect();
        Scanner::refresh_batch(self, inv, &targets).1
    }
}

/// The core scanner plus the remembered vGPU type names.
pub struct RememberingScanner {
    scanner: Scanner,
    store: NamesStore,
    names: Mutex<VgpuTypeNames>,
}

impl RememberingScanner {
    /// Starts from the names saved in `state_dir`; an unreadable file is reported and the
    /// names are learned again from the next card with room.
    pub fn new(scanner: Scanner, state_dir: &Path) -> Self {
        let store = NamesStore::new(state_dir);
        let names = store.load().unwrap_or_else(|e| {
            tracing::warn!("{}", gpuvirt_core::error_chain(&e));
            VgpuTypeNames::new()
        });
        RememberingScanner {
            scanner,
            store,
            names: Mutex::new(names),
        }
    }

    /// Learns from `inv`, saves what is new, and gives `inv` the names known now.
    fn remember(&self, inv: &mut Inventory) {
        // Nothing panics while holding the lock; a poisoned one still holds whole names.
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if vgpu_names::learn(inv, &mut names) {
            tracing::debug!(models = names.len(), "learned vGPU type names");
            if let Err(e) = self.store.save(&names) {
                tracing::warn!("{}", gpuvirt_core::error_chain(&e));
            }
        }
        if inv.vgpu_type_names != *names {
            inv.vgpu_type_names = names.clone();
        }
    }
}

impl InventorySource for RememberingScanner {
    fn scan(&self) -> Inventory {
        let mut inv = InventorySource::scan(&self.scanner);
        self.remember(&mut inv);
        inv
    }

    fn refresh(&self, inv: &mut Inventory, targets: &BTreeSet<Target>) -> RefreshScope {
        let scope = InventorySource::refresh(&self.scanner, inv, targets);
        self.remember(inv);
        scope
    }
}
