//! Why a device cannot be rendered, and the neutral kind front ends map it to. May import:
//! crate::error, crate::model.

use uuid::Uuid;

use crate::error::ErrorKind;
use crate::model::PciAddress;

/// Why a device cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("no PCI function {address} is present")]
    NoSuchDevice { address: PciAddress },
    #[error("{address} is a virtual function; render its vGPU, not a card")]
    IsVirtualFunction { address: PciAddress },
    #[error("{address} is not a VF with an NVIDIA vGPU")]
    NotAVgpu { address: PciAddress },
    #[error("no mdev {uuid} is active")]
    NoSuchMdev { uuid: Uuid },
    #[error("x-vga needs a VGA-class function 0, and {address} has class {class:06x}")]
    NotVga { address: PciAddress, class: u32 },
    #[error("mdev {uuid} has device API {device_api:?}, which has no VFIO device model")]
    UnknownDeviceApi { uuid: Uuid, device_api: String },
    #[error("{address} has no DRM render node on the host ({why}), so virgl cannot render on it")]
    NoRenderNode { address: PciAddress, why: String },
    /// An option that is malformed, or that the target does not take.
    #[error("option '{option}': {problem}")]
    Option {
        option: &'static str,
        problem: String,
    },
}

impl RenderError {
    /// The neutral kind front ends map: a target that is not there, a bad option, or one that
    /// cannot be rendered.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RenderError::NoSuchDevice { .. } | RenderError::NoSuchMdev { .. } => {
                ErrorKind::NoSuchDevice
            }
            RenderError::Option { .. } => ErrorKind::InvalidArgs,
            _ => ErrorKind::NotSupported,
        }
    }
}

pub(super) fn not_for(option: &'static str, what: &str) -> RenderError {
    RenderError::Option {
        option,
        problem: format!("applies to {what}"),
    }
}
