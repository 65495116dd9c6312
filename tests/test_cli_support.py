"""Helpers for the CLI/session/script tests: run the installed ``uffdctl`` in a subprocess,
against a private runtime directory.  (No tests in this module.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import _kernel_reason, require_kernel

BIN = os.path.join(os.path.dirname(sys.executable), "uffdctl")


def need_kernel():
    reason = _kernel_reason()
    if reason:
        require_kernel(reason)


class Cli:
    """``uffdctl`` with UFFDCTL_RUNTIME_DIR set, run from a directory outside the checkout."""

    def __init__(self, rtdir, cwd):
        self.env = dict(os.environ, UFFDCTL_RUNTIME_DIR=str(rtdir))
        self.env.pop("UFFDCTL_SESSION", None)
        self.rtdir = str(rtdir)
        self.cwd = str(cwd)

    def __call__(self, *args, check=None, timeout=60, input=None, env=None) -> subprocess.CompletedProcess:
        e = dict(self.env, **(env or {}))
        p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, env=e, cwd=self.cwd,
                           timeout=timeout, input=input)
        if check is not None:
            assert p.returncode == check, f"uffdctl {' '.join(map(str, args))}: rc {p.returncode}\n" \
                                          f"stdout: {p.stdout}\nstderr: {p.stderr}"
        return p

    def j(self, *args, check=0, **kw):
        p = self("-j", *args, check=check, **kw)
        return json.loads(p.stdout)


@pytest.fixture
def cli(tmp_path):
    rt = tmp_path / "rt"
    c = Cli(rt, tmp_path)
    yield c
    # stop whatever the test left running (by pid file, our own processes only)
    if os.path.isdir(rt):
        for f in os.listdir(rt):
            if f.endswith(".pid"):
                try:
                    pid = int(open(os.path.join(rt, f)).read())
                    os.kill(pid, 9)
                except (OSError, ValueError):
                    pass


@pytest.fixture
def session(cli):
    """A live kernel-backed session named t, with a 16-page anon region ``buf``."""
    need_kernel()
    cli("session", "start", "--name", "t", "--backend", "kernel", check=0)
    try:
        cli("mmap", "--size", "64K", "--name", "buf", check=0)
        yield cli
    finally:                      # a failed setup must not leak the daemon
        cli("session", "stop", "t")
