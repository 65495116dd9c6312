"""The package's imports keep the layer order the README's layer table writes down.

Every import of every module of uffdctl/ is read from the source (the AST: module-level and
function-level imports alike, so an import kept lazy does not hide an edge).  The test fails on
any circle, on any import against the README's order, and on any module the table does not place.

    python tests/test_layers.py        prints the graph by layer, then any circle or violation (exit 1 if any)
"""
from __future__ import annotations

import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "uffdctl"


def modules(root: str = ROOT) -> dict[str, str]:
    """module name -> source path, for every .py under uffdctl/ (a package is its __init__)."""
    out = {}
    base = os.path.join(root, PKG)
    for d, dirs, files in os.walk(base):
        dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__"))]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(d, f)
    return out


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
    """The uffdctl modules ``name`` imports anywhere in its source."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PKG:
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            if len(subs) < len(node.names) or node.module:
                out.add(target)          # a name defined in the module (or package) itself
            out.update(subs)
    # importing a submodule runs its packages' __init__ first; an edge to the own package is not one
    return {t for t in out if t in known and t != name and not name.startswith(t + ".")}


def graph(root: str = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


_ROW = re.compile(r"^\|\s*(\d+)([a-z]?)\s*\|(.*?)\|")


def readme_layers(root: str = ROOT) -> list[tuple[int, str, list[str]]]:
    """(number, sibling letter, module patterns) for each row of the README's layer table."""
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            pats = re.findall(r"`(uffdctl(?:\.[\w.*]+)?)`", m.group(3))
            rows.append((int(m.group(1)), m.group(2), pats))
    return rows


def layer_of(mod: str, rows) -> tuple[int, str] | None:
    best = None
    for num, letter, pats in rows:
        for p in pats:
            if p.endswith(".*"):
                stem = p[:-2]
                hit = mod == stem or mod.startswith(stem + ".")
                score = len(stem)
            else:
                hit, score = mod == p, len(p) + 1000      # an exact name beats a package pattern
            if hit and (best is None or score > best[0]):
                best = (score, (num, letter))
    return best[1] if best else None


def allowed(src: tuple[int, str], dst: tuple[int, str]) -> bool:
    """Downwards always; within a layer only inside the same sibling (same letter)."""
    return dst[0] < src[0] or dst == src


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def violations(g, rows) -> tuple[list[str], list[str]]:
    """(modules the table does not place, imports against the order)."""
    unplaced = sorted(m for m in g if layer_of(m, rows) is None)
    bad = []
    for m in sorted(g):
        lm = layer_of(m, rows)
        for t in sorted(g[m]):
            lt = layer_of(t, rows)
            if lm and lt and not allowed(lm, lt):
                bad.append(f"{m} (layer {lm[0]}{lm[1]}) imports {t} (layer {lt[0]}{lt[1]})")
    return unplaced, bad


# -- the tests --------------------------------------------------------------------------------
def test_readme_has_a_layer_table():
    rows = readme_layers()
    assert len(rows) >= 8 and all(pats for _, _, pats in rows), rows


def test_no_import_circle():
    assert circles(graph()) == []


def test_imports_follow_the_readme_layers():
    unplaced, bad = violations(graph(), readme_layers())
    assert unplaced == [], f"modules the README's layer table does not place: {unplaced}"
    assert bad == [], "\n".join(bad)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function is an edge, and a circle and an upward import
    through it are reported (so the tests above cannot pass by not looking)."""
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from .sub import high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "high.py").write_text("from .. import low\n")
    (tmp_path / "README.md").write_text("## Layout\n\n| layer | modules |\n|---|---|\n"
                                        "| 1 | `uffdctl.low` |\n| 2 | `uffdctl.sub.*` |\n| 3 | `uffdctl` |\n")
    g = graph(str(tmp_path))
    # importing uffdctl.sub.high runs uffdctl/sub/__init__.py first: both are edges
    assert g["uffdctl.low"] == {"uffdctl.sub", "uffdctl.sub.high"} and g["uffdctl.sub.high"] == {"uffdctl.low"}
    assert circles(g) == [["uffdctl.low", "uffdctl.sub.high"]]
    unplaced, bad = violations(g, readme_layers(str(tmp_path)))
    assert unplaced == [] and bad == ["uffdctl.low (layer 1) imports uffdctl.sub (layer 2)",
                                      "uffdctl.low (layer 1) imports uffdctl.sub.high (layer 2)"]


def test_siblings_do_not_import_each_other():
    assert allowed((5, "a"), (4, "")) and allowed((5, "a"), (5, "a"))
    assert not allowed((5, "a"), (5, "b")) and not allowed((4, ""), (5, "a"))


# -- the backend interface's promise: callers cannot tell which backend they have -------------------
OPENER = "uffdctl.registry"
EMULATOR_ATTRS = {"mm", "ptes", "pgtables", "vmas", "tlb", "_runq", "_pump", "_wake"}


def reaches_into_a_backend(root: str = ROOT) -> list[str]:
    """Outside uffdctl/emu/ and the opener: a test of a backend's name against "emu"/"kernel", an import of
    the emulator, or a read of one of its attributes (``b.mm``, ``b.mm.ptes``, ...)."""
    out = []
    for mod, path in sorted(modules(root).items()):
        if mod == OPENER or mod == "uffdctl.emu" or mod.startswith("uffdctl.emu."):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            where = f"{mod}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                named = any(isinstance(x, ast.Attribute) and x.attr == "name" for x in sides)
                if named and any(isinstance(x, ast.Constant) and x.value in ("emu", "kernel") for x in sides):
                    out.append(f"{where}: compares a backend's name")
            elif isinstance(node, ast.Attribute) and node.attr in EMULATOR_ATTRS:
                out.append(f"{where}: reads .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "emu" and node.level:
                out.append(f"{where}: imports the emulator")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uffdctl.emu"):
                out.append(f"{where}: imports the emulator")
    return out


def test_no_caller_tells_the_backends_apart():
    assert reaches_into_a_backend() == []


def main() -> int:
    g, rows = graph(), readme_layers()
    by_layer: dict = {}
    for m in g:
        by_layer.setdefault(layer_of(m, rows), []).append(m)
    for lay in sorted(by_layer, key=lambda x: (x is None, x or (0, ""))):
        label = "unplaced" if lay is None else f"layer {lay[0]}{lay[1]}"
        for m in sorted(by_layer[lay]):
            print(f"{label:10s} {m:28s} -> {', '.join(sorted(g[m])) or '-'}")
    cs = circles(g)
    unplaced, bad = violations(g, rows)
    for c in cs:
        print("circle:", " ".join(c))
    for b in bad:
        print("against the order:", b)
    print(f"modules={len(g)} edges={sum(map(len, g.values()))} circles={len(cs)} "
          f"modules_in_circles={sum(map(len, cs))} unplaced={len(unplaced)} against_order={len(bad)}")
    return 1 if cs or unplaced or bad else 0


if __name__ == "__main__":
    sys.exit(main())
