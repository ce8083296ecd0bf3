//! Typed zbus proxies for every interface gpuvirtd serves: every method of
//! `dbus/org.gpuvirt.GpuVirt1.xml` with its argument and reply types, and the properties.
//! May import: crate::error, crate::names, crate::props, crate::wire.
//!
//! Each interface `X` comes three ways, generated from one method list so they cannot differ:
//! `XProxy` (methods and properties, plain calls), `XInteractiveProxy` (the same methods, sent
//! with ALLOW_INTERACTIVE_AUTHORIZATION: the caller can wait while polkit asks for a password)
//! and `XCalls`, which picks one of the two at run time, as a command line's
//! `--no-ask-password` does.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, Value};

use crate::error::Error;
use crate::props::{JobProps, ManagerProps, Objects};
use crate::wire::{GroupMemberWire, MdevDefinitionWire, MdevRowWire, TypeInfoWire};

/// Generates `$plain` (methods + properties), `$interactive` (the methods with
/// ALLOW_INTERACTIVE_AUTHORIZATION) and `$calls` (either, chosen per connection) from one list.
macro_rules! interface_proxies {
    (
        $(#[doc = $doc:tt])*
        interface $iface:tt $(, default_path $path:tt)?;
        $plain:ident => $plain_proxy:ident,
        $interactive:ident => $interactive_proxy:ident,
        $calls:ident;
        methods {
            $(
                $(#[doc = $mdoc:tt])*
                $(#[zbus($($zattr:tt)*)])?
                fn $method:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
        properties { $($props:tt)* }
    ) => {
        $(#[doc = $doc])*
        #[zbus::proxy(
            interface = $iface,
            default_service = "org.gpuvirt.GpuVirt1"
            $(, default_path = $path)?
        )]
        pub trait $plain {
            $(
                $(#[doc = $mdoc])*
                $(#[zbus($($zattr)*)])?
                fn $method(&self $(, $arg: $ty)*) -> $ret;
            )*
            $($props)*
        }

        #[doc = concat!("The methods of `", $iface, "`, sent with ALLOW_INTERACTIVE_AUTHORIZATION.")]
        #[zbus::proxy(
            interface = $iface,
            default_service = "org.gpuvirt.GpuVirt1",
            gen_blocking = false
            $(, default_path = $path)?
        )]
        pub trait $interactive {
            $(
                $(#[doc = $mdoc])*
                #[zbus(allow_interactive_auth $(, $($zattr)*)?)]
                fn $method(&self $(, $arg: $ty)*) -> $ret;
            )*
        }

        #[doc = concat!("The methods of `", $iface, "` on a proxy that caches no properties, ")]
        #[doc = "with or without ALLOW_INTERACTIVE_AUTHORIZATION as the caller chose."]
        #[derive(Debug, Clone)]
        pub enum $calls<'p> {
            Plain($plain_proxy<'p>),
            Interactive($interactive_proxy<'p>),
        }

        impl<'p> $calls<'p> {
            /// The object at `path`; `interactive`: polkit may ask the caller for a password.
            pub async fn new<P>(
                connection: &zbus::Connection,
                path: P,
                interactive: bool,
            ) -> zbus::Result<Self>
            where
                P: TryInto<zbus::zvariant::ObjectPath<'p>>,
                P::Error: Into<zbus::Error>,
            {
                let no_cache = zbus::proxy::CacheProperties::No;
                Ok(if interactive {
                    Self::Interactive(
                        $interactive_proxy::builder(connection)
                            .path(path)?
                            .cache_properties(no_cache)
                            .build()
                            .await?,
                    )
                } else {
                    Self::Plain(
                        $plain_proxy::builder(connection)
                            .path(path)?
                            .cache_properties(no_cache)
                            .build()
                            .await?,
                    )
                })
            }

            $(
                $(#[doc = $mdoc])*
                pub async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Self::Plain(p) => p.$method($($arg),*).await,
                        Self::Interactive(p) => p.$method($($arg),*).await,
                    }
                }
            )*
        }
    };
}

interface_proxies! {
    /// The Manager: host-wide facts, lookups, the policy and persistent mdev definitions.
    interface "org.gpuvirt.GpuVirt1.Manager", default_path "/org/gpuvirt/GpuVirt1/Manager";
    Manager => ManagerProxy,
    ManagerInteractive => ManagerInteractiveProxy,
    ManagerCalls;
    methods {
        /// The object of the GPU whose display function is `address` (`DDDD:BB:DD.F`).
        fn get_gpu_by_pci_address(&self, address: &str) -> Result<OwnedObjectPath, Error>;
        /// The object of the mdev `uuid`.
        fn get_mdev_by_uuid(&self, uuid: &str) -> Result<OwnedObjectPath, Error>;
        /// The objects carrying any of `interfaces` (all when empty) with every interface's
        /// properties, in the form of `GetManagedObjects`; no options are defined yet.
        fn get_objects(
            &self,
            interfaces: &[&str],
            options: HashMap<&str, Value<'_>>,
        ) -> Result<zbus::fdo::ManagedObjects, Error>;
        /// `GetObjects` decoded straight into the property structs ([`Objects`]), without a
        /// variant map per object.
        #[zbus(name = "GetObjects")]
        fn get_objects_typed(
            &self,
            interfaces: &[&str],
            options: HashMap<&str, Value<'_>>,
        ) -> Result<Objects, Error>;
        /// Every mdev as one typed row each, sorted by object path; no options are defined yet.
        fn list_mdevs(&self, options: HashMap<&str, Value<'_>>) -> Result<Vec<MdevRowWire>, Error>;
        /// Every diagnostic of the policy text `toml` against the live inventory, rendered
        /// compiler-style; empty when the policy is fine.
        fn validate_policy(&self, toml: &str) -> Result<Vec<String>, Error>;
        /// The plan for the policy in force: (human text, JSON).
        fn plan_policy(&self, options: HashMap<&str, Value<'_>>) -> Result<(String, String), Error>;
        /// Re-reads the policy file and applies it (PolicyInvalid keeps the previous one).
        fn reload_policy(&self, options: HashMap<&str, Value<'_>>) -> Result<(), Error>;
        /// Plans and applies the policy now: (success, report).
        fn reconcile(&self, options: HashMap<&str, Value<'_>>) -> Result<(bool, String), Error>;
        /// Defines a persistent mdev: (parent, type id or name, uuid or empty, options) → UUID.
        fn define_mdev(
            &self,
            parent: &str,
            mdev_type: &str,
            uuid: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<String, Error>;
        /// Drops an mdev's definition; an active mdev stays. Option `parent` (a string) picks
        /// one of a UUID defined under several parents.
        fn undefine_mdev(&self, uuid: &str, options: HashMap<&str, Value<'_>>) -> Result<(), Error>;
        /// Changes one of gpuvirt's definitions as `mdevctl modify` does (options `parent`,
        /// `type`, `auto`, `manual`, `addattr`+`value` [`index`], `delattr` [`index`],
        /// `jsonfile`, `live`, `dry-run`) → (parent, the definition as mdevctl's file).
        fn modify_mdev(
            &self,
            uuid: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<(String, String), Error>;
        /// Defines persistent mdevs from mdevctl's JSON, one definition or a `list --dumpjson`
        /// document, all or none: (parent, uuid, config, options) → the UUIDs, one per line.
        fn import_mdev_definition(
            &self,
            parent: &str,
            uuid: &str,
            config: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<String, Error>;
        /// Every persistent mdev definition, gpuvirt's and mdevctl's.
        fn list_mdev_definitions(
            &self,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<Vec<MdevDefinitionWire>, Error>;
        /// Creates a defined mdev (gpuvirt's or mdevctl's) and returns its object. Option
        /// `parent` (a string) picks one of a UUID defined under several parents.
        fn start_mdev(
            &self,
            uuid: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<OwnedObjectPath, Error>;
        /// Removes a defined mdev's device and keeps its definition.
        fn stop_mdev(&self, uuid: &str, options: HashMap<&str, Value<'_>>) -> Result<(), Error>;
        /// libvirt `<hostdev>` XML and QEMU arguments for a card, an NVIDIA VF vGPU or an mdev.
        fn render_hostdev(
            &self,
            target: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<(String, Vec<String>), Error>;
        /// `yes`, `challenge` or `no`: may the caller pass cards through and return them.
        fn can_passthrough(&self) -> Result<String, Error>;
        /// `yes`, `challenge` or `no`: may the caller create, remove and (un)define vGPUs.
        fn can_shard(&self) -> Result<String, Error>;
        /// `yes`, `challenge` or `no`: may the caller reload and apply the policy.
        fn can_manage_policy(&self) -> Result<String, Error>;
    }
    properties {
        #[zbus(property)]
        fn version(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn kernel_release(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn iommu_enabled(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn iommu_reasons(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn vfio_available(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn mdev_available(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn scan_warnings(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property(emits_changed_signal = "false"))]
        fn nvidia_vgpu_manager(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn policy_path(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn policy_error(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn enforcement_mode(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn reboot_required(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn reboot_reasons(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn drift(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn last_apply(&self) -> zbus::Result<String>;
    }
}

interface_proxies! {
    /// A GPU: its display function's facts and the other functions of its slot.
    interface "org.gpuvirt.GpuVirt1.Gpu";
    Gpu => GpuProxy,
    GpuInteractive => GpuInteractiveProxy,
    GpuCalls;
    methods {
        /// Gives every function of the slot to vfio-pci, as a job: (job, plan); option
        /// `dry-run`. Job `/` when nothing runs.
        fn assign_passthrough(
            &self,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<(OwnedObjectPath, String), Error>;
        /// Returns the slot's functions to their host drivers, as a job: (job, plan).
        fn return_to_host(
            &self,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<(OwnedObjectPath, String), Error>;
    }
    properties {
        #[zbus(property)]
        fn pci_address(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn vendor_id(&self) -> zbus::Result<u16>;
        #[zbus(property)]
        fn device_id(&self) -> zbus::Result<u16>;
        #[zbus(property)]
        fn subsystem_vendor_id(&self) -> zbus::Result<u16>;
        #[zbus(property)]
        fn subsystem_device_id(&self) -> zbus::Result<u16>;
        #[zbus(property)]
        fn vendor_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn product_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn subsystem_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn class_code(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn driver(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn driver_override(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn kernel_modules(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn boot_vga(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn numa_node(&self) -> zbus::Result<i32>;
        #[zbus(property)]
        fn reset_methods(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn iommu_group(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn companions(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn role(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn policy_rule(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn on_demand(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn owner(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn resource_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn physical_function(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn virtual_functions(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn sriov_total_vfs(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn sriov_num_vfs(&self) -> zbus::Result<u32>;
    }
}

interface_proxies! {
    /// Something that can be split into vGPUs: an mdev parent, an NVIDIA per-VF vGPU card or a
    /// plain SR-IOV card.
    interface "org.gpuvirt.GpuVirt1.ShardParent";
    ShardParent => ShardParentProxy,
    ShardParentInteractive => ShardParentInteractiveProxy,
    ShardParentCalls;
    methods {
        /// Creates an mdev of `mdev_type` (id or name) with `uuid` (empty: generated) and
        /// returns its object.
        fn create_mdev(
            &self,
            mdev_type: &str,
            uuid: &str,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<OwnedObjectPath, Error>;
    }
    properties {
        #[zbus(property)]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn backend(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn types(&self) -> zbus::Result<HashMap<String, TypeInfoWire>>;
        #[zbus(property)]
        fn children(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    }
}

/// An IOMMU group, its members and whether it can go to a VM as a whole. It has no methods.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.IommuGroup",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait IommuGroup {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn members(&self) -> zbus::Result<Vec<GroupMemberWire>>;
    #[zbus(property)]
    fn viable(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn viability_problems(&self) -> zbus::Result<Vec<String>>;
}

interface_proxies! {
    /// A mediated device.
    interface "org.gpuvirt.GpuVirt1.Mdev";
    Mdev => MdevProxy,
    MdevInteractive => MdevInteractiveProxy,
    MdevCalls;
    methods {
        /// Removes the mdev; option `force`: also one gpuvirt did not create.
        fn remove(&self, options: HashMap<&str, Value<'_>>) -> Result<(), Error>;
    }
    properties {
        #[zbus(property)]
        fn uuid(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn parent(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn parent_name(&self) -> zbus::Result<String>;
        #[zbus(property, name = "Type")]
        fn type_id(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn type_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn active(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn driver(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn iommu_group(&self) -> zbus::Result<OwnedObjectPath>;
        /// The number of the mdev's own IOMMU group, -1 when it has none.
        #[zbus(property)]
        fn iommu_group_id(&self) -> zbus::Result<i32>;
    }
}

/// A job of a long operation (`/org/gpuvirt/GpuVirt1/jobs/<n>`). Not in the introspection
/// XML: jobs exist only while one runs.
#[zbus::proxy(
    interface = "org.gpuvirt.GpuVirt1.Job",
    default_service = "org.gpuvirt.GpuVirt1"
)]
pub trait Job {
    /// Cancels the job if it has not started writing to the kernel yet; only the caller that
    /// started it may (not a polkit action).
    fn cancel(&self) -> Result<(), Error>;

    /// Sent once, when the job ends.
    #[zbus(signal)]
    fn completed(&self, success: bool, message: String) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn objects(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn finished(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn success(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn message(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.DBus.Properties.GetAll` on gpuvirtd's objects, its reply decoded straight
/// into a property struct: one call, and no property named by string at the caller.
#[zbus::proxy(
    interface = "org.freedesktop.DBus.Properties",
    default_service = "org.gpuvirt.GpuVirt1",
    gen_blocking = false
)]
trait TypedProperties {
    #[zbus(name = "GetAll")]
    fn get_all_manager(&self, interface: &str) -> zbus::Result<ManagerProps>;
    #[zbus(name = "GetAll")]
    fn get_all_job(&self, interface: &str) -> zbus::Result<JobProps>;
}

async fn typed_properties<'p>(
    connection: &zbus::Connection,
    path: OwnedObjectPath,
) -> zbus::Result<TypedPropertiesProxy<'p>> {
    TypedPropertiesProxy::builder(connection)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// Every property of the Manager, in one `GetAll`.
pub async fn read_manager_properties(connection: &zbus::Connection) -> zbus::Result<ManagerProps> {
    let path = OwnedObjectPath::try_from(crate::names::MANAGER_PATH)?;
    typed_properties(connection, path)
        .await?
        .get_all_manager(ManagerProps::INTERFACE)
        .await
}

/// Every property of the job at `path`, in one `GetAll`.
pub async fn read_job_properties(
    connection: &zbus::Connection,
    path: &str,
) -> zbus::Result<JobProps> {
    let path = OwnedObjectPath::try_from(path)?;
    typed_properties(connection, path)
        .await?
        .get_all_job(JobProps::INTERFACE)
        .await
}
