//! How a card is split (the ShardParent `Backend` property), as it travels: a lowercase
//! string. May import: nothing.

/// Mediated devices: `mdev_supported_types/<type>/create`.
pub const MDEV: &str = "mdev";
/// NVIDIA's per-VF vGPU interface (`<VF>/nvidia/current_vgpu_type`).
pub const NVIDIA_VF: &str = "nvidia-vf";
/// Plain SR-IOV virtual functions (`sriov_numvfs`).
pub const SRIOV: &str = "sriov";
