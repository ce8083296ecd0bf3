#!/bin/bash
# Scenario "create-calls" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# One manual vGPU creation through gpuvirtd against one `mdevctl start`, on the real kernel's sample
# mdev parents (mtty, mdpy): the same parent, type and UUIDs, one process per vGPU, in turns
# (gpuvirtctl round, then mdevctl round, three times). Each call is timed as a whole process from
# this shell. Checks are functional only (every call made its device, every removal took it
# away); the times are INFO lines and $SCENARIO_OUT/create-calls.txt, which bench/run reads into
# docs/performance.md. Times under TCG are slow in absolute terms; the ratio is the figure.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
command -v mdevctl >/dev/null || { fail "mdevctl is not installed on the host root (scripts/setup.sh installs it)"; finish; }
modprobe mtty && modprobe mdpy || { fail "modprobe mtty mdpy"; finish; }
MT=/sys/class/mdev_bus
# mdevctl keeps its definitions and looks for callouts under /etc (the read-only host root): give
# it an empty tmpfs there, as on a host with nothing defined.
mount -t tmpfs none /etc/mdevctl.d 2>/dev/null || { mkdir -p /run/mdevctl.d && mount --bind /run/mdevctl.d /etc/mdevctl.d; } \
    || { fail "cannot put an empty /etc/mdevctl.d in place"; finish; }
mkdir -p /etc/mdevctl.d/scripts.d/callouts /etc/mdevctl.d/scripts.d/notifiers

dbus_start || finish
gpuvirtd_start || finish
trap 'gpuvirtd_stop; dbus_stop; umount /etc/mdevctl.d 2>/dev/null' EXIT

ROUNDS=${CREATE_CALLS_ROUNDS:-3}
OUTFILE=$SCENARIO_OUT/create-calls.txt
: > "$OUTFILE"

# now_ms -- wall clock in milliseconds, from bash's builtin (no exec under TCG).
now_ms() { local t=$EPOCHREALTIME; echo "${t%.*}${t#*.}" | awk '{printf "%.3f", $1 / 1000}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"} else if (NR % 2) {print a[(NR+1)/2]} else {printf "%.3f", (a[NR/2] + a[NR/2+1]) / 2}}'; }
present() { [ -e "/sys/bus/mdev/devices/$1" ]; }
listed() { ctl mdev list --json | jq -e --arg u "$1" '[.[] | select(.uuid == $u)] | length == 1' >/dev/null 2>&1; }

# measure PARENT TYPE COUNT -- ROUNDS x (COUNT gpuvirtctl creations, then COUNT mdevctl starts).
measure() {
    local parent=$1 type=$2 count=$3 r i u t0 t1 ok
    local gv_times=() mc_times=()
    for r in $(seq "$ROUNDS"); do
        ok=1
        for i in $(seq "$count"); do
            u=$(printf 'c0ffee%02x-0000-4000-8000-%012x' "$r" "$i")
            t0=$EPOCHREALTIME
            ctl mdev create "$parent" "$type" --uuid "$u" >/dev/null 2>"$SCENARIO_OUT/ctl.err" || { ok=0; fail "gpuvirtctl mdev create $parent $type --uuid $u: $(cat "$SCENARIO_OUT/ctl.err")"; }
            t1=$EPOCHREALTIME
            gv_times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)*1000}')")
            present "$u" || { ok=0; fail "after gpuvirtctl mdev create, $u is not in sysfs"; }
        done
        [ "$ok" = 1 ] && pass "round $r: $count gpuvirtctl mdev create on $parent/$type made their devices"
        for i in $(seq "$count"); do
            u=$(printf 'c0ffee%02x-0000-4000-8000-%012x' "$r" "$i")
            ctl mdev remove "$u" >/dev/null 2>&1 || echo 1 > "/sys/bus/mdev/devices/$u/remove"
        done
        wait_for 30 eval '! ls /sys/bus/mdev/devices/c0ffee* >/dev/null 2>&1' || fail "round $r: the gpuvirtctl devices did not go away"
        udevadm settle --timeout=30
        ok=1
        for i in $(seq "$count"); do
            u=$(printf 'c0ffee%02x-0000-4000-9000-%012x' "$r" "$i")
            t0=$EPOCHREALTIME
            mdevctl start -p "$parent" -t "$type" -u "$u" >/dev/null 2>"$SCENARIO_OUT/mdevctl.err" || { ok=0; fail "mdevctl start -p $parent -t $type -u $u: $(cat "$SCENARIO_OUT/mdevctl.err")"; }
            t1=$EPOCHREALTIME
            mc_times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)*1000}')")
            present "$u" || { ok=0; fail "after mdevctl start, $u is not in sysfs"; }
        done
        [ "$ok" = 1 ] && pass "round $r: $count mdevctl start on $parent/$type made their devices"
        for i in $(seq "$count"); do
            u=$(printf 'c0ffee%02x-0000-4000-9000-%012x' "$r" "$i")
            mdevctl stop -u "$u" >/dev/null 2>&1 || echo 1 > "/sys/bus/mdev/devices/$u/remove"
        done
        wait_for 30 eval '! ls /sys/bus/mdev/devices/c0ffee* >/dev/null 2>&1' || fail "round $r: the mdevctl devices did not go away"
        udevadm settle --timeout=30
        # The daemon's read-back of the removals must not run into the next timed round.
        wait_for 30 eval '[ "$(ctl mdev list --json | jq length)" = 0 ]' || fail "round $r: the daemon still lists mdevs"
    done
    local gv mc
    gv=$(printf '%s\n' "${gv_times[@]}" | median)
    mc=$(printf '%s\n' "${mc_times[@]}" | median)
    info "$parent/$type: gpuvirtctl mdev create median $gv ms per call, mdevctl start median $mc ms per call ($((ROUNDS * count)) calls each; ratio $(awk -v a="$gv" -v b="$mc" 'BEGIN{printf "%.2f", a/b}')x)"
    echo "$parent $type calls=$((ROUNDS * count)) gpuvirtctl_ms=$gv mdevctl_ms=$mc gpuvirtctl_all=$(IFS=,; echo "${gv_times[*]}") mdevctl_all=$(IFS=,; echo "${mc_times[*]}")" >> "$OUTFILE"
}

# The daemon must list both parents before the first call.
wait_for 30 eval 'ctl types --json | jq -e "[.[] | select(.name == \"mtty\" or .name == \"mdpy\")] | length == 2" >/dev/null' \
    && pass "daemon lists the mtty and mdpy parents" || { fail "daemon does not list mtty/mdpy"; finish; }
mtty_room=$(attr "$MT/mtty/mdev_supported_types/mtty-2/available_instances")
mdpy_room=$(attr "$MT/mdpy/mdev_supported_types/mdpy-vga/available_instances")
info "room: mtty/mtty-2 $mtty_room, mdpy/mdpy-vga $mdpy_room"
# Where the time goes (INFO only): each tool's process floor (`--version`: exec, start-up,
# exit) and gpuvirtctl's bus floor (`version`: connect, Hello, one call to the daemon).
floor() { # LABEL COMMAND... -- median of 8 timed runs
    local label=$1 t0 t1 times=() i; shift
    for i in $(seq 8); do t0=$EPOCHREALTIME; "$@" >/dev/null 2>&1; t1=$EPOCHREALTIME
        times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)*1000}')"); done
    info "floor: $label median $(printf '%s\n' "${times[@]}" | median) ms"
}
floor "mdevctl --version" mdevctl --version
floor "gpuvirtctl --version" "$(bin_path gpuvirtctl)" --version
floor "gpuvirtctl version (bus round trip)" ctl version
measure mtty mtty-2 "$(( mtty_room < 8 ? mtty_room : 8 ))"
measure mdpy mdpy-vga "$(( mdpy_room < 4 ? mdpy_room : 4 ))"
finish
