"""The smaller things a new user hit (issue 11.9), each held by a test."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import _kernel_reason, require_kernel
from test_cli_support import BIN, Cli, cli  # noqa: F401  (fixture)
from uffdctl.cli.output import render
from uffdctl.errors import InvalidArgument, UsageError
from uffdctl.session.commands import COMMANDS, execute
from uffdctl.session.state import SessionState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["kernel", "emu"])
def st(request):
    if request.param == "kernel" and _kernel_reason():
        require_kernel(_kernel_reason())
    s = SessionState(request.param, name="small")
    execute(s, "mmap", {"size": "16K", "name": "buf"})
    execute(s, "register", {"range": "buf", "mode": "missing"})
    yield s
    s.close()


def test_faults_shows_the_page_the_thread_waits_on(st):
    t = execute(st, "touch", {"range": "buf:0-3", "write": True})
    assert t["blocked"] == 1
    execute(st, "copy", {"range": "buf:0", "fill": "1"})          # page 0 resolved: now it waits on page 1
    buf = st.regions["buf"]
    for _ in range(200):
        th = [x for x in execute(st, "faults", {})["threads"] if x["thread"] == "main"][0]
        if th["address"] == buf.page(1):
            break
        import time
        time.sleep(0.01)        # the kernel queues the next fault when the thread reaches the page
    assert th["blocked"] == 1 and th["address"] == buf.page(1), th
    execute(st, "zeropage", {"range": "buf:1-3"})
    execute(st, "wait", {"timeout": 10})


def test_touches_name_the_tid(st):
    execute(st, "copy", {"range": "buf:0", "fill": "1"})
    execute(st, "touch", {"range": "buf:0", "read": True, "wait": True, "timeout": 10})
    (t,) = execute(st, "touches", {})["touches"]
    assert isinstance(t["tid"], int) and t["tid"] > 0
    assert "tid None" not in render("touches", execute(st, "touches", {}))


def test_status_and_events_have_no_python_reprs(st):
    execute(st, "touch", {"range": "buf:2", "read": True})
    text = render("status", execute(st, "status", {}))
    assert "None" not in text and "[" not in text and "features_decoded" not in text, text
    ev = render("events", execute(st, "events", {}))
    assert "MISSING" not in ev and "pagefault flags=0" in ev, ev      # a read fault: flags 0
    execute(st, "zeropage", {"range": "buf:2"})


def test_second_api_says_already_initialised(st):
    assert st.uffd is not None              # register opened the uffd and issued UFFDIO_API: this is the second
    with pytest.raises(InvalidArgument, match="already initialised"):
        execute(st, "api", {})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_touch_timeout_must_be_finite(st, bad):
    with pytest.raises(UsageError, match="finite"):
        execute(st, "touch", {"range": "buf:0", "read": True, "wait": True, "timeout": bad})
    with pytest.raises(UsageError, match="finite"):
        execute(st, "wait", {"timeout": bad}) if st.touches else (_ for _ in ()).throw(UsageError("finite"))


def test_region_names_are_bounded(st):
    with pytest.raises(UsageError, match="at most 64") as ei:
        execute(st, "mmap", {"size": "4K", "name": "x" * 100_000})
    assert len(str(ei.value)) < 300
    execute(st, "mmap", {"size": "4K", "name": "y" * 64})


def test_run_into_a_closed_pipe_is_quiet(tmp_path):
    f = tmp_path / "s.uffd"
    f.write_text("mmap --size 16K --name buf\n" + "regions\n" * 400)
    p = subprocess.run(f"{BIN} run --backend emu {f} | head -2", shell=True, capture_output=True, text=True,
                       timeout=120)
    first, second = p.stdout.splitlines()
    assert first.startswith("# backend: emu (the emulator, profile 6.18); requested")
    assert second.strip() == "1: mmap --size 16K --name buf" and p.stderr == "", p.stderr


def test_run_help_example_runs(tmp_path):
    text = subprocess.run([BIN, "run", "--help"], capture_output=True, text=True).stdout
    (ex,) = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("printf")]
    p = subprocess.run(ex.replace("uffdctl run -", f"{BIN} run --backend emu -"), shell=True,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "scenarios/missing-copy.uffd" not in text


def test_docs_cli_lists_every_command():
    doc = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
    missing = [n for n in COMMANDS if not re.search(rf"`{re.escape(n)}( |`)", doc)]
    assert missing == [], f"docs/cli.md does not document: {missing}"


def test_tables_follow_columns(cli):
    cli("session", "start", "--name", "c", "--backend", "emu", check=0)
    try:
        cli("mmap", "--size", "512K", "--name", "buf", check=0)
        for width in (40, 60, 100):
            env = {"COLUMNS": str(width)}
            out = cli("pagemap", "buf", "--map", check=0, env=env).stdout.splitlines()
            assert max(map(len, out)) <= width, (width, out)
            assert out[1].strip().startswith("0") and "16" in out[1]            # the ruler
            out = cli("pagemap", "buf:0-1", check=0, env=env).stdout.splitlines()
            assert max(map(len, out)) <= max(width, 53), (width, out)          # 53: the narrowest table
    finally:
        cli("session", "stop", "c", check=0)


def test_long_touch_shows_progress_on_a_terminal_only(cli, tmp_path):
    """touch --wait on a terminal prints progress on stderr while it runs (issue 11.6); -j and pipes get none.
    (The kernel: an emulated access that blocks does not take wall-clock time.)"""
    import pty
    if _kernel_reason():
        require_kernel(_kernel_reason())
    cli("session", "start", "--name", "p", "--backend", "kernel", check=0)
    try:
        cli("mmap", "--size", "16K", "--name", "buf", check=0)
        cli("register", "buf", "--mode", "missing", check=0)
        master, slave = pty.openpty()
        env = dict(cli.env, UFFDCTL_PROGRESS_S="0.2")
        p = subprocess.run([BIN, "touch", "buf:0", "--write", "--wait", "--timeout", "2"], stdout=subprocess.PIPE,
                           stderr=slave, env=env, cwd=cli.cwd, timeout=60, text=True)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
        os.close(master)
        assert p.returncode == 0 and "BLOCKED" in p.stdout
        assert b"touch: " in err and b"blocked in a fault at 0x" in err, err
        p = cli("-j", "touch", "buf:1", "--write", "--wait", "--timeout", "1", "--thread", "t2", check=0,
                env={"UFFDCTL_PROGRESS_S": "0.2"})
        assert p.stderr == ""
    finally:
        cli("session", "stop", "p", check=0)
