# tests/vm/guest/lib.sh -- helpers for scenarios that run INSIDE the test VM (sourced, bash).
#
# The guest's / is the host's root (read-only 9p), so everything here reads the REAL guest kernel's
# /sys. Scenarios get from run-scenarios.sh:
#   SCENARIO_OUT   writable dir for this scenario's artefacts (on the host: tests/vm/out/<name>/)
#   RESULTS        $SCENARIO_OUT/results.txt, one PASS/FAIL/INFO/SKIP line per check
#   GPUVIRT_TARGET_DIR, GPUVIRT_PROFILE   where the host-built binaries are (target/<profile>)
# and must exit non-zero when any check failed (`finish` does that).

FAILED=${FAILED:-0}
res()  { echo "$*"; [ -n "${RESULTS:-}" ] && echo "$*" >> "$RESULTS"; return 0; }
pass() { res "PASS: $*"; }
fail() { res "FAIL: $*"; FAILED=1; }
info() { res "INFO: $*"; }
skip() { res "SKIP: $*"; }
finish() { exit "$FAILED"; }
# check DESCRIPTION COMMAND... -- PASS when the command succeeds, else FAIL.
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }

t_now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(t_now)" 'BEGIN{printf "%.1f", b-a}'; }

# attr FILE -- a sysfs attribute on one line, empty when it is absent or unreadable.
# Bash builtins only: every exec of a host binary costs tens of milliseconds under TCG over 9p.
attr() {
    local v=
    read -r -d '' v 2>/dev/null < "$1"
    v=${v%$'\n'}
    printf '%s' "${v//$'\n'/ }"
}
# pci_driver ADDR -- bound driver name, "-" when unbound.
pci_driver() { local l; l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo -; }
# pci_group ADDR -- IOMMU group number, "-" when none.
pci_group() { local l; l=$(readlink "/sys/bus/pci/devices/$1/iommu_group" 2>/dev/null) && basename "$l" || echo -; }
# display_addrs -- PCI addresses of display-class (0x03xxxx) functions, sorted.
display_addrs() {
    local d c
    for d in /sys/bus/pci/devices/*; do
        read -r c < "$d/class"
        case $c in 0x03*) echo "${d##*/}" ;; esac
    done
}

# dump_device DIR -- `ls -l` of one sysfs device directory (modes, links), then the value of every
# readable text attribute. Bash builtins for the values: an exec per file is slow under TCG.
dump_device() {
    local dir=$1 e name val perm
    local -A mode=()
    echo "# $(readlink -f "$dir")"
    ls -l "$dir/" | tail -n +2
    while read -r perm _ _ _ _ _ _ _ name _; do mode[$name]=$perm; done < <(ls -l "$dir/" | tail -n +2)
    echo "# values"
    for e in "$dir"/*; do
        name=${e##*/}
        [ -f "$e" ] && [ ! -L "$e" ] || continue
        case $name in config|rom|resource[0-9]*) continue ;; esac
        case ${mode[$name]:-} in
            -r*) ;;
            *) echo "$name: write-only (${mode[$name]:-?})"; continue ;;
        esac
        val=
        if read -r -d '' val 2>/dev/null < "$e" || [ -n "$val" ]; then
            val=${val%$'\n'}
            echo "$name = ${val//$'\n'/|}"
        else
            echo "$name: read failed or empty"
        fi
    done
}

# Binaries built on the host (tests/vm/run-tests.sh builds them before booting).
bin_path() { echo "${GPUVIRT_TARGET_DIR:?}/${GPUVIRT_PROFILE:-debug}/$1"; }
have_bin() { [ -x "$(bin_path "$1")" ]; }

# udev_coldplug -- start the host's systemd-udevd in the guest and replay every device, so drivers
# are autoloaded by modalias exactly as at boot on a real host (bochs-drm, virtio_gpu, ...).
udev_coldplug() {
    if ! udevadm control --ping >/dev/null 2>&1; then
        /lib/systemd/systemd-udevd --daemon || { fail "systemd-udevd did not start"; return 1; }
    fi
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    udevadm settle --timeout=120
}

# monitor_start NAME [udevadm monitor args] -- record uevents to $SCENARIO_OUT/uevents-NAME.txt
# until monitor_stop NAME. Default: kernel uevents with properties.
declare -A MONITOR_PIDS
monitor_start() {
    local name=$1; shift
    [ $# -gt 0 ] || set -- --kernel --property
    udevadm monitor "$@" > "$SCENARIO_OUT/uevents-$name.txt" 2>&1 &
    MONITOR_PIDS[$name]=$!
    # udevadm prints its banner once the netlink socket is bound; wait for it so no event is missed.
    local i
    for i in $(seq 50); do grep -q 'monitor will print' "$SCENARIO_OUT/uevents-$name.txt" 2>/dev/null && break; sleep 0.1; done
}
monitor_stop() {
    local name=$1 pid=${MONITOR_PIDS[$1]:-}
    udevadm settle --timeout=30
    sleep 0.5
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
    unset "MONITOR_PIDS[$name]"
    uevent_summary "$SCENARIO_OUT/uevents-$name.txt" > "$SCENARIO_OUT/uevents-$name-summary.txt"
}
# uevent_summary FILE -- one line per event: ACTION SUBSYSTEM DEVPATH + the interesting properties.
uevent_summary() {
    awk 'BEGIN{RS=""; FS="\n"} /ACTION=/{
           line=""; for(i=1;i<=NF;i++){split($i,kv,"="); k=kv[1];
             if(k ~ /^(ACTION|SUBSYSTEM|DEVPATH|DRIVER|MDEV_TYPE|MDEV_STATE|PCI_SLOT_NAME|PCI_ID|PCI_CLASS|MODALIAS|DEVNAME|DEVTYPE|MAJOR|MINOR)$/) line=line" "$i}
           print substr(line,2)}' "$1"
}

# vm_monitor 'HMP COMMAND' -- run a QEMU monitor command (device_add, device_del, info pci...)
# through the host's relay (run-vm.sh). Prints QEMU's reply; returns its status.
vm_monitor() {
    local dir=${GPUVIRT_VM_OUT:?}/.monitor id i
    id=$(date +%s%N)-$$
    mkdir -p "$dir"
    printf '%s' "$1" > "$dir/$id.tmp" && mv "$dir/$id.tmp" "$dir/$id.req"
    for i in $(seq 300); do
        if [ -f "$dir/$id.resp" ]; then
            tail -n +2 "$dir/$id.resp"
            return "$(head -1 "$dir/$id.resp")"
        fi
        sleep 0.1
    done
    echo "vm_monitor: no reply from the host relay in 30 s for: $1" >&2
    return 1
}

# Private D-Bus for the daemon and the CLI. Exports DBUS_SYSTEM_BUS_ADDRESS so that gpuvirtd and
# gpuvirtctl (and busctl --system) use it as "the system bus" without any flag.
DBUS_PID=
dbus_start() {
    local dir=/run/gpuvirt-test
    mkdir -p "$dir"
    cat > "$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/> <allow own="*"/> <allow send_destination="*"/> <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
    DBUS_PID=$(dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid 2>"$SCENARIO_OUT/dbus.err") \
        || { fail "private dbus-daemon did not start: $(cat "$SCENARIO_OUT/dbus.err")"; return 1; }
    export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$dir/bus.sock
}
dbus_stop() { [ -n "$DBUS_PID" ] && kill "$DBUS_PID" 2>/dev/null; DBUS_PID=; }

# gpuvirtd_start -- the daemon against the real /sys, real udev events, on the private bus, with
# its state dir on tmpfs (the guest's /var/lib is the read-only host root). GPUVIRTD_ARGS
# overrides the arguments. Waits until the bus name is owned.
GPUVIRTD_PID=
gpuvirtd_start() {
    local bin; bin=$(bin_path gpuvirtd)
    [ -x "$bin" ] || { fail "gpuvirtd not built at $bin"; return 1; }
    mkdir -p /run/gpuvirt-test/state
    # shellcheck disable=SC2086 # GPUVIRTD_ARGS is a word list on purpose
    RUST_LOG=${RUST_LOG:-info} "$bin" ${GPUVIRTD_ARGS:---root / --events udev --bus-address "$DBUS_SYSTEM_BUS_ADDRESS" --state-dir /run/gpuvirt-test/state} \
        >> "$SCENARIO_OUT/gpuvirtd.log" 2>&1 &
    GPUVIRTD_PID=$!
    local i
    for i in $(seq 120); do
        dbus-send --bus="$DBUS_SYSTEM_BUS_ADDRESS" --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
            org.freedesktop.DBus.NameHasOwner string:org.gpuvirt.GpuVirt1 2>/dev/null | grep -q 'boolean true' && return 0
        kill -0 "$GPUVIRTD_PID" 2>/dev/null || { fail "gpuvirtd exited early: $(tail -5 "$SCENARIO_OUT/gpuvirtd.log")"; return 1; }
        sleep 0.25
    done
    fail "gpuvirtd did not own org.gpuvirt.GpuVirt1 within 30 s"
    return 1
}
# ctl ARGS... -- gpuvirtctl on the private bus.
ctl() { "$(bin_path gpuvirtctl)" --bus-address "$DBUS_SYSTEM_BUS_ADDRESS" "$@"; }
# wait_for SECONDS COMMAND... -- poll (every 0.5 s) until the command succeeds.
wait_for() {
    local end=$(( SECONDS + $1 )); shift
    until "$@"; do [ "$SECONDS" -ge "$end" ] && return 1; sleep 0.5; done
}
gpuvirtd_stop() {
    [ -n "$GPUVIRTD_PID" ] || return 0
    kill -TERM "$GPUVIRTD_PID" 2>/dev/null
    wait "$GPUVIRTD_PID" 2>/dev/null
    GPUVIRTD_PID=
}

# --- the daemon's mutating API (gpuvirtctl has no mutating commands yet): raw D-Bus calls --------
GV_BUS=org.gpuvirt.GpuVirt1
GV_IF=org.gpuvirt.GpuVirt1
GV_ROOT=/org/gpuvirt/GpuVirt1
# gv_gpu_path ADDR -- the Gpu object of a PCI address (0000:01:00.0 -> .../gpus/0000_01_00_0).
gv_gpu_path() { local a=${1//[:.]/_}; echo "$GV_ROOT/gpus/$a"; }
# gv_call OBJECT INTERFACE.METHOD ARGS... -- gdbus call on the private bus (as "the system bus").
# Prints gdbus' reply (GVariant text) on stdout, the D-Bus error (GDBus.Error:NAME: message) on
# stderr; returns gdbus' status.
gv_call() {
    local obj=$1 method=$2; shift 2
    gdbus call --system --dest "$GV_BUS" --object-path "$obj" --method "$method" "$@"
}
# gv_prop OBJECT INTERFACE PROPERTY -- one property's value as gdbus prints it, unwrapped from
# "(<...>,)"; strings keep their quotes.
gv_prop() {
    local v
    v=$(gv_call "$1" org.freedesktop.DBus.Properties.Get "$2" "$3") || return 1
    v=${v#(<}; v=${v%>,)}; printf '%s\n' "$v"
}
# gv_error_name STDERR_TEXT -- the D-Bus error name in gdbus' error output.
gv_error_name() { grep -o 'GDBus.Error:[A-Za-z0-9_.]*' <<<"$1" | head -1 | sed 's/^GDBus.Error://'; }
# gv_job_path REPLY -- the job object path in a "(objectpath '/...', '...')" reply.
gv_job_path() { grep -o "objectpath '[^']*'" <<<"$1" | head -1 | sed "s/^objectpath '//; s/'\$//"; }
# gv_job_wait JOB SECONDS -- waits for the job to finish; prints "true|false ERROR_NAME MESSAGE";
# returns 0 only when it finished with success.
gv_job_wait() {
    local job=$1 end=$(( SECONDS + $2 )) fin
    while :; do
        fin=$(gv_prop "$job" "$GV_IF.Job" Finished 2>/dev/null)
        [ "$fin" = true ] && break
        [ "$SECONDS" -ge "$end" ] && { echo "timeout - job $job not finished after $2 s"; return 1; }
        sleep 0.5
    done
    local ok name msg
    ok=$(gv_prop "$job" "$GV_IF.Job" Success); name=$(gv_prop "$job" "$GV_IF.Job" ErrorName)
    msg=$(gv_prop "$job" "$GV_IF.Job" Message)
    echo "$ok $name $msg"
    [ "$ok" = true ]
}
