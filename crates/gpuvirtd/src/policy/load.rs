//! Loading the policy file: read, parse and validate against the live inventory.
//! May import: gpuvirt-core only.

use std::path::{Path, PathBuf};

use gpuvirt_core::policy::{check_on_host, render_diagnostics, Policy, PolicyDiagnostic};
use gpuvirt_core::Inventory;

/// The file name diagnostics of `ValidatePolicy` carry (the caller knows the real one).
pub const VALIDATE_FILE_NAME: &str = "policy.toml";

/// Why the policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the policy file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the policy file {} is invalid:\n{}", .0.display(), .1)]
    Invalid(PathBuf, String),
}

impl LoadError {
    /// No policy file at all: the normal "observe only" state of a fresh install, not an
    /// error of the file (there is none).
    pub fn is_missing(&self) -> bool {
        matches!(self, LoadError::Read(_, e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The text `PolicyError` shows for `e`: the diagnostics alone for an invalid file.
pub(super) fn error_text(e: &LoadError) -> String {
    match e {
        LoadError::Invalid(_, diagnostics) => diagnostics.clone(),
        LoadError::Read(..) => gpuvirt_core::error_chain(e),
    }
}

/// Reads, parses and validates the policy at `path` against `inv`.
pub fn load(path: &Path, inv: &Inventory) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read(path.to_owned(), e))?;
    let file = path.display().to_string();
    let (policy, diagnostics) = check(&text, &file, inv);
    match policy {
        Some(p) => {
            for d in &diagnostics {
                tracing::warn!("{d}");
            }
            Ok(p)
        }
        None => Err(LoadError::Invalid(
            path.to_owned(),
            render_diagnostics(&diagnostics),
        )),
    }
}

/// Parses and validates `text`: the policy when it has no errors, and every diagnostic.
/// `gpuvirtctl policy check` and `ValidatePolicy` both end here; with no daemon, gpuvirtctl
/// makes the first half of the same check (gpuvirt-policy's) itself.
pub fn check(text: &str, file: &str, inv: &Inventory) -> (Option<Policy>, Vec<PolicyDiagnostic>) {
    check_on_host(text, file, inv)
}
