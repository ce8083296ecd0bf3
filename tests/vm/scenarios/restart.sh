#!/bin/bash
# Scenario "restart" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# gpuvirtd killed with SIGKILL in the middle of a policy apply on the real kernel, then restarted
# with the same state dir:
#   1. gpuvirtd starts with a policy (tests/vm/policies/restart-passthrough.toml) that passes
#      0000:01:00.0 through; a watcher polls the ownership ledger and sysfs and kill -9s the
#      daemon inside the rebind (ledger `pending`, driver_override written or driver unbound);
#   2. the restarted daemon recovers and converges: the card on vfio-pci, the ledger `assigned`
#      with the ORIGINAL driver (bochs-drm, never vfio-pci) as the slot's original;
#   3. a third start without the policy and Gpu.ReturnToHost: the card goes back to the original
#      driver the killed daemon recorded, no driver_override, /dev/vfio/<group> gone.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
TARGET=0000:01:00.0
D=/sys/bus/pci/devices/$TARGET
ORIG=$(pci_driver "$TARGET"); GROUP=$(pci_group "$TARGET")
[ "$ORIG" != - ] && [ "$ORIG" != vfio-pci ] || { fail "$TARGET has driver '$ORIG' before the test"; finish; }
info "target $TARGET: driver $ORIG, IOMMU group $GROUP"
STATE=/run/gpuvirt-test/state
LEDGER=$STATE/ledger.json
POLICY=/run/gpuvirt-test/policy.toml
mkdir -p "$STATE"
cp "$(dirname "$0")/../policies/restart-passthrough.toml" "$POLICY"
modprobe vfio-pci   # the apply is the slot rebind alone: the kill lands in it

dbus_start || finish
trap 'gpuvirtd_stop; dbus_stop' EXIT
GPUVIRTD_ARGS="--root / --events udev --bus-address $DBUS_SYSTEM_BUS_ADDRESS --state-dir $STATE --policy $POLICY"
MGR=$GV_ROOT/Manager
ovr() { local v; v=$(attr "$D/driver_override"); [ "$v" = "(null)" ] && v=; echo "$v"; }
ledger_state() { jq -r --arg k "$1" '[.slots | to_entries[] | select(.key | startswith($k)) | .value.state] | .[0] // "none"' "$LEDGER" 2>/dev/null || echo unreadable; }
ledger_original() { jq -r --arg a "$TARGET" '[.slots[].functions[] | select(.address == $a) | .original_driver] | .[0] // "none"' "$LEDGER" 2>/dev/null; }

# 1. Start with the policy; kill -9 as soon as the slot is pending. The daemon is started here
# (not with gpuvirtd_start) so the watcher polls from the first instant; bash builtins only, so
# one poll takes microseconds.
bin=$(bin_path gpuvirtd)
# shellcheck disable=SC2086
RUST_LOG=info "$bin" $GPUVIRTD_ARGS >> "$SCENARIO_OUT/gpuvirtd.log" 2>&1 &
PID=$!
seen=
end=$(( SECONDS + 90 ))
# Kill inside the rebind: the ledger says pending (originals kept) and the kernel has started to
# change (driver_override written, or the old driver unbound). If the rebind outruns the poll,
# kill at the first sign of pending anyway.
pending_at=
while [ "$SECONDS" -lt "$end" ]; do
    l=
    read -r -d '' l < "$LEDGER" 2>/dev/null
    if [[ $l == *'"assigned"'* ]]; then seen=too-late; break; fi
    if [[ $l == *'"pending"'* ]]; then
        [ -n "$pending_at" ] || pending_at=$SECONDS
        o=; read -r o < "$D/driver_override" 2>/dev/null
        if [ "$o" = vfio-pci ] || [ ! -e "$D/driver" ]; then seen=mid-rebind; break; fi
        [ $(( SECONDS - pending_at )) -ge 3 ] && { seen=ledger-pending; break; }
    fi
    kill -0 "$PID" 2>/dev/null || { seen=died; break; }
done
kill -9 "$PID" 2>/dev/null
wait "$PID" 2>/dev/null
AT_KILL="driver $(pci_driver "$TARGET"), driver_override '$(ovr)', ledger $(ledger_state 0000:01:00)"
cp "$LEDGER" "$SCENARIO_OUT/ledger-at-kill.json" 2>/dev/null
case $seen in
    mid-rebind) pass "gpuvirtd killed with SIGKILL mid-rebind: $AT_KILL" ;;
    ledger-pending) pass "gpuvirtd killed with SIGKILL while the slot was pending (no kernel change seen yet): $AT_KILL" ;;
    too-late) fail "the apply finished before the watcher saw it pending: $AT_KILL" ;;
    died) fail "gpuvirtd exited on its own: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")" ;;
    *) fail "no apply within 90 s: $AT_KILL" ;;
esac
[ "$(ledger_original)" = "$ORIG" ] && pass "ledger at the kill keeps the original driver $ORIG" \
    || fail "ledger at the kill says original '$(ledger_original)'"
echo "---- restart" >> "$SCENARIO_OUT/gpuvirtd.log"

# 2. Restart with the same state dir.
t0=$(t_now)
gpuvirtd_start || finish
sysfs_driver_is() { [ "$(pci_driver "$1")" = "$2" ]; }
assigned() { sysfs_driver_is "$TARGET" vfio-pci && [ "$(ledger_state 0000:01:00)" = assigned ]; }
if wait_for 60 assigned; then
    pass "restarted daemon converged in $(elapsed "$t0")s: $TARGET on vfio-pci, ledger assigned"
else
    fail "after restart: driver $(pci_driver "$TARGET"), ledger $(ledger_state 0000:01:00)"
fi
[ "$(ledger_original)" = "$ORIG" ] && pass "ledger after restart: original driver still $ORIG" \
    || fail "ledger after restart: original driver '$(ledger_original)', expected $ORIG"
grep -E 'recover|ledger' "$SCENARIO_OUT/gpuvirtd.log" | sed -n '/---- restart/,$p' > /dev/null
sed -n '/---- restart/,$p' "$SCENARIO_OUT/gpuvirtd.log" | grep -iE 'recover|interrupted' | head -5 | while read -r line; do info "log: ${line:0:200}"; done
vfio_node_present() { [ -c "/dev/vfio/$GROUP" ]; }
wait_for 20 vfio_node_present && pass "/dev/vfio/$GROUP present" || fail "/dev/vfio/$GROUP missing"
drift=$(gv_prop "$MGR" "$GV_IF.Manager" Drift)
info "Drift $drift; LastApply $(gv_prop "$MGR" "$GV_IF.Manager" LastApply | cut -c1-200)"
cp "$LEDGER" "$SCENARIO_OUT/ledger-after-restart.json"

# 3. Back to the host: a third start, without the policy (it would keep the card on vfio-pci),
# and Gpu.ReturnToHost: the original driver comes from the ledger the killed daemon wrote.
gpuvirtd_stop
echo "---- third start, no policy" >> "$SCENARIO_OUT/gpuvirtd.log"
GPUVIRTD_ARGS="--root / --events udev --bus-address $DBUS_SYSTEM_BUS_ADDRESS --state-dir $STATE --policy /run/gpuvirt-test/no-policy.toml"
gpuvirtd_start || finish
sysfs_driver_is "$TARGET" vfio-pci && pass "a restart without the policy leaves $TARGET on vfio-pci" || fail "third start moved $TARGET to $(pci_driver "$TARGET")"
t0=$(t_now)
if out=$(gv_call "$(gv_gpu_path "$TARGET")" "$GV_IF.Gpu.ReturnToHost" '{}' 2>&1); then
    job=$(gv_job_path "$out")
    if r=$(gv_job_wait "$job" 60); then pass "ReturnToHost job succeeded: $r"; else fail "ReturnToHost job: $r"; fi
else
    fail "ReturnToHost $TARGET: $out"
fi
wait_for 30 sysfs_driver_is "$TARGET" "$ORIG" && pass "$TARGET back on its original driver $ORIG ($(elapsed "$t0")s)" \
    || fail "$TARGET on '$(pci_driver "$TARGET")' after ReturnToHost, expected $ORIG"
[ -z "$(ovr)" ] && pass "no driver_override left" || fail "driver_override left: '$(ovr)'"
vfio_node_gone() { [ ! -e "/dev/vfio/$GROUP" ]; }
wait_for 20 vfio_node_gone && pass "/dev/vfio/$GROUP gone" || fail "/dev/vfio/$GROUP still exists"
[ "$(ledger_state 0000:01:00)" = none ] && pass "ledger no longer holds the slot" || info "ledger slot state after return: $(ledger_state 0000:01:00)"
cp "$LEDGER" "$SCENARIO_OUT/ledger-end.json" 2>/dev/null

kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
