"""Human output of ``uffdctl repro``: per-step traces, side by side, and the verdict table.

State columns (see :mod:`uffdctl.repro.runner` for where each comes from)::

    P   present (pagemap bit 63)        SD  soft-dirty (bit 55; - where the kernel has none)
    W   PTE writable (emulator only)    U   uffd-wp (bit 57)
    D   PTE dirty (emulator only)       PD  smaps Private_Dirty of the VMA, KiB
    WR  PAGEMAP_SCAN PAGE_IS_WRITTEN    F   minor faults of this step's access (touch)
    ΣF  minor faults of all accesses    TLB TLB flushes during this step

``1`` set, ``.`` clear, ``-`` not observable on that backend.
"""
from __future__ import annotations

import textwrap

from . import Report
from .runner import COMPARED, CaseRun

COLS = (("P", "present", 1), ("W", "write", 1), ("D", "dirty", 1), ("SD", "soft_dirty", 2), ("U", "uffd_wp", 1),
        ("PD", "private_dirty", 3), ("WR", "written", 2), ("F", "fault", 2), ("ΣF", "faults", 2),
        ("TLB", "flushes", 3))
SHORT = {"REPRODUCED": "REPRODUCED", "NOT REPRODUCED": "NOT REPR.", "UNSUPPORTED": "UNSUPPORTED", "ERROR": "ERROR"}
LEGEND = ("P present  W writable  D dirty  SD soft-dirty  U uffd-wp  PD Private_Dirty KiB  WR PAGE_IS_WRITTEN  "
          "F faults of the step's access  ΣF faults so far  TLB flushes in the step;  1 set  . clear  - not observable")
STEP_W = 40


def _cell(key: str, v, width: int) -> str:
    if v is None:
        s = "-"
    elif key == "private_dirty":
        s = str(v >> 10)
    elif key in ("fault", "faults", "flushes"):
        s = str(v)
    else:
        s = "1" if v else "."
    return s.rjust(width)


def state_cells(state: dict) -> str:
    if not state:
        return "(not mapped)".ljust(_state_width())
    return " ".join(_cell(k, state.get(k), w) for _, k, w in COLS)


def _state_width() -> int:
    return sum(w for *_, w in COLS) + len(COLS) - 1


def state_header() -> str:
    return " ".join(h.rjust(w) for h, _, w in COLS)


def target_label(r: CaseRun) -> str:
    if r.target.backend == "kernel":
        rel = r.facts.get("release") or "?"
        return f"kernel {rel.split('-')[0]}"
    return r.target.label


def trace(runs: list[CaseRun]) -> str:
    """The steps of one case on one or more targets, side by side; ``≠`` marks a step where they differ."""
    if not runs:
        return ""
    w = _state_width()
    head1 = " " * (6 + STEP_W) + "   ".join(target_label(r).ljust(w) for r in runs)
    head2 = " " * (6 + STEP_W) + "   ".join(state_header().ljust(w) for _ in runs)
    lines = [head1.rstrip(), head2.rstrip()]
    n = max(len(r.steps) for r in runs)
    for i in range(n):
        first = next(r.steps[i] for r in runs if i < len(r.steps))
        text = first["text"] if len(first["text"]) <= STEP_W - 2 else first["text"][:STEP_W - 5] + "..."
        cells, states, errs = [], [], []
        for r in runs:
            s = r.steps[i] if i < len(r.steps) else None
            cells.append(state_cells(s["state"]) if s else "(not run)".ljust(w))
            states.append(s["state"] if s else None)
            if s and s.get("error"):
                errs.append(f"{target_label(r)}: {s['error']}")
        mark = ""
        if len(runs) > 1:
            differ = [k for k in _differing(states) if not (k == "fault" and first.get("aside"))]
            if differ:
                mark = "  ≠ " + ",".join(differ)
        lines.append(f"{first['line']:>4}  {text.ljust(STEP_W)}" + "   ".join(c.ljust(w) for c in cells).rstrip()
                     + mark)
        for e in errs:
            lines.append(" " * 6 + "! " + e)
    return "\n".join(lines)


def _differing(states: list) -> list[str]:
    if any(s is None for s in states):
        return ["not run"]
    out = []
    for k in COMPARED:
        vals = {s.get(k) for s in states if s.get(k) is not None}
        if len(vals) > 1 and all(s.get(k) is not None for s in states):
            out.append(k)
    return out


def verdict_line(r: CaseRun, with_state: bool) -> str:
    exp = r.expected
    if r.environment:
        tail = "not judged (this machine cannot observe it)"
    elif exp is None:
        tail = "no expectation for this kernel/profile"
    else:
        tail = f"expected {exp.verdict}" + ("  ok" if r.match else "  ✗ CONTRADICTS THE EXPECTATION")
    line = f"    {target_label(r):<20} {r.verdict:<15} {tail}"
    more = []
    if r.reason:
        more.append(r.reason)
    if with_state and r.observed:
        more.append("final: " + " ".join(f"{h}={_cell(k, r.observed.get(k), 1).strip()}" for h, k, _ in COLS))
    if exp is not None:
        more.append(f"source: {exp.source}")
    for m in more:
        line += "\n" + textwrap.fill(m, 118, initial_indent=" " * 25, subsequent_indent=" " * 27)
    return line


def scenario_head(sc) -> str:
    return "\n".join([
        f"== {sc.name}: {sc.title}",
        textwrap.fill(sc.thread, 118, initial_indent="   thread: ", subsequent_indent=" " * 11),
        textwrap.fill(sc.spec, 118, initial_indent="   cites:  ", subsequent_indent=" " * 11),
        textwrap.fill(sc.reproduced, 118, initial_indent="   REPRODUCED means: ", subsequent_indent=" " * 11),
    ])


def case_block(sc, case, runs: list[CaseRun], verbose: bool) -> str:
    out = [f"-- {sc.name}/{case.id}: {case.title}",
           f"   watch {sc.watch}; REPRODUCED when {case.symptom}"
           + (f" (without soft-dirty: {case.fallback['symptom']})" if case.fallback else "")]
    shown = [r for r in runs if r.target.backend == "kernel" or r.target.mirror]
    if verbose:
        shown = runs
    elif not shown and runs:
        shown = runs[:1]
    for i in range(0, len(shown), 2):
        out.append(trace(shown[i:i + 2]))
    out.append("   verdicts:")
    out += [verdict_line(r, r not in shown) for r in runs]
    return "\n".join(out)


def table(rep: Report) -> str:
    """scenario/case × kernel/profile."""
    cols = []
    for r in rep.runs:
        lab = target_label(r)
        if lab not in cols:
            cols.append(lab)
    rows: dict[str, dict] = {}
    for r in rep.runs:
        cell = SHORT.get(r.verdict, r.verdict) + (" ✗" if r.match is False else "")
        rows.setdefault(r.name, {})[target_label(r)] = cell
    w0 = max([len("scenario/case")] + [len(n) for n in rows]) + 2
    ws = [max(len(c), 13) + 2 for c in cols]
    lines = ["verdicts (scenario/case × kernel/profile):",
             ("scenario/case".ljust(w0) + "".join(c.ljust(w) for c, w in zip(cols, ws))).rstrip()]
    for name, cells in rows.items():
        lines.append(name.ljust(w0) + "".join(cells.get(c, "·").ljust(w) for c, w in zip(cols, ws)).rstrip())
    lines.append("· not run on that profile (the scenario does not apply); ✗ the verdict contradicts the "
                 "expectation")
    return "\n".join(lines)


def summary(rep: Report) -> str:
    out = []
    k = rep.kernel or {}
    if k:
        out.append(f"kernel {k.get('release')}: soft-dirty "
                   + ("on" if k.get("soft_dirty") else f"off ({k.get('soft_dirty_reason') or k.get('reason')})"))
    if rep.divergences:
        out.append(f"kernel and emulator DIFFER in {len(rep.divergences)} case(s):")
        for d in rep.divergences:
            steps = "; ".join(f"line {s['line']} {s['text']}: "
                              + ", ".join(f"{f} {a}≠{b}" for f, (a, b) in s["differs"].items())
                              for s in d["steps"])
            out.append(f"  {d['scenario']}: kernel {d['kernel']}, emu {d['profile']} {d['emulator']}"
                       + (f" — {steps}" if steps else ""))
    elif any(t.mirror for t in rep.targets):
        prof = next(t for t in rep.targets if t.mirror)
        out.append(f"kernel and emulator ({prof.label}) agree on every step of every case")
    fails = rep.failures
    if fails:
        out.append(f"{len(fails)} run(s) contradict their expectation or broke:")
        out += [f"  {r.name} @{target_label(r)}: {r.verdict}"
                + (f", expected {r.expected.verdict}" if r.expected else "") + (f" ({r.reason})" if r.reason else "")
                for r in fails]
    else:
        out.append(f"all {len(rep.runs)} runs match their expectations")
    return "\n".join(out)


def report(rep: Report, scenarios, verbose: bool = False) -> str:
    parts = [LEGEND, ""]
    by_case: dict[tuple, list] = {}
    for r in rep.runs:
        by_case.setdefault((r.scenario, r.case), []).append(r)
    for sc in scenarios:
        blocks = [case_block(sc, c, by_case[(sc.name, c.id)], verbose) for c in sc.cases
                  if (sc.name, c.id) in by_case]
        if blocks:
            parts += [scenario_head(sc), ""] + [b + "\n" for b in blocks]
    parts += [table(rep), "", summary(rep)]
    return "\n".join(parts)
