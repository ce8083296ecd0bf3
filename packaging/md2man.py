#!/usr/bin/env python3
"""Converts docs/policy.md into gpuvirt-policy(5), so the man page and the web reference are one text.

Usage: md2man.py docs/policy.md OUT.5

Handles the Markdown docs/policy.md uses: # / ## / ### headings, paragraphs, fenced code blocks,
pipe tables, "- " lists (nested by two spaces), `code`, **bold**, *emphasis* and [links](url).
Anything else is an error, so a construct added later cannot silently vanish from the page.
"""

import re
import sys

TITLE = "GPUVIRT-POLICY"
NAME_LINE = r"gpuvirt\-policy \- the device policy of gpuvirtd (/etc/gpuvirt/policy.toml)"

TRAILER = r""".SH FILES
.TP
.I /etc/gpuvirt/policy.toml
The policy gpuvirtd reads by default.
.TP
.I /usr/share/doc/gpuvirt/examples/policy.toml
An annotated example for the runbook's host.
.SH SEE ALSO
.BR gpuvirtd (8),
.BR gpuvirtctl (1),
.BR modprobe.d (5),
.BR mdevctl (8)
"""


def escape(text):
    """Escapes roff specials in plain text."""
    text = text.replace("\\", "\\e")
    # A hyphen in running text may be a minus sign or an option dash; \- keeps it copyable.
    text = text.replace("-", "\\-")
    return text


def inline(text):
    """Converts inline Markdown to roff font changes."""
    out = []
    pos = 0
    pattern = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*|\[([^\]]+)\]\(([^)]+)\)")
    for m in pattern.finditer(text):
        out.append(escape(text[pos:m.start()]))
        code, bold, emph, link_text, url = m.groups()
        if code is not None:
            out.append("\\fB" + escape(code) + "\\fR")
        elif bold is not None:
            out.append("\\fB" + escape(bold.replace("`", "")) + "\\fR")
        elif emph is not None:
            out.append("\\fI" + escape(emph) + "\\fR")
        else:
            # Relative links point into the source tree; the installed example is named in FILES.
            out.append(inline(link_text))
            if re.match(r"https?://", url):
                out.append(" <" + escape(url) + ">")
        pos = m.end()
    out.append(escape(text[pos:]))
    line = "".join(out)
    # A line starting with . or ' would be read as a request.
    if line.startswith((".", "'")):
        line = "\\&" + line
    return line


def split_row(line):
    # Split on pipes that are not escaped (\|) and not inside `code`.
    cells, cur, in_code, i = [], [], False, 0
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if c == "`":
            in_code = not in_code
        if c == "|" and not in_code:
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    cells.append("".join(cur).strip())
    return cells


def table(rows, out):
    """A table becomes one tagged paragraph per row: the first cell is the tag, the others
    follow as "header: value" (the last, the explanation, as plain text)."""
    header = split_row(rows[0])
    if not re.fullmatch(r"\|?[\s:|-]+\|?", rows[1].strip()):
        raise SystemExit(f"md2man: table without a separator line: {rows[0]!r}")
    for row in rows[2:]:
        cells = split_row(row)
        if len(cells) != len(header):
            raise SystemExit(f"md2man: row has {len(cells)} cells, header {len(header)}: {row!r}")
        out.append(".TP")
        out.append(inline(cells[0]))
        parts = []
        for name, cell in zip(header[1:-1], cells[1:-1]):
            parts.append(inline(f"{name}: ") + inline(cell) + ".")
        parts.append(inline(cells[-1]))
        out.append(" ".join(parts))


def convert(md):
    lines = md.splitlines()
    out = [".\\\" generated from docs/policy.md by packaging/md2man.py; do not edit",
           f'.TH {TITLE} 5 "" "gpuvirt" "File Formats Manual"',
           ".SH NAME", NAME_LINE]
    i = 0
    list_depth = 0
    saw_title = False

    def close_lists():
        nonlocal list_depth
        while list_depth > 1:
            out.append(".RE")
            list_depth -= 1
        list_depth = 0

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("```"):
            close_lists()
            i += 1
            out.append(".PP")
            out.append(".RS 4")
            out.append(".nf")
            while i < len(lines) and not lines[i].startswith("```"):
                code = lines[i].replace("\\", "\\e")
                out.append(("\\&" + code) if code.startswith((".", "'")) else code)
                i += 1
            if i == len(lines):
                raise SystemExit("md2man: unterminated code block")
            out.append(".fi")
            out.append(".RE")
            i += 1
            continue
        m = re.match(r"(#{1,3}) (.*)", line)
        if m:
            close_lists()
            level, text = len(m.group(1)), m.group(2)
            if level == 1:
                if saw_title:
                    raise SystemExit("md2man: a second # title")
                saw_title = True
                out.append(".SH DESCRIPTION")
            elif level == 2:
                # Upper-case the words, not the `code` (TOML keys are case-sensitive).
                parts = text.split("`")
                title = "".join(p if n % 2 else p.upper() for n, p in enumerate(parts))
                out.append(".SH " + escape(title))
            else:
                out.append(".SS " + inline(text))
            i += 1
            continue
        if line.lstrip().startswith("|"):
            close_lists()
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            table(rows, out)
            continue
        m = re.match(r"( *)- (.*)", line)
        if m:
            depth = len(m.group(1)) // 2 + 1
            if list_depth == 0:
                out.append(".PP")
            while list_depth < depth:
                if list_depth > 0:
                    out.append(".RS")
                list_depth += 1
            while list_depth > depth:
                out.append(".RE")
                list_depth -= 1
            text = [m.group(2)]
            i += 1
            # Continuation lines are indented deeper than the bullet.
            indent = len(m.group(1)) + 2
            while i < len(lines) and lines[i].startswith(" " * indent) and not re.match(r" *- ", lines[i]):
                text.append(lines[i].strip())
                i += 1
            out.append(".IP \\(bu 2")
            out.append(inline(" ".join(text)))
            continue
        if line.startswith((" ", "\t", ">", "<")) or re.match(r"\d+\. ", line):
            raise SystemExit(f"md2man: unsupported Markdown at line {i + 1}: {line!r}")
        close_lists()
        para = []
        while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,3} |```|\||- )", lines[i]):
            para.append(lines[i].strip())
            i += 1
        out.append(".PP")
        out.append(inline(" ".join(para)))
    close_lists()
    if not saw_title:
        raise SystemExit("md2man: no # title")
    return "\n".join(out) + "\n" + TRAILER


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: md2man.py INPUT.md OUTPUT.5")
    with open(sys.argv[1], encoding="utf-8") as f:
        roff = convert(f.read())
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(roff)


if __name__ == "__main__":
    main()
