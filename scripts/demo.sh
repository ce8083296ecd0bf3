#!/bin/bash
# The README's main job: the runbook's host, simulated, under gpuvirtd with the example policy.
#
#   ./scripts/demo.sh [FIXTURE POLICY]     (as root, or through sudo when not root)
#
# Mounts the bundled runbook host (or FIXTURE) with gpuvirt-sim on a tmpfs inside a private
# mount namespace, starts a private dbus-daemon and gpuvirtd (--root, --events sim:, a temporary
# --state-dir, --policy), then shows `gpuvirtctl list`, the policy's plan BEFORE anything is
# applied (the daemon starts on a monitor-mode copy, which only reports), applies it, and shows
# `list` / `mdevs` again: the V100 sharded into 2 x GRID V100-8C, as the runbook does by hand.
# Nothing outside the temporary root is touched; everything is cleaned up on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
fixture="${1:-runbook}"
policy="${2:-$here/config/policy.toml}"

. "$here/scripts/as-root.sh" "$0" "$@"

# Re-run inside a private mount namespace: the FUSE mount and tmpfs vanish with it.
if [ -z "${GPUVIRT_DEMO_NS:-}" ]; then
    if [ -z "${GPUVIRT_DEMO_SKIP_SETUP:-}" ]; then
        "$here/scripts/setup.sh"
    fi
    (cd "$here" && cargo build --release --locked -p gpuvirtd -p gpuvirtctl -p gpuvirt-sim)
    export GPUVIRT_DEMO_NS=1
    exec unshare -m --propagation private "$0" "$@"
fi

bin="$here/target/release"
work="$(mktemp -d /tmp/gpuvirt-demo.XXXXXX)"
mount -t tmpfs gpuvirt-demo "$work"
pids=()
cleanup() {
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    umount "$work" 2>/dev/null || true
    rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT

wait_for() { # what, command...
    local what="$1"
    shift
    for _ in $(seq 1 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "demo.sh: timed out waiting for $what" >&2
    return 1
}

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

# 1. The simulated host.
"$bin/gpuvirt-sim" mount --fixture "$fixture" --root "$work/root" \
    --uevent-socket "$work/uevent.sock" --control "$work/control.sock" >"$work/sim.log" 2>&1 &
pids+=($!)
wait_for "the simulated host" grep -q '^READY' "$work/sim.log"
# The example policy blacklists nouveau, which regenerates the initramfs: a stand-in tool
# inside the simulated root records the call instead.
mkdir -p "$work/root/usr/sbin"
printf '#!/bin/sh\necho "update-initramfs $*" >> "$(dirname "$0")/../../initramfs.log"\n' \
    >"$work/root/usr/sbin/update-initramfs"
chmod 755 "$work/root/usr/sbin/update-initramfs"

# 2. A private bus.
dbus-daemon --session --nofork --nopidfile --print-address=1 >"$work/bus.address" 2>/dev/null &
pids+=($!)
wait_for "dbus-daemon" test -s "$work/bus.address"
bus="$(head -n1 "$work/bus.address")"
ctl() { "$bin/gpuvirtctl" --bus-address "$bus" "$@"; }

# 3. gpuvirtd on a monitor-mode copy of the policy: it plans and reports, applies nothing yet.
sed 's/^enforcement = "enforce"/enforcement = "monitor"/' "$policy" >"$work/policy.toml"
grep -q '^enforcement' "$work/policy.toml" || sed -i '1i enforcement = "monitor"' "$work/policy.toml"
"$bin/gpuvirtd" --root "$work/root" --events "sim:$work/uevent.sock" --bus-address "$bus" \
    --state-dir "$work/state" --policy "$work/policy.toml" >"$work/gpuvirtd.log" 2>&1 &
pids+=($!)
wait_for "gpuvirtd" busctl --address="$bus" status org.gpuvirt.GpuVirt1

step gpuvirtctl list
ctl list
step gpuvirtctl policy check "$policy"
ctl policy check "$policy"
step gpuvirtctl policy plan
ctl policy plan
step gpuvirtctl policy apply
ctl policy apply
step gpuvirtctl list
ctl list
step gpuvirtctl mdevs
ctl mdevs
step gpuvirtctl policy plan
ctl policy plan
printf '\nThe daemon log is below; everything (mount, bus, daemon) is removed on exit.\n'
sed 's/^/  gpuvirtd: /' "$work/gpuvirtd.log" | grep -E 'INFO|WARN|ERROR' | tail -n 20 || true
