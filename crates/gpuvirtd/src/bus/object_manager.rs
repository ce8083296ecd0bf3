//! `org.freedesktop.DBus.ObjectManager` at the root, in place of zbus's own. zbus answers
//! `GetManagedObjects` by asking every object for a variant map of its properties while it
//! holds the object server's lock: on a host with thousands of objects that costs tens of
//! milliseconds and leaves the daemon's heap ~10 MiB larger for good (glibc keeps what the
//! maps used). This one answers from the actor's tree, serialised straight from the property
//! structs like `Manager.GetObjects`. zbus still emits `InterfacesAdded`/`InterfacesRemoved`
//! for it: it finds an object manager by the interface's name.
//!
//! Objects without an interface of their own (the `gpus`, `mdevs` ... nodes) are not listed,
//! as GDBus (udisks, bolt) does not list them; zbus's listed them with no interfaces.
//! May import: bus/manager.rs, bus/wire.rs, bus/services.rs, crate::actor.

use std::borrow::Cow;
use std::collections::HashMap;

use gpuvirt_api as api;
use zbus::object_server::Interface;
use zbus::zvariant::OwnedObjectPath;

use super::manager::ManagerInterface;
use super::services::tree_objects;
use super::wire::ObjectsReply;
use crate::actor::ActorHandle;

/// The root's ObjectManager.
pub struct RootObjectManager {
    pub actor: ActorHandle,
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
        let objects = tree_objects(&self.actor, Vec::new()).await?;
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
