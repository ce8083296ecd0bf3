#!/usr/bin/env bash
# Fetches bookworm-backports' cockpit-bridge (the Python bridge, 337) into CACHE and makes a
# wrapper that runs it: CACHE/bridge/cockpit-bridge, its version in CACHE/bridge/version.
# apt runs with a private sources list, lists and cache directory: the machine's apt state and
# sources are not touched, and nothing is installed (dpkg-deb -x only).
#   tests/cockpit/fetch-bridge.sh CACHE
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
suite=${GPUVIRT_COCKPIT_SUITE:-bookworm-backports}
mirror=${GPUVIRT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt=$cache/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$apt/sources.list"
opts=(-o Dir::State::Lists="$apt/lists" -o Dir::Etc::SourceList="$apt/sources.list"
      -o Dir::Etc::SourceParts=/dev/null -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
if [ -x "$cache/bridge/cockpit-bridge" ] && [ -s "$cache/bridge/version" ]; then
    echo "fetch-bridge: already there: $(cat "$cache/bridge/version")"
    exit 0
fi
timeout 300 apt-get "${opts[@]}" -qq update
(cd "$apt/debs" && rm -f ./*.deb && timeout 300 apt-get "${opts[@]}" -qq download "cockpit-bridge/$suite")
deb=$(ls "$apt/debs"/cockpit-bridge_*.deb)
version=$(dpkg-deb -f "$deb" Version)
grep -q "python3" <<<"$(dpkg-deb -f "$deb" Depends)" || { echo "fetch-bridge: $deb is not the Python bridge" >&2; exit 1; }
rm -rf "$cache/bridge.new"
mkdir -p "$cache/bridge.new"
dpkg-deb -x "$deb" "$cache/bridge.new/root"
cat >"$cache/bridge.new/cockpit-bridge" <<WRAP
#!/bin/sh
# bookworm-backports' cockpit-bridge $version, unpacked (not installed) by tests/cockpit/fetch-bridge.sh.
export PYTHONPATH="$cache/bridge/root/usr/lib/python3/dist-packages"
export XDG_DATA_DIRS="$cache/bridge/root/usr/share"
exec python3 -m cockpit.bridge "\$@"
WRAP
chmod 755 "$cache/bridge.new/cockpit-bridge"
echo "${version%%-*}" >"$cache/bridge.new/version"
rm -rf "$cache/bridge"
mv "$cache/bridge.new" "$cache/bridge"
chmod -R a+rX "$cache/bridge"
echo "fetch-bridge: $deb -> $cache/bridge ($version)"
