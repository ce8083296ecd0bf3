#!/usr/bin/python3
"""QMP reads of an L2 QEMU started inside the test VM (scenario qemu-l2), printed as JSON for jq.

Usage: l2qmp.py SOCKET devices          every -device of the command line: QOM path, id, type,
                                         parent_bus, addr ("SS.F"), multifunction, host, sysfsdev,
                                         display, x-vga, rombar, realized (null where the type has
                                         no such property)
       l2qmp.py SOCKET consoles         every QemuConsole: QOM path, the device it shows, head
       l2qmp.py SOCKET pci              query-pci flattened: one entry per function with bus,
                                         slot, function, vendor, device, class, qdev_id, and for
                                         bridges secondary/subordinate
       l2qmp.py SOCKET firmware-buses SECONDS
                                         cont, wait until the firmware has numbered every bridge
                                         (secondary != 0), stop; prints the wait in seconds.
                                         Paused at -S no bridge has a bus number yet, so
                                         query-pci cannot show what sits behind a root port.
       l2qmp.py SOCKET run 'JSON'       one raw command; its "return" (or exit 1 with the error)
"""
import json
import socket
import sys
import time

DEVICE_PROPS = ("parent_bus", "addr", "multifunction", "host", "sysfsdev", "display", "x-vga",
                "rombar", "realized", "chassis")


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rw", encoding="utf-8")
        json.loads(self.stream.readline())  # the greeting
        self.call("qmp_capabilities")

    def call(self, execute, **arguments):
        """The command's "return"; raises RuntimeError with QEMU's message on an error reply."""
        request = {"execute": execute}
        if arguments:
            request["arguments"] = arguments
        return self.raw(request)

    def raw(self, request):
        self.stream.write(json.dumps(request) + "\n")
        self.stream.flush()
        for line in self.stream:
            msg = json.loads(line)
            if "error" in msg:
                raise RuntimeError(msg["error"].get("desc", json.dumps(msg["error"])))
            if "return" in msg:
                return msg["return"]
        raise ConnectionError("QMP socket closed before a reply")

    def prop(self, path, name):
        try:
            return self.call("qom-get", path=path, property=name)
        except RuntimeError:
            return None


def addr_text(devfn):
    """QOM's addr is the devfn (slot << 3 | function), -1 when QEMU chose none yet."""
    if not isinstance(devfn, int) or devfn < 0:
        return None
    return "%02x.%x" % (devfn >> 3, devfn & 7)


def devices(qmp):
    out = []
    for container in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in qmp.call("qom-list", path=container):
            if not child["type"].startswith("child<"):
                continue
            path = container + "/" + child["name"]
            entry = {"path": path, "type": child["type"][6:-1],
                     "id": child["name"] if container == "/machine/peripheral" else ""}
            for name in DEVICE_PROPS:
                entry[name] = qmp.prop(path, name)
            entry["addr"] = addr_text(entry["addr"])
            out.append(entry)
    return out


def consoles(qmp):
    out = []
    try:
        children = qmp.call("qom-list", path="/backend")
    except RuntimeError:  # QEMU makes /backend with its first console
        return out
    for child in children:
        if child["type"] != "child<qemu-console>":
            continue
        path = "/backend/" + child["name"]
        out.append({"path": path, "device": qmp.prop(path, "device"), "head": qmp.prop(path, "head")})
    return out


def flatten(devs, out):
    for d in devs:
        bridge = d.get("pci_bridge")
        entry = {"bus": d["bus"], "slot": d["slot"], "function": d["function"],
                 "vendor": "%04x" % d["id"]["vendor"], "device": "%04x" % d["id"]["device"],
                 "class": "%04x" % d["class_info"]["class"], "qdev_id": d.get("qdev_id", "")}
        if bridge:
            entry["secondary"] = bridge["bus"]["secondary"]
            entry["subordinate"] = bridge["bus"]["subordinate"]
        out.append(entry)
        if bridge:
            flatten(bridge.get("devices", []), out)
    return out


def pci(qmp):
    out = []
    for bus in qmp.call("query-pci"):
        flatten(bus["devices"], out)
    return out


def firmware_buses(qmp, seconds):
    t0 = time.monotonic()
    qmp.call("cont")
    try:
        while time.monotonic() - t0 < seconds:
            bridges = [e for e in pci(qmp) if "secondary" in e]
            if bridges and all(e["secondary"] != 0 for e in bridges):
                return round(time.monotonic() - t0, 1)
            time.sleep(0.5)
        raise TimeoutError("the firmware numbered no bridge in %s s" % seconds)
    finally:
        qmp.call("stop")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    qmp = Qmp(sys.argv[1])
    what = sys.argv[2]
    try:
        if what == "devices":
            result = devices(qmp)
        elif what == "consoles":
            result = consoles(qmp)
        elif what == "pci":
            result = pci(qmp)
        elif what == "firmware-buses":
            result = firmware_buses(qmp, float(sys.argv[3]))
        elif what == "run":
            result = qmp.raw(json.loads(sys.argv[3]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (RuntimeError, TimeoutError) as e:
        print("Error: %s" % e)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
