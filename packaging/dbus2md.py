#!/usr/bin/env python3
"""Writes docs/dbus-api.md from the D-Bus contract, so the reference cannot drift from it.

Usage: dbus2md.py dbus/org.gpuvirt.GpuVirt1.xml crates/gpuvirt-api/src/lib.rs [ACTIONS.policy] > docs/dbus-api.md

Sources: the introspection XML (generated from the live daemon by gpuvirtd's contract test) for
interfaces, methods, signals and properties and their doc comments; gpuvirt-api's crate docs for
the object tree and its `Error` enum for the error names; the polkit actions file, when given, for
the action ids. `make check-docs` (run by tests/install/run.sh) fails when the output differs
from the committed file.
"""

import os
import re
import sys
import xml.etree.ElementTree as ET

BASIC = {
    "y": "byte", "b": "boolean", "n": "int16", "q": "uint16", "i": "int32", "u": "uint32",
    "x": "int64", "t": "uint64", "d": "double", "s": "string", "o": "object path",
    "g": "signature", "h": "file descriptor", "v": "variant",
}


def parse_type(sig, pos=0):
    """Returns (words, next position) for the single complete type at sig[pos]."""
    c = sig[pos]
    if c in BASIC:
        return BASIC[c], pos + 1
    if c == "a":
        if sig[pos + 1] == "{":
            key, p = parse_type(sig, pos + 2)
            value, p = parse_type(sig, p)
            if sig[p] != "}":
                raise ValueError(f"bad dict entry in {sig!r}")
            return f"dict of {key} → {value}", p + 1
        inner, p = parse_type(sig, pos + 1)
        return f"array of {inner}", p
    if c == "(":
        fields, p = [], pos + 1
        while sig[p] != ")":
            field, p = parse_type(sig, p)
            fields.append(field)
        return "struct (" + ", ".join(fields) + ")", p + 1
    raise ValueError(f"unknown type code {c!r} in {sig!r}")


def describe(sig):
    words, end = parse_type(sig)
    if end != len(sig):
        raise ValueError(f"trailing characters in {sig!r}")
    return words


def comment_before(parent, child):
    """The XML comment directly before `child` in `parent`, stripped, or ''."""
    previous = None
    for node in parent:
        if node is child:
            break
        previous = node
    if previous is not None and previous.tag is ET.Comment:
        return " ".join(line.strip() for line in previous.text.strip().splitlines())
    return ""


def object_tree(lib_rs, all_rs):
    """The object-tree table and the paragraphs after it from gpuvirt-api's crate docs."""
    docs = [line[4:] if line.startswith("//! ") else line[3:]
            for line in lib_rs.splitlines() if line.startswith("//!")]
    start = next((i for i, line in enumerate(docs) if line.startswith("|")), None)
    if start is None:
        raise SystemExit("dbus2md: no object-tree table in gpuvirt-api's crate docs")
    out = docs[start:]
    # [`FOO_INTERFACE`] links resolve in rustdoc only; spell the interface out here.
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', all_rs))

    def resolve(m):
        return "`" + consts.get(m.group(1), m.group(1)) + "`"

    return [re.sub(r"\[`(\w+)`\]", resolve, line) for line in out]


def errors(lib_rs):
    """(name, meaning) for each variant of gpuvirt-api's `Error`, except the transport one."""
    m = re.search(r'#\[zbus\(prefix = "([^"]+)"\)\]\s*pub enum Error \{(.*?)\n\}', lib_rs, re.S)
    if not m:
        raise SystemExit("dbus2md: no `pub enum Error` with a zbus prefix in gpuvirt-api")
    prefix, body = m.groups()
    out, doc = [], []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("///"):
            doc.append(line[3:].strip())
        elif line.startswith("#[zbus(error)]"):
            doc = ["skip"]
        else:
            v = re.match(r"(\w+)\(", line)
            if v:
                if doc != ["skip"]:
                    out.append((f"{prefix}.{v.group(1)}", " ".join(doc)))
                doc = []
    return out


def polkit_actions(path):
    root = ET.parse(path).getroot()
    return [(a.get("id"), a.findtext("description", "").strip()) for a in root.iter("action")]


def interface_section(iface):
    name = iface.get("name")
    out = [f"### `{name}`", ""]
    doc = comment_before(ROOT, iface)
    if doc:
        out += [doc, ""]
    methods = iface.findall("method")
    if methods:
        out += ["#### Methods", ""]
        for m in methods:
            ins = [a for a in m.findall("arg") if a.get("direction", "in") == "in"]
            outs = [a for a in m.findall("arg") if a.get("direction") == "out"]
            args = ", ".join(f"{a.get('type')} {a.get('name') or 'arg'}" for a in ins)
            ret = ", ".join(a.get("type") for a in outs)
            out.append(f"- **`{m.get('name')}({args})`**" + (f" → `{ret}`" if ret else ""))
            text = comment_before(iface, m)
            if text:
                out.append(f"  {text}")
            for a in ins:
                out.append(f"  - in `{a.get('name') or 'arg'}`: {describe(a.get('type'))}")
            for a in outs:
                label = a.get("name") or "result"
                out.append(f"  - out `{label}`: {describe(a.get('type'))}")
        out.append("")
    signals = iface.findall("signal")
    if signals:
        out += ["#### Signals", ""]
        for s in signals:
            args = ", ".join(f"{a.get('type')} {a.get('name') or 'arg'}" for a in s.findall("arg"))
            out.append(f"- **`{s.get('name')}({args})`**")
            text = comment_before(iface, s)
            if text:
                out.append(f"  {text}")
        out.append("")
    props = iface.findall("property")
    if props:
        out += ["#### Properties", "",
                "| property | signature | type | access |", "|---|---|---|---|"]
        for p in props:
            text = comment_before(iface, p)
            note = f" — {text}" if text else ""
            out.append(f"| `{p.get('name')}`{note} | `{p.get('type')}` | "
                       f"{describe(p.get('type'))} | {p.get('access')} |")
        out.append("")
    return out


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.split("\n\n")[1])
    global ROOT
    xml_path, lib_path = sys.argv[1], sys.argv[2]
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    with open(xml_path, encoding="utf-8") as f:
        xml_text = f.read()
    # "--" is not allowed inside an XML comment, and strict parsers (expat, gdbus-codegen) reject
    # the file; tolerate it here, and say so, rather than fail the whole reference.
    def fix_comment(m):
        body = m.group(1)
        if "--" in body:
            print(f"dbus2md: warning: {xml_path}: '--' inside an XML comment (not well-formed XML)",
                  file=sys.stderr)
        return "<!--" + body.replace("--", "- -") + "-->"

    xml_text = re.sub(r"<!--(.*?)-->", fix_comment, xml_text, flags=re.S)
    parser.feed(xml_text)
    ROOT = parser.close()
    with open(lib_path, encoding="utf-8") as f:
        lib_rs = f.read()
    # The crate docs (the object tree) are lib.rs's; the names and the Error enum live in its
    # sibling modules, which lib.rs re-exports.
    src_dir = os.path.dirname(lib_path)
    all_rs = lib_rs + "".join(
        open(os.path.join(src_dir, n), encoding="utf-8").read()
        for n in sorted(os.listdir(src_dir)) if n.endswith(".rs") and n != "lib.rs")
    bus = re.search(r'pub const BUS_NAME: &str = "([^"]+)";', all_rs).group(1)

    out = [
        "# D-Bus API reference",
        "",
        f"<!-- Generated by `make docs` (packaging/dbus2md.py) from `{xml_path}` and "
        f"`{lib_path}`. Do not edit by hand; tests/install/run.sh fails when it is stale. -->",
        "",
        f"gpuvirtd owns `{bus}` on the **system bus**. State is read-only properties; changes "
        "arrive only as the standard `org.freedesktop.DBus.Properties.PropertiesChanged` and "
        "`org.freedesktop.DBus.ObjectManager.InterfacesAdded`/`InterfacesRemoved` signals. "
        "Enumerations are lowercase strings, absent strings are empty and an absent object "
        "reference is `/`. Reads are open to every local user; see [security.md](security.md) for "
        "who may call what.",
        "",
        "```sh",
        f"busctl --system tree {bus}",
        f"busctl --system introspect {bus} /org/gpuvirt/GpuVirt1/Manager",
        "gpuvirtctl monitor    # the same signals, decoded",
        "```",
        "",
        "## Object tree",
        "",
    ]
    out += object_tree(lib_rs, all_rs)
    out += ["", "## Interfaces", ""]
    for iface in sorted(ROOT.findall("interface"), key=lambda i: i.get("name")):
        out += interface_section(iface)
    out += ["## Errors", "",
            "Error names are API: they are never renamed. Malformed arguments get "
            "`org.freedesktop.DBus.Error.InvalidArgs` (the message names the argument); refused "
            "authorization gets `org.freedesktop.DBus.Error.AccessDenied`.", "",
            "| error | meaning |", "|---|---|"]
    for name, meaning in errors(all_rs):
        out.append(f"| `{name}` | {meaning} |")
    out.append("")
    if len(sys.argv) == 4:
        out += ["## Authorization (polkit actions)", "",
                "Every mutating method asks polkit for one of these actions, with the caller's "
                "bus name as the subject; reads need none.", "",
                "| action | what it allows |", "|---|---|"]
        for action, description in polkit_actions(sys.argv[3]):
            out.append(f"| `{action}` | {description} |")
        out.append("")
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
