# tests/vm/guest/libvirtd.sh -- a real libvirtd INSIDE the test VM (sourced after lib.sh).
#
# The host root is read-only here: libvirt's writable directories become tmpfs, /etc/libvirt and
# /var/lib/libvirt seeded with the host's files (libvirt-daemon-system, installed on the host by
# run-vm.sh prepare with no service started there). qemu.conf: QEMU runs as root (the /dev/vfio
# nodes are root's), no security driver, no per-VM mount namespace or cgroups (the guest has
# neither AppArmor nor a cgroup tree), QEMU's output to a file (no virtlogd), no owner xattrs.
# The default network's autostart link is dropped: no bridge, dnsmasq or firewall in the guest.
#   libvirt_setup          the tmpfs layer and the configuration, once
#   libvirtd_start         libvirtd --daemon; waits (up to 180 s: it probes QEMU's capabilities
#                          under TCG first) until `virsh version` answers
#   libvirtd_stop          SIGTERM, wait for it to exit
#   vsh ARGS...            virsh -c qemu:///system
#   vsh_pci DOMAIN         query-pci of the domain's QEMU (virsh qemu-monitor-command), flattened
#                          as guest/l2qmp.py does: one JSON entry per function
#   vsh_qom DOMAIN PATH PROP  one QOM property of the domain's QEMU (qom-get), as JSON
#   system_bus_link        /run/dbus/system_bus_socket -> the private bus, so a program that
#                          gets no DBUS_SYSTEM_BUS_ADDRESS (libvirt's hooks) finds gpuvirtd
#                          where it would on a real host
#   hook_install           the hook's entry in /etc/libvirt/hooks/qemu.d (tmpfs here), as
#                          `make install` makes it: 50-gpuvirt -> the built binary
LIBVIRTD_PID=
LIBVIRTD_PIDFILE=/run/gpuvirt-test/libvirtd.pid
vsh() { virsh -q -c qemu:///system "$@"; }
LIBVIRT_GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vsh_pci() {
    vsh qemu-monitor-command "$1" --pretty '{"execute":"query-pci"}' | python3 -c '
import json, sys
sys.path.insert(0, sys.argv[1])
import l2qmp
out = []
for bus in json.load(sys.stdin)["return"]:
    l2qmp.flatten(bus["devices"], out)
print(json.dumps(out, indent=1))' "$LIBVIRT_GUEST_DIR"
}
vsh_qom() {
    vsh qemu-monitor-command "$1" "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"$2\",\"property\":\"$3\"}}" \
        | jq -c .return
}
system_bus_link() {
    mkdir -p /run/dbus
    ln -sfn "${DBUS_SYSTEM_BUS_ADDRESS#unix:path=}" /run/dbus/system_bus_socket
}
hook_install() {
    mkdir -p /etc/libvirt/hooks/qemu.d
    ln -sfn "$(bin_path gpuvirt-libvirt-hook)" /etc/libvirt/hooks/qemu.d/50-gpuvirt
}

# tmpfs_over DIR -- a tmpfs on DIR holding a copy of what the host root has there.
tmpfs_over() {
    local dir=$1 seed=/run/gpuvirt-test/seed${1//\//_}
    mkdir -p "$seed"
    [ -d "$dir" ] && cp -a "$dir/." "$seed/"
    mount -t tmpfs -o mode=0755 tmpfs "$dir" || return 1
    cp -a "$seed/." "$dir/"
}

libvirt_setup() {
    command -v libvirtd >/dev/null && command -v virsh >/dev/null \
        || { fail "libvirtd/virsh not installed on the host root (run-vm.sh prepare installs libvirt-daemon-system)"; return 1; }
    mkdir -p /run/gpuvirt-test /run/libvirt
    local d
    for d in /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
        tmpfs_over "$d" || { fail "tmpfs over $d"; return 1; }
    done
    rm -f /etc/libvirt/qemu/networks/autostart/*.xml
    cat >> /etc/libvirt/qemu.conf <<'CONF'
# gpuvirt VM tier (tests/vm/guest/libvirtd.sh)
user = "root"
group = "root"
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
remember_owner = 0
CONF
    cat >> /etc/libvirt/libvirtd.conf <<CONF
# gpuvirt VM tier (tests/vm/guest/libvirtd.sh)
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$SCENARIO_OUT/libvirtd.log"
CONF
}

libvirtd_start() {
    local t0; t0=$(t_now)
    rm -f "$LIBVIRTD_PIDFILE"
    # Without the test's DBUS_SYSTEM_BUS_ADDRESS, as under systemd: libvirtd (and the hooks it
    # runs, which get no such variable anyway) use /run/dbus/system_bus_socket.
    env -u DBUS_SYSTEM_BUS_ADDRESS libvirtd --daemon --pid-file "$LIBVIRTD_PIDFILE" >> "$SCENARIO_OUT/libvirtd.out" 2>&1 \
        || { fail "libvirtd did not start: $(tail -3 "$SCENARIO_OUT/libvirtd.out")"; return 1; }
    local i
    for i in $(seq 360); do
        [ -z "$LIBVIRTD_PID" ] && [ -s "$LIBVIRTD_PIDFILE" ] && LIBVIRTD_PID=$(cat "$LIBVIRTD_PIDFILE")
        if [ -S /run/libvirt/libvirt-sock ] && vsh version > "$SCENARIO_OUT/virsh-version.txt" 2>&1; then
            info "libvirtd (pid $LIBVIRTD_PID) answers $(elapsed "$t0")s after start: $(tr '\n' ' ' < "$SCENARIO_OUT/virsh-version.txt")"
            return 0
        fi
        sleep 0.5
    done
    fail "libvirtd did not answer within 180 s: $(tail -3 "$SCENARIO_OUT/libvirtd.log" 2>/dev/null)"
    return 1
}

libvirtd_stop() {
    [ -n "$LIBVIRTD_PID" ] || return 0
    kill -TERM "$LIBVIRTD_PID" 2>/dev/null
    local i
    for i in $(seq 60); do kill -0 "$LIBVIRTD_PID" 2>/dev/null || break; sleep 0.5; done
    LIBVIRTD_PID=
}
