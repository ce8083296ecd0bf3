//! Man pages and shell completions generated from a binary's own clap definition. May import:
//! clap, clap_complete, clap_mangen (no gpuvirt crate).
//!
//! Both binaries (gpuvirtctl and gpuvirtd) call [`intercept`] first thing in `main`, so `make`
//! regenerates everything from the parser the binary really uses: a command someone adds shows
//! up in the man page and the completions without touching this crate.
//!
//! Hidden interface (not part of the documented CLI, used by the Makefile):
//!   `<bin> __generate man DIR`          -> DIR/<bin>.<section> and DIR/<bin>-<sub>.<section>
//!   `<bin> __generate completions DIR`  -> DIR/bash/<bin>, DIR/zsh/_<bin>, DIR/fish/<bin>.fish

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The argv[1] that switches a binary into generator mode.
pub const GENERATE_ARG: &str = "__generate";

/// Why generating man pages or completions failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("usage: {bin} {GENERATE_ARG} man|completions DIR")]
    Usage { bin: String },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the generator when argv is `<bin> __generate ...` and returns the exit code; otherwise
/// returns `None` and the binary parses its arguments as usual.
pub fn intercept(cmd: impl FnOnce() -> clap::Command, section: &str) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some(GENERATE_ARG) {
        return None;
    }
    // Built only when asked: a full command tree costs a one-call client's start-up.
    let cmd = cmd();
    let bin = cmd.get_name().to_owned();
    let result = match (
        args.get(2).and_then(|a| a.to_str()),
        args.get(3),
        args.len(),
    ) {
        (Some("man"), Some(dir), 4) => write_man_pages(cmd, section, Path::new(dir)).map(|_| ()),
        (Some("completions"), Some(dir), 4) => write_completions(cmd, Path::new(dir)).map(|_| ()),
        _ => Err(GenError::Usage { bin: bin.clone() }),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                message.push_str(": ");
                message.push_str(&source.to_string());
            }
            eprintln!("{bin}: {message}");
            ExitCode::from(2)
        }
    })
}

/// Writes the binary's page and one page per visible subcommand (recursively, as
/// `git-commit(1)` does), and returns the files written.
pub fn write_man_pages(
    cmd: clap::Command,
    section: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, GenError> {
    create_dir(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // build() propagates global arguments and sets each subcommand's display name to
    // "<bin>-<sub>", which clap_mangen uses for the page name.
    cmd.build();
    let extra = extra_sections(cmd.get_name(), section);
    let mut written = Vec::new();
    write_page(&cmd, section, &extra, dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    section: &str,
    extra: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), GenError> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("gpuvirt")
        .source(format!("gpuvirt {}", env!("CARGO_PKG_VERSION")))
        // A fixed date keeps the pages reproducible (the .deb and `make install` twice give
        // identical files); the version says which release they describe.
        .date("");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    let rendered = man
        .render(&mut page)
        .and_then(|()| page.write_all(extra.as_bytes()));
    rendered.map_err(|source| GenError::Write {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, page).map_err(|source| GenError::Write {
        path: path.clone(),
        source,
    })?;
    written.push(path);
    // Subcommand pages carry the same SEE ALSO/EXIT STATUS only on the top-level page.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, section, "", dir, written)?;
    }
    Ok(())
}

/// Sections clap knows nothing about, in roff, appended to the top-level page.
fn extra_sections(bin: &str, section: &str) -> String {
    let see_also_ctl = r".SH SEE ALSO
.BR gpuvirtd (8),
.BR gpuvirt\-policy (5),
.BR mdevctl (8),
.BR virsh (1),
.BR systemctl (1)
.PP
/usr/share/doc/gpuvirt/ holds the getting\-started guide, the D\-Bus API reference and the
troubleshooting guide.
";
    match (bin, section) {
        ("gpuvirtd", _) => r#".SH FILES
.TP
.I /etc/gpuvirt/policy.toml
The device policy, see
.BR gpuvirt\-policy (5).
An annotated example is in /usr/share/doc/gpuvirt/examples/policy.toml.
.TP
.I /var/lib/gpuvirt/
The state directory (\fB\-\-state\-dir\fR): the ownership ledger of what gpuvirtd created
or rebound.
.SH SIGNALS
.TP
.B SIGHUP
Rescan the devices and reload the policy.
.TP
.BR SIGTERM ", " SIGINT
Stop serving and exit.
.SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter; overrides \fB\-\-log\fR.
.SH SEE ALSO
.BR gpuvirtctl (1),
.BR gpuvirt\-policy (5),
.BR systemd.service (5),
.BR dbus\-daemon (1)
"#
        .to_owned(),
        _ => format!(
            r".SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
The command failed: the daemon refused or could not do it, or the bus failed (the message on
standard error says why and what to do).
.TP
.B 2
Bad usage: unknown command or option, missing argument.
.TP
.B 3
Denied: polkit or the bus policy did not allow the call.
.TP
.B 4
gpuvirtd is not running, or the bus cannot be reached. Not for \fBpolicy check\fR, which then
checks the file offline (syntax, schema, the rules that need no host) and exits 0 or 1.
.SH ENVIRONMENT
.TP
.B DBUS_SYSTEM_BUS_ADDRESS
The system bus gpuvirtctl talks to unless \fB\-\-session\fR or \fB\-\-bus\-address\fR is given.
{see_also_ctl}"
        ),
    }
}

/// Writes bash, zsh and fish completions under the names each shell's vendor directory expects,
/// and returns the files written.
pub fn write_completions(mut cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, GenError> {
    let bin = cmd.get_name().to_owned();
    let targets = [
        (Shell::Bash, "bash", bin.clone()),
        (Shell::Zsh, "zsh", format!("_{bin}")),
        (Shell::Fish, "fish", format!("{bin}.fish")),
    ];
    let mut written = Vec::new();
    for (shell, subdir, file) in targets {
        let shell_dir = dir.join(subdir);
        create_dir(&shell_dir)?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, bin.as_str(), &mut script);
        let path = shell_dir.join(file);
        std::fs::write(&path, script).map_err(|source| GenError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), GenError> {
    std::fs::create_dir_all(dir).map_err(|source| GenError::Write {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("demo")
            .about("Demo tool.")
            .arg(
                clap::Arg::new("json")
                    .long("json")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("list").about("List things."))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn man_pages_cover_visible_subcommands_only() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(sample(), "1", dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["demo.1", "demo-list.1"]);
        let top = std::fs::read_to_string(dir.path().join("demo.1")).unwrap();
        assert!(top.starts_with(".ie"), "{top}");
        assert!(top.contains(".TH demo 1"), "{top}");
        assert!(top.contains(r"\-\-json"), "{top}");
        assert!(top.contains(".SH EXIT STATUS"), "{top}");
        let sub = std::fs::read_to_string(dir.path().join("demo-list.1")).unwrap();
        assert!(sub.contains("List things."), "{sub}");
        assert!(!sub.contains(".SH EXIT STATUS"), "{sub}");
    }

    #[test]
    fn completions_use_each_shells_file_name() {
        let dir = tempfile::tempdir().unwrap();
        write_completions(sample(), dir.path()).unwrap();
        let bash = std::fs::read_to_string(dir.path().join("bash/demo")).unwrap();
        assert!(bash.contains("complete -F _demo"), "{bash}");
        assert!(bash.contains("list"), "{bash}");
        let zsh = std::fs::read_to_string(dir.path().join("zsh/_demo")).unwrap();
        assert!(zsh.starts_with("#compdef demo"), "{zsh}");
        let fish = std::fs::read_to_string(dir.path().join("fish/demo.fish")).unwrap();
        assert!(fish.contains("complete -c demo"), "{fish}");
    }
}
