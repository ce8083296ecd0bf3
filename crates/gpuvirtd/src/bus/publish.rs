//! The one route out for served properties: [`BusSink`] implements the tree's `Sink` on the
//! object server. Adding or removing an interface makes zbus emit InterfacesAdded/Removed on
//! the ObjectManager; an update replaces the properties and emits one PropertiesChanged with
//! exactly the changed ones (the Manager's policy half included).
//! May import: bus/interfaces.rs, bus/manager.rs, bus/services.rs, crate::tree.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use zbus::object_server::{Interface, InterfaceRef};

use super::interfaces::{GpuInterface, IommuGroupInterface, MdevInterface, ShardParentInterface};
use super::manager::ManagerInterface;
use super::services::Services;
use crate::tree::{Change, ChangedProperties, Iface, Kind, Sink, SinkFuture};

/// Serves the tree's changes on `server`; new interfaces get `services`.
#[derive(Debug)]
pub struct BusSink {
    pub server: zbus::ObjectServer,
    pub services: Arc<Services>,
}

impl Sink for BusSink {
    fn apply(&self, changes: Vec<Change>) -> SinkFuture<'_> {
        Box::pin(async move {
            apply(&self.server, &self.services, changes)
                .await
                .map_err(Into::into)
        })
    }
}

async fn apply(
    server: &zbus::ObjectServer,
    services: &Arc<Services>,
    changes: Vec<Change>,
) -> zbus::Result<()> {
    for change in changes {
        match change {
            Change::Added { path, iface } => {
                let path = path.as_str();
                let s = services.clone();
                match iface {
                    Iface::Gpu(p) => server.at(path, GpuInterface::new(p, s)).await?,
                    Iface::ShardParent(p) => {
                        server.at(path, ShardParentInterface::new(p, s)).await?
                    }
                    Iface::IommuGroup(p) => server.at(path, IommuGroupInterface::new(p, s)).await?,
                    Iface::Mdev(p) => server.at(path, MdevInterface::new(p, s)).await?,
                    // The Manager is served from start-up and only ever updated.
                    Iface::Manager(_) | Iface::Policy(_) => false,
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
                    Iface::Policy(p) => {
                        let r = server.interface::<_, ManagerInterface>(path).await?;
                        *r.get()
                            .await
                            .policy
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
