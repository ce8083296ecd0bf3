//! `gpuvirt-sim`: mount a simulated host (FUSE sysfs with the kernel's write semantics and
//! uevents), write one out as plain files, or generate large synthetic hosts. May import: the
//! `gpuvirt_sim` library's public API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};

use gpuvirt_sim::fixture::{bundled_names, Fixture};
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::generate::{generate, pci_function_count, GenParams, Preset};
use gpuvirt_sim::host::{ControlServer, Faults, COMMANDS_HELP};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::materialize_filtered;
use gpuvirt_sim::Backend;

#[derive(Debug, Parser)]
#[command(name = "gpuvirt-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mount a simulated host: ROOT/sys is a FUSE sysfs whose writes behave like the kernel's,
    /// everything else (proc/cmdline, lib/modules, ...) plain files under ROOT. Prints one
    /// `READY ...` line once serving, then serves until SIGTERM or SIGINT and unmounts.
    #[command(after_help = COMMANDS_HELP)]
    Mount {
        /// Fixture file (TOML), or the name of a bundled fixture (e.g. `runbook`).
        #[arg(long)]
        fixture: String,
        /// Directory that plays `/` (created if missing). Put it on tmpfs (/dev/shm, /run) for
        /// big hosts: the plain parts (pci.ids, mdevctl.d, ...) are written there at mount time.
        #[arg(long)]
        root: PathBuf,
        /// Serve kernel-format uevents on a SOCK_SEQPACKET socket at this path.
        #[arg(long)]
        uevent_socket: Option<PathBuf>,
        /// Serve the line-based control interface (see below) on a Unix socket at this path.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Write a simulated host as plain files and links (no write semantics): OUT/sys, OUT/proc...
    Materialize {
        /// Fixture file (TOML), or the name of a bundled fixture.
        #[arg(long)]
        fixture: String,
        /// Output directory (created if missing; existing entries are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a large synthetic host fixture (the bench shapes) as TOML.
    Generate {
        #[arg(long, value_enum)]
        preset: PresetArg,
        /// Output fixture file.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the bundled fixtures.
    Fixtures,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PresetArg {
    /// The runbook's single V100 with 2 mdevs.
    Small,
    /// 8 GPUs, 64 mdevs, about 200 PCI functions.
    Medium,
    /// 64 GPUs, 2048 mdevs, 5000 PCI functions.
    Large,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Mount {
            fixture,
            root,
            uevent_socket,
            control,
        } => mount(
            &fixture,
            &root,
            uevent_socket.as_deref(),
            control.as_deref(),
        ),
        Cmd::Materialize { fixture, out } => {
            let started = Instant::now();
            let kernel = boot(&fixture)?;
            let stats = materialize_filtered(kernel.tree(), "", &out, |_| false)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} dirs, {} files, {} links to {} in {} ms",
                stats.dirs,
                stats.files,
                stats.links,
                out.display(),
                started.elapsed().as_millis()
            );
            Ok(())
        }
        Cmd::Generate { preset, out } => {
            let preset = match preset {
                PresetArg::Small => Preset::Small,
                PresetArg::Medium => Preset::Medium,
                PresetArg::Large => Preset::Large,
            };
            let fixture = generate(&GenParams::preset(preset))?;
            let text = fixture.to_toml().context("cannot serialise the fixture")?;
            std::fs::write(&out, text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} ({} PCI functions)",
                out.display(),
                pci_function_count(&fixture)
            );
            Ok(())
        }
        Cmd::Fixtures => {
            for name in bundled_names() {
                println!("{name}");
            }
            Ok(())
        }
    }
}

/// Boots a kernel from a fixture file, or from a bundled fixture of that name.
fn boot(fixture: &str) -> Result<Kernel> {
    if Path::new(fixture).exists() {
        return Kernel::load(fixture).with_context(|| format!("cannot boot {fixture}"));
    }
    let parsed = Fixture::bundled(fixture)
        .with_context(|| format!("{fixture} is neither a file nor a bundled fixture"))?;
    Kernel::from_fixture(&parsed).with_context(|| format!("cannot boot bundled {fixture}"))
}

fn mount(
    fixture: &str,
    root: &Path,
    uevent_socket: Option<&Path>,
    control: Option<&Path>,
) -> Result<()> {
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // the signal waits for sigwait below: the default action would kill the process without
    // unmounting and leave a dead mount behind.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGHUP);
    stop_signals
        .thread_block()
        .context("cannot block SIGTERM/SIGINT")?;

    let kernel = boot(fixture)?;
    let started = Instant::now();
    let backend = Arc::new(Mutex::new(Faults::new(kernel)));
    let mnt = SimMount::mount(backend, root)
        .with_context(|| format!("cannot mount a simulated host at {}", root.display()))?;
    let mount_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(path) = uevent_socket {
        mnt.listen_uevents(path)
            .with_context(|| format!("cannot serve uevents at {}", path.display()))?;
    }
    let control_server = control
        .map(|path| {
            ControlServer::start(path, Arc::clone(mnt.backend()), Arc::clone(mnt.events()))
                .with_context(|| format!("cannot serve the control socket at {}", path.display()))
        })
        .transpose()?;

    let mut ready = format!(
        "READY root={} sys={} mount_ms={mount_ms:.1}",
        mnt.root().display(),
        mnt.sys().display()
    );
    if let Some(path) = uevent_socket {
        ready.push_str(&format!(" uevents={}", path.display()));
    }
    if let Some(path) = control {
        ready.push_str(&format!(" control={}", path.display()));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}")?;
    stdout.flush()?;
    drop(stdout);

    let signal = stop_signals.wait().context("sigwait failed")?;
    drop(control_server);
    mnt.unmount()
        .with_context(|| format!("unmounting {} failed", root.join("sys").display()))?;
    eprintln!(
        "gpuvirt-sim: {signal:?}: unmounted {}",
        root.join("sys").display()
    );
    Ok(())
}
