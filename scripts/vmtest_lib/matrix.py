"""The kernel matrix: one selection of tests and reproductions, run on the host and in each guest kernel.

Each *column* (the host, or one booted kernel) runs the same steps from the
checkout, writing its artifacts into a directory both sides see:

- ``release``, ``proc_version``     which kernel answered
- ``check.json``                    ``uffdctl check -j`` (carries the kernel release)
- ``junit.xml``                     pytest on the selection (soft-dirty tests, differential ...)
- ``repro.json``                    ``uffdctl repro all -j`` (when the checkout has it)
- ``STEP.rc``                       each step's exit status

:func:`collect` reads them back into :class:`Column` verdicts and :func:`render`
lays the columns side by side: one row per test or scenario.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

PASS, FAIL, ERROR, UNSUPPORTED, MISSING = "PASS", "FAIL", "ERROR", "UNSUPPORTED", "-"
BAD = {FAIL, ERROR, "BROKEN"}

# Tests that need a real soft-dirty kernel or a specific kernel (including the differential test with the
# emulator profile of the running kernel): they run in every column.
DEFAULT_TESTS = ("tests/test_softdirty.py", "tests/test_selftests.py")

PYTEST_OPTS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q", "-rs")
GUEST_HUGEPAGES = 32   # 64 MiB of the guest's 2 GiB

# The host's test knobs every column runs with.  A guest's environment starts empty (busybox init), so
# without this `UFFDCTL_SELFTEST_ITERATIONS=10 scripts/vmtest matrix ...` ran 10 iterations on the host
# and soft-dirty.c's 10,000 in each guest: under TCG soft-dirty-test_hugepage alone then takes many
# minutes, which read as a hang of the 6.12 guest.
FORWARD_ENV = ("UFFDCTL_SELFTEST_ITERATIONS", "UFFDCTL_DIFF_SEED", "UFFDCTL_DIFF_MEMTYPES", "UFFDCTL_DIFF_SECONDS",
               "UFFDCTL_DIFF_EXAMPLES", "UFFDCTL_NO_FASTPATH", "UFFDCTL_DEBUG")


def forwarded_env(environ=None) -> dict[str, str]:
    """The FORWARD_ENV variables set in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in FORWARD_ENV if k in environ}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str = ""
    bad: bool = False   # a failure: FAIL, ERROR, BROKEN, or a reproduction that disagrees with its expectation

    @classmethod
    def of(cls, verdict: str, reason: str = "") -> "Verdict":
        return cls(verdict, reason, verdict in BAD)


@dataclass
class Column:
    label: str                       # "host 6.18.44" or "6.1.192"
    where: str                       # "host" or "vm"
    share: str = ""                  # the artifacts directory
    release: str = ""
    seconds: float = 0.0
    waited: float = 0.0              # of those, seconds QEMU (or the host column) waited for a host CPU
    cpu: float = 0.0                 # CPU seconds QEMU (or the host column's processes still alive) used
    problem: str = ""                # why the column has no (complete) results
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    rcs: dict[str, int] = field(default_factory=dict)
    # A kernel built with patches (vmtest build): the reproductions its patches declare flipped
    # (``SCENARIO/CASE`` -> verdict) and whether it has an emulator twin of its own (a patch's
    # Emulator-Profile) whose verdicts stand in for the release's expectations.
    flips: dict[str, str] = field(default_factory=dict)
    twin: str = ""
    fixed_label: bool = False        # keep the label (a built kernel's): do not relabel from uname -r

    @property
    def ok(self) -> bool:
        return not self.problem and not any(v.bad for v in self.verdicts.values())

    def to_dict(self) -> dict:
        return {"label": self.label, "where": self.where, "release": self.release, "seconds": round(self.seconds, 1),
                "waited": self.waited, "cpu": self.cpu, "problem": self.problem, "rcs": self.rcs, "flips": self.flips, "twin": self.twin,
                "verdicts": {k: {"verdict": v.verdict, "reason": v.reason, "bad": v.bad}
                             for k, v in self.verdicts.items()}}


@dataclass
class Plan:
    """What every column runs."""

    venv: str
    tests: list[str]
    repro: bool = False              # the venv has ``uffdctl repro``
    profiles: tuple[str, ...] = ()   # emulator profiles the venv knows
    diff_examples: int = 300         # random sequences of the differential test per column
    env: dict[str, str] = field(default_factory=dict)   # forwarded knobs and --env K=V, in every column
    select: str = ""                 # pytest -k EXPR

    def script(self, share: str, soft_dirty: bool, guest: bool = False, profile: str = "",
               switches: dict[str, str] | None = None, criu: str = "") -> tuple[str, dict[str, str]]:
        """(shell body, environment) for one column.  ``soft_dirty``: the kernel has CONFIG_MEM_SOFT_DIRTY,
        so a soft-dirty skip is a failure there.  ``guest``: the column is a VM of its own, so it reserves
        huge pages (as .ci/run does on the host) and hugetlb is tested there too.  The emulator profile
        for the reproductions is the running kernel's series (``uname -r``: 6.1.0-56-amd64 -> 6.1) when
        the emulator has one of that name, or ``profile`` (a built kernel's patches name their twin:
        ``rfc-hints``, or ``6.1`` with ``switches``), passed on as UFFDCTL_EMU_PROFILE/UFFDCTL_EMU_SWITCHES."""
        bin_ = os.path.join(self.venv, "bin")
        env = {"UFFDCTL_REQUIRE_KERNEL": "1",
               "UFFDCTL_DIFF_KERNEL_EXAMPLES": str(self.diff_examples),
               "UFFDCTL_DIFF_DIR": os.path.join(share, "diff"),  # shrunk reproducers outlive the guest
               **self.env, "VMTEST_OUT": share}
        if soft_dirty:
            env["UFFDCTL_REQUIRE_SOFTDIRTY"] = "1"
        if profile:
            env["UFFDCTL_EMU_PROFILE"] = profile
            if switches:
                env["UFFDCTL_EMU_SWITCHES"] = ",".join(f"{k}={v}" for k, v in sorted(switches.items()))
            if profile.startswith("rfc-hints"):
                env["UFFDCTL_KERNEL_HINTS"] = "rfc"   # the kernel carries patches/6.1/rfc-hints*.patch
        q = shlex.quote
        lines = [
            f'export PATH={q(bin_)}:"$PATH"',
            'step() { name=$1; shift; echo "== vmtest step $name"; "$@"; rc=$?; echo $rc > "$VMTEST_OUT/$name.rc"; }',
            'uname -r > "$VMTEST_OUT/release"; cat /proc/version > "$VMTEST_OUT/proc_version"',
        ]
        if guest:
            lines.append(f"echo {GUEST_HUGEPAGES} > /proc/sys/vm/nr_hugepages")
        lines.append('step check sh -c \'uffdctl -j check > "$VMTEST_OUT/check.json"\'')
        lines.append("SERIES=$(uname -r | sed -E 's/^([0-9]+\\.[0-9]+).*/\\1/')")
        profiles = " ".join(self.profiles)
        want = q(profile) if profile else '"$SERIES"'
        lines.append(f'PROFILE=""; for p in {profiles}; do [ "$p" = {want} ] && PROFILE=$p; done'
                     if profiles else 'PROFILE=""')
        tests = " ".join(q(t) for t in self.tests) + (f" -k {q(self.select)}" if self.select else "")
        lines.append(f'step pytest pytest {" ".join(PYTEST_OPTS)} --junitxml="$VMTEST_OUT/junit.xml" {tests}')
        if self.repro:
            lines.append('if [ -n "$PROFILE" ]; then RB="--backend both --profile $PROFILE"; '
                         'else RB="--backend kernel"; fi')
            lines.append('step repro sh -c "uffdctl -j repro all $RB > \\"$VMTEST_OUT/repro.json\\""')
        if criu:   # "full": CRIU and uffdctl's consumer (criu_demo.py); "consumer": the consumer alone
            demo = q(os.path.join(os.path.dirname(os.path.abspath(__file__)), "criu_demo.py"))
            opt = "" if criu == "full" else " --no-criu"
            lines.append(f'step criu sh -c "python3 {demo} --json{opt} > \\"$VMTEST_OUT/criu.json\\""')
        lines.append('exit "$(cat "$VMTEST_OUT/pytest.rc")"')
        return "\n".join(lines), env


# -- reading the artifacts back ---------------------------------------------------------------

def _gist(msg: str, lines: int = 3, width: int = 300) -> str:
    """The first lines of a failure message on one line (the table's note)."""
    return " / ".join(line.strip() for line in msg.splitlines()[:lines] if line.strip())[:width]


def junit_verdicts(path: str) -> dict[str, Verdict]:
    """``file.py::test[id]`` -> verdict, from pytest's junit XML."""
    out: dict[str, Verdict] = {}
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        mod = tc.get("classname", "").split(".")
        # classname is "tests.test_x" or "tests.test_x.TestClass"
        fname = next((m for m in mod if m.startswith("test_")), mod[-1]) + ".py"
        cls = mod[-1] if mod and not mod[-1].startswith("test_") and len(mod) > 1 else ""
        key = f"{fname}::{cls + '::' if cls else ''}{tc.get('name')}"
        v = Verdict(PASS)
        for child in tc:
            msg = (child.get("message") or "").strip()
            if child.tag == "skipped":
                v = Verdict(UNSUPPORTED, re.sub(r"^Skipped: ", "", msg))
            elif child.tag in ("failure", "error"):
                v = Verdict.of(FAIL if child.tag == "failure" else ERROR, _gist(msg))
        out[key] = v
    return out


def repro_verdicts(doc, flips: dict[str, str] | None = None, twin: bool = False) -> dict[str, Verdict]:
    """``repro: SCENARIO/CASE [kernel|emu]`` -> verdict, from ``uffdctl -j repro all --backend both``.

    Only the kernel and its emulator twin (``target.mirror``: the profile named after this kernel, with
    its soft-dirty configuration) become rows; the other profiles' runs stay in repro.json.  A run whose
    ``match`` is false (the observation contradicts the expectation for this release) fails the column,
    shown as ``VERDICT (expected X)``.  A twin whose steps differ from the kernel's (``divergences``) says
    so: ``VERDICT, N steps differ``.

    On a kernel built with patches, ``flips`` (``SCENARIO/CASE`` -> verdict, from the patches) replace the
    release's expectation for those rows: a flipped row is right when it shows the declared verdict
    (``VERDICT (patched)``), wrong otherwise.  With ``twin`` (the patches name an emulator profile), a
    row the release's expectation contradicts is still right when the kernel agrees with its twin.
    """
    items = doc.get("results", []) if isinstance(doc, dict) else doc
    differ = {}
    for d in doc.get("divergences", []) if isinstance(doc, dict) else []:
        differ[d.get("scenario")] = len(d.get("steps") or [])
    flips = flips or {}
    twins = {}
    for it in items if isinstance(items, list) else []:
        if isinstance(it, dict) and (it.get("target") or {}).get("mirror") and it.get("verdict"):
            twins[it.get("scenario", "") + (f"/{it['case']}" if it.get("case") else "")] = str(it["verdict"]).upper()
    out = {}
    for it in items if isinstance(items, list) else []:
        if not isinstance(it, dict) or not it.get("scenario") or not it.get("verdict"):
            continue
        t = it.get("target") or {}
        if t.get("backend") != "kernel" and not t.get("mirror"):
            continue
        name = it["scenario"] + (f"/{it['case']}" if it.get("case") else "")
        who = "kernel" if t.get("backend") == "kernel" else "emu"
        verdict = str(it["verdict"]).upper()
        reason = str(it.get("reason") or "")[:200] if verdict in ("UNSUPPORTED", ERROR) else ""
        if who == "emu" and differ.get(name):
            n = differ[name]
            verdict += f", {n} step{' differs' if n == 1 else 's differ'}"
        exp = it.get("expected") if isinstance(it.get("expected"), dict) else {}
        if who == "kernel" and name in flips:
            want = flips[name].upper()
            ok = verdict == want
            out[f"repro: {name} [{who}]"] = Verdict(f"{verdict} (patched)" if ok else
                                                    f"{verdict} (patched: expected {want})",
                                                    "" if ok else f"the patches declare {name}={want}", not ok)
        elif it.get("match") is False and not (who == "kernel" and twin and twins.get(name) == verdict):
            out[f"repro: {name} [{who}]"] = Verdict(f"{verdict} (expected {exp.get('verdict', '?')})",
                                                    f"expected {exp.get('verdict', '?')}: {exp.get('source', '')}"
                                                    [:200], True)
        else:
            out[f"repro: {name} [{who}]"] = Verdict(verdict, reason, verdict.startswith(ERROR))
    return out


def criu_verdicts(doc) -> dict[str, Verdict]:
    """``criu-demo: consumer/MODE`` (LOST / NOT LOST: what the kernel did, not a failure) and
    ``criu-demo: criu/MODE`` (RESTORED 'B' is right; anything else, or an ERROR, fails the column)."""
    out = {}
    for half in ("consumer", "criu"):
        for mode, res in (doc.get(half) or {}).items() if isinstance(doc, dict) else []:
            v = str(res.get("verdict", "?"))
            reason = str(res.get("error") or res.get("reason") or "")[:200]
            bad = v == ERROR or (half == "criu" and v != "RESTORED 'B'")
            out[f"criu-demo: {half}/{mode}"] = Verdict(v, reason, bad)
    return out


def check_verdicts(doc) -> dict[str, Verdict]:
    """``check: NAME`` -> OK / UNSUPPORTED / BROKEN from ``uffdctl -j check``."""
    out = {}
    for v in doc.get("verdicts", []) if isinstance(doc, dict) else []:
        status = str(v.get("status", "?")).upper()
        out[f"check: {v.get('check')}"] = Verdict.of(status, "" if status == "OK" else str(v.get("message", ""))[:200])
    return out


def kernel_label(release: str, proc_version: str) -> str:
    """Debian's 6.1.0-56-amd64 is 6.1.192: prefer the version named after "Debian" in /proc/version."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if m:
        for d in re.findall(r"Debian (\d+\.\d+\.\d+)", proc_version):
            if d.split(".")[:2] == [m.group(1), m.group(2)]:
                return d
    m = re.match(r"\d+\.\d+(\.\d+)?", release)
    return m.group(0) if m else release or "?"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def collect(col: Column) -> Column:
    s = col.share
    col.release = _read(os.path.join(s, "release"))
    if col.release and not col.fixed_label:
        label = kernel_label(col.release, _read(os.path.join(s, "proc_version")))
        col.label = f"host {label}" if col.where == "host" else label
    for fn in sorted(os.listdir(s)) if os.path.isdir(s) else []:
        if fn.endswith(".rc"):
            try:
                col.rcs[fn[:-3]] = int(_read(os.path.join(s, fn)))
            except ValueError:
                pass
    junit = os.path.join(s, "junit.xml")
    if os.path.exists(junit):
        try:
            col.verdicts.update(junit_verdicts(junit))
        except ET.ParseError as e:
            col.problem = col.problem or f"junit.xml unreadable: {e}"
    elif not col.problem:
        col.problem = "pytest wrote no junit.xml" + (f" (exit {col.rcs['pytest']})" if "pytest" in col.rcs else "")
    if "pytest" in col.rcs and col.rcs["pytest"] not in (0, 1) and not col.problem:
        col.problem = f"pytest exited {col.rcs['pytest']}"
    check = os.path.join(s, "check.json")
    if os.path.exists(check):
        try:
            with open(check) as f:
                col.verdicts.update(check_verdicts(json.load(f)))
        except ValueError:
            pass  # uffdctl check failed before printing: its rc is in the table's footer
    repro = os.path.join(s, "repro.json")
    if os.path.exists(repro):
        try:
            with open(repro) as f:
                col.verdicts.update(repro_verdicts(json.load(f), col.flips, bool(col.twin)))
        except ValueError as e:
            col.problem = col.problem or f"repro.json unreadable: {e}"
    cj = os.path.join(s, "criu.json")
    if os.path.exists(cj):
        try:
            with open(cj) as f:
                col.verdicts.update(criu_verdicts(json.load(f)))
        except ValueError as e:
            col.problem = col.problem or f"criu.json unreadable: {e}"
    if col.rcs.get("repro", 0) not in (0, 1) and not col.problem:  # 1: a contradicted expectation (in the rows)
        col.problem = f"uffdctl repro exited {col.rcs['repro']}"
    return col


# -- the table --------------------------------------------------------------------------------

def render(cols: list[Column]) -> str:
    rows: list[str] = []
    for c in cols:
        rows += [k for k in c.verdicts if k not in rows]
    notes: list[str] = []

    def cell(c: Column, key: str) -> str:
        v = c.verdicts.get(key)
        if v is None:
            return MISSING
        if not v.reason or v.verdict in (PASS, "OK"):
            return v.verdict
        if v.reason not in notes:
            notes.append(v.reason)
        return f"{v.verdict} [{notes.index(v.reason) + 1}]"

    head = ["test / scenario"] + [c.label + (" (VM)" if c.where == "vm" else "") for c in cols]
    body = [[k] + [cell(c, k) for c in cols] for k in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    if notes:
        out.append("")
        out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    out.append("")
    for c in cols:
        counts: dict[str, int] = {}
        for v in c.verdicts.values():
            base = v.verdict.split(" (")[0].split(",")[0]
            counts[base] = counts.get(base, 0) + 1
        bad = sum(v.bad for v in c.verdicts.values())
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no results"
        summary += f" ({bad} failing)" if bad else ""
        line = f"{c.label}: {summary}; {c.seconds:.1f} s"
        if c.problem:
            line += f"; PROBLEM: {c.problem}"
        out.append(line)
    return "\n".join(out)


def to_json(cols: list[Column]) -> dict:
    return {"columns": [c.to_dict() for c in cols], "ok": all(c.ok for c in cols)}
