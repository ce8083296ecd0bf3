#!/bin/bash
# tests/vm/run-vm.sh -- gpuvirt's real-kernel test VM (adapted from the proven vm-reference recipe).
#
# Boots a REAL Debian kernel under QEMU (q35 + emulated Intel VT-d IOMMU) with emulated display
# adapters, each behind its own PCIe root port, plus one EMPTY hotplug-capable root port (rp4).
# The guest's root filesystem is THIS host's root, exported read-only over virtio-9p, so host-built
# binaries (target/debug/..., udevadm, dbus-daemon) run unchanged in the guest. A tiny busybox
# initramfs only loads virtio/9p and mounts it. Results land in a writable 9p share (the out dir),
# mounted in the guest at the same path as on the host.
#
# Usage:
#   run-vm.sh prepare            install/download/extract/build (idempotent; ~1 s when cached)
#   run-vm.sh run 'CMD'          boot, run CMD with bash -c in the guest, power off; exit = CMD's
#   run-vm.sh shell              interactive bash on the serial console (Ctrl-A x quits)
#   run-vm.sh probe              exit 0 when qemu-system-x86_64 can start a machine here
#   run-vm.sh versions           print the resolved guest kernel versions
#   run-vm.sh clean              remove the cache and out dirs
# Environment:
#   VM_OUT=<dir>                 results share (default tests/vm/out); created if missing
#   VM_CACHE=<dir>               downloads and builds (default tests/vm/cache)
#   KVER=6.1.0-NN-amd64          guest kernel ABI (default: what linux-image-amd64 depends on)
#   ACCEL=kvm|tcg                default kvm only when kvm_intel/kvm_amd is loaded, else tcg
#   VM_MEM=1G VM_SMP=N           guest size (SMP default 1 under TCG, 2 under KVM)
#   VM_TIMEOUT=300               seconds before the VM is killed
#   KARGS_EXTRA='...'            appended to the guest kernel command line
#
# QEMU monitor: a QMP socket at $VM_RUN_DIR/qmp.sock (printed at boot, exported to the guest
# command as GPUVIRT_VM_QMP). Host-side tools can talk to it with tests/vm/qmp.py. The guest
# cannot reach a host socket, so the host relays requests: the guest writes an HMP command line to
# $VM_OUT/.monitor/<id>.req, the host runs it through qmp.py and writes <id>.resp (first line: the
# exit status, then QEMU's reply). tests/vm/guest/lib.sh wraps this as `vm_monitor 'CMD'`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${VM_CACHE:-$HERE/cache}
OUT=${VM_OUT:-$HERE/out}
REPO=$(cd "$HERE/../.." && pwd)

# Host directories the guest must see although its /tmp, /run, /var/tmp are tmpfs: the checkout
# and a CARGO_TARGET_DIR outside it (colon-separated, for the init's gpuvirt_keep=).
keep_paths() {
    local keep=$REPO
    case "${CARGO_TARGET_DIR:-}" in /*) keep="$keep:$CARGO_TARGET_DIR" ;; esac
    printf '%s' "$keep"
}
VM_MEM=${VM_MEM:-1G}
VM_TIMEOUT=${VM_TIMEOUT:-300}
# KVM needs a /dev/kvm that runs an UNMODIFIED x86 kernel (kvm_intel or kvm_amd). Some cloud
# sandboxes back /dev/kvm with kvm_pvm, which only runs PVM-enlightened guests: a stock Debian
# kernel hangs right after the real-mode setup code. There we use TCG (software emulation).
if [ -z "${ACCEL:-}" ]; then
    if [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then ACCEL=kvm; else ACCEL=tcg; fi
fi
# Under TCG on a 2-core host one vCPU is markedly faster than two (vCPU threads compete with
# QEMU's 9p worker threads).
if [ -z "${VM_SMP:-}" ]; then if [ "$ACCEL" = tcg ]; then VM_SMP=1; else VM_SMP=2; fi; fi
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3

log() { echo "[run-vm $(date +%T)] $*" >&2; }
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }

# ---------------------------------------------------------------------------------------------
# Versions. The guest kernel image, the headers the mdev samples are built against and the kernel
# source they come from must be the SAME Debian package version (vermagic + modversions CRCs).
# ---------------------------------------------------------------------------------------------
resolve_versions() {
    # apt-cache takes seconds on a busy machine: reuse the last answer until the apt lists change.
    local memo=$CACHE/versions.env auto=0
    [ -z "${KVER:-}" ] && auto=1
    if [ "$auto" = 1 ] && [ -f "$memo" ] && [ ! /var/lib/apt/lists -nt "$memo" ]; then
        # shellcheck source=/dev/null
        . "$memo"
    fi
    if [ -z "${KVER:-}" ]; then
        apt-cache show linux-image-amd64 >/dev/null 2>&1 || "${APT[@]}" update >/dev/null
        KVER=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
    fi
    [ -n "$KVER" ] || { echo "run-vm.sh: cannot resolve the guest kernel version (KVER)" >&2; exit 1; }
    if [ -z "${KPKGVER:-}" ]; then
        KPKGVER=$(apt-cache show "linux-image-$KVER" | awk '/^Version:/{print $2; exit}')
        [ -n "$KPKGVER" ] || { echo "run-vm.sh: apt knows no linux-image-$KVER" >&2; exit 1; }
        [ "$auto" = 1 ] && [ -d "$CACHE" ] && printf 'KVER=%s\nKPKGVER=%s\n' "$KVER" "$KPKGVER" > "$memo"
    fi
    KSERIES=$(echo "$KVER" | cut -d. -f1,2)            # 6.1
    KIMG=$CACHE/kimg-$KVER                             # dpkg -x of linux-image-$KVER
    KMODS=$KIMG/lib/modules                            # bind-mounted on the guest's /lib/modules
    VMLINUZ=$KIMG/boot/vmlinuz-$KVER
    INITRD=$CACHE/initramfs-$KVER.cpio
}

# Modules the initramfs insmods to mount the 9p root; the order comes from
# `modprobe --show-depends` (ONE module per call: extra names are read as module parameters).
INITRAMFS_ROOT_MODULES=(virtio_pci 9pnet_virtio 9p)

install_packages() {
    # qemu-system-x86: the VM. udev: systemd-udevd/udevadm used INSIDE the guest (from the host
    # root). kmod: depmod here, modprobe in the guest. linux-headers-$KVER, make, gcc: the mdev
    # samples. xz-utils, cpio: unpack the source, pack the initramfs. dbus: the guest's private
    # bus. jq: the scenarios read the inventory JSON. python3: the QMP helper.
    # libvirt-daemon-system, libvirt-clients: libvirtd and virsh, run INSIDE the guest only (the
    # libvirt scenario); libvirt-clients also ships virt-xml-validate, libvirt-daemon (pulled in)
    # the RNG schemas in /usr/share/libvirt/schemas, libxml2-utils the xmllint it calls.
    local need=(qemu-system-x86 udev kmod cpio xz-utils make gcc dbus jq python3 "linux-headers-$KVER"
        libvirt-daemon-system libvirt-clients libxml2-utils)
    local missing=() p
    for p in "${need[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { echo "run-vm.sh: missing packages (${missing[*]}) and not root" >&2; return 1; }
        log "apt-get install ${missing[*]}"
        "${APT[@]}" update > "$CACHE/apt-update.log" 2>&1 || true
        # The packages' maintainer scripts must not start services on THIS host (libvirtd,
        # virtlogd, the default network): a policy-rc.d that denies every start (exit 101) is
        # honoured by invoke-rc.d and deb-systemd-invoke. Docker images ship one; elsewhere one is
        # put in place for the install and removed after it.
        local policy=/usr/sbin/policy-rc.d own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\n# run-vm.sh: no service starts during the VM tier package install\nexit 101\n' > "$policy"
            chmod 0755 "$policy"; own_policy=1
        fi
        local install_rc=0
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}" \
            > "$CACHE/apt-install.log" 2>&1 || install_rc=$?
        [ "$own_policy" = 1 ] && rm -f "$policy"
        [ "$install_rc" = 0 ] || { tail -20 "$CACHE/apt-install.log" >&2; return 1; }
        if pgrep -x libvirtd >/dev/null || pgrep -x virtqemud >/dev/null; then
            log "warning: a libvirt daemon runs on this host (not started by run-vm.sh; the tests use the guest's own)"
        fi
    fi
    # Machines whose image ships a newer qemu-utils (10.x from bookworm-backports, not in the apt
    # sources) lose it when bookworm's qemu-system-x86 is installed: put qemu-img back, at the
    # version that matches the installed qemu-system.
    if ! dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q 'ok installed'; then
        local qv; qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
        if [ "$(id -u)" = 0 ] && [ -n "$qv" ]; then
            log "re-installing qemu-utils=$qv (removed by the qemu-system-x86 install)"
            DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "qemu-utils=$qv" \
                >> "$CACHE/apt-install.log" 2>&1 || log "warning: could not re-install qemu-utils"
        fi
    fi
}

prepare() {
    local t0=$EPOCHREALTIME
    mkdir -p "$CACHE" "$OUT"
    resolve_versions
    log "guest kernel $KVER (Debian $KPKGVER), cache $CACHE"
    install_packages

    # Downloads: unpacked into the cache, never installed on the host.
    (
        cd "$CACHE"
        ls "linux-image-${KVER}_${KPKGVER}_amd64.deb" >/dev/null 2>&1 \
            || { log "apt-get download linux-image-$KVER=$KPKGVER"; apt-get download -q "linux-image-$KVER=$KPKGVER" 2>&1 | grep -v unsandboxed >&2 || true; }
        ls "linux-source-${KSERIES}_${KPKGVER}_all.deb" >/dev/null 2>&1 \
            || { log "apt-get download linux-source-$KSERIES=$KPKGVER"; apt-get download -q "linux-source-$KSERIES=$KPKGVER" 2>&1 | grep -v unsandboxed >&2 || true; }
        ls busybox-static_*.deb >/dev/null 2>&1 \
            || { log "apt-get download busybox-static"; apt-get download -q busybox-static 2>&1 | grep -v unsandboxed >&2 || true; }
    )
    local deb
    for deb in "linux-image-${KVER}_${KPKGVER}_amd64.deb" "linux-source-${KSERIES}_${KPKGVER}_all.deb"; do
        [ -f "$CACHE/$deb" ] || { echo "run-vm.sh: download of $deb failed" >&2; return 1; }
    done

    # Kernel image .deb (vmlinuz + lib/modules) and busybox.
    if [ ! -f "$VMLINUZ" ]; then
        log "dpkg -x linux-image-$KVER"
        rm -rf "$KIMG"; dpkg -x "$CACHE/linux-image-${KVER}_${KPKGVER}_amd64.deb" "$KIMG"
    fi
    if [ ! -x "$CACHE/busybox/bin/busybox" ]; then
        rm -rf "$CACHE/busybox"; dpkg -x "$CACHE"/busybox-static_*.deb "$CACHE/busybox"
    fi

    # The kernel's sample mdev drivers (mtty, mdpy, mdpy-fb, mbochs), built out of tree. Only
    # samples/vfio-mdev is pulled out of the source tarball.
    local src=$CACHE/linux-source-$KSERIES/samples/vfio-mdev
    if [ ! -f "$src/mbochs.c" ]; then
        log "extract samples/vfio-mdev from linux-source-$KSERIES $KPKGVER"
        dpkg-deb --fsys-tarfile "$CACHE/linux-source-${KSERIES}_${KPKGVER}_all.deb" \
            | tar -xO "./usr/src/linux-source-$KSERIES.tar.xz" \
            | tar -xJ -C "$CACHE" "linux-source-$KSERIES/samples/vfio-mdev"
    fi
    local extra=$KMODS/$KVER/extra build=$CACHE/mdev-build-$KVER
    if [ ! -f "$extra/mbochs.ko" ]; then
        log "build mdev sample modules against linux-headers-$KVER"
        rm -rf "$build"
        make -C "$HERE/mdev-samples" KVER="$KVER" SRC="$src" BUILD="$build" > "$CACHE/mdev-build.log" 2>&1 \
            || { tail -30 "$CACHE/mdev-build.log" >&2; return 1; }
        mkdir -p "$extra"
        cp "$build"/{mtty,mdpy,mdpy-fb,mbochs}.ko "$extra/"
        rm -f "$KMODS/$KVER/modules.dep"
    fi
    # The .deb postinst normally runs depmod; it also indexes extra/ so that `modprobe mbochs`
    # in the guest pulls in vfio and mdev.
    [ -f "$KMODS/$KVER/modules.dep" ] || { log "depmod"; depmod -b "$KIMG" "$KVER"; }

    # Initramfs: static busybox + the virtio/9p modules + /init, uncompressed (about 3 MB).
    if [ ! -f "$INITRD" ] || [ "$HERE/initramfs-init.sh" -nt "$INITRD" ]; then
        log "build initramfs"
        local d=$CACHE/initramfs-root f
        rm -rf "$d"; mkdir -p "$d"/{bin,dev,proc,sys,newroot,modules}
        cp "$CACHE/busybox/bin/busybox" "$d/bin/busybox"
        install -m 0755 "$HERE/initramfs-init.sh" "$d/init"
        : > "$d/modules.list"
        for f in $(for m in "${INITRAMFS_ROOT_MODULES[@]}"; do modprobe -d "$KIMG" -S "$KVER" --show-depends "$m"; done \
                   | awk '$1=="insmod" && !seen[$2]++ {print $2}'); do
            cp "$f" "$d/modules/"; basename "$f" >> "$d/modules.list"
        done
        log "initramfs modules: $(tr '\n' ' ' < "$d/modules.list")"
        (cd "$d" && find . -print0 | cpio --null -o -H newc --quiet) > "$INITRD.tmp"
        mv "$INITRD.tmp" "$INITRD"
    fi
    # The guest bind-mounts $KMODS over /lib/modules: the mount point must exist in the host root
    # (linux-headers creates it anyway).
    [ -d /lib/modules ] || mkdir -p /lib/modules
    log "prepare done in $(seconds_since "$t0")s"
}

# Exit 0 when QEMU can start a q35 machine with the accelerator we would use (paused, then quit).
probe() {
    command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is not installed"; return 1; }
    local accel=$ACCEL out
    [ "$accel" = tcg ] && accel=tcg,thread=multi
    if ! out=$(printf 'quit\n' | timeout 30 qemu-system-x86_64 -accel "$accel" -machine q35 -nodefaults \
            -display none -S -monitor stdio -serial none 2>&1); then
        echo "qemu-system-x86_64 cannot start a machine: $(echo "$out" | tail -3 | tr '\n' ' ')"
        return 1
    fi
    return 0
}

# Host side of the guest's monitor requests (see the header). Runs until the VM exits.
monitor_relay() {
    local qmp=$1 dir=$OUT/.monitor req id rc
    mkdir -p "$dir"
    while :; do
        for req in "$dir"/*.req; do
            [ -e "$req" ] || continue
            id=${req%.req}
            set +e
            reply=$("$PY" "$HERE/qmp.py" "$qmp" "$(cat "$req")" 2>&1)
            rc=$?
            set -e
            printf '%s\n%s\n' "$rc" "$reply" > "$id.tmp"
            mv "$id.tmp" "$id.resp"
            rm -f "$req"
            echo "[monitor] $(cat "$id.resp" | tail -n +2 | head -3 | tr '\n' ' ') (rc $rc)" >> "$OUT/monitor.log"
        done
        sleep 0.2
    done
}

# boot_vm CMD [extra kernel args] -- boot, run CMD in the guest, power off; returns CMD's status
# (99: the guest never reported one; 124: timed out).
boot_vm() {
    local cmd=$1 extra=${2:-}
    resolve_versions
    [ -f "$INITRD" ] && [ -f "$VMLINUZ" ] && [ ! "$HERE/initramfs-init.sh" -nt "$INITRD" ] || prepare
    mkdir -p "$OUT" "$OUT/.monitor"; rm -f "$OUT/exit_code" "$OUT"/.monitor/*
    OUT=$(cd "$OUT" && pwd)
    local rundir; rundir=$(mktemp -d "${TMPDIR:-/tmp}/gpuvirt-vm.XXXXXX")
    local qmp=$rundir/qmp.sock
    # The command travels as a script in the writable share: the kernel command line cannot carry
    # double quotes and is limited to 2048 bytes.
    {
        echo "export GPUVIRT_VM_OUT='$OUT' GPUVIRT_VM_QMP='$qmp' GPUVIRT_VM_ACCEL='$ACCEL' GPUVIRT_VM_KVER='$KVER'"
        printf '%s\n' "$cmd"
    } > "$OUT/vm-cmd.sh"
    local accel=(-accel kvm -cpu host)
    [ "$ACCEL" = tcg ] && accel=(-accel tcg,thread=multi,tb-size=256 -cpu max)
    log "accel=$ACCEL mem=$VM_MEM smp=$VM_SMP kernel=$KVER qmp=$qmp out=$OUT"
    local qemu=(
        qemu-system-x86_64
        "${accel[@]}" -smp "$VM_SMP" -m "$VM_MEM"
        # split irqchip is required for interrupt remapping (intremap=on)
        -machine q35,kernel-irqchip=split
        -device intel-iommu,intremap=on,caching-mode=on   # before the PCI devices it translates
        -nodefaults -no-reboot -display none -vga none
        -kernel "$VMLINUZ" -initrd "$INITRD"
        -append "console=ttyS0 intel_iommu=on iommu=pt panic=-1 loglevel=4 gpuvirt_kmods=$KMODS gpuvirt_out=$OUT gpuvirt_keep=$(keep_paths) gpuvirt_cmd=\"/bin/bash $OUT/vm-cmd.sh\" $extra ${KARGS_EXTRA:-}"
        # host root, read-only; multidevs=remap: / spans several host filesystems
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
        -virtfs local,path="$OUT",mount_tag=gpuvirtout,security_model=none,multidevs=remap
        # Display adapters: std VGA on the root complex (the boot VGA), the others each behind
        # their own PCIe root port, so each sits in its own IOMMU group.
        -device VGA,id=vga0
        -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1
        -device bochs-display,id=bochs1,bus=rp1
        -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2
        -device virtio-gpu-pci,id=vgpu2,bus=rp2
        -device pcie-root-port,id=rp3,bus=pcie.0,chassis=3,slot=3
        -device secondary-vga,id=svga3,bus=rp3
        # Empty, hotplug-capable root port for device_add/device_del scenarios. The firmware sizes
        # bridge windows at boot from what is behind them: without a reservation the empty port gets
        # too small a prefetchable window and bochs-drm rejects a hot-added adapter ("less than 4 MB
        # video memory"). bochs-display's 16 MB framebuffer BAR is 32-bit prefetchable.
        -device pcie-root-port,id=rp4,bus=pcie.0,chassis=4,slot=4,hotplug=on,pref32-reserve=64M,mem-reserve=8M
        -qmp "unix:$qmp,server=on,wait=off"
    )
    if [ "${INTERACTIVE:-0}" = 1 ]; then
        "${qemu[@]}" -serial mon:stdio || true
        rm -rf "$rundir"
        return 0
    fi
    monitor_relay "$qmp" & local relay=$!
    local t0=${EPOCHREALTIME/./} now d   # microseconds, no fork per console line
    set +e
    timeout --foreground -k 5 "$VM_TIMEOUT" "${qemu[@]}" -serial stdio -monitor none </dev/null 2>&1 | while IFS= read -r line; do
        now=${EPOCHREALTIME/./}; d=$((now - t0))
        printf '[%3d.%03d] %s\n' $((d / 1000000)) $((d % 1000000 / 1000)) "${line%$'\r'}"
    done
    local qemu_rc=${PIPESTATUS[0]}
    set -e
    kill "$relay" 2>/dev/null; wait "$relay" 2>/dev/null || true
    rm -rf "$rundir"
    d=$(( ${EPOCHREALTIME/./} - t0 ))
    printf 'BOOT_WALL_SECONDS=%d.%03d qemu_rc=%s\n' $((d / 1000000)) $((d % 1000000 / 1000)) "$qemu_rc"
    [ "$qemu_rc" = 124 ] && { echo "run-vm.sh: the VM ran past VM_TIMEOUT=${VM_TIMEOUT}s and was killed" >&2; return 124; }
    [ -f "$OUT/exit_code" ] && return "$(cat "$OUT/exit_code")"
    echo "run-vm.sh: the guest reported no exit status (qemu rc $qemu_rc)" >&2
    return 99
}

case "${1:-}" in
    prepare)  prepare ;;
    run)      shift; boot_vm "$*" ;;
    shell)    INTERACTIVE=1 boot_vm true "gpuvirt_shell=1" ;;
    probe)    probe ;;
    versions) resolve_versions; echo "KVER=$KVER KPKGVER=$KPKGVER ACCEL=$ACCEL" ;;
    clean)    rm -rf "$CACHE" "$OUT" ;;
    *)        sed -n '2,31p' "$0"; exit 2 ;;
esac
