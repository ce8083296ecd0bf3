#!/bin/bash
# tests/vm/run-tests.sh [SCENARIO...] -- the VM tier's one entry point (CI: scripts/test.sh).
#
#   1. prepare the guest kernel, modules and initramfs (run-vm.sh prepare; needs root for apt the
#      first time, ~1-3 s when cached);
#   2. build the host binaries the scenarios run in the guest (the inventory example; gpuvirtd and
#      gpuvirtctl when their crates build);
#   3. boot one fresh VM per scenario (tests/vm/scenarios/<name>.sh; default: all of them) and run
#      it after udev coldplug;
#   4. print a summary with wall times; exit non-zero when anything failed.
# Exits 0 with a loud "SKIPPED: <reason>" only when QEMU cannot run on this machine at all.
# Artefacts: tests/vm/out/boot-<scenario>/ (console.log, setup/, <scenario>/results.txt, facts...).
# Environment: VM_OUT_ROOT (default tests/vm/out), CARGO_PROFILE (debug|release, default debug),
# GUEST_RUST_LOG (gpuvirtd's RUST_LOG inside the guest, e.g. gpuvirtd=debug for the timing lines
# of a profiling run; default info), and everything run-vm.sh reads (ACCEL, VM_MEM, VM_TIMEOUT,
# KVER...).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT_ROOT=${VM_OUT_ROOT:-$HERE/out}
PROFILE=${CARGO_PROFILE:-debug}
# A loaded 2-core CI machine can slow TCG a lot; a hung guest still ends here.
export VM_TIMEOUT=${VM_TIMEOUT:-600}
T_START=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
step() { printf '\n--- vm tier: %s\n' "$*"; }
skipped() {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    printf '!!! SKIPPED: VM tier: %s\n' "$*"
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    exit 0
}

if [ $# -gt 0 ]; then
    SCENARIOS=("$@")
else
    mapfile -t SCENARIOS < <(cd "$HERE/scenarios" && ls ./*.sh | sed 's|^\./||; s|\.sh$||' | sort)
fi
mkdir -p "$OUT_ROOT"

# 1. prepare ----------------------------------------------------------------------------------
step "prepare"
t=$EPOCHREALTIME
if ! "$HERE/run-vm.sh" prepare; then
    why=$("$HERE/run-vm.sh" probe 2>&1) || skipped "QEMU cannot run here ($why) and prepare failed"
    echo "FAIL: vm tier: prepare failed although QEMU runs"; exit 1
fi
T_PREPARE=$(since "$t")
why=$("$HERE/run-vm.sh" probe 2>&1) || skipped "$why"

# 2. host binaries ----------------------------------------------------------------------------
step "build host binaries ($PROFILE)"
t=$EPOCHREALTIME
cd "$REPO"
profile_flag=(); [ "$PROFILE" = release ] && profile_flag=(--release)
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory) \
    || { echo "FAIL: vm tier: cargo metadata"; exit 1; }
cargo build -q "${profile_flag[@]}" -p gpuvirt-core --example inventory \
    || { echo "FAIL: vm tier: cargo build -p gpuvirt-core --example inventory"; exit 1; }
# The daemon and the CLI are built when their packages have binaries; scenarios that need them
# check for them and fail loudly when they are missing.
for pkg in gpuvirtd gpuvirtctl gpuvirt-libvirt-hook; do
    cargo build -q "${profile_flag[@]}" -p "$pkg" --bins || { echo "FAIL: vm tier: cargo build -p $pkg"; exit 1; }
done
T_BUILD=$(since "$t")

# 3. one boot per scenario --------------------------------------------------------------------
declare -A VERDICT GUEST_S BOOT_S
rc_all=0
for name in "${SCENARIOS[@]}"; do
    step "scenario $name"
    out=$OUT_ROOT/boot-$name
    rm -rf "$out"; mkdir -p "$out"
    t=$EPOCHREALTIME
    VM_OUT=$out "$HERE/run-vm.sh" run \
        "export GPUVIRT_TARGET_DIR='$TARGET_DIR' GPUVIRT_PROFILE='$PROFILE' RUST_LOG='${GUEST_RUST_LOG:-info}'; '$HERE/guest/run-scenarios.sh' '$name'" \
        2>&1 | tee "$out/console.log"
    rc=${PIPESTATUS[0]}
    BOOT_S[$name]=$(since "$t")
    GUEST_S[$name]=$(awk -v n="$name" '$1==n{print $3}' "$out/scenarios.txt" 2>/dev/null)
    if [ "$rc" = 0 ] && grep -q "^$name PASS" "$out/scenarios.txt" 2>/dev/null; then
        VERDICT[$name]=PASS
    else
        VERDICT[$name]="FAIL (rc $rc)"; rc_all=1
    fi
done

# 4. summary ----------------------------------------------------------------------------------
printf '\n=== VM tier summary (accel %s, kernel %s)\n' "$("$HERE/run-vm.sh" versions | sed 's/.*ACCEL=//')" \
    "$("$HERE/run-vm.sh" versions | sed 's/KVER=\([^ ]*\).*/\1/')"
for name in "${SCENARIOS[@]}"; do
    out=$OUT_ROOT/boot-$name
    printf '%-14s %-12s boot+run %6ss  (scenario in guest %ss)\n' "$name" "${VERDICT[$name]}" "${BOOT_S[$name]}" "${GUEST_S[$name]:-?}"
    grep -h '^FAIL' "$out/setup/results.txt" "$out/$name/results.txt" 2>/dev/null | sed 's/^/    /'
    printf '    %s checks passed; artefacts: %s\n' "$(cat "$out/$name/results.txt" 2>/dev/null | grep -c '^PASS')" "$out"
done
printf 'prepare %ss, build %ss, total %ss\n' "$T_PREPARE" "$T_BUILD" "$(since "$T_START")"
[ "$rc_all" = 0 ] && echo "VM tier: all scenarios passed" || echo "VM tier: FAILED"
exit "$rc_all"
