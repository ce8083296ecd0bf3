//! gpuvirtd as the hook sees it: the few typed calls of gpuvirt-api it makes, each bounded
//! by the run's one deadline (libvirtd waits for the hook while it holds the domain's job).
//! No method is named by string here. May import: gpuvirt_api, crate::error.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use gpuvirt_api as api;
use tokio::time::Instant;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::error::HookError;

/// The errors that say nobody serves gpuvirt's name on the bus.
const NOT_THERE: [&str; 2] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
];

/// A connection to gpuvirtd with the instant every call must be answered by.
#[derive(Debug)]
pub struct Daemon {
    connection: zbus::Connection,
    bus: String,
    deadline: Instant,
    /// The whole budget, for messages.
    budget: Duration,
}

fn options() -> HashMap<&'static str, Value<'static>> {
    HashMap::new()
}

impl Daemon {
    /// Connects to the bus at `address`, else `DBUS_SYSTEM_BUS_ADDRESS` when set (libvirtd
    /// passes hooks only LC_ALL, LD_PRELOAD, LD_LIBRARY_PATH, PATH, HOME, USER, LOGNAME and
    /// TMPDIR, so normally it is not), else the default system bus socket.
    pub async fn connect(
        address: Option<&str>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Daemon, HookError> {
        let bus = address.map_or_else(|| "the system bus".to_owned(), |a| format!("bus at {a}"));
        let unreachable = |reason: String| HookError::Unreachable {
            bus: bus.clone(),
            reason,
        };
        let builder = match address {
            Some(a) => {
                zbus::connection::Builder::address(a).map_err(|e| unreachable(e.to_string()))?
            }
            None => zbus::connection::Builder::system().map_err(|e| unreachable(e.to_string()))?,
        };
        let connection = tokio::time::timeout_at(deadline, builder.build())
            .await
            .map_err(|_| HookError::Deadline {
                seconds: budget.as_secs_f64(),
                doing: format!("connecting to {bus}"),
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Daemon {
            connection,
            bus,
            deadline,
            budget,
        })
    }

    /// Moves the deadline (undoing after a failure gets a reserve of its own).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// `call`, answered before the deadline, its error in words.
    async fn within<T>(
        &self,
        doing: impl Into<String>,
        call: impl std::future::Future<Output = Result<T, api::Error>>,
    ) -> Result<T, HookError> {
        let doing = doing.into();
        match tokio::time::timeout_at(self.deadline, call).await {
            Err(_) => Err(HookError::Deadline {
                seconds: self.budget.as_secs_f64(),
                doing,
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.call_error(doing, e)),
        }
    }

    fn call_error(&self, doing: String, e: api::Error) -> HookError {
        use zbus::DBusError;
        match e {
            api::Error::ZBus(zbus::Error::MethodError(name, text, _))
                if NOT_THERE.contains(&name.as_str()) =>
            {
                HookError::Unreachable {
                    bus: self.bus.clone(),
                    reason: text.unwrap_or_else(|| "gpuvirtd is not running".into()),
                }
            }
            api::Error::ZBus(zbus::Error::MethodError(name, text, _)) => HookError::Call {
                doing,
                message: format!("{}: {}", name, text.unwrap_or_default()),
            },
            api::Error::ZBus(other) => HookError::Call {
                doing,
                message: other.to_string(),
            },
            own => HookError::Call {
                doing,
                message: own.description().unwrap_or_default().to_owned(),
            },
        }
    }

    async fn manager(&self) -> Result<api::ManagerProxy<'static>, HookError> {
        let proxy = api::ManagerProxy::builder(&self.connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build();
        self.within("reaching the Manager", async { Ok(proxy.await?) })
            .await
    }

    async fn gpu(&self, path: &str) -> Result<api::GpuProxy<'static>, HookError> {
        let built = async {
            Ok(api::GpuProxy::builder(&self.connection)
                .path(path.to_owned())?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?)
        };
        self.within(format!("reaching {path}"), built).await
    }

    /// Every persistent mdev definition (gpuvirt's and mdevctl's).
    pub async fn mdev_definitions(&self) -> Result<Vec<api::MdevDefinitionWire>, HookError> {
        let m = self.manager().await?;
        self.within(
            "listing mdev definitions",
            m.list_mdev_definitions(options()),
        )
        .await
    }

    /// The UUIDs of the mdevs that exist now.
    pub async fn active_mdevs(&self) -> Result<Vec<String>, HookError> {
        let m = self.manager().await?;
        let rows = self
            .within("listing mdevs", m.list_mdevs(options()))
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.6)
            .map(|r| r.1.to_ascii_lowercase())
            .collect())
    }

    /// The GPUs, mdev parents and IOMMU groups, with their properties.
    pub async fn objects(&self) -> Result<api::Objects, HookError> {
        let m = self.manager().await?;
        let wanted = [
            api::GPU_INTERFACE,
            api::SHARD_PARENT_INTERFACE,
            api::IOMMU_GROUP_INTERFACE,
        ];
        self.within("reading the GPUs", m.get_objects_typed(&wanted, options()))
            .await
    }

    /// Creates the defined mdev `uuid` (under `parent`, which picks one of several
    /// definitions).
    pub async fn start_mdev(&self, uuid: &str, parent: &str) -> Result<(), HookError> {
        let m = self.manager().await?;
        let mut opts = options();
        opts.insert("parent", Value::from(parent.to_owned()));
        self.within(format!("start mdev {uuid}"), m.start_mdev(uuid, opts))
            .await
            .map(|_| ())
    }

    /// Removes the mdev `uuid`, keeping its definition.
    pub async fn stop_mdev(&self, uuid: &str) -> Result<(), HookError> {
        let m = self.manager().await?;
        self.within(format!("stop mdev {uuid}"), m.stop_mdev(uuid, options()))
            .await
    }

    /// `AssignPassthrough` on the GPU at `path`; with `dry_run` only its checks (the plan
    /// text), else the whole job, followed to its end.
    pub async fn assign(&self, path: &str, address: &str, dry_run: bool) -> Result<(), HookError> {
        let gpu = self.gpu(path).await?;
        let mut opts = options();
        if dry_run {
            opts.insert("dry-run", Value::from(true));
        }
        let doing = format!("assign {address} to vfio-pci");
        let (job, _plan) = self
            .within(doing.clone(), gpu.assign_passthrough(opts))
            .await?;
        self.follow(job, doing).await
    }

    /// `ReturnToHost` on the GPU at `path`, followed to its end.
    pub async fn return_to_host(&self, path: &str, address: &str) -> Result<(), HookError> {
        let gpu = self.gpu(path).await?;
        let doing = format!("return {address} to the host");
        let (job, _plan) = self
            .within(doing.clone(), gpu.return_to_host(options()))
            .await?;
        self.follow(job, doing).await
    }

    /// Waits for the job at `job` (`/`: nothing ran) to end, before the deadline: subscribed
    /// to its `Completed` first, then its `Finished` read, so an end in between is not lost.
    async fn follow(&self, job: OwnedObjectPath, doing: String) -> Result<(), HookError> {
        if job.as_str() == "/" {
            return Ok(());
        }
        let wait = async {
            let proxy = api::JobProxy::builder(&self.connection)
                .path(job.clone())?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            let mut completed = proxy.receive_completed().await?;
            let props = api::read_job_properties(&self.connection, job.as_str()).await?;
            if props.finished {
                return Ok((props.success, props.message));
            }
            match completed.next().await {
                Some(signal) => {
                    let args = signal.args()?;
                    Ok((args.success, args.message))
                }
                None => Err(api::Error::ZBus(zbus::Error::Failure(format!(
                    "the connection ended while waiting for {job}"
                )))),
            }
        };
        let (success, message) = self.within(doing.clone(), wait).await?;
        if success {
            Ok(())
        } else {
            Err(HookError::Call { doing, message })
        }
    }
}
