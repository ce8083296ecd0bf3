//! A polkit text agent for this process while a command that polkit may guard runs, the way
//! systemctl and busctl do it: on a terminal, `pkttyagent` asks for the password polkit wants.
//! May import: nothing of this crate.
//!
//! Without an agent registered for the caller, polkit can only say no to an action that needs
//! authentication (`auth_admin`), even though the person at the terminal knows the password.

use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The text agent, looked up on `PATH` (tests put a fake one first).
pub const AGENT_PROGRAM: &str = "pkttyagent";

/// How long to wait for the agent to register. systemd waits without bound; a terminal that
/// hangs forever on a stuck polkitd is worse than a call that may be refused.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not be started (the command goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the agent's notification pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot hand the notification pipe to the agent")]
    Inherit(#[source] nix::Error),
    #[error("cannot start {AGENT_PROGRAM}")]
    Spawn(#[source] std::io::Error),
}

/// A running `pkttyagent` registered for this process; stopped when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Child,
}

/// Whether to start an agent: only when asking is allowed, someone can answer (stdin is a
/// terminal: the question is about input, not output), and the caller is not root (polkit
/// allows uid 0 everything, so it would never ask).
pub fn wanted(ask_password: bool, stdin_is_tty: bool, euid_is_root: bool) -> bool {
    ask_password && stdin_is_tty && !euid_is_root
}

/// Starts the agent when [`wanted`]; `None` when not wanted, when `pkttyagent` is not
/// installed, or when it cannot be started (after a warning on stderr). Call before any other
/// thread exists: the notification pipe's write end is inheritable until the agent has it.
pub fn open(ask_password: bool) -> Option<Agent> {
    if !wanted(
        ask_password,
        std::io::stdin().is_terminal(),
        nix::unistd::geteuid().is_root(),
    ) {
        return None;
    }
    match spawn(AGENT_PROGRAM, std::process::id()) {
        Ok(agent) => Some(agent),
        // Not installed: polkit may still find another agent (a desktop's) or not need one.
        Err(AgentError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            eprintln!("gpuvirtctl: warning: {e}{cause}; going on without a password prompt");
            None
        }
    }
}

/// Runs `program --process PID --notify-fd N --fallback` and waits until it closes fd `N`,
/// which it does once registered with polkit (or on giving up).
fn spawn(program: &str, pid: u32) -> Result<Agent, AgentError> {
    let (registered, notify) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(AgentError::Pipe)?;
    let mut registered = std::fs::File::from(registered);
    // Both ends are close-on-exec (no other child may inherit them); the agent must inherit
    // the write end.
    nix::fcntl::fcntl(
        &notify,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(AgentError::Inherit)?;
    // The agent prompts on the controlling terminal; its stdout must not mix into ours (which
    // may be JSON for a script).
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let child = Command::new(program)
        .arg("--process")
        .arg(pid.to_string())
        .arg("--notify-fd")
        .arg(notify.as_raw_fd().to_string())
        .arg("--fallback")
        .stdout(stdout)
        .spawn();
    // Ours closed, the agent's copy is the only write end left: EOF means it is ready.
    drop(notify);
    let agent = Agent {
        child: child.map_err(AgentError::Spawn)?,
    };
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        loop {
            match registered.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    // On a timeout the agent keeps running: it may still register before polkit asks.
    let _ = wait.recv_timeout(REGISTER_TIMEOUT);
    Ok(agent)
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the agent restores the terminal (echo) if it was prompting.
        let terminated = i32::try_from(self.child.id()).is_ok_and(|pid| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .is_ok()
        });
        if !terminated {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_only_for_a_person_who_may_be_asked() {
        assert!(wanted(true, true, false));
        assert!(!wanted(false, true, false), "--no-ask-password");
        assert!(!wanted(true, false, false), "stdin is not a terminal");
        assert!(!wanted(true, true, true), "root is never asked");
    }
}
