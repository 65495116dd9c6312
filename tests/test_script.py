"""``uffdctl run``: the script language, its expectations, and its errors."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from conftest import _kernel_reason, require_kernel
from test_cli_support import cli, need_kernel  # noqa: F401  (fixtures)
from uffdctl.script import run_file


def _runner(tmp_path, backend):
    def _run(text, **kw):
        f = tmp_path / "s.uffd"
        f.write_text(textwrap.dedent(text))
        return run_file(str(f), backend=backend, **kw)
    _run.backend = backend
    return _run


@pytest.fixture
def run(tmp_path):
    need_kernel()
    return _runner(tmp_path, "kernel")


@pytest.fixture(params=["kernel", "emu"])
def run_any(request, tmp_path):
    """The same script on the real kernel and on the emulator (profile 6.18)."""
    if request.param == "kernel":
        need_kernel()
    return _runner(tmp_path, request.param)


MISSING_COPY = """\
    # a missing fault, resolved by hand
    mmap --size 64K --name buf
    register buf --mode missing,wp
    expect result ioctls=0x17c
    touch buf:3 --write          # blocks
    expect result blocked=1
    expect event event=pagefault region=buf page=3 flags=1
    expect pagemap buf:3 present=0
    copy buf:3 --fill 0x41
    expect result copy=4096
    wait --timeout 5
    expect result finished=1 sigbus=0
    expect faults main minor=+1
    expect pagemap buf:3 present=1 uffd_wp=0 zero=0
    expect pagemap buf:4-15 present=0
    copy buf:3
    expect errno EEXIST
    zeropage buf:4
    expect pagemap buf:4 present=1 zero=1
    touch buf:4 --read --wait
    expect faults main minor=+0
    writeprotect buf:3 --on
    expect pagemap buf:3 uffd_wp=1
"""


WP_THEN_POLICY = """\
    # a write-protect fault resolved with writeprotect --off, then a handler policy
    mmap --size 16K --name buf
    register buf --mode missing,wp
    zeropage buf:2
    writeprotect buf:2 --on
    expect pagemap buf:2 uffd_wp=1 zero=1
    touch buf:2 --write
    expect result blocked=1
    expect event event=pagefault flags=3 page=2 action=queue
    writeprotect buf:2 --off
    wait
    expect result finished=1
    expect faults main minor=+1
    expect pagemap buf:2 uffd_wp=0 zero=0 present=1
    handler --policy zeropage
    touch buf:3 --read --wait --thread t2
    expect event flags=0 page=3 action=zeropage
    expect pagemap buf:3 zero=1
    expect faults t2 minor=+1
    poison buf:1
    expect pagemap buf:1 marker=1 present=0
    touch buf:1 --read --wait
    expect result sigbus=1
"""


def test_wp_fault_and_handler_policy(run_any):
    res = run_any(WP_THEN_POLICY)
    assert res["ok"], res.get("error")


def test_a_script_with_expectations_runs(run_any):
    res = run_any(MISSING_COPY)
    assert res["ok"], res.get("error")
    assert res["exit"] == 0
    assert [ln["line"] for ln in res["lines"]][:3] == [2, 3, 4]


def test_a_failed_expectation_names_the_line_and_the_diff(run):
    res = run("""\
        mmap --size 16K --name buf
        register buf --mode missing
        zeropage buf:1
        expect pagemap buf:0-1 present=1
        mmap --size 16K --name never
    """)
    assert not res["ok"] and res["exit"] == 1
    e = res["error"]
    assert e["line"] == 4 and e["type"] == "ExpectationFailed"
    assert "page 0" in e["message"] and "present: expected 1, actual 0" in e["message"]
    assert "page 1" not in e["message"]
    assert all(ln["line"] != 5 for ln in res["lines"])     # stopped there


def test_expect_faults_diff(run):
    res = run("""\
        mmap --size 16K --name buf
        touch buf:0-1 --write --wait
        expect faults main minor=+5
    """)
    assert res["error"]["line"] == 3
    assert "expected change +5, actual +2" in res["error"]["message"]


def test_expect_errno_mismatch_and_success(run):
    res = run("""\
        mmap --size 16K --name buf
        zeropage buf:0
        expect errno EEXIST
    """)
    assert res["error"]["line"] == 3 and "expected errno EEXIST, actual: ENOENT" in res["error"]["message"]
    res = run("""\
        mmap --size 16K --name buf
        register buf --mode missing
        expect errno EINVAL
    """)
    assert "actual: success" in res["error"]["message"]


def test_a_failing_command_stops_the_script(run):
    res = run("""\
        mmap --size 16K --name buf
        continue buf:0
        mmap --size 16K --name never
    """)
    assert not res["ok"] and res["exit"] == 1 and res["error"]["line"] == 2
    assert "UFFDIO_CONTINUE" in res["error"]["message"] and res["error"]["errno_name"] == "ENOENT"


@pytest.mark.parametrize("text, line, needle", [
    ("mmap --size 16K --name buf\nfrobnicate buf\n", 2, "unknown command 'frobnicate'"),
    ("mmap --size 16K --bogus\n", 1, "No such option"),
    ("mmap --size 16K --name 'buf\n", 1, "cannot parse line"),
    ("mmap --size 16K --name buf\nexpect nonsense\n", 2, "unknown expectation"),
    ("mmap --size 16K --name buf\nexpect pagemap buf:0 present\n", 2, "key=value"),
    ("mmap --size 16K --name buf\nexpect pagemap buf:0 bogus=1\n", 2, "unknown pagemap field"),
    ("mmap --size 16K --name buf\nexpect pagemap nope:0 present=1\n", 2, "unknown region"),
    ("mmap --size 16K --name buf\nexpect faults nobody minor=1\n", 2, "unknown thread"),
    ("mmap --size 16K --name buf\nexpect errno EWHATEVER\n", 2, "unknown errno"),
    ("mmap --size 0\n", 1, "must be > 0"),
    ("mmap --size 16K --name buf\ncopy buf:9\n", 2, "outside region"),
    ("mmap --size 16K --name buf\nexpect\n", 2, "expect what"),
    ("mmap --help\n", 1, "--help"),
])
def test_malformed_script_lines(run, text, line, needle):
    res = run(text)
    assert not res["ok"] and res["exit"] == 2, res
    assert res["error"]["line"] == line and needle in res["error"]["message"], res["error"]


def test_uffdctl_run_cli(cli, tmp_path):
    need_kernel()
    f = tmp_path / "ok.uffd"
    f.write_text(textwrap.dedent(MISSING_COPY))
    p = cli("run", "--backend", "kernel", f, check=0)
    assert "  3: register buf --mode missing,wp" in p.stdout and "BLOCKED" in p.stdout
    assert p.stdout.splitlines()[0].startswith(f"# backend: kernel {os.uname().release}; requested; soft-dirty: ")
    r = cli.j("run", "--backend", "kernel", f)
    assert r["ok"] is True and r["exit"] == 0 and len(r["lines"]) > 10
    bad = tmp_path / "bad.uffd"
    bad.write_text("mmap --size 16K --name buf\nexpect pagemap buf:0 present=1\n")
    p = cli("run", "--backend", "kernel", bad)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("uffdctl run: error: line 2: page 0")
    p = cli("-j", "run", "--backend", "kernel", bad, check=1)
    assert json.loads(p.stdout)["error"]["line"] == 2
    p = cli("run", tmp_path / "missing.uffd", check=2)
    assert "cannot read" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = cli("run", "--backend", "kernel", "-", input="mmap --size 4K --name x\nexpect result len=4096\n", check=0)


def test_rfc_hints_only_on_the_emulator_profile(tmp_path):
    hinted = "mmap --size 16K --name buf\nregister buf --mode missing\ncopy buf:0 --access-likely --write-likely\n" \
             "expect result mode=12\n"
    assert _runner(tmp_path, "emu")(hinted)["exit"] == 4            # profile 6.18: no hints
    res = run_file_text(tmp_path, hinted, backend="emu", profile="rfc-hints")
    assert res["ok"], res.get("error")


def run_file_text(tmp_path, text, **kw):
    f = tmp_path / "h.uffd"
    f.write_text(text)
    return run_file(str(f), **kw)


HUGETLB = """\
    mmap --size 2M --type hugetlb --name h
    register h --mode missing
    touch h:0 --write
    expect result blocked=1
    expect event page=0
    copy h:0 --fill 7
    expect result copy=2097152
    wait
    expect result finished=1
    expect pagemap h present=1 file=1
    zeropage h:0
    expect errno EINVAL
"""


def test_hugetlb_missing_fault(run_any):
    if run_any.backend == "kernel":
        from conftest import require_kernel
        from uffdctl.kernel import meminfo
        mi = meminfo()
        free = mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0)
        if free < 1:
            require_kernel(f"HugePages_Free={mi.get('HugePages_Free', 0)}, HugePages_Rsvd="
                           f"{mi.get('HugePages_Rsvd', 0)}: none free and unreserved (reserve some: sysctl "
                           f"vm.nr_hugepages=N)")
    res = run_any(HUGETLB)
    assert res["ok"], res.get("error")


def test_resume_through_existing_pages(run_any):
    """One ioctl by default (partial progress is an error with done); --resume/--skip-existing use uffdctl.ops."""
    res = run_any("""\
        mmap --size 32K --name buf
        register buf --mode missing
        copy buf:2
        copy buf:0-7
        expect errno EAGAIN
        copy buf:0-7 --skip-existing
        expect result copy=20480 ops.calls=4   # pages 0-1 came from the partial copy, 2 before it
        expect pagemap buf present=1
        zeropage buf:0-7 --resume
        expect errno EEXIST
    """)
    assert res["ok"], res.get("error")


@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_regions_show_registration_per_vma(backend):
    """`regions` shows what the kernel keeps per VMA (smaps VmFlags um/uw/ui), not one mode per region: after
    register missing,wp and unregister of page 3, pages 0-2 and 4-15 are still registered (issue 11.4)."""
    from uffdctl.session.commands import execute
    from uffdctl.session.state import SessionState
    if backend == "kernel" and _kernel_reason():
        require_kernel(_kernel_reason())
    st = SessionState(backend, name="vmas")
    try:
        execute(st, "mmap", {"size": "64K", "name": "buf"})
        execute(st, "register", {"range": "buf", "mode": "missing,wp"})
        execute(st, "unregister", {"range": "buf:3"})
        (r,) = execute(st, "regions", {})["regions"]
        assert r["mode"] is None
        assert [(v["first_page"], v["last_page"], v["mode"]) for v in r["vmas"]] == [(0, 2, 3), (3, 3, 0), (4, 15, 3)]
        execute(st, "unregister", {"range": "buf"})
        execute(st, "register", {"range": "buf:0-7", "mode": "missing"})
        execute(st, "register", {"range": "buf:8-15", "mode": "wp"})
        (r,) = execute(st, "regions", {})["regions"]
        assert [(v["first_page"], v["last_page"], v["mode"]) for v in r["vmas"]] == [(0, 7, 1), (8, 15, 2)]
        from uffdctl.cli.output import render
        assert "0-7:missing 8-15:wp" in render("regions", execute(st, "regions", {}))
        execute(st, "unregister", {"range": "buf"})
        (r,) = execute(st, "regions", {})["regions"]
        assert r["mode"] == 0 and len(r["vmas"]) == 1
    finally:
        st.close()


def test_sizes_beyond_ram(tmp_path):
    """P/E suffixes parse; the emulator maps what its sparse model holds (64G, 1T); the kernel refuses a 64G
    private mapping with the reason and the cure, and maps it with --noreserve (issue 11.7)."""
    from uffdctl.session.commands import parse_size
    assert parse_size("2P") == 2 << 50 and parse_size("1E") == 1 << 60 and parse_size("1TiB") == 1 << 40
    emu = _runner(tmp_path, "emu")
    res = emu("mmap --size 64G --name big\nregister big --mode missing\nzeropage big:16777215\n"
              "expect pagemap big:16777215 present=1\nmmap --size 1T --name huge\n")
    assert res["ok"], res.get("error")
    res = emu("mmap --size 2P --name x\n")
    assert res["exit"] == 2 and "128 TiB" in res["error"]["message"]
    if _kernel_reason():
        require_kernel(_kernel_reason())
    if open("/proc/sys/vm/overcommit_memory").read().strip() != "0":
        pytest.skip("vm.overcommit_memory is not 0: the heuristic this refusal comes from is off")
    kern = _runner(tmp_path, "kernel")
    res = kern("mmap --size 64E --name x\n")
    assert res["exit"] == 2
    big = 4 << 40    # beyond RAM + swap of any machine this runs on: the heuristic refuses it
    res = kern(f"mmap --size {big} --name big\n")
    assert res["exit"] == 1 and res["error"]["errno_name"] == "ENOMEM" and "--noreserve" in res["error"]["message"]
    res = kern(f"mmap --size {big} --name big --noreserve\nregister big --mode missing\n"
               f"zeropage big:{big // 4096 - 1}\nexpect pagemap big:{big // 4096 - 1} present=1\n")
    assert res["ok"], res.get("error")


def test_a_field_an_unfinished_touch_lacks_says_it_is_blocked(run_any):
    """``expect result data=..`` of a touch still blocked in a userfault names the cause, not only the
    missing field (a loaded CI run printed just "has no field 'data'")."""
    r = run_any("""\
        mmap --size 16K --name buf
        register buf --mode missing
        touch buf:0 --read
        expect result data=00
        """)
    assert r["exit"] == 1
    assert "has no field 'data'" in r["error"]["message"] and "touch #1 has not finished (still blocked)" \
        in r["error"]["message"], r["error"]


@pytest.mark.parametrize("args, first", [
    (("--backend", "emu"), "# backend: emu (the emulator, profile 6.18); requested; soft-dirty: emulated "
                           "CONFIG_MEM_SOFT_DIRTY=y"),
    (("--profile", "5.19", "--soft-dirty", "off"), "# backend: emu (the emulator, profile 5.19); --profile 5.19 and "
                                                   "--soft-dirty off ask for the emulator; soft-dirty: emulated "
                                                   "CONFIG_MEM_SOFT_DIRTY=n"),
])
def test_run_names_the_emulator_in_its_first_line(cli, tmp_path, args, first):
    """The text output of a run on the model says so before anything else, asked for or not; -q prints no
    echo, so no header either."""
    f = tmp_path / "s.uffd"
    f.write_text("mmap --size 16K --name buf\nexpect result len=16384\n")
    p = cli("run", *args, f, check=0)
    assert p.stdout.splitlines()[0] == first, p.stdout
    assert cli("run", "-q", *args, f, check=0).stdout == ""
