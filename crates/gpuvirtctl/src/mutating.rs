//! The mutating commands (`passthrough`, `return`, `mdev ...`) and the commands built on
//! read-only Manager calls (`xml`, `qemu-args`, `doctor`): their clap definitions and dispatch.
//! Each is a thin D-Bus call; the daemon validates, authorizes and acts.

use std::collections::HashMap;

use gpuvirt_api as api;
use zbus::zvariant::Value;

use crate::errors::{classify, CliError};
use crate::view::Host;
use crate::{doctor, mdev, passthrough, render};

#[derive(Debug, clap::Subcommand)]
pub enum MutateCommand {
    /// Hand a GPU (and its IOMMU group's slot) to vfio-pci for a VM; waits for the job.
    Passthrough {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F).
        address: String,
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give a passed-through GPU back to its host drivers; waits for the job.
    Return {
        /// PCI address, DDDD:BB:DD.F (or BB:DD.F).
        address: String,
        /// Only print what would be done.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create, remove, define, start, stop, list and export mediated devices (vGPUs).
    Mdev {
        #[command(subcommand)]
        command: mdev::MdevCommand,
    },
    /// Print the libvirt <hostdev> XML for a GPU (PCI address) or a vGPU (UUID).
    Xml {
        /// PCI address or mdev UUID.
        target: String,
        /// Mark the card as the guest's primary VGA (x-vga=on).
        #[arg(long)]
        x_vga: bool,
    },
    /// Print the QEMU command-line arguments for a GPU (PCI address) or a vGPU (UUID).
    QemuArgs {
        /// PCI address or mdev UUID.
        target: String,
        /// Mark the card as the guest's primary VGA (x-vga=on).
        #[arg(long)]
        x_vga: bool,
    },
    /// Check whether this host can pass GPUs through: IOMMU, vfio, each GPU's IOMMU group.
    /// Exits 1 when something blocks passthrough.
    Doctor {
        #[arg(long)]
        json: bool,
    },
}

/// Everything a command needs to talk to the daemon and describe failures.
pub struct Ctx<'a> {
    pub connection: &'a zbus::Connection,
    /// The bus in words, for error messages.
    pub bus: &'a str,
    /// Sets ALLOW_INTERACTIVE_AUTHORIZATION on calls: polkit may ask for a password (not
    /// with `--no-ask-password`).
    pub allow_interactive_auth: bool,
}

impl Ctx<'_> {
    pub fn error(&self, e: zbus::Error) -> CliError {
        classify(e, self.bus)
    }

    /// Calls `interface.method(args)` on gpuvirtd's object `path` and decodes the reply.
    pub async fn call<A, R>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        args: &A,
    ) -> Result<R, CliError>
    where
        A: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let proxy = zbus::proxy::Builder::<zbus::Proxy<'_>>::new(self.connection)
            .destination(api::BUS_NAME)
            .and_then(|b| b.path(path))
            .and_then(|b| b.interface(interface))
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
            .map_err(|e| self.error(e))?
            .build()
            .await
            .map_err(|e| self.error(e))?;
        // ALLOW_INTERACTIVE_AUTHORIZATION tells the daemon the caller can wait for polkit to
        // ask someone (what `sd_bus_set_allow_interactive_authorization` does for systemctl).
        let flags = if self.allow_interactive_auth {
            zbus::proxy::MethodFlags::AllowInteractiveAuth.into()
        } else {
            Default::default()
        };
        proxy
            .call_with_flags(method, flags, args)
            .await
            .map_err(|e| self.error(e))?
            .ok_or_else(|| CliError::Call(format!("{interface}.{method} sent no reply")))
    }

    /// Like [`Ctx::call`] for methods that return nothing.
    pub async fn call_unit<A>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        args: &A,
    ) -> Result<(), CliError>
    where
        A: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.call::<A, ()>(path, interface, method, args).await
    }

    /// The whole object tree, as the read commands see it.
    pub async fn host(&self) -> Result<Host, CliError> {
        crate::view::fetch_objects(self.connection, &[])
            .await
            .map_err(|e| self.error(e))
    }
}

/// The `a{sv}` options of a call: only the flags that are set (the daemon's defaults apply to
/// the rest).
pub fn options<'v>(flags: &[(&'static str, Option<bool>)]) -> HashMap<&'static str, Value<'v>> {
    flags
        .iter()
        .filter_map(|(k, v)| v.map(|b| (*k, Value::Bool(b))))
        .collect()
}

impl MutateCommand {
    /// Whether gpuvirtd asks polkit before doing this (so a password prompt may be needed).
    /// Dry runs are answered before authorization; reads never are authorized.
    pub fn needs_authorization(&self) -> bool {
        match self {
            MutateCommand::Passthrough { dry_run, .. } | MutateCommand::Return { dry_run, .. } => {
                !dry_run
            }
            // Anything but the reads, so a new mdev mutator is covered without a change here.
            MutateCommand::Mdev { command } => !matches!(
                command,
                mdev::MdevCommand::List { .. } | mdev::MdevCommand::Export { .. }
            ),
            MutateCommand::Xml { .. }
            | MutateCommand::QemuArgs { .. }
            | MutateCommand::Doctor { .. } => false,
        }
    }
}

pub async fn run(ctx: &Ctx<'_>, command: MutateCommand) -> Result<(), CliError> {
    match command {
        MutateCommand::Passthrough {
            address,
            dry_run,
            json,
        } => passthrough::run(ctx, passthrough::Direction::Assign, &address, dry_run, json).await,
        MutateCommand::Return {
            address,
            dry_run,
            json,
        } => passthrough::run(ctx, passthrough::Direction::Return, &address, dry_run, json).await,
        MutateCommand::Mdev { command } => mdev::run(ctx, command).await,
        MutateCommand::Xml { target, x_vga } => {
            render::run(ctx, &target, x_vga, render::Output::Xml).await
        }
        MutateCommand::QemuArgs { target, x_vga } => {
            render::run(ctx, &target, x_vga, render::Output::QemuArgs).await
        }
        MutateCommand::Doctor { json } => doctor::run(ctx, json).await,
    }
}

pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    crate::out::json(value)
}
