#!/usr/bin/env bash
# Installation test: `make install` into a DESTDIR (Debian layout and the /usr/local default),
# every expected file present and nothing unexpected, the unit's ExecStart pointing at the
# installed daemon, the libvirt hook entry (the one path under /etc) a link to the installed hook, `systemd-analyze verify` on the installed unit, man pages that render,
# completions that load, docs/dbus-api.md not stale, `make uninstall` clean, and the .deb built
# by packaging/build-deb.sh listing every installed file (`dpkg-deb -c`).
#
# Never touches the real system: everything goes under a temporary DESTDIR.
# env: GPUVIRT_INSTALL_PROFILE  cargo profile to install (default dev: reuses the test build;
#                               release for what ships)
#      GPUVIRT_SKIP_DEB=1       skip the .deb part (says so loudly)
#      GPUVIRT_REQUIRE_DEB=1    fail instead of skipping when cargo-deb cannot be installed
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${GPUVIRT_INSTALL_PROFILE:-dev}
export PROFILE
CARGO_DEB_VERSION=$(sed -n 's/^CARGO_DEB_VERSION=//p' packaging/build-deb.sh)
tmp=$(mktemp -d /tmp/gpuvirt-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
skip() { echo "!!! SKIPPED: $* !!!"; }

echo "--- build ($PROFILE) and generate"
make -s all >/dev/null

# The subcommands gpuvirtctl has now, from its own --help, so a command added tomorrow must
# get a man page without anyone editing this test.
bin_dir=${CARGO_TARGET_DIR:-target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
mapfile -t subcommands < <("$bin_dir/gpuvirtctl" --help |
    awk '/^Commands:/ {on = 1; next} on && /^[^ ]/ {on = 0} on && $1 != "help" && NF {print $1}')
[ ${#subcommands[@]} -ge 1 ] || fail "could not read gpuvirtctl's subcommands from --help"

# What a Debian (PREFIX=/usr) install must contain; paths relative to DESTDIR.
expected=(
    usr/bin/gpuvirtctl
    usr/libexec/gpuvirtd
    usr/libexec/gpuvirt-libvirt-hook
    lib/systemd/system/gpuvirtd.service
    usr/bin/gpuvirt-exporter
    lib/systemd/system/gpuvirt-exporter.service
    usr/share/gpuvirt/prometheus/gpuvirt.rules.yml
    usr/share/gpuvirt/prometheus/gpuvirt.rules.test.yml
    usr/share/doc/gpuvirt/fleet.md
    usr/share/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf
    usr/share/dbus-1/system-services/org.gpuvirt.GpuVirt1.service
    usr/share/dbus-1/interfaces/org.gpuvirt.GpuVirt1.xml
    lib/udev/rules.d/70-gpuvirt.rules
    usr/share/doc/gpuvirt/examples/policy.toml
    usr/share/doc/gpuvirt/getting-started.md
    usr/share/doc/gpuvirt/dbus-api.md
    usr/share/doc/gpuvirt/troubleshooting.md
    usr/share/doc/gpuvirt/security.md
    usr/share/doc/gpuvirt/policy.md
    usr/share/bash-completion/completions/gpuvirtctl
    usr/share/zsh/vendor-completions/_gpuvirtctl
    usr/share/fish/vendor_completions.d/gpuvirtctl.fish
    usr/share/man/man1/gpuvirtctl.1
    usr/share/man/man8/gpuvirtd.8
    usr/share/man/man5/gpuvirt-policy.5
)
# The Cockpit page: every runtime file of cockpit/gpuvirt (no tests, nothing else).
cockpit_files=(manifest.json index.html gpuvirt.css app.js client.js model.js view.js)
for f in "${cockpit_files[@]}"; do expected+=("usr/share/cockpit/gpuvirt/$f"); done
for sub in "${subcommands[@]}"; do expected+=("usr/share/man/man1/gpuvirtctl-$sub.1"); done
if compgen -G "dbus/*.policy" >/dev/null || compgen -G "polkit/*.policy" >/dev/null; then
    expected+=(usr/share/polkit-1/actions/org.gpuvirt.GpuVirt1.policy)
else
    fail "no polkit actions file (dbus/*.policy) in the tree: mutating methods cannot be authorized"
fi

echo "--- make install DESTDIR=... PREFIX=/usr (Debian layout)"
root=$tmp/root
make -s install-files DESTDIR="$root" PREFIX=/usr >/dev/null
for f in "${expected[@]}"; do
    [ -f "$root/$f" ] || fail "missing after install: /$f"
done
ok "${#expected[@]} expected files present (${#subcommands[@]} subcommand pages: ${subcommands[*]})"
# The libvirt hook entry: a link (absolute, as Debian wants across top-level directories) to
# the installed hook, and the only thing under /etc.
hook_entry=etc/libvirt/hooks/qemu.d/50-gpuvirt
check_hook_entry() { # <root> <libexecdir>: the entry under <root> links to <libexecdir>/gpuvirt-libvirt-hook
    local link
    link=$(readlink "$1/$hook_entry" 2>/dev/null) || { fail "no symlink /$hook_entry under $1"; return; }
    [ "$link" = "$2/gpuvirt-libvirt-hook" ] || { fail "/$hook_entry -> '$link', want $2/gpuvirt-libvirt-hook"; return; }
    [ -f "$1$link" ] && [ -x "$1$link" ] || { fail "/$hook_entry -> $link, which is not an installed executable"; return; }
    ok "/$hook_entry -> $link (installed, executable)"
}
check_hook_entry "$root" /usr/libexec
others=$(cd "$root" && find etc ! -type d ! -path "$hook_entry" 2>/dev/null)
[ -z "$others" ] && ok "nothing else installed under /etc" || fail "install wrote under /etc: $(echo "$others" | head -5)"

# The installed tree is exactly `make list-files` (what uninstall removes and the .deb ships).
(cd "$root" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort) > "$tmp/installed"
make -s list-files PREFIX=/usr | sed 's|^/||' | LC_ALL=C sort > "$tmp/listed"
if diff -u "$tmp/listed" "$tmp/installed" > "$tmp/list.diff"; then
    ok "installed tree == make list-files ($(wc -l < "$tmp/installed") files)"
else
    fail "installed tree differs from make list-files:"; cat "$tmp/list.diff" >&2
fi
for f in usr/bin/gpuvirtctl usr/libexec/gpuvirtd usr/libexec/gpuvirt-libvirt-hook usr/bin/gpuvirt-exporter; do
    [ -x "$root/$f" ] || fail "/$f is not executable"
done
find "$root" -type f ! -path '*/usr/bin/*' ! -path '*/libexec/*' -perm /111 | grep . && fail "data files installed executable"
"$root/usr/bin/gpuvirtctl" --version | grep "^gpuvirtctl " >/dev/null || fail "installed gpuvirtctl --version"
"$root/usr/libexec/gpuvirtd" --version | grep "^gpuvirtd " >/dev/null || fail "installed gpuvirtd --version"
"$root/usr/libexec/gpuvirt-libvirt-hook" --version | grep "^gpuvirt-libvirt-hook " >/dev/null || fail "installed gpuvirt-libvirt-hook --version"

echo "--- systemd unit"
unit=$root/lib/systemd/system/gpuvirtd.service
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[ "$exec_path" = /usr/libexec/gpuvirtd ] && ok "ExecStart=$exec_path" || fail "ExecStart is '$exec_path', the daemon is at /usr/libexec/gpuvirtd"
[ -x "$root$exec_path" ] || fail "ExecStart's $exec_path is not in DESTDIR"
if command -v systemd-analyze >/dev/null; then
    # verify resolves ExecStart on this machine: point it at the DESTDIR copy of the same binary.
    mkdir -p "$tmp/verify" "$tmp/verify-neg"
    sed "s#^ExecStart=$exec_path#ExecStart=$root$exec_path#" "$unit" > "$tmp/verify/gpuvirtd.service"
    if out=$(systemd-analyze verify "$tmp/verify/gpuvirtd.service" 2>&1) && [ -z "$out" ]; then
        ok "systemd-analyze verify: clean"
    else
        fail "systemd-analyze verify:"; echo "$out" >&2
    fi
    # The exporter's unit (DynamicUser, hardened), against the DESTDIR copy of its binary.
    eunit=$root/lib/systemd/system/gpuvirt-exporter.service
    grep -q '^ExecStart=/usr/bin/gpuvirt-exporter ' "$eunit" || fail "gpuvirt-exporter.service: ExecStart is not /usr/bin/gpuvirt-exporter"
    grep -qx 'DynamicUser=yes' "$eunit" || fail "gpuvirt-exporter.service lacks DynamicUser=yes"
    sed "s#^ExecStart=/usr/bin/gpuvirt-exporter#ExecStart=$root/usr/bin/gpuvirt-exporter#" "$eunit" > "$tmp/verify/gpuvirt-exporter.service"
    if out=$(systemd-analyze verify "$tmp/verify/gpuvirt-exporter.service" 2>&1) && [ -z "$out" ]; then
        ok "systemd-analyze verify gpuvirt-exporter.service: clean"
    else
        fail "systemd-analyze verify gpuvirt-exporter.service:"; echo "$out" >&2
    fi
    # Control: verify must notice a daemon that is not where ExecStart says.
    sed "s#^ExecStart=$exec_path#ExecStart=$tmp/absent/gpuvirtd#" "$unit" > "$tmp/verify-neg/gpuvirtd.service"
    if systemd-analyze verify "$tmp/verify-neg/gpuvirtd.service" >/dev/null 2>&1; then
        fail "systemd-analyze verify accepted a unit whose ExecStart does not exist (the check proves nothing)"
    else
        ok "systemd-analyze verify rejects a missing ExecStart binary (control)"
    fi
else
    fail "systemd-analyze not found (scripts/setup.sh installs systemd)"
fi

echo "--- Cockpit page"
manifest=$root/usr/share/cockpit/gpuvirt/manifest.json
if python3 - "$manifest" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
want = "/usr/share/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf"
assert m["requires"]["cockpit"] == "287", m["requires"]
assert {"path-exists": want} in m["conditions"], m["conditions"]
assert "index" in m["menu"], m["menu"]
PY
then ok "Cockpit manifest: requires 287, menu entry, shown only where gpuvirt's D-Bus policy file exists"
else fail "Cockpit manifest $manifest is wrong (see above)"; fi
[ -f "$root/usr/share/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf" ] || fail "the manifest's condition names a file the install does not place"
# The path-exists condition follows DBUSDATADIR (sed at install), or the page would never show.
make -s install-files DESTDIR="$tmp/dbusdir" PREFIX=/usr DBUSDATADIR=/opt/dbus-1 >/dev/null
grep -q '"path-exists": "/opt/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf"' "$tmp/dbusdir/usr/share/cockpit/gpuvirt/manifest.json" \
    && ok "Cockpit manifest's condition follows DBUSDATADIR" || fail "Cockpit manifest's path-exists ignores DBUSDATADIR"
find "$root/usr/share/cockpit" -name '*.test.*' -o -name node_modules | grep . && fail "test files installed with the Cockpit page"

echo "--- contract files parse"
for f in "$root"/usr/share/dbus-1/system.d/*.conf "$root"/usr/share/polkit-1/actions/*.policy; do
    [ -f "$f" ] || continue
    python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$f" 2>"$tmp/xml.err" \
        && ok "well-formed XML: ${f#"$root"}" || { fail "not well-formed XML: ${f#"$root"}"; cat "$tmp/xml.err" >&2; }
done
xml=$root/usr/share/dbus-1/interfaces/org.gpuvirt.GpuVirt1.xml
python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$xml" 2>/dev/null \
    && ok "well-formed XML: ${xml#"$root"}" \
    || echo "WARNING: ${xml#"$root"} is not well-formed XML (gdbus-codegen and other strict parsers reject it; '--' in a comment?)"
grep -q '^SystemdService=gpuvirtd.service$' "$root"/usr/share/dbus-1/system-services/org.gpuvirt.GpuVirt1.service \
    || fail "D-Bus activation does not hand over to gpuvirtd.service"

echo "--- man pages and completions"
if command -v man >/dev/null; then
    for page in "$root"/usr/share/man/man?/*; do
        warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)
        [ -z "$warnings" ] || { fail "man ${page##*/} warns:"; echo "$warnings" >&2; }
        LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$page" 2>/dev/null | grep '^NAME' >/dev/null || fail "man ${page##*/} has no NAME section"
    done
    LC_ALL=C.UTF-8 MANWIDTH=200 man -l "$root/usr/share/man/man5/gpuvirt-policy.5" 2>/dev/null | grep 'early_method' >/dev/null \
        || fail "gpuvirt-policy.5 lacks the [[gpu]] keys of docs/policy.md"
    ok "man pages render without warnings"
else
    skip "man pages not rendered: man-db is not installed"
fi
bash -n "$root/usr/share/bash-completion/completions/gpuvirtctl" || fail "bash completion has a syntax error"
# shellcheck disable=SC1091
spec=$(bash -c "source '$root/usr/share/bash-completion/completions/gpuvirtctl' && complete -p gpuvirtctl") \
    && ok "bash completion loads: $spec" || fail "bash completion does not register for gpuvirtctl"
for sub in "${subcommands[@]}"; do
    grep -qw -- "$sub" "$root/usr/share/bash-completion/completions/gpuvirtctl" || fail "bash completion lacks '$sub'"
    grep -qw -- "$sub" "$root/usr/share/fish/vendor_completions.d/gpuvirtctl.fish" || fail "fish completion lacks '$sub'"
    grep -qw -- "$sub" "$root/usr/share/zsh/vendor-completions/_gpuvirtctl" || fail "zsh completion lacks '$sub'"
done
if command -v zsh >/dev/null; then zsh -n "$root/usr/share/zsh/vendor-completions/_gpuvirtctl" || fail "zsh completion syntax"; fi
if command -v fish >/dev/null; then fish -n "$root/usr/share/fish/vendor_completions.d/gpuvirtctl.fish" || fail "fish completion syntax"; fi

echo "--- docs"
make -s check-docs 2>"$tmp/docs.err" && ok "docs/dbus-api.md matches the introspection XML" \
    || { fail "docs/dbus-api.md is stale (run make docs)"; cat "$tmp/docs.err" >&2; }

# Commands the guides tell operators to run must exist; other changes are still adding some,
# so a missing one is a loud warning here, not a failure.
missing_cmds=()
for cmd in $(grep -ohE 'gpuvirtctl [a-z][a-z-]+' docs/getting-started.md docs/troubleshooting.md | awk '{print $2}' | sort -u); do
    printf '%s\n' "${subcommands[@]}" | grep -x "$cmd" >/dev/null || missing_cmds+=("$cmd")
done
if [ ${#missing_cmds[@]} -eq 0 ]; then
    ok "every gpuvirtctl command the guides use exists"
else
    echo "WARNING: the guides use gpuvirtctl commands that do not exist yet: ${missing_cmds[*]}"
fi

echo "--- default PREFIX=/usr/local"
local_root=$tmp/local
make -s install-files DESTDIR="$local_root" >/dev/null
grep -q '^ExecStart=/usr/local/libexec/gpuvirtd ' "$local_root/usr/local/lib/systemd/system/gpuvirtd.service" \
    && [ -x "$local_root/usr/local/libexec/gpuvirtd" ] && [ -x "$local_root/usr/local/bin/gpuvirtctl" ] \
    && grep -q '^ExecStart=/usr/local/bin/gpuvirt-exporter ' "$local_root/usr/local/lib/systemd/system/gpuvirt-exporter.service" \
    && ok "PREFIX=/usr/local: binaries under /usr/local, ExecStart follows" \
    || fail "PREFIX=/usr/local: ExecStart or binaries misplaced"
# libvirtd looks only in /etc/libvirt/hooks, whatever the prefix; the link follows LIBEXECDIR.
check_hook_entry "$local_root" /usr/local/libexec
# Services read these only from system directories, whatever the prefix.
[ -f "$local_root/usr/share/dbus-1/system.d/org.gpuvirt.GpuVirt1.conf" ] && [ -f "$local_root/lib/udev/rules.d/70-gpuvirt.rules" ] \
    || fail "PREFIX=/usr/local: D-Bus conf or udev rule not where dbus-daemon/udev look"
make -s uninstall DESTDIR="$local_root" >/dev/null
left=$(find "$local_root" \( -type f -o -type l \))
[ -z "$left" ] && ok "make uninstall removes every installed file" || { fail "make uninstall left files:"; echo "$left" >&2; }

echo "--- Debian package (cargo-deb $CARGO_DEB_VERSION)"
if [ "${GPUVIRT_SKIP_DEB:-0}" = 1 ]; then
    skip "Debian package: GPUVIRT_SKIP_DEB=1 was set"
else
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "installing cargo-deb $CARGO_DEB_VERSION into ~/.cargo (cached there for later runs)"
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >"$tmp/cargo-deb.log" 2>&1 \
            || { tail -5 "$tmp/cargo-deb.log" >&2; }
    fi
    if ! cargo deb --version >/dev/null 2>&1; then
        if [ "${GPUVIRT_REQUIRE_DEB:-0}" = 1 ]; then
            fail "cargo-deb $CARGO_DEB_VERSION could not be installed (GPUVIRT_REQUIRE_DEB=1)"
        else
            skip "Debian package NOT BUILT OR CHECKED: cargo-deb $CARGO_DEB_VERSION could not be installed (no crates.io?)"
        fi
    else
        deb=$(GPUVIRT_DEB_NO_BUILD=1 packaging/build-deb.sh 2>"$tmp/deb.err" | tail -n1) \
            || { fail "packaging/build-deb.sh failed:"; cat "$tmp/deb.err" >&2; deb=; }
        if [ -n "$deb" ]; then
            dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sed 's|^\./||' | LC_ALL=C sort > "$tmp/deb-files"
            # Man pages are gzipped in the package; cargo-deb adds the copyright file.
            sed -E 's#^(usr/share/man/man[0-9]/.*\.[0-9])$#\1.gz#' "$tmp/listed" > "$tmp/deb-expected"
            echo usr/share/doc/gpuvirt/copyright >> "$tmp/deb-expected"
            LC_ALL=C sort -o "$tmp/deb-expected" "$tmp/deb-expected"
            if diff -u "$tmp/deb-expected" "$tmp/deb-files" > "$tmp/deb.diff"; then
                ok "dpkg-deb -c lists every installed file and nothing else ($(wc -l < "$tmp/deb-files") files)"
            else
                fail "dpkg-deb -c differs from make list-files:"; cat "$tmp/deb.diff" >&2
            fi
            dpkg-deb -c "$deb" | grep ' ./lib/systemd/system/gpuvirtd.service$' >/dev/null || fail ".deb lacks the unit"
            dpkg-deb -c "$deb" | grep "^l.* \./$hook_entry -> /usr/libexec/gpuvirt-libvirt-hook\$" >/dev/null \
                && ok ".deb: /$hook_entry -> /usr/libexec/gpuvirt-libvirt-hook" \
                || fail ".deb lacks the symlink /$hook_entry -> /usr/libexec/gpuvirt-libvirt-hook"
            dpkg-deb -I "$deb" conffiles 2>/dev/null | grep -qx "/$hook_entry" \
                && ok ".deb: /$hook_entry is a conffile (an operator's removal survives upgrades)" \
                || fail ".deb: /$hook_entry is not in conffiles"
            dpkg-deb -x "$deb" "$tmp/deb-root"
            check_hook_entry "$tmp/deb-root" /usr/libexec
            grep -q '^ExecStart=/usr/libexec/gpuvirtd ' "$tmp/deb-root/lib/systemd/system/gpuvirtd.service" \
                || fail ".deb unit's ExecStart is not /usr/libexec/gpuvirtd"
            for s in postinst prerm postrm; do
                dpkg-deb -I "$deb" "$s" >/dev/null 2>&1 || fail ".deb lacks its $s script"
            done
            dpkg-deb -c "$deb" | grep ' ./usr/share/cockpit/gpuvirt/manifest.json$' >/dev/null || fail ".deb lacks the Cockpit page"
            dpkg-deb -f "$deb" Suggests | grep -q 'cockpit (>= 287)' || fail ".deb does not suggest cockpit (>= 287)"
            dpkg-deb -f "$deb" Package Version Depends Suggests | sed 's/^/  /'
            ok "package: $deb ($(du -h "$deb" | cut -f1))"
        fi
    fi
fi

if [ "$failures" -ne 0 ]; then
    echo "install test: $failures failure(s)" >&2
    exit 1
fi
echo "install test: all checks passed"
