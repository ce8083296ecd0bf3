#!/bin/bash
# Scenario "daemon-events" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# gpuvirtd runs against the real /sys with real udev events on a private bus; gpuvirtctl reads its
# D-Bus API. Nothing here uses the daemon's mutators: the changes are made behind its back (sysfs
# writes, QEMU device_add/device_del, mdev create/remove) and the daemon must follow them from the
# kernel's uevents alone:
#   1. start: every display adapter listed with the driver and IOMMU group sysfs shows;
#   2. a secondary adapter rebound to vfio-pci and back by hand: Driver follows both ways;
#   3. an adapter hot-added and removed through QEMU's monitor: it appears and disappears;
#   4. mdev parents loaded and an mdev created/removed by hand: the mdev appears and disappears.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
dbus_start || finish
t0=$(t_now)
gpuvirtd_start || finish
pass "gpuvirtd owns org.gpuvirt.GpuVirt1 on the private bus after $(elapsed "$t0")s"
trap 'gpuvirtd_stop; dbus_stop' EXIT

# gpus_json -- `gpuvirtctl list --json` as an array of GPUs, whatever the top-level shape.
gpus_json() { ctl list --json | jq -c 'if type == "array" then . else .gpus end'; }
# gpu_driver ADDR -- the daemon's view of one GPU's driver ("absent" when not listed).
gpu_driver() { gpus_json | jq -r --arg a "$1" '(map(select(.pci_address == $a)) | .[0].driver) // "absent"'; }
driver_is() { [ "$(gpu_driver "$1")" = "$2" ]; }
gpu_absent() { [ "$(gpu_driver "$1")" = absent ]; }
mdev_listed() { ctl mdevs --json | jq -e --arg u "$1" '[if type == "array" then .[] else .mdevs[] end | select(.uuid == $u)] | length == 1' >/dev/null; }
mdev_unlisted() { ! mdev_listed "$1"; }

# 1. Start-up view against sysfs.
for a in $(display_addrs); do
    drv=$(pci_driver "$a"); grp=$(pci_group "$a")
    echo "$a $drv $grp"
done > "$SCENARIO_OUT/gpus.sysfs"
gpus_json | jq -r '.[] | "\(.pci_address) \(.driver) \(.iommu_group)"' | sort > "$SCENARIO_OUT/gpus.daemon"
if diff -u "$SCENARIO_OUT/gpus.sysfs" "$SCENARIO_OUT/gpus.daemon" > "$SCENARIO_OUT/gpus.diff"; then
    pass "gpuvirtctl list: $(wc -l < "$SCENARIO_OUT/gpus.sysfs") GPUs with the driver and group sysfs shows"
else
    fail "gpuvirtctl list differs from sysfs (- sysfs, + daemon): $(grep '^[-+]0' "$SCENARIO_OUT/gpus.diff" | tr '\n' ';')"
fi

# 2. Rebind behind the daemon's back.
TARGET=
for a in $(display_addrs); do
    [ "$(attr "/sys/bus/pci/devices/$a/boot_vga")" = 1 ] && continue
    [ "$(pci_driver "$a")" = bochs-drm ] && { TARGET=$a; break; }
done
if [ -n "$TARGET" ]; then
    d=/sys/bus/pci/devices/$TARGET
    modprobe vfio-pci
    echo vfio-pci > "$d/driver_override"; echo "$TARGET" > "$d/driver/unbind"; echo "$TARGET" > /sys/bus/pci/drivers_probe
    t0=$(t_now)
    wait_for 30 driver_is "$TARGET" vfio-pci && pass "daemon saw $TARGET bound to vfio-pci ($(elapsed "$t0")s)" \
        || fail "daemon still says $TARGET driver '$(gpu_driver "$TARGET")' (sysfs: $(pci_driver "$TARGET"))"
    echo > "$d/driver_override"; echo "$TARGET" > /sys/bus/pci/drivers/vfio-pci/unbind; echo "$TARGET" > /sys/bus/pci/drivers_probe
    t0=$(t_now)
    wait_for 30 driver_is "$TARGET" bochs-drm && pass "daemon saw $TARGET back on bochs-drm ($(elapsed "$t0")s)" \
        || fail "daemon says $TARGET driver '$(gpu_driver "$TARGET")' after the rebind back (sysfs: $(pci_driver "$TARGET"))"
else
    fail "no secondary bochs-drm adapter to rebind"
fi

# 3. Hotplug through QEMU's monitor.
if vm_monitor 'device_add bochs-display,id=hp1,bus=rp4' >/dev/null; then
    t0=$(t_now)
    NEW=
    for _ in $(seq 60); do
        NEW=$(comm -13 "$SCENARIO_OUT/gpus.sysfs" <(for a in $(display_addrs); do echo "$a $(pci_driver "$a") $(pci_group "$a")"; done) | awk '{print $1; exit}')
        [ -n "$NEW" ] && break; sleep 0.5
    done
    if [ -z "$NEW" ]; then
        fail "no adapter appeared in sysfs after device_add"
    else
        wait_for 30 driver_is "$NEW" bochs-drm && pass "daemon listed hot-added $NEW on bochs-drm ($(elapsed "$t0")s after device_add)" \
            || fail "daemon view of hot-added $NEW: driver '$(gpu_driver "$NEW")' (sysfs: $(pci_driver "$NEW"))"
        vm_monitor 'device_del hp1' >/dev/null || fail "device_del hp1"
        t0=$(t_now)
        wait_for 40 gpu_absent "$NEW" && pass "daemon dropped $NEW after device_del ($(elapsed "$t0")s)" \
            || fail "daemon still lists $NEW after device_del (sysfs: $([ -e "/sys/bus/pci/devices/$NEW" ] && echo present || echo gone))"
    fi
else
    fail "device_add through the monitor relay"
fi

# 4. mdevs made by hand.
modprobe mbochs || fail "modprobe mbochs"
U=$(cat /proc/sys/kernel/random/uuid)
if echo "$U" > /sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create; then
    t0=$(t_now)
    wait_for 30 mdev_listed "$U" && pass "daemon listed mdev $U created by hand ($(elapsed "$t0")s)" \
        || fail "daemon does not list mdev $U: $(ctl mdevs 2>&1 | tail -3 | tr '\n' ' ')"
    echo 1 > "/sys/bus/mdev/devices/$U/remove"
    t0=$(t_now)
    wait_for 30 mdev_unlisted "$U" && pass "daemon dropped mdev $U after its removal ($(elapsed "$t0")s)" \
        || fail "daemon still lists removed mdev $U"
else
    fail "mdev create on mbochs-small"
fi

kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running after all events" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
