"""An unprivileged user (uid 65534) with vm.unprivileged_userfaultfd=0 can use uffdctl end to end (issue 11.5).

The kernel then allows only UFFD_USER_MODE_ONLY uffds (userfaultfd_syscall_allowed(): no CAP_SYS_PTRACE,
sysctl 0) and /dev/userfaultfd is root's.  The kernel backend falls back to user-mode-only by itself and
says so; ``check`` exits 4 naming the cure; sessions live in a runtime directory the user can create;
a runtime directory it cannot create is an error naming UFFDCTL_RUNTIME_DIR.

uid 65534 cannot enter /root (0700), where the test venv lives, so the installed package and its
dependencies are copied to a world-readable temporary directory and run with /usr/bin/python3.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import _kernel_reason, require_kernel

NOBODY = 65534
PYTHON = "/usr/bin/python3"
DEPS = ("uffdctl", "click", "psutil", "cffi", "pycparser", "_cffi_backend")

SCRIPT = """\
mmap --size 16K --name buf
register buf --mode missing
touch buf:0 --write
expect result blocked=1
expect event event=pagefault region=buf page=0
copy buf:0 --fill 0x41
wait
expect pagemap buf:0 present=1
"""


def _sysctl() -> str | None:
    try:
        return open("/proc/sys/vm/unprivileged_userfaultfd").read().strip()
    except OSError:
        return None


@pytest.fixture(scope="module")
def nobody():
    """A runner of ``python3 -m uffdctl ...`` as uid 65534 (module-scoped: the copy is made once)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        require_kernel("needs root and setpriv to run as uid 65534")
    if _kernel_reason():
        require_kernel(_kernel_reason())
    if _sysctl() != "0":
        pytest.skip(f"vm.unprivileged_userfaultfd={_sysctl()}: this test is about the sysctl being 0")
    probe = subprocess.run([PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(sys.version_info[:2]):
        require_kernel(f"{PYTHON} is not Python {sys.version_info[0]}.{sys.version_info[1]} (the compiled "
                       f"uffdctl._uffd is for that version): {probe.stdout.strip() or probe.stderr.strip()}")
    base = tempfile.mkdtemp(prefix="uffdctl-nobody-")
    try:
        os.chmod(base, 0o755)
        lib = os.path.join(base, "lib")
        os.mkdir(lib)
        for name in DEPS:
            spec = importlib.util.find_spec(name)
            origin = spec.origin
            if spec.submodule_search_locations:
                shutil.copytree(os.path.dirname(origin), os.path.join(lib, name),
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, lib)
        site = os.path.dirname(os.path.dirname(importlib.util.find_spec("uffdctl").origin))
        for d in os.listdir(site):
            if d.startswith("uffdctl-") and d.endswith(".dist-info"):    # the version `--version` reports
                shutil.copytree(os.path.join(site, d), os.path.join(lib, d))
        home = os.path.join(base, "home")
        os.mkdir(home)
        os.chown(home, NOBODY, NOBODY)
        subprocess.run(["chmod", "-R", "a+rX", lib], check=True)

        def run(*args, env=None, input=None, check=None, timeout=120):
            e = {"PATH": "/usr/bin:/bin", "HOME": home, "XDG_RUNTIME_DIR": home, "PYTHONPATH": lib}
            e.update(env or {})
            argv = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "env", "-i",
                    *(f"{k}={v}" for k, v in e.items()), PYTHON, "-m", "uffdctl", *map(str, args)]
            p = subprocess.run(argv, capture_output=True, text=True, cwd="/", input=input, timeout=timeout)
            if check is not None:
                assert p.returncode == check, f"{args}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
            assert "Traceback" not in p.stderr, p.stderr
            return p
        run.home = home
        assert run("--version").returncode == 0
        yield run
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_says_unsupported_with_the_cure(nobody):
    p = nobody("check", check=4)
    assert "kernel-mode faults: UNSUPPORTED" in p.stdout and "vm.unprivileged_userfaultfd=1" in p.stdout
    assert "BROKEN" not in p.stdout
    r = json.loads(nobody("-j", "check", check=4).stdout)
    assert [o["via"] for o in r["open"] if o["ok"]] == ["user-mode-only"]


def test_session_fault_resolved_by_copy(nobody):
    p = nobody("session", "start", "--name", "u", "--backend", "kernel", check=0)
    try:
        assert "UFFD_USER_MODE_ONLY" in p.stdout and "UFFD_USER_MODE_ONLY" in p.stderr   # said, once, on stderr
        nobody("mmap", "--size", "64K", "--name", "buf", check=0)
        nobody("register", "buf", "--mode", "missing", check=0)
        t = json.loads(nobody("-j", "touch", "buf:3", "--write", check=0).stdout)
        assert t["blocked"] == 1
        ev = json.loads(nobody("-j", "events", check=0).stdout)["events"]
        assert ev[-1]["event"] == "pagefault" and ev[-1]["page"] == 3
        nobody("copy", "buf:3", "--fill", "0x41", check=0)
        w = json.loads(nobody("-j", "wait", "--timeout", "30", check=0).stdout)
        assert w["finished"] == 1 and w["minflt"] >= 1
        pm = json.loads(nobody("-j", "pagemap", "buf:3", check=0).stdout)["entries"]
        assert pm[0]["present"] == 1
        s = json.loads(nobody("-j", "status", check=0).stdout)
        assert s["selection"]["user_mode_only"] == 1 and "EPERM" in s["selection"]["user_mode_only_reason"]
    finally:
        nobody("session", "stop", "u")


def test_run_a_script(nobody):
    p = nobody("-j", "run", "--backend", "kernel", "-", input=SCRIPT, check=0)
    r = json.loads(p.stdout)
    assert r["ok"] and r["backend"]["backend"] == "kernel" and r["backend"]["user_mode_only"] == 1
    nobody("run", "--backend", "kernel", "--user-mode-only", "-", input=SCRIPT, check=0)
    nobody("run", "--backend", "emu", "--user-mode-only", "-", input=SCRIPT, check=2)


def test_repro_on_the_kernel(nobody):
    """Every verdict matches its expectation; what uid 65534 cannot observe (tracefs) says why."""
    p = nobody("-j", "repro", "all", "--backend", "kernel", check=0, timeout=600)
    r = json.loads(p.stdout)
    assert r["exit"] == 0 and not r["failures"]
    for run in r["runs"]:
        if run["verdict"] == "UNSUPPORTED":
            assert run["reason"], run


def test_runtime_dir_errors_name_the_cure(nobody):
    p = nobody("session", "start", "--name", "z", env={"UFFDCTL_RUNTIME_DIR": "/run/uffdctl-not-creatable"},
               check=1)
    assert len(p.stderr.strip().splitlines()) == 1
    assert "cannot create the session runtime directory /run/uffdctl-not-creatable: Permission denied" in p.stderr
    assert "UFFDCTL_RUNTIME_DIR" in p.stderr and "Errno" not in p.stderr
    p = nobody("session", "start", "--name", "z", env={"UFFDCTL_RUNTIME_DIR": "/root"}, check=1)
    assert "belongs to uid 0" in p.stderr and "UFFDCTL_RUNTIME_DIR" in p.stderr


def test_default_runtime_dir_of_a_user(monkeypatch):
    from uffdctl.session import paths
    monkeypatch.delenv("UFFDCTL_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "getuid", lambda: NOBODY)
    assert paths.runtime_dir() == f"/tmp/uffdctl-{NOBODY}"
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert paths.runtime_dir() == "/run/uffdctl"
