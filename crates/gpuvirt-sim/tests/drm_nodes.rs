//! DRM nodes on the simulated kernel: a GPU on a DRM driver has `drm/card<N>` and
//! `drm/renderD<128+N>`, `sys/class/drm` links and udev's `dev/dri` nodes and by-path links;
//! on vfio-pci it has none; back on its driver they return. The scan reads them, as plain
//! files and through the FUSE mount (whose `dev/dri` the mount copies out after each change).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use gpuvirt_core::{scan, DrmNodes, Root};
use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::fuse::SimMount;
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::materialize::materialize;
use gpuvirt_sim::Backend;

const GEFORCE: &str = "0000:01:00.0";
const IGPU: &str = "0000:00:02.0";

/// The workstation with vfio-pci loaded (it boots without).
fn boot() -> Kernel {
    let mut k = Kernel::from_fixture(&Fixture::bundled("workstation").unwrap()).unwrap();
    k.load_module("vfio_pci").unwrap();
    k.take_uevents();
    k
}

fn drm_of(root: &Path, address: &str) -> Option<DrmNodes> {
    scan(&Root::new(root)).functions[&address.parse().unwrap()]
        .drm
        .clone()
}

fn geforce_nodes() -> DrmNodes {
    DrmNodes {
        card: Some("/dev/dri/card1".into()),
        render: Some("/dev/dri/renderD129".into()),
        card_by_path: Some(format!("/dev/dri/by-path/pci-{GEFORCE}-card")),
        render_by_path: Some(format!("/dev/dri/by-path/pci-{GEFORCE}-render")),
    }
}

/// nouveau → vfio-pci and back, as gpuvirt's passthrough and return write them, through
/// `write` (the kernel's store handlers, or files on the mount).
fn rebind(write: &mut dyn FnMut(&str, &[u8]), to_vfio: bool) {
    write(
        &format!("sys/bus/pci/devices/{GEFORCE}/driver/unbind"),
        GEFORCE.as_bytes(),
    );
    let driver_override: &[u8] = if to_vfio { b"vfio-pci" } else { b"\n" };
    write(
        &format!("sys/bus/pci/devices/{GEFORCE}/driver_override"),
        driver_override,
    );
    write("sys/bus/pci/drivers_probe", GEFORCE.as_bytes());
}

fn rebind_kernel(k: &mut Kernel, to_vfio: bool) {
    rebind(&mut |path, data| k.write(path, data).unwrap(), to_vfio);
}

#[test]
fn a_card_on_vfio_pci_has_no_drm_nodes_and_gets_them_back() {
    let mut k = boot();
    let t = k.tree();
    assert!(t.exists(&format!("sys/bus/pci/devices/{GEFORCE}/drm/card1/dev")));
    assert!(t.exists("sys/class/drm/renderD129"));
    assert!(t.exists(&format!("dev/dri/by-path/pci-{GEFORCE}-render")));
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    assert_eq!(drm_of(dir.path(), GEFORCE), Some(geforce_nodes()));
    assert_eq!(
        drm_of(dir.path(), IGPU).and_then(|d| d.render_by_path),
        Some(format!("/dev/dri/by-path/pci-{IGPU}-render"))
    );
    // The HDMI audio function is no DRM device.
    assert_eq!(drm_of(dir.path(), "0000:01:00.1"), None);

    rebind_kernel(&mut k, true);
    assert_eq!(k.driver_of(GEFORCE.parse().unwrap()), Some("vfio-pci"));
    let t = k.tree();
    assert!(!t.exists(&format!("sys/bus/pci/devices/{GEFORCE}/drm")));
    assert!(!t.exists("sys/class/drm/card1"));
    assert!(!t.exists("dev/dri/renderD129"));
    assert!(!t.exists(&format!("dev/dri/by-path/pci-{GEFORCE}-card")));
    // The iGPU keeps its own.
    assert!(t.exists("dev/dri/by-path/pci-0000:00:02.0-card"));
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    assert_eq!(drm_of(dir.path(), GEFORCE), None);

    rebind_kernel(&mut k, false);
    assert_eq!(k.driver_of(GEFORCE.parse().unwrap()), Some("nouveau"));
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    assert_eq!(drm_of(dir.path(), GEFORCE), Some(geforce_nodes()));
}

/// A by-path link udev left pointing at another minor names no node of this card; a root
/// without `dev/dri/by-path` gives sysfs's nodes and no by-path names.
#[test]
fn by_path_names_are_checked_against_sysfs() {
    let k = boot();
    let dir = tempfile::tempdir().unwrap();
    materialize(k.tree(), dir.path()).unwrap();
    let link = dir
        .path()
        .join(format!("dev/dri/by-path/pci-{GEFORCE}-card"));
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../card7", &link).unwrap();
    let nodes = drm_of(dir.path(), GEFORCE).unwrap();
    assert_eq!(nodes.card_by_path, None);
    assert!(nodes.render_by_path.is_some());
    std::fs::remove_dir_all(dir.path().join("dev/dri/by-path")).unwrap();
    let nodes = drm_of(dir.path(), GEFORCE).unwrap();
    assert_eq!(
        nodes,
        DrmNodes {
            card_by_path: None,
            render_by_path: None,
            ..geforce_nodes()
        }
    );
    assert_eq!(nodes.preferred_render(), Some("/dev/dri/renderD129"));
}

#[test]
fn the_mount_keeps_dev_dri_current() {
    if !(Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root()) {
        eprintln!("SKIP: needs /dev/fuse and root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = SimMount::mount(Arc::new(Mutex::new(boot())), dir.path()).unwrap();
    let by_path = mnt
        .root()
        .join(format!("dev/dri/by-path/pci-{GEFORCE}-render"));
    assert!(by_path.symlink_metadata().is_ok());
    assert_eq!(drm_of(mnt.root(), GEFORCE), Some(geforce_nodes()));
    // Through the mount, as gpuvirtd writes.
    let root = mnt.root().to_owned();
    let mut write = |path: &str, data: &[u8]| std::fs::write(root.join(path), data).unwrap();
    rebind(&mut write, true);
    assert!(by_path.symlink_metadata().is_err(), "by-path link stayed");
    assert!(!mnt.root().join("dev/dri/renderD129").exists());
    assert!(mnt.root().join("dev/dri/renderD128").exists());
    assert_eq!(drm_of(mnt.root(), GEFORCE), None);
    rebind(&mut write, false);
    assert!(by_path.symlink_metadata().is_ok());
    assert_eq!(drm_of(mnt.root(), GEFORCE), Some(geforce_nodes()));
}
