//! Interactive polkit authorization, end to end without a real polkitd: a fake polkit authority
//! on the private bus records what gpuvirtd asks it, a fake `pkttyagent` first on `PATH`
//! records how gpuvirtctl started it, and `script` gives gpuvirtctl a terminal.
//!
//! Checks: on a terminal (uid 65534, a mutating command) the agent is started as
//! `pkttyagent --process <gpuvirtctl's pid> --notify-fd N --fallback`, registered before the
//! call reaches polkit, and stopped when gpuvirtctl exits; the call carries
//! ALLOW_INTERACTIVE_AUTHORIZATION, so polkit is asked with AllowUserInteraction. No agent
//! without a terminal, with --no-ask-password (which also clears the flag), for reads, dry
//! runs or root; without pkttyagent installed the command goes on.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use zbus::zvariant::OwnedValue;

const NOBODY: &str = "65534";

/// One CheckAuthorization call as the fake polkit saw it.
#[derive(Debug, Clone)]
struct Check {
    action: String,
    /// `CheckAuthorizationFlags`: 1 is AllowUserInteraction.
    flags: u32,
    subject_kind: String,
    /// Whether the fake agent had registered (closed its notify fd) by then.
    agent_registered: bool,
}

struct FakeAuthority {
    checks: Arc<Mutex<Vec<Check>>>,
    registered_marker: PathBuf,
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakeAuthority {
    /// polkit's signature `((sa{sv})sa{ss}us) -> (bba{ss})`; says no to everything, so the
    /// daemon's AccessDenied path ends each mutating command with exit 3.
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        self.checks.lock().unwrap().push(Check {
            action: action_id,
            flags,
            subject_kind: subject.0,
            agent_registered: self.registered_marker.exists(),
        });
        (false, false, HashMap::new())
    }
}

/// The fake polkit on its own runtime (gpuvirtctl runs as a separate process meanwhile).
struct Polkit {
    _runtime: tokio::runtime::Runtime,
    _connection: zbus::Connection,
    checks: Arc<Mutex<Vec<Check>>>,
}

impl Polkit {
    fn start(bus: &Bus, registered_marker: PathBuf) -> Polkit {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let checks = Arc::new(Mutex::new(Vec::new()));
        let authority = FakeAuthority {
            checks: checks.clone(),
            registered_marker,
        };
        let connection = runtime.block_on(async {
            zbus::connection::Builder::address(bus.address.as_str())
                .unwrap()
                .name("org.freedesktop.PolicyKit1")
                .unwrap()
                .serve_at("/org/freedesktop/PolicyKit1/Authority", authority)
                .unwrap()
                .build()
                .await
                .unwrap()
        });
        Polkit {
            _runtime: runtime,
            _connection: connection,
            checks,
        }
    }

    fn take(&self) -> Vec<Check> {
        std::mem::take(&mut *self.checks.lock().unwrap())
    }
}

/// A directory holding a fake `pkttyagent` that writes what it saw next to itself: its
/// parent's pid and arguments (`agent.args`), whether the notify fd was open (`agent.notify`)
/// and whether its stdin is a terminal (`agent.stdin`); then, after a pause that a caller not
/// waiting for the fd would miss, `agent.registered` (its pid) and it closes the fd.
struct FakeAgent {
    dir: tempfile::TempDir,
}

impl FakeAgent {
    fn install() -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        // uid 65534 runs it and writes its records here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("pkttyagent");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
d='{dir}'
printf '%s\n' "$PPID" "$@" > "$d/agent.args"
fd=""; prev=""
for a in "$@"; do [ "$prev" = "--notify-fd" ] && fd="$a"; prev="$a"; done
if [ -n "$fd" ] && [ -e "/proc/$$/fd/$fd" ]; then echo open; else echo closed; fi > "$d/agent.notify"
if [ -t 0 ]; then echo tty; else echo not-a-tty; fi > "$d/agent.stdin"
sleep 0.5
echo $$ > "$d/agent.registered.tmp" && mv "$d/agent.registered.tmp" "$d/agent.registered"
[ -n "$fd" ] && eval "exec $fd>&-"
exec sleep 60
"#,
                dir = dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeAgent { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn registered_marker(&self) -> PathBuf {
        self.dir.path().join("agent.registered")
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(name)).ok()
    }

    /// Forgets one run's records.
    fn reset(&self) {
        for name in [
            "agent.args",
            "agent.notify",
            "agent.stdin",
            "agent.registered",
        ] {
            let _ = std::fs::remove_file(self.dir.path().join(name));
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How gpuvirtctl is run.
struct Run<'a> {
    bus: &'a Bus,
    /// Under `script`, so stdin/stdout are a pty.
    tty: bool,
    /// `Some(uid)`: through `setpriv` as that uid; `None`: as the test (root).
    uid: Option<&'a str>,
    /// `PATH` for gpuvirtctl (where it looks for pkttyagent).
    path: &'a str,
}

impl Run<'_> {
    fn ctl(&self, args: &[&str]) -> Output {
        let mut argv: Vec<String> = Vec::new();
        if let Some(uid) = self.uid {
            argv.extend(
                [
                    "setpriv",
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                ]
                .map(str::to_owned),
            );
        }
        argv.push(gpuvirtctl().display().to_string());
        argv.extend(["--bus-address".to_owned(), self.bus.address.clone()]);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut command = if self.tty {
            let line = argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = Command::new("script");
            // -e: script exits with gpuvirtctl's code; the typescript goes nowhere.
            c.args(["-qec", &format!("exec {line}"), "/dev/null"]);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        command
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.path),
            )
            .env("SHELL", "/bin/sh")
            .env_remove("NO_COLOR");
        command
            .output()
            .expect("script (util-linux) and setpriv must be installed")
    }
}

fn assert_exit(out: &Output, expected: i32, what: &str) {
    assert_eq!(
        code(out),
        expected,
        "{what}: stdout {} stderr {}",
        stdout(out),
        stderr(out)
    );
}

/// The single check polkit saw, which must be for `action`.
fn only_check(polkit: &Polkit, action: &str) -> Check {
    let checks = polkit.take();
    assert_eq!(checks.len(), 1, "{checks:#?}");
    let check = checks[0].clone();
    assert_eq!(check.action, action);
    assert_eq!(check.subject_kind, "system-bus-name");
    check
}

fn process_gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn agent_on_a_terminal_only_and_the_call_allows_interaction() {
    if !fuse_available() {
        return;
    }
    let agent = FakeAgent::install();
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let polkit = Polkit::start(&bus, agent.registered_marker());
    let _daemon = Daemon::start(&bus, &host, true);
    let fake_path = agent.path().display().to_string();
    let on_tty = Run {
        bus: &bus,
        tty: true,
        uid: Some(NOBODY),
        path: &fake_path,
    };

    // A terminal, an unprivileged user, a mutating command: the agent, then the call.
    for (args, action) in [
        (
            &["mdev", "create", "0000:41:00.0", "nvidia-300"][..],
            "org.gpuvirt.GpuVirt1.shard",
        ),
        (&["policy", "reload"][..], "org.gpuvirt.GpuVirt1.policy"),
    ] {
        agent.reset();
        let out = on_tty.ctl(args);
        assert_exit(&out, 3, &format!("{args:?} on a terminal"));
        let recorded = agent
            .read("agent.args")
            .unwrap_or_else(|| panic!("{args:?}: no agent started"));
        let lines: Vec<&str> = recorded.lines().collect();
        assert_eq!(lines.len(), 6, "{recorded}");
        let (parent, argv) = (lines[0], &lines[1..]);
        assert_eq!(argv[0], "--process");
        // Registered for gpuvirtctl itself, the process whose calls polkit judges.
        assert_eq!(argv[1], parent, "the agent's --process is not its parent");
        assert_eq!(argv[2], "--notify-fd");
        assert!(argv[3].parse::<u32>().unwrap() > 2, "{recorded}");
        assert_eq!(argv[4], "--fallback");
        assert_eq!(agent.read("agent.notify").as_deref(), Some("open\n"));
        assert_eq!(agent.read("agent.stdin").as_deref(), Some("tty\n"));
        let check = only_check(&polkit, action);
        assert_eq!(check.flags, 1, "{args:?}: polkit not allowed to interact");
        assert!(
            check.agent_registered,
            "{args:?}: the call reached polkit before the agent had registered"
        );
        let pid = agent.read("agent.registered").unwrap();
        assert!(
            process_gone(pid.trim()),
            "{args:?}: the agent outlived gpuvirtctl"
        );
    }

    // --no-ask-password: no agent, and polkit may not ask.
    agent.reset();
    let out = on_tty.ctl(&["--no-ask-password", "policy", "reload"]);
    assert_exit(&out, 3, "--no-ask-password");
    assert_eq!(
        agent.read("agent.args"),
        None,
        "agent despite --no-ask-password"
    );
    assert_eq!(only_check(&polkit, "org.gpuvirt.GpuVirt1.policy").flags, 0);

    // No terminal: no agent, but the call still allows interaction (a desktop's agent may
    // answer), as systemctl does.
    agent.reset();
    let piped = Run {
        tty: false,
        ..on_tty
    };
    let out = piped.ctl(&["policy", "reload"]);
    assert_exit(&out, 3, "not a terminal");
    assert_eq!(agent.read("agent.args"), None, "agent without a terminal");
    assert_eq!(only_check(&polkit, "org.gpuvirt.GpuVirt1.policy").flags, 1);

    // Reads and dry runs are never authorized: no agent.
    for args in [
        &["list"][..],
        &["xml", "0000:41:00.0"],
        &["passthrough", "0000:41:00.0", "--dry-run"],
    ] {
        agent.reset();
        let out = on_tty.ctl(args);
        assert_exit(&out, 0, &format!("{args:?}"));
        assert_eq!(agent.read("agent.args"), None, "agent for {args:?}");
    }
    assert!(polkit.take().is_empty(), "a read asked polkit");

    // pkttyagent not installed: the command goes on, without a warning about it.
    agent.reset();
    let empty = tempfile::tempdir().unwrap();
    let empty_path = empty.path().display().to_string();
    let without = Run {
        path: &empty_path,
        ..on_tty
    };
    let out = without.ctl(&["policy", "reload"]);
    assert_exit(&out, 3, "without pkttyagent");
    assert!(!stdout(&out).contains("warning"), "{}", stdout(&out));
    assert_eq!(only_check(&polkit, "org.gpuvirt.GpuVirt1.policy").flags, 1);

    // Root is never asked by polkit: no agent.
    agent.reset();
    let as_root = Run {
        uid: None,
        ..on_tty
    };
    let _ = as_root.ctl(&["policy", "reload"]);
    assert_eq!(agent.read("agent.args"), None, "agent for root");
}
