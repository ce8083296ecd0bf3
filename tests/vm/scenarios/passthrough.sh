#!/bin/bash
# Scenario "passthrough" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# gpuvirtd against the real /sys with real udev events, driven through its D-Bus API with
# gpuvirtctl (passthrough/return wait for the daemon's job) and raw gdbus calls for error names:
#   1. the boot VGA (00:03.0) is refused with org.gpuvirt.GpuVirt1.Error.BootVga and not touched;
#   2. `gpuvirtctl passthrough` of the secondary bochs-display (01:00.0): a dry run changes
#      nothing, the real one succeeds, sysfs shows vfio-pci, /dev/vfio/<group> appears, the daemon
#      says vfio-pci; Gpu.AssignPassthrough again is a no-op (job /);
#   3. `gpuvirtctl return`: the original driver (bochs-drm) is back, no driver_override is left,
#      /dev/vfio/<group> is gone, the daemon says bochs-drm.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
BOOT=0000:00:03.0
TARGET=${PASSTHROUGH_TARGET:-0000:01:00.0}
D=/sys/bus/pci/devices/$TARGET
[ "$(attr "/sys/bus/pci/devices/$BOOT/boot_vga")" = 1 ] || { fail "$BOOT is not the boot VGA here"; finish; }
ORIG=$(pci_driver "$TARGET"); GROUP=$(pci_group "$TARGET")
[ "$ORIG" != - ] && [ "$ORIG" != vfio-pci ] || { fail "$TARGET has driver '$ORIG' before the test"; finish; }
[ "$GROUP" != - ] || { fail "$TARGET has no IOMMU group"; finish; }
info "target $TARGET: driver $ORIG, IOMMU group $GROUP; boot VGA $BOOT driver $(pci_driver "$BOOT")"
[ -e "/dev/vfio/$GROUP" ] && fail "/dev/vfio/$GROUP exists before any assignment"

dbus_start || finish
gpuvirtd_start || finish
trap 'gpuvirtd_stop; dbus_stop' EXIT

gpus_json() { ctl list --json | jq -c 'if type == "array" then . else .gpus end'; }
gpu_driver() { gpus_json | jq -r --arg a "$1" '(map(select(.pci_address == $a)) | .[0].driver) // "absent"'; }
driver_is() { [ "$(gpu_driver "$1")" = "$2" ]; }
sysfs_driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }
vfio_node_present() { [ -c "/dev/vfio/$GROUP" ]; }
vfio_node_gone() { [ ! -e "/dev/vfio/$GROUP" ]; }
GPU=$(gv_gpu_path "$TARGET")

# 1. The boot VGA is refused: gpuvirtctl fails naming the error, the raw call gets the name.
BOOT_DRV=$(pci_driver "$BOOT")
if out=$(ctl passthrough "$BOOT" 2>&1); then
    fail "gpuvirtctl passthrough of the boot VGA $BOOT succeeded: $out"
else
    grep -q "$GV_IF.Error.BootVga" <<<"$out" && pass "gpuvirtctl passthrough $BOOT refused: $(head -1 <<<"$out" | cut -c1-160)" \
        || fail "gpuvirtctl passthrough $BOOT failed without BootVga: $out"
fi
if out=$(gv_call "$(gv_gpu_path "$BOOT")" "$GV_IF.Gpu.AssignPassthrough" '{}' 2>&1); then
    fail "AssignPassthrough of the boot VGA $BOOT succeeded: $out"
else
    name=$(gv_error_name "$out")
    [ "$name" = "$GV_IF.Error.BootVga" ] && pass "Gpu.AssignPassthrough $BOOT: D-Bus error $name" \
        || fail "boot VGA $BOOT refused with '$name', not $GV_IF.Error.BootVga: $out"
fi
[ "$(pci_driver "$BOOT")" = "$BOOT_DRV" ] && [ -z "$(attr "/sys/bus/pci/devices/$BOOT/driver_override" | sed 's/(null)//')" ] \
    && pass "boot VGA still on $BOOT_DRV, no driver_override" \
    || fail "boot VGA touched: driver $(pci_driver "$BOOT"), override '$(attr "/sys/bus/pci/devices/$BOOT/driver_override")'"

# 2. Assign the secondary adapter (gpuvirtctl passthrough waits for the job).
if out=$(ctl passthrough --dry-run "$TARGET" 2>&1); then
    echo "$out" > "$SCENARIO_OUT/plan-assign.txt"
    sysfs_driver_is "$TARGET" "$ORIG" && grep -q vfio <<<"$out" \
        && pass "passthrough --dry-run: a plan naming vfio-pci, $TARGET still on $ORIG" \
        || fail "passthrough --dry-run: driver $(pci_driver "$TARGET"), plan: $out"
else
    fail "gpuvirtctl passthrough --dry-run $TARGET: $out"
fi
t0=$(t_now)
if out=$(ctl passthrough "$TARGET" 2>&1); then
    pass "gpuvirtctl passthrough $TARGET in $(elapsed "$t0")s: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
else
    fail "gpuvirtctl passthrough $TARGET (exit $?): $out"
fi
sysfs_driver_is "$TARGET" vfio-pci && pass "sysfs: $TARGET bound to vfio-pci" || fail "sysfs: $TARGET on '$(pci_driver "$TARGET")'"
wait_for 20 vfio_node_present && pass "/dev/vfio/$GROUP appeared ($(ls -l "/dev/vfio/$GROUP" | awk '{print $1, $5, $6}'))" \
    || fail "/dev/vfio/$GROUP did not appear (dev/vfio: $(ls /dev/vfio 2>&1 | tr '\n' ' '))"
wait_for 30 driver_is "$TARGET" vfio-pci && pass "daemon: $TARGET Driver vfio-pci" \
    || fail "daemon: $TARGET Driver '$(gpu_driver "$TARGET")'"
info "after assign: driver_override '$(attr "$D/driver_override")', State $(gv_prop "$GPU" "$GV_IF.Gpu" State)"
cat /run/gpuvirt-test/state/ledger.json > "$SCENARIO_OUT/ledger-after-assign.json" 2>&1
if out=$(gv_call "$GPU" "$GV_IF.Gpu.AssignPassthrough" '{}' 2>&1); then
    [ "$(gv_job_path "$out")" = / ] && pass "second AssignPassthrough is a no-op (job /): $(tr '\n' ' ' <<<"$out" | cut -c1-120)" \
        || fail "second AssignPassthrough started a job: $out"
else
    fail "second AssignPassthrough: $out"
fi

# 3. Back to the host.
t0=$(t_now)
if out=$(ctl return "$TARGET" 2>&1); then
    pass "gpuvirtctl return $TARGET in $(elapsed "$t0")s: $(tr '\n' ' ' <<<"$out" | cut -c1-200)"
else
    fail "gpuvirtctl return $TARGET (exit $?): $out"
fi
wait_for 20 sysfs_driver_is "$TARGET" "$ORIG" && pass "sysfs: $TARGET back on its original driver $ORIG" \
    || fail "sysfs: $TARGET on '$(pci_driver "$TARGET")', expected $ORIG"
ov=$(attr "$D/driver_override")
[ -z "$ov" ] || [ "$ov" = "(null)" ] && pass "no driver_override left ('$ov')" || fail "driver_override left: '$ov'"
wait_for 20 vfio_node_gone && pass "/dev/vfio/$GROUP is gone" || fail "/dev/vfio/$GROUP still exists"
wait_for 30 driver_is "$TARGET" "$ORIG" && pass "daemon: $TARGET Driver $ORIG" || fail "daemon: $TARGET Driver '$(gpu_driver "$TARGET")'"

kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
