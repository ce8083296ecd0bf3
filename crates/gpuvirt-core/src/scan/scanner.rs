//! The [`Scanner`]: a root and what is loaded once for it (pci.ids, module aliases, the
//! kernel release). May import: crate::host, crate::model, crate::modalias, crate::pciids,
//! scan/{read, counts}.

use super::counts::CountFiles;
use super::read::{read_kernel_release, PARALLEL_MAX_THREADS};
use crate::host::root::Root;
use crate::host::sysfs::{Reader, ScanStats};
use crate::modalias::ModuleAliases;
use crate::model::ScanWarning;
use crate::pciids::PciIdsDb;

/// Reads hosts below one root. Holds what is loaded once: the pci.ids database, the kernel's
/// module aliases and the kernel release.
#[derive(Debug)]
pub struct Scanner {
    pub(super) root: Root,
    pub(super) kernel_release: Option<String>,
    pub(super) pci_ids: PciIdsDb,
    pub(super) aliases: ModuleAliases,
    /// Problems met while loading the databases, repeated in every scan's warnings.
    pub(super) load_warnings: Vec<ScanWarning>,
    pub(super) load_stats: ScanStats,
    /// Most threads a scan splits its per-device reads over (see [`read_parallel`]).
    pub(super) threads: usize,
    /// Count files kept open for the refresh after each create or remove.
    pub(super) counts: CountFiles,
}

impl Scanner {
    /// Loads pci.ids and modules.alias once; absent files give empty databases, not errors.
    pub fn new(root: Root) -> Scanner {
        let mut r = Reader::new(&root);
        let kernel_release = read_kernel_release(&mut r);
        let pci_ids = PciIdsDb::load(&mut r);
        let aliases = match &kernel_release {
            Some(release) => ModuleAliases::load(&mut r, release),
            None => ModuleAliases::default(),
        };
        let load_warnings = std::mem::take(&mut r.warnings);
        let load_stats = r.stats;
        Scanner {
            root,
            kernel_release,
            pci_ids,
            aliases,
            load_warnings,
            load_stats,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(PARALLEL_MAX_THREADS),
            counts: CountFiles::default(),
        }
    }

    /// Splits a scan's per-device reads over at most `threads` threads (1: all on the calling
    /// thread). The default is the CPUs, at most four.
    pub fn with_threads(mut self, threads: usize) -> Scanner {
        self.threads = threads.max(1);
        self
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The running kernel's release (`proc/sys/kernel/osrelease`, else the only `lib/modules` entry).
    pub fn kernel_release(&self) -> Option<&str> {
        self.kernel_release.as_deref()
    }

    pub fn pci_ids(&self) -> &PciIdsDb {
        &self.pci_ids
    }

    pub fn module_aliases(&self) -> &ModuleAliases {
        &self.aliases
    }

    /// File operations spent loading the databases in [`Scanner::new`].
    pub fn load_stats(&self) -> ScanStats {
        self.load_stats
    }
}
