#!/bin/bash
# Scenario "hotplug" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# A display adapter is added and removed at runtime through QEMU's monitor (device_add/device_del
# on the empty hotplug-capable root port rp4, relayed by the host, see run-vm.sh), and the real
# kernel's reaction is checked and recorded for the simulator: the new function's sysfs
# attributes, its own IOMMU group, the driver udev autoloads, and the kernel/udev uevents of the
# add and of the surprise-free removal (pciehp attention button, ~5 s).
#
# Hook for the daemon: when gpuvirtd can act on hotplugged cards (policy applied from udev events),
# start it with dbus_start + gpuvirtd_start before the device_add and check its D-Bus objects here.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"
FACTS=$SCENARIO_OUT/facts
mkdir -p "$FACTS"

mapfile -t BEFORE < <(display_addrs)
ngroups_before=$(ls /sys/kernel/iommu_groups | wc -l)
info "display adapters before: ${BEFORE[*]} ($ngroups_before IOMMU groups)"
vm_monitor 'info pci' > "$FACTS/qemu-info-pci-before.txt" 2>&1 \
    && pass "QEMU monitor reachable from the guest (info pci: $(grep -c 'Bus' "$FACTS/qemu-info-pci-before.txt") functions)" \
    || fail "QEMU monitor relay: $(tail -2 "$FACTS/qemu-info-pci-before.txt")"

# new_display -- a display-class function present now that was not there before (empty if none).
# Bash builtins only: this runs in a polling loop, and every exec is slow under TCG.
declare -A KNOWN=()
for d in /sys/bus/pci/devices/*; do KNOWN[${d##*/}]=1; done
new_display() {
    local d c
    for d in /sys/bus/pci/devices/*; do
        [ -n "${KNOWN[${d##*/}]:-}" ] && continue
        read -r c < "$d/class" || continue
        case $c in 0x03*) echo "${d##*/}"; return ;; esac
    done
}

monitor_start hotplug-kernel --kernel --property
monitor_start hotplug-udev --udev --property
t0=$(t_now)
if reply=$(vm_monitor 'device_add bochs-display,id=hp1,bus=rp4' 2>&1); then
    pass "device_add bochs-display on rp4 accepted${reply:+: $reply}"
else
    fail "device_add: $reply"
fi
NEW=
for _ in $(seq 150); do
    [ -z "$NEW" ] && NEW=$(new_display)
    [ -n "$NEW" ] && [ -L "/sys/bus/pci/devices/$NEW/driver" ] && break
    sleep 0.2
done
udevadm settle --timeout=30
if [ -n "$NEW" ]; then
    drv=$(pci_driver "$NEW"); grp=$(pci_group "$NEW")
    parent=$(basename "$(dirname "$(readlink -f "/sys/bus/pci/devices/$NEW")")")
    members=$(ls "/sys/kernel/iommu_groups/$grp/devices" 2>/dev/null | tr '\n' ' ')
    info "hotplugged $NEW after $(elapsed "$t0")s: driver $drv, group $grp ($members), behind $parent"
    [ "$drv" = bochs-drm ] && pass "hotplugged $NEW bound to bochs-drm by udev" || fail "hotplugged $NEW driver '$drv'"
    [ "$grp" != - ] && [ "$members" = "$NEW " ] && pass "hotplugged $NEW alone in new IOMMU group $grp" \
        || fail "hotplugged $NEW group '$grp' members '$members'"
    [ ! -e "/sys/bus/pci/devices/$NEW/boot_vga" ] && pass "hotplugged $NEW (class $(attr "/sys/bus/pci/devices/$NEW/class")) has no boot_vga" \
        || info "hotplugged $NEW boot_vga=$(attr "/sys/bus/pci/devices/$NEW/boot_vga")"
    dump_device "/sys/bus/pci/devices/$NEW" > "$FACTS/hotplugged-$NEW.txt"
    for g in $(ls /sys/kernel/iommu_groups | sort -n); do
        echo "group $g: $(ls "/sys/kernel/iommu_groups/$g/devices" | tr '\n' ' ')"
    done > "$FACTS/iommu-groups-after-add.txt"
else
    fail "no new display adapter appeared within 30 s of device_add"
fi

t0=$(t_now)
if reply=$(vm_monitor 'device_del hp1' 2>&1); then pass "device_del hp1 accepted"; else fail "device_del: $reply"; fi
gone=0
for _ in $(seq 150); do
    [ -n "$NEW" ] && [ ! -e "/sys/bus/pci/devices/$NEW" ] && { gone=1; break; }
    sleep 0.2
done
if [ "$gone" = 1 ]; then
    pass "$NEW gone $(elapsed "$t0")s after device_del; groups back to $(ls /sys/kernel/iommu_groups | wc -l) (were $ngroups_before)"
else
    fail "${NEW:-the hotplugged adapter} still present 30 s after device_del"
fi
monitor_stop hotplug-kernel
monitor_stop hotplug-udev
k=$SCENARIO_OUT/uevents-hotplug-kernel-summary.txt
if [ -n "$NEW" ] && grep -q "ACTION=add .*SUBSYSTEM=pci .*PCI_SLOT_NAME=$NEW" "$k" \
   && grep -q "ACTION=bind .*SUBSYSTEM=pci DRIVER=bochs-drm .*PCI_SLOT_NAME=$NEW" "$k" \
   && grep -q "ACTION=remove .*SUBSYSTEM=pci .*PCI_SLOT_NAME=$NEW" "$k"; then
    pass "kernel uevents: pci add, bind DRIVER=bochs-drm, ..., remove for $NEW ($(wc -l < "$k") events)"
else
    fail "hotplug uevents incomplete: see uevents-hotplug-kernel-summary.txt"
fi
finish
