//! The served object interfaces (Gpu, ShardParent, IommuGroup, Mdev): their properties come
//! from the tree, their methods hand over to `bus/mutators.rs` with the [`Services`] each
//! object is given.
//! May import: crate::tree (property structs), crate::auth (Method), bus/mutators.rs,
//! bus/services.rs.

use std::collections::HashMap;
use std::sync::Arc;

use gpuvirt_api as api;
use gpuvirt_api::{GroupMemberWire, TypeInfoWire};
use zbus::zvariant::OwnedObjectPath;

use super::mutators;
use super::services::Services;
use crate::auth::Method;
use crate::tree::{GpuProps, IommuGroupProps, MdevProps, ShardParentProps};

/// Defines the zbus interface serving one of gpuvirt-api's properties structs, from the
/// property list that defines the struct (`api::gpu_properties!` and its siblings), so the
/// list exists exactly once for the daemon and the CLI.
macro_rules! read_only_interface {
    (
        $props:ident, $name:tt {
            $( $(#[$meta:meta])* $field:ident : $ty:ty => $dbus:tt ),* $(,)?
        }
        $(#[$doc:meta])*
        $iface:ident
        $( methods { $($methods:tt)* } )?
    ) => {
        $(#[$doc])*
        ///
        /// The served object; the actor replaces the properties and then emits
        /// PropertiesChanged. The properties are shared with the actor's tree, not copied.
        /// They sit behind their own lock so that replacing them needs only zbus's shared
        /// (read) lock on the interface: a method call that waits (polkit, a job) holds that
        /// lock too, and an exclusive lock here would stall the actor behind it (or deadlock,
        /// if the method waits for the actor).
        #[derive(Debug)]
        pub struct $iface {
            props: std::sync::RwLock<Arc<$props>>,
            #[allow(dead_code)]
            services: Arc<Services>,
        }

        impl $iface {
            pub fn new(props: Arc<$props>, services: Arc<Services>) -> Self {
                Self {
                    props: std::sync::RwLock::new(props),
                    services,
                }
            }

            /// The properties served now.
            pub fn props(&self) -> Arc<$props> {
                // A writer only swaps an Arc and cannot panic half-way: a poisoned lock
                // still holds whole properties.
                self.props.read().unwrap_or_else(|e| e.into_inner()).clone()
            }

            pub fn replace(&self, props: Arc<$props>) {
                *self.props.write().unwrap_or_else(|e| e.into_inner()) = props;
            }
        }

        #[zbus::interface(name = $name)]
        impl $iface {
            $(
                $(#[$meta])*
                #[zbus(property(emits_changed_signal = "true"), name = $dbus)]
                fn $field(&self) -> $ty {
                    self.props().$field.clone()
                }
            )*
            $( $($methods)* )?
        }
    };
}

api::gpu_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.Gpu`: a display function and its slot.
    GpuInterface
    methods {
        /// Gives every function of the card's slot to vfio-pci, as a job: returns (job, plan).
        /// Option `dry-run`: only the plan, job `/`. A card already assigned also answers job
        /// `/` and says so in the plan. See crate::mutate.
        async fn assign_passthrough(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(OwnedObjectPath, String), api::CallError> {
            let address = self.props().pci_address.clone();
            mutators::slot(&self.services, Method::AssignPassthrough, &address, &header, options)
                .await
        }

        /// Returns the slot's functions to the drivers gpuvirt found on them, as a job:
        /// returns (job, plan); `dry-run` as for AssignPassthrough.
        async fn return_to_host(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(OwnedObjectPath, String), api::CallError> {
            let address = self.props().pci_address.clone();
            mutators::slot(&self.services, Method::ReturnToHost, &address, &header, options)
                .await
        }
    }
});

api::shard_parent_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.ShardParent`: what a card can be split into and its children.
    ShardParentInterface
    methods {
        /// Creates an mdev of `type` (id or name) with `uuid` (empty: generated) and returns
        /// its object path.
        async fn create_mdev(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            mdev_type: &str,
            uuid: &str,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<OwnedObjectPath, api::CallError> {
            let parent = self.props().name.clone();
            mutators::create_mdev(&self.services, &parent, mdev_type, uuid, &header, options)
                .await
        }
    }
});

api::iommu_group_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.IommuGroup`.
    IommuGroupInterface
});

api::mdev_properties!(read_only_interface {
    /// `org.gpuvirt.GpuVirt1.Mdev`.
    MdevInterface
    methods {
        /// Removes the mdev. Option `force`: also one gpuvirt did not create.
        async fn remove(
            &self,
            #[zbus(header)] header: zbus::message::Header<'_>,
            options: HashMap<String, zbus::zvariant::OwnedValue>,
        ) -> Result<(), api::CallError> {
            let uuid = self.props().uuid.clone();
            mutators::remove_mdev(&self.services, &uuid, &header, options).await
        }
    }
});
