"""scripts/session-demo.sh runs in CI: register, a blocking touch --write, the event, copy, the pagemap change."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_cli_support import need_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_session_demo_script(tmp_path, backend):
    if backend == "kernel":
        need_kernel()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               UFFDCTL_RUNTIME_DIR=str(tmp_path / "rt"), UFFDCTL_BACKEND=backend)
    env.pop("UFFDCTL_SESSION", None)
    p = subprocess.run(["sh", os.path.join(ROOT, "scripts", "session-demo.sh")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "BLOCKED" in p.stdout and "pagefault WRITE" in p.stdout and "session-demo: ok" in p.stdout
    assert os.listdir(tmp_path / "rt") == []          # stopped and cleaned
