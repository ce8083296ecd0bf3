//! Unit tests of `state/vgpu_names.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;
use crate::model::{NvidiaVfVgpu, VgpuTypeOffer};
use crate::PciAddress;

fn function(address: &str, device: u16, physfn: Option<&str>) -> PciFunction {
    PciFunction {
        address: address.parse().unwrap(),
        sysfs_path: PathBuf::new(),
        class: 0x030200,
        revision: None,
        ids: PciIds {
            vendor: 0x10de,
            device,
            subsystem_vendor: 0x10de,
            subsystem_device: 0,
        },
        vendor_name: None,
        device_name: None,
        subsystem_name: None,
        driver: Some("nvidia".into()),
        driver_override: None,
        boot_vga: None,
        numa_node: None,
        reset_methods: Vec::new(),
        modalias: None,
        kernel_modules: Vec::new(),
        iommu_group: None,
        sriov: None,
        physfn: physfn.map(|p| p.parse::<PciAddress>().unwrap()),
        nvidia_vgpu: None,
        drm: None,
    }
}

fn vf(address: &str, pf: &str, creatable: &[(u32, &str)], current: Option<u32>) -> PciFunction {
    let mut f = function(address, 0x2330, Some(pf));
    f.nvidia_vgpu = Some(NvidiaVfVgpu {
        creatable_types: creatable
            .iter()
            .map(|(id, name)| VgpuTypeOffer {
                id: *id,
                name: name.to_string(),
            })
            .collect(),
        current_type: current,
    });
    f
}

fn inventory(functions: Vec<PciFunction>) -> Inventory {
    let mut inv = Inventory::default();
    for f in functions {
        inv.functions.insert(f.address, f);
    }
    inv
}

#[test]
fn names_are_learned_per_model_and_kept_when_the_card_fills() {
    let pf = function("0000:9a:00.0", 0x2330, None);
    let free = inventory(vec![
        pf.clone(),
        vf(
            "0000:9a:00.4",
            "0000:9a:00.0",
            &[(1151, "NVIDIA H100XM-40C"), (1152, "NVIDIA H100XM-80C")],
            None,
        ),
    ]);
    let mut names = VgpuTypeNames::new();
    assert!(learn(&free, &mut names));
    assert!(!learn(&free, &mut names), "a second read changes nothing");
    assert_eq!(names["10de:2330"][&1151], "NVIDIA H100XM-40C");

    // Full: the VF holds a 1151 and lists nothing; what was learned stays.
    let mut full = inventory(vec![
        pf.clone(),
        vf("0000:9a:00.4", "0000:9a:00.0", &[], Some(1151)),
    ]);
    assert!(!learn(&full, &mut names));
    full.vgpu_type_names = names.clone();
    let pf_in_full = &full.functions[&pf.address];
    assert_eq!(
        remembered(&full, pf_in_full, 1151),
        Some("NVIDIA H100XM-40C")
    );
    assert_eq!(remembered(&full, pf_in_full, 9), None);
}

#[test]
fn the_store_round_trips_and_a_bad_file_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let store = NamesStore::new(dir.path().join("state"));
    assert_eq!(store.load().unwrap(), VgpuTypeNames::new());
    let mut names = VgpuTypeNames::new();
    names
        .entry("10de:2330".into())
        .or_default()
        .insert(1151, "NVIDIA H100XM-40C".into());
    store.save(&names).unwrap();
    assert_eq!(store.load().unwrap(), names);
    fs::write(store.path(), "{ not json").unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(
        err.contains("vgpu-type-names.json") && err.contains("not valid"),
        "{err}"
    );
}
