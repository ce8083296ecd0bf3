//! The connection to gpuvirtd and what every command shares to talk to it: [`Ctx`] with the
//! typed proxies of gpuvirt-api, [`options`] and [`print_json`]. May import: crate::errors,
//! crate::view, crate::out.
//!
//! Every call goes through a typed proxy of gpuvirt-api: no method or interface is named here.
//! Calls that gpuvirtd may authorize go through [`Ctx::manager`], [`Ctx::gpu`],
//! [`Ctx::shard_parent`] and [`Ctx::mdev`], which set ALLOW_INTERACTIVE_AUTHORIZATION unless
//! the user said `--no-ask-password`; lookups and listings never carry it.

use std::collections::HashMap;
use std::future::Future;

use gpuvirt_api as api;
use serde::Serialize;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::errors::{classify, classify_api, CliError};
use crate::view::{Host, MdevView};

/// Connects to the system bus, the session bus or the bus at `address`; also returns the bus
/// in words, for messages.
pub async fn connect(
    address: Option<&str>,
    session: bool,
) -> Result<(zbus::Connection, String), CliError> {
    let (address, bus) = match (address, session) {
        (Some(a), _) => (a.parse::<zbus::Address>(), format!("bus at {a}")),
        (None, true) => (zbus::Address::session(), "session bus".into()),
        (None, false) => (zbus::Address::system(), "system bus".into()),
    };
    let failed = |reason: String| CliError::Connect {
        bus: bus.clone(),
        reason,
    };
    let address = address.map_err(|e| failed(e.to_string()))?;
    let builder = match unix_socket(&address) {
        // A local socket is connected here, synchronously: zbus would hand the connect(2)
        // to a blocking-pool thread, and creating that thread and joining it at exit cost
        // more than the whole method call in a one-call process (`gpuvirtctl mdev create`).
        Some(path) => {
            let stream = path.connect().map_err(|e| failed(e.to_string()))?;
            zbus::connection::Builder::unix_stream(stream)
        }
        None => zbus::connection::Builder::address(address).map_err(|e| failed(e.to_string()))?,
    };
    let connection = builder.build().await.map_err(|e| failed(e.to_string()))?;
    Ok((connection, bus))
}

/// A unix socket a bus address names directly (a file or an abstract name).
enum UnixPath {
    File(std::path::PathBuf),
    Abstract(std::ffi::OsString),
}

impl UnixPath {
    /// Connects now (a unix socket's connect(2) does not wait) and hands the stream to tokio.
    fn connect(&self) -> std::io::Result<tokio::net::UnixStream> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixStream};
        let addr = match self {
            UnixPath::File(path) => SocketAddr::from_pathname(path)?,
            UnixPath::Abstract(name) => SocketAddr::from_abstract_name(name.as_encoded_bytes())?,
        };
        let stream = UnixStream::connect_addr(&addr)?;
        stream.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(stream)
    }
}

/// The socket of a `unix:path=` or `unix:abstract=` address; anything else (tcp, unix:dir,
/// ...) is left to zbus.
fn unix_socket(address: &zbus::Address) -> Option<UnixPath> {
    use zbus::address::transport::{Transport, UnixSocket};
    match address.transport() {
        Transport::Unix(unix) => match unix.path() {
            UnixSocket::File(path) => Some(UnixPath::File(path.clone())),
            UnixSocket::Abstract(name) => Some(UnixPath::Abstract(name.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// Everything a command needs to talk to the daemon and describe failures.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub connection: &'a zbus::Connection,
    /// The bus in words, for error messages.
    pub bus: &'a str,
    /// Sets ALLOW_INTERACTIVE_AUTHORIZATION on calls: polkit may ask for a password (not
    /// with `--no-ask-password`).
    pub allow_interactive_auth: bool,
}

impl Ctx<'_> {
    /// A failed D-Bus call in plain words.
    pub fn error(&self, e: zbus::Error) -> CliError {
        classify(e, self.bus)
    }

    /// A failed typed call (gpuvirt's own error or a transport one) in plain words.
    pub fn api_error(&self, e: api::Error) -> CliError {
        classify_api(e, self.bus)
    }

    /// The Manager, for its methods, with interactive authorization as the user chose.
    pub async fn manager(&self) -> Result<api::ManagerCalls<'static>, CliError> {
        api::ManagerCalls::new(
            self.connection,
            api::MANAGER_PATH,
            self.allow_interactive_auth,
        )
        .await
        .map_err(|e| self.error(e))
    }

    /// The GPU object at `path`, for its methods.
    pub async fn gpu(&self, path: &str) -> Result<api::GpuCalls<'static>, CliError> {
        api::GpuCalls::new(
            self.connection,
            path.to_owned(),
            self.allow_interactive_auth,
        )
        .await
        .map_err(|e| self.error(e))
    }

    /// The ShardParent object at `path`, for its methods.
    pub async fn shard_parent(
        &self,
        path: &str,
    ) -> Result<api::ShardParentCalls<'static>, CliError> {
        api::ShardParentCalls::new(
            self.connection,
            path.to_owned(),
            self.allow_interactive_auth,
        )
        .await
        .map_err(|e| self.error(e))
    }

    /// The Mdev object at `path`, for its methods.
    pub async fn mdev(&self, path: &str) -> Result<api::MdevCalls<'static>, CliError> {
        api::MdevCalls::new(
            self.connection,
            path.to_owned(),
            self.allow_interactive_auth,
        )
        .await
        .map_err(|e| self.error(e))
    }

    /// The Manager for lookups and listings: reads, never authorized, so no interactive flag.
    async fn reader(&self) -> Result<api::ManagerCalls<'static>, CliError> {
        api::ManagerCalls::new(self.connection, api::MANAGER_PATH, false)
            .await
            .map_err(|e| self.error(e))
    }

    /// Calls a method on the first object of `paths` that answers, else on the one `lookup`
    /// names. The paths are where the target must live if it exists (gpuvirt-api's `gpu_path_for`,
    /// `mdev_path_for`, ...), so the usual call is one trip; only when no object answers there
    /// (UnknownObject, UnknownInterface: nothing was called) does `lookup` run, and its error
    /// is the one the user sees, word for word as when every call started with the lookup.
    pub async fn call_at<T, C, F, L>(
        &self,
        paths: impl IntoIterator<Item = OwnedObjectPath>,
        lookup: L,
        call: C,
    ) -> Result<T, CliError>
    where
        C: Fn(OwnedObjectPath) -> F,
        F: Future<Output = Result<T, CliError>>,
        L: Future<Output = Result<OwnedObjectPath, CliError>>,
    {
        for path in paths {
            match call(path).await {
                Err(e) if is_missing_object(&e) => continue,
                done => return done,
            }
        }
        call(lookup.await?).await
    }

    /// The object of the GPU at `address` (`Manager.GetGpuByPciAddress`).
    pub async fn gpu_by_address(&self, address: &str) -> Result<OwnedObjectPath, CliError> {
        self.reader()
            .await?
            .get_gpu_by_pci_address(address)
            .await
            .map_err(|e| self.api_error(e))
    }

    /// The object of the mdev `uuid` (`Manager.GetMdevByUuid`).
    pub async fn mdev_by_uuid(&self, uuid: &str) -> Result<OwnedObjectPath, CliError> {
        self.reader()
            .await?
            .get_mdev_by_uuid(uuid)
            .await
            .map_err(|e| self.api_error(e))
    }

    /// The objects carrying any of `interfaces` (every object when empty), with all their
    /// interfaces (a GPU's ShardParent comes with it), read with one `Manager.GetObjects` call:
    /// gpuvirtd answers from its own tree. `GetManagedObjects` would make it gather every object
    /// of the host (on a 5000-function host most of them IOMMU groups nobody asked for), and a
    /// `GetAll` per object costs a bus round trip each (a stock system bus lets one connection
    /// await only 128 replies). The reply is decoded straight into gpuvirt-api's property
    /// structs (no variant map per object).
    pub async fn objects(&self, interfaces: &[&str]) -> Result<Host, CliError> {
        let objects = self
            .reader()
            .await?
            .get_objects_typed(interfaces, HashMap::new())
            .await
            .map_err(|e| self.api_error(e))?;
        Ok(Host::from_objects(objects))
    }

    /// The whole object tree, as the read commands see it.
    pub async fn host(&self) -> Result<Host, CliError> {
        self.objects(&[]).await
    }

    /// Every mdev, read with one `Manager.ListMdevs` call (a typed row each: on a host with
    /// thousands of mdevs, `GetObjects`' variant per property was most of the cost of reading
    /// them, in gpuvirtd, the bus and here), sorted by parent and UUID.
    pub async fn mdevs(&self) -> Result<Vec<MdevView>, CliError> {
        let rows = self
            .reader()
            .await?
            .list_mdevs(HashMap::new())
            .await
            .map_err(|e| self.api_error(e))?;
        Ok(MdevView::from_rows(rows))
    }

    /// The UUID of the mdev object at `path` (its `Uuid` property, read once, uncached).
    pub async fn mdev_uuid(&self, path: &str) -> Result<String, CliError> {
        let proxy = api::MdevProxy::builder(self.connection)
            .path(path.to_owned())
            .map_err(|e| self.error(e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| self.error(e))?;
        proxy.uuid().await.map_err(|e| self.error(e))
    }

    /// Every property of the Manager in one `GetAll`.
    pub async fn manager_properties(&self) -> Result<api::ManagerProps, CliError> {
        api::read_manager_properties(self.connection)
            .await
            .map_err(|e| self.error(e))
    }
}

/// Whether a call failed because no object (or no such interface on it) was at the path: the
/// bus answered, the daemon's method never ran.
fn is_missing_object(e: &CliError) -> bool {
    matches!(e, CliError::Dbus { name, .. }
        if name == api::UNKNOWN_OBJECT_ERROR || name == api::UNKNOWN_INTERFACE_ERROR)
}

/// The `a{sv}` options of a call: only the flags that are set (the daemon's defaults apply to
/// the rest).
pub fn options<'v>(flags: &[(&'static str, Option<bool>)]) -> HashMap<&'static str, Value<'v>> {
    flags
        .iter()
        .filter_map(|(k, v)| v.map(|b| (*k, Value::Bool(b))))
        .collect()
}

/// `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    crate::out::json(value)
}
