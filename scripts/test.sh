#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is needed, then runs every tier.
#   tiers: lint (fmt + clippy), unit + simulated kernel (cargo test, inside a private mount namespace
#   so FUSE mounts never show on the host), mdevctl compatibility (the real mdevctl beside gpuvirt,
#   crates/gpuvirtd/tests/mdevctl_compat.rs), umockdev (gpuvirtd's real udev monitor under umockdev,
#   tests/umockdev), Cockpit (the web page in headless Chromium, tests/cockpit), Prometheus (real
#   Prometheus/node_exporter against gpuvirt-exporter, tests/fleet), install, VM (real Debian
#   kernel under QEMU, tests/vm).
# env: GPUVIRT_SKIP_VM=1 skips the VM tier (it says so loudly); CARGO_TEST_ARGS passes extra args.
set -euo pipefail
. "$(dirname "$0")/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }
# Free disk where the build goes, printed at each step: one CI run died of ENOSPC mid-test.
disk() { df -h "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -1 || true; }
# A clean build gains nothing from incremental state (8 GB of it in a full run).
export CARGO_INCREMENTAL=0
t0=$SECONDS
declare -A took

step "setup"
./scripts/setup.sh
mkdir -p "${CARGO_TARGET_DIR:-target}"
disk

step "lint: cargo fmt --check, import circles and file sizes, cargo clippy -D warnings"
s=$SECONDS
cargo fmt --all -- --check
# The house's shape (issue 17): no import circle between the files of any crate, no source file over
# 800 lines. Prints the per-crate table; fails naming the circle or the file.
python3 scripts/structure.py --check
# Every golden libvirt snippet, in a minimal domain, against libvirt's RNG schemas (virt-xml-validate).
scripts/validate-libvirt-xml.sh
cargo clippy --workspace --all-targets --quiet -- -D warnings
took[lint]=$((SECONDS - s))

step "unit + simulated-kernel tiers (cargo test, private mount namespace)"
s=$SECONDS
cargo build --workspace --all-targets --quiet
disk
# Tests that start the other binary (gpuvirtctl <-> gpuvirtd) use the ones just built instead of a
# nested `cargo build -p`, which would only rebuild dependencies with a narrower feature set.
export GPUVIRT_WORKSPACE_BUILT=1
# The FUSE-backed simulated sysfs mounts inside this namespace only; if a test dies, its mounts die
# with the namespace instead of lingering on the host.
# The umockdev tier runs as its own step below, where it may not skip.
# The mdevctl compatibility tier runs as its own step below, where it may not skip.
GPUVIRT_SKIP_UMOCKDEV=1 GPUVIRT_SKIP_MDEVCTL_COMPAT=1 unshare -m --propagation private cargo test --workspace --no-fail-fast ${CARGO_TEST_ARGS:-}
took[cargo-test]=$((SECONDS - s))

step "mdevctl compatibility tier (the real mdevctl beside gpuvirt on simulated hosts, byte for byte)"
s=$SECONDS
# Debian's mdevctl 1.2 has no root option: it runs in a private mount namespace with each
# simulated host's sys and etc/mdevctl.d bound over /sys and /etc/mdevctl.d (reads, and
# writes only to the bound directory). The test prints how many documents and hosts it compared.
if ! command -v mdevctl >/dev/null 2>&1; then
    echo "!!! MDEVCTL COMPATIBILITY TIER SKIPPED: mdevctl is not installed (apt-get install mdevctl) !!!"
elif ! command -v unshare >/dev/null 2>&1; then
    echo "!!! MDEVCTL COMPATIBILITY TIER SKIPPED: unshare (util-linux) is not installed !!!"
else
    GPUVIRT_REQUIRE_MDEVCTL=1 unshare -m --propagation private \
        cargo test --workspace --test mdevctl_compat -- --nocapture
fi
took[mdevctl]=$((SECONDS - s))

step "umockdev tier (gpuvirtd's real udev monitor under umockdev's preload)"
s=$SECONDS
disk
GPUVIRT_REQUIRE_UMOCKDEV=1 cargo test --workspace --test umockdev
took[umockdev]=$((SECONDS - s))

step "Cockpit tier (the page in headless Chromium via cockpit-ws + cockpit-bridge, on a simulated host)"
s=$SECONDS
# Its own private mount + network namespace; the debug binaries just built. Fails (instead of
# skipping) when cockpit-ws, chromium or node is missing: setup.sh installs them.
GPUVIRT_REQUIRE_COCKPIT=1 GPUVIRT_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" tests/cockpit/run.sh
took[cockpit]=$((SECONDS - s))

step "install tier (make install into a DESTDIR, systemd-analyze verify, man pages, .deb)"
s=$SECONDS
tests/install/run.sh
took[install]=$((SECONDS - s))

step "Prometheus tier (real Prometheus + node_exporter scraping gpuvirt-exporter on a simulated host)"
s=$SECONDS
GPUVIRT_REQUIRE_PROMETHEUS=1 GPUVIRT_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" tests/fleet/prometheus.sh
took[prometheus]=$((SECONDS - s))

step "VM tier (real kernel under QEMU)"
s=$SECONDS
if [ "${GPUVIRT_SKIP_VM:-0}" = 1 ]; then
    echo "!!! VM TIER SKIPPED: GPUVIRT_SKIP_VM=1 was set !!!"
elif [ -x tests/vm/run-tests.sh ]; then
    tests/vm/run-tests.sh
else
    echo "!!! VM TIER SKIPPED: tests/vm/run-tests.sh is not there yet !!!"
fi
took[vm]=$((SECONDS - s))

step "summary"
disk
for k in "${!took[@]}"; do printf '%-12s %5ss\n' "$k" "${took[$k]}"; done
echo "all tiers passed in $((SECONDS - t0))s"
