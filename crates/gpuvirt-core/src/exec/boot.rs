//! Modules, host tools and boot files: modprobe, initramfs regeneration and the owned files
//! under etc/. May import: crate::host, crate::plan, exec/{executor, error, report, write}.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::ExecError;
use super::executor::{Executor, Steps};
use super::report::{failed, StepOutcome};
use super::write::{OWNED_FILE_HEADER, OWNED_FILE_MARKER};
use crate::host::atomic::{self, AtomicError, Replace};
use crate::host::names;

impl Executor {
    // -----------------------------------------------------------------------------------
    // Modules and tools
    // -----------------------------------------------------------------------------------

    pub(super) fn module_loaded(&self, module: &str) -> bool {
        self.exists(&Path::new("sys/module").join(names::module_dir(module)))
    }

    pub(super) fn load_module(&mut self, module: &str, steps: &mut Steps) -> Result<(), ExecError> {
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
    pub(super) fn run_tool(
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

    pub(super) fn regenerate_initramfs(&mut self, steps: &mut Steps) -> Result<(), ExecError> {
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
    // Boot files
    // -----------------------------------------------------------------------------------

    /// Refuses to touch an existing file gpuvirt did not write.
    pub(super) fn check_owned_file(&self, rel: &Path) -> Result<bool, ExecError> {
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

    pub(super) fn write_boot_file(
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

    pub(super) fn remove_boot_file(
        &mut self,
        path: &Path,
        steps: &mut Steps,
    ) -> Result<(), ExecError> {
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
