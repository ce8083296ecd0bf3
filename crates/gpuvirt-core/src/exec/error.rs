//! Why an executed action failed ([`ExecError`]) and its neutral [`ErrorKind`].
//! May import: crate::error, crate::host, crate::model, crate::state, exec/write.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

use super::write::{errno_name, WriteError, OWNED_FILE_MARKER};
use crate::error::ErrorKind;
use crate::host::names::{self, NameError};
use crate::model::{PciAddress, PciSlot};
use crate::state::ledger::LedgerError;

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
    #[error(
        "mdev {uuid}'s attribute name {name:?} is not a sysfs file name; the device was removed"
    )]
    BadAttribute { uuid: Uuid, name: String },
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
            ExecError::InvalidName(_)
            | ExecError::ForeignFunction { .. }
            | ExecError::BadAttribute { .. } => ErrorKind::InvalidArgs,
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
