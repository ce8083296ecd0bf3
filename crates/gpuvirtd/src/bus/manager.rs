//! `org.gpuvirt.GpuVirt1.Manager`: its lookups and listings answer from the actor's index
//! and tree; its other methods hand over to `bus/mutators.rs`. Its properties are the
//! inventory's half (ManagerProps) and the policy's half (PolicyProps), both replaced by the
//! one route out, `bus/publish.rs`. May import: bus/services.rs, bus/mutators.rs,
//! bus/wire.rs, crate::tree.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use gpuvirt_api::{self as api, CallError};
use gpuvirt_core::PciAddress;
use tokio::sync::watch;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::mutators;
use super::options::no_options;
use super::services::{tree_objects, Services};
use super::wire::{MdevRows, ObjectsReply};
use crate::tree::{Lookup, ManagerProps, PolicyProps};

/// `org.gpuvirt.GpuVirt1.Manager`.
#[derive(Debug)]
pub struct ManagerInterface {
    /// Behind its own lock, as the other interfaces' properties are: replacing them then
    /// needs only zbus's shared lock on the interface, which a Manager method waiting for the
    /// actor (Reconcile, DefineMdev) also holds; an exclusive lock would deadlock the actor.
    pub props: RwLock<ManagerProps>,
    /// The device policy's properties, published by the policy runtime through the actor.
    pub policy: RwLock<PolicyProps>,
    /// Which objects exist, published by the actor before it announces changes, so lookups
    /// never wait for it (and never hold this interface's lock while waiting).
    pub lookup: watch::Receiver<Arc<Lookup>>,
    pub services: Arc<Services>,
    /// The host root, for the one property read live (`NvidiaVgpuManager`).
    pub root: gpuvirt_core::Root,
}

impl ManagerInterface {
    fn props(&self) -> RwLockReadGuard<'_, ManagerProps> {
        // A writer only assigns whole properties: a poisoned lock still holds whole ones.
        self.props.read().unwrap_or_else(|e| e.into_inner())
    }

    fn policy(&self) -> RwLockReadGuard<'_, PolicyProps> {
        self.policy.read().unwrap_or_else(|e| e.into_inner())
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
        let parsed = crate::ops::parse_uuid("uuid", uuid)?;
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
        options: HashMap<String, OwnedValue>,
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
            return Err(CallError::invalid_arg(
                "interfaces",
                format!(
                    "'{}' is not an object interface of gpuvirtd (one of {})",
                    crate::ops::shown(bad),
                    OBJECT_INTERFACES.join(", ")
                ),
            ));
        }
        no_options("GetObjects", &options)?;
        Ok(ObjectsReply {
            manager: None,
            objects: tree_objects(self.services.actor(), interfaces).await?,
        })
    }

    /// Every mdev as one typed row (object, uuid, parent object, parent name, type, type
    /// name, active, driver, IOMMU group id: the Mdev interface's properties less the
    /// `IommuGroup` path), sorted by object path, like systemd's `ListUnits`: a listing of
    /// thousands of mdevs without a variant per property. No options are defined yet.
    async fn list_mdevs(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> Result<MdevRows, CallError> {
        no_options("ListMdevs", &options)?;
        let objects =
            tree_objects(self.services.actor(), vec![api::MDEV_INTERFACE.to_owned()]).await?;
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
        mutators::validate_policy(&self.services, toml).await
    }

    /// The plan for the policy in force against the live host: (human text, JSON).
    async fn plan_policy(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, String), CallError> {
        mutators::plan_policy(&self.services, options).await
    }

    /// Re-reads the policy file and applies it; an invalid file is rejected with
    /// `PolicyInvalid` and the previous policy stays in force.
    async fn reload_policy(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), CallError> {
        mutators::reload_policy(&self.services, &header, options).await
    }

    /// Plans and applies the policy now (in `monitor` mode too): (success, report of what
    /// was done, what failed and what was not attempted). A plan of mdev creations only
    /// replies once the kernel lists every new mdev; their objects follow right after
    /// (InterfacesAdded), as the parents' new instance counts do.
    async fn reconcile(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(bool, String), CallError> {
        mutators::reconcile(&self.services, &header, options).await
    }

    #[zbus(property)]
    fn policy_path(&self) -> String {
        self.policy().policy_path.clone()
    }

    #[zbus(property)]
    fn policy_error(&self) -> String {
        self.policy().policy_error.clone()
    }

    #[zbus(property)]
    fn enforcement_mode(&self) -> String {
        self.policy().enforcement_mode.clone()
    }

    #[zbus(property)]
    fn reboot_required(&self) -> bool {
        self.policy().reboot_required
    }

    #[zbus(property)]
    fn reboot_reasons(&self) -> Vec<String> {
        self.policy().reboot_reasons.clone()
    }

    #[zbus(property)]
    fn drift(&self) -> Vec<String> {
        self.policy().drift.clone()
    }

    #[zbus(property)]
    fn last_apply(&self) -> String {
        self.policy().last_apply.clone()
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
        options: HashMap<String, OwnedValue>,
    ) -> Result<String, CallError> {
        mutators::define_mdev(&self.services, parent, mdev_type, uuid, &header, options).await
    }

    /// Drops an mdev's definition; an active mdev stays (mdevctl undefine). Option `parent`
    /// (a string) picks the definition of a UUID defined under several parents; without it
    /// such a UUID is refused (InvalidArgs) naming the parents.
    async fn undefine_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), CallError> {
        mutators::undefine_mdev(&self.services, uuid, &header, options).await
    }

    /// Changes one of gpuvirt's definitions in place (mdevctl modify): (uuid, options) →
    /// (its parent, the new definition as mdevctl's file). Options: `parent` (s, picks one
    /// of a UUID defined under several parents; the parent itself cannot change), `type` (s),
    /// `auto` or `manual` (b), `addattr` (s) with `value` (s) inserted at `index` (u) or
    /// appended, `delattr` (b) deleting the attribute at `index` or the last one, `jsonfile`
    /// (s, a definition's JSON replacing type, start and attrs), `dry-run` (b). The whole
    /// request is checked before anything changes. An active device keeps running as it is;
    /// `live` (changing it too) is NotSupported. mdevctl's own files are not changed
    /// (NotSupported).
    #[zbus(out_args("parent", "config"))]
    async fn modify_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, String), CallError> {
        mutators::modify_mdev(&self.services, uuid, &header, options).await
    }

    /// Defines persistent mdevs from mdevctl's formats, as `mdevctl define` reads its JSON
    /// file: (parent, uuid, config, options) → the UUIDs defined, one per line. `config` is
    /// one definition, the JSON of `/etc/mdevctl.d/<parent>/<uuid>` (`mdev_type`, `start`
    /// `auto`|`manual`, ordered `attrs`; `uuid` empty: generated), or the JSON list `mdevctl
    /// list` prints with its dumpjson option, from which a non-empty `parent` and `uuid`
    /// select; the same
    /// UUID may be defined under several parents. The whole document is checked first, every
    /// entry and each against what is defined already (AlreadyExists), and then recorded at
    /// once: on any refusal nothing is defined. `[]` defines nothing and returns "". The
    /// definitions are gpuvirt's from then on; an auto one starts now if its parent is present.
    async fn import_mdev_definition(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        parent: &str,
        uuid: &str,
        config: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<String, CallError> {
        mutators::import_mdev_definition(&self.services, parent, uuid, config, &header, options)
            .await
    }

    /// Every persistent mdev definition: gpuvirt's own and mdevctl's (`/etc/mdevctl.d`), each
    /// (uuid, parent, type, owner `gpuvirt`|`mdevctl`, start `auto`|`manual`, attrs as ordered
    /// (name, value) pairs, active), sorted by parent and UUID. No options are defined yet.
    async fn list_mdev_definitions(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> Result<Vec<api::MdevDefinitionWire>, CallError> {
        mutators::list_mdev_definitions(&self.services, options).await
    }

    /// Creates a defined mdev (mdevctl start), gpuvirt's or mdevctl's
    /// (`/etc/mdevctl.d/<parent>/<uuid>`), and returns its object. Option `parent` (a string)
    /// picks the definition of a UUID defined under several parents; without it such a UUID
    /// is refused (InvalidArgs) naming the parents.
    async fn start_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, CallError> {
        mutators::start_mdev(&self.services, uuid, &header, options).await
    }

    /// Removes a defined mdev's device and keeps its definition (mdevctl stop).
    async fn stop_mdev(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        uuid: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), CallError> {
        mutators::stop_mdev(&self.services, uuid, &header, options).await
    }

    /// libvirt `<hostdev>` XML and QEMU arguments for `target`: a card (any function's PCI
    /// address), an NVIDIA per-VF vGPU (its VF) or an mdev (UUID). A card's functions share
    /// one guest slot, `multifunction` on function 0; by default slot 0 behind a
    /// `pcie-root-port` on guest bus 1 (libvirt's controller 1; for QEMU a root port
    /// `gpuvirt-rp1`, chassis 1, printed first). Options, all checked before the target is
    /// looked at (InvalidArgs naming the option): `guest-bus` (u, 0-255; 0 is q35's root bus
    /// `pcie.0`, which then needs a `guest-slot`), `guest-slot` (u, 0-31; a root port has only
    /// slot 0), `qemu-bus` (s, the QEMU id of a bus the VM has: no root port is printed and any
    /// slot goes), `x-vga` (b, a card with a VGA function 0), `managed` (b, PCI only:
    /// `managed='yes'`, libvirt binds and unbinds the device itself; default `managed='no'`,
    /// the device stays as gpuvirt assigned it), for an mdev `display` (b; default: on when
    /// its type can display (docs/passthrough-snippets.md); QEMU `display=on,rombar=0`) and
    /// `ramfb` (b, a boot display: QEMU `vfio-pci-nohotplug,...,ramfb=on`, libvirt
    /// `ramfb='on'`; needs the display on). A single-function device gets a guest address
    /// only when an option asks for one. The runbook's Graphics paths: `graphics` (s) `virgl`
    /// (target: a GPU that stays with the host; no hostdev, a 3D `virtio-vga-gl` and the back
    /// end on the GPU's DRM render node; NotSupported when it has none), `primary` (the card is
    /// the guest's display: `x-vga=on`, `-vga none -display none`, libvirt video model `none`)
    /// or `vgpu-display` (an mdev with its display on, shown by the back end, rendering on its
    /// parent's render node where it has one); `display-backend` (s: `gtk`, the default, as the
    /// runbook's `-display gtk,gl=on` (libvirt: SPICE with GL, no listener), `egl-headless`,
    /// `spice` (local socket, GL), `vnc` (127.0.0.1, with headless EGL where GL is needed));
    /// `render-node` (s, a `/dev/dri/` path over the default; not with `gtk`). `xml` then holds
    /// the `<video>`/`<graphics>` elements before the hostdevs, `qemu_args` the display
    /// arguments before the devices.
    #[zbus(out_args("xml", "qemu_args"))]
    async fn render_hostdev(
        &self,
        target: &str,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(String, Vec<String>), CallError> {
        mutators::render_hostdev(&self.services, target, options).await
    }

    /// Whether the caller may give cards to VMs and take them back (`Gpu.AssignPassthrough`,
    /// `Gpu.ReturnToHost`; polkit action `org.gpuvirt.GpuVirt1.passthrough`): `yes`,
    /// `challenge` (polkit would first ask the caller to authenticate) or `no`. Like logind's
    /// `CanPowerOff`: asked without a prompt and without side effects, so a client can show
    /// what its user may do before they try. Without polkit only root gets `yes`.
    #[zbus(out_args("result"))]
    async fn can_passthrough(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> String {
        mutators::capability(&self.services, &header, api::ACTION_PASSTHROUGH).await
    }

    /// Whether the caller may create, remove, define, start, stop, modify and undefine vGPUs
    /// (`ShardParent.CreateMdev`, `Mdev.Remove`, `Manager.DefineMdev`, `ImportMdevDefinition`,
    /// `UndefineMdev`, `ModifyMdev`, `StartMdev`, `StopMdev`; polkit action
    /// `org.gpuvirt.GpuVirt1.shard`): `yes`, `challenge` or `no`, as `CanPassthrough`.
    #[zbus(out_args("result"))]
    async fn can_shard(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> String {
        mutators::capability(&self.services, &header, api::ACTION_SHARD).await
    }

    /// Whether the caller may reload and apply the device policy (`Manager.ReloadPolicy`,
    /// `Manager.Reconcile`; polkit action `org.gpuvirt.GpuVirt1.policy`): `yes`, `challenge`
    /// or `no`, as `CanPassthrough`.
    #[zbus(out_args("result"))]
    async fn can_manage_policy(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> String {
        mutators::capability(&self.services, &header, api::ACTION_POLICY).await
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

    /// Whether NVIDIA's vGPU manager daemon runs, as the runbook checks it (`systemctl status
    /// nvidia-vgpu-mgr`; read from the processes' names): `running`, `not-running`, or empty
    /// when no NVIDIA driver is loaded. Read on each Get, so no change signal: a daemon start
    /// is no device event.
    #[zbus(property(emits_changed_signal = "false"))]
    fn nvidia_vgpu_manager(&self) -> String {
        gpuvirt_core::vgpu_manager::nvidia_vgpu_manager(&self.root)
            .as_str()
            .to_owned()
    }

    #[zbus(property)]
    fn scan_warnings(&self) -> Vec<String> {
        self.props().scan_warnings.clone()
    }
}
