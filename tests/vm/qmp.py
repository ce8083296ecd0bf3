#!/usr/bin/python3
"""Send one command to a running test VM's QMP socket and print the reply.

Usage: qmp.py SOCKET 'device_add bochs-display,id=hp1,bus=rp4'   (an HMP command line)
       qmp.py SOCKET '{"execute": "query-pci"}'                    (a raw QMP command)

An HMP line goes through QMP's human-monitor-command, so the scenario can use the familiar
monitor syntax while the host keeps one machine-readable socket. Exit status: 0 when QEMU
accepted the command (and, for HMP, printed nothing that starts with "Error"), 1 otherwise.
"""
import json
import socket
import sys


def read_reply(stream):
    """Skip asynchronous events; return the first reply ("return" or "error")."""
    for line in stream:
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            return msg
    raise ConnectionError("QMP socket closed before a reply")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, command = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    stream = sock.makefile("rw", encoding="utf-8")
    json.loads(stream.readline())  # the greeting
    stream.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
    stream.flush()
    read_reply(stream)
    if command.lstrip().startswith("{"):
        request = json.loads(command)
    else:
        request = {"execute": "human-monitor-command", "arguments": {"command-line": command}}
    stream.write(json.dumps(request) + "\n")
    stream.flush()
    reply = read_reply(stream)
    if "error" in reply:
        print("Error: " + reply["error"].get("desc", json.dumps(reply["error"])))
        return 1
    result = reply["return"]
    if isinstance(result, str):
        print(result, end="")
        return 1 if result.lstrip().startswith("Error") else 0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
