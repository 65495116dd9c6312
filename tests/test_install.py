"""Packaging: the wheel carries the compiled module, and without a compiler it still installs (emulator only)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wheel(tmp_path, env_extra: dict) -> str:
    if not os.path.exists(os.path.join(ROOT, ".git")):  # a directory in a clone, a file in a worktree
        pytest.skip("not a git checkout: cannot export the tree")
    src = tmp_path / "src"
    src.mkdir()
    tar = subprocess.run(["git", "-C", ROOT, "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    env = dict(os.environ, **env_extra)
    out = tmp_path / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                        "-w", str(out), str(src)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "project.license" not in p.stderr, "the build prints setuptools' license deprecation banner"
    (whl,) = [str(out / f) for f in os.listdir(out)]
    return whl


def _run_installed(tmp_path, whl: str, code: str) -> str:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), whl],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.slow
def test_wheel_without_compiler_is_emulator_only(tmp_path):
    whl = _wheel(tmp_path, {"CC": "/bin/false"})
    assert not [n for n in zipfile.ZipFile(whl).namelist() if "_uffd" in n]
    out = _run_installed(tmp_path, whl, (
        "import uffdctl._native as n; from uffdctl import open_backend\n"
        "ok, why = n.available(); print(ok); print(why); print(open_backend('auto').name)"))
    ok, why, name = out.splitlines()
    assert ok == "False" and "only the emulation backend is available" in why
    assert name == "emu"


@pytest.mark.slow
def test_wheel_carries_native_module(tmp_path):
    whl = _wheel(tmp_path, {})
    assert [n for n in zipfile.ZipFile(whl).namelist() if n.startswith("uffdctl/_uffd") and n.endswith(".so")]
    assert [n for n in zipfile.ZipFile(whl).namelist() if n.startswith("uffdctl/_fastpath") and n.endswith(".so")]
    assert not [n for n in zipfile.ZipFile(whl).namelist() if "_ffi_build" in n]  # build code is not shipped
    out = _run_installed(tmp_path, whl, "import uffdctl._native as n; print(n.available()[0])")
    assert out.strip() == "True"
