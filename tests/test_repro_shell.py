"""scripts/repro-*.sh and scripts/demo.sh: generated from the scenarios (no drift), and they run (CI)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_cli_support import need_kernel
from uffdctl.repro import scenario as S
from uffdctl.repro import shell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
SCENARIOS = S.load_all()
VENV = os.path.dirname(os.path.dirname(sys.executable))


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_script_is_generated_from_the_scenario(sc):
    path = shell.path_for(SCRIPTS, sc)
    with open(path, encoding="utf-8") as f:
        assert f.read() == shell.generate(sc), f"{path} is stale: python -m uffdctl.repro.shell scripts"
    assert os.access(path, os.X_OK)


def test_no_stray_scripts():
    names = {f"repro-{s.name}.sh" for s in SCENARIOS}
    assert {f for f in os.listdir(SCRIPTS) if f.startswith("repro-")} == names
    assert shell.main(["--check", SCRIPTS]) == 0


def _env(tmp_path, backend, profile=None):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               UFFDCTL_RUNTIME_DIR=str(tmp_path / "rt"), UFFDCTL_BACKEND=backend)
    env.pop("UFFDCTL_SESSION", None)
    env.pop("UFFDCTL_PROFILE", None)
    if profile:
        env["UFFDCTL_PROFILE"] = profile
    return env


@pytest.mark.parametrize("backend", ["emu", "kernel"])
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_script_runs_the_scenario_steps(tmp_path, sc, backend):
    """Each case of the script issues exactly the scenario's steps (then pagemap and regions)."""
    if backend == "kernel":
        need_kernel()
    p = subprocess.run(["sh", shell.path_for(SCRIPTS, sc)], capture_output=True, text=True,
                       env=_env(tmp_path, backend), cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    blocks = re.split(r"^== ", p.stdout, flags=re.M)[1:]
    assert [b.split("\n", 1)[0] for b in blocks] == [f"{sc.name}/{c.id}" for c in sc.cases]
    for case, block in zip(sc.cases, blocks):
        issued = [ln[len("$ uffdctl "):] for ln in block.splitlines() if ln.startswith("$ uffdctl ")]
        want = [st.text for st in sc.steps(case)]
        if "hints" in case.needs:       # RFC hint modes: emulator rfc-hints profiles only
            assert issued == [] and "skipped: needs UFFDCTL_BACKEND=emu" in block
            continue
        assert issued == want + [f"pagemap {sc.watch}", "regions"]
    assert os.listdir(tmp_path / "rt") == []          # every session stopped and cleaned


def test_script_takes_cases_and_refuses_unknown(tmp_path):
    sc = next(s for s in SCENARIOS if s.name == "unprotect-extra-fault")
    path = shell.path_for(SCRIPTS, sc)
    p = subprocess.run(["sh", path, "shmem"], capture_output=True, text=True,
                       env=_env(tmp_path, "emu", "5.19"), cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and "== unprotect-extra-fault/shmem" in p.stdout and "/anon" not in p.stdout
    # on 5.19 the shmem un-protect leaves the page writable: the last write takes no fault
    assert p.stdout.count("minflt=0") == 1, p.stdout
    p = subprocess.run(["sh", path, "bogus"], capture_output=True, text=True, env=_env(tmp_path, "emu"),
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and "unknown case bogus" in p.stderr


def test_script_runs_the_hint_case_on_the_rfc_profile(tmp_path):
    sc = next(s for s in SCENARIOS if s.name == "clean-writable-escapes-softdirty")
    p = subprocess.run(["sh", shell.path_for(SCRIPTS, sc), "write-likely"], capture_output=True, text=True,
                       env=_env(tmp_path, "emu", "rfc-hints-fixed"), cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "$ uffdctl writeprotect buf:0 --off --write-likely" in out
    touches = [ln for ln in out.splitlines() if ln.startswith("touch #")]
    assert touches[-1].split("minflt=")[1].startswith("0 "), touches     # writable again: no fault
    lines = out.splitlines()
    hdr = lines.index("$ uffdctl pagemap buf:0") + 1
    row = dict(zip(lines[hdr].split(), lines[hdr + 1].split()))
    assert row["soft_dirty"] == "1" and row["present"] == "1"           # and the write was not lost


def test_demo(tmp_path):
    """make demo's script: check (exit 4 tolerated), repro all --backend both, the verdict table, exit 0."""
    env = _env(tmp_path, "kernel")
    p = subprocess.run(["sh", os.path.join(SCRIPTS, "demo.sh"), VENV], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    out = p.stdout
    assert "$ uffdctl check" in out and "$ uffdctl repro all --backend both" in out
    assert "verdicts (scenario/case × kernel/profile):" in out
    assert "demo: every verdict matches its expectation" in out
    table = out[out.index("verdicts (scenario/case"):]
    for sc in SCENARIOS:
        for c in sc.cases:
            assert f"{sc.name}/{c.id} " in table
