#!/bin/bash
# Scenario "libvirt" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# Real libvirtd (Debian's, from the host root) in the real-kernel guest, with gpuvirtd on the
# private bus made reachable at /run/dbus/system_bus_socket as a real host has it (issue 19
# points 3 and 4). gpuvirtd runs with policies/libvirt-on-demand.toml: the hot-added card is
# passed through on demand.
#   1. the two-function card hot-added on rp4 (guest/l2-devices.sh): the policy leaves it on
#      bochs-drm, its Gpu object says OnDemand; an mdpy-xga and an mtty-1 vGPU started;
#   2. one domain (type qemu, q35, no OS) built from exactly what `gpuvirtctl xml` prints for
#      (a) the card, passed through by hand (`gpuvirtctl passthrough`), both functions in guest
#      slot 01:00 (b) the mdpy vGPU at 00:10 with display on (c) the mtty vGPU on bus 2;
#      virt-xml-validate accepts it; `virsh define`, `virsh start --paused`; `virsh dumpxml`
#      shows every hostdev where the snippet put it; QOM shows mdpy's display=on; the firmware
#      numbers the root ports and `query-pci` (virsh qemu-monitor-command) shows the card's ids
#      at 00.0/00.1 behind controller 1, mtty's serial function behind controller 2 and mdpy's
#      display function at 00:10.0; destroy, undefine, `gpuvirtctl return`;
#   3. the hook: a defined but inactive vGPU (mtty): without the hook `virsh start` fails
#      ("mediated device ... not found"); with the hook's entry in /etc/libvirt/hooks/qemu.d and
#      libvirtd restarted it starts, and after `virsh destroy` the vGPU is inactive again and
#      still defined (release end);
#   4. on demand: the card on bochs-drm, a domain with its hostdevs starts (the hook assigns the
#      slot to vfio-pci) and after destroy the card is back on bochs-drm and snd_hda_intel.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"
# shellcheck source=../guest/l2-devices.sh
. "$(dirname "$0")/../guest/l2-devices.sh"
# shellcheck source=../guest/libvirtd.sh
. "$(dirname "$0")/../guest/libvirtd.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

for b in gpuvirtd gpuvirtctl gpuvirt-libvirt-hook; do have_bin "$b" || { fail "$b not built at $(bin_path "$b")"; finish; }; done
command -v qemu-system-x86_64 >/dev/null || { fail "qemu-system-x86_64 is not installed on the host root"; finish; }
modprobe mdpy && modprobe mtty || { fail "modprobe mdpy mtty"; finish; }

cp "$HERE/../policies/libvirt-on-demand.toml" /run/gpuvirt-test-policy.toml
libvirt_setup || finish
dbus_start || finish
system_bus_link
GPUVIRTD_ARGS="--root / --events udev --bus-address $DBUS_SYSTEM_BUS_ADDRESS --state-dir /run/gpuvirt-test/state --policy /run/gpuvirt-test-policy.toml"
gpuvirtd_start || finish
cleanup() {
    local d
    for d in $(vsh list --all --name 2>/dev/null); do vsh destroy "$d" >/dev/null 2>&1; vsh undefine "$d" >/dev/null 2>&1; done
    libvirtd_stop
    cp -r /var/log/libvirt/qemu "$SCENARIO_OUT/qemu-logs" 2>/dev/null
    gpuvirtd_stop; dbus_stop
}
trap cleanup EXIT

# domain_file NAME FILE EXTRA HOSTDEV_FILE... -- a minimal domain (no OS, no disk) holding the
# hostdev files verbatim, written to FILE and checked with virt-xml-validate.
domain_file() {
    local name=$1 file=$2 extra=$3; shift 3
    {
        printf "<domain type='qemu'>\n  <name>%s</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n" "$name"
        printf "  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n  <devices>\n"
        printf "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        printf "    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n%s\n" "$extra"
        cat "$@"
        printf "  </devices>\n</domain>\n"
    } > "$file"
    if out=$(virt-xml-validate "$file" domain 2>&1); then pass "virt-xml-validate $(basename "$file"): $out"
    else fail "virt-xml-validate $(basename "$file"): $out"; fi
}
# xp FILE XPATH -- xmllint's answer, empty when nothing matches.
xp() { xmllint --xpath "$2" "$1" 2>/dev/null; }
gpu_prop() { gv_prop "$(gv_gpu_path "$1")" "$GV_IF.Gpu" "$2"; }
# start_domain NAME -- virsh start --paused; prints virsh's error on failure.
start_domain() { local t0; t0=$(t_now); vsh start "$1" --paused > "$SCENARIO_OUT/start-$1.txt" 2>&1 && info "virsh start --paused $1 took $(elapsed "$t0")s"; }
# firmware_buses DOMAIN SECONDS -- resume until the firmware has numbered every bridge, suspend.
# Numbered means a secondary bus other than 0 (not yet) and 255 (SeaBIOS' temporary value while
# it scans behind a bridge: seen once, mtty "behind bus 255"), the same on two reads in a row.
firmware_buses() {
    local end=$(( SECONDS + $2 )) last= now
    vsh resume "$1" >/dev/null || return 1
    while [ "$SECONDS" -lt "$end" ]; do
        vsh_pci "$1" > "$SCENARIO_OUT/pci-$1.json" 2>&1
        now=$(jq -c '[.[] | select(has("secondary")) | [.secondary, .subordinate]]' "$SCENARIO_OUT/pci-$1.json" 2>/dev/null)
        if jq -e 'length > 0 and all(.[0] != 0 and .[0] != 255)' <<<"$now" >/dev/null 2>&1 && [ "$now" = "$last" ]; then
            vsh suspend "$1" >/dev/null; return 0
        fi
        last=$now
        sleep 0.5
    done
    vsh suspend "$1" >/dev/null; return 1
}
mdev_active() { [ -e "/sys/bus/mdev/devices/$1" ]; }

# 1. Devices: the card stays with the host (on demand), the vGPUs are started.
l2_card_add || finish
CARD=$L2_CARD AUDIO=$L2_AUDIO
CARD_ID=$(pci_id "$CARD"); AUDIO_ID=$(pci_id "$AUDIO")
sleep 3   # the policy's debounced re-plan after the hot-add
sysfs_driver_is "$CARD" bochs-drm && pass "policy: on-demand card $CARD stays on bochs-drm" \
    || fail "policy moved the on-demand card: $CARD on $(pci_driver "$CARD")"
[ "$(gpu_prop "$CARD" OnDemand)" = true ] && pass "Gpu $CARD: OnDemand true, Role $(gpu_prop "$CARD" Role)" \
    || fail "Gpu $CARD: OnDemand '$(gpu_prop "$CARD" OnDemand)'"
MDPY=$(l2_mdev_start mdpy mdpy-xga) && pass "vGPU mdpy-xga $MDPY created" || { fail "mdev start mdpy-xga: $MDPY"; finish; }
MTTY=$(l2_mdev_start mtty mtty-1) && pass "vGPU mtty-1 $MTTY created" || { fail "mdev start mtty-1: $MTTY"; finish; }

libvirtd_start || finish

# 2. One domain with the three snippets.
l2_card_passthrough || finish
ctl xml "$CARD" > "$SCENARIO_OUT/card.xml" 2>&1 || fail "gpuvirtctl xml $CARD: $(cat "$SCENARIO_OUT/card.xml")"
ctl xml "$MDPY" --guest-address 00:10 > "$SCENARIO_OUT/mdpy.xml" 2>&1 || fail "gpuvirtctl xml $MDPY: $(cat "$SCENARIO_OUT/mdpy.xml")"
ctl xml "$MTTY" --guest-bus 2 > "$SCENARIO_OUT/mtty.xml" 2>&1 || fail "gpuvirtctl xml $MTTY: $(cat "$SCENARIO_OUT/mtty.xml")"
# display='on' needs a graphics back end in libvirt; no emulated video beside the vGPU.
GRAPHICS="    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='none'/></video>"
domain_file gv-l2 "$SCENARIO_OUT/gv-l2.xml" "$GRAPHICS" "$SCENARIO_OUT/card.xml" "$SCENARIO_OUT/mdpy.xml" "$SCENARIO_OUT/mtty.xml"
vsh define "$SCENARIO_OUT/gv-l2.xml" > "$SCENARIO_OUT/define.txt" 2>&1 && pass "virsh define gv-l2" || { fail "virsh define: $(cat "$SCENARIO_OUT/define.txt")"; finish; }
if start_domain gv-l2; then pass "virsh start --paused gv-l2: $(vsh domstate gv-l2)"; else fail "virsh start gv-l2: $(cat "$SCENARIO_OUT/start-gv-l2.txt")"; finish; fi
vsh dumpxml gv-l2 > "$SCENARIO_OUT/gv-l2-live.xml"
# hostdev_at FILE SOURCE_PREDICATE -> "bus slot function multifunction" of its guest address
hostdev_at() { xp "$1" "string(//hostdev[source/address[$2]]/address/@bus)" | tr '\n' ' '; xp "$1" "string(//hostdev[source/address[$2]]/address/@slot)" | tr '\n' ' '
               xp "$1" "string(//hostdev[source/address[$2]]/address/@function)" | tr '\n' ' '; xp "$1" "string(//hostdev[source/address[$2]]/address/@multifunction)"; }
LIVE=$SCENARIO_OUT/gv-l2-live.xml
got=$(hostdev_at "$LIVE" "@bus='0x04' and @function='0x0'"); [ "$got" = "0x01 0x00 0x0 on" ] && pass "dumpxml: $CARD at guest 01:00.0 multifunction=on" || fail "dumpxml: $CARD at '$got'"
got=$(hostdev_at "$LIVE" "@bus='0x04' and @function='0x1'"); [ "$got" = "0x01 0x00 0x1 " ] && pass "dumpxml: $AUDIO at guest 01:00.1" || fail "dumpxml: $AUDIO at '$got'"
got=$(hostdev_at "$LIVE" "@uuid='$MDPY'"); [ "$got" = "0x00 0x10 0x0 " ] && pass "dumpxml: mdpy vGPU at guest 00:10.0" || fail "dumpxml: mdpy at '$got'"
[ "$(xp "$LIVE" "string(//hostdev[source/address[@uuid='$MDPY']]/@display)")" = on ] && pass "dumpxml: mdpy vGPU display='on'" || fail "dumpxml: mdpy display '$(xp "$LIVE" "string(//hostdev[source/address[@uuid='$MDPY']]/@display)")'"
got=$(hostdev_at "$LIVE" "@uuid='$MTTY'"); [ "${got% }" = "0x02 0x00 0x0" ] && pass "dumpxml: mtty vGPU at guest 02:00.0" || fail "dumpxml: mtty at '$got'"
for i in 1 2; do
    m=$(xp "$LIVE" "string(//controller[@type='pci' and @index='$i']/@model)")
    [ "$m" = pcie-root-port ] && pass "dumpxml: controller $i is a pcie-root-port (libvirt added it for the snippet's bus)" || fail "dumpxml: controller $i model '$m'"
done
MDPY_ALIAS=$(xp "$LIVE" "string(//hostdev[source/address[@uuid='$MDPY']]/alias/@name)")
got=$(vsh_qom gv-l2 "/machine/peripheral/$MDPY_ALIAS" display)
[ "$got" = '"on"' ] && pass "QOM: $MDPY_ALIAS display $got" || fail "QOM: $MDPY_ALIAS display '$got'"
if firmware_buses gv-l2 120; then info "firmware numbered the root ports"; else fail "firmware did not number the root ports: $(head -c 300 "$SCENARIO_OUT/pci-gv-l2.json")"; fi
PCI=$SCENARIO_OUT/pci-gv-l2.json
behind() { jq -r --arg q "$1" '.[] | select(.qdev_id == $q) | .secondary' "$PCI"; }
at() { jq -r --argjson b "$1" --argjson s "$2" --argjson f "$3" '.[] | select(.bus == $b and .slot == $s and .function == $f) | "\(.vendor):\(.device) \(.class)"' "$PCI"; }
B1=$(behind pci.1); B2=$(behind pci.2)
got="$(at "${B1:-0}" 0 0 | cut -d' ' -f1) $(at "${B1:-0}" 0 1 | cut -d' ' -f1)"
[ "$got" = "$CARD_ID $AUDIO_ID" ] && pass "query-pci: behind pci.1 (bus $B1) 00.0 = $CARD_ID, 00.1 = $AUDIO_ID" || fail "query-pci: behind pci.1 (bus '$B1'): '$got', expected '$CARD_ID $AUDIO_ID'"
got=$(at "${B2:-0}" 0 0 | cut -d' ' -f2)
[ "${got:0:2}" = 07 ] && pass "query-pci: behind pci.2 (bus $B2) 00.0 is mtty's serial function (class $got)" || fail "query-pci: behind pci.2 (bus '$B2') 00.0 class '$got'"
got=$(at 0 16 0 | cut -d' ' -f2)
[ "${got:0:2}" = 03 ] && pass "query-pci: 00:10.0 is mdpy's display function (class $got)" || fail "query-pci: 00:10.0 class '$got'"
vsh destroy gv-l2 >/dev/null 2>&1 && vsh undefine gv-l2 >/dev/null 2>&1 && pass "virsh destroy + undefine gv-l2" || fail "virsh destroy/undefine gv-l2"
sysfs_driver_is "$CARD" vfio-pci && pass "managed='no': libvirt left $CARD on vfio-pci" || fail "after destroy $CARD is on $(pci_driver "$CARD")"
l2_card_return

# 3. The hook: a defined, inactive vGPU.
HOOKED=$(ctl mdev define -p mtty -t mtty-1 2>&1 | grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | head -1)
[ -n "$HOOKED" ] && pass "vGPU $HOOKED defined (manual)" || { fail "gpuvirtctl mdev define -p mtty -t mtty-1"; finish; }
# gpuvirtctl xml renders an active vGPU: started once for the snippet, then stopped.
ctl mdev start -u "$HOOKED" >/dev/null 2>&1 && ctl xml "$HOOKED" > "$SCENARIO_OUT/hooked.xml" 2>&1 && ctl mdev stop -u "$HOOKED" >/dev/null 2>&1 \
    || fail "start/xml/stop of $HOOKED: $(cat "$SCENARIO_OUT/hooked.xml")"
wait_for 10 bash -c "! test -e /sys/bus/mdev/devices/$HOOKED" && pass "$HOOKED defined and inactive" || fail "$HOOKED still active"
domain_file gv-hook "$SCENARIO_OUT/gv-hook.xml" "" "$SCENARIO_OUT/hooked.xml"
vsh define "$SCENARIO_OUT/gv-hook.xml" >/dev/null 2>&1 || fail "virsh define gv-hook"
if start_domain gv-hook; then
    fail "gv-hook started without the hook"; vsh destroy gv-hook >/dev/null 2>&1
else
    grep -qi "mediated device.*not found\|$HOOKED" "$SCENARIO_OUT/start-gv-hook.txt" \
        && pass "without the hook virsh start fails: $(tr '\n' ' ' < "$SCENARIO_OUT/start-gv-hook.txt" | cut -c1-200)" \
        || fail "without the hook virsh start fails, but not for the vGPU: $(cat "$SCENARIO_OUT/start-gv-hook.txt")"
fi
hook_install
libvirtd_stop
libvirtd_start || finish
if start_domain gv-hook; then
    pass "with the hook virsh start --paused gv-hook: $(vsh domstate gv-hook)"
else
    fail "with the hook virsh start gv-hook: $(cat "$SCENARIO_OUT/start-gv-hook.txt")"
fi
mdev_active "$HOOKED" && pass "the hook started $HOOKED (prepare begin)" || fail "$HOOKED not active while gv-hook runs"
[ -f /run/gpuvirt/libvirt-hook/gv-hook.json ] && pass "hook record: $(jq -c .started_mdevs /run/gpuvirt/libvirt-hook/gv-hook.json)" || fail "no hook record for gv-hook"
vsh destroy gv-hook >/dev/null 2>&1 || fail "virsh destroy gv-hook"
wait_for 20 bash -c "! test -e /sys/bus/mdev/devices/$HOOKED" && pass "after destroy $HOOKED is inactive again (release end)" || fail "$HOOKED still active after destroy"
ctl mdev list --defined 2>&1 | grep -q "$HOOKED" && pass "$HOOKED still defined" || fail "$HOOKED lost its definition"
[ ! -e /run/gpuvirt/libvirt-hook/gv-hook.json ] && pass "hook record dropped" || fail "hook record left: $(cat /run/gpuvirt/libvirt-hook/gv-hook.json)"
vsh undefine gv-hook >/dev/null 2>&1

# 4. On demand: the hook assigns the card at start and returns it at release.
sysfs_driver_is "$CARD" bochs-drm || fail "$CARD is on $(pci_driver "$CARD") before the on-demand start"
domain_file gv-demand "$SCENARIO_OUT/gv-demand.xml" "" "$SCENARIO_OUT/card.xml"
vsh define "$SCENARIO_OUT/gv-demand.xml" >/dev/null 2>&1 || fail "virsh define gv-demand"
if start_domain gv-demand; then
    pass "on demand: virsh start --paused gv-demand: $(vsh domstate gv-demand)"
else
    fail "on demand: virsh start gv-demand: $(cat "$SCENARIO_OUT/start-gv-demand.txt")"
fi
sysfs_driver_is "$CARD" vfio-pci && sysfs_driver_is "$AUDIO" vfio-pci && pass "the hook assigned $CARD and $AUDIO to vfio-pci" \
    || fail "while gv-demand runs: $CARD on $(pci_driver "$CARD"), $AUDIO on $(pci_driver "$AUDIO")"
vsh dumpxml gv-demand > "$SCENARIO_OUT/gv-demand-live.xml"
got=$(hostdev_at "$SCENARIO_OUT/gv-demand-live.xml" "@bus='0x04' and @function='0x0'"); [ "$got" = "0x01 0x00 0x0 on" ] && pass "gv-demand dumpxml: $CARD at guest 01:00.0" || fail "gv-demand dumpxml: $CARD at '$got'"
vsh destroy gv-demand >/dev/null 2>&1 || fail "virsh destroy gv-demand"
wait_for 30 sysfs_driver_is "$CARD" bochs-drm && pass "after destroy $CARD is back on bochs-drm (release end)" || fail "after destroy $CARD is on $(pci_driver "$CARD")"
wait_for 10 sysfs_driver_is "$AUDIO" snd_hda_intel && pass "$AUDIO back on snd_hda_intel" || fail "after destroy $AUDIO is on $(pci_driver "$AUDIO")"
[ ! -e /run/gpuvirt/libvirt-hook/gv-demand.json ] && pass "hook record dropped" || fail "hook record left: $(cat /run/gpuvirt/libvirt-hook/gv-demand.json)"
vsh undefine gv-demand >/dev/null 2>&1
kill -0 "$GPUVIRTD_PID" 2>/dev/null && pass "gpuvirtd still running" || fail "gpuvirtd died: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"
finish
