"""``uffdctl stress MEMTYPE MiB BOUNCES``: the kernel's userfaultfd stress test, served by uffdctl's handler.

The counterpart of ``tools/testing/selftests/mm/uffd-stress.c`` (6.12; ``selftests/vm/userfaultfd.c``'s
stress part in 6.1), same arguments, same memory types, same bounce modes, same output lines, and the
same verification.  Per bounce, per CPU: a locking thread (pthread mutex in each destination page, a
per-page counter checked against ``count_verify`` and incremented), a background thread (UFFDIO_COPY of
its share of the pages, write-protecting them half way when uffd-wp is available), and one of
uffdctl's native handler threads (cdefs/uffdctl_handler.c: MISSING -> UFFDIO_COPY from the source area,
WP -> unprotect; poll mode or blocking-read mode as the bounce's mode bits say).  The threads are
native (cdefs/uffdctl_stress.c): a thread that touches registered memory from Python would fault
holding the GIL.

A bounce's mode is the selftest's: the number of bounces left, whose bits are RANDOM (1), RACINGFAULTS
(2), VERIFY (4) and POLL (8).  A lost update — a counter that differs from what its last locker wrote —
stops the run with exit status 1, naming the page (the locking threads check on every visit, VERIFY
bounces check every page after unregistering).  The kernel backend only: the emulator runs no threads.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import uapi
from .errors import StressFailed, Unsupported, UffdctlError, uffd_error  # noqa: F401 (StressFailed lives in errors.py)
from .types import MemType

MEMTYPES = ("anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private")




@dataclass
class Bounce:
    bounces: int          # bounces left (the selftest prints this)
    mode: list[str]
    missing: list[int]    # per CPU
    wp: list[int]
    ns: int

    def line(self) -> str:
        """The selftest's two output pieces for one bounce, on one line."""
        out = f"bounces: {self.bounces}, mode: {' '.join(self.mode)}, userfaults:"
        if sum(self.missing):
            out += f" {sum(self.missing)} missing ({'+'.join(map(str, self.missing))})"
        if sum(self.wp):
            out += f" {sum(self.wp)} wp ({'+'.join(map(str, self.wp))})"
        return out

    def to_dict(self) -> dict:
        return {"bounces": self.bounces, "mode": self.mode, "missing_faults": self.missing,
                "wp_faults": self.wp, "ns": self.ns}


@dataclass
class StressResult:
    memtype: str
    nr_pages: int
    nr_pages_per_cpu: int
    nr_cpus: int
    page_size: int
    wp: bool
    bounces: list[Bounce] = field(default_factory=list)
    lost_page: int | None = None  # the test hook's dropped update, when it fired

    @property
    def userfaults(self) -> int:
        return sum(sum(b.missing) + sum(b.wp) for b in self.bounces)

    @property
    def ns(self) -> int:
        return sum(b.ns for b in self.bounces)

    def to_dict(self) -> dict:
        return {"backend": "kernel", "memtype": self.memtype, "nr_pages": self.nr_pages,
                "nr_pages_per_cpu": self.nr_pages_per_cpu, "nr_cpus": self.nr_cpus, "page_size": self.page_size,
                "uffd_wp": self.wp, "bounces": [b.to_dict() for b in self.bounces],
                "userfaults": self.userfaults, "ns": self.ns,
                "userfaults_per_s": round(self.userfaults / (self.ns / 1e9), 1) if self.ns else 0.0}


def mode_names(bounces: int) -> list[str]:
    names = [n for bit, n in ((1, "rnd"), (2, "racing"), (4, "ver")) if bounces & bit]
    return names + ["poll" if bounces & 8 else "read"]


def run(memtype: str, mib: int, bounces: int, *, nr_cpus: int | None = None, lose_update: tuple | None = None,
        progress=None) -> StressResult:
    """Run the stress test; ``progress(line)`` gets the selftest's lines as they happen.

    ``lose_update=(bounce_index, page)``: a test hook that drops one counter update of ``page`` (None:
    of the first page updated) in that bounce (0 = the first), which the verification must catch.
    ``StressResult.lost_page`` says which page it dropped (None if it never fired).
    """
    from .registry import open_backend

    if memtype not in MEMTYPES:
        raise Unsupported(f"stress: unknown memory type {memtype!r} (valid: {', '.join(MEMTYPES)})")
    if not isinstance(mib, int) or mib <= 0 or not isinstance(bounces, int) or bounces <= 0:
        raise ValueError("stress: MiB and BOUNCES must be positive integers")
    mt = MemType(memtype)
    b = open_backend("kernel")  # the emulator runs no threads: BackendUnavailable where the kernel cannot serve
    ffi, lib = b._ffi, b._lib
    try:
        page = uapi.PAGE_SIZE
        if mt.hugetlb:
            from .kernel import _hpage_size, meminfo
            page = _hpage_size()
            m = meminfo()
            free = m.get("HugePages_Free", 0) - m.get("HugePages_Rsvd", 0)
            if free * page < 2 * mib << 20:
                raise Unsupported(f"stress {memtype}: {free} free huge pages, {2 * mib << 20 >> 21} needed "
                                  "(source and destination)", "reserve some with: sysctl vm.nr_hugepages=N")
        ncpu = nr_cpus or os.cpu_count() or 1
        per_cpu = (mib << 20) // page // ncpu
        if per_cpu == 0:
            raise ValueError(f"stress: {mib} MiB is less than one {page}-byte page per CPU ({ncpu} CPUs)")
        nr_pages = per_cpu * ncpu
        size = nr_pages * page
        # shmem-private: the 6.12 selftest maps both shmem types MAP_SHARED (shmem_allocate_area())
        area_type = MemType.SHMEM if mt is MemType.SHMEM_PRIVATE else mt
        shared = area_type.shared
        areas = [b.mmap(size, area_type, name="stress_a"), b.mmap(size, area_type, name="stress_b")]
        aliases = [b.alias(r, name=f"{r.name}_alias") for r in areas] if shared else [None, None]

        u = b.userfaultfd(uapi.O_CLOEXEC | uapi.O_NONBLOCK)
        offered = u.api(0).features  # this probe fd is thrown away: UFFDIO_API works once per fd
        u.close()
        wp = bool(offered & uapi.Feature.PAGEFAULT_FLAG_WP) and (
            mt is MemType.ANON or bool(offered & uapi.Feature.WP_HUGETLBFS_SHMEM))
        want = uapi.Feature.WP_UNPOPULATED if (mt is MemType.ANON and offered & uapi.Feature.WP_UNPOPULATED) else 0
        u = b.userfaultfd(uapi.O_CLOEXEC | uapi.O_NONBLOCK)
        u.api(want)
        fl = __import__("fcntl")
        base_flags = fl.fcntl(u.fd, fl.F_GETFL) & ~os.O_NONBLOCK

        res = StressResult(memtype, nr_pages, per_cpu, ncpu, page, wp)
        if progress:
            progress(f"nr_pages: {nr_pages}, nr_pages_per_cpu: {per_cpu}")
        count_verify = ffi.new("uint64_t[]", nr_pages)
        missing = ffi.new("uint64_t[]", ncpu)
        wpf = ffi.new("uint64_t[]", ncpu)
        s = ffi.new("struct uffdctl_stress *")
        s.uffd, s.nr_cpus, s.wp, s.page_size, s.nr_pages = u.fd, ncpu, int(wp), page, nr_pages
        s.release_advice = uapi.MADV_REMOVE if shared else uapi.MADV_DONTNEED
        s.count_verify, s.missing_faults, s.wp_faults = count_verify, missing, wpf
        s.lose_update_at, s.lost_page = -1, -1
        src, dst = 0, 1
        s.src = areas[src].addr
        if lib.uffdctl_stress_init(s):
            raise Unsupported(f"stress: a {page}-byte page cannot hold the mutex and counter")
        mode = uapi.RegisterMode.MISSING | (uapi.RegisterMode.WP if wp else 0)
        left = bounces
        index = 0
        while left:
            left -= 1
            fl.fcntl(u.fd, fl.F_SETFL, base_flags | (os.O_NONBLOCK if left & 8 else 0))
            d, a = areas[dst], aliases[dst]
            t0 = time.monotonic_ns()  # a bounce is register .. verification, as the selftest's loop body
            u.register(d.addr, size, mode)
            if a is not None:
                u.register(a.addr, size, mode)
            b.madvise(d.addr, size, s.release_advice)  # see the selftest: leftovers of a racing COPY
            s.src, s.dst, s.dst_alias, s.bounces = areas[src].addr, d.addr, a.addr if a else 0, left
            if lose_update and lose_update[0] == index:
                s.lose_update_at, s.lose_armed = (-2 if lose_update[1] is None else lose_update[1]), 1
            else:
                s.lose_update_at, s.lose_armed = -1, 0
            r = lib.uffdctl_stress_bounce(s)
            if wp:
                u.writeprotect(d.addr, size, 0)
            u.unregister(d.addr, size)
            if a is not None:
                u.unregister(a.addr, size)
            if r == 0 and left & 4:
                r = lib.uffdctl_stress_verify(s)
            ns = time.monotonic_ns() - t0
            if s.lost_page >= 0:
                res.lost_page = s.lost_page
            if r:
                where = ffi.string(s.where).decode() if s.where != ffi.NULL else "bounce"
                what = f"bounce {left} (mode {' '.join(mode_names(left))})"
                if r == lib.UFFDCTL_STRESS_CORRUPT:
                    e = StressFailed(f"stress: {what}: page {s.bad_page} lost an update: counter {s.bad_count}, "
                                     f"expected {s.bad_expect} ({where})")
                    e.page, e.result = s.bad_page, res
                    raise e
                raise uffd_error(-r, where, message=f"stress: {what}")
            bn = Bounce(left, mode_names(left), list(missing), list(wpf), ns)
            res.bounces.append(bn)
            if progress:
                progress(bn.line())
            src, dst = dst, src
            index += 1
        return res
    finally:
        b.close()  # closes the uffd, unmaps the areas
