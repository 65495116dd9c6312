"""Run a scenario case on one target (the kernel, or one emulator profile) and decide its verdict.

The steps are parsed as ``uffdctl run`` parses its lines (uffdctl.session.argv, from the command table)
and run in one in-process session (:func:`uffdctl.session.commands.execute`).
After every step the runner records the state of the watched page:

======================  ===========================================================================
column                  where it comes from
======================  ===========================================================================
present, uffd_wp,       /proc/self/pagemap bits 63, 57, 56 (both backends)
exclusive
soft_dirty              pagemap bit 55; ``None`` ("-") where the kernel has no soft-dirty
write, dirty            the PTE's RW and D bits: the emulator knows them; the kernel does not say
                        (``None``): its write-ability shows in the next write's fault count
private_dirty           /proc/self/smaps Private_Dirty of the page's VMA, bytes, while that VMA is the
                        region itself (``None`` while a neighbour is merged into it)
written                 PAGEMAP_SCAN PAGE_IS_WRITTEN of the page, while the page is in a uffd-wp registered
                        range (the category means "no uffd-wp bit": elsewhere it tracks nothing);
                        ``None`` outside such a range or without PAGEMAP_SCAN (before 6.7)
fault                   minor faults of this step's access (``touch``), measured around it
faults                  minor faults of all finished accesses so far
flushes                 TLB flushes during this step's command: the emulator's TLB model, or tracefs
                        ``tlb:tlb_flush`` local shootdowns of the calling thread on the kernel (only when
                        the scenario needs it; Python's own munmaps outside the command are not counted)
======================  ===========================================================================

The verdict comes from the observation (the scenario's ``symptom`` evaluated on
the state after the last step), never from the expectation, which is printed
beside it; ``match`` says whether they agree.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import uapi
from ..errors import BackendUnavailable, UffdctlError, UsageError
from ..errors import to_wire as error_dict
from ..registry import open_backend
from ..session.argv import parse_argv
from ..session.commands import execute, pagemap_entries, parse_range
from ..session.state import SessionState
from . import scenario as S

COMPARED = ("present", "uffd_wp", "exclusive", "soft_dirty", "private_dirty", "written", "fault", "flushes")


@dataclass(frozen=True)
class Target:
    """Where a case runs: ``kernel``, or ``emu`` with a profile (and CONFIG_MEM_SOFT_DIRTY on/off)."""

    backend: str
    profile: str | None = None
    soft_dirty: bool = True          # emulator only; the kernel's is what it is
    mirror: bool = False             # the emulator twin of the kernel (--backend both)
    switches: tuple = ()             # (name, bool) profile switches of the twin (a patched kernel's)

    @property
    def label(self) -> str:
        if self.backend == "kernel":
            return "kernel"
        return (f"emu {self.profile}" + "".join(f" {k}={int(v)}" for k, v in self.switches)
                + ("" if self.soft_dirty else " sd=off"))

    def to_dict(self) -> dict:
        return {"backend": self.backend, "profile": self.profile, "label": self.label,
                "emulated_soft_dirty": self.soft_dirty if self.backend == "emu" else None, "mirror": self.mirror}


@dataclass
class CaseRun:
    scenario: str
    case: str
    target: Target
    facts: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    verdict: str = "ERROR"
    reason: str = ""
    symptom: str = ""
    means: str = ""
    observed: dict = field(default_factory=dict)
    expected: S.Rule | None = None
    seconds: float = 0.0
    environment: bool = False        # UNSUPPORTED for a reason outside the kernel's behaviour (no tracefs, ...)

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.case}"

    @property
    def match(self) -> bool | None:
        """Does the observation agree with the expectation?  None: nothing to judge (no rule for this
        kernel, or the run could not observe for a reason of the environment, e.g. no tracefs)."""
        if self.expected is None or self.environment:
            return None
        return self.expected.verdict == self.verdict

    def to_dict(self) -> dict:
        exp = None if self.expected is None else {"verdict": self.expected.verdict, "source": self.expected.source,
                                                  "when": self.expected.describe()}
        return {"scenario": self.scenario, "case": self.case, "target": self.target.to_dict(), **self.facts,
                "verdict": self.verdict, "reason": self.reason, "symptom": self.symptom, "means": self.means,
                "observed": self.observed, "expected": exp, "match": self.match,
                "environment": self.environment, "steps": self.steps,
                "seconds": round(self.seconds, 3)}


def open_target(t: Target, switches: dict | None = None):
    """The target's backend, from the one opener (uffdctl.registry)."""
    if t.backend == "kernel":
        return open_backend("kernel")
    return open_backend("emu", profile=t.profile, soft_dirty=t.soft_dirty, switches=switches)


def _unmet(need: str, b, desc: dict) -> str | None:
    """Why ``need`` cannot be met on this backend (None: it can)."""
    feats = desc.get("features") or 0
    if need == "soft_dirty":
        return None if desc.get("soft_dirty") else (desc.get("soft_dirty_reason") or "no soft-dirty")
    if need in ("wp_async", "move"):
        bit = uapi.Feature.WP_ASYNC if need == "wp_async" else uapi.Feature.MOVE
        return None if feats & bit else f"feature missing: UFFD_FEATURE_{bit.name}"
    if need == "hints":
        if b.hint_modes("COPY"):
            return None
        return "the 2022 access/write hints were never merged: emulator rfc-hints profiles only"
    if need == "tlb":
        if b.tlb_flush_count() is not None:      # the backend counts them itself (the emulator's TLB model)
            return None
        from .tlbtrace import TlbTrace, TlbTraceUnavailable
        try:
            TlbTrace().close()
        except TlbTraceUnavailable as e:
            return f"tracefs tlb:tlb_flush unusable: {e}"
        return None
    return f"unknown need {need}"


class _Observer:
    def __init__(self, st, sc: S.Scenario, sd_ok: bool, count_tlb: bool):
        self.st, self.sc, self.sd_ok = st, sc, sd_ok
        b = st.backend
        self._flushes = b.tlb_flush_count()       # None: the backend does not count; tracefs may
        self.trace = None
        if count_tlb and self._flushes is None:
            from .tlbtrace import TlbTrace
            self.trace = TlbTrace()

    def flushes(self) -> int | None:
        now = self.st.backend.tlb_flush_count()
        if now is not None:
            d, self._flushes = now - self._flushes, now
            return d
        return self.trace.take() if self.trace else None

    def page(self) -> dict:
        try:
            span = parse_range(self.st, self.sc.watch)
        except UsageError:
            return {}                     # not mapped yet
        span.len = span.region.page_size
        b = self.st.backend
        e = pagemap_entries(self.st, span)[0]
        o = {"present": e["present"], "uffd_wp": e["uffd_wp"], "exclusive": e["exclusive"],
             "soft_dirty": e["soft_dirty"] if self.sd_ok else None, "write": None, "dirty": None}
        bits = b.pte_bits(span.start)             # None where the backend cannot see the PTE's RW/D bits
        if bits is not None:
            o.update(write=bits.write, dirty=bits.dirty)
        o["private_dirty"] = self.private_dirty(span)
        o["written"] = self.written(span) if self.wp_registered(span.start) else None
        return o

    def private_dirty(self, span) -> int | None:
        """smaps Private_Dirty of the page's VMA, only while that VMA is exactly the region: before
        registration a neighbouring anon mapping may have merged into it (the kernel and the emulator
        place mappings differently), and its pages would be counted too."""
        if self.st.backend.vma_bounds(span.start) != (span.region.addr, span.region.end):
            return None
        try:
            return self.st.backend.smaps_private_dirty(span.start)
        except Exception:
            return None

    def watched(self, addr) -> bool:
        """Is addr in the watched page's region?"""
        reg = self.st.regions.get(self.sc.watch.split(":")[0])
        return reg is not None and addr is not None and reg.addr <= addr < reg.end

    def wp_registered(self, addr: int) -> bool:
        """PAGE_IS_WRITTEN means "no uffd-wp bit": it tracks writes only on a uffd-wp range."""
        return any(s <= addr < s + n and m & uapi.RegisterMode.WP for (s, n), m in self.st.registrations.items())

    def written(self, span) -> int | None:
        try:
            res = self.st.backend.pagemap_scan(span.start, span.end, return_mask=int(uapi.PageCategory.WRITTEN))
        except Exception:
            return None              # no PAGEMAP_SCAN (before 6.7)
        return int(any(c & uapi.PageCategory.WRITTEN for _, _, c in res.regions))

    def close(self):
        if self.trace:
            self.trace.close()


def _prepare(st, toks: list[str]):
    """Parse one step as ``uffdctl run`` does (the command table's parser); returns the call that runs it,
    so that TLB flushes are counted around the command alone."""
    name = toks[0]
    try:
        _, args, _ = parse_argv(name, toks[1:])
    except UsageError as e:
        raise UsageError(f"{name}: {e}") from None
    if name == "touch":
        st.thread(args.get("thread") or "main")
    return lambda: execute(st, name, args)


def run_case(sc: S.Scenario, case: S.Case, target: Target, echo=None) -> CaseRun:
    """Run one case on one target; never raises for what the kernel does (that is the verdict)."""
    t0 = time.monotonic()
    run = CaseRun(sc.name, case.id, target)
    switches = ({**dict(target.switches), **(case.switches.get(target.profile) or {})} or None
                if target.backend == "emu" else None)
    try:
        backend = open_target(target, switches)
    except (BackendUnavailable, UffdctlError, OSError) as e:
        run.verdict, run.reason = "UNSUPPORTED", f"{target.backend} backend unavailable: {e}"
        run.environment = True
        return run
    st = SessionState(backend, target.profile, name=f"repro-{sc.name}")
    obs = None
    try:
        desc = backend.describe()
        run.facts = {"release": desc.get("release"), "profile": desc.get("profile"), "backend": backend.name,
                     "soft_dirty": bool(desc.get("soft_dirty")), "soft_dirty_reason": desc.get("soft_dirty_reason")}
        if switches:
            run.facts["switches"] = switches
        unmet = {n: r for n in case.needs if (r := _unmet(n, backend, desc))}
        sd_ok = "soft_dirty" not in unmet and bool(desc.get("soft_dirty"))
        run.symptom, run.means = case.symptom, sc.reproduced
        if "soft_dirty" in unmet and case.fallback:
            run.symptom, run.means = case.fallback["symptom"], case.fallback.get("means", "")
            run.reason = f"via {case.fallback['symptom']} (soft-dirty: {unmet.pop('soft_dirty')})"
        # everything that maps memory happens before the steps: a new VMA after clear-refs 4 is soft-dirty
        st.thread("main")
        st.learn_zero_pfn()
        st.scratch(uapi.PAGE_SIZE)
        obs = _Observer(st, sc, sd_ok, "tlb" in case.needs and "tlb" not in unmet)
        failed = None
        for step in sc.steps(case):
            toks = step.tokens
            rec = {"line": step.lineno, "text": step.text, "comment": step.comment}
            result, error, flushes = None, None, None
            try:
                call = _prepare(st, toks)
                obs.flushes()               # what the interpreter did so far is not the step's
                try:
                    result = call()
                finally:
                    flushes = obs.flushes()
            except Exception as e:          # bad step (UsageError) or the kernel's answer
                error = e
            if error is not None:
                rec["error"] = error_dict(error)["message"]
            state = obs.page()
            res = result or {}
            state["fault"] = res.get("minflt") if toks[0] in ("touch", "wait") else None
            if state["fault"] is not None and not obs.watched(res.get("start")):
                rec["aside"] = True          # a touch elsewhere (e.g. absorbing clear-refs 4's stack faults)
            if toks[0] == "touch" and res.get("blocked"):
                rec["error"] = rec.get("error") or "the access blocked in a userfault"
            state["faults"] = st.access_faults("main")[0]
            state["flushes"] = flushes
            rec["state"] = state
            run.steps.append(rec)
            if echo:
                echo(rec)
            if "error" in rec:
                failed = rec
                break
        run.observed = run.steps[-1]["state"] if run.steps else {}
        if unmet:
            run.verdict = "UNSUPPORTED"
            run.reason = "; ".join(unmet.values())
            run.environment = "tlb" in unmet
        elif failed is not None:
            run.verdict, run.reason = "ERROR", f"line {failed['line']} ({failed['text']}): {failed['error']}"
        else:
            try:
                hit = S.evaluate(run.symptom, run.observed)
                run.verdict = "REPRODUCED" if hit else "NOT REPRODUCED"
            except S.Unobservable as e:
                run.verdict, run.reason = "UNSUPPORTED", f"not observable on this backend: {e}"
    except Exception as e:           # a bug or a backend failure: shown, never a verdict of the kernel
        run.verdict, run.reason = "ERROR", f"{type(e).__name__}: {e}"
    finally:
        if obs is not None:
            obs.close()
        try:
            st.close()
        except Exception:
            pass
        run.seconds = time.monotonic() - t0
    run.expected = sc.expectation(case, run.facts) if run.facts else None
    return run


def diff_steps(a: CaseRun, b: CaseRun) -> list[dict]:
    """Per step, the compared columns where both backends observed a value and the values differ.

    The fault count of a touch outside the watched region is not compared: those touches absorb the
    touching thread's own faults after ``clear-refs 4`` (its stack, measured 1-3 on a soft-dirty kernel)."""
    out = []
    for sa, sb in zip(a.steps, b.steps):
        keys = [k for k in COMPARED if not (k == "fault" and (sa.get("aside") or sb.get("aside")))]
        d = {k: (sa["state"].get(k), sb["state"].get(k)) for k in keys
             if sa["state"].get(k) is not None and sb["state"].get(k) is not None
             and sa["state"].get(k) != sb["state"].get(k)}
        out.append(d)
    if len(a.steps) != len(b.steps):
        out.append({"steps": (len(a.steps), len(b.steps))})
    return out
