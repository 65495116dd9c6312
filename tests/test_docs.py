"""Every code block of the README and docs/ runs, on the kernel and on the emulator, as written.

A fenced block is code when it is tagged ``python``/``sh``/``uffd``, or when its lines are commands
(``$ uffdctl ...``, ``uffdctl ...``, ``make ...``, ``scripts/...``).  Python blocks run in a fresh
interpreter once per backend (the block's ``open_backend("kernel")`` becomes ``open_backend("emu")`` for
the emulator run); ``uffd`` blocks run with ``uffdctl run --backend X``; command blocks run line by line
in a private runtime directory, with ``--backend X`` added to ``session start``.  The few commands not
run here are listed in NOT_RUN with the test that covers them; anything else a block says must work.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import _kernel_reason, require_kernel
from test_cli_support import BIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
COMMAND = re.compile(r"^(\$ )?(\.venv/bin/uffdctl|uffdctl|make|scripts/|cc )")

# Commands a block shows that this suite does not run, and where they are covered instead.
NOT_RUN = {
    "make": "the README's own two commands: `make test` is this suite, `make demo` is run by CI and "
            "tests/test_cli_demo.py; the other targets are tests of their own (bench, soak, test-vm)",
    "scripts/vmtest": "boots a kernel under QEMU (minutes): tests/test_vmtest.py runs it",
    "cc ": "a standalone C reproducer of a kernel bug (docs/pagemap-scan-walk-end.md), not uffdctl",
}
# Exit statuses a documented command may end with here, and why.
EXPECTED_RC = {"check": (0, 4)}   # 4: something unsupported on this host (soft-dirty off), as the README says


def blocks(path: str) -> list[tuple[int, str, str]]:
    """(line number, tag, text) of every fenced block."""
    out, cur, tag, start = [], None, "", 0
    for n, line in enumerate(open(os.path.join(ROOT, path), encoding="utf-8"), 1):
        if line.startswith("```"):
            if cur is None:
                cur, tag, start = [], line[3:].strip(), n
            else:
                out.append((start, tag, "".join(cur)))
                cur = None
        elif cur is not None:
            cur.append(line)
    return out


def is_code(tag: str, text: str) -> bool:
    if tag in ("python", "sh", "uffd"):
        return True
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return bool(lines) and all(COMMAND.match(ln) or not ln.startswith(("$", "uffdctl")) for ln in lines) and \
        COMMAND.match(lines[0]) is not None


def _not_run(cmd: str) -> str | None:
    return next((k for k in NOT_RUN if cmd.startswith(k)), None)


def _classified():
    """(runnable, not run): pytest params of the code blocks, and the blocks wholly in NOT_RUN."""
    run, skipped = [], []
    for path in DOCS:
        for n, tag, text in blocks(path):
            if tag == "c" or not is_code(tag, text):
                continue
            cmds = _commands(text) if tag not in ("python", "uffd") else []
            if cmds and all(_not_run(c) for c in cmds):
                skipped.append((path, n, [_not_run(c) for c in cmds]))
                continue
            # a block that starts a session, or Python, runs on each backend; `repro` picks its own
            both = tag in ("python", "uffd") or any(" session start" in " " + c for c in cmds) or not cmds
            for backend in (["kernel", "emu"] if both else ["own"]):
                run.append(pytest.param(path, n, tag, text, backend, id=f"{path}:{n}-{backend}"))
    return run, skipped


def code_blocks():
    return _classified()[0]


def _backend(name):
    if name == "kernel" and _kernel_reason():
        require_kernel(_kernel_reason())
    return name


def _run_python(text: str, backend: str, tmp_path):
    code = text if backend == "kernel" else text.replace('open_backend("kernel")', 'open_backend("emu")')
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))


def _commands(text: str) -> list[str]:
    out = []
    for ln in text.splitlines():
        if not COMMAND.match(ln):
            continue                                  # output shown under a `$ ` line
        ln = ln[2:] if ln.startswith("$ ") else ln
        out.append(ln.split(" #", 1)[0].strip())
    return out


@pytest.mark.parametrize("path, lineno, tag, text, backend", code_blocks())
def test_doc_block_runs(path, lineno, tag, text, backend, tmp_path):
    backend = _backend(backend) if backend != "own" else "auto"
    where = f"{path}:{lineno}"
    if tag == "python":
        p = _run_python(text, backend, tmp_path)
        assert p.returncode == 0, f"{where} ({backend}):\n{p.stdout}\n{p.stderr}"
        return
    env = dict(os.environ, UFFDCTL_RUNTIME_DIR=str(tmp_path / "rt"), UFFDCTL=BIN,
               PATH=os.path.dirname(BIN) + os.pathsep + os.environ.get("PATH", ""), UFFDCTL_BACKEND=backend)
    env.pop("UFFDCTL_SESSION", None)
    if tag == "uffd" or (not COMMAND.match(text.lstrip()) and tag != "sh"):
        p = subprocess.run([BIN, "run", "--backend", backend, "-"], input=text, capture_output=True, text=True,
                           timeout=120, env=env, cwd=str(tmp_path))
        if backend == "emu" and p.returncode == 4 and "not modelled:" in p.stderr:
            return   # what the emulator does not model yet says so (exit 4): the documented answer there
        assert p.returncode == 0, f"{where} ({backend}):\n{p.stdout}\n{p.stderr}"
        return
    ran = 0
    try:
        for cmd in _commands(text):
            if _not_run(cmd):
                continue
            argv = shlex.split(cmd)
            if argv[0].endswith("uffdctl"):
                argv[0] = BIN
                if argv[1:3] == ["session", "start"]:
                    argv += ["--backend", backend]
            else:
                argv[0] = os.path.join(ROOT, argv[0])
            p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
            ok = EXPECTED_RC.get(argv[1] if len(argv) > 1 else "", (0,))
            assert p.returncode in ok, f"{where} ({backend}): `{cmd}` exit {p.returncode}\n{p.stdout}\n{p.stderr}"
            assert "Traceback" not in p.stderr, p.stderr
            ran += 1
    finally:
        subprocess.run([BIN, "session", "stop"], capture_output=True, env=env, timeout=60)
    assert ran, where


def test_every_block_is_classified():
    """Each code block runs here, or every command in it is in NOT_RUN (the README's `make demo` / `make test`
    block, the vmtest commands, the C reproducer): nothing else is left out."""
    run, skipped = _classified()
    assert {(p.values[0], p.values[2]) for p in run} >= {("README.md", "python"), ("README.md", "sh")}
    assert {path for path, _, _ in skipped} <= {"README.md", "docs/vmtest.md", "docs/pagemap-scan-walk-end.md"}
    assert all(reasons for _, _, reasons in skipped)
