"""The backend is never chosen silently (issue 11.2).

``auto`` is the kernel when it can serve, else the emulator; ``--profile`` / ``--soft-dirty`` mean the
emulator with ``auto`` and are a usage error with ``kernel``; after a fallback one line on stderr says
why, and every ``-j`` document of run / session start / status carries ``selection`` (requested, backend,
reason, fallback).  A missing native extension is reported as that.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import _kernel_reason, require_kernel
from test_cli_support import BIN, Cli, cli  # noqa: F401  (fixture)
from uffdctl import registry
from uffdctl.errors import BackendUnavailable, UsageError

SCRIPT = "mmap --size 16K --name buf\nregister buf --mode missing\ncopy buf:0 --fill 0x41\n" \
         "expect pagemap buf:0 present=1\n"


def test_emulator_options_with_the_kernel_are_a_usage_error():
    for kw in ({"profile": "5.19"}, {"soft_dirty": False}, {"soft_dirty": True}, {"switches": {"hints": "rfc"}}):
        with pytest.raises(UsageError, match="is for the emulator"):
            registry.open_backend("kernel", **kw)


def test_auto_with_emulator_options_means_the_emulator():
    b = registry.open_backend("auto", profile="5.19")
    assert b.name == "emu" and b.describe()["profile"] == "5.19"
    assert b.selection.requested == "auto" and not b.selection.fallback and "--profile 5.19" in b.selection.reason
    assert b.selection.notice() == "uffdctl: using the emulator backend: --profile 5.19 asks for the emulator"
    b = registry.open_backend("auto", soft_dirty=False)
    assert b.name == "emu" and b.describe()["soft_dirty"] is False and "--soft-dirty off" in b.selection.reason
    with pytest.raises(UsageError, match="unknown emulator profile"):
        registry.open_backend("auto", profile="9.9")
    with pytest.raises(UsageError, match="unknown backend"):
        registry.open_backend("qemu")


def test_auto_fallback_says_why(monkeypatch):
    def broken(opts):
        raise BackendUnavailable("cannot open a userfaultfd: [Errno 1] Operation not permitted")
    monkeypatch.setitem(registry._OPENERS, "kernel", broken)
    b = registry.open_backend("auto")
    assert b.name == "emu" and b.selection.fallback and "Operation not permitted" in b.selection.reason
    assert b.selection.notice().startswith("uffdctl: falling back to the emulator backend: kernel backend unavail")
    with pytest.raises(BackendUnavailable):
        registry.open_backend("kernel")


def test_auto_gives_the_kernel_where_it_serves():
    if _kernel_reason():
        require_kernel(_kernel_reason())
    b = registry.open_backend("auto")
    assert b.name == "kernel" and b.selection.requested == "auto" and b.selection.notice() is None
    b.close()


def test_run_profile_with_auto_runs_the_emulator_and_says_so(cli, tmp_path):
    f = tmp_path / "s.uffd"
    f.write_text(SCRIPT)
    p = cli("-j", "run", "--profile", "5.19", f, check=0)
    r = json.loads(p.stdout)
    assert r["ok"] and r["backend"]["backend"] == "emu" and r["backend"]["profile"] == "5.19"
    assert r["backend"]["requested"] == "auto" and "--profile 5.19" in r["backend"]["reason"]
    assert p.stderr.strip().splitlines() == ["uffdctl: using the emulator backend: --profile 5.19 asks for the "
                                             "emulator"]
    r = cli.j("run", "--backend", "emu", "--profile", "6.18", "--soft-dirty", "off", f)
    assert r["ok"] and r["backend"]["soft_dirty"] == 0 and r["backend"]["requested"] == "emu"
    p = cli("run", "--backend", "kernel", "--profile", "5.19", f, check=2)
    assert "is for the emulator" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    cli("run", "--backend", "kernel", "--soft-dirty", "on", f, check=2)
    p = cli("run", "--profile", "9.9", f, check=2)
    assert "unknown emulator profile" in p.stderr


def test_session_start_options(cli):
    p = cli("session", "start", "--name", "x", "--profile", "9.9", check=2)
    assert "unknown emulator profile" in p.stderr
    p = cli("session", "start", "--name", "x", "--backend", "kernel", "--soft-dirty", "off", check=2)
    assert cli.j("session", "list") == {"sessions": []}
    p = cli("session", "start", "--name", "e", "--soft-dirty", "off", check=0)
    try:
        assert "using the emulator backend: --soft-dirty off asks for the emulator" in p.stderr
        s = cli.j("status")
        assert s["backend"] == "emu" and s["selection"]["soft_dirty"] == 0 and s["selection"]["requested"] == "auto"
        assert "soft-dirty off; auto: --soft-dirty off" in cli("status", check=0).stdout
    finally:
        cli("session", "stop", "e", check=0)


def test_a_missing_native_extension_is_reported_as_that(cli, tmp_path):
    """With uffdctl._uffd unimportable (as after an install without a C compiler), auto falls back and says
    the extension is missing; --backend kernel says so with exit 4."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""\
        import sys
        class _NoNative:
            def find_spec(self, name, path=None, target=None):
                if name == "uffdctl._uffd":
                    raise ImportError("No module named 'uffdctl._uffd' (hidden by the test)")
        sys.meta_path.insert(0, _NoNative())
        """))
    env = {"PYTHONPATH": str(site)}
    f = tmp_path / "s.uffd"
    f.write_text(SCRIPT)
    p = cli("-j", "run", f, check=0, env=env)
    r = json.loads(p.stdout)
    assert r["ok"] and r["backend"]["backend"] == "emu" and r["backend"]["fallback"] == 1
    assert "native extension uffdctl._uffd is not built" in r["backend"]["reason"]
    assert len(p.stderr.strip().splitlines()) == 1 and "falling back to the emulator" in p.stderr
    assert "native extension uffdctl._uffd is not built" in p.stderr and "soft-dirty" not in p.stderr
    p = cli("run", "--backend", "kernel", f, check=4, env=env)
    assert "native extension uffdctl._uffd is not built" in p.stderr
