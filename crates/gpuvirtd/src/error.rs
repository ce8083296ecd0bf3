//! The daemon's one error vocabulary: a failed operation is a kind (what the caller can do
//! about it) and a message for people. Every layer fails with [`OpError`]; only
//! `bus/errors.rs` turns a kind into a D-Bus error name. Core errors keep the core's own
//! classification here, so that the mapping to names happens in that one place too.
//! Ground level: may import only gpuvirt-core.

use gpuvirt_core::exec::{self, ExecError};
use gpuvirt_core::interlock::Refusal;
use gpuvirt_core::render::RenderError;
use gpuvirt_core::shard::ShardError;

/// What kind of failure, as the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed argument or option (the message names it).
    InvalidArgs,
    /// The caller may not do this.
    AccessDenied,
    /// Anything without a name of its own.
    Failed,
    NoSuchDevice,
    PolicyViolation,
    PolicyInvalid,
    Busy,
    NotSupported,
    AlreadyExists,
    TimedOut,
    /// As the core's executor classified the failure.
    Exec(exec::ErrorKind),
    /// The first of the interlocks' refusals (they come in a stable order).
    Refused(Refusal),
    /// As the core's shard planner classified the failure.
    Shard(ShardError),
    /// A device that cannot be rendered.
    Render(RenderError),
}

/// A failed operation: its kind and the message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// A malformed argument, named in the message (`argument 'uuid': ...`).
    pub fn invalid_arg(argument: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::InvalidArgs,
            format!("argument '{argument}': {problem}"),
        )
    }

    /// The actor's task has ended: the daemon is stopping.
    pub fn gone() -> Self {
        Self::failed("gpuvirtd is shutting down")
    }

    pub fn from_exec(e: &ExecError) -> Self {
        let message = gpuvirt_core::error_chain(e as &dyn std::error::Error);
        Self::new(ErrorKind::Exec(e.kind()), message)
    }

    pub fn from_shard(e: &ShardError) -> Self {
        Self::new(ErrorKind::Shard(e.clone()), e.to_string())
    }

    pub fn from_render(e: RenderError) -> Self {
        let message = e.to_string();
        Self::new(ErrorKind::Render(e), message)
    }

    /// Every refusal in one message; the kind is the first one's (they come in a stable
    /// order: device, IOMMU, boot VGA, group, holders).
    pub fn from_refusals(refusals: &[Refusal]) -> Self {
        let kind = refusals
            .first()
            .map_or(ErrorKind::Failed, |r| ErrorKind::Refused(r.clone()));
        let message = refusals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        Self::new(kind, message)
    }
}
