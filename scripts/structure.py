#!/usr/bin/env python3
"""Counts import circles between the files of each crate, and the largest source files.

    scripts/structure.py            report per crate: files, imports, circles, largest file
    scripts/structure.py --check    the same, and exit 1 if any crate has a circle or a file
                                    under crates/*/src is over the size limit (scripts/test.sh)
    scripts/structure.py --edges    also print every file -> file import
    scripts/structure.py --repo DIR another checkout (default: the one this script is in)

What counts as an import: a path naming another module of the same crate, in a `use` item or
inline in code (`crate::a::b`, `super::x`, `self::x`, `$crate::...` in a macro). A `mod x;`
declaration is not an import: it only says where a file sits. A name a module merely re-exports
(`pub use child::Name`) passes the arrow on to the file that defines it, so a parent that
re-exports its children and a child that uses a sibling's type through the parent are not a
circle; a child that uses an item the parent itself defines, while the parent uses the child, is.
The crate root (lib.rs, main.rs) counts like any other file.

Only the standard library: this runs on a fresh machine before anything is installed.
"""

import os
import re
import sys
from collections import defaultdict

LIMIT = 800  # lines per file under crates/*/src (issue 17)

ITEM_RE = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+|async\s+|const\s+|extern\s+\"C\"\s+)*"
    r"(?:fn|struct|enum|trait|type|const|static|union|macro_rules!)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)
MACRO_EXPORT_RE = re.compile(r"#\[macro_export\][^\n]*\n(?:\s*#\[[^\n]*\n)*\s*macro_rules!\s+(\w+)")
MOD_DECL_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_]\w*)\s*;", re.M)
INLINE_MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_]\w*)\s*\{")
PATH_RE = re.compile(r"(?<![\w:])(\$crate|crate|super|self)((?:::[A-Za-z_]\w*)+|::\{)")


def strip_comments_and_strings(text):
    """Blanks out comments and string/char literals, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Crate:
    def __init__(self, name, src):
        self.name, self.src = name, src
        self.files = {}  # module path tuple -> file path
        self.text = {}  # module path -> stripped text
        self.raw_lines = {}

    def module_of(self, rel, root_name):
        parts = rel[:-3].split(os.sep)
        if parts == [root_name]:
            return ()
        if parts[-1] == "mod":
            parts = parts[:-1]
        return tuple(parts)


def load_crate(crate_dir):
    src = os.path.join(crate_dir, "src")
    crates = []
    roots = []
    if os.path.exists(os.path.join(src, "lib.rs")):
        roots.append(("lib", None))
    if os.path.exists(os.path.join(src, "main.rs")):
        roots.append(("main", None))
    bindir = os.path.join(src, "bin")
    for root_name, _ in roots:
        c = Crate(f"{os.path.basename(crate_dir)}{'' if root_name == 'lib' else ' (bin)'}", src)
        collect(c, os.path.join(src, root_name + ".rs"), ())
        crates.append(c)
    if os.path.isdir(bindir):
        for f in sorted(os.listdir(bindir)):
            if f.endswith(".rs"):
                c = Crate(f"{os.path.basename(crate_dir)} (bin {f[:-3]})", src)
                collect(c, os.path.join(bindir, f), ())
                crates.append(c)
    return crates


def collect(crate, path, module):
    """Walks `mod x;` declarations from a root file, as rustc does (with #[path] honoured)."""
    if module in crate.files or not os.path.exists(path):
        return
    raw = open(path, encoding="utf-8").read()
    crate.files[module] = path
    crate.raw_lines[module] = raw.count("\n") + (0 if raw.endswith("\n") else 1)
    text = strip_comments_and_strings(raw)
    crate.text[module] = text
    base = os.path.dirname(path)
    stem = os.path.basename(path)[:-3]
    is_dir_owner = stem in ("mod", "lib", "main") or path.startswith(os.path.join(crate.src, "bin"))
    child_dir = base if is_dir_owner else os.path.join(base, stem)
    for m in re.finditer(r"(#\[path\s*=\s*\"([^\"]+)\"\]\s*)?^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_]\w*)\s*;", raw, re.M):
        name = m.group(3)
        if m.group(2):
            child = os.path.normpath(os.path.join(base, m.group(2)))
        else:
            child = os.path.join(child_dir, name + ".rs")
            if not os.path.exists(child):
                child = os.path.join(child_dir, name, "mod.rs")
        collect(crate, child, module + (name,))


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (each a list of segments)."""
    tree = tree.strip()
    out = []

    def rec(prefix, s):
        s = s.strip()
        if not s:
            return
        i = s.find("{")
        if i < 0:
            segs = [x for x in s.split(" as ")[0].strip().split("::") if x]
            out.append(prefix + segs)
            return
        head = [x for x in s[:i].strip().rstrip(":").split("::") if x]
        body = s[i + 1:s.rfind("}")]
        depth, start = 0, 0
        for j, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                rec(prefix + head, body[start:j])
                start = j + 1
        rec(prefix + head, body[start:])

    rec([], tree)
    return out


def references(text, children=()):
    """Yields (line_no, segments) for each crate-relative path in a file's code.

    A path may also start with the name of one of the file's own child modules (`boot::X` in
    plan.rs), which 2018-edition paths allow without `self::`.
    """
    lines = text.split("\n")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln) + 1)

    def line_of(pos):
        lo, hi = 0, len(offsets) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if offsets[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # `use` items, which may span lines and hold groups.
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for segs in expand_use_tree(m.group(1)):
            if segs and segs[0] in ("crate", "super", "self", "$crate"):
                yield line_of(m.start()), segs
            elif segs and segs[0] in children:
                yield line_of(m.start()), ["self"] + segs
    # Inline paths in code (outside `use` items, which were handled above).
    use_spans = [(m.start(), m.end()) for m in re.finditer(r"\buse\s+[^;]+;", text)]
    for m in PATH_RE.finditer(text):
        if any(a <= m.start() < b for a, b in use_spans):
            continue
        if m.group(2) == "::{":
            continue
        segs = [m.group(1)] + [s for s in m.group(2).split("::") if s]
        yield line_of(m.start()), segs
    if children:
        child_re = re.compile(r"(?<![\w:])(" + "|".join(map(re.escape, children)) + r")((?:::[A-Za-z_]\w*)+)")
        for m in child_re.finditer(text):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            segs = ["self", m.group(1)] + [s for s in m.group(2).split("::") if s]
            yield line_of(m.start()), segs


def inline_mod_depth(text):
    """Per line, how many inline `mod x { ... }` blocks enclose it."""
    depths = []
    stack = []  # brace depth at which each inline mod opened
    depth = 0
    for line in text.split("\n"):
        if INLINE_MOD_RE.match(line):
            stack.append(depth)
        depths.append(len(stack))
        for ch in line:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                while stack and depth <= stack[-1]:
                    stack.pop()
    return depths


def analyse(crate):
    def children_of(mod):
        return [m[-1] for m in crate.files if len(m) == len(mod) + 1 and m[:-1] == mod]

    defined = {}  # module -> set of item names defined in that file
    reexports = {}  # module -> {name: target module path segments} and globs
    for mod, text in crate.text.items():
        names = set(ITEM_RE.findall(text))
        defined[mod] = names
    for mod, text in crate.text.items():
        rx, globs = {}, []
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for segs in expand_use_tree(m.group(1)):
                if not segs:
                    continue
                if segs[0] not in ("crate", "super", "self", "$crate"):
                    if segs[0] in children_of(mod):
                        segs = ["self"] + segs
                    else:
                        continue  # another crate's item
                full = m.group(0)
                alias = None
                am = re.search(r"\b" + re.escape(segs[-1]) + r"\s+as\s+(\w+)", full)
                if am:
                    alias = am.group(1)
                if segs[-1] == "*":
                    globs.append(segs[:-1])
                else:
                    rx[alias or segs[-1]] = segs
        reexports[mod] = (rx, globs)

    def absolute(mod, segs, inline):
        """Crate-absolute segments for a path written in module `mod`."""
        head, rest = segs[0], segs[1:]
        if head in ("crate", "$crate"):
            return list(rest)
        base = list(mod)
        extra_inline = inline
        if head == "self":
            return base + rest if extra_inline == 0 else base + rest
        # super
        i = 0
        cur = base
        supers = 0
        while i < len(segs) and segs[i] == "super":
            supers += 1
            i += 1
        # Inside an inline mod, the first `super` climbs out of the inline block only.
        climb = max(0, supers - extra_inline)
        cur = base[: len(base) - climb] if climb <= len(base) else []
        return cur + segs[i:]

    def resolve(segs, seen=0):
        """The file (module) that defines what `segs` names, following re-exports."""
        if seen > 12:
            return None
        # Longest prefix that is a module file.
        best = ()
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in crate.files:
                best = tuple(segs[:k])
                break
        rest = segs[len(best):]
        if not rest:
            return best
        name = rest[0]
        if name in ("self", "super", "crate", "*"):
            return best
        if name in defined.get(best, ()):
            return best
        rx, globs = reexports.get(best, ({}, []))
        if name in rx:
            target = absolute(best, rx[name], 0)
            target = target[:-1] + [name] if rx[name][-1] != name else target
            # Re-export of `a::b::Name` (possibly aliased): follow to where Name lives.
            tgt = absolute(best, rx[name][:-1], 0) + [rx[name][-1]] + rest[1:]
            r = resolve(tgt, seen + 1)
            return r if r is not None else best
        for g in globs:
            gabs = tuple(absolute(best, g, 0))
            if gabs in crate.files:
                r = resolve(list(gabs) + rest, seen + 1)
                if r is not None and (r != gabs or name in defined.get(gabs, ())):
                    return r
        return best

    edges = defaultdict(lambda: defaultdict(set))  # from -> to -> names
    for mod, text in crate.text.items():
        depths = inline_mod_depth(text)
        for line_no, segs in references(text, children_of(mod)):
            inline = depths[line_no] if line_no < len(depths) else 0
            if segs[0] == "super" and inline > 0 and segs.count("super") <= inline:
                continue  # `super::` inside an inline test module: the file itself
            if segs[0] == "self" and len(segs) > 1 and segs[1] == "*":
                continue
            absegs = absolute(mod, segs, inline)
            target = resolve(absegs)
            if target is None or target == mod:
                continue
            # A file naming its own child module by path (`child::x`) is a real arrow.
            name = absegs[len(target)] if len(absegs) > len(target) else "(module)"
            edges[mod][target].add(name)
    return edges


def sccs(nodes, edges):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            strong(v)
    return out


def main():
    check = "--check" in sys.argv
    show_edges = "--edges" in sys.argv
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "--repo" in sys.argv:
        repo = os.path.abspath(sys.argv[sys.argv.index("--repo") + 1])
    crates_dir = os.path.join(repo, "crates")
    bad = []
    print(f"{'crate':<28} {'files':>5} {'imports':>7} {'circles':>7}  largest file")
    for name in sorted(os.listdir(crates_dir)):
        cdir = os.path.join(crates_dir, name)
        if not os.path.isdir(os.path.join(cdir, "src")):
            continue
        for crate in load_crate(cdir):
            edges = analyse(crate)
            circles = sccs(list(crate.files), edges)
            nimports = sum(len(t) for t in edges.values())
            largest = max(crate.files, key=lambda m: crate.raw_lines[m])
            rel = os.path.relpath(crate.files[largest], repo)
            print(f"{crate.name:<28} {len(crate.files):>5} {nimports:>7} {len(circles):>7}  {rel} ({crate.raw_lines[largest]})")
            def fname(m):
                return os.path.relpath(crate.files[m], cdir)
            for comp in circles:
                members = set(comp)
                print(f"    circle: {' '.join(fname(m) for m in comp)}")
                for a in comp:
                    for b, names in sorted(edges[a].items()):
                        if b in members:
                            print(f"      {fname(a)} -> {fname(b)}: {', '.join(sorted(names))}")
                bad.append(f"{crate.name}: circle {' '.join(fname(m) for m in comp)}")
            if show_edges:
                for a in sorted(edges):
                    for b, names in sorted(edges[a].items()):
                        print(f"    {fname(a)} -> {fname(b)}: {', '.join(sorted(names))}")
            for m, n in crate.raw_lines.items():
                if n > LIMIT:
                    bad.append(f"{os.path.relpath(crate.files[m], repo)}: {n} lines (limit {LIMIT})")
    if bad:
        print("\nproblems:")
        for b in sorted(set(bad)):
            print(f"  {b}")
    if check and bad:
        print(f"\nstructure check FAILED: {len(set(bad))} problem(s) above", file=sys.stderr)
        return 1
    if check:
        print("\nstructure check passed: no circles, no file over", LIMIT, "lines")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head`
        sys.exit(0)
