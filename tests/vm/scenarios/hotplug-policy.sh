#!/bin/bash
# Scenario "hotplug-policy" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# gpuvirtd runs with a policy (tests/vm/policies/hotplug-passthrough.toml) whose passthrough rule
# matches only the adapter that will be hot-added on the spare root port rp4 (0000:04:00.0,
# 1234:1111). Then, on the real kernel with real udev events:
#   1. start-up: the policy loads without error, the cold-plugged adapters are left alone;
#   2. `device_add bochs-display` through QEMU's monitor: udev binds bochs-drm, the daemon applies
#      the policy from the uevent and the new adapter ends on vfio-pci with /dev/vfio/<group>;
#      the other bochs-display with the same ids (0000:01:00.0) is untouched;
#   3. `device_del`: the adapter, its D-Bus objects and its /dev/vfio node are gone.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
POLICY=$(cd "$(dirname "$0")/../policies" && pwd)/hotplug-passthrough.toml
HP=0000:04:00.0
TWIN=0000:01:00.0
[ -e "/sys/bus/pci/devices/$HP" ] && { fail "$HP exists before device_add"; finish; }
TWIN_DRV=$(pci_driver "$TWIN")
modprobe vfio-pci   # so the apply is the bind alone (LoadModule is covered by passthrough)

dbus_start || finish
GPUVIRTD_ARGS="--root / --events udev --bus-address $DBUS_SYSTEM_BUS_ADDRESS --state-dir /run/gpuvirt-test/state --policy $POLICY"
gpuvirtd_start || finish
trap 'gpuvirtd_stop; dbus_stop' EXIT
MGR=$GV_ROOT/Manager

gpus_json() { ctl list --json | jq -c 'if type == "array" then . else .gpus end'; }
gpu_driver() { gpus_json | jq -r --arg a "$1" '(map(select(.pci_address == $a)) | .[0].driver) // "absent"'; }
driver_is() { [ "$(gpu_driver "$1")" = "$2" ]; }
gpu_absent() { [ "$(gpu_driver "$1")" = absent ]; }
sysfs_driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }

# 1. Start-up.
perr=$(gv_prop "$MGR" "$GV_IF.Manager" PolicyError); ppath=$(gv_prop "$MGR" "$GV_IF.Manager" PolicyPath)
[ "$perr" = "''" ] && pass "policy loaded without error ($ppath)" || fail "PolicyError: $perr"
info "EnforcementMode $(gv_prop "$MGR" "$GV_IF.Manager" EnforcementMode), LastApply $(gv_prop "$MGR" "$GV_IF.Manager" LastApply | cut -c1-200)"
sysfs_driver_is "$TWIN" "$TWIN_DRV" && pass "start-up: $TWIN (same ids, other address) still on $TWIN_DRV" \
    || fail "start-up: $TWIN moved to $(pci_driver "$TWIN")"

# 2. Hot-add.
t0=$(t_now)
if reply=$(vm_monitor 'device_add bochs-display,id=hp1,bus=rp4' 2>&1); then
    pass "device_add bochs-display on rp4 accepted"
else
    fail "device_add: $reply"; finish
fi
hp_present() { [ -e "/sys/bus/pci/devices/$HP" ]; }
wait_for 30 hp_present && info "$HP in sysfs after $(elapsed "$t0")s" || { fail "$HP did not appear after device_add"; finish; }
if wait_for 60 sysfs_driver_is "$HP" vfio-pci; then
    pass "policy applied from the udev event: $HP on vfio-pci $(elapsed "$t0")s after device_add"
else
    fail "$HP on '$(pci_driver "$HP")' 60 s after device_add (policy not applied); log: $(grep -i 'polic\|apply\|plan' "$SCENARIO_OUT/gpuvirtd.log" | tail -3 | tr '\n' ' ')"
fi
GROUP=$(pci_group "$HP")
vfio_node_present() { [ -c "/dev/vfio/$GROUP" ]; }
wait_for 20 vfio_node_present && pass "/dev/vfio/$GROUP appeared for $HP's group" || fail "/dev/vfio/$GROUP missing"
wait_for 30 driver_is "$HP" vfio-pci && pass "daemon: $HP Driver vfio-pci" || fail "daemon: $HP Driver '$(gpu_driver "$HP")'"
sysfs_driver_is "$TWIN" "$TWIN_DRV" && pass "$TWIN (same ids) untouched: $TWIN_DRV" || fail "$TWIN moved to $(pci_driver "$TWIN")"
info "LastApply after hot-add: $(gv_prop "$MGR" "$GV_IF.Manager" LastApply | cut -c1-300)"
grep -n . "$SCENARIO_OUT/gpuvirtd.log" | grep -i "04:00\|polic\|apply" | tail -20 > "$SCENARIO_OUT/gpuvirtd-apply.txt"

# 3. Hot-remove.
t0=$(t_now)
vm_monitor 'device_del hp1' >/dev/null 2>&1 && pass "device_del hp1 accepted" || fail "device_del hp1"
hp_gone() { [ ! -e "/sys/bus/pci/devices/$HP" ]; }
wait_for 40 hp_gone && pass "$HP gone from sysfs $(elapsed "$t0")s after device_del" || fail "$HP still in sysfs after device_del (driver $(pci_driver "$HP"))"
wait_for 30 gpu_absent "$HP" && pass "daemon dropped $HP's Gpu object" || fail "daemon still lists $HP"
if gv_call "$MGR" "$GV_IF.Manager.GetGpuByPciAddress" "$HP" >/dev/null 2>&1; then
    fail "GetGpuByPciAddress $HP still answers an object"
else
    pass "GetGpuByPciAddress $HP: no such device"
fi
grp_obj_gone() { ! ctl groups --json | jq -e --argjson g "$GROUP" '[.. | objects | select(.id? == $g)] | length > 0' >/dev/null 2>&1; }
wait_for 15 grp_obj_gone && pass "IOMMU group $GROUP no longer listed by the daemon" || fail "daemon still lists IOMMU group $GROUP"
vfio_node_gone() { [ ! -e "/dev/vfio/$GROUP" ]; }
wait_for 15 vfio_node_gone && pass "/dev/vfio/$GROUP gone" || fail "/dev/vfio/$GROUP still exists"

kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
