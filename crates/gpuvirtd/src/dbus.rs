//! The served D-Bus side: the Manager interface and applying tree changes to the object server.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gpuvirt_api::{self as api, CallError};
use gpuvirt_core::PciAddress;
use tokio::sync::watch;
use zbus::object_server::{Interface, InterfaceRef};
use zbus::zvariant::OwnedObjectPath;

use crate::objects::{
    Change, ChangedProperties, GpuInterface, Iface, IommuGroupInterface, Kind, Lookup,
    ManagerProps, MdevInterface, MdevRows, ObjectsReply, ShardParentInterface,
};

/// The served objects carrying any of `interfaces` (all when empty), from the actor's tree.
async fn tree_objects(
    commands: &tokio::sync::mpsc::Sender<crate::actor::Command>,
    interfaces: Vec<String>,
) -> Result<Vec<(OwnedObjectPath, crate::objects::ObjectSpec)>, CallError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let gone = || CallError::Fdo(zbus::fdo::Error::Failed("gpuvirtd is stopping".into()));
    commands
        .send(crate::actor::Command::Objects(interfaces, tx))
        .await
        .map_err(|_| gone())?;
    let objects = rx.await.map_err(|_| gone())?;
    // The tree's paths were made by api's path functions: always valid object paths.
    Ok(objects
        .into_iter()
        .filter_map(|(path, spec)| Some((OwnedObjectPath::try_from(path).ok()?, spec)))
        .collect())
}

/// Refuses any option, naming it, for the methods that define none yet (a typo is not
/// silently ignored).
pub(crate) fn no_options(
    method: &str,
    options: &HashMap<String, zbus::zvariant::OwnedValue>,
) -> Result<(), CallError> {
    match options.keys().next() {
        Some(name) => {
            // Quoted shortened: a caller's megabyte of text is not echoed back.
            let shown: String = name.chars().take(64).collect();
            Err(CallError::invalid_arg(
                "options",
                format!("unknown option '{shown}' ({method} takes none)"),
            ))
        }
        None => Ok(()),
    }
}

/// `org.freedesktop.DBus.ObjectManager` at the root, in place of zbus's own. zbus answers
/// `GetManagedObjects` by asking every object for a variant map of its properties while it
/// holds the object server's lock: on a host with thousands of objects that costs tens of
/// milliseconds and leaves the daemon's heap ~10 MiB larger for good (glibc keeps what the
/// maps used). This one answers from the actor's tree, serialised straight from the property
/// structs like `Manager.GetObjects`. zbus still emits `InterfacesAdded`/`InterfacesRemoved`
/// for it: it finds an object manager by the interface's name.
///
/// Objects without an interface of their own (the `gpus`, `mdevs` ... nodes) are not listed,
/// as GDBus (udisks, bolt) does not list them; zbus's listed them with no interfaces.
pub struct RootObjectManager {
    pub commands: tokio::sync::mpsc::Sender<crate::actor::Command>,
}

#[zbus::interface(name = "org.freedesktop.DBus.ObjectManager")]
impl RootObjectManager {
    /// Every object below the root: path → interface → properties.
    async fn get_managed_objects(
        &self,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> zbus::fdo::Result<ObjectsReply> {
        let manager = server
            .interface::<_, ManagerInterface>(api::MANAGER_PATH)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(format!("the Manager object is gone: {e}")))?;
        let emitter = zbus::object_server::SignalEmitter::new(connection, api::MANAGER_PATH)?;
        let props = manager
            .get()
            .await
            .get_all(server, connection, None, &emitter)
            .await?;
        let objects = tree_objects(&self.commands, Vec::new())
            .await
            .map_err(|e| match e {
                CallError::Fdo(e) => e,
                other => zbus::fdo::Error::Failed(other.to_string()),
            })?;
        Ok(ObjectsReply {
            manager: Some((
                OwnedObjectPath::from(zbus::zvariant::ObjectPath::from_static_str_unchecked(
                    api::MANAGER_PATH,
                )),
                props,
            )),
            objects,
        })
    }

    #[zbus(signal)]
    async fn interfaces_added(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        object_path: zbus::zvariant::ObjectPath<'_>,
        interfaces_and_properties: HashMap<
            zbus::names::InterfaceName<'_>,
            HashMap<&str, zbus::zvariant::Value<'_>>,
        >,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn interfaces_removed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        object_path: zbus::zvariant::ObjectPath<'_>,
        interfaces: Cow<'_, [zbus::names::InterfaceName<'_>]>,
    ) -> zbus::Result<()>;
}

/// `org.gpuvirt.GpuVirt1.Manager`.
#[derive(Debug)]
pub struct ManagerInterface {
    /// Behind its own lock, as the other interfaces' properties are: replacing them then
    /// needs only zbus's shared lock on the interface, which a Manager method waiting for the
    /// actor (Reconcile, DefineMdev) also holds; an exclusive lock would deadlock the actor.
    pub props: std::sync::RwLock<ManagerProps>,
    /// Which objects exist, published by the actor before it announces changes, so lookups
    /// never wait for it (and never hold this interface's lock while waiting).
    pub lookup: watch::Receiver<Arc<Lookup>>,
    /// The device policy's properties, published by the policy runtime.
    pub policy: watch::Receiver<crate::policy_runtime::PolicyProps>,
    /// Requests to the actor (policy methods).
    pub commands: tokio::sync::mpsc::Sender<crate::actor::Command>,
}

impl ManagerInterface {
    fn props(&self) -> std::sync::RwLockReadGuard<'_, ManagerProps> {
        // A writer only assigns whole properties: a poisoned lock still holds whole ones.
        self.props.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[zbus::interface(name = "org.gpuvirt.GpuVirt1.Manager")]
impl ManagerInterface {
    /// The object of the GPU whose display function is `address` (`DDDD:BB:DD.F`).
    async fn get_gpu_by_pci_address(&self, address: &str) -> Result<OwnedObjectPath, CallError> {
        let parsed: PciAddress = address
            .parse()
            .map_err(|e| CallError::invalid_arg("address", e))?;
        if self.lookup.borrow().gpus.contains(&parsed) {
            Ok(api::gpu_path(&parsed))
        } else {
            Err(CallError::no_such_device(format!(
                "no GPU at {parsed} (functions that are not display controllers have no GPU object)"
            )))
        }
    }

    /// The object of the mdev `uuid`.
    async fn get_mdev_by_uuid(&self, uuid: &str) -> Result<OwnedObjectPath, CallError> {
        let parsed: uuid::Uuid = uuid.parse().map_err(|_| {
            // Quoted shortened: a caller's megabyte of text is not echoed back.
            let shown: String = uuid.chars().take(64).collect();
            CallError::invalid_arg("uuid", format!("'{shown}' is not a UUID"))
        })?;
        if self.lookup.borrow().mdevs.contains(&parsed) {
            Ok(api::mdev_path(&parsed))
        } else {
            Err(CallError::no_such_device(format!("no mdev {parsed}")))
        }
    }

    /// The objects that carry any of `interfaces` (every object when empty; the Manager is
    /// not among them), with all their interfaces and properties, in the form of
    /// `GetManagedObjects`: one call instead of a
    /// `GetAll` per object, built from the daemon's own tree rather than by asking every
    /// object in turn. No options are defined yet.
    async fn get_objects(
        &self,
        interfaces: Vec<String>,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<ObjectsReply, CallError> {
        const OBJECT_INTERFACES: [&str; 4] = [
            api::GPU_INTERFACE,
            api::SHARD_PARENT_INTERFACE,
            api::IOMMU_GROUP_INTERFACE,
            api::MDEV_INTERFACE,
        ];
        if let Some(bad) = interfaces
            .iter()
            .find(|i| !OBJECT_INTERFACES.contains(&i.as_str()))
        {
            let shown: String = bad.chars().take(64).collect();
            return Err(CallError::invalid_arg(
                "interfaces",
                format!(
                    "'{shown}' is not an object interface of gpuvirtd (one of {})",
                    OBJECT_INTERFACES.join(", ")
                ),
            ));
        }
        no_options("GetObjects", &options)?;
        Ok(ObjectsReply {
            manager: None,
            objects: tree_objects(&self.commands, interfaces).await?,
        })
    }

    /// Every mdev as one typed row (object, uuid, parent object, parent name, type, type
    /// name, active, driver, IOMMU group id: the Mdev interface's properties less the
    /// `IommuGroup` path), sorted by object path, like systemd's `ListUnits`: a listing of
    /// thousands of mdevs without a variant per property. No options are defined yet.
    async fn list_mdevs(
        &self,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<MdevRows, CallError> {
        no_options("ListMdevs", &options)?;
        let objects = tree_objects(&self.commands, vec![api::MDEV_INTERFACE.to_owned()]).await?;
        Ok(MdevRows(
            objects
                .into_iter()
                .filter_map(|(path, spec)| Some((path, spec.mdev?)))
                .collect(),
        ))
    }

    /// Parses and validates `toml` against the live inventory: every diagnostic, rendered
    /// compiler-style (`policy.toml:LINE:COL: error: ...`); empty when the policy is fine.
    async fn validate_policy(&self, toml: &str) -> Result<Vec<String>, CallError> {
        crate::policy_runtime::dbus::validate(&self.commands, toml).await
    }

    /// The plan for the policy in force against the live host: (human text, JSON).
    async fn plan_policy(
        &self,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(String, String), CallError> {
        crate::policy_runtime::dbus::plan(&self.commands, options).await
    }

    /// Re-reads the policy file and applies it; an invalid file is rejected with
    /// `PolicyInvalid` and the previous policy stays in force.
    async fn reload_policy(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(), CallError> {
        crate::mutate::authorize_manager(&header, "Manager.ReloadPolicy", &options).await?;
        crate::policy_runtime::dbus::reload(&self.commands, options).await
    }

    /// Plans and applies the policy now (in `monitor` mode too): (success, report of what
    /// was done, what failed and what was not attempted). A plan of mdev creations only
    /// replies once the kernel lists every new mdev; their objects follow right after
    /// (InterfacesAdded), as the parents' new instance counts do.
    async fn reconcile(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(bool, String), CallError> {
        crate::mutate::authorize_manager(&header, "Manager.Reconcile", &options).await?;
        crate::policy_runtime::dbus::reconcile(&self.commands, options).await
    }

    #[zbus(property)]
    fn policy_path(&self) -> String {
        self.policy.borrow().policy_path.clone()
    }

    #[zbus(property)]
    fn policy_error(&self) -> String {
        self.policy.borrow().policy_error.clone()
    }

    #[zbus(property)]
    fn enforcement_mode(&self) -> String {
        self.policy.borrow().enforcement_mode.clone()
    }

    #[zbus(property)]
    fn reboot_required(&self) -> bool {
        self.policy.borrow().reboot_required
    }

    #[zbus(property)]
    fn reboot_reasons(&self) -> Vec<String> {
        self.policy.borrow().reboot_reasons.clone()
    }

    #[zbus(property)]
    fn drift(&self) -> Vec<String> {
        self.policy.borrow().drift.clone()
    }

    #[zbus(property)]
    fn last_apply(&self) -> String {
        self.policy.borrow().last_apply.clone()
    }

    /// Defines a persistent mdev (mdevctl define): (parent, type id or name, uuid or empty,
    /// options `auto` (default true)) → its UUID. An auto definition starts now if its
    /// parent is present, and again whenever the parent appears.
    async fn define_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        parent: &str,
        mdev_type: &str,
        uuid: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<String, CallError> {
        crate::mutate::define_mdev(parent, mdev_type, uuid, &header, options).await
    }

    /// Drops an mdev's definition; an active mdev stays (mdevctl undefine).
    async fn undefine_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(), CallError> {
        crate::mutate::undefine_mdev(uuid, &header, options).await
    }

    /// Defines a persistent mdev from mdevctl's file format, as `mdevctl define` reads a JSON
    /// file: (parent, uuid or empty, the JSON of `/etc/mdevctl.d/<parent>/<uuid>` with
    /// `mdev_type`, `start` `auto`|`manual` and ordered `attrs`, options) → its UUID. The
    /// definition is gpuvirt's from then on; an auto one starts now if its parent is present.
    async fn import_mdev_definition(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        parent: &str,
        uuid: &str,
        config: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<String, CallError> {
        crate::mutate::import_mdev_definition(parent, uuid, config, &header, options).await
    }

    /// Every persistent mdev definition: gpuvirt's own and mdevctl's (`/etc/mdevctl.d`), each
    /// (uuid, parent, type, owner `gpuvirt`|`mdevctl`, start `auto`|`manual`, attrs as ordered
    /// (name, value) pairs, active), sorted by parent and UUID. No options are defined yet.
    async fn list_mdev_definitions(
        &self,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<Vec<api::MdevDefinitionWire>, CallError> {
        crate::mutate::list_mdev_definitions(options).await
    }

    /// Creates a defined mdev (mdevctl start) and returns its object.
    async fn start_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<OwnedObjectPath, CallError> {
        crate::mutate::start_mdev(uuid, &header, options).await
    }

    /// Removes a defined mdev's device and keeps its definition (mdevctl stop).
    async fn stop_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(), CallError> {
        crate::mutate::stop_mdev(uuid, &header, options).await
    }

    /// libvirt `<hostdev>` XML and QEMU arguments for `target`: a card (PCI address), an
    /// NVIDIA per-VF vGPU (its VF) or an mdev (UUID). Option `x-vga` for a card.
    async fn render_hostdev(
        &self,
        target: &str,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<(String, Vec<String>), CallError> {
        crate::mutate::render_hostdev(target, options).await
    }

    #[zbus(property)]
    fn version(&self) -> String {
        self.props().version.clone()
    }

    #[zbus(property)]
    fn kernel_release(&self) -> String {
        self.props().kernel_release.clone()
    }

    #[zbus(property)]
    fn iommu_enabled(&self) -> bool {
        self.props().iommu_enabled
    }

    #[zbus(property)]
    fn iommu_reasons(&self) -> Vec<String> {
        self.props().iommu_reasons.clone()
    }

    #[zbus(property)]
    fn vfio_available(&self) -> bool {
        self.props().vfio_available
    }

    #[zbus(property)]
    fn mdev_available(&self) -> bool {
        self.props().mdev_available
    }

    #[zbus(property)]
    fn scan_warnings(&self) -> Vec<String> {
        self.props().scan_warnings.clone()
    }
}

/// Serves `changes` in order: adding/removing an interface makes zbus emit
/// InterfacesAdded/Removed on the ObjectManager; an update replaces the properties and emits
/// one PropertiesChanged with exactly the changed ones.
pub async fn apply(server: &zbus::ObjectServer, changes: Vec<Change>) -> zbus::Result<()> {
    for change in changes {
        match change {
            Change::Added { path, iface } => {
                let path = path.as_str();
                match iface {
                    Iface::Gpu(p) => server.at(path, GpuInterface::new(p)).await?,
                    Iface::ShardParent(p) => server.at(path, ShardParentInterface::new(p)).await?,
                    Iface::IommuGroup(p) => server.at(path, IommuGroupInterface::new(p)).await?,
                    Iface::Mdev(p) => server.at(path, MdevInterface::new(p)).await?,
                    // The Manager is served from start-up and only ever updated.
                    Iface::Manager(_) => false,
                };
            }
            Change::Removed { path, kind } => {
                let path = path.as_str();
                match kind {
                    Kind::Gpu => server.remove::<GpuInterface, _>(path).await?,
                    Kind::ShardParent => server.remove::<ShardParentInterface, _>(path).await?,
                    Kind::IommuGroup => server.remove::<IommuGroupInterface, _>(path).await?,
                    Kind::Mdev => server.remove::<MdevInterface, _>(path).await?,
                };
            }
            Change::Updated {
                path,
                iface,
                changed,
            } => {
                let path = path.as_str();
                match iface {
                    Iface::Gpu(p) => {
                        let r = server.interface::<_, GpuInterface>(path).await?;
                        r.get().await.replace(p);
                        emit(&r, changed).await?;
                    }
                    Iface::ShardParent(p) => {
                        let r = server.interface::<_, ShardParentInterface>(path).await?;
                        r.get().await.replace(p);
                        emit(&r, changed).await?;
                    }
                    Iface::IommuGroup(p) => {
                        let r = server.interface::<_, IommuGroupInterface>(path).await?;
                        r.get().await.replace(p);
                        emit(&r, changed).await?;
                    }
                    Iface::Mdev(p) => {
                        let r = server.interface::<_, MdevInterface>(path).await?;
                        r.get().await.replace(p);
                        emit(&r, changed).await?;
                    }
                    Iface::Manager(p) => {
                        let r = server.interface::<_, ManagerInterface>(path).await?;
                        *r.get()
                            .await
                            .props
                            .write()
                            .unwrap_or_else(|e| e.into_inner()) = p;
                        emit(&r, changed).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn emit<I: Interface>(
    iface: &InterfaceRef<I>,
    changed: ChangedProperties,
) -> zbus::Result<()> {
    let map: HashMap<&str, zbus::zvariant::Value<'_>> = changed.into_iter().collect();
    zbus::fdo::Properties::properties_changed(
        iface.signal_emitter(),
        I::name(),
        map,
        Cow::Borrowed(&[]),
    )
    .await
}
