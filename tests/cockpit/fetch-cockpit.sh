#!/usr/bin/env bash
# Fetches Cockpit packages the machine does not have (once: later runs reuse the .deb;
# GPUVIRT_COCKPIT_REFETCH=1 downloads again), for the Cockpit tier, without installing
# them: apt-get download with a private sources list, lists and cache (the machine's apt state
# and sources are not touched), then dpkg-deb -x.
#   tests/cockpit/fetch-cockpit.sh CACHE bridge   bookworm-backports' cockpit-bridge (the Python
#       bridge, 337): CACHE/bridge/cockpit-bridge (a wrapper), its version in CACHE/bridge/version
#   tests/cockpit/fetch-cockpit.sh CACHE shell    Debian 12's cockpit-system (the shell and its
#       System menu) at the installed cockpit-ws's version: CACHE/shell/root/usr/share
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
what=$2
mirror=${GPUVIRT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# fetch NAME SUITE... PACKAGE-SPEC: downloads one .deb into $cache/NAME.debs, prints its path.
fetch() {
    local name=$1 spec=$2
    shift 2
    local apt=$cache/apt-$name
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    : >"$apt/sources.list"
    for suite in "$@"; do
        local uri=$mirror
        [ "${suite%-security}" != "$suite" ] && uri=${GPUVIRT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
        echo "deb [signed-by=$keyring] $uri $suite main" >>"$apt/sources.list"
    done
    local opts=(-o Dir::State::Lists="$apt/lists" -o Dir::Etc::SourceList="$apt/sources.list"
        -o Dir::Etc::SourceParts=/dev/null -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
    # A .deb fetched before is reused (the unpacked tree and wrapper are rebuilt from it).
    if [ -n "$(ls "$apt/debs"/*.deb 2>/dev/null)" ] && [ "${GPUVIRT_COCKPIT_REFETCH:-0}" != 1 ]; then
        ls "$apt/debs"/*.deb
        return
    fi
    timeout 300 apt-get "${opts[@]}" -qq update >&2
    (cd "$apt/debs" && rm -f ./*.deb && timeout 300 apt-get "${opts[@]}" -qq download "$spec" >&2)
    ls "$apt/debs"/*.deb
}

case $what in
bridge)
    suite=${GPUVIRT_COCKPIT_SUITE:-bookworm-backports}
    deb=$(fetch bridge "cockpit-bridge/$suite" "$suite")
    version=$(dpkg-deb -f "$deb" Version)
    grep -q python3 <<<"$(dpkg-deb -f "$deb" Depends)" || { echo "fetch-cockpit: $deb is not the Python bridge" >&2; exit 1; }
    rm -rf "$cache/bridge.new"
    mkdir -p "$cache/bridge.new"
    dpkg-deb -x "$deb" "$cache/bridge.new/root"
    cat >"$cache/bridge.new/cockpit-bridge" <<WRAP
#!/bin/sh
# $suite's cockpit-bridge $version, unpacked (not installed) by tests/cockpit/fetch-cockpit.sh.
export PYTHONPATH="$cache/bridge/root/usr/lib/python3/dist-packages"
export XDG_DATA_DIRS="$cache/bridge/root/usr/share"
exec /usr/bin/python3 -m cockpit.bridge "\$@"
WRAP
    chmod 755 "$cache/bridge.new/cockpit-bridge"
    echo "${version%%-*}" >"$cache/bridge.new/version"
    rm -rf "$cache/bridge"
    mv "$cache/bridge.new" "$cache/bridge"
    ;;
shell)
    ws_version=$(dpkg-query -W -f '${Version}' cockpit-ws)
    if [ -s "$cache/shell/version" ] && [ "$(cat "$cache/shell/version")" = "$ws_version" ]; then
        echo "fetch-cockpit: shell already there: $ws_version"
        exit 0
    fi
    deb=$(fetch shell "cockpit-system=$ws_version" bookworm bookworm-updates bookworm-security)
    rm -rf "$cache/shell"
    mkdir -p "$cache/shell"
    dpkg-deb -x "$deb" "$cache/shell/root"
    echo "$ws_version" >"$cache/shell/version"
    version=$ws_version
    ;;
*)
    echo "usage: $0 CACHE bridge|shell" >&2
    exit 2
    ;;
esac
chmod -R a+rX "$cache"
echo "fetch-cockpit: $deb -> $cache/$what ($version)"
