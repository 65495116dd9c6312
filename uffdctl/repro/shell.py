"""``scripts/repro-NAME.sh``: each scenario as a plain shell script of ``uffdctl`` session commands.

Generated from the scenario files, so the scripts cannot drift from what
``uffdctl repro`` runs (tests/test_repro_shell.py regenerates and compares)::

    python -m uffdctl.repro.shell scripts            # rewrite scripts/repro-*.sh
    python -m uffdctl.repro.shell --check scripts    # exit 1 if any is stale
"""
from __future__ import annotations

import os
import sys
import textwrap

from . import scenario as S

PRELUDE = r'''set -eu
U=${UFFDCTL:-uffdctl}
made=
if [ -z "${UFFDCTL_RUNTIME_DIR:-}" ]; then
    UFFDCTL_RUNTIME_DIR=$(mktemp -d /tmp/uffdctl-repro.XXXXXX); made=1
fi
export UFFDCTL_RUNTIME_DIR
S=
cleanup() {
    [ -z "$S" ] || $U session stop "$S" >/dev/null 2>&1 || true
    [ -z "$made" ] || rm -rf "$UFFDCTL_RUNTIME_DIR"
}
trap cleanup EXIT
step() { printf '$ uffdctl %s\n' "$*"; $U "$@"; }
tagged() { case " $TAGS " in *" $1 "*) return 0 ;; esac; return 1; }
start() {
    S=repro$$-$1
    export UFFDCTL_SESSION=$S
    $U session start --name "$S" --backend "${UFFDCTL_BACKEND:-kernel}" \
        ${UFFDCTL_PROFILE:+--profile "$UFFDCTL_PROFILE"} >/dev/null
}
stop() { $U session stop "$S" >/dev/null; S=; }
'''


def _comment(text: str, width: int = 100) -> list[str]:
    return ["# " + ln if ln else "#" for ln in textwrap.wrap(text, width - 2)] or ["#"]


def _step_line(code: str) -> str:
    return f"step {code}"


def generate(sc: S.Scenario) -> str:
    src = f"uffdctl/repro/{sc.path}"
    out = ["#!/bin/sh",
           f"# repro-{sc.name}.sh: {sc.title}",
           "#",
           f"# Generated from {src} by `python -m uffdctl.repro.shell scripts`;",
           "# edit the scenario, not this file (tests/test_repro_shell.py compares them).",
           "#"]
    out += _comment("Thread: " + sc.thread)
    out += _comment("Cites: " + sc.spec)
    out += _comment("REPRODUCED means: " + sc.reproduced)
    cases = ", ".join(c.id for c in sc.cases)
    out += ["#",
            f"# Usage: scripts/repro-{sc.name}.sh [CASE ...]    (cases: {cases}; default all)",
            "#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)",
            "# Each case runs in a fresh session; after the last step the watched page's pagemap entry",
            f"# ({sc.watch}) and the regions' Private_Dirty are printed; each touch prints its minor faults.",
            "# `uffdctl repro " + sc.name + "` runs the same steps with the per-step state and a verdict.",
            PRELUDE]
    out += ["steps() {    # one case: its variables and TAGS are set by case_* below"]
    for _, tags, code, comment in sc.tagged_lines():
        line = _step_line(code)
        if tags:
            line = "if " + " || ".join(f"tagged {t}" for t in tags) + f"; then {line}; fi"
        out.append(f"    {line}" + (f"    # {comment}" if comment else ""))
    out += [f"    step pagemap {sc.watch}    # the watched page after the last step",
            "    step regions                # Private_Dirty",
            "}", ""]
    for case in sc.cases:
        out += _comment(f"case {case.id}: {case.title}" if case.title else f"case {case.id}")
        out += _comment("REPRODUCED when " + case.symptom
                        + (f" (without soft-dirty: {case.fallback['symptom']})" if case.fallback else ""))
        assigns = "".join(f"{k}='{v}'; " for k, v in case.vars.items())
        guard = ""
        if "hints" in case.needs:      # the never-merged RFC hint modes exist only in those emulator profiles
            guard = ("case ${UFFDCTL_PROFILE:-} in rfc-hints*) ;; *) echo 'skipped: needs UFFDCTL_BACKEND=emu "
                     "UFFDCTL_PROFILE=rfc-hints or rfc-hints-fixed (the hints were never merged)'; return 0 ;; esac; ")
        out.append(f"case_{case.id.replace('-', '_')}() {{ {guard}{assigns}TAGS='{' '.join(case.tags)}'; "
                   f"start {case.id}; steps; stop; }}")
        out.append("")
    ids = " ".join(c.id for c in sc.cases)
    out += [f'[ $# -gt 0 ] || set -- {ids}',
            'for c in "$@"; do',
            '    case $c in']
    for case in sc.cases:
        out.append(f"    {case.id}) printf '\\n== {sc.name}/{case.id}\\n'; case_{case.id.replace('-', '_')} ;;")
    out += [f"    *) echo \"repro-{sc.name}.sh: unknown case $c (cases: {ids})\" >&2; exit 2 ;;",
            "    esac",
            "done",
            ""]
    return "\n".join(out)


def path_for(outdir: str, sc: S.Scenario) -> str:
    return os.path.join(outdir, f"repro-{sc.name}.sh")


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) != 1:
        print("usage: python -m uffdctl.repro.shell [--check] OUTDIR", file=sys.stderr)
        return 2
    stale = []
    for sc in S.load_all():
        p, text = path_for(args[0], sc), generate(sc)
        old = open(p, encoding="utf-8").read() if os.path.exists(p) else None
        if old == text:
            continue
        stale.append(p)
        if not check:
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(p, 0o755)
    if check and stale:
        print("stale (regenerate with python -m uffdctl.repro.shell scripts): " + " ".join(stale), file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
