#!/usr/bin/env bash
# The Cockpit tier: gpuvirt's page (cockpit/gpuvirt) in a real headless Chromium, served by the
# real cockpit-ws + cockpit-bridge, talking to gpuvirtd on a simulated host over a private
# system bus. Everything runs inside `unshare -m -n` (the no-auth --local-session port must not
# be reachable from anywhere: cockpit-ws(8)), on a tmpfs that vanishes with the namespace.
#
#   tests/cockpit/run.sh          (as root; scripts/test.sh runs it after the umockdev tier)
#
# Steps: npm ci (playwright-core, pinned in package-lock.json); node --test unit/ (model.js,
# client.js); fetch-cockpit.sh: backports' bridge and, when not installed, Debian's shell;
# then per bridge (Debian 12's 287 C bridge, and bookworm-backports' 337 Python bridge when it
# can be fetched): gpuvirt-sim (runbook fixture) + dbus-daemon + gpuvirtd + cockpit-ws as root on
# :9090 and as nobody on :9091, and node --test browser.test.mjs against them.
# env: GPUVIRT_BIN_DIR          gpuvirtd, gpuvirtctl, gpuvirt-sim (default $CARGO_TARGET_DIR/debug)
#      GPUVIRT_TEST_OUT         screenshots and logs (default tests/cockpit/out)
#      GPUVIRT_REQUIRE_COCKPIT=1  fail instead of skipping when something is missing
#      GPUVIRT_COCKPIT_NEW_BRIDGE=0  do not try the backports bridge
#      GPUVIRT_COCKPIT_CACHE    where fetched .debs are kept (default tests/cockpit/.cache)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${GPUVIRT_BIN_DIR:-$repo/${CARGO_TARGET_DIR:-target}/debug}
case $bin in /*) ;; *) bin=$repo/$bin ;; esac
out=${GPUVIRT_TEST_OUT:-$here/out}
cache=${GPUVIRT_COCKPIT_CACHE:-$here/.cache}
ws=/usr/lib/cockpit/cockpit-ws
chromium=${GPUVIRT_CHROMIUM:-/usr/bin/chromium}
export GPUVIRT_BIN_DIR=$bin GPUVIRT_TEST_OUT=$out

skip() {
    echo "!!! COCKPIT TIER SKIPPED: $* !!!"
    if [ "${GPUVIRT_REQUIRE_COCKPIT:-0}" = 1 ]; then
        echo "cockpit tier: GPUVIRT_REQUIRE_COCKPIT=1, so a skip is a failure" >&2
        exit 1
    fi
    exit 0
}

# ---------------------------------------------------------------- outside the namespace
if [ -z "${GPUVIRT_COCKPIT_NS:-}" ]; then
    t0=$(date +%s%N)
    [ "$(id -u)" = 0 ] || skip "needs root (unshare -m -n, tmpfs, a FUSE mount, a nobody session)"
    [ -x "$ws" ] || skip "$ws is missing (apt-get install cockpit-ws)"
    command -v cockpit-bridge >/dev/null || skip "cockpit-bridge is missing (apt-get install cockpit-bridge)"
    [ -x "$chromium" ] || skip "$chromium is missing (apt-get install chromium)"
    command -v node >/dev/null || skip "node is missing (apt-get install nodejs)"
    command -v npm >/dev/null || skip "npm is missing (apt-get install npm)"
    for tool in unshare ip dbus-daemon setpriv python3; do
        command -v $tool >/dev/null || skip "$tool is missing"
    done
    [ -e /dev/fuse ] || skip "/dev/fuse is missing (gpuvirt-sim mounts a FUSE sysfs)"
    for b in gpuvirtd gpuvirtctl gpuvirt-sim; do
        [ -x "$bin/$b" ] || skip "$bin/$b is not built (cargo build, or set GPUVIRT_BIN_DIR)"
    done
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$node_major" -ge 18 ] || skip "node $(node --version) is too old (node --test needs 18+)"

    mkdir -p "$out"
    echo "--- npm ci (tests/cockpit: playwright-core, exact version from package-lock.json)"
    if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >"$out/npm.log" 2>&1); then
        tail -5 "$out/npm.log"
        if [ -f "$here/node_modules/playwright-core/package.json" ]; then
            echo "npm ci failed (no registry?); using the node_modules already there"
        else
            skip "npm ci failed and playwright-core is not installed (see $out/npm.log)"
        fi
    fi

    echo "--- unit tests: node --test tests/cockpit/unit (model.js, client.js with a fake cockpit; no browser)"
    node --test "$here"/unit/*.test.mjs

    bridges="287:cockpit-bridge"
    if [ "${GPUVIRT_COCKPIT_NEW_BRIDGE:-1}" != 0 ]; then
        echo "--- bookworm-backports' Python bridge (apt-get download into $cache; the machine's apt state untouched)"
        if "$here/fetch-cockpit.sh" "$cache" bridge >"$out/fetch-bridge.log" 2>&1; then
            newver=$(cat "$cache/bridge/version")
            bridges="$bridges $newver:$cache/bridge/cockpit-bridge"
            echo "bridge $newver ready: $cache/bridge/cockpit-bridge"
        else
            tail -5 "$out/fetch-bridge.log"
            echo "!!! COCKPIT TIER: the newer (backports) bridge could not be fetched; only Debian 12's 287 is tested !!!"
        fi
    fi
    # Cockpit's shell (cockpit-system: the System menu the page appears in) is not a dependency
    # of cockpit-ws; without it the page is still tested on its own URL.
    shell_dir=
    if [ -f /usr/share/cockpit/shell/manifest.json ]; then
        shell_dir=/usr/share
    elif "$here/fetch-cockpit.sh" "$cache" shell >"$out/fetch-shell.log" 2>&1; then
        shell_dir=$cache/shell/root/usr/share
    else
        tail -5 "$out/fetch-shell.log"
        echo "!!! COCKPIT TIER: Cockpit's shell (cockpit-system) is neither installed nor fetchable: the System menu entry is not checked !!!"
    fi
    export GPUVIRT_COCKPIT_SHELL_DIR=$shell_dir
    export GPUVIRT_COCKPIT_NS=1 GPUVIRT_COCKPIT_BRIDGES=$bridges
    rc=0
    unshare -m -n --propagation private "$0" "$@" || rc=$?
    echo "cockpit tier: wall time $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    exit $rc
fi

# ---------------------------------------------------------------- inside the namespace
ip link set lo up
work=$(mktemp -d /tmp/gpuvirt-cockpit.XXXXXX)
mount -t tmpfs gpuvirt-cockpit "$work"
chmod 755 "$work"
pids=()
stop_all() {
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    stop_all
    umount -l "$work" 2>/dev/null || true
    rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT

wait_for() { # what, command...
    local what=$1
    shift
    for _ in $(seq 1 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "cockpit tier: timed out waiting for $what" >&2
    return 1
}

# The page as Cockpit finds it in $XDG_DATA_HOME/cockpit (the development path: not cached).
mkdir -p "$work/xdg/cockpit" "$work/etc/cockpit"
cp -r "$repo/cockpit/gpuvirt" "$work/xdg/cockpit/gpuvirt"
# The manifest shows the page only where gpuvirt's D-Bus policy is installed (path-exists; the
# Python bridge honours it, 287's C bridge lists the page regardless). Nothing is installed on
# this machine, so the copy's condition names a D-Bus datadir of the namespace's own, as
# `make install DBUSDATADIR=...` would write it.
mkdir -p "$work/dbus-1/system.d"
cp "$repo"/dbus/*.conf "$work/dbus-1/system.d/"
sed -i "s#/usr/share/dbus-1/#$work/dbus-1/#" "$work/xdg/cockpit/gpuvirt/manifest.json"
grep -q "\"path-exists\": \"$work/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf\"" "$work/xdg/cockpit/gpuvirt/manifest.json" \
    || { echo "cockpit tier: the manifest's path-exists condition is not the D-Bus policy file" >&2; exit 1; }
: >"$work/etc/cockpit/cockpit.conf"
chmod -R a+rX "$work/xdg" "$work/etc"

# One simulated host + bus + daemon + two cockpit-ws per bridge, fresh each time.
start_stack() { # bridge-command label [fixture [polkit-actions-allowed]]
    local bridge=$1 label=$2 fixture=${3:-runbook} allowed=${4:-} w=$work/$2
    mkdir -p "$w"
    chmod 755 "$w"
    "$bin/gpuvirt-sim" mount --fixture "$fixture" --root "$w/root" \
        --uevent-socket "$w/uevent.sock" --control "$w/control.sock" >"$w/sim.log" 2>&1 &
    pids+=($!)
    wait_for "the simulated host" grep -q '^READY' "$w/sim.log"
    # The example policy blacklists nouveau, which regenerates the initramfs: a stand-in
    # records the call (as scripts/demo.sh does).
    mkdir -p "$w/root/usr/sbin"
    printf '#!/bin/sh\necho "update-initramfs $*" >> "$(dirname "$0")/../../initramfs.log"\n' >"$w/root/usr/sbin/update-initramfs"
    chmod 755 "$w/root/usr/sbin/update-initramfs"
    # vfio_pci loaded, so passthrough needs no modprobe.
    python3 - "$w/control.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"load-module vfio_pci\n")
answer = s.makefile().readline().strip()
sys.exit(0 if answer.startswith("ok") else "load-module vfio_pci: " + answer)
EOF
    cat >"$w/bus.conf" <<EOF
<busconfig><type>system</type><listen>unix:path=$w/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow send_destination="*" eavesdrop="true"/><allow receive_sender="*"/><allow own="*"/></policy></busconfig>
EOF
    dbus-daemon --config-file "$w/bus.conf" --nofork --nopidfile >"$w/bus.log" 2>&1 &
    pids+=($!)
    wait_for "dbus-daemon" test -S "$w/bus"
    chmod 777 "$w/bus"
    if [ -n "$allowed" ]; then
        # A site polkit rule, played by python-dbusmock's polkitd: it allows these actions to
        # everyone, without a prompt (and, unlike polkitd, does not special-case root).
        DBUS_SYSTEM_BUS_ADDRESS="unix:path=$w/bus" /usr/bin/python3 -m dbusmock --system --template polkitd >"$w/polkit.log" 2>&1 &
        pids+=($!)
        wait_for "dbusmock's polkitd" busctl --address="unix:path=$w/bus" status org.freedesktop.PolicyKit1
        # shellcheck disable=SC2086
        busctl --address="unix:path=$w/bus" call org.freedesktop.PolicyKit1 /org/freedesktop/PolicyKit1/Authority \
            org.freedesktop.DBus.Mock SetAllowed as $(wc -w <<<"$allowed") $allowed
    fi
    # A minimal policy: every card unmanaged, monitor mode. The test later swaps in the
    # example policy (config/policy.toml, monitor mode) and applies it from the page.
    printf 'version = 1\ndefault_role = "unmanaged"\nenforcement = "monitor"\n' >"$w/policy.toml"
    sed 's/^enforcement = "enforce"/enforcement = "monitor"/' "$repo/config/policy.toml" >"$w/policy-example.toml"
    "$bin/gpuvirtd" --root "$w/root" --events "sim:$w/uevent.sock" --bus-address "unix:path=$w/bus" \
        --state-dir "$w/state" --policy "$w/policy.toml" >"$w/gpuvirtd.log" 2>&1 &
    pids+=($!)
    wait_for "gpuvirtd" "$bin/gpuvirtctl" --bus-address "unix:path=$w/bus" version
    local env=(env DBUS_SYSTEM_BUS_ADDRESS="unix:path=$w/bus" XDG_DATA_HOME="$work/xdg" XDG_CONFIG_DIRS="$work/etc")
    # The shell goes with Debian 12's own bridge only (the Python bridge brings its own base1).
    if [ -n "${GPUVIRT_COCKPIT_SHELL_DIR:-}" ] && [ "$label" = bridge-287 ]; then
        env+=(XDG_DATA_DIRS="$GPUVIRT_COCKPIT_SHELL_DIR:/usr/local/share:/usr/share")
    fi
    "${env[@]}" "$ws" --local-session="$bridge" -a 127.0.0.1 -p 9090 >"$w/ws-root.log" 2>&1 &
    pids+=($!)
    # An unprivileged user: the bridge runs as nobody, so gpuvirtd sees uid 65534.
    "${env[@]}" HOME=/nonexistent setpriv --reuid=nobody --regid=nogroup --clear-groups \
        "$ws" --local-session="$bridge" -a 127.0.0.1 -p 9091 >"$w/ws-nobody.log" 2>&1 &
    pids+=($!)
    wait_for "cockpit-ws :9090" python3 -c 'import socket; socket.create_connection(("127.0.0.1", 9090))'
    wait_for "cockpit-ws :9091" python3 -c 'import socket; socket.create_connection(("127.0.0.1", 9091))'
}

failed=0
summary=()
for entry in $GPUVIRT_COCKPIT_BRIDGES; do
    version=${entry%%:*}
    bridge=${entry#*:}
    label=bridge-$version
    echo
    echo "=== browser test against cockpit-ws 287 + bridge $version ($bridge)"
    s=$(date +%s%N)
    # The bridge sees the page (its condition met), and hides it where gpuvirt is not installed.
    XDG_DATA_HOME="$work/xdg" "$bridge" --packages | grep -q '^gpuvirt ' \
        || { echo "FAIL: bridge $version does not list the gpuvirt package" >&2; failed=1; }
    if [ "$version" != 287 ] && [ ! -e /usr/share/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf ]; then
        mkdir -p "$work/unmet/cockpit"
        cp -r "$repo/cockpit/gpuvirt" "$work/unmet/cockpit/"
        if XDG_DATA_HOME="$work/unmet" "$bridge" --packages | grep -q '^gpuvirt '; then
            echo "FAIL: bridge $version lists the page although gpuvirt's D-Bus policy is not installed" >&2
            failed=1
        else
            echo "ok: bridge $version hides the page where gpuvirt's D-Bus policy file is absent (manifest condition)"
        fi
    fi
    start_stack "$bridge" "$label"
    w=$work/$label
    mkdir -p "$out/$label"
    if GPUVIRT_BUS="unix:path=$w/bus" GPUVIRT_POLICY="$w/policy.toml" GPUVIRT_POLICY_EXAMPLE="$w/policy-example.toml" \
        GPUVIRT_BRIDGE_VERSION="$version" GPUVIRT_SHELL=$([ -z "${GPUVIRT_COCKPIT_SHELL_DIR:-}" ] && echo none || { [ "$label" = bridge-287 ] && echo 1 || echo other-bridge; }) \
        GPUVIRT_SHOTS="$out/$label" GPUVIRT_CHROMIUM="$chromium" \
        HOME="$work" node --test --test-concurrency=1 "${GPUVIRT_COCKPIT_TEST:-$here/browser.test.mjs}"; then
        summary+=("bridge $version: passed")
    else
        failed=1
        summary+=("bridge $version: FAILED")
        for f in gpuvirtd.log ws-root.log ws-nobody.log; do
            echo "--- $f (last lines)"
            tail -n 30 "$w/$f" || true
        done
    fi
    cp "$w"/*.log "$out/$label/" 2>/dev/null || true
    stop_all
    echo "bridge $version: $(( ($(date +%s%N) - s) / 1000000 )) ms (stack start + browser test)"
done
# A second host: a GPU whose IOMMU group it shares with an igb NIC behind a non-ACS switch, and
# one alone in its group: the "why can't I pass it through" view (287 bridge only).
echo
echo "=== IOMMU groups on the nic-shared-group host (bridge 287)"
start_stack cockpit-bridge groups nic-shared-group
w=$work/groups
mkdir -p "$out/groups"
if GPUVIRT_BUS="unix:path=$w/bus" GPUVIRT_SHOTS="$out/groups" GPUVIRT_CHROMIUM="$chromium" HOME="$work" \
    node --test --test-concurrency=1 "$here/groups.test.mjs"; then
    summary+=("groups (nic-shared-group, bridge 287): passed")
else
    failed=1
    summary+=("groups (nic-shared-group, bridge 287): FAILED")
fi
cp "$w"/*.log "$out/groups/" 2>/dev/null || true
stop_all

# An unprivileged user whom a polkit rule allows vGPUs only (security.md's kvm-admins example):
# the page offers exactly those, and they work (287 bridge only).
if /usr/bin/python3 -c 'import dbusmock' 2>/dev/null; then
    echo
    echo "=== a polkit rule allowing org.gpuvirt.GpuVirt1.shard to the nobody session (bridge 287)"
    start_stack cockpit-bridge polkit runbook org.gpuvirt.GpuVirt1.shard
    w=$work/polkit
    mkdir -p "$out/polkit"
    if GPUVIRT_BUS="unix:path=$w/bus" GPUVIRT_SHOTS="$out/polkit" GPUVIRT_CHROMIUM="$chromium" HOME="$work" \
        node --test --test-concurrency=1 "$here/polkit.test.mjs"; then
        summary+=("polkit rule (shard only, nobody, bridge 287): passed")
    else
        failed=1
        summary+=("polkit rule (shard only, nobody, bridge 287): FAILED")
    fi
    cp "$w"/*.log "$out/polkit/" 2>/dev/null || true
    stop_all
else
    echo "!!! COCKPIT TIER: python3-dbusmock (Debian's, for /usr/bin/python3) is missing: the polkit-rule session is not tested !!!"
    [ "${GPUVIRT_REQUIRE_COCKPIT:-0}" = 1 ] && failed=1
fi

printf '%s\n' "${summary[@]}"
echo "screenshots and logs: $out"
exit $failed
