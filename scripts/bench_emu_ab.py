#!/usr/bin/env python3
"""Two emulators side by side: scripts/bench_emu.py's ranged, 1 TiB sparse and MISSING round-trip rows for tree A and tree B,
interleaved (each round one fresh process per tree, the order alternating), so that a loaded machine
slows both alike; prints each round, the medians and the median of the per-round B/A ratios.

    python scripts/bench_emu_ab.py A_DIR [B_DIR] [--rounds 7] [--rows ranged,sparse,round_trip] [--json]

A tree is a directory holding a ``uffdctl/`` package (the emulator needs no built extension), e.g. an old
revision unpacked with ``git archive REV uffdctl | tar -x -C /tmp/old``; B defaults to this checkout.  Each
process reports, per row, the best of ``--reps`` runs of this checkout's bench_emu.py functions (CPU time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# row -> (bench_emu source of the value, higher is better)
ROWS = {"copy": ("ranged", True), "zeropage_anon": ("ranged", True), "writeprotect": ("ranged", True),
        "unprotect": ("ranged", True), "pagemap_scan": ("sparse", False), "sparse_writeprotect": ("sparse", False),
        "dontneed": ("sparse", False), "missing_round_trips": ("round_trip", True),
        "missing_round_trips_src_populated": ("round_trip", True)}

CHILD = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import bench_emu as B
reps, pages, groups = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
out = {}
if "ranged" in groups:
    ranged = [B.ranged(pages) for _ in range(reps)]
    out.update({k: max(r[k] for r in ranged) for k in ("copy", "zeropage_anon", "writeprotect", "unprotect")})
if "sparse" in groups:
    sparse = [B.sparse_tib(B.cpu) for _ in range(reps)]
    out.update(pagemap_scan=min(s["pagemap_scan"] for s in sparse),
               sparse_writeprotect=min(s["writeprotect"] for s in sparse), dontneed=min(s["dontneed"] for s in sparse))
if "round_trip" in groups:          # the MISSING round trips through fault_handler (bench_emu.py's pages // 2)
    rt = B.round_trips(pages // 2, reps, pick=max)
    out.update({k: v for k, v in rt.items() if not k.endswith("_runs")})
import uffdctl, os
out["tree"] = os.path.dirname(os.path.dirname(os.path.abspath(uffdctl.__file__)))
print(json.dumps(out))
'''


def run(tree: str, reps: int, pages: int, groups: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    p = subprocess.run([sys.executable, "-c", CHILD, HERE, str(reps), str(pages), ",".join(groups)], env=env, cwd="/",
                       capture_output=True, text=True, timeout=1800)
    if p.returncode:
        sys.exit(f"bench_emu_ab: {tree}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    out = json.loads(p.stdout)
    if os.path.realpath(out.pop("tree")) != os.path.realpath(tree):
        sys.exit(f"bench_emu_ab: {tree} has no uffdctl/ of its own (the process imported another)")
    return out


def fmt(k: str, v: float) -> str:
    return f"{v:,.0f}/s" if ROWS[k][1] else f"{v * 1e3:.2f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="tree A (a directory with uffdctl/)")
    ap.add_argument("b", nargs="?", default=os.path.dirname(HERE), help="tree B (default: this checkout)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="runs per row in each process; the best is kept")
    ap.add_argument("--pages", type=int, default=16384, help="pages per ranged op (bench_emu.py's default)")
    groups = sorted({g for g, _ in ROWS.values()})
    ap.add_argument("--rows", default=",".join(groups),
                    help=f"which rows, a comma-separated list of {', '.join(groups)} (default: all)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    for t in (a.a, a.b):
        if not os.path.isdir(os.path.join(t, "uffdctl")):
            ap.error(f"{t}: no uffdctl/ package there")
    want = [g for g in a.rows.split(",") if g]
    if not want or set(want) - set(groups):
        ap.error(f"--rows: {a.rows!r}: choose from {', '.join(groups)}")
    rows = [k for k, (g, _) in ROWS.items() if g in want]
    res = {"A": [], "B": []}
    load0 = os.getloadavg()
    for i in range(a.rounds):
        for side in (("A", "B") if i % 2 == 0 else ("B", "A")):
            res[side].append(run(a.a if side == "A" else a.b, a.reps, a.pages, want))
        if not a.json:
            print(f"round {i + 1}/{a.rounds} (load {os.getloadavg()[0]:.1f}): " + "  ".join(
                f"{k} {fmt(k, res['A'][-1][k])} -> {fmt(k, res['B'][-1][k])}"
                for k in ("copy", "pagemap_scan", "missing_round_trips") if k in rows), flush=True)
    summary = {}
    for k in rows:
        higher = ROWS[k][1]
        ma, mb = (statistics.median(x[k] for x in res[s]) for s in ("A", "B"))
        ratio = statistics.median((y[k] / x[k]) if higher else (x[k] / y[k]) for x, y in zip(res["A"], res["B"]))
        summary[k] = {"A": ma, "B": mb, "speedup": ratio}
    load1 = os.getloadavg()
    if a.json:
        json.dump({"a": a.a, "b": a.b, "rounds": res, "summary": summary, "loadavg": [load0, load1]}, sys.stdout,
                  indent=2)
        print()
        return 0
    print(f"A = {a.a}\nB = {a.b}\n{a.rounds} rounds interleaved, best of {a.reps} per process, CPU time; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    w = max(22, *map(len, summary))
    print(f"  {'row':{w}s} {'A median':>14s} {'B median':>14s}  speed-up B/A (median of rounds)")
    for k, s in summary.items():
        print(f"  {k:{w}s} {fmt(k, s['A']):>14s} {fmt(k, s['B']):>14s}  {s['speedup']:.2f}x")
    if "round_trip" in want:           # counted, not timed: the same in every round
        for side in ("A", "B"):
            c, p = res[side][0]["cost"], res[side][0]["cost_src_populated"]
            print(f"  round trip's Python cost per fault, {side}: {c['calls_per_fault']:.0f} calls / "
                  f"{c['lines_per_fault']:.0f} lines (src populated: {p['calls_per_fault']:.0f} / "
                  f"{p['lines_per_fault']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
