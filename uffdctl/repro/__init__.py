"""Reproductions of the 2022 linux-mm thread (``uffdctl repro``).

* :mod:`.scenario` — the scenario files (``scenarios/*.uffd``: run-language steps
  under a TOML header with the symptom and the expectations and their sources);
* :mod:`.runner` — one case on one target, the per-step page state, the verdict;
* :mod:`.render` — the traces, the side-by-side marks and the verdict table;
* :mod:`.shell` — the same steps as ``scripts/repro-NAME.sh`` (session commands).

:func:`run` is what ``uffdctl repro`` calls: it picks the targets (the kernel; its
emulator twin — the profile of the kernel's series, soft-dirty as on the host;
the emulator profiles asked for, soft-dirty on), runs every case on each, and
returns a :class:`Report`.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

from .runner import CaseRun, Target, diff_steps, run_case
from .scenario import Scenario, ScenarioError, load, load_all

DEFAULT_PROFILES = ("5.19", "6.1", "6.12", "6.18", "rfc-hints", "rfc-hints-fixed")
BACKENDS = ("kernel", "emu", "both")


@dataclass
class Report:
    backend: str
    kernel: dict | None                  # the kernel backend's describe() (or why it is unavailable)
    targets: list
    runs: list = field(default_factory=list)
    divergences: list = field(default_factory=list)

    @property
    def failures(self) -> list[CaseRun]:
        """Runs whose verdict contradicts the expectation, or that broke (ERROR)."""
        return [r for r in self.runs if r.verdict == "ERROR" or r.match is False]

    @property
    def exit(self) -> int:
        return 1 if self.failures else 0

    def to_dict(self) -> dict:
        k = self.kernel or {}
        keep = ("scenario", "case", "target", "release", "soft_dirty", "verdict", "reason", "expected", "match")
        results = [{k: v for k, v in r.to_dict().items() if k in keep} for r in self.runs]
        return {"release": k.get("release", platform.release()), "machine": platform.machine(),
                "soft_dirty": k.get("soft_dirty"), "soft_dirty_reason": k.get("soft_dirty_reason"),
                "kernel": self.kernel, "backend": self.backend,
                "profiles": [t.profile for t in self.targets if t.backend == "emu"],
                "targets": [t.to_dict() for t in self.targets],
                "results": results, "runs": [r.to_dict() for r in self.runs],
                "divergences": self.divergences, "failures": [f"{r.name} @{r.target.label}" for r in self.failures],
                "exit": self.exit}


def kernel_facts() -> dict:
    """describe() of the kernel backend (release, soft-dirty round trip), or why it is unavailable."""
    from ..errors import BackendUnavailable
    from ..registry import open_backend
    try:
        b = open_backend("kernel")
    except BackendUnavailable as e:
        return {"available": False, "reason": str(e), "release": platform.release()}
    try:
        d = b.describe()
        d = {k: d.get(k) for k in ("release", "version", "machine", "soft_dirty", "soft_dirty_reason", "features")}
        d["available"] = True
        return d
    finally:
        b.close()


def mirror_profile(release: str, version: str | None = None) -> str:
    """The emulator profile of the running kernel (registry.twin_profile())."""
    from ..registry import twin_profile
    return twin_profile(release, version)


def declared_twin() -> tuple[str | None, tuple]:
    """A kernel that is not its series' (a build with patches) names its twin: UFFDCTL_EMU_PROFILE and
    UFFDCTL_EMU_SWITCHES ("name=1,other=0"), which scripts/vmtest sets in the guest of a built kernel."""
    import os
    from ..registry import is_emulator_profile
    prof = os.environ.get("UFFDCTL_EMU_PROFILE") or None
    if prof is None or not is_emulator_profile(prof):
        return None, ()
    sw = [kv.split("=", 1) for kv in os.environ.get("UFFDCTL_EMU_SWITCHES", "").split(",") if "=" in kv]
    return prof, tuple(sorted((k.strip(), bool(int(v))) for k, v in sw))


def targets_for(backend: str, profiles: tuple, kernel: dict | None, soft_dirty: bool = True) -> list[Target]:
    out = []
    if backend in ("kernel", "both"):
        out.append(Target("kernel"))
    twin = None
    if backend == "both" and kernel and kernel.get("available"):
        prof, switches = declared_twin()
        twin = Target("emu", prof or mirror_profile(kernel["release"], kernel.get("version")), bool(kernel.get("soft_dirty")),
                      mirror=True, switches=switches)
        out.append(twin)
    if backend in ("emu", "both"):
        # a profile the twin already is (same series and soft-dirty setting) is not run twice
        out += [Target("emu", p, soft_dirty) for p in profiles
                if not (twin and twin.soft_dirty == soft_dirty and twin.profile == p and not twin.switches)]
    return out


def applies(case, t: Target) -> bool:
    """Kernel and mirror runs always; other emulator profiles only where the scenario says."""
    if t.backend == "kernel" or t.mirror or not case.profiles:
        return True
    from ..registry import profile_series     # a release profile (6.1.176) runs where its series does
    return t.profile in case.profiles or profile_series(t.profile) in case.profiles


def run(scenarios: list[Scenario], backend: str = "both", profiles: tuple = DEFAULT_PROFILES,
        cases: tuple = (), on_run=None, soft_dirty: bool = True) -> Report:
    from ..registry import emulator_profiles_help, is_emulator_profile
    bad = [p for p in profiles if not is_emulator_profile(p)]
    if bad:
        raise ValueError(f"unknown emulator profile(s) {', '.join(bad)} (valid: {emulator_profiles_help()})")
    kernel = kernel_facts() if backend in ("kernel", "both") else None
    rep = Report(backend, kernel, targets_for(backend, profiles, kernel, soft_dirty))
    for sc in scenarios:
        for case in sc.cases:
            if cases and case.id not in cases:
                continue
            runs = {}
            for t in rep.targets:
                if not applies(case, t):
                    continue
                r = run_case(sc, case, t)
                runs[t] = r
                rep.runs.append(r)
                if on_run:
                    on_run(r)
            k = next((r for t, r in runs.items() if t.backend == "kernel"), None)
            m = next((r for t, r in runs.items() if t.mirror), None)
            if k is not None and m is not None and k.steps:
                d = diff_steps(k, m)
                marks = [{"line": s["line"], "text": s["text"], "differs": x}
                         for s, x in zip(k.steps, d) if x]
                if marks or k.verdict != m.verdict:
                    rep.divergences.append({"scenario": k.name, "kernel": k.verdict, "emulator": m.verdict,
                                            "profile": m.target.profile, "steps": marks})
    return rep


__all__ = ["BACKENDS", "DEFAULT_PROFILES", "CaseRun", "Report", "Scenario", "ScenarioError", "Target",
           "load", "load_all", "run", "run_case"]
