"""No user-visible text cites the spec's section numbers (issue 11.9): users do not have the spec.  A
citation names the kernel commit, the kernel function or the measurement instead.

Checked: the README and docs/, the built-in scenarios (their headers are the verdicts' sources) and the
scripts generated from them, the expectation sources as `repro` reports them, every command's --help, the
public docstrings under uffdctl/, and `uffdctl repro list -j`.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = re.compile(r"spec\s*§|§\s*\d")          # "spec §7.1", "§2.3.6"


def _hits(text: str) -> list[str]:
    return [ln.strip()[:160] for ln in text.splitlines() if SECTION.search(ln)]


def user_files() -> list[pathlib.Path]:
    out = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    out += sorted((ROOT / "uffdctl" / "repro" / "scenarios").glob("*.uffd"))
    out += sorted((ROOT / "scripts").glob("repro-*.sh")) + [ROOT / "scripts" / "demo.sh"]
    out += sorted((ROOT / "tests" / "selftests").glob("*.uffd")) + [ROOT / "tests" / "selftests" / "README.md"]
    out += sorted((ROOT / "uffdctl").rglob("*.py"))     # docstrings: help(), pydoc
    return [p for p in out if p.exists()]


@pytest.mark.parametrize("path", user_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_spec_section_in_user_visible_files(path):
    hits = _hits(path.read_text(encoding="utf-8"))
    assert not hits, f"{path.relative_to(ROOT)} cites the spec by section: {hits}"


def test_the_check_can_fail():
    assert _hits('source = "spec §7.1 B step 3"') and _hits("the §2.3.6 quirk") and not _hits("see section 2")


def test_expectation_sources_and_help_cite_no_spec_section():
    from uffdctl.repro.scenario import load_all
    from uffdctl.session.commands import COMMANDS
    for sc in load_all():
        assert not _hits(sc.spec), (sc.name, sc.spec)
        for case in sc.cases:
            for rule in case.rules:
                assert not _hits(rule.source), (sc.name, case.id, rule.source)
    texts = []
    for name, cmd in COMMANDS.items():
        texts.append(str(getattr(cmd, "help", "")) + str(getattr(cmd, "example", "")))
        texts += [str(getattr(p, "help", "")) for p in getattr(cmd, "params", ())]
    hits = [h for t in texts for h in _hits(t)]
    assert not hits, hits


def test_help_and_repro_list_cite_no_spec_section():
    env = dict(os.environ, COLUMNS="200")
    exe = [sys.executable, "-m", "uffdctl"]
    outs = [subprocess.run(exe + ["repro", "list", "-j"], capture_output=True, text=True, env=env, timeout=120,
                           cwd="/").stdout]
    json.loads(outs[0])
    for args in (["--help"], ["repro", "--help"], ["run", "--help"], ["mmap", "--help"], ["scan", "--help"]):
        outs.append(subprocess.run(exe + args, capture_output=True, text=True, env=env, timeout=120, cwd="/").stdout)
    hits = [h for o in outs for h in _hits(o)]
    assert not hits, hits
