//! The executor: runs planned [`Action`]s against a root's sysfs and boot files, with the
//! kernel's real sequences, read-back verification and the ownership [`Ledger`].
//!
//! Synchronous on purpose: the daemon runs [`Executor::run`] (or single [`write_attr`] calls)
//! in a worker with a timeout, so a hanging sysfs write stalls one step and not the daemon.
//! Every path component that comes from input is validated ([`names`]) before any I/O, and
//! every tool (`modprobe`, `update-initramfs`, `dracut`) is resolved under the root, so a test
//! root runs its own test doubles and never the host's.
//!
//! Passthrough keeps the card whole: the originals of every function of a slot are written to
//! the ledger (state `pending`) before anything is touched; any failure rolls the whole slot
//! back to those drivers, and the record is dropped only once every function is back.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use uuid::Uuid;

pub use crate::error::ErrorKind;
use crate::host::atomic::{self, AtomicError, Replace};
pub use crate::host::names;
use crate::host::root::Root;
pub use crate::host::tools::Tools;
use crate::model::{PciAddress, PciSlot};
use crate::plan::action::VFIO_PCI;
use crate::plan::{Action, Plan, PlannedAction};
use crate::state::ledger::{
    FunctionRecord, Ledger, LedgerError, LedgerStore, MdevRecord, MdevStart, SlotRecord, SlotState,
    SriovRecord, VgpuRecord,
};
pub use names::NameError;

/// The first line of every file gpuvirt owns; a file that does not start with it is never
/// overwritten or removed.
pub const OWNED_FILE_MARKER: &str = "# Written by gpuvirt";
/// Prepended to boot file contents that do not already carry [`OWNED_FILE_MARKER`].
pub const OWNED_FILE_HEADER: &str =
    "# Written by gpuvirt, which owns this file: edits are overwritten, and it is removed when the policy no longer needs it.\n";

// Linux errno values (a stable ABI); the core crate has no libc dependency.
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENXIO: i32 = 6;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const ERANGE: i32 = 34;
/// The mdev core's "parent full" for drivers it counts for (mdpy), where others say ENOSPC.
const EUSERS: i32 = 87;

/// The symbolic name of an errno gpuvirt reports (`EBUSY`), or its number.
pub fn errno_name(errno: i32) -> String {
    match errno {
        1 => "EPERM".into(),
        ENOENT => "ENOENT".into(),
        EIO => "EIO".into(),
        ENXIO => "ENXIO".into(),
        11 => "EAGAIN".into(),
        12 => "ENOMEM".into(),
        13 => "EACCES".into(),
        EBUSY => "EBUSY".into(),
        EEXIST => "EEXIST".into(),
        ENODEV => "ENODEV".into(),
        EINVAL => "EINVAL".into(),
        ENOSPC => "ENOSPC".into(),
        ERANGE => "ERANGE".into(),
        EUSERS => "EUSERS".into(),
        30 => "EROFS".into(),
        95 => "EOPNOTSUPP".into(),
        110 => "ETIMEDOUT".into(),
        n => n.to_string(),
    }
}

/// One failed `write()` to a sysfs attribute.
#[derive(Debug, thiserror::Error)]
#[error("writing {value:?} to {} failed with {}", path.display(), errno_name(*errno))]
pub struct WriteError {
    /// The attribute, absolute.
    pub path: PathBuf,
    pub value: String,
    /// The errno (`EIO` when the error carried none).
    pub errno: i32,
    #[source]
    pub source: io::Error,
}

/// Writes `value` to one sysfs attribute with a single `write()`, as `echo` does; the errno is
/// kept. The attribute must exist (it is never created). This is the unit the daemon runs in a
/// worker with a timeout.
pub fn write_attr(path: &Path, value: &str) -> Result<(), WriteError> {
    let fail = |source: io::Error| WriteError {
        path: path.to_path_buf(),
        value: value.to_string(),
        errno: source.raw_os_error().unwrap_or(EIO),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(fail)?;
    let written = loop {
        match file.write(value.as_bytes()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        }
    };
    if written != value.len() {
        // Sysfs takes a store whole; a short write means the attribute did not take it.
        return Err(fail(io::Error::from_raw_os_error(EIO)));
    }
    Ok(())
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{address} is not a function of slot {slot}")]
    ForeignFunction { slot: PciSlot, address: PciAddress },
    #[error("{address} is gone (removed from the PCI bus) {during}")]
    DeviceGone { address: PciAddress, during: String },
    #[error("{what} is busy ({}): {hint}", errno_name(*errno))]
    Busy {
        what: String,
        errno: i32,
        hint: String,
        #[source]
        source: WriteError,
    },
    #[error("{address} should be bound to {}, but is bound to {}", wanted.as_deref().unwrap_or("no driver"), actual.as_deref().unwrap_or("no driver"))]
    DriverBind {
        address: PciAddress,
        wanted: Option<String>,
        actual: Option<String>,
    },
    #[error("the vfio-pci module is not loaded; binding now would leave {slot} with no driver (load it first: modprobe vfio-pci)")]
    VfioNotLoaded { slot: PciSlot },
    #[error("{parent} has no room for another mdev of type {type_id} (ENOSPC or EUSERS); remove one or pick a smaller type")]
    NoCapacity { parent: String, type_id: String },
    #[error("{pf} cannot enable {wanted} virtual functions (ERANGE: above sriov_totalvfs)")]
    TooManyVfs { pf: PciAddress, wanted: u32 },
    #[error("mdev {uuid} already exists{}", match existing_type { Some(t) => format!(" with type {t}"), None => String::new() })]
    AlreadyExists {
        uuid: Uuid,
        existing_type: Option<String>,
    },
    #[error("mdev parent {parent} does not exist (is its driver loaded and bound?)")]
    NoSuchParent { parent: String },
    #[error("{parent} does not offer mdev type {type_id}")]
    UnknownType { parent: String, type_id: String },
    #[error("{pf} has no SR-IOV capability (no sriov_numvfs)")]
    NoSriov { pf: PciAddress },
    #[error("VF {vf} has no NVIDIA vGPU interface (no nvidia/current_vgpu_type)")]
    NoVgpuInterface { vf: PciAddress },
    #[error("{what} is not owned by gpuvirt; it was made or bound by something else, so gpuvirt leaves it alone")]
    NotOwned { what: String },
    #[error("{} exists and was not written by gpuvirt (no '{OWNED_FILE_MARKER}' header); move it aside or merge it by hand", path.display())]
    ForeignFile { path: PathBuf },
    #[error("{what} failed")]
    Write {
        what: String,
        #[source]
        source: WriteError,
    },
    #[error("{what} read back {actual:?} instead of {wanted:?}")]
    Verify {
        what: String,
        wanted: String,
        actual: String,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} is not installed under {}; {hint}", root.display())]
    ToolMissing {
        tool: &'static str,
        root: PathBuf,
        hint: String,
    },
    #[error("cannot run {}", path.display())]
    ToolStart {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    ToolFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("modprobe {module} succeeded but /sys/module/{dir} did not appear", dir = names::module_dir(module))]
    ModuleNotLoaded { module: String },
    #[error("the ownership ledger could not be updated")]
    Ledger(#[from] LedgerError),
}

impl ExecError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::InvalidName(_) | ExecError::ForeignFunction { .. } => ErrorKind::InvalidArgs,
            ExecError::DeviceGone { .. } | ExecError::NoSuchParent { .. } => {
                ErrorKind::NoSuchDevice
            }
            ExecError::Busy { .. } => ErrorKind::Busy,
            ExecError::DriverBind { .. } | ExecError::VfioNotLoaded { .. } => ErrorKind::DriverBind,
            ExecError::NoCapacity { .. } | ExecError::TooManyVfs { .. } => ErrorKind::NoCapacity,
            ExecError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            ExecError::UnknownType { .. } => ErrorKind::UnknownType,
            ExecError::NoSriov { .. }
            | ExecError::NoVgpuInterface { .. }
            | ExecError::ToolMissing { .. } => ErrorKind::NotSupported,
            ExecError::NotOwned { .. } | ExecError::ForeignFile { .. } => {
                ErrorKind::PolicyViolation
            }
            ExecError::Write { .. }
            | ExecError::Verify { .. }
            | ExecError::Read { .. }
            | ExecError::File { .. }
            | ExecError::ToolStart { .. }
            | ExecError::ToolFailed { .. }
            | ExecError::ModuleNotLoaded { .. }
            | ExecError::Ledger(_) => ErrorKind::Failed,
        }
    }

    /// The errno of the failed write behind this error, if there was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ExecError::Busy { source, .. } | ExecError::Write { source, .. } => Some(source.errno),
            _ => None,
        }
    }
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    Done,
    /// Nothing to do (already in the wanted state).
    Skipped {
        why: String,
    },
    Failed {
        /// The errno of a failed write, when the step was one.
        errno: Option<String>,
        message: String,
    },
}

/// One step of an action: a write, a read-back, a command, a ledger update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StepReport {
    /// What the step does, for people (`write vfio-pci to .../driver_override`).
    pub description: String,
    /// The file concerned, relative to the root.
    pub path: Option<PathBuf>,
    pub outcome: StepOutcome,
    /// Part of undoing a failed action.
    pub rollback: bool,
    pub millis: u64,
}

/// The outcome of one action.
#[derive(Debug)]
pub struct ActionReport {
    /// The action, as [`Action`]'s `Display` writes it.
    pub action: String,
    pub rule: Option<String>,
    pub steps: Vec<StepReport>,
    /// `None` when the action succeeded.
    pub error: Option<ExecError>,
    /// For a failed slot bind: whether every function is back on its original driver.
    pub rolled_back: Option<bool>,
}

impl ActionReport {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

impl fmt::Display for ActionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => write!(f, "done: {}", self.action)?,
            Some(e) => write!(
                f,
                "failed: {}: {}",
                self.action,
                crate::error_chain(e as &dyn std::error::Error)
            )?,
        }
        match self.rolled_back {
            Some(true) => write!(
                f,
                " (rolled back: every function is on its original driver)"
            ),
            Some(false) => write!(
                f,
                " (rollback incomplete: the ledger keeps the original drivers)"
            ),
            None => Ok(()),
        }
    }
}

/// The outcome of a plan: done actions, the first failure, and what was not attempted.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub done: Vec<ActionReport>,
    pub failed: Option<ActionReport>,
    /// Actions after the failure, as `Display` writes them.
    pub not_attempted: Vec<String>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.failed.is_none()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.done {
            writeln!(f, "{a}")?;
        }
        if let Some(a) = &self.failed {
            writeln!(f, "{a}")?;
        }
        for a in &self.not_attempted {
            writeln!(f, "not attempted: {a}")?;
        }
        Ok(())
    }
}

/// Runs actions against one root, keeping the ownership ledger.
#[derive(Debug)]
pub struct Executor {
    root: Root,
    tools: Tools,
    store: LedgerStore,
    ledger: Ledger,
    /// How long to wait for a module's `/sys/module` entry after modprobe returns.
    module_settle: Duration,
}

/// Collects the steps of one action.
struct Steps {
    steps: Vec<StepReport>,
    rollback: bool,
}

impl Steps {
    fn new() -> Self {
        Self {
            steps: Vec::new(),
            rollback: false,
        }
    }

    fn push(
        &mut self,
        description: String,
        path: Option<PathBuf>,
        outcome: StepOutcome,
        t: Instant,
    ) {
        self.steps.push(StepReport {
            description,
            path,
            outcome,
            rollback: self.rollback,
            millis: u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn skipped(&mut self, description: String, why: impl Into<String>) {
        self.push(
            description,
            None,
            StepOutcome::Skipped { why: why.into() },
            Instant::now(),
        );
    }
}

fn failed(err: &ExecError) -> StepOutcome {
    StepOutcome::Failed {
        errno: err.errno().map(errno_name),
        message: crate::error_chain(err as &dyn std::error::Error),
    }
}

fn pci_dev(address: PciAddress) -> PathBuf {
    PathBuf::from(format!("sys/bus/pci/devices/{address}"))
}

impl Executor {
    /// An executor for `root` with the ledger in `store` (loaded now; a main file recovered
    /// from its previous generation is reported by [`Executor::ledger_warning`]).
    pub fn open(root: Root, store: LedgerStore) -> Result<(Self, Option<String>), LedgerError> {
        let loaded = store.load_reporting()?;
        Ok((
            Self {
                root,
                tools: Tools::default(),
                store,
                ledger: loaded.ledger,
                module_settle: Duration::from_secs(2),
            },
            loaded.warning,
        ))
    }

    /// Uses other tool locations (relative to the root).
    pub fn with_tools(mut self, tools: Tools) -> Self {
        self.tools = tools;
        self
    }

    /// How long to wait for `/sys/module/<m>` after `modprobe` returns.
    pub fn with_module_settle(mut self, settle: Duration) -> Self {
        self.module_settle = settle;
        self
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// What gpuvirt owns, as last saved.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Changes the ledger outside an action (mdevctl-style define and undefine, which touch no
    /// device) and saves it; a failed save undoes the change.
    pub fn update_ledger(&mut self, change: impl FnOnce(&mut Ledger)) -> Result<(), LedgerError> {
        let before = self.ledger.clone();
        change(&mut self.ledger);
        if let Err(e) = self.store.save(&self.ledger) {
            self.ledger = before;
            return Err(e);
        }
        Ok(())
    }

    /// Runs a plan's actions in order, stopping at the first failure.
    pub fn execute(&mut self, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        let actions = &plan.actions;
        let mut next = 0;
        while next < actions.len() {
            // Consecutive mdev creations run as one batch (one ledger save for all).
            let creations = actions[next..]
                .iter()
                .take_while(|a| matches!(a.action, Action::CreateMdev { .. }))
                .count();
            let reports = if creations > 1 {
                let batch = &actions[next..next + creations];
                next += creations;
                self.create_mdevs(batch)
            } else {
                let planned = &actions[next];
                next += 1;
                vec![self.run(&planned.action, planned.rule.as_deref())]
            };
            let attempted = reports.len();
            // A batch reports at most one failure.
            for r in reports {
                if r.succeeded() {
                    report.done.push(r);
                } else {
                    report.failed = Some(r);
                }
            }
            if report.failed.is_some() {
                // Within a batch, what follows the failure was not attempted either.
                let skipped_in_batch = if creations > 1 {
                    creations - attempted
                } else {
                    0
                };
                next -= skipped_in_batch;
                break;
            }
        }
        report.not_attempted = actions[next..]
            .iter()
            .map(|a| a.action.to_string())
            .collect();
        report
    }

    /// Runs one action.
    pub fn run(&mut self, action: &Action, rule: Option<&str>) -> ActionReport {
        let mut steps = Steps::new();
        let mut rolled_back = None;
        let result = match action {
            Action::LoadModule { module } => self.load_module(module, &mut steps),
            Action::BindSlotToVfio { slot, functions } => {
                let addresses: Vec<PciAddress> = functions.iter().map(|f| f.address).collect();
                self.bind_slot(*slot, &addresses, rule, &mut steps, &mut rolled_back)
            }
            Action::ReturnSlotToHost { slot, .. } => self.return_slot(*slot, &mut steps),
            Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } => self.create_mdev(parent, type_id, *uuid, rule, &mut steps),
            Action::RemoveMdev { uuid, .. } => self.remove_mdev(*uuid, &mut steps),
            Action::SetSriovNumVfs { pf, to, .. } => self.set_num_vfs(*pf, *to, rule, &mut steps),
            Action::SetVgpuType { vf, type_id, .. } => {
                self.set_vgpu_type(*vf, *type_id, rule, &mut steps)
            }
            Action::ClearVgpuType { vf, .. } => self.clear_vgpu_type(*vf, &mut steps),
            Action::WriteBootFile { path, contents } => {
                self.write_boot_file(path, contents, &mut steps)
            }
            Action::RemoveBootFile { path } => self.remove_boot_file(path, &mut steps),
            Action::RegenerateInitramfs => self.regenerate_initramfs(&mut steps),
        };
        ActionReport {
            action: action.to_string(),
            rule: rule.map(str::to_string),
            steps: steps.steps,
            error: result.err(),
            rolled_back,
        }
    }

    /// Finishes what a killed daemon left half done, from the ledger: a slot still `pending`
    /// (bind interrupted) or `returning` goes back to its original drivers.
    pub fn recover(&mut self) -> Vec<ActionReport> {
        let unfinished: Vec<(String, SlotRecord)> = self
            .ledger
            .slots
            .iter()
            .filter(|(_, r)| r.state != SlotState::Assigned)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut reports = Vec::new();
        for (_, record) in unfinished {
            let Some(first) = record.functions.first() else {
                continue;
            };
            let slot = first.address.slot();
            let mut steps = Steps::new();
            let result = self.return_slot(slot, &mut steps);
            reports.push(ActionReport {
                action: format!(
                    "return slot {slot} to the host (recovering an interrupted {})",
                    match record.state {
                        SlotState::Pending => "assignment",
                        _ => "return",
                    }
                ),
                rule: record.rule.clone(),
                steps: steps.steps,
                error: result.err(),
                rolled_back: None,
            });
        }
        reports
    }

    // -----------------------------------------------------------------------------------
    // Reading and writing
    // -----------------------------------------------------------------------------------

    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// One sysfs write with its step report. `rel` is relative to the root.
    fn write(&self, steps: &mut Steps, rel: &Path, value: &str) -> Result<(), WriteError> {
        let t = Instant::now();
        let shown = value.trim_end_matches('\n');
        let description = if shown.is_empty() {
            format!("clear {}", rel.display())
        } else {
            format!("write {shown} to {}", rel.display())
        };
        let result = write_attr(&self.abs(rel), value);
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => StepOutcome::Failed {
                errno: Some(errno_name(e.errno)),
                message: e.to_string(),
            },
        };
        steps.push(description, Some(rel.to_path_buf()), outcome, t);
        result
    }

    fn exists(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.abs(rel)).is_ok()
    }

    fn read_attr(&self, rel: &Path) -> Result<String, ExecError> {
        let path = self.abs(rel);
        let mut text = String::new();
        File::open(&path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|source| ExecError::Read { path, source })?;
        Ok(text.trim_end_matches('\n').to_string())
    }

    /// The driver bound to `address` now; `Err(DeviceGone)` when the function is not there.
    fn current_driver(
        &self,
        address: PciAddress,
        during: &str,
    ) -> Result<Option<String>, ExecError> {
        let dev = pci_dev(address);
        if !self.exists(&dev) {
            return Err(ExecError::DeviceGone {
                address,
                during: during.to_string(),
            });
        }
        match fs::read_link(self.abs(&dev.join("driver"))) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                // The name becomes a path component of unbind/bind writes.
                names::driver(&name)?;
                Ok(Some(name))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ExecError::Read {
                path: self.abs(&dev.join("driver")),
                source,
            }),
        }
    }

    /// Maps a failed write concerning `address` to a typed error.
    fn write_error(&self, address: Option<PciAddress>, what: String, err: WriteError) -> ExecError {
        match err.errno {
            EBUSY => ExecError::Busy {
                what,
                errno: EBUSY,
                hint: "something still uses it (a VM, a process with its device node open); \
                       stop that and retry"
                    .to_string(),
                source: err,
            },
            ENODEV | ENOENT | ENXIO if address.is_some_and(|a| !self.exists(&pci_dev(a))) => {
                ExecError::DeviceGone {
                    // Checked just above.
                    address: address.unwrap_or(PciAddress::new(0, 0, 0, 0)),
                    during: what,
                }
            }
            _ => ExecError::Write { what, source: err },
        }
    }

    fn save_ledger(&self, steps: &mut Steps, why: &str) -> Result<(), ExecError> {
        let t = Instant::now();
        let result = self.store.save(&self.ledger);
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => StepOutcome::Failed {
                errno: None,
                message: crate::error_chain(e as &dyn std::error::Error),
            },
        };
        steps.push(
            format!("record in the ledger: {why}"),
            Some(self.store.path()),
            outcome,
            t,
        );
        result.map_err(ExecError::from)
    }

    /// Applies a ledger change and saves it; on a failed save the in-memory ledger is put back.
    fn commit(
        &mut self,
        steps: &mut Steps,
        why: &str,
        change: impl FnOnce(&mut Ledger),
    ) -> Result<(), ExecError> {
        let before = self.ledger.clone();
        change(&mut self.ledger);
        if let Err(e) = self.save_ledger(steps, why) {
            self.ledger = before;
            return Err(e);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Modules and tools
    // -----------------------------------------------------------------------------------

    fn module_loaded(&self, module: &str) -> bool {
        self.exists(&Path::new("sys/module").join(names::module_dir(module)))
    }

    fn load_module(&mut self, module: &str, steps: &mut Steps) -> Result<(), ExecError> {
        names::module(module)?;
        if self.module_loaded(module) {
            steps.skipped(format!("modprobe {module}"), "already loaded");
            return Ok(());
        }
        let tool = self.tools.modprobe.clone();
        self.run_tool(
            steps,
            "modprobe",
            &tool,
            &[module],
            "install kmod (it provides modprobe)",
        )?;
        let t = Instant::now();
        let deadline = t + self.module_settle;
        while !self.module_loaded(module) {
            if Instant::now() >= deadline {
                let err = ExecError::ModuleNotLoaded {
                    module: module.to_string(),
                };
                steps.push(
                    format!("check that {module} is loaded"),
                    None,
                    failed(&err),
                    t,
                );
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        steps.push(
            format!("check that {module} is loaded"),
            Some(Path::new("sys/module").join(names::module_dir(module))),
            StepOutcome::Done,
            t,
        );
        Ok(())
    }

    /// Runs a tool found under the root and waits for it.
    fn run_tool(
        &self,
        steps: &mut Steps,
        tool: &'static str,
        rel: &Path,
        args: &[&str],
        hint: &str,
    ) -> Result<(), ExecError> {
        let t = Instant::now();
        let path = self.abs(rel);
        let command = format!("{} {}", path.display(), args.join(" "));
        let result = if !path.is_file() {
            Err(ExecError::ToolMissing {
                tool,
                root: self.root.base().to_path_buf(),
                hint: hint.to_string(),
            })
        } else {
            match run_output(&path, args) {
                Err(source) => Err(ExecError::ToolStart { path, source }),
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(ExecError::ToolFailed {
                    command: command.clone(),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr)
                        .trim()
                        .chars()
                        .take(2000)
                        .collect(),
                }),
            }
        };
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => failed(e),
        };
        steps.push(
            format!("run {command}"),
            Some(rel.to_path_buf()),
            outcome,
            t,
        );
        result
    }

    fn regenerate_initramfs(&mut self, steps: &mut Steps) -> Result<(), ExecError> {
        let update = self.tools.update_initramfs.clone();
        let dracut = self.tools.dracut.clone();
        if self.abs(&update).is_file() {
            return self.run_tool(steps, "update-initramfs", &update, &["-u"], "");
        }
        if self.abs(&dracut).is_file() {
            return self.run_tool(steps, "dracut", &dracut, &["-f"], "");
        }
        let err = ExecError::ToolMissing {
            tool: "update-initramfs or dracut",
            root: self.root.base().to_path_buf(),
            hint: "install initramfs-tools (then run `update-initramfs -u`) or dracut (then run \
                   `dracut -f`) so the new modprobe.d settings reach the initramfs"
                .to_string(),
        };
        steps.push(
            "regenerate the initramfs".to_string(),
            None,
            failed(&err),
            Instant::now(),
        );
        Err(err)
    }

    // -----------------------------------------------------------------------------------
    // Passthrough
    // -----------------------------------------------------------------------------------

    /// The functions of `slot` present now, sorted.
    fn slot_functions(&self, slot: PciSlot) -> Result<Vec<PciAddress>, ExecError> {
        let dir = self.abs(Path::new("sys/bus/pci/devices"));
        let entries = fs::read_dir(&dir).map_err(|source| ExecError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut out: Vec<PciAddress> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<PciAddress>().ok())
            .filter(|a| a.slot() == slot)
            .collect();
        out.sort();
        Ok(out)
    }

    fn bind_slot(
        &mut self,
        slot: PciSlot,
        planned: &[PciAddress],
        rule: Option<&str>,
        steps: &mut Steps,
        rolled_back: &mut Option<bool>,
    ) -> Result<(), ExecError> {
        if let Some(a) = planned.iter().find(|a| a.slot() != slot) {
            return Err(ExecError::ForeignFunction { slot, address: *a });
        }
        if !self.module_loaded(VFIO_PCI) && !self.exists(Path::new("sys/bus/pci/drivers/vfio-pci"))
        {
            return Err(ExecError::VfioNotLoaded { slot });
        }
        // The whole slot moves, including functions the plan did not list.
        let mut functions = self.slot_functions(slot)?;
        for a in planned {
            if !functions.contains(a) {
                return Err(ExecError::DeviceGone {
                    address: *a,
                    during: "before binding its slot to vfio-pci".to_string(),
                });
            }
        }
        functions.dedup();
        let mut current = Vec::new();
        for a in &functions {
            current.push((*a, self.current_driver(*a, "before binding to vfio-pci")?));
        }

        // Originals first: a record that already exists (a retry, an interrupted run) keeps
        // the drivers it found the first time, never vfio-pci it may show now.
        let key = Ledger::slot_key(slot);
        let previous = self.ledger.slots.get(&key).cloned();
        let record = SlotRecord {
            functions: current
                .iter()
                .map(|(a, d)| FunctionRecord {
                    address: *a,
                    original_driver: match previous.as_ref().and_then(|p| p.original_driver(*a)) {
                        Some(original) => original.map(str::to_string),
                        None => d.clone(),
                    },
                })
                .collect(),
            rule: rule
                .map(str::to_string)
                .or_else(|| previous.as_ref().and_then(|p| p.rule.clone())),
            state: SlotState::Pending,
        };
        let originals = record.functions.clone();
        self.commit(
            steps,
            &format!("slot {slot} pending, original drivers kept"),
            |l| {
                l.slots.insert(key.clone(), record);
            },
        )?;

        match self.bind_functions(&current, steps) {
            Ok(()) => {
                self.commit(steps, &format!("slot {slot} assigned to vfio-pci"), |l| {
                    if let Some(r) = l.slots.get_mut(&key) {
                        r.state = SlotState::Assigned;
                    }
                })?;
                Ok(())
            }
            Err(err) => {
                steps.rollback = true;
                let complete = self.restore_functions(&originals, steps).is_empty();
                *rolled_back = Some(complete);
                if complete {
                    // Every function is as gpuvirt found it: the record goes (or goes back to
                    // what it was before this attempt).
                    let result =
                        self.commit(
                            steps,
                            &format!("slot {slot} rolled back"),
                            |l| match previous {
                                Some(p) if p.state == SlotState::Assigned => {
                                    l.slots.insert(key.clone(), p);
                                }
                                _ => {
                                    l.slots.remove(&key);
                                }
                            },
                        );
                    if let Err(e) = result {
                        // The pending record stays on disk: a later recovery redoes the
                        // (already complete) rollback, which is harmless.
                        steps.skipped("ledger cleanup".to_string(), e.to_string());
                    }
                }
                steps.rollback = false;
                Err(err)
            }
        }
    }

    /// override → unbind → probe for every function not on vfio-pci yet, then verify all.
    fn bind_functions(
        &self,
        current: &[(PciAddress, Option<String>)],
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let pending: Vec<&(PciAddress, Option<String>)> = current
            .iter()
            .filter(|(_, d)| d.as_deref() != Some(VFIO_PCI))
            .collect();
        for (a, _) in &pending {
            self.write(steps, &pci_dev(*a).join("driver_override"), VFIO_PCI)
                .map_err(|e| {
                    self.write_error(Some(*a), format!("setting driver_override of {a}"), e)
                })?;
        }
        for (a, driver) in &pending {
            if let Some(d) = driver {
                let rel = Path::new("sys/bus/pci/drivers").join(d).join("unbind");
                self.write(steps, &rel, &a.to_string()).map_err(|e| {
                    self.write_error(Some(*a), format!("unbinding {a} from {d}"), e)
                })?;
            }
        }
        for (a, _) in &pending {
            self.write(
                steps,
                Path::new("sys/bus/pci/drivers_probe"),
                &a.to_string(),
            )
            .map_err(|e| self.write_error(Some(*a), format!("probing {a} for vfio-pci"), e))?;
        }
        for (a, _) in current {
            let t = Instant::now();
            let actual = self.current_driver(*a, "while verifying its vfio-pci binding")?;
            let ok = actual.as_deref() == Some(VFIO_PCI);
            let description = format!("check that {a} is bound to vfio-pci");
            if ok {
                steps.push(
                    description,
                    Some(pci_dev(*a).join("driver")),
                    StepOutcome::Done,
                    t,
                );
            } else {
                let err = ExecError::DriverBind {
                    address: *a,
                    wanted: Some(VFIO_PCI.to_string()),
                    actual,
                };
                steps.push(
                    description,
                    Some(pci_dev(*a).join("driver")),
                    failed(&err),
                    t,
                );
                return Err(err);
            }
        }
        Ok(())
    }

    /// Puts each function back on its original driver: clear the override, unbind what is
    /// bound instead, bind the original (its `bind` file, else `drivers_probe`), verify.
    /// Functions that are gone need nothing (a re-added device starts without an override).
    /// Returns the problems; empty means every present function is on its original driver.
    fn restore_functions(&self, originals: &[FunctionRecord], steps: &mut Steps) -> Vec<ExecError> {
        let mut problems = Vec::new();
        let mut present = Vec::new();
        for f in originals {
            match self.current_driver(f.address, "while returning it to its driver") {
                Ok(d) => present.push((f, d)),
                Err(ExecError::DeviceGone { address, .. }) => steps.skipped(
                    format!("return {address} to its driver"),
                    "the device is gone",
                ),
                Err(e) => problems.push(e),
            }
        }
        for (f, _) in &present {
            let a = f.address;
            if let Err(e) = self.write(steps, &pci_dev(a).join("driver_override"), "\n") {
                problems.push(self.write_error(
                    Some(a),
                    format!("clearing driver_override of {a}"),
                    e,
                ));
            }
        }
        for (f, current) in &present {
            let a = f.address;
            let Some(d) = current else { continue };
            if Some(d) == f.original_driver.as_ref() {
                continue;
            }
            let rel = Path::new("sys/bus/pci/drivers").join(d).join("unbind");
            if let Err(e) = self.write(steps, &rel, &a.to_string()) {
                problems.push(self.write_error(Some(a), format!("unbinding {a} from {d}"), e));
            }
        }
        for (f, _) in &present {
            let a = f.address;
            let Some(original) = &f.original_driver else {
                continue;
            };
            match self.current_driver(a, "while returning it to its driver") {
                Ok(Some(d)) if d == *original => continue,
                Ok(Some(_)) => continue, // still bound elsewhere: reported by the check below
                Ok(None) => {}
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            }
            if names::driver(original).is_err() {
                problems.push(ExecError::DriverBind {
                    address: a,
                    wanted: Some(original.clone()),
                    actual: None,
                });
                continue;
            }
            let bind = Path::new("sys/bus/pci/drivers").join(original).join("bind");
            let bound = self.exists(&bind) && self.write(steps, &bind, &a.to_string()).is_ok();
            if !bound {
                // No such driver now (module not loaded) or it refused: let the kernel probe.
                if let Err(e) = self.write(
                    steps,
                    Path::new("sys/bus/pci/drivers_probe"),
                    &a.to_string(),
                ) {
                    problems.push(self.write_error(Some(a), format!("probing {a}"), e));
                }
            }
        }
        for (f, _) in &present {
            let a = f.address;
            let t = Instant::now();
            let description = format!(
                "check that {a} is bound to {}",
                f.original_driver.as_deref().unwrap_or("no driver")
            );
            match self.current_driver(a, "while verifying its return") {
                Ok(actual) if actual == f.original_driver => steps.push(
                    description,
                    Some(pci_dev(a).join("driver")),
                    StepOutcome::Done,
                    t,
                ),
                Ok(actual) => {
                    let err = ExecError::DriverBind {
                        address: a,
                        wanted: f.original_driver.clone(),
                        actual,
                    };
                    steps.push(
                        description,
                        Some(pci_dev(a).join("driver")),
                        failed(&err),
                        t,
                    );
                    problems.push(err);
                }
                Err(ExecError::DeviceGone { .. }) => {
                    steps.skipped(description, "the device is gone")
                }
                Err(e) => {
                    steps.push(description, None, failed(&e), t);
                    problems.push(e);
                }
            }
        }
        problems
    }

    fn return_slot(&mut self, slot: PciSlot, steps: &mut Steps) -> Result<(), ExecError> {
        let key = Ledger::slot_key(slot);
        let Some(record) = self.ledger.slots.get(&key).cloned() else {
            return Err(ExecError::NotOwned {
                what: format!("slot {slot}"),
            });
        };
        self.commit(steps, &format!("slot {slot} returning"), |l| {
            if let Some(r) = l.slots.get_mut(&key) {
                r.state = SlotState::Returning;
            }
        })?;
        let mut problems = self.restore_functions(&record.functions, steps);
        if problems.is_empty() {
            self.commit(steps, &format!("slot {slot} back on the host"), |l| {
                l.slots.remove(&key);
            })?;
            return Ok(());
        }
        // The record stays `returning` with its originals, so a retry or a restart finishes.
        Err(problems.remove(0))
    }

    // -----------------------------------------------------------------------------------
    // mdevs, SR-IOV, NVIDIA vGPU
    // -----------------------------------------------------------------------------------

    fn mdev_type_of(&self, uuid: Uuid) -> Option<String> {
        let link = self.abs(Path::new(&format!("sys/bus/mdev/devices/{uuid}/mdev_type")));
        let target = fs::read_link(link).ok()?;
        target.file_name()?.to_str().map(str::to_string)
    }

    /// Checks that `parent` and its `type_id` exist (a single creation checks before it
    /// records anything; a batch lets the write find them missing).
    fn check_create_target(&self, parent: &str, type_id: &str) -> Result<PathBuf, ExecError> {
        names::mdev_parent(parent)?;
        names::mdev_type(type_id)?;
        let parent_dir = PathBuf::from(format!("sys/class/mdev_bus/{parent}"));
        if !self.exists(&parent_dir) {
            return Err(ExecError::NoSuchParent {
                parent: parent.to_string(),
            });
        }
        let type_dir = parent_dir.join("mdev_supported_types").join(type_id);
        if !self.exists(&type_dir) {
            return Err(ExecError::UnknownType {
                parent: parent.to_string(),
                type_id: type_id.to_string(),
            });
        }
        Ok(type_dir)
    }

    /// The ledger record a creation of `uuid` writes (keeping what a definition of the same
    /// UUID already says: start mode, attributes, defined).
    fn create_record(
        &self,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        rule: Option<&str>,
    ) -> MdevRecord {
        let previous = self.ledger.mdevs.get(&uuid);
        MdevRecord {
            parent: parent.to_string(),
            type_id: type_id.to_string(),
            start: previous.map_or(MdevStart::Auto, |p| p.start),
            attrs: previous.map(|p| p.attrs.clone()).unwrap_or_default(),
            rule: rule.map(str::to_string),
            defined: previous.is_some_and(|p| p.defined),
            created_by_gpuvirt: true,
        }
    }

    /// Writes `uuid` to the type's `create` file. `Ok(true)`: created; `Ok(false)`: it
    /// already existed, gpuvirt made it (`was_ours`) and it has the wanted type.
    fn write_create(
        &self,
        type_dir: &Path,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        was_ours: bool,
        steps: &mut Steps,
    ) -> Result<bool, ExecError> {
        let Err(e) = self.write(steps, &type_dir.join("create"), &uuid.to_string()) else {
            return Ok(true);
        };
        Err(match e.errno {
            ENOSPC | EUSERS => ExecError::NoCapacity {
                parent: parent.to_string(),
                type_id: type_id.to_string(),
            },
            EEXIST => {
                let existing = self.mdev_type_of(uuid);
                if was_ours && existing.as_deref() == Some(type_id) {
                    steps.skipped(
                        format!("create mdev {uuid}"),
                        "it already exists, gpuvirt made it and it has the wanted type",
                    );
                    return Ok(false);
                }
                ExecError::AlreadyExists {
                    uuid,
                    existing_type: existing,
                }
            }
            EINVAL => ExecError::Write {
                what: format!(
                    "creating mdev {uuid} of type {type_id} on {parent} (the parent rejected it)"
                ),
                source: e,
            },
            // A batch does not stat the parent and type before writing (each stat walks the
            // whole path again): a missing one is told apart here, on failure.
            ENOENT if !self.exists(type_dir) => {
                let parent_dir = Path::new("sys/class/mdev_bus").join(parent);
                match parent.parse::<PciAddress>() {
                    _ if self.exists(&parent_dir) => ExecError::UnknownType {
                        parent: parent.to_string(),
                        type_id: type_id.to_string(),
                    },
                    Ok(address) => self.write_error(
                        Some(address),
                        format!("creating mdev {uuid} on {parent}"),
                        e,
                    ),
                    Err(_) => ExecError::NoSuchParent {
                        parent: parent.to_string(),
                    },
                }
            }
            // A PCI parent that vanished mid-create is DeviceGone (kind NoSuchDevice);
            // a virtual parent has no address to check, so its errno stays as it is.
            _ => self.write_error(
                parent.parse().ok(),
                format!("creating mdev {uuid} on {parent}"),
                e,
            ),
        })
    }

    /// Puts the ledger records of `uuids` back to what they were before their creation
    /// was recorded (`previous`), in one save.
    fn undo_create_records(&mut self, steps: &mut Steps, undo: Vec<(Uuid, Option<MdevRecord>)>) {
        if undo.is_empty() {
            return;
        }
        let why = match undo.as_slice() {
            [(uuid, _)] => format!("mdev {uuid} not created"),
            many => format!("{} mdevs not created", many.len()),
        };
        let _ = self.commit(steps, &why, |l| {
            for (uuid, previous) in undo {
                match previous {
                    Some(p) => {
                        l.mdevs.insert(uuid, p);
                    }
                    None => {
                        l.mdevs.remove(&uuid);
                    }
                }
            }
        });
    }

    fn create_mdev(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: Uuid,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let type_dir = self.check_create_target(parent, type_id)?;
        let was_ours = self.ledger.owns_mdev(&uuid);
        let previous = self.ledger.mdevs.get(&uuid).cloned();
        let record = self.create_record(parent, type_id, uuid, rule);
        // Recorded before the write: a crash after it still knows the mdev is gpuvirt's.
        self.commit(steps, &format!("mdev {uuid} being created"), |l| {
            l.mdevs.insert(uuid, record);
        })?;
        match self.write_create(&type_dir, parent, type_id, uuid, was_ours, steps) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                self.undo_create_records(steps, vec![(uuid, previous)]);
                return Err(err);
            }
        }
        let t = Instant::now();
        let actual = self.mdev_type_of(uuid);
        if actual.as_deref() != Some(type_id) {
            let err = ExecError::Verify {
                what: format!("mdev {uuid}'s mdev_type"),
                wanted: type_id.to_string(),
                actual: actual.unwrap_or_else(|| "nothing (no such mdev)".to_string()),
            };
            steps.push(format!("check mdev {uuid}"), None, failed(&err), t);
            return Err(err);
        }
        steps.push(
            format!("check that mdev {uuid} has type {type_id}"),
            Some(PathBuf::from(format!(
                "sys/bus/mdev/devices/{uuid}/mdev_type"
            ))),
            StepOutcome::Done,
            t,
        );
        Ok(())
    }

    /// A run of mdev creations as one batch: every record in the ledger with one save before
    /// the first write (not one save per mdev), the writes in order (a missing parent or type
    /// is found by its write, not by a stat of each beforehand, which on sysfs walks the same
    /// path again), then one listing of `/sys/bus/mdev/devices` to check that each one is there.
    /// (The type of each is checked by the read-back that follows an apply, not by one
    /// `readlink` per mdev.) Returns a report per action attempted; the first failure ends
    /// the batch, and the records of the mdevs not created are put back in one more save.
    fn create_mdevs(&mut self, batch: &[PlannedAction]) -> Vec<ActionReport> {
        struct Item<'a> {
            planned: &'a PlannedAction,
            type_dir: PathBuf,
            uuid: Uuid,
            previous: Option<MdevRecord>,
            was_ours: bool,
            steps: Steps,
        }
        let report =
            |planned: &PlannedAction, steps: Steps, error: Option<ExecError>| ActionReport {
                action: planned.action.to_string(),
                rule: planned.rule.clone(),
                steps: steps.steps,
                error,
                rolled_back: None,
            };
        // Checks first: the batch ends before the first action whose parent or type is
        // missing; that action is reported failed, the ones before it run.
        let mut items = Vec::new();
        let mut check_failure = None;
        for planned in batch {
            let Action::CreateMdev {
                parent,
                type_id,
                uuid,
                ..
            } = &planned.action
            else {
                break;
            };
            // Names only: the parent and type are found missing by the write itself.
            let checked = names::mdev_parent(parent)
                .and_then(|_| names::mdev_type(type_id))
                .map(|_| {
                    PathBuf::from(format!(
                        "sys/class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
                    ))
                })
                .map_err(ExecError::from);
            match checked {
                Ok(type_dir) => items.push(Item {
                    planned,
                    type_dir,
                    uuid: *uuid,
                    previous: self.ledger.mdevs.get(uuid).cloned(),
                    was_ours: self.ledger.owns_mdev(uuid),
                    steps: Steps::new(),
                }),
                Err(e) => {
                    let mut steps = Steps::new();
                    steps.push(
                        format!("check {parent} and its type {type_id}"),
                        None,
                        failed(&e),
                        Instant::now(),
                    );
                    check_failure = Some(report(planned, steps, Some(e)));
                    break;
                }
            }
        }
        let mut reports = Vec::new();
        if !items.is_empty() {
            let records: Vec<(Uuid, MdevRecord)> = items
                .iter()
                .map(|i| {
                    let Action::CreateMdev {
                        parent, type_id, ..
                    } = &i.planned.action
                    else {
                        unreachable!("only creations are batched")
                    };
                    (
                        i.uuid,
                        self.create_record(parent, type_id, i.uuid, i.planned.rule.as_deref()),
                    )
                })
                .collect();
            let why = format!("{} mdevs being created", records.len());
            let mut steps = Steps::new();
            let saved = self.commit(&mut steps, &why, |l| l.mdevs.extend(records));
            items[0].steps = steps;
            if let Err(e) = saved {
                let first = items.swap_remove(0);
                reports.push(report(first.planned, first.steps, Some(e)));
                return reports;
            }
        }
        // (item, whether this call created it): an mdev that already existed as ours is
        // not checked again.
        let mut written = Vec::new();
        let mut failure = None;
        let mut items = items.into_iter();
        for mut item in items.by_ref() {
            let Action::CreateMdev {
                parent, type_id, ..
            } = &item.planned.action
            else {
                unreachable!("only creations are batched")
            };
            match self.write_create(
                &item.type_dir,
                parent,
                type_id,
                item.uuid,
                item.was_ours,
                &mut item.steps,
            ) {
                Ok(created) => written.push((item, created)),
                Err(e) => {
                    failure = Some((item, e));
                    break;
                }
            }
        }
        if let Some((mut item, e)) = failure {
            // The failed one and those never written go back to what the ledger had. The ones
            // written before it succeeded as writes; the failure is the batch's one error
            // (what follows, such as a parent gone, is the next read-back's to find).
            let mut undo = vec![(item.uuid, item.previous.take())];
            undo.extend(items.map(|i| (i.uuid, i.previous)));
            self.undo_create_records(&mut item.steps, undo);
            reports.extend(
                written
                    .into_iter()
                    .map(|(i, _)| report(i.planned, i.steps, None)),
            );
            reports.push(report(item.planned, item.steps, Some(e)));
            return reports;
        }
        // One listing checks every creation that returned success. The first one missing
        // carries the error (naming every missing one); the others are reported as they are.
        let t = Instant::now();
        let listed: BTreeSet<String> = fs::read_dir(self.abs(Path::new("sys/bus/mdev/devices")))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<String> = written
            .iter()
            .filter(|(i, created)| *created && !listed.contains(&i.uuid.to_string()))
            .map(|(i, _)| i.uuid.to_string())
            .collect();
        let mut blamed = false;
        for (mut item, created) in written {
            let mut error = None;
            if created {
                let there = listed.contains(&item.uuid.to_string());
                if !there && !blamed {
                    blamed = true;
                    error = Some(ExecError::Verify {
                        what: format!("mdev {} after its create write", item.uuid),
                        wanted: "listed in /sys/bus/mdev/devices".to_string(),
                        actual: format!("not listed (missing: {})", missing.join(", ")),
                    });
                }
                item.steps.push(
                    format!("check that mdev {} is listed", item.uuid),
                    Some(PathBuf::from("sys/bus/mdev/devices")),
                    error.as_ref().map_or(StepOutcome::Done, failed),
                    t,
                );
            }
            reports.push(report(item.planned, item.steps, error));
        }
        // One failure per batch: a missing mdev outranks a later check that stopped the
        // batch, whose action is then reported as not attempted.
        if !blamed {
            reports.extend(check_failure);
        }
        reports
    }

    fn remove_mdev(&mut self, uuid: Uuid, steps: &mut Steps) -> Result<(), ExecError> {
        if !self.ledger.owns_mdev(&uuid) {
            return Err(ExecError::NotOwned {
                what: format!("mdev {uuid}"),
            });
        }
        let dir = PathBuf::from(format!("sys/bus/mdev/devices/{uuid}"));
        if self.exists(&dir) {
            if let Err(e) = self.write(steps, &dir.join("remove"), "1") {
                let err = match e.errno {
                    EBUSY => ExecError::Busy {
                        what: format!("mdev {uuid}"),
                        errno: EBUSY,
                        hint: "a VM is using it; shut the VM down or detach the device first"
                            .to_string(),
                        source: e,
                    },
                    // Gone between the check and the write: that is what was wanted.
                    ENOENT | ENODEV if !self.exists(&dir) => {
                        return self.commit(steps, &format!("mdev {uuid} removed"), |l| {
                            l.mdevs.remove(&uuid);
                        })
                    }
                    _ => self.write_error(None, format!("removing mdev {uuid}"), e),
                };
                return Err(err);
            }
            if self.exists(&dir) {
                return Err(ExecError::Verify {
                    what: format!("mdev {uuid}"),
                    wanted: "removed".to_string(),
                    actual: "still present".to_string(),
                });
            }
        } else {
            steps.skipped(format!("remove mdev {uuid}"), "it does not exist");
        }
        self.commit(steps, &format!("mdev {uuid} removed"), |l| {
            l.mdevs.remove(&uuid);
        })
    }

    fn set_num_vfs(
        &mut self,
        pf: PciAddress,
        to: u32,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let rel = pci_dev(pf).join("sriov_numvfs");
        if !self.exists(&pci_dev(pf)) {
            return Err(ExecError::DeviceGone {
                address: pf,
                during: "before setting sriov_numvfs".to_string(),
            });
        }
        if !self.exists(&rel) {
            return Err(ExecError::NoSriov { pf });
        }
        let parse = |this: &Self| -> Result<u32, ExecError> {
            let text = this.read_attr(&rel)?;
            text.trim().parse().map_err(|_| ExecError::Verify {
                what: format!("{pf} sriov_numvfs"),
                wanted: "a number".to_string(),
                actual: text,
            })
        };
        let from = parse(self)?;
        let original = self
            .ledger
            .sriov
            .get(&pf)
            .map_or(from, |r| r.original_num_vfs);
        if from == to {
            steps.skipped(format!("set {pf} sriov_numvfs to {to}"), "already set");
        } else {
            let map = |this: &Self, e: WriteError| match e.errno {
                ERANGE => ExecError::TooManyVfs { pf, wanted: to },
                _ => this.write_error(Some(pf), format!("setting {pf} sriov_numvfs"), e),
            };
            // The kernel changes a non-zero count only through 0.
            if from != 0 && to != 0 {
                self.write(steps, &rel, "0").map_err(|e| map(self, e))?;
            }
            // Recorded before VFs appear, so gpuvirt knows it changed the count.
            self.commit(steps, &format!("{pf} sriov_numvfs {to}"), |l| {
                l.sriov.insert(
                    pf,
                    SriovRecord {
                        num_vfs: to,
                        original_num_vfs: original,
                        rule: rule.map(str::to_string),
                    },
                );
            })?;
            self.write(steps, &rel, &to.to_string())
                .map_err(|e| map(self, e))?;
            let now = parse(self)?;
            if now != to {
                return Err(ExecError::Verify {
                    what: format!("{pf} sriov_numvfs"),
                    wanted: to.to_string(),
                    actual: now.to_string(),
                });
            }
        }
        if to == original {
            self.commit(
                steps,
                &format!("{pf} sriov_numvfs back to {original}"),
                |l| {
                    l.sriov.remove(&pf);
                },
            )?;
        }
        Ok(())
    }

    fn vgpu_path(&self, vf: PciAddress) -> Result<PathBuf, ExecError> {
        if !self.exists(&pci_dev(vf)) {
            return Err(ExecError::DeviceGone {
                address: vf,
                during: "before changing its vGPU type".to_string(),
            });
        }
        let rel = pci_dev(vf).join("nvidia/current_vgpu_type");
        if !self.exists(&rel) {
            return Err(ExecError::NoVgpuInterface { vf });
        }
        Ok(rel)
    }

    fn check_vgpu(
        &self,
        vf: PciAddress,
        rel: &Path,
        wanted: u32,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let t = Instant::now();
        let actual = self.read_attr(rel)?;
        let description = format!("check that {vf} current_vgpu_type is {wanted}");
        if actual.trim() == wanted.to_string() {
            steps.push(description, Some(rel.to_path_buf()), StepOutcome::Done, t);
            return Ok(());
        }
        let err = ExecError::Verify {
            what: format!("{vf} current_vgpu_type"),
            wanted: wanted.to_string(),
            actual,
        };
        steps.push(description, Some(rel.to_path_buf()), failed(&err), t);
        Err(err)
    }

    fn set_vgpu_type(
        &mut self,
        vf: PciAddress,
        type_id: u32,
        rule: Option<&str>,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let rel = self.vgpu_path(vf)?;
        let previous = self.ledger.vgpus.get(&vf).cloned();
        self.commit(steps, &format!("vGPU {type_id} on {vf}"), |l| {
            l.vgpus.insert(
                vf,
                VgpuRecord {
                    type_id,
                    rule: rule.map(str::to_string),
                },
            );
        })?;
        if let Err(e) = self.write(steps, &rel, &type_id.to_string()) {
            let err = match e.errno {
                EINVAL => ExecError::UnknownType {
                    parent: vf.to_string(),
                    type_id: type_id.to_string(),
                },
                _ => self.write_error(Some(vf), format!("setting {vf} current_vgpu_type"), e),
            };
            let _ = self.commit(
                steps,
                &format!("vGPU on {vf} not created"),
                |l| match previous {
                    Some(p) => {
                        l.vgpus.insert(vf, p);
                    }
                    None => {
                        l.vgpus.remove(&vf);
                    }
                },
            );
            return Err(err);
        }
        self.check_vgpu(vf, &rel, type_id, steps)
    }

    fn clear_vgpu_type(&mut self, vf: PciAddress, steps: &mut Steps) -> Result<(), ExecError> {
        if !self.ledger.vgpus.contains_key(&vf) {
            return Err(ExecError::NotOwned {
                what: format!("the vGPU on {vf}"),
            });
        }
        let rel = match self.vgpu_path(vf) {
            Ok(rel) => rel,
            Err(ExecError::DeviceGone { .. }) => {
                // The VF went away (SR-IOV disabled): so did its vGPU.
                steps.skipped(format!("clear {vf} current_vgpu_type"), "the VF is gone");
                return self.commit(steps, &format!("vGPU on {vf} gone"), |l| {
                    l.vgpus.remove(&vf);
                });
            }
            Err(e) => return Err(e),
        };
        self.write(steps, &rel, "0").map_err(|e| {
            self.write_error(Some(vf), format!("clearing {vf} current_vgpu_type"), e)
        })?;
        self.check_vgpu(vf, &rel, 0, steps)?;
        self.commit(steps, &format!("vGPU on {vf} destroyed"), |l| {
            l.vgpus.remove(&vf);
        })
    }

    // -----------------------------------------------------------------------------------
    // Boot files
    // -----------------------------------------------------------------------------------

    /// Refuses to touch an existing file gpuvirt did not write.
    fn check_owned_file(&self, rel: &Path) -> Result<bool, ExecError> {
        let path = self.abs(rel);
        let mut head = Vec::new();
        match File::open(&path) {
            Ok(f) => {
                f.take(OWNED_FILE_MARKER.len() as u64)
                    .read_to_end(&mut head)
                    .map_err(|source| ExecError::Read {
                        path: path.clone(),
                        source,
                    })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(ExecError::Read { path, source }),
        }
        if head != OWNED_FILE_MARKER.as_bytes() {
            return Err(ExecError::ForeignFile { path });
        }
        Ok(true)
    }

    fn write_boot_file(
        &mut self,
        path: &Path,
        contents: &str,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
        let rel = names::boot_file(path)?;
        let t = Instant::now();
        let description = format!("write /{}", rel.display());
        let result = self.check_owned_file(&rel).and_then(|_| {
            let text = if contents.starts_with(OWNED_FILE_MARKER) {
                contents.to_string()
            } else {
                format!("{OWNED_FILE_HEADER}{contents}")
            };
            atomic_write(&self.abs(&rel), text.as_bytes())
        });
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => failed(e),
        };
        steps.push(description, Some(rel), outcome, t);
        result
    }

    fn remove_boot_file(&mut self, path: &Path, steps: &mut Steps) -> Result<(), ExecError> {
        let rel = names::boot_file(path)?;
        let t = Instant::now();
        let description = format!("remove /{}", rel.display());
        if !self.check_owned_file(&rel)? {
            steps.skipped(description, "it does not exist");
            return Ok(());
        }
        let abs = self.abs(&rel);
        let result = fs::remove_file(&abs)
            .map_err(|source| ExecError::File {
                op: "remove",
                path: abs.clone(),
                source,
            })
            .and_then(|()| sync_parent(&abs));
        let outcome = match &result {
            Ok(()) => StepOutcome::Done,
            Err(e) => failed(e),
        };
        steps.push(description, Some(rel), outcome, t);
        result
    }
}

/// Runs a command and collects its output, retrying briefly on ETXTBSY: a tool that was just
/// written can still be open for writing in a child another thread forked meanwhile.
fn run_output(path: &Path, args: &[&str]) -> io::Result<std::process::Output> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match Command::new(path).args(args).output() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), ExecError> {
    atomic::sync_parent(path).map_err(file_error)
}

fn file_error(e: AtomicError) -> ExecError {
    ExecError::File {
        op: e.op,
        path: e.path,
        source: e.source,
    }
}

/// Replaces `path` whole: a temporary beside it, fsync, rename, fsync the directory.
fn atomic_write(path: &Path, data: &[u8]) -> Result<(), ExecError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.gpuvirt-tmp"));
    Replace::new(path, &tmp)
        .create_dir()
        .write(data)
        .map_err(file_error)
}
