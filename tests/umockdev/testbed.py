#!/usr/bin/python3
"""umockdev testbed for gpuvirtd's udev tier: a small GPU host plus a line protocol that plays
the kernel (hotplug, bind/unbind, mdev create/remove), sending the uevents a real kernel sends.

Run it ONLY under the preload, because the uevent sender resolves devices through the
preloaded libudev (without it events are dropped silently):

    umockdev-wrapper /usr/bin/python3 tests/umockdev/testbed.py

Safety: every write goes to the testbed's own directory (an absolute /tmp/umockdev.XXXXXX
path), never to a /sys path, so even a broken preload cannot make this script touch the real
sysfs. It still refuses to start unless the preload is active, since its events would be lost.

Protocol: one command per stdin line, one reply per command (`OK ...` or `ERR message`).
Start-up prints `READY <testbed root> <marker name> <nonce>`; the marker file
`/sys/<marker name>` holds the nonce and exists only inside this testbed, so a process that
reads the nonce back through `/sys` is proven to see the testbed, not the real sysfs.

    add-gpu ADDR CLASS VENDOR DEVICE GROUP   hotplug a driverless PCI function (`add`)
    remove-gpu ADDR                          hot-unplug it (`unbind` if bound, `remove`)
    bind NAME DRIVER                         bind a PCI function or mdev: `bind` with DRIVER=
    unbind NAME                              `unbind`, no DRIVER (as the kernel sends it)
    mdev-add PARENT TYPE UUID GROUP          create an unbound mdev (`add`)
    mdev-remove UUID                         `unbind` if bound, then `remove`
    quit                                     remove the testbed and exit
"""

import gc
import os
import secrets
import shutil
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = "gpuvirt-umockdev-testbed"


class Refused(Exception):
    """A command that does not make sense for the testbed's current state."""


class Testbed:
    def __init__(self):
        self.tb = UMockdev.Testbed.new()
        self.root = self.tb.get_root_dir()
        self.sys = self.tb.get_sys_dir()
        self.nonce = secrets.token_hex(16)
        self._write(MARKER, self.nonce + "\n")
        # Proof that THIS process sees the testbed through /sys (the read goes through the
        # preload); only then is anything else set up.
        try:
            with open("/sys/" + MARKER) as f:
                seen = f.read().strip()
        except OSError as e:
            seen = "unreadable (%s)" % e
        if seen != self.nonce:
            self.close()
            raise SystemExit("testbed.py: /sys is not the testbed (marker reads %s); is the "
                             "umockdev preload active?" % seen)
        self.devices = {}  # name (PCI address or UUID) -> syspath
        self.load_host()

    # --- testbed files (absolute testbed paths only) ---

    def _path(self, rel):
        path = os.path.normpath(os.path.join(self.sys, rel))
        if not path.startswith(self.sys + os.sep):
            raise Refused("%s escapes the testbed" % rel)
        return path

    def _write(self, rel, text):
        path = self._path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def _symlink(self, rel, target):
        path = self._path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)

    def _unlink(self, rel):
        path = self._path(rel)
        if os.path.lexists(path):
            os.unlink(path)

    def _rmtree(self, rel):
        shutil.rmtree(self._path(rel), ignore_errors=True)

    # --- the host ---

    def load_host(self):
        """The fixed host (host.umockdev): boot VGA iGPU in group 0, an ISA bridge that is no
        GPU in group 2, NVIDIA V100 mdev parent (nvidia-300, 2 instances) in group 66."""
        self.tb.add_from_file(os.path.join(HERE, "host.umockdev"))
        for dev in ("/sys/devices/pci0000:00/0000:00:02.0",
                    "/sys/devices/pci0000:00/0000:00:1f.0",
                    "/sys/devices/pci0000:40/0000:40:01.0/0000:41:00.0"):
            self.devices[os.path.basename(dev)] = dev
        # Sysfs that is not a device: umockdev does not model it, so it is made by hand.
        self._group_member(0, "0000:00:02.0", "/devices/pci0000:00/0000:00:02.0")
        self._group_member(2, "0000:00:1f.0", "/devices/pci0000:00/0000:00:1f.0")
        self._group_member(66, "0000:41:00.0",
                           "/devices/pci0000:40/0000:40:01.0/0000:41:00.0")
        self._symlink("class/iommu/dmar0", "../../devices/virtual/iommu/dmar0")
        os.makedirs(self._path("devices/virtual/iommu/dmar0"), exist_ok=True)
        self._symlink("class/mdev_bus/0000:41:00.0",
                      "../../devices/pci0000:40/0000:40:01.0/0000:41:00.0")
        for module in ("vfio", "vfio_pci", "mdev"):
            os.makedirs(self._path("module/" + module), exist_ok=True)
        for driver in ("i915", "lpc_ich", "nvidia", "vfio-pci"):
            os.makedirs(self._path("bus/pci/drivers/" + driver), exist_ok=True)

    def _group_member(self, group, name, devpath):
        depth = 4  # kernel/iommu_groups/N/devices/<name> -> /sys
        self._symlink("kernel/iommu_groups/%d/devices/%s" % (group, name),
                      "../" * depth + devpath.lstrip("/"))
        self._write("kernel/iommu_groups/%d/type" % group, "DMA\n")

    def _rel(self, syspath):
        return os.path.relpath(syspath, "/sys")

    def _dev(self, name):
        try:
            return self.devices[name]
        except KeyError:
            raise Refused("no device %s in the testbed" % name) from None

    def _rewrite_uevent(self, syspath, drop_key):
        """umockdev can set a property but not unset one: rewrite the uevent file."""
        path = self._path(os.path.join(self._rel(syspath), "uevent"))
        with open(path) as f:
            lines = [line for line in f.read().splitlines()
                     if line and not line.startswith(drop_key + "=")]
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    # --- commands ---

    def add_gpu(self, addr, class_code, vendor, device, group):
        if addr in self.devices:
            raise Refused("%s already exists" % addr)
        bus = addr.split(":")[1]
        port = "0000:%s:01.0" % bus
        devpath = "/devices/pci0000:%s/%s/%s" % (bus, port, addr)
        # The group exists before the device is announced, as on a real kernel.
        self._group_member(int(group), addr, devpath)
        self.tb.add_from_string(
            "P: %s\nE: SUBSYSTEM=pci\nE: PCI_CLASS=%X\nE: PCI_ID=%s:%s\n"
            "E: PCI_SUBSYS_ID=%s:0000\nE: PCI_SLOT_NAME=%s\n"
            "E: MODALIAS=pci:v0000%sd0000%ssv0000%ssd00000000bc%02Xsc%02Xi%02X\n"
            "A: class=0x%06x\\n\nA: vendor=0x%s\\n\nA: device=0x%s\\n\n"
            "A: driver_override=(null)\\n\nA: boot_vga=0\\n\nA: numa_node=-1\\n\n"
            "L: iommu_group=../../../../kernel/iommu_groups/%s\n"
            % (devpath, int(class_code, 16), vendor.upper(), device.upper(), vendor.upper(),
               addr, vendor.upper(), device.upper(), vendor.upper(),
               int(class_code, 16) >> 16, (int(class_code, 16) >> 8) & 0xFF,
               int(class_code, 16) & 0xFF, int(class_code, 16), vendor.lower(),
               device.lower(), group))
        # add_from_string announced it (`add`) itself.
        self.devices[addr] = "/sys" + devpath

    def remove_gpu(self, addr):
        syspath = self._dev(addr)
        rel = self._rel(syspath)
        group = os.path.basename(os.readlink(self._path(rel + "/iommu_group")))
        # The kernel releases the driver (`unbind`) before it deletes the device (`remove`).
        if os.path.lexists(self._path(rel + "/driver")):
            self.unbind(addr)
        # Gone for readers first, while the device directory stays for the uevent sender
        # (which resolves the device); a reader racing the event must not see it any more.
        self._unlink("bus/pci/devices/" + addr)
        self._rmtree("kernel/iommu_groups/" + group)
        self.tb.uevent(syspath, "remove")
        self._rmtree(rel)
        del self.devices[addr]

    def _subsystem(self, rel):
        return os.path.basename(os.readlink(self._path(rel + "/subsystem")))

    def bind(self, name, driver):
        syspath = self._dev(name)
        rel = self._rel(syspath)
        if os.path.lexists(self._path(rel + "/driver")):
            raise Refused("%s is bound already" % name)
        subsystem = self._subsystem(rel)
        os.makedirs(self._path("bus/%s/drivers/%s" % (subsystem, driver)), exist_ok=True)
        # Link first, event last: a reader woken by the event sees the new state.
        self.tb.set_attribute_link(syspath, "driver", "../" * rel.count("/")
                                   + "bus/%s/drivers/%s" % (subsystem, driver))
        self.tb.set_property(syspath, "DRIVER", driver)
        self.tb.uevent(syspath, "bind")

    def unbind(self, name):
        syspath = self._dev(name)
        rel = self._rel(syspath)
        if not os.path.lexists(self._path(rel + "/driver")):
            raise Refused("%s is not bound" % name)
        self._unlink(rel + "/driver")
        self._rewrite_uevent(syspath, "DRIVER")
        self.tb.uevent(syspath, "unbind")

    def _available(self, parent_rel, type_id, delta):
        rel = "%s/mdev_supported_types/%s/available_instances" % (parent_rel, type_id)
        with open(self._path(rel)) as f:
            available = int(f.read().strip())
        if available + delta < 0:
            raise Refused("no instances of %s left" % type_id)
        self._write(rel, "%d\n" % (available + delta))

    def mdev_add(self, parent, type_id, uuid, group):
        if uuid in self.devices:
            raise Refused("%s already exists" % uuid)
        parent_path = self._dev(parent)
        parent_rel = self._rel(parent_path)
        if not os.path.isdir(self._path(parent_rel + "/mdev_supported_types/" + type_id)):
            raise Refused("%s offers no type %s" % (parent, type_id))
        self._available(parent_rel, type_id, -1)
        devpath = "/" + parent_rel + "/" + uuid
        up = "../" * devpath.count("/")  # from the device directory up to /sys
        self._group_member(int(group), uuid, devpath)
        # The kernel announces a new mdev unbound (`add`); its vendor driver binds it next.
        self.tb.add_from_string(
            "P: %s\nE: SUBSYSTEM=mdev\nE: MDEV_TYPE=%s\nA: remove=\n"
            "L: mdev_type=../mdev_supported_types/%s\n"
            "L: iommu_group=%skernel/iommu_groups/%s\n"
            % (devpath, type_id, type_id, up, group))
        # add_from_string announced it (`add`); the vendor driver's bind is `bind NAME DRIVER`.
        self.devices[uuid] = "/sys" + devpath

    def mdev_remove(self, uuid):
        syspath = self._dev(uuid)
        rel = self._rel(syspath)
        parent_rel = os.path.dirname(rel)
        type_id = os.path.basename(os.readlink(self._path(rel + "/mdev_type")))
        group = os.path.basename(os.readlink(self._path(rel + "/iommu_group")))
        if os.path.lexists(self._path(rel + "/driver")):
            self.unbind(uuid)
        # As for a GPU: gone for readers before `remove` is sent.
        self._unlink("bus/mdev/devices/" + uuid)
        self._unlink(rel + "/mdev_type")
        self._rmtree("kernel/iommu_groups/" + group)
        self._available(parent_rel, type_id, +1)
        self.tb.uevent(syspath, "remove")
        self._rmtree(rel)
        del self.devices[uuid]

    def close(self):
        root = self.root
        self.tb = None
        # Without an explicit collection the Testbed may never be finalised and its directory
        # would be left in /tmp.
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)


COMMANDS = {
    "add-gpu": (Testbed.add_gpu, 5),
    "remove-gpu": (Testbed.remove_gpu, 1),
    "bind": (Testbed.bind, 2),
    "unbind": (Testbed.unbind, 1),
    "mdev-add": (Testbed.mdev_add, 4),
    "mdev-remove": (Testbed.mdev_remove, 1),
}


def main():
    preload = os.environ.get("LD_PRELOAD", "")
    if "libumockdev-preload" not in preload:
        sys.exit("testbed.py: run me under umockdev-wrapper (LD_PRELOAD is %r)" % preload)
    tb = Testbed()
    try:
        print("READY %s %s %s" % (tb.root, MARKER, tb.nonce), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            try:
                func, arity = COMMANDS[words[0]]
            except KeyError:
                print("ERR unknown command %s" % words[0], flush=True)
                continue
            if len(words) - 1 != arity:
                print("ERR %s takes %d arguments" % (words[0], arity), flush=True)
                continue
            try:
                func(tb, *words[1:])
            except (Refused, OSError, ValueError, GLib.Error) as e:
                print("ERR %s" % e, flush=True)
            else:
                print("OK", flush=True)
    finally:
        tb.close()
    print("BYE", flush=True)


if __name__ == "__main__":
    main()
