//! The well-known names of the API: bus name, object paths and interface names. May import:
//! nothing (the leaf every other module of this crate builds on).

/// The well-known bus name gpuvirtd owns.
pub const BUS_NAME: &str = "org.gpuvirt.GpuVirt1";
/// The ObjectManager root; every other object lives below it.
pub const ROOT_PATH: &str = "/org/gpuvirt/GpuVirt1";
/// The one Manager object.
pub const MANAGER_PATH: &str = "/org/gpuvirt/GpuVirt1/Manager";
/// Parent of the GPU objects.
pub const GPUS_PATH: &str = "/org/gpuvirt/GpuVirt1/gpus";
/// Parent of the IOMMU group objects.
pub const IOMMU_GROUPS_PATH: &str = "/org/gpuvirt/GpuVirt1/iommu_groups";
/// Parent of the mdev objects.
pub const MDEVS_PATH: &str = "/org/gpuvirt/GpuVirt1/mdevs";
/// Parent of mdev parents that are not GPUs.
pub const PARENTS_PATH: &str = "/org/gpuvirt/GpuVirt1/parents";

pub const MANAGER_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Manager";
pub const GPU_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Gpu";
pub const SHARD_PARENT_INTERFACE: &str = "org.gpuvirt.GpuVirt1.ShardParent";
pub const IOMMU_GROUP_INTERFACE: &str = "org.gpuvirt.GpuVirt1.IommuGroup";
pub const MDEV_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Mdev";
/// Jobs of long operations (`/org/gpuvirt/GpuVirt1/jobs/<n>`): `Operation`, `Objects`,
/// `Progress`, `Finished`, `Success`, `ErrorName`, `Message`, `Cancel()`, signal
/// `Completed(b success, s message)`. Not in [`INTERFACES`]: jobs exist only while one runs.
pub const JOB_INTERFACE: &str = "org.gpuvirt.GpuVirt1.Job";
/// Parent of the job objects.
pub const JOBS_PATH: &str = "/org/gpuvirt/GpuVirt1/jobs";
/// Every interface gpuvirtd serves, in a stable order.
pub const INTERFACES: [&str; 5] = [
    MANAGER_INTERFACE,
    GPU_INTERFACE,
    SHARD_PARENT_INTERFACE,
    IOMMU_GROUP_INTERFACE,
    MDEV_INTERFACE,
];
