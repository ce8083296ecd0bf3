#!/bin/bash
# tests/vm/guest/run-scenarios.sh SCENARIO... -- runs INSIDE the test VM (run-tests.sh boots it).
# Common setup (udev coldplug, as on a real host at boot), then each tests/vm/scenarios/<name>.sh
# in turn, each with its own artefact dir $GPUVIRT_VM_OUT/<name>/. Appends one line per scenario
# to $GPUVIRT_VM_OUT/scenarios.txt ("<name> PASS|FAIL <seconds>") and exits non-zero when any
# scenario failed.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SCEN_DIR=$(dirname "$HERE")/scenarios
OUTD=${GPUVIRT_VM_OUT:?run-scenarios.sh runs inside the test VM (GPUVIRT_VM_OUT is not set)}
export HOME=/tmp   # the host's /root is read-only here
export SCENARIO_OUT=$OUTD/setup RESULTS=$OUTD/setup/results.txt
mkdir -p "$SCENARIO_OUT"; : > "$RESULTS"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

info "guest kernel $(uname -r), accel ${GPUVIRT_VM_ACCEL:-?}, uptime at start $(t_now)s"
t0=$(t_now)
if udev_coldplug; then pass "udev coldplug + settle in $(elapsed "$t0")s"; else fail "udev coldplug"; fi
[ "$FAILED" = 0 ] || exit 1

rc_all=0
for name in "$@"; do
    script=$SCEN_DIR/$name.sh
    export SCENARIO_OUT=$OUTD/$name RESULTS=$OUTD/$name/results.txt
    rm -rf "$SCENARIO_OUT"; mkdir -p "$SCENARIO_OUT"; : > "$RESULTS"
    echo "=== scenario $name"
    t0=$(t_now)
    if [ ! -f "$script" ]; then
        echo "FAIL: no scenario $script" | tee -a "$RESULTS"; rc=1
    else
        bash "$script"; rc=$?
    fi
    # A scenario that exits non-zero without a FAIL line still fails.
    if [ "$rc" != 0 ] || grep -q '^FAIL' "$RESULTS"; then verdict=FAIL; rc_all=1; else verdict=PASS; fi
    [ "$rc" != 0 ] && ! grep -q '^FAIL' "$RESULTS" && echo "FAIL: scenario exited with status $rc" | tee -a "$RESULTS"
    echo "$name $verdict $(elapsed "$t0")" >> "$OUTD/scenarios.txt"
    echo "=== scenario $name: $verdict in $(elapsed "$t0")s"
done
udevadm control --exit 2>/dev/null
exit "$rc_all"
