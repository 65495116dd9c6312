"""The command line: light start-up, --help everywhere, pinned JSON keys, malformed input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from test_cli_support import BIN, cli, need_kernel, session  # noqa: F401  (fixtures)
from uffdctl.cli import LOCAL, cli as root
from uffdctl.session.commands import COMMANDS

# -- start-up and help -----------------------------------------------------------------------


def test_help_does_not_load_cffi_or_open_a_uffd(tmp_path):
    code = ("import sys\nfrom uffdctl.cli import main\nrc = main(['--help'])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('cffi', 'psutil')"
            " or m in ('uffdctl._uffd', 'uffdctl.kernel')]\n"
            "print('BAD', bad, rc, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "BAD [] 0" in p.stderr, p.stderr
    assert "Example" in p.stdout
    # and -X importtime agrees: cffi is never imported
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "uffdctl", "--help"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 0
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in p.stderr.splitlines() if "|" in ln}
    assert "click" in imported
    assert not {m for m in imported if m.split(".")[0] == "cffi" or m == "uffdctl._uffd"}


def _all_commands():
    names = sorted(set(LOCAL) | set(COMMANDS))
    out = [[n] for n in names]
    out += [["session", s] for s in ("start", "list", "status", "stop")]
    return out


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda a: "-".join(a))
def test_every_command_has_help_with_an_example(argv):
    r = CliRunner().invoke(root, [*argv, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output and "uffdctl" in r.output
    assert "Usage: " in r.output


def test_root_help_documents_exit_codes_and_completion():
    r = CliRunner().invoke(root, ["--help"])
    assert r.exit_code == 0
    assert "_UFFDCTL_COMPLETE" in r.output
    assert "4 unsupported here" in r.output


def test_python_m_uffdctl_works(tmp_path):
    p = subprocess.run([sys.executable, "-m", "uffdctl", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and "version" in p.stdout


def test_completion_script_is_generated(tmp_path):
    p = subprocess.run([BIN], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, _UFFDCTL_COMPLETE="bash_source"))
    assert p.returncode == 0 and "_uffdctl_completion" in p.stdout


# -- pinned JSON keys ----------------------------------------------------------------------------

ENTRY_KEYS = {"addr", "raw", "pfn", "present", "swap", "file", "guard", "uffd_wp", "exclusive", "soft_dirty",
              "index", "zero", "marker", "symbol"}
TOUCH_KEYS = {"touch", "proc", "thread", "tid", "start", "len", "write", "finished", "blocked"}
FINISHED_KEYS = TOUCH_KEYS | {"minflt", "majflt", "sigbus", "si_code", "fault_addr", "ns"}
EVENT_KEYS = {"seq", "event", "ts_ns", "flags", "flags_decoded", "address", "ptid", "action", "err", "result",
              "region", "page", "uffd", "proc", "at"}
REGION_KEYS = {"name", "start", "len", "type", "page_size"}


def keys(d):
    return set(d)


def test_json_keys_of_every_command(session):
    c = session
    r = c.j("api", "--features", "thread_id")
    assert keys(r) == {"api", "features", "ioctls", "features_decoded", "ioctls_decoded", "uffd"}
    assert r["api"] == 0xAA
    assert keys(c.j("mmap", "--size", "16K", "--name", "stage")) == REGION_KEYS
    r = c.j("register", "buf", "--mode", "missing,wp")
    assert keys(r) == {"start", "len", "mode", "mode_decoded", "ioctls", "ioctls_decoded"}
    assert r["mode"] == 3 and r["ioctls"] == 0x17c          # spec 3.3, [E B2]
    r = c.j("touch", "buf:3", "--write")
    assert keys(r) == TOUCH_KEYS and r["blocked"] == 1
    r = c.j("events")
    assert keys(r) == {"events", "next"}
    ev = r["events"][-1]
    assert keys(ev) == EVENT_KEYS
    assert ev["event"] == "pagefault" and ev["region"] == "buf" and ev["page"] == 3 and ev["flags"] & 1
    r = c.j("faults")
    assert keys(r) == {"threads"}
    assert keys(r["threads"][0]) == {"thread", "tid", "minflt", "majflt", "access_minflt",
                                             "access_majflt", "blocked", "touch", "address"}
    assert r["threads"][0]["blocked"] == 1
    r = c.j("copy", "buf:3", "--fill", "0x41")
    assert keys(r) == {"dst", "src", "len", "mode", "copy", "source"} and r["copy"] == 4096
    r = c.j("wait", "--timeout", "5")
    assert keys(r) == FINISHED_KEYS and r["finished"] == 1 and r["sigbus"] == 0
    assert keys(c.j("touches")) == {"touches"}
    r = c.j("pagemap", "buf:3")
    assert keys(r) == {"start", "len", "region", "zero_pfn", "entries", "index", "pages", "counts", "runs"}
    assert keys(r["entries"][0]) == ENTRY_KEYS and r["entries"][0]["present"] == 1
    assert keys(c.j("zeropage", "buf:4")) == {"start", "len", "mode", "zeropage"}
    assert c.j("pagemap", "buf:4")["entries"][0]["zero"] == 1
    assert keys(c.j("writeprotect", "buf:3", "--on")) == {"start", "len", "mode"}
    assert keys(c.j("wake", "buf:3")) == {"start", "len"}
    assert keys(c.j("poison", "buf:5")) == {"start", "len", "mode", "updated"}
    c.j("touch", "stage:0", "--write", "--wait")
    assert keys(c.j("move", "buf:6", "--src", "stage:0")) == {"dst", "src", "len", "mode", "move"}
    assert keys(c.j("unregister", "buf")) == {"start", "len"}
    r = c.j("scan", "buf")
    assert keys(r) == {"walk_end", "regions", "start", "len", "flags", "return_mask", "category_mask",
                       "category_anyof_mask", "category_inverted", "n"}
    assert keys(r["regions"][0]) == {"start", "end", "categories", "categories_decoded"}
    assert keys(c.j("clear-refs", "1")) == {"value"}
    assert keys(c.j("madvise", "buf:4", "--advice", "dontneed")) == {"start", "len", "advice"}
    assert c.j("pagemap", "buf:4")["entries"][0]["present"] == 0
    assert keys(c.j("handler", "--policy", "zeropage")) == {"missing", "wp", "minor", "src", "fill", "running",
                                                            "stats", "uffd", "base", "unread"}
    r = c.j("regions")
    assert keys(r["regions"][0]) == REGION_KEYS | {"mode", "mode_decoded", "vmas", "present", "private_dirty"}
    c.j("mmap", "--size", "16K", "--type", "shmem", "--name", "sh")
    r = c.j("alias", "sh", "--name", "cache")
    assert keys(r) == REGION_KEYS | {"alias_of"}
    c.j("register", "sh", "--mode", "minor")
    c.j("touch", "cache:0", "--write", "--wait")
    assert keys(c.j("continue", "sh:0")) == {"start", "len", "mode", "mapped"}
    r = c.j("status")
    assert keys(r) == {"name", "backend", "profile", "selection", "uptime_s", "uffd", "regions", "threads",
                       "blocked", "events", "policy", "pid", "rss", "socket"}
    assert keys(c.j("munmap", "stage")) == {"start", "len", "name"}
    r = c.j("session", "list")
    assert keys(r["sessions"][0]) == {"name", "state", "pid", "uptime_s", "rss", "backend", "regions", "blocked"}


def test_events_follow_prints_json_lines(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    c("touch", "buf:0", "--read", check=0)
    c("touch", "buf:1", "--read", "--thread", "t2", check=0)
    p = c("-j", "events", "--follow", "--count", "2", check=0, timeout=20)
    lines = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert [e["seq"] for e in lines] == [1, 2]
    assert {e["page"] for e in lines} == {0, 1}


def test_errors_in_json_mode_are_an_error_document(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    c("copy", "buf:0", check=0)
    p = c("-j", "copy", "buf:0", check=1)
    err = json.loads(p.stdout)["error"]
    assert {"type", "errno", "ioctl", "message", "start", "len", "done", "errno_name"} <= set(err)
    assert err["type"] == "PageExists" and err["errno"] == 17 and err["ioctl"] == "UFFDIO_COPY" and err["done"] == -17
    p = c("-p", "copy", "nope", check=2)
    assert json.loads(p.stdout)["error"]["type"] == "UsageError"
    p = c("-j", "copy", "buf:0", "--bogus", check=2)
    assert json.loads(p.stdout)["error"]["type"] == "UsageError"


def test_partial_progress_is_reported(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    c("copy", "buf:2", check=0)
    err = json.loads(c("-j", "copy", "buf:1-3", check=1).stdout)["error"]
    assert err["errno_name"] == "EAGAIN" and err["done"] == 4096     # spec 3.2: partial -> EAGAIN, copy=bytes


def test_pagemap_map_grid(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    c("copy", "buf:0", check=0)
    c("zeropage", "buf:2", check=0)
    out = c("pagemap", "buf", "--map", check=0).stdout
    grid = out.splitlines()[1].split()[1]
    assert grid == "P.Z............." and "legend" in out


def test_pagemap_large_range_is_a_run_length_summary(session):
    """1 GiB (262,144 pages) in one command: counts and runs that cover the range exactly, symbols for --map,
    no per-page entries; the runs agree with the per-page entries of a sub-range."""
    c = session
    c.j("mmap", "--size", "1G", "--name", "big")
    for page in (0, 1, 2, 100, 262143):
        c.j("touch", f"big:{page}", "--write")
    r = c.j("pagemap", "big")
    assert r["pages"] == 262144 and "entries" not in r
    assert r["counts"]["present"] == 5
    assert sum(u["pages"] for u in r["runs"]) == 262144
    assert [(u["index"], u["pages"], "present" in u["flags"]) for u in r["runs"]] == [
        (0, 3, True), (3, 97, False), (100, 1, True), (101, 262042, False), (262143, 1, True)]
    assert len(r["symbols"]) == 262144 and r["symbols"].count("P") == 5
    small = c.j("pagemap", "big:0-127")["entries"]
    assert [e["index"] for e in small if e["present"]] == [0, 1, 2, 100]
    out = c("pagemap", "big", check=0).stdout
    assert "262144 pages in 5 runs" in out and "present=5" in out


# -- malformed invocations -------------------------------------------------------------------------


def _malformed(addr):
    return [
        (2, ["copy"]), (2, ["copy", "buf", "--bogus"]), (2, ["copy", "nope"]), (2, ["copy", "buf:99"]),
        (2, ["copy", "buf:5-2"]), (2, ["copy", "buf:x"]), (2, ["copy", "0x1000+4096"]),
        (2, ["copy", f"{addr + 1:#x}+4096"]), (2, ["copy", f"{addr:#x}+100"]), (2, ["copy", f"{addr:#x}+1M"]),
        (2, ["copy", f"{addr:#x}+0"]),
        (2, ["copy", "buf:0", "--fill", "300"]), (2, ["copy", "buf:0", "--fill", "zz"]),
        (2, ["copy", "buf:0", "--src", "nope"]), (2, ["copy", "buf:0-1", "--src", "buf:2"]),
        (2, ["mmap", "--size", "0"]), (1, ["mmap", "--size", "1T"]), (2, ["mmap", "--size", "abc"]),
        (2, ["mmap", "--size", "64K", "--type", "bogus"]), (2, ["mmap", "--size", "64K", "--name", "buf"]),
        (2, ["mmap", "--size", "64K", "--name", "9bad"]), (2, ["mmap", "--size", "1000"]), (2, ["mmap"]),
        (2, ["register", "buf", "--mode", "foo"]), (2, ["register", "buf"]), (2, ["writeprotect", "buf"]),
        (2, ["touch", "buf:0"]), (2, ["touch", "buf:0", "--read", "--write"]),
        (2, ["touch", "buf:0", "--read", "--timeout", "abc"]), (2, ["touch", "nope:0", "--read"]),
        (2, ["touch", "buf:0", "--read", "--thread", "a b"]),
        (2, ["clear-refs", "7"]), (2, ["clear-refs", "x"]), (2, ["scan", "buf", "--category-mask", "bogus"]),
        (2, ["pagemap", "buf:16"]), (2, ["munmap", "nope"]), (2, ["events", "--since", "-1"]),
        (2, ["handler", "--policy", "bogus"]), (2, ["handler", "--policy", "copy"]),
        (2, ["move", "buf:0", "--src", "buf:1-2"]), (2, ["nosuchcommand"]), (2, ["--session", "bad/name", "regions"]),
        (2, ["api", "--features", "bogus"]), (2, ["wait", "99"]), (2, ["unregister", "buf:0-99"]),
        (2, ["alias", "buf"]), (2, ["session", "start", "--name", "t"]), (2, ["run", "/nonexistent/x.uffd"]),
        (1, ["--session", "nosuch", "regions"]), (1, ["continue", "buf:0"]),
        (1, ["move", "buf:0", "--src", "buf:1"]), (1, ["writeprotect", "buf:0", "--on"]),
        (1, ["api"]), (4, ["copy", "buf:0", "--access-likely"]), (4, ["zeropage", "buf:0", "--write-likely"]),
        (2, ["munmap", "buf"]),                      # a touch is blocked in it (see below)
        (2, ["pagemap", "big:262144"]),              # one page past the end of a 1 GiB region
    ]


def _snapshot(c):
    st = c.j("status")
    for k in ("uptime_s", "rss"):
        st.pop(k)
    regs = c.j("regions")["regions"]
    for r in regs:
        r.pop("private_dirty")      # smaps: the daemon's own heap moves
    pm = c.j("pagemap", "buf")["entries"]
    return st, regs, pm, c.j("events"), c.j("touches")


def test_malformed_invocations(session):
    c = session
    c.j("api")                      # the uffd exists before: a failing command must not change anything
    c.j("register", "buf", "--mode", "missing")
    assert c.j("touch", "buf:15", "--read")["blocked"] == 1
    c.j("mmap", "--size", "1G", "--name", "big")
    addr = c.j("regions")["regions"][0]["start"]
    before = _snapshot(c)
    cases = _malformed(addr)
    assert len(cases) >= 40
    for rc, argv in cases:
        p = c(*argv)
        what = f"uffdctl {' '.join(argv)}: rc {p.returncode}, stderr {p.stderr!r}"
        assert p.returncode == rc, what
        assert "Traceback" not in p.stderr + p.stdout, what
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error:" in lines[0], what
        assert p.stdout == "", what
    assert _snapshot(c) == before


def test_no_session_is_a_one_line_error(cli):
    p = cli("regions")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no session is running" in p.stderr


def test_bare_groups_print_their_help(cli):
    for argv in ([], ["session"]):
        p = cli(*argv)
        assert p.returncode == 2 and p.stdout.startswith("Usage: ") and p.stderr == ""


def test_session_names_complete(cli, tmp_path):
    os.makedirs(cli.rtdir, mode=0o700)
    open(os.path.join(cli.rtdir, "alpha.sock"), "w").close()
    p = cli(env={"COMP_WORDS": "uffdctl --session a", "COMP_CWORD": "2", "_UFFDCTL_COMPLETE": "bash_complete"})
    assert p.stdout.split() == ["plain,alpha"]
