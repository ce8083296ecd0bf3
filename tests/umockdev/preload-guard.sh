#!/bin/sh
# preload-guard.sh MARKER NONCE CMD [ARGS...]
#
# Execs CMD only when this very environment makes processes see the umockdev testbed as /sys:
# LD_PRELOAD names libumockdev-preload and /sys/MARKER (a file that exists only inside the
# testbed) reads NONCE. A missing or broken preload is only a loader warning, after which a
# program sees the REAL /sys; as root, a daemon started that way could rebind real devices. So
# the check runs before CMD can write anything, and CMD inherits exactly the checked
# environment (exec, same LD_PRELOAD and UMOCKDEV_DIR). Refusal exits 99.
set -eu

if [ $# -lt 3 ]; then
    echo "usage: preload-guard.sh MARKER NONCE CMD [ARGS...]" >&2
    exit 2
fi
marker=$1
nonce=$2
shift 2

case "${LD_PRELOAD:-}" in
*libumockdev-preload*) ;;
*)
    echo "preload-guard: LD_PRELOAD ('${LD_PRELOAD:-}') lacks libumockdev-preload; refusing to run $1" >&2
    exit 99
    ;;
esac
if [ -z "${UMOCKDEV_DIR:-}" ]; then
    echo "preload-guard: UMOCKDEV_DIR is not set; refusing to run $1" >&2
    exit 99
fi
# cat is a child with the same environment, so it reads /sys exactly as CMD will.
seen=$(cat "/sys/$marker" 2>/dev/null || true)
if [ "$seen" != "$nonce" ]; then
    echo "preload-guard: /sys/$marker does not hold the testbed's nonce (read '$seen'): the umockdev preload is not active; refusing to run $1" >&2
    exit 99
fi
exec "$@"
