//! Where the host tools gpuvirt runs (`modprobe`, `update-initramfs`, `dracut`) live, relative
//! to the root, so a test root runs its own doubles. May import: std only.

use std::path::PathBuf;

/// Where the executor finds the tools it runs, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub modprobe: PathBuf,
    pub update_initramfs: PathBuf,
    pub dracut: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            modprobe: PathBuf::from("sbin/modprobe"),
            update_initramfs: PathBuf::from("usr/sbin/update-initramfs"),
            dracut: PathBuf::from("usr/bin/dracut"),
        }
    }
}
