#!/bin/bash
# Scenario "inventory" (runs INSIDE the test VM, after udev coldplug; see guest/run-scenarios.sh).
#
# 1. Records the real kernel's sysfs facts the simulated kernel must match, under
#    $SCENARIO_OUT/facts/: every display function's attributes and links, IOMMU groups, mdev parents
#    and types of the sample drivers (mbochs, mdpy, mtty), an mdev's directory, the errno of bad
#    writes, and the uevents (kernel and udev) of a vfio-pci rebind, mdev create/remove and a
#    parent-module unload with live mdevs.
# 2. Runs gpuvirt-core's inventory example against / and checks it against what the guest's sysfs
#    says independently (plain shell reads): IOMMU enabled, every PCI function and display adapter
#    present with its real class, driver, IOMMU group and boot_vga, every group's members; then,
#    with the mdev parents loaded and an mdev created, the parents, types and the mdev.
set -u
# shellcheck source=../guest/lib.sh
. "$(dirname "$0")/../guest/lib.sh"
FACTS=$SCENARIO_OUT/facts
mkdir -p "$FACTS"
INV_BIN=$(bin_path examples/inventory)

# write_errno FILE VALUE -- the error message a write gets ("ok" when it succeeds).
write_errno() {
    local msg
    if msg=$( (printf '%s\n' "$2" > "$1") 2>&1); then echo ok; else echo "${msg##*: }"; fi
}

# run_inventory OUT.json -- the inventory example against the real root.
run_inventory() {
    local t0; t0=$(t_now)
    if "$INV_BIN" --root / > "$1" 2> "$1.stderr" && jq -e . "$1" >/dev/null 2>&1; then
        info "inventory example ran in $(elapsed "$t0")s ($(wc -c < "$1") bytes of JSON)"
        return 0
    fi
    fail "inventory example failed: $(tail -3 "$1.stderr" | tr '\n' ' ')"
    return 1
}
# jqv FILE EXPR -- one value from a JSON file (null when absent).
jqv() { jq -r "$2" "$1" 2>/dev/null; }

# ------------------------------------------------------------------------------------ facts: static
{
    echo "uname -r: $(uname -r)"
    echo "cmdline: $(sed 's/gpuvirt_cmd=.*//' /proc/cmdline)"
    echo "/sys/class/iommu: $(ls /sys/class/iommu | tr '\n' ' ')"
    dmesg | grep -E 'DMAR|IOMMU|iommu' | head -20
} > "$FACTS/iommu.txt"
for g in $(ls /sys/kernel/iommu_groups | sort -n); do
    echo "group $g: $(ls "/sys/kernel/iommu_groups/$g/devices" | tr '\n' ' ')"
done > "$FACTS/iommu-groups.txt"
for a in $(ls /sys/bus/pci/devices); do
    printf '%s class=%s id=%s:%s driver=%s group=%s path=%s\n' "$a" "$(attr "/sys/bus/pci/devices/$a/class")" \
        "$(attr "/sys/bus/pci/devices/$a/vendor")" "$(attr "/sys/bus/pci/devices/$a/device")" \
        "$(pci_driver "$a")" "$(pci_group "$a")" "$(readlink -f "/sys/bus/pci/devices/$a")"
done > "$FACTS/pci-functions.txt"
mapfile -t DISPLAYS < <(display_addrs)
for a in "${DISPLAYS[@]}"; do
    dump_device "/sys/bus/pci/devices/$a" > "$FACTS/display-$a.txt"
done
info "display adapters (sysfs): ${DISPLAYS[*]}"

# ------------------------------------------------------------------------- inventory vs sysfs: PCI
INV=$SCENARIO_OUT/inventory.json
if [ ! -x "$INV_BIN" ]; then
    fail "inventory example not built at $INV_BIN (cargo build -p gpuvirt-core --example inventory)"
elif run_inventory "$INV"; then
    # IOMMU
    units=$(ls /sys/class/iommu | sort | tr '\n' ' ')
    ngroups=$(ls /sys/kernel/iommu_groups | wc -l)
    if [ -n "$units" ] && [ "$ngroups" -gt 0 ] && [ "$(jqv "$INV" .iommu.enabled)" = true ]; then
        pass "iommu enabled (sysfs: units $units, $ngroups groups; inventory: enabled)"
    else
        fail "iommu: sysfs units '$units' groups $ngroups; inventory enabled=$(jqv "$INV" .iommu.enabled)"
    fi
    inv_units=$(jqv "$INV" '.iommu.units[]' | sort | tr '\n' ' ')
    [ "$inv_units" = "$units" ] && pass "iommu units match: $units" || fail "iommu units: inventory '$inv_units', sysfs '$units'"
    [ "$(jqv "$INV" .iommu.group_count)" = "$ngroups" ] && pass "iommu group_count $ngroups" \
        || fail "iommu group_count: inventory $(jqv "$INV" .iommu.group_count), sysfs $ngroups"
    krel=$(jqv "$INV" .kernel_release)
    [ "$krel" = "$(uname -r)" ] && pass "kernel_release $krel" || fail "kernel_release: inventory '$krel', uname '$(uname -r)'"

    # The scan is GPU-scoped: every PCI function is known by its class; GPUs, their slot
    # companions and every member of their IOMMU groups are read in full. Lines compared as
    # "address class driver group boot_vga", one per function, from sysfs (shell reads) and
    # from the inventory (one jq call).
    for d in /sys/bus/pci/devices/*; do
        a=${d##*/}
        drv=$(pci_driver "$a"); [ "$drv" = - ] && drv=null
        grp=$(pci_group "$a"); [ "$grp" = - ] && grp=null
        case $(attr "$d/boot_vga") in 1) bv=true ;; 0) bv=false ;; *) bv=null ;; esac
        echo "$a $(( $(attr "$d/class") )) $drv $grp $bv"
    done | sort > "$SCENARIO_OUT/functions.sysfs"
    awk '{print $1" "$2}' "$SCENARIO_OUT/functions.sysfs" > "$SCENARIO_OUT/classes.sysfs"
    jq -r '.pci_classes | to_entries[] | "\(.key) \(.value)"' "$INV" | sort > "$SCENARIO_OUT/classes.inventory"
    if diff -u "$SCENARIO_OUT/classes.sysfs" "$SCENARIO_OUT/classes.inventory" > "$SCENARIO_OUT/classes.diff"; then
        pass "all $(wc -l < "$SCENARIO_OUT/classes.sysfs") PCI functions known with their class"
    else
        fail "PCI classes differ (- sysfs, + inventory): $(grep '^[-+][0-9]' "$SCENARIO_OUT/classes.diff" | tr '\n' ';')"
    fi
    jq -r '.functions | to_entries[] | .value | "\(.address) \(.class) \(.driver) \(.iommu_group) \(.boot_vga)"' "$INV" \
        | sort > "$SCENARIO_OUT/functions.inventory"
    wrong=$(comm -13 "$SCENARIO_OUT/functions.sysfs" "$SCENARIO_OUT/functions.inventory" | tr '\n' ';')
    [ -z "$wrong" ] && pass "all $(wc -l < "$SCENARIO_OUT/functions.inventory") functions read in full: address, class, driver, group, boot_vga match sysfs" \
        || fail "functions read in full differ from sysfs: $wrong"
    # Scope: every display adapter and every member of its IOMMU group is read in full.
    missing=
    for a in "${DISPLAYS[@]}"; do
        g=$(pci_group "$a"); [ "$g" = - ] && continue
        for m in $(ls "/sys/kernel/iommu_groups/$g/devices"); do
            grep -q "^$m " "$SCENARIO_OUT/functions.inventory" || missing="$missing $m(group $g of $a)"
        done
    done
    [ -z "$missing" ] && pass "every display adapter's group members are in the inventory" \
        || fail "group members of display adapters missing from the inventory:$missing"

    # Display adapters: the GPUs, each bound to its real driver and in a group; one boot VGA.
    inv_gpus=$(jqv "$INV" '.gpus | keys[]' | sort | tr '\n' ' ')
    [ "$inv_gpus" = "${DISPLAYS[*]} " ] && pass "GPUs = display adapters: ${DISPLAYS[*]}" \
        || fail "GPUs: inventory '$inv_gpus', sysfs display adapters '${DISPLAYS[*]} '"
    [ "${#DISPLAYS[@]}" -ge 4 ] || fail "expected 4 emulated display adapters, sysfs has ${#DISPLAYS[@]}"
    boot_vgas=()
    for a in "${DISPLAYS[@]}"; do
        line=$(grep "^$a " "$SCENARIO_OUT/functions.sysfs")
        read -r _ _ drv grp bv <<< "$line"
        [ "$bv" = true ] && boot_vgas+=("$a")
        if [ "$drv" = null ] || [ "$grp" = null ]; then
            fail "display $a: sysfs says driver=$drv group=$grp (every adapter should be bound and grouped)"
        elif grep -qx "$line" "$SCENARIO_OUT/functions.inventory"; then
            pass "display $a: driver $drv, group $grp, boot_vga $bv (inventory = sysfs)"
        else
            fail "display $a: inventory '$(grep "^$a " "$SCENARIO_OUT/functions.inventory")', sysfs '$line'"
        fi
    done
    [ "${#boot_vgas[@]}" = 1 ] && pass "exactly one boot VGA: ${boot_vgas[*]}" || fail "boot VGA devices: '${boot_vgas[*]}'"

    # Groups and their members: every group the inventory holds matches sysfs exactly, the
    # display adapters' groups are among them, and every group of the host is counted.
    for g in /sys/kernel/iommu_groups/*; do
        echo "${g##*/}: $(ls "$g/devices" | sort | tr '\n' ' ')"
    done | sort > "$SCENARIO_OUT/groups.sysfs"
    jq -r '.groups | to_entries[] | "\(.key): \([.value.members[].name] | sort | join(" ")) "' "$INV" \
        | sort > "$SCENARIO_OUT/groups.inventory"
    wrong=$(comm -13 "$SCENARIO_OUT/groups.sysfs" "$SCENARIO_OUT/groups.inventory" | tr '\n' ';')
    [ -z "$wrong" ] && pass "all $(wc -l < "$SCENARIO_OUT/groups.inventory") IOMMU groups read match sysfs with every member" \
        || fail "IOMMU groups differ from sysfs: $wrong"
    for a in "${DISPLAYS[@]}"; do
        g=$(pci_group "$a"); [ "$g" = - ] && continue
        grep -q "^$g: " "$SCENARIO_OUT/groups.inventory" || fail "group $g of display $a missing from the inventory"
    done
    ids_sysfs=$(ls /sys/kernel/iommu_groups | sort -n | tr '\n' ' ')
    ids_inv=$(jqv "$INV" '.group_ids[]' | sort -n | tr '\n' ' ')
    [ "$ids_inv" = "$ids_sysfs" ] && pass "all $ngroups IOMMU group ids known" \
        || fail "group ids: inventory '$ids_inv', sysfs '$ids_sysfs'"
fi

# ------------------------------------------------------------- facts: driver_override and vfio rebind
monitor_start rebind-kernel --kernel --property
monitor_start rebind-udev --udev --property
TARGET=
for a in "${DISPLAYS[@]}"; do
    [ "$(attr "/sys/bus/pci/devices/$a/boot_vga")" = 1 ] && continue
    [ "$(pci_driver "$a")" = bochs-drm ] && { TARGET=$a; break; }
done
if [ -z "$TARGET" ]; then
    fail "no secondary bochs-drm adapter to rebind"
else
    d=/sys/bus/pci/devices/$TARGET
    grp=$(pci_group "$TARGET")
    {
        echo "target $TARGET (group $grp)"
        echo "driver_override initially: '$(cat "$d/driver_override")'"
        # Gotcha: an override to a driver whose module is not loaded succeeds and leaves the device
        # driverless (vfio-pci is not autoloaded: the modalias matches bochs).
        lsmod_vfio=$([ -d /sys/module/vfio_pci ] && echo loaded || echo absent)
        echo "vfio_pci module before: $lsmod_vfio"
        echo "write vfio-pci > driver_override: $(write_errno "$d/driver_override" vfio-pci)"
        echo "write unbind: $(write_errno "$d/driver/unbind" "$TARGET")"
        echo "write drivers_probe: $(write_errno /sys/bus/pci/drivers_probe "$TARGET")"
        echo "driver after probe without vfio-pci loaded: $(pci_driver "$TARGET")"
        modprobe vfio-pci
        echo "write drivers_probe after modprobe vfio-pci: $(write_errno /sys/bus/pci/drivers_probe "$TARGET")"
        sleep 0.5
        echo "driver now: $(pci_driver "$TARGET"); /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
        ls -l /dev/vfio
        # udevadm monitor shows DEVNAME with /dev/ in front; the kernel's own (uevent file) is relative.
        echo "uevent file of /sys/devices/virtual/vfio/$grp: $(attr "/sys/devices/virtual/vfio/$grp/uevent")"
        echo "uevent file of the device: $(attr "$d/uevent")"
        echo "vfio-dev: $(ls "$d/vfio-dev" 2>&1 | tr '\n' ' ')"
        echo "write bind to vfio-pci while bound (expect EBUSY?): $(write_errno /sys/bus/pci/drivers/vfio-pci/bind "$TARGET")"
        echo "write bogus address to drivers_probe: $(write_errno /sys/bus/pci/drivers_probe 0000:ff:1f.7)"
        echo "write garbage to driver_override (too long, 4096 chars): $(write_errno "$d/driver_override" "$(printf 'x%.0s' $(seq 4096))")"
        echo "write newline to driver_override: $(write_errno "$d/driver_override" '')"
        echo "driver_override after clearing: '$(cat "$d/driver_override")'"
        echo "write unbind (vfio-pci): $(write_errno /sys/bus/pci/drivers/vfio-pci/unbind "$TARGET")"
        echo "write unbind again on an unbound device (driver dir gone): $(write_errno /sys/bus/pci/drivers/vfio-pci/unbind "$TARGET")"
        echo "write drivers_probe: $(write_errno /sys/bus/pci/drivers_probe "$TARGET")"
        sleep 0.5
        echo "driver back: $(pci_driver "$TARGET"); /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
    } > "$FACTS/rebind.txt" 2>&1
    grep -q "driver after probe without vfio-pci loaded: -" "$FACTS/rebind.txt" \
        && pass "fact: driver_override=vfio-pci + drivers_probe without the module leaves the device driverless" \
        || fail "fact check: see facts/rebind.txt (driver after probe without vfio-pci)"
    grep -q "^driver now: vfio-pci; /dev/vfio: .*\b$grp\b" "$FACTS/rebind.txt" \
        && pass "rebind $TARGET to vfio-pci: /dev/vfio/$grp appeared" || fail "rebind to vfio-pci: see facts/rebind.txt"
    grep -q "^driver_override after clearing: '(null)'" "$FACTS/rebind.txt" \
        && pass "fact: driver_override reads (null) after writing a newline" || fail "driver_override clearing: see facts/rebind.txt"
    [ "$(pci_driver "$TARGET")" = bochs-drm ] && [ ! -e "/dev/vfio/$grp" ] \
        && pass "rebind $TARGET back to bochs-drm: /dev/vfio/$grp gone" || fail "back-rebind: driver $(pci_driver "$TARGET")"
fi
monitor_stop rebind-kernel
monitor_stop rebind-udev
k=$SCENARIO_OUT/uevents-rebind-kernel-summary.txt
if grep -q 'ACTION=unbind .*SUBSYSTEM=pci ' "$k" && ! grep -q 'ACTION=unbind .*SUBSYSTEM=pci .*DRIVER=' "$k" \
   && grep -q 'ACTION=bind .*SUBSYSTEM=pci .*DRIVER=vfio-pci' "$k" && grep -q 'ACTION=add .*SUBSYSTEM=vfio .*DEVNAME=.*vfio/[0-9]' "$k"; then
    pass "fact: pci unbind uevents carry no DRIVER=, bind carries DRIVER=vfio-pci, vfio group add has DEVNAME=vfio/N"
else
    fail "rebind uevents differ from design.md §5: see uevents-rebind-kernel-summary.txt"
fi
vfio_add=$(grep -n 'ACTION=add .*SUBSYSTEM=vfio ' "$k" | head -1 | cut -d: -f1)
vfio_bind=$(grep -n 'ACTION=bind .*SUBSYSTEM=pci .*DRIVER=vfio-pci' "$k" | head -1 | cut -d: -f1)
[ -n "$vfio_add" ] && [ -n "$vfio_bind" ] && [ "$vfio_add" -lt "$vfio_bind" ] \
    && pass "fact: the vfio group add arrives before the pci bind DRIVER=vfio-pci" \
    || info "vfio add (line ${vfio_add:-none}) vs pci bind (line ${vfio_bind:-none}) order differs from pitfalls.md"

# ------------------------------------------------------------------------------------- facts: mdev
monitor_start mdev-kernel --kernel --property
monitor_start mdev-udev --udev --property
for m in mbochs mdpy mtty; do modprobe "$m" || fail "modprobe $m"; done
udevadm settle --timeout=30
{
    for p in /sys/class/mdev_bus/*; do
        echo "== parent ${p##*/} -> $(readlink "$p") (resolves to $(readlink -f "$p"))"
        dump_device "$p"
        for t in "$p"/mdev_supported_types/*; do
            echo "-- type ${t##*/}: $(ls "$t" | tr '\n' ' ')"
            for f in name description device_api available_instances; do
                if [ -e "$t/$f" ]; then echo "   $f = $(attr "$t/$f")"; else echo "   $f ABSENT"; fi
            done
        done
    done
} > "$FACTS/mdev-parents.txt" 2>&1
parents=$(ls /sys/class/mdev_bus 2>/dev/null | sort | tr '\n' ' ')
[ "$parents" = "mbochs mdpy mtty " ] && pass "mdev parents mbochs mdpy mtty registered" || fail "mdev parents: '$parents'"

UUID=$(cat /proc/sys/kernel/random/uuid)
T=/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small
before=$(attr "$T/available_instances")
{
    echo "create $UUID on mbochs-small: $(write_errno "$T/create" "$UUID")"
    echo "create the same UUID again: $(write_errno "$T/create" "$UUID")"
    echo "create malformed UUID: $(write_errno "$T/create" not-a-uuid)"
    echo "available_instances mbochs-small $before -> $(attr "$T/available_instances")"
    M=/sys/bus/mdev/devices/$UUID
    echo "== mdev $UUID"
    echo "bus/mdev/devices link: $(readlink "$M")"
    dump_device "$M"
    echo "type dir devices/: $(ls "$T/devices" | tr '\n' ' ')"
    echo "iommu group members: $(ls "$(readlink -f "$M/iommu_group")/devices" | tr '\n' ' ')"
} > "$FACTS/mdev-device.txt" 2>&1
grep -q "^create $UUID on mbochs-small: ok" "$FACTS/mdev-device.txt" && pass "mdev $UUID created" || fail "mdev create: see facts/mdev-device.txt"
grep -q "^create the same UUID again: File exists" "$FACTS/mdev-device.txt" && pass "fact: duplicate mdev UUID -> EEXIST" \
    || fail "duplicate mdev create: $(grep 'same UUID' "$FACTS/mdev-device.txt")"
grep -q "^create malformed UUID: Invalid argument" "$FACTS/mdev-device.txt" && pass "fact: malformed mdev UUID -> EINVAL" \
    || fail "malformed mdev create: $(grep 'malformed' "$FACTS/mdev-device.txt")"

# Inventory with parents and a live mdev.
if [ -x "$INV_BIN" ] && run_inventory "$SCENARIO_OUT/inventory-mdev.json"; then
    INV2=$SCENARIO_OUT/inventory-mdev.json
    got=$(jqv "$INV2" '.mdev_parents | keys[]' | sort | tr '\n' ' ')
    [ "$got" = "$parents" ] && pass "inventory mdev parents: $got" || fail "inventory mdev parents '$got', sysfs '$parents'"
    for p in /sys/class/mdev_bus/*; do
        for t in "$p"/mdev_supported_types/*; do
            desc=null; [ -e "$t/description" ] && desc=$(attr "$t/description")
            echo "${p##*/}/${t##*/} $(attr "$t/available_instances") $(attr "$t/device_api") name=$(attr "$t/name") desc=$desc"
        done
    done | sort > "$SCENARIO_OUT/mdev-types.sysfs"
    jq -r '.mdev_parents | to_entries[] | .key as $p | .value.types[]
           | "\($p)/\(.id) \(.available_instances) \(.device_api) name=\(.name) desc=\(.description)"' "$INV2" \
        | sort > "$SCENARIO_OUT/mdev-types.inventory"
    if diff -u "$SCENARIO_OUT/mdev-types.sysfs" "$SCENARIO_OUT/mdev-types.inventory" > "$SCENARIO_OUT/mdev-types.diff"; then
        pass "all $(wc -l < "$SCENARIO_OUT/mdev-types.sysfs") mdev types: available_instances, device_api, name, description match sysfs"
    else
        fail "mdev types differ (- sysfs, + inventory): $(grep '^[-+]m' "$SCENARIO_OUT/mdev-types.diff" | tr '\n' ';')"
    fi
    mgrp=$(basename "$(readlink "/sys/bus/mdev/devices/$UUID/iommu_group")")
    got=$(jqv "$INV2" ".mdevs[\"$UUID\"] | \"\(.parent) \(.type_id) \(.driver) \(.iommu_group)\"")
    [ "$got" = "mbochs mbochs-small mbochs $mgrp" ] && pass "inventory mdev $UUID: parent mbochs, type mbochs-small, group $mgrp" \
        || fail "inventory mdev: '$got', sysfs 'mbochs mbochs-small mbochs $mgrp'"
    got=$(jqv "$INV2" '.modules | "\(.vfio) \(.vfio_pci) \(.mdev)"')
    [ "$got" = "true true true" ] && pass "inventory modules: vfio, vfio_pci, mdev loaded" || fail "inventory modules: '$got'"
fi

# Pool exhaustion: mbochs' three types share one pool.
{
    L=/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-large
    echo "before: $(for t in /sys/class/mdev_bus/mbochs/mdev_supported_types/*; do printf '%s=%s ' "${t##*/}" "$(attr "$t/available_instances")"; done)"
    i=0
    while [ "$(attr "$L/available_instances")" -gt 0 ] && [ "$i" -lt 8 ]; do
        echo "create large #$i: $(write_errno "$L/create" "$(cat /proc/sys/kernel/random/uuid)")"; i=$((i + 1))
    done
    echo "after: $(for t in /sys/class/mdev_bus/mbochs/mdev_supported_types/*; do printf '%s=%s ' "${t##*/}" "$(attr "$t/available_instances")"; done)"
    echo "create one more large: $(write_errno "$L/create" "$(cat /proc/sys/kernel/random/uuid)")"
    echo "create one more small: $(write_errno "$T/create" "$(cat /proc/sys/kernel/random/uuid)")"
} > "$FACTS/mdev-exhaustion.txt" 2>&1
grep -q "^create one more large: No space left on device" "$FACTS/mdev-exhaustion.txt" \
    && pass "fact: exhausted mdev type -> ENOSPC" || fail "exhaustion: see facts/mdev-exhaustion.txt"

# Remove one mdev by hand, then unload the parent module with mdevs still alive.
echo "remove $UUID: $(write_errno "/sys/bus/mdev/devices/$UUID/remove" 1)" >> "$FACTS/mdev-device.txt"
[ ! -e "/sys/bus/mdev/devices/$UUID" ] && pass "mdev $UUID removed" || fail "mdev $UUID still present after remove"
left=$(ls /sys/bus/mdev/devices | wc -l)
if modprobe -r mbochs; then
    pass "modprobe -r mbochs with $left live mdevs succeeded; now $(ls /sys/bus/mdev/devices 2>/dev/null | wc -l) mdevs"
else
    fail "modprobe -r mbochs with live mdevs failed"
fi
echo "after modprobe -r mbochs: mdev_bus=$(ls /sys/class/mdev_bus 2>&1 | tr '\n' ' ') mdevs=$(ls /sys/bus/mdev/devices 2>&1 | tr '\n' ' ')" >> "$FACTS/mdev-device.txt"
monitor_stop mdev-kernel
monitor_stop mdev-udev
k=$SCENARIO_OUT/uevents-mdev-kernel-summary.txt
grep -q 'ACTION=change .*SUBSYSTEM=mbochs .*MDEV_STATE=registered' "$k" && grep -q 'ACTION=change .*SUBSYSTEM=mbochs .*MDEV_STATE=unregistered' "$k" \
    && pass "fact: parents announce MDEV_STATE=registered/unregistered" || fail "MDEV_STATE uevents: see uevents-mdev-kernel-summary.txt"
grep -E 'SUBSYSTEM=mdev' "$k" | grep -qE 'MDEV_TYPE|MODALIAS' \
    && fail "mdev uevents carry a type or modalias, unlike design.md §5 says" \
    || pass "fact: mdev uevents carry no MDEV_TYPE / MODALIAS"

dmesg > "$SCENARIO_OUT/dmesg.txt"
finish
