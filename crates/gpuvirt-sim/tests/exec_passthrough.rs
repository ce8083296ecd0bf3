//! The executor end to end through the simulated kernel behind a real FUSE mount: the
//! workstation's discrete GPU and its HDMI audio go to vfio-pci and back; vfio-pci is loaded
//! first by a `modprobe` test double inside the simulated root (it talks to the simulated
//! kernel's control socket); an injected EBUSY mid-slot and a device hot-removed mid-operation
//! roll the whole slot back with a consistent ledger; a slot gpuvirt does not own is refused.
//!
//! These need `/dev/fuse` and root; they skip with a message otherwise.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gpuvirt_core::exec::{ErrorKind, ExecError, Executor, StepOutcome};
use gpuvirt_core::ledger::{LedgerStore, SlotState};
use gpuvirt_core::plan::{Action, Plan, PlannedAction, SlotFunction, SlotReturn};
use gpuvirt_core::{PciAddress, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::host::{send_command, ControlServer, Faults};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::{Backend, Tree, Uevent};

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs /dev/fuse and root");
    false
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn boot(name: &str) -> Kernel {
    Kernel::from_fixture(&Fixture::bundled(name).unwrap()).unwrap()
}

/// A `modprobe` inside the simulated root that loads the module in the simulated kernel by
/// sending `load-module` to its control socket, failing like modprobe when the kernel says no.
fn install_modprobe_double(root: &Path, socket: &Path) {
    let script = format!(
        r#"#!/bin/sh
# Test double for modprobe: asks the simulated kernel to load the module.
exec /usr/bin/python3 - "$@" <<'EOF'
import socket, sys
module = sys.argv[-1].replace("-", "_")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({socket:?})
s.sendall(("load-module %s\n" % module).encode())
s.shutdown(socket.SHUT_WR)
answer = s.makefile().readline().strip()
open({log:?}, "a").write(module + "\n")
if answer != "ok":
    sys.stderr.write("modprobe: FATAL: Module %s not found (%s)\n" % (module, answer))
    sys.exit(1)
EOF
"#,
        socket = socket.to_str().unwrap(),
        log = root.join("modprobe.log").to_str().unwrap(),
    );
    let path = root.join("sbin/modprobe");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A mounted workstation with a control socket and a modprobe double, and a ledger beside it.
struct Host<B: Backend> {
    mnt: SimMount<B>,
    _ctl: Option<ControlServer>,
    ctl_path: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl<B: Backend> Host<B> {
    fn executor(&self) -> Executor {
        let (exec, warning) =
            Executor::open(Root::new(self.mnt.root()), LedgerStore::new(&self.state)).unwrap();
        assert!(warning.is_none());
        exec
    }

    fn driver(&self, a: &str) -> Option<String> {
        fs::read_link(self.mnt.sys().join(format!("bus/pci/devices/{a}/driver")))
            .ok()
            .map(|t| t.file_name().unwrap().to_str().unwrap().to_string())
    }

    fn driver_override(&self, a: &str) -> String {
        fs::read_to_string(
            self.mnt
                .sys()
                .join(format!("bus/pci/devices/{a}/driver_override")),
        )
        .unwrap()
        .trim()
        .to_string()
    }

    fn ctl(&self, command: &str) -> String {
        send_command(&self.ctl_path, command).unwrap()
    }
}

fn faulty_host(fixture: &str) -> Host<Faults<Kernel>> {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Mutex::new(Faults::new(boot(fixture))));
    let mnt = SimMount::mount(Arc::clone(&backend), &dir.path().join("root")).unwrap();
    let ctl_path = dir.path().join("ctl.sock");
    let ctl = ControlServer::start(&ctl_path, backend, Arc::clone(mnt.events())).unwrap();
    install_modprobe_double(mnt.root(), &ctl_path);
    Host {
        mnt,
        _ctl: Some(ctl),
        ctl_path,
        state: dir.path().join("state"),
        _dir: dir,
    }
}

fn bind_action() -> Action {
    Action::BindSlotToVfio {
        slot: addr(GPU).slot(),
        functions: vec![
            SlotFunction {
                address: addr(GPU),
                driver: Some("nouveau".into()),
            },
            SlotFunction {
                address: addr(AUDIO),
                driver: Some("snd_hda_intel".into()),
            },
        ],
    }
}

fn return_action() -> Action {
    Action::ReturnSlotToHost {
        slot: addr(GPU).slot(),
        functions: vec![
            SlotReturn {
                address: addr(GPU),
                driver: Some("vfio-pci".into()),
                original_driver: Some("nouveau".into()),
            },
            SlotReturn {
                address: addr(AUDIO),
                driver: Some("vfio-pci".into()),
                original_driver: Some("snd_hda_intel".into()),
            },
        ],
    }
}

fn planned(action: Action) -> PlannedAction {
    PlannedAction {
        steps: action.steps(),
        action,
        reason: "test".into(),
        rule: Some("vm-pool".into()),
        gpu: Some(addr(GPU)),
    }
}

#[test]
fn passthrough_of_gpu_and_audio_loads_vfio_first_and_returns_to_the_original_drivers() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    assert!(!host.mnt.sys().join("module/vfio_pci").exists());
    let events = host.mnt.subscribe();
    let mut exec = host.executor();
    let plan = Plan {
        actions: vec![
            planned(Action::LoadModule {
                module: "vfio-pci".into(),
            }),
            planned(bind_action()),
        ],
        ..Plan::default()
    };
    let report = exec.execute(&plan);
    assert!(report.succeeded(), "{report}");
    assert_eq!(report.done.len(), 2);
    // modprobe was the double inside the simulated root.
    assert_eq!(
        fs::read_to_string(host.mnt.root().join("modprobe.log")).unwrap(),
        "vfio_pci\n"
    );
    assert!(host.mnt.sys().join("module/vfio_pci").exists());
    assert_eq!(host.driver(GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(host.driver(AUDIO).as_deref(), Some("vfio-pci"));
    assert_eq!(host.driver_override(GPU), "vfio-pci");
    // The iGPU and the chipset's audio are untouched.
    assert_eq!(host.driver("0000:00:02.0").as_deref(), Some("i915"));
    assert_eq!(
        host.driver("0000:00:1f.3").as_deref(),
        Some("snd_hda_intel")
    );

    // The kernel said so too: bind uevents with DRIVER=vfio-pci for both functions.
    let binds: Vec<Uevent> = events.try_iter().filter(|e| e.action == "bind").collect();
    for a in [GPU, AUDIO] {
        assert!(
            binds.iter().any(|e| e.devpath.ends_with(a)
                && e.env.iter().any(|(k, v)| k == "DRIVER" && v == "vfio-pci")),
            "no bind uevent for {a}: {binds:?}"
        );
    }

    // Step reports: override, unbind and probe writes for each function, then checks.
    let bind = &report.done[1];
    let writes: Vec<&str> = bind.steps.iter().map(|s| s.description.as_str()).collect();
    assert!(
        writes.iter().any(|d| d.contains("drivers/nouveau/unbind")),
        "{writes:?}"
    );
    assert!(
        writes
            .iter()
            .any(|d| d.contains("drivers/snd_hda_intel/unbind")),
        "{writes:?}"
    );
    assert!(bind.steps.iter().all(|s| s.outcome == StepOutcome::Done));

    // The ledger on disk has the originals (a fresh executor reads it back).
    let fresh = host.executor();
    let record = fresh.ledger().slot(addr(GPU).slot()).unwrap();
    assert_eq!(record.state, SlotState::Assigned);
    assert_eq!(record.rule.as_deref(), Some("vm-pool"));
    assert_eq!(record.original_driver(addr(GPU)), Some(Some("nouveau")));
    assert_eq!(
        record.original_driver(addr(AUDIO)),
        Some(Some("snd_hda_intel"))
    );

    // Binding again is a no-op that keeps the originals (not vfio-pci).
    let again = exec.run(&bind_action(), Some("vm-pool"));
    assert!(again.succeeded(), "{again}");
    let record = exec.ledger().slot(addr(GPU).slot()).unwrap();
    assert_eq!(record.original_driver(addr(GPU)), Some(Some("nouveau")));

    // And back, by a fresh executor (as after a daemon restart).
    let mut exec = host.executor();
    let back = exec.run(&return_action(), None);
    assert!(back.succeeded(), "{back}");
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(host.driver_override(GPU), "(null)");
    assert_eq!(host.driver_override(AUDIO), "(null)");
    assert!(exec.ledger().slots.is_empty());
    assert!(host.executor().ledger().slots.is_empty());

    // Returning again: gpuvirt no longer owns the slot, and touches nothing.
    let err = exec.run(&return_action(), None).error.unwrap();
    assert!(matches!(err, ExecError::NotOwned { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::PolicyViolation);
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
}

#[test]
fn bind_without_vfio_pci_is_refused_before_touching_anything() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    let mut exec = host.executor();
    let report = exec.run(&bind_action(), None);
    let err = report.error.unwrap();
    assert!(matches!(err, ExecError::VfioNotLoaded { .. }), "{err:?}");
    assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    assert!(report.steps.is_empty());
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver_override(GPU), "(null)");
    assert!(exec.ledger().slots.is_empty());
    assert!(!host.state.join("ledger.json").exists());
}

#[test]
fn unknown_module_fails_with_modprobes_message() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    let mut exec = host.executor();
    let plan = Plan {
        actions: vec![
            planned(Action::LoadModule {
                module: "no-such-module".into(),
            }),
            planned(bind_action()),
        ],
        ..Plan::default()
    };
    let report = exec.execute(&plan);
    let failed = report.failed.as_ref().unwrap();
    let err = failed.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::ToolFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("not found"), "{err}");
    assert_eq!(report.not_attempted.len(), 1);
    assert!(report.not_attempted[0].contains("bind slot 0000:01:00"));

    // A module name that is an option or a path never reaches modprobe.
    for bad in ["-r", "../x", "vfio pci"] {
        let r = exec.run(&Action::LoadModule { module: bad.into() }, None);
        assert!(
            matches!(r.error, Some(ExecError::InvalidName(_))),
            "{bad:?}: {r}"
        );
        assert!(r.steps.is_empty());
    }
}

#[test]
fn ebusy_on_the_second_unbind_rolls_the_whole_slot_back() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    assert_eq!(host.ctl("load-module vfio_pci"), "ok");
    assert_eq!(
        host.ctl("fail-next-write sys/bus/pci/drivers/snd_hda_intel/unbind EBUSY"),
        "ok"
    );
    let mut exec = host.executor();
    let report = exec.run(&bind_action(), Some("vm-pool"));
    let err = report.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::Busy { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert_eq!(err.errno(), Some(16));
    assert!(err.to_string().contains("unbinding 0000:01:00.1"), "{err}");
    assert_eq!(report.rolled_back, Some(true), "{report}");
    // The GPU had already left nouveau; it is back, and no override is left behind.
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(host.driver_override(GPU), "(null)");
    assert_eq!(host.driver_override(AUDIO), "(null)");
    // The failed step names its errno; rollback steps are marked.
    let failed = report
        .steps
        .iter()
        .find(|s| matches!(s.outcome, StepOutcome::Failed { .. }))
        .unwrap();
    assert_eq!(
        failed.outcome,
        StepOutcome::Failed {
            errno: Some("EBUSY".into()),
            message: failed_message(&failed.outcome),
        }
    );
    assert!(report.steps.iter().any(|s| s.rollback));
    assert!(exec.ledger().slots.is_empty());
    assert!(host.executor().ledger().slots.is_empty());

    // Without the fault the same action succeeds.
    let ok = exec.run(&bind_action(), Some("vm-pool"));
    assert!(ok.succeeded(), "{ok}");
    assert_eq!(host.driver(AUDIO).as_deref(), Some("vfio-pci"));
}

fn failed_message(outcome: &StepOutcome) -> String {
    match outcome {
        StepOutcome::Failed { message, .. } => message.clone(),
        _ => String::new(),
    }
}

#[test]
fn eio_on_probe_rolls_back_and_a_stuck_return_keeps_the_originals() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    assert_eq!(host.ctl("load-module vfio_pci"), "ok");
    assert_eq!(
        host.ctl("fail-next-write sys/bus/pci/drivers_probe EIO"),
        "ok"
    );
    let mut exec = host.executor();
    let report = exec.run(&bind_action(), None);
    let err = report.error.as_ref().unwrap();
    assert!(matches!(err, ExecError::Write { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(5));
    assert_eq!(report.rolled_back, Some(true));
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver(AUDIO).as_deref(), Some("snd_hda_intel"));

    // Assign, then make the return's unbind from vfio-pci fail: the slot stays recorded as
    // `returning` with its originals, and a later recovery finishes the job.
    assert!(exec.run(&bind_action(), None).succeeded());
    assert_eq!(
        host.ctl("fail-next-write sys/bus/pci/drivers/vfio-pci/unbind EBUSY"),
        "ok"
    );
    let back = exec.run(&return_action(), None);
    assert!(matches!(back.error, Some(ExecError::Busy { .. })), "{back}");
    let on_disk = host.executor();
    let record = on_disk.ledger().slot(addr(GPU).slot()).unwrap();
    assert_eq!(record.state, SlotState::Returning);
    assert_eq!(record.original_driver(addr(GPU)), Some(Some("nouveau")));

    let mut restarted = host.executor();
    let recovered = restarted.recover();
    assert_eq!(recovered.len(), 1);
    assert!(recovered[0].succeeded(), "{}", recovered[0]);
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert!(restarted.ledger().slots.is_empty());
}

/// A kernel whose function `victim` is surprise-removed just before the write to `trigger`.
struct RemoveOnWrite {
    kernel: Kernel,
    trigger: String,
    victim: PciAddress,
}

impl Backend for RemoveOnWrite {
    fn tree(&self) -> &Tree {
        self.kernel.tree()
    }

    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        if path == self.trigger {
            let _ = self.kernel.hot_remove(self.victim);
        }
        self.kernel.write(path, data)
    }

    fn take_uevents(&mut self) -> Vec<Uevent> {
        self.kernel.take_uevents()
    }
}

#[test]
fn device_removed_mid_operation_is_device_gone_with_a_consistent_ledger() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut kernel = boot("workstation");
    kernel.load_module("vfio_pci").unwrap();
    let backend = Arc::new(Mutex::new(RemoveOnWrite {
        kernel,
        // The audio function disappears as the GPU is unbound from nouveau.
        trigger: "sys/bus/pci/drivers/nouveau/unbind".into(),
        victim: addr(AUDIO),
    }));
    let mnt = SimMount::mount(Arc::clone(&backend), &dir.path().join("root")).unwrap();
    let host = Host {
        mnt,
        _ctl: None,
        ctl_path: PathBuf::new(),
        state: dir.path().join("state"),
        _dir: dir,
    };
    let mut exec = host.executor();
    let report = exec.run(&bind_action(), Some("vm-pool"));
    let err = report.error.as_ref().unwrap();
    assert!(
        matches!(err, ExecError::DeviceGone { address, .. } if *address == addr(AUDIO)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::NoSuchDevice);
    assert_eq!(report.rolled_back, Some(true), "{report}");
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(host.driver_override(GPU), "(null)");
    assert!(!host
        .mnt
        .sys()
        .join(format!("bus/pci/devices/{AUDIO}"))
        .exists());
    // Nothing is half-bound and nothing is owned.
    assert!(exec.ledger().slots.is_empty());
    assert!(host.executor().ledger().slots.is_empty());

    // Nothing else is left to clean up: a later rescan creates a new device (the kernel
    // forgets a removed device's driver_override; the simulated kernel's replug keeps it,
    // so that is not asserted here).
    assert!(exec.recover().is_empty());
}

#[test]
fn device_removed_while_assigned_returns_what_is_left() {
    if !fuse_available() {
        return;
    }
    let host = faulty_host("workstation");
    assert_eq!(host.ctl("load-module vfio_pci"), "ok");
    let mut exec = host.executor();
    assert!(exec.run(&bind_action(), None).succeeded());
    assert_eq!(host.ctl(&format!("hot-remove {AUDIO}")), "ok");
    let back = exec.run(&return_action(), None);
    assert!(back.succeeded(), "{back}");
    assert_eq!(host.driver(GPU).as_deref(), Some("nouveau"));
    assert!(back
        .steps
        .iter()
        .any(|s| matches!(&s.outcome, StepOutcome::Skipped { why } if why.contains("gone"))));
    assert!(exec.ledger().slots.is_empty());
}
