#!/bin/bash
# Scenario "hotplug-return" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# The ledger follows the hardware (issue 18 point 9) on the real kernel, gpuvirtd without a policy,
# on a bochs-display hot-added on the spare root port rp4:
#   1. device_add; udev binds bochs-drm;
#   2. `gpuvirtctl passthrough ADDR`: vfio-pci, ledger record `assigned`;
#   3. the kernel removes the card while it is on vfio-pci (sysfs `remove`: the same
#      pci_stop_and_remove_bus_device and uevents as a surprise removal): the ledger record
#      (/run/gpuvirt-test/state/ledger.json) is `removed`, the original driver kept, logged at INFO;
#   4. the card comes back (`/sys/bus/pci/rescan`: a new pci_dev, no driver_override): on bochs-drm,
#      the record is gone, `gpuvirtctl return ADDR --dry-run` says there is nothing to do;
#   5. passed through again, then QEMU's device_del while on vfio-pci: the record is `removed`.
# Why sysfs remove + rescan for the return and not device_del + device_add: QEMU 7.2 keeps an
# unplugged bochs-display's VRAM block registered (its console holds the device), so a second
# bochs-display on rp4 aborts QEMU ("RAMBlock ... already registered"); virtio-gpu-pci is not
# hot-pluggable.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
HP=0000:04:00.0
SLOT=${HP%.*}
LEDGER=/run/gpuvirt-test/state/ledger.json
[ -e "/sys/bus/pci/devices/$HP" ] && { fail "$HP exists before device_add"; finish; }

dbus_start || finish
gpuvirtd_start || finish
trap 'gpuvirtd_stop; dbus_stop' EXIT

sysfs_driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }
hp_bound() { [ -L "/sys/bus/pci/devices/$HP/driver" ]; }
hp_gone() { [ ! -e "/sys/bus/pci/devices/$HP" ]; }
listed() { ctl show "$HP" >/dev/null 2>&1; }
# slot_state -- the ledger record's state ("none" without one).
slot_state() { jq -r --arg s "$SLOT" '.slots[$s].state // "none"' "$LEDGER" 2>/dev/null || echo none; }
slot_state_is() { [ "$(slot_state)" = "$1" ]; }
passthrough() {
    local out
    if out=$(ctl passthrough "$HP" 2>&1) && sysfs_driver_is "$HP" vfio-pci; then
        pass "gpuvirtctl passthrough $HP: vfio-pci"
    else
        fail "gpuvirtctl passthrough $HP: driver '$(pci_driver "$HP")': $out"
    fi
    slot_state_is assigned && pass "ledger record of $SLOT assigned" || fail "ledger record of $SLOT '$(slot_state)' after passthrough"
}
# removed_kept HOW -- the record is `removed` with the original driver.
removed_kept() {
    if wait_for 20 slot_state_is removed; then
        local orig; orig=$(jq -r --arg s "$SLOT" '.slots[$s].functions[0].original_driver' "$LEDGER")
        [ "$orig" = bochs-drm ] && pass "$1: ledger record of $SLOT removed, original driver $orig kept ($(jq -c --arg s "$SLOT" '.slots[$s].removal' "$LEDGER"))" \
            || fail "$1: ledger record of $SLOT removed with original driver '$orig'"
    else
        fail "$1: ledger record of $SLOT '$(slot_state)'; log: $(grep -i "$SLOT" "$SCENARIO_OUT/gpuvirtd.log" | tail -3 | tr '\n' ' ')"
    fi
}

# 1. Hot-add.
t0=$(t_now)
if reply=$(vm_monitor 'device_add bochs-display,id=hp1,bus=rp4' 2>&1); then
    pass "device_add bochs-display on rp4 accepted"
else
    fail "device_add: $reply"; finish
fi
wait_for 40 hp_bound || { fail "$HP not bound to a driver 40 s after device_add"; finish; }
udevadm settle --timeout=30
sysfs_driver_is "$HP" bochs-drm && pass "$HP on bochs-drm $(elapsed "$t0")s after device_add" || fail "$HP on '$(pci_driver "$HP")'"
wait_for 30 listed && pass "gpuvirtd shows $HP" || fail "gpuvirtd does not show $HP"

# 2. Manual passthrough.
passthrough

# 3. Removed by the kernel while on vfio-pci.
echo 1 > "/sys/bus/pci/devices/$HP/remove"
wait_for 20 hp_gone && pass "$HP removed (sysfs remove) while on vfio-pci" || fail "$HP still present after sysfs remove"
removed_kept "kernel removal"
grep -q "slot $SLOT removed while passed through; its record is kept until a card returns to that slot" "$SCENARIO_OUT/gpuvirtd.log" \
    && pass "gpuvirtd logged the removal of $SLOT at INFO" || fail "no removal line for $SLOT in gpuvirtd.log"

# 4. The card comes back: on bochs-drm, nothing to return.
echo 1 > /sys/bus/pci/rescan
wait_for 40 hp_bound || fail "$HP not back with a driver 40 s after rescan"
udevadm settle --timeout=30
sysfs_driver_is "$HP" bochs-drm && pass "$HP back on bochs-drm after rescan" || fail "$HP back on '$(pci_driver "$HP")'"
wait_for 20 slot_state_is none && pass "ledger record of $SLOT dropped: the card came back on its host driver" \
    || fail "ledger record of $SLOT '$(slot_state)' after the card came back"
grep -q "slot $SLOT removed while passed through: the card back in it is with the host" "$SCENARIO_OUT/gpuvirtd.log" \
    && pass "gpuvirtd logged: nothing to return" || fail "no 'nothing to return' line for $SLOT in gpuvirtd.log"
wait_for 30 listed || fail "gpuvirtd does not show $HP after the rescan"
out=$(ctl return "$HP" --dry-run 2>&1)
grep -q '^nothing to do' <<<"$out" && pass "gpuvirtctl return $HP --dry-run: $out" || fail "gpuvirtctl return $HP --dry-run: $out"
sysfs_driver_is "$HP" bochs-drm && pass "$HP still on bochs-drm" || fail "$HP moved to $(pci_driver "$HP")"

# 5. Passed through again, then unplugged through QEMU while on vfio-pci.
passthrough
t0=$(t_now)
vm_monitor 'device_del hp1' >/dev/null 2>&1 && pass "device_del hp1 accepted" || fail "device_del hp1"
wait_for 40 hp_gone && info "$HP gone $(elapsed "$t0")s after device_del" || fail "$HP still present after device_del"
removed_kept "device_del"
kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
