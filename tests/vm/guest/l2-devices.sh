# tests/vm/guest/l2-devices.sh -- the devices the L2 scenarios (qemu-l2, libvirt) hand to a VM
# (sourced after lib.sh, with gpuvirtd running on the private bus).
#
# L2_CARD / L2_AUDIO: a two-function card hot-added on the empty root port rp4, function 1
# (ich9-intel-hda) first, then function 0 (bochs-display,multifunction=on): QEMU exposes a
# hot-added slot when function 0 arrives and refuses a function beside a single-function 0
# ("slot 0 function 0 already occupied ... cannot be exposed to guest"). Function 1 has
# multifunction=on too, as a real card's header has on every function: Linux puts a function in
# its IOMMU group as it scans it, before it marks the later functions of a multi-function slot,
# and a function 1 whose header lacks the bit ends in a group of its own (seen: groups 12 and 13).
# Only these scenarios add the card, so no other scenario's view of rp4 changes.
L2_CARD=0000:04:00.0
L2_AUDIO=0000:04:00.1
L2_GROUP=

sysfs_driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }
pci_bound() { [ -L "/sys/bus/pci/devices/$1/driver" ]; }
gpu_listed() { ctl show "$1" >/dev/null 2>&1; }
# pci_id ADDR -- "vendor:device" as sysfs has them, without 0x.
pci_id() { local v d; v=$(attr "/sys/bus/pci/devices/$1/vendor"); d=$(attr "/sys/bus/pci/devices/$1/device"); echo "${v#0x}:${d#0x}"; }

# l2_card_add -- hot-add the card; both functions present, one IOMMU group (L2_GROUP), gpuvirtd
# shows function 0 with function 1 as its companion. Returns non-zero when the card is not usable.
l2_card_add() {
    [ -e "/sys/bus/pci/devices/$L2_CARD" ] && { fail "$L2_CARD exists before device_add"; return 1; }
    vm_monitor 'device_add ich9-intel-hda,id=l2audio,bus=rp4,addr=00.1,multifunction=on' >/dev/null 2>&1 \
        && pass "device_add ich9-intel-hda at rp4 00.1 accepted" || { fail "device_add ich9-intel-hda on rp4"; return 1; }
    local reply
    if reply=$(vm_monitor 'device_add bochs-display,id=l2card,bus=rp4,addr=00.0,multifunction=on' 2>&1); then
        pass "device_add bochs-display,multifunction=on at rp4 00.0 accepted"
    else
        fail "device_add bochs-display on rp4: $reply"; return 1
    fi
    wait_for 40 pci_bound "$L2_CARD" || { fail "$L2_CARD not bound to a driver 40 s after device_add"; return 1; }
    udevadm settle --timeout=30
    [ -e "/sys/bus/pci/devices/$L2_AUDIO" ] && pass "$L2_CARD ($(pci_driver "$L2_CARD")) and $L2_AUDIO ($(pci_driver "$L2_AUDIO")) present" \
        || { fail "$L2_AUDIO missing after the hot-add"; return 1; }
    L2_GROUP=$(pci_group "$L2_CARD")
    [ "$L2_GROUP" != - ] && [ "$(pci_group "$L2_AUDIO")" = "$L2_GROUP" ] && pass "both functions in IOMMU group $L2_GROUP" \
        || { fail "IOMMU groups: $L2_CARD $L2_GROUP, $L2_AUDIO $(pci_group "$L2_AUDIO")"; return 1; }
    wait_for 30 gpu_listed "$L2_CARD" || { fail "gpuvirtd does not show $L2_CARD"; return 1; }
    local companions; companions=$(ctl show "$L2_CARD" --json | jq -c '.companions')
    [ "$companions" = "[\"$L2_AUDIO\"]" ] && pass "gpuvirtd: $L2_CARD companions $companions" \
        || fail "gpuvirtd: $L2_CARD companions $companions"
}

# l2_card_passthrough -- `gpuvirtctl passthrough` of the card: both functions on vfio-pci, the
# group's /dev/vfio node present.
l2_card_passthrough() {
    local out
    if out=$(ctl passthrough "$L2_CARD" 2>&1); then
        pass "gpuvirtctl passthrough $L2_CARD: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"
    else
        fail "gpuvirtctl passthrough $L2_CARD: $out"; return 1
    fi
    sysfs_driver_is "$L2_CARD" vfio-pci && sysfs_driver_is "$L2_AUDIO" vfio-pci && pass "sysfs: $L2_CARD and $L2_AUDIO on vfio-pci" \
        || { fail "sysfs: $L2_CARD on $(pci_driver "$L2_CARD"), $L2_AUDIO on $(pci_driver "$L2_AUDIO")"; return 1; }
    wait_for 20 test -c "/dev/vfio/$L2_GROUP" || { fail "/dev/vfio/$L2_GROUP did not appear"; return 1; }
}

# l2_card_return -- `gpuvirtctl return`: function 0 back on bochs-drm.
l2_card_return() {
    local out
    if out=$(ctl return "$L2_CARD" 2>&1); then
        wait_for 20 sysfs_driver_is "$L2_CARD" bochs-drm && pass "gpuvirtctl return $L2_CARD: back on bochs-drm" \
            || fail "after return $L2_CARD is on $(pci_driver "$L2_CARD")"
    else
        fail "gpuvirtctl return $L2_CARD: $out"
    fi
}

# l2_mdev_start PARENT TYPE -- `gpuvirtctl mdev start -p PARENT -t TYPE`; prints the UUID once
# the device and its /dev/vfio node exist.
l2_mdev_start() {
    local out u g
    out=$(ctl mdev start -p "$1" -t "$2" 2>&1) || { echo "ERROR $out"; return 1; }
    u=$(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' <<<"$out" | head -1)
    [ -e "/sys/bus/mdev/devices/$u" ] || { echo "ERROR no /sys/bus/mdev/devices/$u: $out"; return 1; }
    g=$(basename "$(readlink "/sys/bus/mdev/devices/$u/iommu_group")")
    wait_for 20 test -c "/dev/vfio/$g" || { echo "ERROR /dev/vfio/$g of $u did not appear"; return 1; }
    echo "$u"
}
