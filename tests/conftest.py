"""Fixtures and the skip policy.

Kernel tests skip only with a reason detected at run time ("feature missing:
UFFD_FEATURE_MOVE", "HugePages_Total=0").  With UFFDCTL_REQUIRE_KERNEL=1 (CI)
a kernel skip becomes a failure, so a kernel test that could run here never
silently skips.  Properties of the running kernel that are not failures to reach
it (CONFIG_MEM_SOFT_DIRTY off, marker ``softdirty``) stay skips unless
UFFDCTL_REQUIRE_SOFTDIRTY=1 (set inside the QEMU run).
"""
from __future__ import annotations

import os
import time

import pytest

from uffdctl import uapi
from uffdctl.errors import BackendUnavailable
from uffdctl.registry import open_backend
from uffdctl.types import MemType

# Backends the shared case table (tests/cases.py) runs on: the real kernel; the emulator as this host is
# (profile 6.18, CONFIG_MEM_SOFT_DIRTY off); the emulator with soft-dirty on (its default).
TABLE_BACKENDS = ["kernel", "emu", "emu-sd"]

REQUIRE_KERNEL = os.environ.get("UFFDCTL_REQUIRE_KERNEL") == "1"
REQUIRE_SOFTDIRTY = os.environ.get("UFFDCTL_REQUIRE_SOFTDIRTY") == "1"


def require_kernel(reason: str):
    """Skip with ``reason``; fail instead when UFFDCTL_REQUIRE_KERNEL=1."""
    if REQUIRE_KERNEL:
        pytest.fail(f"UFFDCTL_REQUIRE_KERNEL=1 but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_softdirty(reason: str):
    if REQUIRE_SOFTDIRTY:
        pytest.fail(f"UFFDCTL_REQUIRE_SOFTDIRTY=1 but: {reason}", pytrace=False)
    pytest.skip(reason)


_kernel_unavailable: str | None = None


def _kernel_reason() -> str | None:
    global _kernel_unavailable
    if _kernel_unavailable is None:
        try:
            open_backend("kernel").close()
            _kernel_unavailable = ""
        except BackendUnavailable as e:   # what "cannot serve here" means; anything else is a bug and fails
            _kernel_unavailable = f"kernel backend unavailable: {e}"
    return _kernel_unavailable or None


def make_backend(name: str, **kw):
    """A fresh backend from the one opener (uffdctl.registry); kernel unavailability skips (or fails under
    REQUIRE_KERNEL).  ``emu``: the emulator as this host is (6.18, soft-dirty off); ``emu-sd``: soft-dirty on."""
    if name == "kernel":
        reason = _kernel_reason()
        if reason:
            require_kernel(reason)
    if name in ("emu", "emu-sd"):
        kw.setdefault("profile", "6.18")
        kw.setdefault("soft_dirty", name == "emu-sd")
        name = "emu"
    return open_backend(name, **kw)


# -- side by side: one scenario (a function of a backend returning a list of steps) on the kernel and the model --
def run_closing(b, scenario, *args):
    """``scenario(b, *args)``, then ``b.close()`` whatever happened."""
    try:
        return scenario(b, *args)
    finally:
        b.close()


def assert_steps_agree(k: list, e: list) -> None:
    """The kernel's steps equal the emulator's; else every step is listed, ``!=`` where the two differ."""
    assert k == e, "\n".join(f"{'==' if a == b else '!='} kernel {a}\n   emu    {b}" for a, b in zip(k, e))


def drain_events(h, at_least: int, timeout: float = 5.0, keep=None) -> list:
    """A fault handler's events (those ``keep`` takes) until ``at_least`` have come or ``timeout`` s passed: the
    handler logs a message once it is served, which may be after the access that raised it has returned."""
    got, deadline = [], time.monotonic() + timeout
    while True:
        got += [e for e in h.events() if keep is None or keep(e)]
        if len(got) >= at_least or time.monotonic() > deadline:
            return got
        time.sleep(0.002)


def zero_pfn(b) -> int:
    """The PFN of the shared zero page (my_zero_pfn()) on ``b``: a read of a fresh anon page maps it."""
    r = b.mmap(uapi.PAGE_SIZE, MemType.ANON, name="zeroprobe")
    b.read(r.addr, 8)
    pfn = b.pagemap(r.addr, 1)[0] & uapi.PM_PFRAME_MASK
    b.munmap(r.addr, r.len)
    return pfn


def active_swaps() -> list[str]:
    """The host's active swap devices (/proc/swaps)."""
    try:
        return [ln.split()[0] for ln in open("/proc/swaps").read().splitlines()[1:]]
    except OSError:
        return []


SWAP_SIZE = 64 << 20


def _host_swap():
    """A swapfile on the host for a kernel column (SWAP_FLAG_PREFER above any other process's device, so our
    pages never land on one that could be swapped off under them); always swapped off and removed."""
    import os
    from uffdctl import swap
    if os.geteuid() != 0:
        require_kernel("a swapfile needs root (swapon: CAP_SYS_ADMIN)")
    try:
        d = swap.on(SWAP_SIZE, priority=20000 + os.getpid() % 10000)
    except Exception as e:          # no disk filesystem for it, no mkswap: a reason found at run time
        require_kernel(f"cannot make a swapfile here: {e}")
    try:
        yield d
    finally:
        swap.off(d["filename"])


host_swap = pytest.fixture(_host_swap)
host_swap_module = pytest.fixture(scope="module")(_host_swap)


@pytest.fixture
def kernel_backend():
    b = make_backend("kernel")
    yield b
    b.close()


def registered(b, pages: int = 4, mode: int = 1, memtype="anon", features: int = 0):
    """A region of ``pages`` pages and a uffd (API done) with the region registered in ``mode``."""
    r = b.mmap(pages * uapi.PAGE_SIZE, memtype)
    u = b.userfaultfd()
    u.api(features)
    u.register(r.addr, r.len, mode)
    return r, u


@pytest.fixture(params=TABLE_BACKENDS)
def any_backend(request):
    """Each backend of TABLE_BACKENDS in turn (kernel skips with its reason)."""
    b = make_backend(request.param)
    yield b
    b.close()


def hugetlb_reason(backend) -> str | None:
    if backend.name != "kernel":
        return None
    from uffdctl.kernel import hugepages_total, meminfo
    if hugepages_total() == 0:
        return "HugePages_Total=0 (no huge pages reserved; sysctl vm.nr_hugepages=N)"
    mi = meminfo()
    avail = mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0)   # reserved ones belong to other mappings
    if avail < 4:
        return (f"HugePages_Free={mi.get('HugePages_Free', 0)} HugePages_Rsvd={mi.get('HugePages_Rsvd', 0)}: "
                f"{avail} free and unreserved (need 4; another process holds the rest)")
    return None


def alone_in_a_gib(b, length, avoid=()):
    """A place for a hugetlb mapping 2 MiB into a 1 GiB range (a PUD) that no other mapping of the process shares:
    whether a PMD table covers a hugetlb VMA decides what a walk reports of its none PTEs (walk_hugetlb_range():
    .pte_hole without one, .hugetlb_entry's PAGE_IS_HUGE with one), and a mapping of this process the model
    lacks (libraries, the interpreter's arenas) in the same GiB would have made one [the fixed-seed run's seed
    386: scan of a never-touched hugetlb-private region, 0 on the kernel, HUGE in the model].  The GiB is the
    aligned one inside a 3 GiB PROT_NONE probe, so at least 1 GiB stays free above it: top-down mmap fills that
    first.  ``avoid``: ranges once used (the kernel hands a region's old place to the next mapping)."""
    gib, hp = 1 << 30, 2 << 20
    assert length <= gib - 2 * hp
    probes = []
    try:
        for i in range(8):
            probe = b.mmap(3 * gib, "anon", name=f"gib-probe{i}", prot=0)
            probes.append(probe)
            g = (probe.addr + gib - 1) & ~(gib - 1)
            if not any(a < g + gib and g < e for a, e in avoid):
                return g + hp
        raise AssertionError("no free GiB away from the regions' old places")
    finally:
        for probe in probes:
            b.munmap(probe.addr, probe.len)


def feature_reason(backend, required: int) -> str | None:
    """Ask the kernel (UFFDIO_API on a throwaway fd), as the selftests' uffd_feature_supported()."""
    if not required:
        return None
    with backend.userfaultfd() as u:
        have = u.api(0).features
    missing = required & ~have
    if missing:
        return "feature missing: " + "|".join(uapi.Feature.decode(missing))
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "softdirty" in item.keywords:
            item.add_marker(pytest.mark.kernel)


ALL_MEMTYPES = list(MemType)
