//! gpuvirtctl's exit codes: one list, documented in docs/cli.md; scripts depend on them. May
//! import: nothing of this crate.

use std::process::ExitCode;

/// How gpuvirtctl ended. The numbers are API: never renumber a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked.
    Ok = 0,
    /// The command failed: the daemon refused or could not do it, or the bus failed.
    Failure = 1,
    /// The command line is wrong (clap's own code for usage errors).
    Usage = 2,
    /// The caller is not allowed (polkit said no, or the bus policy refused the call).
    Denied = 3,
    /// gpuvirtd is not running, or the bus itself cannot be reached.
    NotRunning = 4,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit of a code gpuvirt-api gives an error name (1, 3 or 4); any other is Failure.
    pub const fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Denied,
            4 => Exit::NotRunning,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        let codes: Vec<u8> = [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Denied,
            Exit::NotRunning,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        let doc = include_str!("../../../docs/cli.md");
        for (code, name) in [(0, "ok"), (1, "failure"), (2, "usage"), (3, "denied")] {
            assert!(
                doc.contains(&format!("| {code} | {name}")),
                "docs/cli.md does not document exit code {code} ({name})"
            );
        }
        assert!(doc.contains("| 4 | daemon not running"));
    }
}
