//! What can go wrong in the hook, as sentences libvirt shows the user when a start fails.
//! May import: nothing of this crate.

/// A failure of the hook; its message is what libvirt reports ("hook script execution
/// failed: ...").
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read the domain XML: {0}")]
    DomainXml(String),
    #[error("cannot connect to gpuvirtd ({bus}): {reason}")]
    Unreachable { bus: String, reason: String },
    #[error("gpuvirtd did not answer within the hook's {seconds:.1} s deadline while {doing}")]
    Deadline { seconds: f64, doing: String },
    #[error("{0}")]
    Refused(String),
    #[error("gpuvirtd refused to {doing}: {message}")]
    Call { doing: String, message: String },
    #[error("cannot {doing} {path}: {source}")]
    Record {
        doing: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl HookError {
    /// Whether the daemon is simply not there (no bus, no owner of its name): then gpuvirt
    /// cannot have readied anything, and the hook leaves the domain to libvirt.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HookError::Unreachable { .. })
    }
}
