#!/bin/bash
# Scenario "sharding" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# The kernel's sample mdev parents mdpy (4 devices in all) and mbochs (one 256 MB pool) sharded
# through gpuvirtd's D-Bus API on the real kernel:
#   1. persistent vGPUs defined with Manager.DefineMdev (auto): mdpy-vga ×2, mbochs-small ×3; they
#      start at once and exist in sysfs with those types;
#   2. available_instances read independently from sysfs matches the kernel's accounting and the
#      daemon's ShardParent.Types;
#   3. over-asking: ShardParent.CreateMdev fills mdpy (mdpy-xga ×2) and the mbochs pool
#      (mbochs-large ×3); the next one is NoCapacity, and a direct sysfs create gets the real
#      kernel's errno (EUSERS from the mdev core for mdpy, ENOSPC from mbochs); the extra mdevs
#      are removed with Mdev.Remove and disappear from sysfs;
#   4. `modprobe -r mdpy mbochs` + `modprobe mdpy mbochs`: the daemon recreates the defined vGPUs
#      with the SAME UUIDs, once each;
#   5. clean-up: StopMdev + UndefineMdev, nothing left, available_instances back to the start.
# Why DefineMdev and not --policy: a policy's [[gpu]] rules match PCI GPUs only, and these sample
# parents are virtual devices (/sys/devices/virtual/mdpy/mdpy) that no rule can name.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"

for b in gpuvirtd gpuvirtctl; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
modprobe mdpy && modprobe mbochs || { fail "modprobe mdpy mbochs"; finish; }
MT=/sys/class/mdev_bus
avail() { attr "$MT/$1/mdev_supported_types/$2/available_instances"; }
A0_VGA=$(avail mdpy mdpy-vga); A0_SMALL=$(avail mbochs mbochs-small); A0_LARGE=$(avail mbochs mbochs-large)
info "sysfs before: mdpy-vga $A0_VGA, mbochs-small $A0_SMALL, mbochs-large $A0_LARGE"

dbus_start || finish
gpuvirtd_start || finish
trap 'gpuvirtd_stop; dbus_stop' EXIT
MGR=$GV_ROOT/Manager

# daemon_avail PARENT TYPE -- available_instances as the daemon serves it.
daemon_avail() { ctl types --json | jq -r --arg p "$1" --arg t "$2" '.[] | select(.name == $p) | .types[] | select(.id == $t) | .available_instances'; }
parent_listed() { [ -n "$(daemon_avail "$1" "$2")" ]; }
mdev_type_of() { local l; l=$(readlink "/sys/bus/mdev/devices/$1/mdev_type" 2>/dev/null) && basename "$l" || echo -; }
mdevs_of() { local d; for d in /sys/bus/mdev/devices/*; do [ -e "$d" ] || continue; [ "$(basename "$(readlink -f "$d/mdev_type/../..")")" = "$1" ] && basename "$d"; done | sort; }
all_present() { local u; for u in "$@"; do [ -e "/sys/bus/mdev/devices/$u" ] || return 1; done; }
none_present() { local u; for u in "$@"; do [ -e "/sys/bus/mdev/devices/$u" ] && return 1; done; return 0; }
# compare_avail LABEL PARENT TYPE EXPECTED -- sysfs (independent) = expected = daemon.
compare_avail() {
    local s; s=$(avail "$2" "$3")
    [ "$s" = "$4" ] && pass "$1: sysfs $2/$3 available_instances = $s" || fail "$1: sysfs $2/$3 available_instances = $s, expected $4"
    if wait_for 15 eval '[ "$(daemon_avail '"$2"' '"$3"')" = "$(avail '"$2"' '"$3"')" ]'; then
        pass "$1: daemon's $2/$3 available_instances agrees ($(daemon_avail "$2" "$3"))"
    else
        fail "$1: daemon's $2/$3 available_instances $(daemon_avail "$2" "$3"), sysfs $(avail "$2" "$3")"
    fi
}
wait_for 30 parent_listed mdpy mdpy-vga && wait_for 30 parent_listed mbochs mbochs-small \
    && pass "daemon lists the mdpy and mbochs parents" || { fail "daemon does not list mdpy/mbochs: $(ctl types 2>&1 | head -5 | tr '\n' ';')"; finish; }

# 1. Definitions.
define() {  # define PARENT TYPE -> prints the UUID
    local out; out=$(gv_call "$MGR" "$GV_IF.Manager.DefineMdev" "$1" "$2" '' '{}' 2>&1) || { echo "ERROR $out"; return 1; }
    grep -o "[0-9a-f]\{8\}-[0-9a-f-]\{27\}" <<<"$out" | head -1
}
VGA=(); SMALL=()
for _ in 1 2; do u=$(define mdpy mdpy-vga) && VGA+=("$u") || fail "DefineMdev mdpy mdpy-vga: $u"; done
for _ in 1 2 3; do u=$(define mbochs mbochs-small) && SMALL+=("$u") || fail "DefineMdev mbochs mbochs-small: $u"; done
printf '%s mdpy-vga\n' "${VGA[@]}" > "$SCENARIO_OUT/uuids-before.txt"; printf '%s mbochs-small\n' "${SMALL[@]}" >> "$SCENARIO_OUT/uuids-before.txt"
info "defined: mdpy-vga ${VGA[*]}; mbochs-small ${SMALL[*]}"
if wait_for 20 all_present "${VGA[@]}" "${SMALL[@]}"; then
    pass "all 5 defined vGPUs exist in sysfs"
else
    fail "defined vGPUs missing in sysfs: $(ls /sys/bus/mdev/devices 2>&1 | tr '\n' ' ')"
fi
ok=1; for u in "${VGA[@]}"; do [ "$(mdev_type_of "$u")" = mdpy-vga ] || ok=0; done; for u in "${SMALL[@]}"; do [ "$(mdev_type_of "$u")" = mbochs-small ] || ok=0; done
[ "$ok" = 1 ] && pass "each vGPU has the defined type in sysfs" || fail "types in sysfs: $(for u in "${VGA[@]}" "${SMALL[@]}"; do echo -n "$u=$(mdev_type_of "$u") "; done)"

# 2. Accounting.
compare_avail "after define" mdpy mdpy-vga $(( A0_VGA - 2 ))
compare_avail "after define" mdpy mdpy-xga $(( A0_VGA - 2 ))
compare_avail "after define" mbochs mbochs-small $(( A0_SMALL - 3 ))
compare_avail "after define" mbochs mbochs-large $(( (256 - 3 * 4) / 64 ))

# 3. Over-asking.
PARENT_MDPY=$GV_ROOT/parents/mdpy
EXTRA=()
for i in 1 2; do
    if out=$(gv_call "$PARENT_MDPY" "$GV_IF.ShardParent.CreateMdev" mdpy-xga '' '{}' 2>&1); then
        EXTRA+=("$(grep -o "objectpath '[^']*'" <<<"$out" | sed "s/^objectpath '//; s/'\$//")")
    else
        fail "CreateMdev mdpy-xga #$i (capacity left): $out"
    fi
done
[ "${#EXTRA[@]}" = 2 ] && pass "CreateMdev mdpy-xga ×2 filled mdpy: ${EXTRA[*]}"
compare_avail "mdpy full" mdpy mdpy-xga 0
if out=$(gv_call "$PARENT_MDPY" "$GV_IF.ShardParent.CreateMdev" mdpy-hd '' '{}' 2>&1); then
    fail "CreateMdev beyond mdpy's capacity succeeded: $out"
else
    name=$(gv_error_name "$out")
    [ "$name" = "$GV_IF.Error.NoCapacity" ] && pass "CreateMdev beyond capacity: $name ($(tr '\n' ' ' <<<"$out" | sed 's/.*NoCapacity: //' | cut -c1-160))" \
        || fail "CreateMdev beyond capacity: '$name', expected NoCapacity: $out"
fi
# direct_create PARENT TYPE -- a create written straight to sysfs; prints the write's error text.
direct_create() {
    local u err; u=$(cat /proc/sys/kernel/random/uuid)
    if err=$( { echo "$u" > "$MT/$1/mdev_supported_types/$2/create"; } 2>&1 ); then
        echo "accepted $u"; echo 1 > "/sys/bus/mdev/devices/$u/remove"
    else
        echo "$err"
    fi
}
# Real 6.1 fact: mdpy has no get_available, the mdev core counts its instances and refuses a
# fifth with EUSERS ("Too many users") before the driver runs; mbochs counts its own pool: ENOSPC.
err=$(direct_create mdpy mdpy-hd)
grep -q 'Too many users' <<<"$err" && pass "kernel: a direct create on full mdpy fails with EUSERS (mdev core's count)" \
    || fail "kernel: a direct create on full mdpy: $err"
for p in "${EXTRA[@]}"; do
    gv_call "$p" "$GV_IF.Mdev.Remove" '{}' >/dev/null 2>"$SCENARIO_OUT/remove.err" || fail "Mdev.Remove $p: $(cat "$SCENARIO_OUT/remove.err")"
done
EXTRA_U=(); for p in "${EXTRA[@]}"; do u=${p##*/}; EXTRA_U+=("${u//_/-}"); done
wait_for 10 none_present "${EXTRA_U[@]}" && pass "Mdev.Remove: ${EXTRA_U[*]} gone from sysfs" || fail "removed mdevs still in sysfs"
compare_avail "after remove" mdpy mdpy-xga $(( A0_VGA - 2 ))

# mbochs: three small vGPUs leave room for 3 large (64 MB of a 256 MB pool each).
PARENT_MBOCHS=$GV_ROOT/parents/mbochs
LARGE=()
for i in 1 2 3; do
    if out=$(gv_call "$PARENT_MBOCHS" "$GV_IF.ShardParent.CreateMdev" mbochs-large '' '{}' 2>&1); then
        LARGE+=("$(grep -o "objectpath '[^']*'" <<<"$out" | sed "s/^objectpath '//; s/'\$//")")
    else
        fail "CreateMdev mbochs-large #$i (room left): $out"
    fi
done
[ "${#LARGE[@]}" = 3 ] && pass "CreateMdev mbochs-large ×3 filled the pool"
compare_avail "mbochs pool full" mbochs mbochs-large 0
compare_avail "mbochs pool full" mbochs mbochs-small $(( (256 - 3 * 4 - 3 * 64) / 4 ))
if out=$(gv_call "$PARENT_MBOCHS" "$GV_IF.ShardParent.CreateMdev" mbochs-large '' '{}' 2>&1); then
    fail "a 4th mbochs-large succeeded: $out"
else
    name=$(gv_error_name "$out")
    [ "$name" = "$GV_IF.Error.NoCapacity" ] && pass "CreateMdev mbochs-large beyond the pool: $name" || fail "4th mbochs-large: '$name': $out"
fi
err=$(direct_create mbochs mbochs-large)
grep -q 'No space left on device' <<<"$err" && pass "kernel: a direct mbochs-large create on the full pool fails with ENOSPC" \
    || fail "kernel: a direct mbochs-large create on the full pool: $err"
for p in "${LARGE[@]}"; do
    gv_call "$p" "$GV_IF.Mdev.Remove" '{}' >/dev/null 2>"$SCENARIO_OUT/remove.err" || fail "Mdev.Remove $p: $(cat "$SCENARIO_OUT/remove.err")"
done
LARGE_U=(); for p in "${LARGE[@]}"; do u=${p##*/}; LARGE_U+=("${u//_/-}"); done
wait_for 10 none_present "${LARGE_U[@]}" && pass "Mdev.Remove: the 3 mbochs-large gone" || fail "mbochs-large mdevs still in sysfs"
[ "$(avail mbochs mbochs-large)" = 3 ] && pass "sysfs mbochs-large available_instances back to 3" || fail "mbochs-large available_instances $(avail mbochs mbochs-large), expected 3"

# 4. Parent modules unloaded and reloaded.
if modprobe -r mdpy mbochs 2>"$SCENARIO_OUT/modprobe.err"; then
    pass "modprobe -r mdpy mbochs"
else
    fail "modprobe -r mdpy mbochs: $(cat "$SCENARIO_OUT/modprobe.err")"
fi
wait_for 10 none_present "${VGA[@]}" "${SMALL[@]}" && pass "unload removed every vGPU from sysfs" || fail "vGPUs left after unload: $(ls /sys/bus/mdev/devices | tr '\n' ' ')"
wait_for 20 eval '! parent_listed mdpy mdpy-vga' && pass "daemon dropped the mdpy parent" || fail "daemon still lists mdpy after unload"
t0=$(t_now)
modprobe mdpy && modprobe mbochs || fail "modprobe mdpy mbochs (reload)"
if wait_for 40 all_present "${VGA[@]}" "${SMALL[@]}"; then
    pass "after reload the daemon recreated all 5 vGPUs with the same UUIDs ($(elapsed "$t0")s)"
else
    fail "after reload: sysfs mdevs $(ls /sys/bus/mdev/devices 2>&1 | tr '\n' ' '), expected ${VGA[*]} ${SMALL[*]}"
fi
sleep 2   # a duplicate start would come right after the first
{ for u in $(mdevs_of mdpy); do echo "$u $(mdev_type_of "$u")"; done; for u in $(mdevs_of mbochs); do echo "$u $(mdev_type_of "$u")"; done; } | sort > "$SCENARIO_OUT/uuids-after.txt"
if diff -u <(sort "$SCENARIO_OUT/uuids-before.txt") "$SCENARIO_OUT/uuids-after.txt" > "$SCENARIO_OUT/uuids.diff"; then
    pass "sysfs after reload = before (UUIDs and types), nothing twice"
else
    fail "UUIDs/types after reload differ: $(grep '^[-+][0-9a-f]' "$SCENARIO_OUT/uuids.diff" | tr '\n' ';')"
fi
compare_avail "after reload" mdpy mdpy-vga $(( A0_VGA - 2 ))
compare_avail "after reload" mbochs mbochs-small $(( A0_SMALL - 3 ))

# 5. Clean-up through the API.
for u in "${VGA[@]}" "${SMALL[@]}"; do
    gv_call "$MGR" "$GV_IF.Manager.StopMdev" "$u" '{}' >/dev/null 2>>"$SCENARIO_OUT/cleanup.err" || fail "StopMdev $u: $(tail -1 "$SCENARIO_OUT/cleanup.err")"
    gv_call "$MGR" "$GV_IF.Manager.UndefineMdev" "$u" '{}' >/dev/null 2>>"$SCENARIO_OUT/cleanup.err" || fail "UndefineMdev $u: $(tail -1 "$SCENARIO_OUT/cleanup.err")"
done
wait_for 10 none_present "${VGA[@]}" "${SMALL[@]}" && pass "StopMdev removed every vGPU" || fail "vGPUs left after StopMdev"
compare_avail "after clean-up" mdpy mdpy-vga "$A0_VGA"
compare_avail "after clean-up" mbochs mbochs-small "$A0_SMALL"

kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
