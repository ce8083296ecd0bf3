//! The synthetic host generator: preset sizes, determinism, and that the kernel boots them.
#![allow(clippy::unwrap_used)]

use gpuvirt_sim::fixture::Fixture;
use gpuvirt_sim::generate::{generate, pci_function_count, GenParams, Preset};
use gpuvirt_sim::kernel::Kernel;
use gpuvirt_sim::Backend;

#[test]
fn medium_preset_sizes() {
    let f = generate(&GenParams::preset(Preset::Medium)).unwrap();
    let n = pci_function_count(&f);
    assert!((200..=210).contains(&n), "{n} functions");
    assert_eq!(f.mdevs.len(), 64);
    assert_eq!(f.mdevctl.len(), 72);
    assert_eq!(f.mdev_parents.len(), 8);
    let k = Kernel::from_fixture(&f).unwrap();
    assert_eq!(k.pci_addresses().len(), n);
    assert_eq!(k.mdevs().len(), 64);
    assert_eq!(k.registered_parents().len(), 8);
    // Round trip through the TOML text form.
    let back = Fixture::parse(&f.to_toml().unwrap(), "medium").unwrap();
    assert_eq!(back, f);
}

#[test]
fn large_preset_sizes_and_boots() {
    let p = GenParams::preset(Preset::Large);
    let f = generate(&p).unwrap();
    assert_eq!(pci_function_count(&f), 5000);
    assert_eq!(f.mdev_parents.len(), 64);
    assert_eq!(f.mdevs.len(), 2048);
    assert_eq!(f.mdevctl.iter().filter(|m| m.start == "manual").count(), 64);
    assert_eq!(f.mdevctl.len(), 2112);
    assert_eq!(generate(&p).unwrap(), f, "same seed, same host");
    let mut other = p.clone();
    other.seed = 2;
    assert_ne!(generate(&other).unwrap().mdevs[0].uuid, f.mdevs[0].uuid);
    let k = Kernel::from_fixture(&f).unwrap();
    assert_eq!(k.pci_addresses().len(), 5000);
    assert_eq!(k.mdevs().len(), 2048);
    let gpus = k
        .pci_addresses()
        .into_iter()
        .filter(|a| {
            k.tree()
                .read_str(&format!("sys/bus/pci/devices/{a}/class"))
                .as_deref()
                == Some("0x030200")
        })
        .count();
    assert_eq!(gpus, 64);
    assert_eq!(k.tree().list("sys/bus/mdev/devices").len(), 2048);
    assert_eq!(k.tree().list("sys/class/mdev_bus").len(), 64);
    let vfio_vfs = k
        .pci_addresses()
        .into_iter()
        .filter(|a| k.driver_of(*a) == Some("vfio-pci"))
        .count();
    let wanted: usize = f
        .devices
        .iter()
        .filter_map(|d| d.sriov.as_ref())
        .map(|s| s.vf_drivers.len())
        .sum();
    assert_eq!(vfio_vfs, wanted, "every fourth NIC VF on vfio-pci");
    assert!(vfio_vfs > 900);
}
