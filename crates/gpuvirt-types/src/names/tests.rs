//! Unit tests of `names.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;

#[test]
fn accepts_real_names() {
    for d in [
        "vfio-pci",
        "snd_hda_intel",
        "nvidia",
        "xhci_hcd",
        "pcieport",
    ] {
        driver(d).unwrap();
    }
    for t in ["nvidia-300", "mbochs-small", "i915-GVTg_V5_4", "mtty-2"] {
        mdev_type(t).unwrap();
    }
    mdev_parent("0000:41:00.0").unwrap();
    mdev_parent("mbochs").unwrap();
    module("vfio-pci").unwrap();
    assert_eq!(module_dir("vfio-pci"), "vfio_pci");
}

#[test]
fn rejects_traversal_and_options() {
    for bad in [
        "", ".", "..", "../x", "a/b", "a\0b", "-r", ".hidden", "a b", "a\nb",
    ] {
        assert!(driver(bad).is_err(), "{bad:?}");
        assert!(mdev_type(bad).is_err(), "{bad:?}");
        assert!(module(bad).is_err(), "{bad:?}");
    }
    assert!(module("a:b").is_err());
    assert!(driver(&"x".repeat(200)).is_err());
}

#[test]
fn boot_files_stay_under_etc() {
    assert_eq!(
        boot_file(Path::new("etc/modprobe.d/gpuvirt.conf")).unwrap(),
        PathBuf::from("etc/modprobe.d/gpuvirt.conf")
    );
    assert_eq!(
        boot_file(Path::new("/etc/modprobe.d/gpuvirt.conf")).unwrap(),
        PathBuf::from("etc/modprobe.d/gpuvirt.conf")
    );
    for bad in ["etc/../root/.ssh/authorized_keys", "usr/lib/x", "etc", ""] {
        assert!(boot_file(Path::new(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn addresses_and_uuids() {
    assert_eq!(
        pci_address("0000:41:00.0").unwrap().to_string(),
        "0000:41:00.0"
    );
    assert_eq!(pci_address("41:00.0").unwrap().to_string(), "0000:41:00.0");
    for bad in [
        "",
        "0000:41:00.0/..",
        "../41:00.0",
        "0000:41:00.8",
        "0000:41:0\0.0",
    ] {
        assert!(pci_address(bad).is_err(), "{bad:?}");
    }
    let u = "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4";
    assert_eq!(uuid(u).unwrap().to_string(), u);
    assert_eq!(uuid(&u.to_uppercase()).unwrap().to_string(), u);
    for bad in [
        "",
        "c2a52d9af3c34ba38fb55a0e7ec1f7b4",
        "{c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4}",
        "urn:uuid:c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b4",
        "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7b/",
        "../../../../../../../../../../../../",
        "c2a52d9a-f3c3-4ba3-8fb5-5a0e7ec1f7\0\0",
    ] {
        assert!(uuid(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn attribute_names() {
    assert_eq!(attribute("assign_adapter").unwrap(), "assign_adapter");
    let err = attribute("../remove").unwrap_err();
    assert_eq!(err.what, "attribute name");
    assert!(!is_safe_component(".."));
    assert!(is_safe_component("nvidia-300"));
}
