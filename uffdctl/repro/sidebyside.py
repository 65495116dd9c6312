"""A user's own ``uffdctl run`` script, side by side: the kernel, its emulator twin, emulator profiles.

``uffdctl repro FILE`` (and ``uffdctl run FILE --backend both``) run the same script on every target with
the interpreter of ``uffdctl run`` and print, per line, what each target answered — ``ok``, the errno of a
failed command, ``blocked`` for a touch left in a fault, ``FAIL`` for an expectation that did not hold,
``-`` for a line not reached — with, under ``--watch RANGE``, the ``pagemap --map`` symbol of that page after
the line.  Lines where the targets differ are marked ``*``.  Each target ends with a verdict:

* ``PASS`` — every line ran and every expectation held;
* ``FAIL`` — an expectation or a command failed (the line and the expected/actual are printed);
* ``UNSUPPORTED`` — the target cannot run a line: exit 4 (``not modelled: mremap (emulator)``, no huge
  pages, not root...) with the reason;
* ``ERROR`` — bad input (exit 2) or a broken run.

Exit code: 0 when the kernel and its twin agree and nothing FAILed or broke (UNSUPPORTED is not a failure),
1 otherwise, 2 for bad input.  The backend of every column is named in the header: the model is never
mistaken for the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ScriptError, UffdctlError, exit_code_of
from ..errors import to_wire as error_dict


@dataclass
class ScriptRun:
    target: object                     # runner.Target
    facts: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)      # line -> {"text", "cell", "detail", "state"}
    verdict: str = "ERROR"
    reason: str = ""
    exit: int = 1
    error: dict | None = None

    def to_dict(self) -> dict:
        return {"target": self.target.to_dict(), **self.facts, "verdict": self.verdict, "reason": self.reason,
                "exit": self.exit, "error": self.error,
                "steps": [dict(v, line=k) for k, v in sorted(self.steps.items())]}


@dataclass
class SideReport:
    file: str
    kernel: dict | None
    runs: list = field(default_factory=list)
    lines: list = field(default_factory=list)        # (lineno, text) in script order
    differing: list = field(default_factory=list)    # line numbers where the targets' cells differ

    @property
    def exit(self) -> int:
        if any(r.verdict in ("FAIL", "ERROR") for r in self.runs):
            return 1
        k = next((r for r in self.runs if r.target.backend == "kernel"), None)
        m = next((r for r in self.runs if r.target.mirror), None)
        if k is not None and m is not None and "UNSUPPORTED" not in (k.verdict, m.verdict) and \
                k.verdict != m.verdict:
            return 1
        return 0

    def to_dict(self) -> dict:
        return {"file": self.file, "kernel": self.kernel, "runs": [r.to_dict() for r in self.runs],
                "differing": self.differing, "exit": self.exit}


def _cell(entry: dict) -> tuple[str, str]:
    """(short cell, detail) for one logged line."""
    if entry.get("ok"):
        return "ok", ""
    if "repeat" in entry:
        return f"x{entry['repeat']}", ""
    if "iterations" in entry or "set" in entry:
        return "", ""
    err = entry.get("error")
    if err:
        return err.get("errno_name") or err.get("type") or "error", err.get("message", "")
    res = entry.get("result") or {}
    if res.get("blocked"):
        return "blocked", ""
    return "ok", ""


def _watch_symbol(st, watch: str) -> str | None:
    from ..session.commands import pagemap_entries, parse_range
    try:
        span = parse_range(st, watch)
    except UffdctlError:
        return None
    span.len = span.region.page_size
    try:
        return pagemap_entries(st, span)[0]["symbol"]
    except Exception:
        return None


def run_target(text: str, path: str, target, variables: dict | None, watch: str | None) -> ScriptRun:
    from ..script import Interpreter
    from ..session.state import SessionState
    from .runner import open_target
    run = ScriptRun(target)
    try:
        backend = open_target(target)
    except UffdctlError as e:
        run.verdict, run.reason, run.exit, run.error = "UNSUPPORTED", str(e), exit_code_of(e), error_dict(e)
        return run
    st = SessionState(backend, target.profile, name="side")
    it = Interpreter(st, None, variables)

    def on_record(entry):
        cell, detail = _cell(entry)
        if not cell and "iterations" not in entry:
            return
        rec = run.steps.setdefault(entry["line"], {"text": entry.get("text", ""), "cell": cell, "detail": detail})
        if "iterations" in entry:
            rec["cell"] = f"{rec['cell']} ok".strip()
            return
        if watch:
            rec["state"] = _watch_symbol(st, watch)
    it.on_record = on_record
    try:
        desc = backend.describe()
        run.facts = {"release": desc.get("release"), "profile": desc.get("profile"), "backend": backend.name,
                     "soft_dirty": bool(desc.get("soft_dirty"))}
        it.run(text)
        run.verdict, run.exit = "PASS", 0
    except ScriptError as e:
        run.error = e.to_dict()
        run.exit = e.exit_code
        run.reason = str(e)
        run.verdict = {4: "UNSUPPORTED", 2: "ERROR"}.get(e.exit_code, "FAIL")
        rec = run.steps.setdefault(e.lineno, {"text": e.line, "cell": "", "detail": ""})
        rec["cell"] = {"UNSUPPORTED": "unsup", "ERROR": "bad"}.get(run.verdict) or \
            (rec["cell"] if rec["cell"] not in ("", "ok") else "FAIL")
        if rec["cell"] == "FAIL" or run.verdict != "FAIL":
            rec["detail"] = e.message
        if watch:
            rec["state"] = _watch_symbol(st, watch)
    except UffdctlError as e:
        run.verdict = "UNSUPPORTED" if exit_code_of(e) == 4 else "ERROR"
        run.reason, run.exit, run.error = str(e), exit_code_of(e), error_dict(e)
    except Exception as e:   # a bug: shown, never a verdict about the kernel
        run.verdict, run.reason, run.exit = "ERROR", f"{type(e).__name__}: {e}", 1
    finally:
        try:
            st.close()
        except Exception:
            pass
    return run


def run(path: str, text: str, backend: str = "both", profiles: tuple = (), variables: dict | None = None,
        watch: str | None = None, soft_dirty: bool = True) -> SideReport:
    from ..script import parse_script
    from . import kernel_facts, targets_for
    # the script's structure is checked once, before any backend runs (exit 2, nothing done)
    lines = []

    def walk(block):
        for node in block:
            if node[0] == "repeat":
                lines.append((node[1], node[2]))
                walk(node[3])
                lines.append((None, "end"))
            else:
                lines.append(node)
    walk(parse_script(text))
    kernel = kernel_facts() if backend in ("kernel", "both") else None
    rep = SideReport(path, kernel, lines=lines)
    for t in targets_for(backend, profiles, kernel, soft_dirty):
        rep.runs.append(run_target(text, path, t, variables, watch))
    for ln, _ in lines:
        if ln is None:
            continue
        cells = [(r.steps.get(ln) or {}).get("cell", "-") for r in rep.runs]
        states = [(r.steps.get(ln) or {}).get("state") for r in rep.runs]
        if len(set(cells)) > 1 or (watch and len({s for s in states if s is not None}) > 1):
            rep.differing.append(ln)
    return rep


def _label(r: ScriptRun) -> str:
    return r.target.label + (" (twin)" if r.target.mirror else "")


def render(rep: SideReport, watch: str | None = None) -> str:
    out = [f"{rep.file}: side by side" + (f", watching {watch} (pagemap --map symbol after each line)"
                                          if watch else "")]
    k = rep.kernel or {}
    if k:
        out.append(f"kernel: {k.get('release')} " + ("(soft-dirty: " + str(k.get("soft_dirty_reason") or
                                                                            k.get("soft_dirty")) + ")"
                                                      if k.get("available") else f"unavailable: {k.get('reason')}"))
    cols = [_label(r) for r in rep.runs]
    w = max([12] + [len(c) for c in cols])
    text_w = min(56, max([10] + [len(t) for _, t in rep.lines]))
    out.append(f"{'line':>4}  {'':<{text_w}}  " + "  ".join(f"{c:<{w}}" for c in cols))
    for ln, t in rep.lines:
        shown = t if len(t) <= text_w else t[:text_w - 1] + "…"
        if ln is None:
            out.append(f"{'':>4}  {shown:<{text_w}}")
            continue
        cells = []
        for r in rep.runs:
            s = r.steps.get(ln) or {}
            c = s.get("cell", "-") or ""
            if watch and s.get("state"):
                c = f"{c} [{s['state']}]"
            cells.append(f"{c:<{w}}")
        mark = " *" if ln in rep.differing else ""
        out.append(f"{ln:>4}  {shown:<{text_w}}  " + "  ".join(cells) + mark)
    out.append("")
    for r in rep.runs:
        line = f"{_label(r):<{w}}  {r.verdict}"
        if r.reason:
            line += f": {r.reason}"
        out.append(line)
    if rep.differing:
        out.append(f"the targets differ on line(s) {', '.join(map(str, rep.differing))} (marked *)")
    return "\n".join(out)
