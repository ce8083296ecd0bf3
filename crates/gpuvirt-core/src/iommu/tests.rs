//! Unit tests of `iommu.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;
use crate::model::PciAddress;

fn member(addr: &str, class: u32, driver: Option<&str>) -> GroupMember {
    GroupMember {
        name: addr.to_string(),
        pci_address: Some(addr.parse().unwrap()),
        class: Some(class),
        driver: driver.map(str::to_string),
    }
}

#[test]
fn one_card_is_viable_even_on_host_drivers() {
    let v = assess_group(
        1,
        &[
            member("0000:01:00.0", 0x030000, Some("nvidia")),
            member("0000:01:00.1", 0x040300, Some("snd_hda_intel")),
            member("0000:00:01.0", 0x060400, Some("pcieport")),
        ],
    );
    assert!(v.viable);
    assert!(v.problems.is_empty());
}

#[test]
fn a_nic_on_a_host_driver_blocks_the_group() {
    let members = [
        member("0000:41:00.0", 0x030200, Some("nvidia")),
        member("0000:41:00.1", 0x040300, Some("snd_hda_intel")),
        member("0000:42:00.0", 0x020000, Some("mlx5_core")),
    ];
    let v = assess_group(12, &members);
    assert!(!v.viable);
    // Only the NIC would stay on the host: the card's own functions move with it.
    assert_eq!(
        v.problems,
        ["0000:42:00.0 (Ethernet controller, mlx5_core) shares IOMMU group 12 and would stay on the host"]
    );
    let slot = PciAddress::new(0, 0x41, 0, 0).slot();
    let v = assess_group_for_slot(12, &members, slot);
    assert_eq!(
        v.problems,
        ["0000:42:00.0 (Ethernet controller, mlx5_core) shares IOMMU group 12 and would stay on the host"]
    );
}

#[test]
fn a_card_on_vfio_with_a_nic_on_the_host_is_not_viable() {
    let v = assess_group(
        7,
        &[
            member("0000:41:00.0", 0x030200, Some("vfio-pci")),
            member("0000:42:00.0", 0x020000, Some("igb")),
            member("0000:42:00.1", 0x020000, Some("igb")),
        ],
    );
    assert!(!v.viable);
    assert_eq!(
        v.problems,
        [
            "0000:42:00.0 (Ethernet controller, igb) shares IOMMU group 7 and would stay on the host",
            "0000:42:00.1 (Ethernet controller, igb) shares IOMMU group 7 and would stay on the host",
        ]
    );
}

#[test]
fn two_cards_in_one_group_name_each_other() {
    let v = assess_group(
        3,
        &[
            member("0000:41:00.0", 0x030000, Some("nvidia")),
            member("0000:43:00.0", 0x030000, Some("amdgpu")),
        ],
    );
    assert!(!v.viable);
    assert_eq!(
        v.problems,
        [
            "0000:41:00.0 (VGA compatible controller, nvidia) belongs to the card at 0000:41:00, \
             which shares IOMMU group 3 with the card at 0000:43:00: passing one through would \
             leave the other on the host",
            "0000:43:00.0 (VGA compatible controller, amdgpu) belongs to the card at 0000:43:00, \
             which shares IOMMU group 3 with the card at 0000:41:00: passing one through would \
             leave the other on the host",
        ]
    );
    // With one of them on vfio-pci the other can go.
    let v = assess_group(
        3,
        &[
            member("0000:41:00.0", 0x030000, Some("nvidia")),
            member("0000:43:00.0", 0x030000, Some("vfio-pci")),
        ],
    );
    assert!(v.viable, "{:?}", v.problems);
}

#[test]
fn an_unbound_nic_leaves_only_the_card_to_move() {
    let v = assess_group(
        1,
        &[
            member("0000:41:00.0", 0x030200, Some("nvidia")),
            member("0000:42:00.0", 0x020000, None),
        ],
    );
    assert!(v.viable, "{:?}", v.problems);
}

#[test]
fn vfio_unbound_and_stub_members_are_fine() {
    let v = assess_group(
        1,
        &[
            member("0000:41:00.0", 0x030200, Some("vfio-pci")),
            member("0000:42:00.0", 0x020000, None),
            member("0000:43:00.0", 0x020000, Some("pci-stub")),
        ],
    );
    assert!(v.viable);
}

#[test]
fn status_explains_a_disabled_iommu() {
    let s = iommu_status(vec![], iommu_cmdline_flags("ro quiet intel_iommu=off"), 0);
    assert!(!s.enabled);
    assert_eq!(s.cmdline_flags, ["intel_iommu=off"]);
    assert!(s.reasons[0].contains("intel_iommu=off"));
    assert!(s.reasons[1].starts_with("no IOMMU units in /sys/class/iommu"));
    let s = iommu_status(
        vec!["dmar0".into()],
        iommu_cmdline_flags("intel_iommu=on iommu=pt vfio-pci.ids=10de:1db4 root=/dev/sda"),
        3,
    );
    assert!(s.enabled);
    assert_eq!(
        s.cmdline_flags,
        ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=10de:1db4"]
    );
    assert_eq!(s.reasons[0], "3 IOMMU groups in /sys/kernel/iommu_groups");
}
