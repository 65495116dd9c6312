"""The kernel's own mm selftests, ported case by case as ``uffdctl run`` scripts.

Every ``tests/selftests/*.uffd`` mirrors one case (test x memory type) of
``uffd-unit-tests.c``, ``uffd-wp-mremap.c``, ``pagemap_ioctl.c`` or ``soft-dirty.c``
(tools/testing/selftests/mm/).  Its ``#:`` header (TOML) names the selftest file and
function, the memory type, the UFFD features the selftest requires and what the run
needs of the machine::

    #: selftest = "uffd-unit-tests.c"
    #: function = "uffd_zeropage_test"
    #: case = "zeropage"
    #: memtype = "anon"
    #: features = ["MISSING_SHMEM"]            # uffd_feature_required: skip "feature missing: ..."
    #: needs = ["hugetlb"]                     # hugetlb softdirty gup_test thp swap root
    #: sizes = "thp"                           # run once per THP size found in sysfs (${SIZE})
    #: vars = { CHILD_WP = 0 }                  # ${NAME} in the script
    #: by_release = [{ release = "-6.3", vars = { CHILD_WP = 1 }, source = "the commit or function" }]
    #: asserts = "what the selftest checks"

Each script runs in its own process (``uffdctl.script.run_file``; a hang -- no new line
for ``STALL_S`` -- is a failure naming the line and what each thread was blocked in), on
the host kernel and on the emulator as this host is (profile 6.18, CONFIG_MEM_SOFT_DIRTY
off); scripts that need soft-dirty also on the emulator
with soft-dirty on (``emu-sd``), since the host kernel cannot show it.

Outcomes:

* pass -- every expectation of the script held;
* skip with a run-time reason -- the kernel lacks a feature, no huge pages are reserved
  (under ``UFFDCTL_REQUIRE_KERNEL=1`` a failure), no soft-dirty (under
  ``UFFDCTL_REQUIRE_SOFTDIRTY=1`` a failure), no ``gup_test``, THP off;
* ``UNSUPPORTED: not modelled: X (emulator)`` -- the emulator column only, when a command
  exits 4 saying so; on the kernel column an exit 4 is a failure;
* a kernel whose rule differs (a fix it lacks) gets the header's ``by_release`` variables: the
  kernel column by ``uname -r``, the emulator by its profile (``EMU_RELEASE``), each rule with its
  source -- the script's expectation is the kernel's, never loosened to "either";
* ``waiting on: CMD`` -- the script uses a command, option or expectation of issue 10's
  planned syntax that this checkout does not have: a failure since that syntax landed
  (``PLANNED`` names it; anything else unknown is a failure too).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import _kernel_reason, require_kernel, require_softdirty

HERE = Path(__file__).parent / "selftests"
SCRIPTS = sorted(HERE.glob("*.uffd"))
TIMEOUT_S = 180          # per script (header `timeout` for long ones): its budget; see STALL_S and BACKSTOP
THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage")
GUP_TEST = Path("/sys/kernel/debug/gup_test")
SELFTEST_FILES = {"uffd-unit-tests.c", "uffd-wp-mremap.c", "pagemap_ioctl.c", "soft-dirty.c"}
NEEDS = {"hugetlb", "softdirty", "gup_test", "thp", "swap", "root", "sysv"}

# Issue 10's planned syntax (docs/cli.md / SYNTAX.md as it lands).  A script line whose command, option or
# expectation is not in this checkout yet is "waiting on" it only if it is named here.
PLANNED_COMMANDS = {"fork", "kill", "waitpid", "uffd", "mremap", "mprotect", "msync", "mlock", "munlock", "swap",
                    "set", "repeat", "end", "thp", "read", "proc", "procs",
                    "pin", "unpin"}   # pin/unpin: gup_test's PIN_LONGTERM_TEST_START/STOP -- planned by nobody yet
PLANNED_EXPECT = {"data", "error", "events", "scan", "vma", "proc", "addr"}
PLANNED_OPTIONS = {
    # proc (SYNTAX.md): processes, several uffds, raw api, the unread handler mode
    "--proc", "--uffd", "--dev", "--user-mode-only", "--blocking", "--no-cloexec", "--api", "--unread", "--read",
    "--signal", "--timeout", "--thread", "--dst", "--size",
    # mmops (SYNTAX.md): mm operations, memory kinds, data, scan/expect options, variables
    "--maymove", "--fixed", "--dontunmap", "--to", "--name", "--prot", "--async", "--invalidate", "--onfault",
    "--align", "--addr", "--thp", "--path", "--from-file", "--offset", "--vec-len", "--once", "--var",
    # asked for by selftests (NEWS-from-selftests.md): raw PAGEMAP_SCAN flags, alias alignment
    "--flags",
}
PLANNED_CHOICES = {"--type": {"file", "file-private", "sysv", "sysv-hugetlb"},
                   "--advice": {"hugepage", "nohugepage", "collapse", "pageout", "cold", "populate_read",
                                "populate_write", "dontfork", "dofork", "wipeonfork", "remove", "dontneed",
                                "willneed", "keeponfork"}}


# -- the script headers -----------------------------------------------------------------------------
def header(path: Path) -> dict:
    lines = [ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("#:")]
    h = tomllib.loads("\n".join(lines))
    for key in ("selftest", "function", "case", "memtype", "asserts"):  # noqa: B007
        assert key in h, f"{path.name}: header lacks {key!r}"
    assert h["selftest"] in SELFTEST_FILES, f"{path.name}: unknown selftest {h['selftest']!r}"
    unknown = set(h.get("needs", [])) - NEEDS
    assert not unknown, f"{path.name}: unknown needs {sorted(unknown)}"
    for rule in h.get("by_release", []):
        assert {"release", "vars", "source"} <= set(rule), f"{path.name}: by_release needs release, vars, source"
        assert set(rule["vars"]) <= set(h.get("vars", {})), \
            f"{path.name}: by_release sets {sorted(set(rule['vars']) - set(h.get('vars', {})))} without a default in vars"
    return h


EMU_RELEASE = "6.18"     # the emulator columns' profile (DRIVER: open_backend("emu", profile="6.18"))


def release_vars(h: dict, backend_name: str, release: str | None = None) -> dict:
    """The header's ``by_release`` variables for the kernel that runs the script: ``uname -r`` on the kernel
    column, the profile's release on the emulator."""
    from uffdctl.repro.scenario import release_in
    rel = release or (platform.release() if backend_name == "kernel" else EMU_RELEASE)
    out = {}
    for rule in h.get("by_release", []):
        if release_in(rel, rule["release"]):
            out.update(rule["vars"])
    return out


def thp_sizes() -> list[str]:
    """The THP sizes the kernel offers (uffd-wp-mremap.c's detect_thp_sizes(): every hugepages-*kB dir)."""
    out = []
    for d in sorted(THP_SYSFS.glob("hugepages-*kB"), key=lambda p: int(p.name[10:-2])):
        if not (d / "enabled").exists():
            continue          # thp_supported_orders(): the anon orders (8kB has only shmem_enabled)
        kb = int(d.name[10:-2])
        out.append(f"{kb // 1024}M" if kb >= 1024 else f"{kb}K")
    if not out and (THP_SYSFS / "hpage_pmd_size").exists():
        # a kernel without mTHP (before 6.8): the PMD size only, behind the top-level knobs
        out.append(f"{int((THP_SYSFS / 'hpage_pmd_size').read_text()) >> 20}M")
    return out


def hugetlb_sizes() -> list[str]:
    out = []
    for d in sorted(Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB"), key=lambda p: int(p.name[10:-2])):
        kb = int(d.name[10:-2])
        out.append(f"{kb // (1024 * 1024)}G" if kb >= 1 << 20 else f"{kb // 1024}M")
    return out or ["2M"]


def default_hugetlb_size() -> str:
    from uffdctl.kernel import meminfo
    kb = meminfo().get("Hugepagesize", 2048)
    return f"{kb >> 20}G" if kb >= 1 << 20 else f"{kb >> 10}M"


def _params():
    params, ids = [], []
    for path in SCRIPTS:
        h = header(path)
        sizes = {"thp": thp_sizes, "hugetlb": hugetlb_sizes}.get(h.get("sizes"), lambda: [None])() or [None]
        backends = ["kernel", "emu"] + (["emu-sd"] if "softdirty" in h.get("needs", []) else [])
        for size in sizes:
            for be in backends:
                params.append((path, size, be))
                ids.append(f"{path.stem}{'-' + size if size else ''}-{be}")
    return params, ids


def pytest_generate_tests(metafunc):
    if "script" in metafunc.fixturenames:
        params, ids = _params()
        metafunc.parametrize("script,size,backend_name", params, ids=ids)


# -- waiting on planned syntax ----------------------------------------------------------------------
def _subst(text: str, env: dict) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: str(env.get(m.group(1), m.group(0))), text)


_KEYWORDS: set | None = None


def _script_keywords() -> set:
    """set / repeat / end: language keywords, not session commands -- does this checkout's `run` know them?"""
    global _KEYWORDS
    if _KEYWORDS is None:
        import tempfile

        from uffdctl.script import run_file
        _KEYWORDS = set()
        for kw, text in (("set", "set X=1\n"), ("repeat", "repeat 1\nend\n"),
                         ("&=", "mmap --size 4K --name x\nexpect result len&=0x1000\n")):
            with tempfile.NamedTemporaryFile("w", suffix=".uffd") as f:
                f.write(text)
                f.flush()
                if run_file(f.name, backend="emu").get("ok"):
                    _KEYWORDS |= {kw} | ({"end"} if kw == "repeat" else set())
            if kw == "&=" and kw not in _KEYWORDS:
                break
    return _KEYWORDS


def waiting_on(text: str, env: dict) -> list[str]:
    """The planned commands/options/expectations the script uses that this checkout lacks (in order, once)."""
    import click

    from uffdctl import script as script_mod
    from uffdctl.cli.build import parse_line
    from uffdctl.session.commands import COMMANDS
    keywords = set(getattr(script_mod, "KEYWORDS", ())) | {"expect"} | _script_keywords()
    out: list[str] = []

    def want(what, lineno, line, planned):
        if not planned:
            raise AssertionError(f"line {lineno}: {what!r} is neither in this checkout nor planned "
                                 f"(a typo?): {line}")
        if what not in out:
            out.append(what)

    for lineno, raw in enumerate(text.splitlines(), 1):
        try:
            toks = shlex.split(_subst(raw, env), comments=True)
        except ValueError as e:
            raise AssertionError(f"line {lineno}: cannot parse: {e}") from None
        if toks and re.fullmatch(r"\[[\w,-]+\]", toks[0]):
            toks = toks[1:]
        if not toks:
            continue
        name = toks[0]
        if name == "expect":
            kind = toks[1] if len(toks) > 1 else ""
            if not hasattr(script_mod.Interpreter, f"_expect_{kind}"):
                want(f"expect {kind}", lineno, raw, kind in PLANNED_EXPECT)
            elif any("&=" in t for t in toks[2:]) and "&=" not in keywords:
                want("expect ... KEY&=MASK", lineno, raw, True)
            continue
        if name in keywords:
            continue
        if name not in COMMANDS:
            want(name, lineno, raw, name in PLANNED_COMMANDS)
            continue
        try:
            parse_line(name, toks[1:])
        except click.exceptions.NoSuchOption as e:
            want(f"{name} {e.option_name}", lineno, raw, e.option_name in PLANNED_OPTIONS)
        except click.exceptions.BadParameter as e:
            opt = e.param.opts[0] if e.param is not None and e.param.opts else "?"
            val = next((toks[i + 1] for i, t in enumerate(toks[:-1]) if t == opt), "?")
            want(f"{name} {opt} {val}", lineno, raw, val in PLANNED_CHOICES.get(opt, ()) or opt == "?")
        except click.UsageError as e:
            # an extra positional (e.g. `swap on`, `uffd open`) or a missing one
            msg = e.format_message()
            if "unexpected extra argument" in msg.lower() and name in PLANNED_COMMANDS | {"api", "madvise"}:
                want(f"{name} {toks[1] if len(toks) > 1 else ''}".strip(), lineno, raw, True)
            else:
                raise AssertionError(f"line {lineno}: {name}: {msg}: {raw}") from None
        except click.exceptions.Exit:
            raise AssertionError(f"line {lineno}: --help in a script: {raw}") from None
    return out


# -- what the machine offers --------------------------------------------------------------------------
def _softdirty_reason(backend_name: str) -> str | None:
    if backend_name == "emu-sd":
        return None
    if backend_name == "emu":
        return "CONFIG_MEM_SOFT_DIRTY off in the host model (emulator profile 6.18, soft-dirty off)"
    from uffdctl.kernel import KernelBackend
    b = KernelBackend()
    try:
        probe = b.soft_dirty()
        return None if probe.available else probe.reason
    finally:
        b.close()


def _features_reason(required: list[str]) -> str | None:
    from uffdctl import uapi
    from uffdctl.kernel import KernelBackend
    want = 0
    for n in required:
        want |= uapi.Feature.parse(n)
    if not want:
        return None
    b = KernelBackend()
    try:
        with b.userfaultfd() as u:
            have = u.api(0).features
    finally:
        b.close()
    missing = want & ~have
    return ("feature missing: " + "|".join(uapi.Feature.decode(missing))) if missing else None


def _thp_reason(size: str | None) -> str | None:
    top = THP_SYSFS / "enabled"
    if not top.exists():
        return "no /sys/kernel/mm/transparent_hugepage (CONFIG_TRANSPARENT_HUGEPAGE=n)"
    if "[never]" in top.read_text():
        return "THP is disabled: transparent_hugepage/enabled is [never]"
    return None


def check_needs(h: dict, backend_name: str, size: str | None) -> None:
    needs = set(h.get("needs", []))
    kernel = backend_name == "kernel"
    if kernel:
        reason = _kernel_reason()
        if reason:
            require_kernel(reason)
        reason = _features_reason(h.get("features", []))
        if reason:
            pytest.skip(reason)          # a property of this kernel (e.g. 6.1 in the VM column), not a failure
    if "softdirty" in needs:
        reason = _softdirty_reason(backend_name)
        if reason:
            require_softdirty(reason)
    if not kernel and "gup_test" not in needs:
        return
    if ("root" in needs or "swap" in needs) and os.geteuid() != 0:
        require_kernel("needs root (swapfile, sysfs or sysctl knobs)")
    if "swap" in needs:
        from uffdctl import swap
        reason = swap.cannot_hold_swapfile()
        if reason:
            swap_unsupported(reason)
    if "hugetlb" in needs:
        reason = _hugetlb_reason(size, h.get("_huge_pages", 4))
        if reason and size not in (None, "2M"):
            # 1 GiB pages are reserved at boot (hugepagesz=1G hugepages=N) or not at all on a machine that has
            # run a while: a property of this host, as in the selftest itself, not a failure to reach the kernel
            pytest.skip(reason)
        if reason:
            require_kernel(reason)
    if "thp" in needs:
        reason = _thp_reason(size)
        if reason:
            pytest.skip(reason)
    if "gup_test" in needs and not kernel:
        pytest.skip("UNSUPPORTED: gup_test pins (PIN_LONGTERM_TEST_START) exist only as a kernel module; "
                    "uffdctl has no pin command")
    if "gup_test" in needs and not GUP_TEST.exists():
        pytest.skip(f"no {GUP_TEST} (CONFIG_GUP_TEST off): the selftest skips "
                    "'Possibly CONFIG_GUP_TEST missing or unprivileged'")


def swap_unsupported(reason: str) -> None:
    """No swapfile can exist here.  In a vmtest guest that vmtest said has no scratch disk (its kernel cannot
    mount one: UFFDCTL_VM_NO_SCRATCH names why) the case is UNSUPPORTED with both reasons; a guest that has
    the disk (UFFDCTL_VM_SCRATCH), or that does not say, fails; on the host it is require_kernel()."""
    from uffdctl import swap
    if os.environ.get("UFFDCTL_IN_VM") == "1":
        no_disk = os.environ.get("UFFDCTL_VM_NO_SCRATCH")
        if no_disk:
            pytest.skip(f"UNSUPPORTED: {reason} ({no_disk}; {swap.swap_cure()})")
        disk = os.environ.get("UFFDCTL_VM_SCRATCH")
        pytest.fail(f"this guest should have vmtest's scratch disk{' at ' + disk if disk else ''}, but {reason}",
                    pytrace=False)
    require_kernel(reason)


def huge_pages_needed(text: str, env: dict) -> int:
    """2 MiB pages the script's hugetlb mmaps take (they are never freed before the end: an upper bound)."""
    from uffdctl.session.commands import parse_size
    total = 0
    for raw in _subst(text, env).splitlines():
        toks = shlex.split(raw, comments=True)
        if toks[:1] == ["mmap"] and any("hugetlb" in t for t in toks) and "--size" in toks:
            total += parse_size(toks[toks.index("--size") + 1]) // (2 << 20)
    return total


def _hugetlb_reason(size: str | None, need: int = 4) -> str | None:
    from uffdctl.kernel import meminfo
    if size in (None, "2M"):
        mi = meminfo()
        if mi.get("HugePages_Total", 0) == 0:
            return "HugePages_Total=0 (no huge pages reserved; sysctl vm.nr_hugepages=N)"
        free = mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0)
        if free < need:
            return f"HugePages_Free-Rsvd={free}, the script maps {need} huge pages"
        return None
    kb = int(size[:-1]) * (1 << 20 if size.endswith("G") else 1 << 10)
    nr = Path(f"/sys/kernel/mm/hugepages/hugepages-{kb}kB/free_hugepages")
    free = int(nr.read_text()) if nr.exists() else 0
    return None if free >= 1 else f"no free {size} huge page (hugepages-{kb}kB/free_hugepages={free})"


@pytest.fixture(scope="module")
def _huge_pages():
    """Reserve a few 2 MiB huge pages for the hugetlb scripts when none are (as root), give them back after.
    Only test_selftest asks for it: the module's other tests never touch the host's pool.

    CI reserves 32 itself (.ci/run); this makes a plain `make test` as root run the hugetlb cases too."""
    hp = Path("/proc/sys/vm/nr_hugepages")
    want = 32          # as .ci/run: the largest script maps 10; other tests may hold some at the same time
    old = new = None
    try:
        from uffdctl.kernel import meminfo
        cur, mi = int(hp.read_text()), meminfo()
        # usable pages, as .ci/run and `uffdctl check` count them: reservations no process owns can hold every
        # free page (this host: HugePages_Rsvd 104 of 104 free), and then every hugetlb case fails under
        # UFFDCTL_REQUIRE_KERNEL=1 (make test-vm's host column: 33 of them).  The pool only grows here, by the
        # shortfall, so no page is pulled from under another run.  From HugePages_Total, not nr_hugepages: pages
        # reserved after a shrink stay as surplus (this host: nr_hugepages 0, Total 104, Surp 104), and a write
        # first turns surplus pages into persistent ones.
        usable = mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0)
        if os.geteuid() == 0 and usable < want and \
                any("hugetlb" in header(p).get("needs", []) for p in SCRIPTS):
            old, new = cur, max(cur, mi.get("HugePages_Total", 0)) + want - max(usable, 0)
            hp.write_text(str(new))
    except OSError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            try:
                if int(hp.read_text()) == new:       # nobody else changed it meanwhile
                    hp.write_text(str(old))
            except OSError:
                pass


@contextlib.contextmanager
def hstate_page(size: str):
    """As root, one free page of a non-default hugetlb size (1G) for the case, given back after: the
    selftest's hugetlb_setup() reserves one of each size itself.  A 1 GiB page needs 1 GiB of contiguous
    memory; when the kernel finds none, nr_hugepages stays where it was and the case skips with that reason."""
    kb = int(size[:-1]) * (1 << 20 if size.endswith("G") else 1 << 10)
    d = Path(f"/sys/kernel/mm/hugepages/hugepages-{kb}kB")
    added = 0
    try:
        if os.geteuid() == 0 and d.exists():
            free = int((d / "free_hugepages").read_text()) - int((d / "resv_hugepages").read_text())
            if free < 1:
                old = int((d / "nr_hugepages").read_text())
                (d / "nr_hugepages").write_text(str(old + 1 - free))
                added = int((d / "nr_hugepages").read_text()) - old     # what the kernel could allocate
    except OSError:
        pass
    try:
        yield
    finally:
        if added > 0:      # give back what this case added (other runs may add and give back theirs meanwhile)
            try:
                now = int((d / "nr_hugepages").read_text())
                (d / "nr_hugepages").write_text(str(max(now - added, 0)))
            except OSError:
                pass


# -- running one script --------------------------------------------------------------------------------
# The driver writes where it is (line, repeat iterations, text) into a small file before every line: the
# test fails a run whose position has not moved for STALL_S (a hang: nothing the scripts wait for takes half
# that, their longest --timeout is 60 s), not a run that is merely slow -- soft-dirty.c's 10,000 iterations
# take ~10 minutes in a TCG guest on a loaded machine and half that on a quiet one, so a wall-clock cap on
# the whole script failed or passed with the load.  A stalled run is reported with what was blocked: the
# script line, each thread's kernel wait channel and stack, and the Python stacks (faulthandler, SIGUSR1).
STALL_S = 180
BACKSTOP = 5             # x the header's timeout (or TIMEOUT_S): a run still moving then is failed too
POS_BYTES = 512

DRIVER = textwrap.dedent("""\
    import faulthandler, inspect, json, os, signal, sys
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    from uffdctl import script as script_mod
    from uffdctl.script import run_file
    path, backend, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    thp = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if len(sys.argv) > 5:        # the position file the test watches (run_script)
        pos = os.open(sys.argv[5], os.O_WRONLY | os.O_CREAT, 0o644)
        def _tracked(f):
            def at(self, lineno, line, *a):
                text = f"{lineno}\\t{','.join(map(str, getattr(self, '_iter', ())))}\\t{line}"
                os.pwrite(pos, text.encode()[:%d].ljust(%d), 0)
                return f(self, lineno, line, *a)
            return at
        for name in ("command", "expect", "set_var"):
            if hasattr(script_mod.Interpreter, name):
                setattr(script_mod.Interpreter, name, _tracked(getattr(script_mod.Interpreter, name)))
    if backend == "kernel":
        from uffdctl.kernel import KernelBackend
        b = KernelBackend()
    else:
        try:
            from uffdctl import open_backend
        except ImportError:          # a checkout before the opener moved
            from uffdctl.backend import open_backend
        b = open_backend("emu", profile="6.18", soft_dirty=(backend == "emu-sd"))
        for knob, value in thp.items():      # thp_pushed(): the emulator's own knobs, as the host's for the kernel
            b.set_thp_knob(knob, value)
    kw = {}
    if env and "variables" in inspect.signature(run_file).parameters:
        kw["variables"] = env
    elif env:
        import re, tempfile
        text = open(path).read()
        text = re.sub(r"\\$\\{(\\w+)\\}", lambda m: str(env.get(m.group(1), m.group(0))), text)
        f = tempfile.NamedTemporaryFile("w", suffix=".uffd", delete=False)
        f.write(text); f.close()
        path = f.name
    res = run_file(path, backend=b, **kw)
    res.pop("lines", None)
    print(json.dumps(res, default=str))
""" % (POS_BYTES, POS_BYTES))


def read_position(path: Path) -> tuple[int, str, str] | None:
    """(line, repeat iterations "i,j" or "", text) the driver last started, or None before the first line."""
    try:
        raw = path.read_bytes().rstrip(b" ").decode(errors="replace")
        lineno, iters, text = raw.split("\t", 2)
        return int(lineno), iters, text
    except (OSError, ValueError):
        return None


def describe_position(pos: tuple[int, str, str] | None) -> str:
    if pos is None:
        return "before its first line"
    lineno, iters, text = pos
    where = f" (repeat iteration {iters.replace(',', '/')})" if iters else ""
    return f"at line {lineno}{where}: {text.strip()}"


def blocked_threads(pid: int) -> list[str]:
    """One line per thread of ``pid`` and its children: name, state, kernel wait channel, and the kernel
    stack's innermost frames (root only)."""
    out = []
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{p}/task"))
        except OSError:
            continue
        for t in tids:
            d = Path(f"/proc/{p}/task/{t}")
            try:
                comm = (d / "comm").read_text().strip()
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (d / "wchan").read_text().strip() or "-"
            except OSError:
                continue
            try:
                frames = [ln.split("] ", 1)[-1].split("+")[0] for ln in (d / "stack").read_text().splitlines()]
            except OSError:
                frames = []
            stack = f" [{' < '.join(frames[:6])}]" if frames else ""
            who = "" if p == pid else f"child {p} "
            out.append(f"{who}{comm} (tid {t}) {state} {wchan}{stack}")
    return out


def _python_stacks(err: str, keep: int = 40) -> str:
    """faulthandler's dump (the tail of stderr from the first 'Thread 0x' on), shortened to ``keep`` lines."""
    i = err.find("Thread 0x")
    if i < 0:
        i = err.find("Current thread 0x")
    lines = err[i:].splitlines() if i >= 0 else []
    return "\n    ".join(ln.strip() for ln in lines[:keep])


def run_script(path: Path, backend_name: str, env: dict, timeout: int = TIMEOUT_S, thp: dict | None = None,
               stall: float = STALL_S, pos_file: Path | None = None) -> dict:
    """Run one script in a driver process; returns its result document.  A run whose position does not move
    for ``stall`` seconds, or that is still running after BACKSTOP x ``timeout``, fails with where it was."""
    import tempfile
    import time
    with contextlib.ExitStack() as stack:
        if pos_file is None:
            pos_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uffdctl-st-"))) / "pos"
        pos_file.write_bytes(b"")
        p = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), backend_name, json.dumps(env),
                              json.dumps(thp or {}), str(pos_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             cwd=str(HERE))
        t0 = last_move = time.monotonic()
        last = read_position(pos_file)
        why = ""
        startup = max(stall, 60.0)   # before its first line the driver imports uffdctl (seconds under TCG)
        while True:
            try:
                out, err = p.communicate(timeout=min(5.0, stall / 2))
                break
            except subprocess.TimeoutExpired:
                pass
            now, pos = time.monotonic(), read_position(pos_file)
            if pos != last:
                last, last_move = pos, now
            if now - last_move >= (stall if last is not None else startup):
                why = f"no progress for {now - last_move:.0f} s (a hang)"
            elif now - t0 >= BACKSTOP * timeout:
                why = (f"still running after {now - t0:.0f} s ({BACKSTOP} x its {timeout} s budget), "
                       f"though not stalled")
            if why:
                threads = blocked_threads(p.pid)
                p.send_signal(__import__("signal").SIGUSR1)    # faulthandler: every thread's Python stack
                time.sleep(1.0)
                p.kill()
                out, err = p.communicate()
                pytest.fail(f"{path.name} on {backend_name}: {why}, {describe_position(last)}\n  threads:\n    "
                            + "\n    ".join(threads or ["(none left)"])
                            + f"\n  Python:\n    {_python_stacks(err)}", pytrace=False)
    out = out.strip().splitlines()
    if p.returncode != 0 or not out:
        pytest.fail(f"{path.name} on {backend_name}: the driver died (rc {p.returncode}):\n{err[-3000:]}",
                    pytrace=False)
    return json.loads(out[-1])


NOT_MODELLED = re.compile(r"not modelled: .*\(emulator\)")


@contextlib.contextmanager
def thp_pushed(h: dict, size: str | None, backend_name: str):
    """uffd-wp-mremap.c's thp_push_settings(): this THP size 'always' (anon: enabled, shmem: shmem_enabled) for the
    run, the previous setting restored after it.  The kernel column writes the host's sysfs; the emulator
    columns get the knobs to set in the model (yielded: knob -> value), never the host's."""
    knob = h.get("thp_knob")
    if not knob or size is None:
        yield {}
        return
    if backend_name != "kernel":
        kb = int(size[:-1]) * (1024 if size.endswith("M") else 1)
        yield {f"hugepages-{kb}kB/{knob}": "always"}
        return
    kb = int(size[:-1]) * (1024 if size.endswith("M") else 1)
    path = THP_SYSFS / f"hugepages-{kb}kB" / knob
    if not (THP_SYSFS / f"hugepages-{kb}kB").exists():
        path = THP_SYSFS / knob          # no per-size knobs: the PMD size behind the top-level one
    if not path.exists():
        pytest.skip(f"no {path} (this kernel has no {knob} knob for {size})")
    old = re.search(r"\[(\w[\w-]*)\]", path.read_text()).group(1)
    try:
        path.write_text("always")
    except OSError as e:
        require_kernel(f"cannot write {path}: {e.strerror}")
    try:
        yield {}
    finally:
        path.write_text(old)


def test_selftest(script, size, backend_name, tmp_path, _huge_pages):
    if backend_name != "kernel" and os.environ.get("UFFDCTL_IN_VM") == "1":
        pytest.skip("the emulator columns run on the host (make test); a guest runs the kernel column")
    h = header(script)
    env = {k: str(v) for k, v in dict(h.get("vars", {}), **release_vars(h, backend_name),
                                      TMPDIR=str(tmp_path)).items()}
    if "N" in env and os.environ.get("UFFDCTL_SELFTEST_ITERATIONS"):
        # soft-dirty.c's TEST_ITERATIONS (10000): a guest under TCG may need fewer to stay in its time budget
        env["N"] = os.environ["UFFDCTL_SELFTEST_ITERATIONS"]
    if size:
        env["SIZE"] = size
    text = script.read_text()
    h["_huge_pages"] = huge_pages_needed(text, env)
    with contextlib.ExitStack() as stack:
        if h.get("sizes") == "hugetlb" and backend_name == "kernel" and size != default_hugetlb_size():
            stack.enter_context(hstate_page(size))   # e.g. the one 1 GiB page a case maps, as hugetlb_setup()
        check_needs(h, backend_name, size)
        missing = list(h.get("waiting", [])) + waiting_on(text, env)
        if missing:
            # issue 10's syntax has all landed: a script that needs more is a defect, never a skip
            pytest.fail(f"waiting on: {', '.join(missing)} (syntax this checkout lacks)")
        with thp_pushed(h, size, backend_name) as thp:
            res = run_script(script, backend_name, env, int(h.get("timeout", TIMEOUT_S)), thp)
    kind, msg = verdict(h, backend_name, res)
    if kind == "xfail":
        pytest.xfail(msg)
    if kind == "skip":
        pytest.skip(msg)
    if kind == "fail":
        pytest.fail(msg, pytrace=False)


def verdict(h: dict, backend_name: str, res: dict) -> tuple[str, str]:
    """("pass" | "skip" | "fail", why) for one run's result document."""
    known = [k for k in h.get("known", []) if k["backend"] == backend_name]
    if res.get("ok"):
        if known:
            return "fail", (f"known bug no longer seen on {backend_name} ({known[0]['bug']}): the script passes now; "
                            f"remove its 'known' entry")
        return "pass", ""
    err = res.get("error") or {}
    msg = err.get("message", "")
    text = err.get("text", "").split("#")[0].strip()
    m = NOT_MODELLED.search(msg)
    if res.get("exit") == 4 and backend_name != "kernel" and m:
        return "skip", f"UNSUPPORTED: {m.group(0)}"
    for k in known:
        if text.startswith(k["line"]):
            return "xfail", f"known bug ({k['bug']}): {msg}"
    for rule in h.get("skip_on", []):
        if err.get("text", "").split("#")[0].strip() == rule["line"]:
            return "skip", f"{rule['reason']}: {msg}"
    where = f"line {err.get('line')}: {err.get('text', '')}" if err.get("line") else ""
    return "fail", (f"{h['selftest']} {h['function']} ({h['case']} on {h['memtype']}) on {backend_name}: "
                    f"exit {res.get('exit')}: {msg}\n  {where}")


def test_a_stalled_script_fails_saying_where_and_what_blocked(tmp_path):
    """A hang is a failure within STALL_S that names the line (and repeat iteration) and each thread's wait:
    here a read fault nobody serves, in the second iteration of a loop."""
    reason = _kernel_reason()
    if reason:
        require_kernel(reason)
    script = tmp_path / "stall.uffd"
    script.write_text("api --features 0\nmmap --size 8K --name dst\nregister dst:1 --mode missing\n"
                      "repeat 2 --var I\n  touch dst:${I} --read --wait     # dst:1: nobody serves the fault\nend\n")
    with pytest.raises(pytest.fail.Exception) as e:
        run_script(script, "kernel", {}, stall=8)   # the lines before the fault take well under a second
    msg = str(e.value)
    assert "stall.uffd on kernel: no progress for" in msg, msg
    assert "at line 5 (repeat iteration 1): touch dst:${I} --read --wait" in msg, msg
    assert "handle_userfault" in msg, msg          # the touching thread's kernel wait channel / stack
    assert "Python:" in msg and "cmd_touch" in msg, msg


def test_no_swapfile_in_a_guest_is_unsupported_only_where_vmtest_said_why(monkeypatch):
    """A guest whose kernel cannot mount vmtest's scratch disk (UFFDCTL_VM_NO_SCRATCH) skips a swap case with
    both reasons; a guest that has the disk, or that does not say, fails: never a silent UNSUPPORTED."""
    why = "/mnt/scratch is on overlayfs, which cannot hold a swapfile"
    monkeypatch.setenv("UFFDCTL_IN_VM", "1")
    monkeypatch.delenv("UFFDCTL_VM_SCRATCH", raising=False)
    monkeypatch.setenv("UFFDCTL_VM_NO_SCRATCH", "kernel 6.1.0-tiny cannot mount it: CONFIG_EXT4_FS is not set")
    with pytest.raises(pytest.skip.Exception, match=r"UNSUPPORTED: .*overlayfs.*\(kernel 6.1.0-tiny cannot mount"):
        swap_unsupported(why)
    monkeypatch.delenv("UFFDCTL_VM_NO_SCRATCH")
    monkeypatch.setenv("UFFDCTL_VM_SCRATCH", "/mnt/scratch")
    with pytest.raises(pytest.fail.Exception, match="should have vmtest's scratch disk at /mnt/scratch, but /mnt"):
        swap_unsupported(why)
    monkeypatch.delenv("UFFDCTL_VM_SCRATCH")
    with pytest.raises(pytest.fail.Exception, match="should have vmtest's scratch disk, but"):
        swap_unsupported(why)


def test_the_driver_records_its_last_line(tmp_path):
    script, pos = tmp_path / "ok.uffd", tmp_path / "pos"
    script.write_text("mmap --size 4K --name b\nrepeat 3\n  touch b:0 --write --wait --timeout 10\nend\n"
                      "expect pagemap b:0 present=1\n")
    assert run_script(script, "emu", {}, pos_file=pos)["ok"]
    assert read_position(pos) == (5, "", "expect pagemap b:0 present=1")
    assert describe_position(None) == "before its first line"


# -- the inventory itself ----------------------------------------------------------------------------------
def test_every_script_has_a_valid_header():
    assert SCRIPTS, f"no scripts in {HERE}"
    seen = set()
    for path in SCRIPTS:
        h = header(path)
        key = (h["selftest"], h["case"], h["memtype"])
        assert key not in seen, f"{path.name}: {key} ported twice"
        seen.add(key)
        assert path.stem.startswith(Path(h["selftest"]).stem), f"{path.name}: name it after {h['selftest']}"


def test_unknown_syntax_is_a_failure_not_a_wait():
    with pytest.raises(AssertionError, match="neither in this checkout nor planned"):
        waiting_on("mmap --size 4K --name buf\nfrobnicate buf\n", {})
    with pytest.raises(AssertionError, match="neither in this checkout nor planned"):
        waiting_on("mmap --size 4K --name buf\nexpect nonsense x=1\n", {})


def test_release_vars():
    h = {"vars": {"CHILD_WP": 0}, "by_release": [{"release": "-6.3", "vars": {"CHILD_WP": 1}, "source": "x"}]}
    assert release_vars(h, "kernel", "6.1.0-57-amd64") == {"CHILD_WP": 1}
    assert release_vars(h, "kernel", "6.12.117+deb12-amd64") == {}
    assert release_vars(h, "emu") == {}                        # the emulator's profile is 6.18
    assert release_vars({"vars": {}}, "kernel", "6.1") == {}


@pytest.mark.parametrize("profile", ["6.1", "6.12", "6.18"])
def test_by_release_rule_holds_on_the_emulator_profile_of_that_release(profile):
    """wp-fork-hugetlb-private's version rule on the emulator's profiles: the 6.1 profile's child keeps the
    hugetlb uffd-wp bit (fork_hugetlb_clears_uffd_wp off, as the 6.1.192 guest measured), 6.12 and 6.18 drop it;
    with the other release's variables the script fails on the first child pagemap."""
    from uffdctl import open_backend
    from uffdctl.emu.profiles import get_profile
    from uffdctl.script import run_file
    script = HERE / "uffd-unit-tests-wp-fork-hugetlb-private.uffd"
    h = header(script)
    mine = dict(h["vars"], **release_vars(h, "kernel", get_profile(profile).release))
    assert mine["CHILD_WP"] == (1 if profile == "6.1" else 0)
    for variables, ok in ((mine, True), (dict(mine, CHILD_WP=1 - mine["CHILD_WP"]), False)):
        b = open_backend("emu", profile=profile)
        try:
            res = run_file(str(script), backend=b, variables={k: str(v) for k, v in variables.items()})
        finally:
            b.close()
        assert bool(res["ok"]) == ok, res.get("error")
        if not ok:
            assert res["error"]["text"].startswith("expect pagemap c1/dst:0 uffd_wp="), res["error"]


def test_verdicts():
    h = {"selftest": "uffd-unit-tests.c", "function": "f", "case": "c", "memtype": "anon",
         "skip_on": [{"line": "madvise x --advice collapse", "reason": "MADV_COLLAPSE failed"}]}
    nm = {"ok": False, "exit": 4, "error": {"message": "not modelled: fork (emulator)", "line": 3, "text": "fork"}}
    assert verdict(h, "emu", nm) == ("skip", "UNSUPPORTED: not modelled: fork (emulator)")
    assert verdict(h, "emu-sd", nm)[0] == "skip"
    assert verdict(h, "kernel", nm)[0] == "fail"               # never UNSUPPORTED on the kernel column
    other4 = {"ok": False, "exit": 4, "error": {"message": "needs --backend emu --profile rfc-hints"}}
    assert verdict(h, "emu", other4)[0] == "fail"              # exit 4 without "not modelled" is not a skip
    exp = {"ok": False, "exit": 1, "error": {"message": "line 5: page 0 uffd_wp: expected 1, actual 0",
                                               "line": 5, "text": "expect pagemap dst:0 uffd_wp=1"}}
    kind, why = verdict(h, "emu", exp)
    assert kind == "fail" and "line 5" in why and "expect pagemap dst:0 uffd_wp=1" in why
    coll = {"ok": False, "exit": 1, "error": {"message": "madvise: EINVAL", "line": 9,
                                                "text": "madvise x --advice collapse   # may fail"}}
    assert verdict(h, "kernel", coll) == ("skip", "MADV_COLLAPSE failed: madvise: EINVAL")
    assert verdict(h, "kernel", {"ok": True}) == ("pass", "")
    h["known"] = [{"backend": "emu", "line": "mremap mem", "bug": "EBADF"}]
    mr = {"ok": False, "exit": 1, "error": {"message": "[Errno 9]", "line": 4, "text": "mremap mem --size 4K"}}
    assert verdict(h, "emu", mr)[0] == "xfail"
    assert verdict(h, "kernel", mr)[0] == "fail"              # known on one column only
    assert verdict(h, "emu", exp)[0] == "fail"                # another line failing is still a failure
    assert verdict(h, "emu", {"ok": True})[0] == "fail"       # a fixed bug must drop its marker


# -- tests/selftests/README.md: the inventory, generated from the headers ----------------------------------
INVENTORY = HERE / "README.md"


def inventory_markdown() -> str:
    rows = []
    for path in SCRIPTS:
        h = header(path)
        sizes = {"thp": "x each THP size", "hugetlb": "x each hugetlb size"}.get(h.get("sizes"), "")
        notes = []
        if h.get("needs"):
            notes.append("needs " + ", ".join(h["needs"]))
        if h.get("waiting"):
            notes.append("waits on " + "; ".join(h["waiting"]))
        if h.get("known"):
            notes.append("known bug on " + ", ".join(k["backend"] for k in h["known"]))
        if h.get("by_release"):
            notes.append("differs on " + ", ".join(r["release"] for r in h["by_release"]))
        rows.append(f"| {h['selftest']} | `{h['function']}` | {h['case']} | {h['memtype']} {sizes} | "
                    f"[{path.name}]({path.name}) | {h['asserts']} | {'; '.join(notes)} |")
    head = textwrap.dedent("""\
        # The kernel's mm selftests, ported as `uffdctl run` scripts

        Generated from the scripts' `#:` headers by `python tests/test_selftests.py > tests/selftests/README.md`
        (tests/test_selftests.py checks it is current).  Each script mirrors one case (test x memory type) of
        tools/testing/selftests/mm/ in Linux 6.18; `make test` runs it on the host kernel and on the emulator
        (profile 6.18, soft-dirty off; soft-dirty scripts also with soft-dirty on), `pytest tests/test_selftests.py
        -rs` says why any case skips (a feature the kernel lacks, no huge pages, no gup_test, `UNSUPPORTED: not
        modelled: X (emulator)`, or `waiting on:` a command of the planned syntax).

        | selftest | function | case | memory | script | asserts | notes |
        | --- | --- | --- | --- | --- | --- | --- |
        """)
    return head + "\n".join(rows) + "\n"


def test_inventory_is_current():
    assert INVENTORY.exists() and INVENTORY.read_text() == inventory_markdown(), \
        "tests/selftests/README.md is stale: python tests/test_selftests.py > tests/selftests/README.md"


if __name__ == "__main__":
    print(inventory_markdown(), end="")
