#!/bin/busybox sh
# /init of the gpuvirt test-VM initramfs, run by static busybox as PID 1 (adapted from the proven
# vm-reference recipe).
# Stage 1 (in the initramfs): insmod virtio + 9p, mount the HOST's root filesystem (exported
# read-only by QEMU over virtio-9p, mount_tag=hostroot) on /newroot, put writable tmpfs, proc,
# sys and dev on it, then switch_root into it.
# Stage 2 (this script copied to /run/gpuvirt-vm, still PID 1): run the command with the host's
# /bin/bash, record its exit status, power off.
#
# Kernel command line parameters (no dots in the names: dotted names are module parameters and
# never reach init's environment):
#   gpuvirt_kmods=<host path>  dir holding the guest kernel's <kver>/ modules tree (the extracted
#                              linux-image .deb), bind-mounted on /lib/modules for modprobe/udev
#   gpuvirt_out=<host path>    host dir exported writable (mount_tag=gpuvirtout), mounted at the
#                              same path inside the guest
#   gpuvirt_cmd=<command>      run with "bash -c" in the host root (quoted on the command line)
#   gpuvirt_shell=1            interactive bash on the serial console instead of gpuvirt_cmd
#   gpuvirt_9pcache=loose|none cache mode of the read-only host root (default loose)
# The exit status of gpuvirt_cmd is printed as "GPUVIRT_VM_EXIT=<rc>" and written to
# $gpuvirt_out/exit_code; then the guest powers off (qemu runs with -no-reboot and exits).
if [ "$1" = stage2 ]; then
    # ---- stage 2: PID 1, / = host root (9p), the initramfs is gone ----
    BB=/run/gpuvirt-vm/busybox
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux GPUVIRT_VM_OUT="$gpuvirt_out"
    echo "GPUVIRT_VM_CMD_START uptime=$($BB cut -d' ' -f1 /proc/uptime)"
    if [ "$gpuvirt_shell" = 1 ]; then
        /usr/bin/setsid -c /bin/bash -l </dev/console >/dev/console 2>&1   # job control on ttyS0
    else
        /bin/bash -c "$gpuvirt_cmd" </dev/console >/dev/console 2>&1
    fi
    rc=$?
    echo "GPUVIRT_VM_CMD_END uptime=$($BB cut -d' ' -f1 /proc/uptime)"
    [ -n "$gpuvirt_out" ] && echo "$rc" > "$gpuvirt_out/exit_code"
    echo "GPUVIRT_VM_EXIT=$rc"
    $BB sync
    [ -n "$gpuvirt_out" ] && $BB umount "$gpuvirt_out" 2>/dev/null
    $BB poweroff -f
    $BB sleep 10
fi

# ---- stage 1: PID 1 in the initramfs ----
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GPUVIRT_VM_INIT uptime=$(cut -d' ' -f1 /proc/uptime)"

fail() { echo "GPUVIRT_VM_INIT_FAIL: $*"; echo "GPUVIRT_VM_EXIT=255"; sync; poweroff -f; sleep 5; }

# Modules needed to reach the 9p root, in dependency order (computed by run-vm.sh with
# modprobe --show-depends; virtio_ring must precede virtio).
for m in $(cat /modules.list); do
    insmod "/modules/$m" || fail "insmod $m"
done

# /newroot = host root, read-only. cache=loose saves 9p round trips for every stat/open/exec;
# it assumes the host tree does not change during one boot, which holds for a test run.
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=${gpuvirt_9pcache:-loose},access=client hostroot /newroot \
    || fail "mount hostroot over 9p"

# A second view of the host root, so host paths the tmpfs mounts below would hide (a checkout or
# a cargo target dir under /tmp, as CI may use) can be bound back at the same path.
mkdir -p /hostro
mount --bind /newroot /hostro || fail "bind the host root"

# Writable scratch areas (tmpfs) over the read-only host root.
for d in /tmp /run /var/tmp /var/lib/dbus; do
    [ -d "/newroot$d" ] && mount -t tmpfs -o mode=1777 tmpfs "/newroot$d"
done

# gpuvirt_keep=<path>[:<path>...]: host directories the guest must see even when they lie under one
# of the tmpfs mounts above (the project checkout, CARGO_TARGET_DIR).
if [ -n "$gpuvirt_keep" ]; then
    old_ifs=$IFS; IFS=:
    for p in $gpuvirt_keep; do
        case "$p" in
            /tmp/*|/run/*|/var/tmp/*|/var/lib/dbus/*)
                mkdir -p "/newroot$p" && mount --bind "/hostro$p" "/newroot$p" || fail "keep $p" ;;
        esac
    done
    IFS=$old_ifs
fi
umount -l /hostro
chmod 0755 /newroot/run 2>/dev/null
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
# devtmpfs has no /dev/fd & co (udev/systemd normally create them); bash process substitution
# <(...) silently yields nothing without /dev/fd.
ln -sfn /proc/self/fd /newroot/dev/fd
ln -sfn /proc/self/fd/0 /newroot/dev/stdin
ln -sfn /proc/self/fd/1 /newroot/dev/stdout
ln -sfn /proc/self/fd/2 /newroot/dev/stderr
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
[ -d /newroot/sys/kernel/debug ] && mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null

# Guest kernel modules: bind the extracted .deb's lib/modules over /lib/modules.
if [ -n "$gpuvirt_kmods" ]; then
    [ -d "/newroot/lib/modules" ] || fail "/lib/modules missing on the host root (run-vm.sh prepare creates it)"
    mount --bind "/newroot$gpuvirt_kmods" /newroot/lib/modules || fail "bind $gpuvirt_kmods"
fi

# Writable results share, mounted at the same path as on the host.
if [ -n "$gpuvirt_out" ]; then
    mkdir -p "/newroot$gpuvirt_out" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none,access=client gpuvirtout "/newroot$gpuvirt_out" \
        || fail "mount gpuvirtout at $gpuvirt_out"
fi

hostname gpuvirt-vm

# switch_root, NOT chroot: systemd tools (udevadm trigger/settle) compare / with /proc/1/root and
# refuse to work in a chroot ("Running in chroot, ignoring request."). A copy of busybox and this
# script in /run (tmpfs) stays PID 1 as stage 2 to run the command and power off.
mkdir -p /newroot/run/gpuvirt-vm
cp /bin/busybox /newroot/run/gpuvirt-vm/busybox
cp /init /newroot/run/gpuvirt-vm/init
exec switch_root /newroot /run/gpuvirt-vm/busybox sh /run/gpuvirt-vm/init stage2
fail "switch_root"
