#!/usr/bin/env bash
# Prometheus tier (issue 21, Must show): the real Prometheus server and node_exporter (Debian
# packages, unpacked into a cache with `apt-get download` + `dpkg-deb -x`: nothing is installed,
# no service starts, nothing listens on :9090/:9100) against gpuvirt-exporter on a simulated
# host. Inside a private mount namespace: gpuvirt-sim (runbook host, control socket), a private
# dbus-daemon, gpuvirtd, gpuvirt-exporter (--listen 127.0.0.1:0 --textfile), Prometheus
# (scrape_interval 1s) and node_exporter (textfile collector only), all on 127.0.0.1 ephemeral
# ports. It compares Prometheus' answers with `gpuvirtctl --json`, changes the host (hotplug, vGPU
# create, policy apply) and waits for the values to follow, runs `promtool check metrics` on a
# scrape and `promtool test rules` on the shipped rules, and checks node_exporter reads the
# textfile with `node_textfile_scrape_error 0`.
#
# env: GPUVIRT_BIN_DIR (default ${CARGO_TARGET_DIR:-target}/debug: gpuvirtd, gpuvirtctl,
#      gpuvirt-sim, gpuvirt-exporter), GPUVIRT_PROMETHEUS_CACHE (where the .debs are unpacked),
#      GPUVIRT_REQUIRE_PROMETHEUS=1: fail instead of skipping (scripts/test.sh sets it).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${GPUVIRT_BIN_DIR:-${CARGO_TARGET_DIR:-$here/target}/debug}"
bin="$(cd "$bin" && pwd)"
cache="${GPUVIRT_PROMETHEUS_CACHE:-${CARGO_TARGET_DIR:-$here/target}/prometheus-debs}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

skip() {
    if [ "${GPUVIRT_REQUIRE_PROMETHEUS:-0}" = 1 ]; then
        echo "prometheus.sh: FAILED: $* (GPUVIRT_REQUIRE_PROMETHEUS=1)" >&2
        exit 1
    fi
    echo "!!! PROMETHEUS TIER SKIPPED: $* !!!"
    exit 0
}

if [ -z "${GPUVIRT_PROM_NS:-}" ]; then
    [ "$(id -u)" = 0 ] || skip "needs root (FUSE mount in a private mount namespace)"
    for tool in unshare dbus-daemon curl jq python3 dpkg-deb; do
        command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
    done
    for b in gpuvirtd gpuvirtctl gpuvirt-sim gpuvirt-exporter; do
        [ -x "$bin/$b" ] || skip "$bin/$b is not built (cargo build -p $b)"
    done
    # The packages, downloaded once into the cache (as the VM tier caches its kernel).
    if [ ! -x "$cache/root/usr/bin/prometheus" ] || [ ! -x "$cache/root/usr/bin/prometheus-node-exporter" ]; then
        mkdir -p "$cache/debs"
        if ! (cd "$cache/debs" && apt-get download prometheus prometheus-node-exporter >/dev/null 2>&1); then
            apt-get update >/dev/null 2>&1 || true
            (cd "$cache/debs" && apt-get download prometheus prometheus-node-exporter >/dev/null 2>&1) ||
                skip "apt-get download prometheus prometheus-node-exporter failed (no Debian archive reachable)"
        fi
        for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
    fi
    export GPUVIRT_PROM_NS=1
    exec unshare -m --propagation private "$0" "$@"
fi

t0=$(date +%s.%N)
prom="$cache/root/usr/bin/prometheus"
promtool="$cache/root/usr/bin/promtool"
nodeexp="$cache/root/usr/bin/prometheus-node-exporter"
echo "prometheus.sh: $("$prom" --version 2>&1 | head -n1)"
echo "prometheus.sh: $("$nodeexp" --version 2>&1 | head -n1)"

work="$(mktemp -d /tmp/gpuvirt-prom.XXXXXX)"
mount -t tmpfs gpuvirt-prom "$work"
pids=()
cleanup() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        for log in "$work"/*.log; do
            [ -f "$log" ] && { echo "--- $log"; tail -n 30 "$log"; }
        done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    umount "$work" 2>/dev/null || true
    rmdir "$work" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
fail() { echo "prometheus.sh: FAILED: $*" >&2; exit 1; }

wait_for() { # what, seconds, command...
    local what="$1" secs="$2"
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
control() { # one line to the sim's control socket; prints the answer, fails unless "ok"
    python3 - "$work/control.sock" "$*" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
answer = s.makefile().readline().strip()
print(answer)
sys.exit(0 if answer.startswith("ok") else 1)
PY
}

# 1. Simulated host, bus, gpuvirtd. Its policy starts empty (every card unmanaged, so manual vGPU
#    creation is allowed); step 6 swaps in a monitor-mode copy of the example policy and applies it.
"$bin/gpuvirt-sim" mount --fixture runbook --root "$work/root" \
    --uevent-socket "$work/uevent.sock" --control "$work/control.sock" >"$work/sim.log" 2>&1 &
pids+=($!)
wait_for "the simulated host" 20 grep -q '^READY' "$work/sim.log"
mkdir -p "$work/root/usr/sbin"
printf '#!/bin/sh\necho "update-initramfs $*" >> "$(dirname "$0")/../../initramfs.log"\n' \
    >"$work/root/usr/sbin/update-initramfs"
chmod 755 "$work/root/usr/sbin/update-initramfs"
dbus-daemon --session --nofork --nopidfile --print-address=1 >"$work/bus.address" 2>"$work/dbus.log" &
pids+=($!)
wait_for "dbus-daemon" 10 test -s "$work/bus.address"
bus="$(head -n1 "$work/bus.address")"
ctl() { "$bin/gpuvirtctl" --bus-address "$bus" "$@"; }
printf 'version = 1\ndefault_role = "unmanaged"\nenforcement = "monitor"\n' >"$work/policy.toml"
"$bin/gpuvirtd" --root "$work/root" --events "sim:$work/uevent.sock" --bus-address "$bus" \
    --state-dir "$work/state" --policy "$work/policy.toml" >"$work/gpuvirtd.log" 2>&1 &
pids+=($!)
wait_for "gpuvirtd" 20 ctl version

# 2. The exporter, with its textfile.
mkdir -p "$work/textfile"
"$bin/gpuvirt-exporter" --listen 127.0.0.1:0 --bus-address "$bus" --textfile "$work/textfile" \
    >"$work/exporter.log" 2>&1 &
pids+=($!)
wait_for "gpuvirt-exporter's address" 10 grep -q 'listening on ' "$work/exporter.log"
exporter="$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/exporter.log" | head -n1)"
curl -fsS "http://$exporter/" | grep -q 'href="/metrics"' || fail "GET / has no link to /metrics"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://$exporter/nope")"
[ "$code" = 404 ] || fail "GET /nope answered $code, not 404"
curl -fsSI "http://$exporter/metrics" | grep -qi '^content-type: text/plain; version=0.0.4' ||
    fail "HEAD /metrics lacks the 0.0.4 content type"

# 3. Prometheus scraping it every second, and node_exporter reading the textfile.
pport="$(free_port)"
nport="$(free_port)"
cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gpuvirt
    static_configs:
      - targets: ["$exporter"]
        labels: {host: sim-runbook}
YML
"$prom" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom-data" \
    --web.listen-address="127.0.0.1:$pport" >"$work/prometheus.log" 2>&1 &
pids+=($!)
"$nodeexp" --collector.disable-defaults --collector.textfile \
    --collector.textfile.directory="$work/textfile" --web.listen-address="127.0.0.1:$nport" \
    >"$work/node-exporter.log" 2>&1 &
pids+=($!)
api="http://127.0.0.1:$pport/api/v1"
wait_for "Prometheus /-/ready" 20 curl -fsS "http://127.0.0.1:$pport/-/ready"
target_up() { curl -fsS "$api/targets" | jq -e '.data.activeTargets[] | select(.labels.job=="gpuvirt" and .health=="up")'; }
wait_for "the gpuvirt target to be up" 30 target_up
echo "prometheus.sh: target up after $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")s"

# The value of an instant query with one result (empty when none).
query() { curl -fsS --get --data-urlencode "query=$1" "$api/query" | jq -r '.data.result[0].value[1] // empty'; }
expect() { # PromQL, expected value, what: waits up to 10 s (a few scrapes) for it
    local end=$((SECONDS + 10)) got=""
    while :; do
        got="$(query "$1")"
        [ "$got" = "$2" ] && { echo "prometheus.sh: ok: $3: $1 = $2"; return 0; }
        [ "$SECONDS" -lt "$end" ] || fail "$3: $1 is '${got}', expected '$2'"
        sleep 0.5
    done
}

# 4. Prometheus' view against gpuvirtctl --json on the same daemon.
gpus="$(ctl list --json | jq length)"
expect 'count(gpuvirt_gpu_info{job="gpuvirt",host="sim-runbook"})' "$gpus" "GPU count as gpuvirtctl list"
avail="$(ctl types --json | jq '[.[] | select(.name=="0000:41:00.0") | .types[] | select(.id=="nvidia-300") | .available_instances] | .[0]')"
expect 'gpuvirt_mdev_type_available_instances{parent="0000:41:00.0",type="nvidia-300"}' "$avail" "nvidia-300 available as gpuvirtctl types"
groups="$(ctl groups --json | jq length)"
expect 'count(gpuvirt_iommu_group_viable)' "$groups" "IOMMU groups as gpuvirtctl groups"
expect 'gpuvirt_up' 1 "daemon up"
expect 'gpuvirt_mdev_available' 1 "mdev available"
expect 'gpuvirt_reboot_required' 0 "no reboot needed before the policy is applied"
expect 'count(gpuvirt_mdev_info) or vector(0)' "$(ctl mdevs --json | jq length)" "mdevs as gpuvirtctl mdevs"

# 5. promtool on a scrape and on the shipped rules.
curl -fsS "http://$exporter/metrics" >"$work/scrape.prom"
"$promtool" check metrics <"$work/scrape.prom" || fail "promtool check metrics on the scrape"
echo "prometheus.sh: ok: promtool check metrics on the scrape"
(cd "$here/packaging/prometheus" && "$promtool" test rules gpuvirt.rules.test.yml) ||
    fail "promtool test rules on packaging/prometheus"
echo "prometheus.sh: ok: promtool test rules"

# 6. The host changes; the values follow.
control 'hot-add {address = "0000:42:00.0", class = 0x030000, id = "10de:1db4"}' >/dev/null ||
    fail "sim hot-add"
expect 'count(gpuvirt_gpu_info)' "$((gpus + 1))" "hotplugged GPU appears"
expect 'count(gpuvirt_gpu_info{pci="0000:42:00.0"})' 1 "hotplugged GPU by address"
uuid=0b5a1c3e-0000-4000-8000-00000000abcd
ctl mdev create --uuid "$uuid" 0000:41:00.0 nvidia-300 >/dev/null ||
    fail "gpuvirtctl mdev create"
expect "gpuvirt_mdev_info{uuid=\"$uuid\"}" 1 "created vGPU appears"
expect 'gpuvirt_mdev_type_instances{parent="0000:41:00.0",type="nvidia-300"}' 1 "instances after create"
expect 'gpuvirt_mdev_type_available_instances{parent="0000:41:00.0",type="nvidia-300"}' "$((avail - 1))" "available after create"
ctl mdev remove "$uuid" >/dev/null || fail "gpuvirtctl mdev remove"
expect "count(gpuvirt_mdev_info{uuid=\"$uuid\"}) or vector(0)" 0 "removed vGPU goes"
control 'hot-remove 0000:42:00.0' >/dev/null || fail "sim hot-remove"
expect 'count(gpuvirt_gpu_info)' "$gpus" "hot-removed GPU goes"
# The example policy blacklists nouveau: applying it needs a reboot and creates the 2 vGPUs.
sed 's/^enforcement = "enforce"/enforcement = "monitor"/' "$here/config/policy.toml" >"$work/policy.toml"
ctl policy reload >"$work/reload.log" 2>&1 || fail "gpuvirtctl policy reload: $(cat "$work/reload.log")"
expect 'gpuvirt_policy_drift_items > bool 0' 1 "drift reported in monitor mode before the apply"
expect 'gpuvirt_enforcement_mode_info{mode="monitor"}' 1 "enforcement mode"
ctl policy apply >"$work/apply.log" 2>&1 || fail "gpuvirtctl policy apply: $(cat "$work/apply.log")"
expect 'gpuvirt_reboot_required' 1 "reboot required after policy apply"
expect 'gpuvirt_policy_applied' 1 "policy applied"
expect 'gpuvirt_mdev_type_instances{parent="0000:41:00.0",type="nvidia-300"}' "$(ctl mdevs --json | jq length)" "vGPUs the policy created"

# 7. node_exporter reads the textfile without error and has the same values.
nodem() { curl -fsS "http://127.0.0.1:$nport/metrics"; }
wait_for "node_exporter" 10 nodem
nodem >"$work/node.prom"
grep -qx 'node_textfile_scrape_error 0' "$work/node.prom" || fail "node_textfile_scrape_error is not 0: $(grep scrape_error "$work/node.prom")"
grep -qx 'gpuvirt_reboot_required 1' "$work/node.prom" || fail "node_exporter lacks gpuvirt_reboot_required 1"
grep -q '^gpuvirt_mdev_type_available_instances{parent="0000:41:00.0"' "$work/node.prom" ||
    fail "node_exporter lacks gpuvirt_mdev_type_available_instances"
"$promtool" check metrics <"$work/textfile/gpuvirt.prom" || fail "promtool check metrics on the textfile"
echo "prometheus.sh: ok: node_exporter textfile: node_textfile_scrape_error 0, gpuvirt values present"

# 8. gpuvirtd gone: gpuvirt_up 0, the rest dropped; back when it restarts (its name changes owner).
kill "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
expect 'gpuvirt_up' 0 "daemon gone"
expect 'count(gpuvirt_gpu_info) or vector(0)' 0 "GPU metrics dropped while the daemon is gone"
"$bin/gpuvirtd" --root "$work/root" --events "sim:$work/uevent.sock" --bus-address "$bus" \
    --state-dir "$work/state" --policy "$work/policy.toml" >>"$work/gpuvirtd.log" 2>&1 &
pids+=($!)
expect 'gpuvirt_up' 1 "daemon restarted"
expect 'count(gpuvirt_gpu_info)' "$gpus" "GPU metrics back after the restart"

echo "prometheus.sh: all checks passed in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")s"
