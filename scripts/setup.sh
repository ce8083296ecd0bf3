#!/usr/bin/env bash
# Installs what gpuvirt's build, tests, demo and benchmarks need on a fresh Debian 12 machine.
# Idempotent; needs root for apt. The Rust toolchain (cargo >= 1.85) must already be on PATH.
set -euo pipefail

PKGS=(
    dbus dbus-daemon        # private dbus-daemon for the D-Bus tests and the demo
    fuse3                   # fusermount3: cleanup of dead simulated-sysfs mounts
    util-linux              # unshare: private mount namespaces for FUSE tests
    pciutils pci.ids        # lspci (benchmark peer) and the pci.ids database
    mdevctl                 # benchmark peer
    strace hyperfine time   # benchmark tooling
    systemd                 # systemd-analyze verify for the unit file
    man-db                  # the install tier renders the generated man pages
    udev                    # udevadm, libudev for the daemon's monitor
    libudev-dev pkg-config  # the udev crate links libudev
    umockdev libumockdev0 gir1.2-umockdev-1.0 python3-gi  # the umockdev test tier
    python3-dbusmock        # fake polkitd on the private bus (authorization tests)
    libvirt-clients libxml2-utils  # virt-xml-validate + libvirt's schemas: golden <hostdev>s (lint tier)
    cockpit-ws cockpit-bridge chromium  # the Cockpit tier: real web service, bridge and browser
    nodejs                  # the Cockpit tier's node --test and playwright-core (npm ci)
    iproute2                # the Cockpit tier: ip link set lo up in its network namespace
    curl jq                 # the Prometheus tier queries Prometheus' HTTP API (tests/fleet)
)
# Prometheus and node_exporter are NOT installed here: their packages start services on :9090 and
# :9100. tests/fleet/prometheus.sh fetches them with `apt-get download` and unpacks them into a cache.

. "$(dirname "$0")/as-root.sh" "$0" "$@"
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}"
fi
# Debian's npm is its own package; NodeSource's nodejs carries npm and conflicts with it.
if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends npm
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found on PATH" >&2; exit 1; }
echo "setup.sh: all packages present"
