"""The case table: uffd_test_case_t in Python (tools/testing/selftests/mm/uffd-unit-tests.c).

Each case is data: a name, the function, the memory types it targets, the
features it needs from UFFDIO_API, the features it asks for, and the register
mode.  tests/test_matrix.py crosses it with memory types and backends; pairs
outside ``mem_targets`` are dropped, not skipped.  Every case asserts through
what the kernel shows: pagemap bits, fault messages, per-thread minor faults,
page contents.  Expectations are the 6.18 host's (spec §2.2, §2.4, §3) and were
measured here with the kernel backend.
"""
from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Callable

from uffdctl import pagemap, uapi
from uffdctl.backend import Backend, MemType
from uffdctl.errors import UffdError

F = uapi.Feature
M = uapi.RegisterMode
ANON, SHMEM, SHMEM_PRIVATE, HUGETLB, HUGETLB_PRIVATE = (MemType.ANON, MemType.SHMEM, MemType.SHMEM_PRIVATE,
                                                        MemType.HUGETLB, MemType.HUGETLB_PRIVATE)
ALL = frozenset(MemType)
FILE = frozenset({SHMEM, SHMEM_PRIVATE, HUGETLB, HUGETLB_PRIVATE})
SHMEM_ALL = frozenset({SHMEM, SHMEM_PRIVATE})
NOT_HUGETLB = frozenset({ANON, SHMEM, SHMEM_PRIVATE})
HUGE = frozenset({HUGETLB, HUGETLB_PRIVATE})
BLOCK = 0.25   # seconds after which an access that has not finished is taken as blocked in a fault
DONE = 5.0     # seconds an access may take to finish once resolved


@dataclass(frozen=True)
class UffdCase:
    name: str
    fn: Callable[["Ctx"], None]
    mem_targets: frozenset
    features_required: int = 0   # the kernel must offer these
    api_features: int = 0        # asked for in UFFDIO_API
    register_mode: int = M.MISSING
    pages: int = 4


class Ctx:
    """One case on one memory type: a registered region ``r`` and a filled anon source ``src``."""

    def __init__(self, b: Backend, mt: MemType, case: UffdCase):
        self.b, self.mt, self.case = b, mt, case
        self.r = b.mmap(case.pages * (2 << 20 if mt.hugetlb else uapi.PAGE_SIZE), mt, name="dst")
        self.ps = self.r.page_size
        self.src = b.mmap(self.r.len, MemType.ANON, name="src")
        for i in range(case.pages):
            b.write(self.src.addr + i * self.ps, bytes([self.fill(i)]) * self.ps)
        self.u = b.userfaultfd()
        self.api = self.u.api(case.api_features)
        self.ioctls = self.u.register(self.r.addr, self.r.len, case.register_mode) if case.register_mode else 0
        self.main = b.thread("main")

    @staticmethod
    def fill(i: int) -> int:
        return 0x41 + i

    def page(self, i: int) -> int:
        return self.r.page(i)

    def spage(self, i: int) -> int:
        """Page i of the source, in units of the destination's page size."""
        return self.src.addr + i * self.ps

    def pm(self, i: int, region=None) -> pagemap.PagemapEntry:
        region = region or self.r
        return pagemap.entry(self.b, region.page(i))

    def touch(self, i: int, write: bool, fill: int = 0x5A, thread: str = "main", region=None):
        """One access to the first byte of page i from a thread of the mm."""
        region = region or self.r
        return self.b.thread(thread).access(region.page(i), 1, write, fill=fill, stride=self.ps)

    def blocked(self, acc) -> bool:
        return not acc.wait(BLOCK)

    def finished(self, acc):
        assert acc.wait(DONE), "access still blocked after the resolving ioctl"
        return acc.result()

    def msgs(self, n: int = 1, timeout: float = 2.0) -> list:
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            out += self.u.read_msgs()
            if len(out) < n:
                time.sleep(0.005)
        return out

    def fault(self, i: int, flags: int):
        """Exactly one PAGEFAULT message for page i with these flags."""
        ms = self.msgs(1)
        assert len(ms) == 1, f"expected one message, got {ms}"
        m = ms[0]
        assert m.event == uapi.Event.PAGEFAULT, m
        assert m.address == self.page(i), (hex(m.address), hex(self.page(i)))
        assert m.flags == flags, (uapi.PagefaultFlag.decode(m.flags), uapi.PagefaultFlag.decode(flags))
        return m

    def no_msgs(self):
        assert self.u.read_msgs() == []

    def data(self, i: int, region=None) -> bytes:
        region = region or self.r
        return self.b.read(region.page(i), self.ps)

    def raises(self, fn, err: int, done="any"):
        try:
            fn()
        except UffdError as e:
            assert e.errno == err, f"{e} (expected {errno.errorcode[err]})"
            if done != "any":
                assert e.done == done, f"{e}: done={e.done}, expected {done}"
            return e
        raise AssertionError(f"expected {errno.errorcode[err]}, no error")

    def populate(self, i: int):
        """Write page i in the ordinary way (no uffd involved): a present, dirty, exclusive page."""
        acc = self.touch(i, True, fill=self.fill(i))
        assert acc.wait(DONE)
        assert not acc.result().sigbus


W = uapi.PagefaultFlag.WRITE
WPF = uapi.PagefaultFlag.WP
MINOR = uapi.PagefaultFlag.MINOR


# -- MISSING ------------------------------------------------------------------------------

def case_register_ioctls(c: Ctx):
    """uffd_register_ioctls_test: miss × wp × minor ∈ {0,1}³ -> EINVAL or the ioctls mask (spec §3.3)."""
    c.u.unregister(c.r.addr, c.r.len)
    base = uapi.UFFD_API_RANGE_IOCTLS_BASIC if c.mt.hugetlb else uapi.UFFD_API_RANGE_IOCTLS
    for mode in range(8):
        if mode == 0 or (mode & M.MINOR and c.mt is ANON):
            c.raises(lambda: c.u.register(c.r.addr, c.r.len, mode), errno.EINVAL)
            continue
        want = base
        if not mode & M.WP:
            want &= ~uapi.Ioctl.WRITEPROTECT
        if not mode & M.MINOR:
            want &= ~uapi.Ioctl.CONTINUE
        got = c.u.register(c.r.addr, c.r.len, mode)
        assert got == want, (mode, uapi.Ioctl.decode(got), uapi.Ioctl.decode(want))
    c.raises(lambda: c.u.register(c.r.addr, c.r.len, 1 << 5), errno.EINVAL)


def case_copy(c: Ctx):
    """A write fault on a missing page: message WRITE at the page address, COPY resolves it, 1 minor fault."""
    acc = c.touch(1, True)
    assert c.blocked(acc)
    c.fault(1, W)
    assert c.u.copy(c.page(1), c.spage(1), c.ps) == c.ps
    res = c.finished(acc)
    assert res.minflt == 1, res
    e = c.pm(1)
    assert e.present and not e.uffd_wp and not e.swap
    assert e.file == (c.mt.shared), e.flags()          # MAP_PRIVATE COPY allocates an anon folio
    assert e.exclusive
    assert c.data(1) == b"\x5a" + bytes([c.fill(1)]) * (c.ps - 1)
    assert not c.pm(0).present and not c.pm(2).present
    c.no_msgs()


def case_copy_read(c: Ctx):
    """A read fault: flags 0 (MISSING, not WRITE); COPY of several pages at once reports bytes done."""
    acc = c.touch(0, False)
    assert c.blocked(acc)
    c.fault(0, 0)
    assert c.u.copy(c.page(0), c.spage(0), 3 * c.ps) == 3 * c.ps
    c.finished(acc)
    for i in range(3):
        assert c.pm(i).present
        assert c.data(i) == bytes([c.fill(i)]) * c.ps
    assert not c.pm(3).present


def case_copy_wp(c: Ctx):
    """COPY with MODE_WP: present, uffd-wp, read-only; a write then raises a WP fault (WRITE|WP)."""
    assert c.u.copy(c.page(0), c.spage(0), c.ps, uapi.CopyMode.WP) == c.ps
    e = c.pm(0)
    assert e.present and e.uffd_wp
    r = c.touch(0, False)
    assert r.wait(DONE) and r.result().minflt == 0     # readable without a fault
    acc = c.touch(0, True)
    assert c.blocked(acc)
    c.fault(0, W | WPF)
    c.u.writeprotect(c.page(0), c.ps, 0)
    c.finished(acc)
    assert not c.pm(0).uffd_wp
    assert c.data(0)[0] == 0x5A


def case_copy_wp_needs_wp_mode(c: Ctx):
    """COPY MODE_WP into a range registered without WP: EINVAL, result field written (spec §2.3.1 step 3)."""
    c.raises(lambda: c.u.copy(c.page(0), c.spage(0), c.ps, uapi.CopyMode.WP), errno.EINVAL,
             done=-errno.EINVAL)
    assert not c.pm(0).present


def case_copy_dontwake(c: Ctx):
    """DONTWAKE: the faulting access stays blocked until UFFDIO_WAKE covers its address."""
    acc = c.touch(2, True)
    assert c.blocked(acc)
    c.fault(2, W)
    assert c.u.copy(c.page(2), c.spage(2), c.ps, uapi.CopyMode.DONTWAKE) == c.ps
    assert c.pm(2).present
    assert c.blocked(acc), "DONTWAKE woke the faulting thread"
    c.u.wake(c.page(3), c.ps)  # a WAKE of another page wakes nothing
    assert c.blocked(acc)
    c.u.wake(c.page(2), c.ps)
    res = c.finished(acc)
    assert res.minflt == 1


def case_copy_eexist(c: Ctx):
    """EEXIST only when the first page exists; a later existing page gives a short count and EAGAIN."""
    assert c.u.copy(c.page(1), c.spage(1), c.ps) == c.ps
    c.raises(lambda: c.u.copy(c.page(1), c.spage(1), 2 * c.ps), errno.EEXIST, done=-errno.EEXIST)
    e = c.raises(lambda: c.u.copy(c.page(0), c.spage(0), 3 * c.ps), errno.EAGAIN, done=c.ps)
    assert e.done == c.ps
    assert c.pm(0).present and not c.pm(2).present
    # the caller resumes at dst + done and learns the real error there
    c.raises(lambda: c.u.copy(c.page(0) + e.done, c.spage(0) + e.done, 2 * c.ps), errno.EEXIST,
             done=-errno.EEXIST)


def case_copy_unaligned_src(c: Ctx):
    """src need not be page-aligned (validate_unaligned_range); dst must be (EINVAL, result not written)."""
    assert c.u.copy(c.page(0), c.src.addr + 1, c.ps) == c.ps
    assert c.data(0)[:2] == bytes([c.fill(0), c.fill(0)])
    c.raises(lambda: c.u.copy(c.page(1) + 8, c.spage(1), c.ps), errno.EINVAL, done=None)


def case_zeropage(c: Ctx):
    """ZEROPAGE resolves a read fault with zeros; anon maps the shared zero page (not exclusive, no RSS)."""
    acc = c.touch(0, False)
    assert c.blocked(acc)
    c.fault(0, 0)
    assert c.u.zeropage(c.page(0), c.ps) == c.ps
    c.finished(acc)
    assert c.data(0) == bytes(c.ps)
    e = c.pm(0)
    assert e.present
    if c.mt.shared:
        assert e.file and e.exclusive        # shmem: a zeroed page-cache folio, installed like COPY
    else:
        assert not e.exclusive and not e.file  # the zero page: special PTE, no struct page
        w = c.touch(0, True)                 # write: COW from the zero page, no uffd message
        assert w.wait(DONE) and w.result().minflt == 1
        assert c.pm(0).exclusive
    c.no_msgs()


def case_zeropage_hugetlb(c: Ctx):
    """ZEROPAGE on hugetlb is EINVAL, and the kernel writes -EINVAL into the result field [measured here]."""
    c.raises(lambda: c.u.zeropage(c.page(0), c.ps), errno.EINVAL, done=-errno.EINVAL)


def case_unregister_wakes_missing(c: Ctx):
    """UNREGISTER wakes waiters of MISSING VMAs; the retried fault is an ordinary one (zero-filled)."""
    acc = c.touch(1, False)
    assert c.blocked(acc)
    c.fault(1, 0)
    c.u.unregister(c.r.addr, c.r.len)
    c.finished(acc)
    assert c.data(1) == bytes(c.ps)
    assert c.pm(1).present


def case_close_releases(c: Ctx):
    """Closing the last uffd copy releases a blocked fault; the memory then reads as zeros."""
    acc = c.touch(0, True, fill=0x33)
    assert c.blocked(acc)
    c.u.close()
    c.finished(acc)
    assert c.data(0)[0] == 0x33
    assert c.b.read(c.page(2), 8) == bytes(8)


def case_sigbus(c: Ctx):
    """UFFD_FEATURE_SIGBUS: a missing fault raises SIGBUS (BUS_ADRERR) instead of a message."""
    res = c.touch(0, True)
    assert res.wait(DONE)
    r = res.result()
    assert r.sigbus and r.si_code == 2, r    # BUS_ADRERR
    c.no_msgs()
    assert not c.pm(0).present


def case_thread_id(c: Ctx):
    """UFFD_FEATURE_THREAD_ID: ptid is the faulting thread's tid; address stays page-aligned."""
    t = c.b.thread("t2")
    acc = t.access(c.page(1) + 123, 1, False)
    assert c.blocked(acc)
    m = c.fault(1, 0)
    assert m.ptid == t.tid and m.ptid != 0
    c.u.zeropage(c.page(1), c.ps)
    c.finished(acc)


def case_exact_address(c: Ctx):
    """UFFD_FEATURE_EXACT_ADDRESS: the message carries the unmasked address; ptid is 0 without THREAD_ID."""
    acc = c.b.thread("main").access(c.page(1) + 0x123, 1, True, fill=1)
    assert c.blocked(acc)
    ms = c.msgs(1)
    assert len(ms) == 1 and ms[0].address == c.page(1) + 0x123 and ms[0].ptid == 0, ms
    c.u.zeropage(c.page(1), c.ps) if not c.mt.hugetlb else c.u.copy(c.page(1), c.spage(1), c.ps)
    c.finished(acc)


# -- WP -------------------------------------------------------------------------------------

def case_writeprotect(c: Ctx):
    """WP on a written page: RO + uffd-wp; a write raises WRITE|WP; un-protect resolves and wakes."""
    c.populate(0)
    c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.WP)
    e = c.pm(0)
    assert e.present and e.uffd_wp
    acc = c.touch(0, True, fill=0x77)
    assert c.blocked(acc)
    c.fault(0, W | WPF)
    c.u.writeprotect(c.page(0), c.ps, 0)
    res = c.finished(acc)
    assert not c.pm(0).uffd_wp
    assert c.data(0)[0] == 0x77
    assert res.minflt >= 1


def case_unprotect_write_fault(c: Ctx):
    """After WP on -> off, does the next write fault?  6.18: anon and shmem-private (an anon COW page) no;
    shmem MAP_SHARED and hugetlb yes — the un-protect leaves the PTE read-only (spec §2.3.6, measured here)."""
    c.populate(0)
    c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.WP)
    c.u.writeprotect(c.page(0), c.ps, 0)
    acc = c.touch(0, True, fill=0x66)
    res = c.finished(acc)
    want = 1 if (c.mt.shared or c.mt.hugetlb) else 0
    assert res.minflt == want, (c.mt, res.minflt)
    c.no_msgs()


def case_wp_dontwake_einval(c: Ctx):
    """WP|DONTWAKE is EINVAL; a WP on a range whose VMA is not WP-registered is ENOENT."""
    c.raises(lambda: c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.WP | uapi.WriteprotectMode.DONTWAKE),
             errno.EINVAL)
    c.u.register(c.r.addr, c.r.len, M.MISSING)
    c.raises(lambda: c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.WP), errno.ENOENT)


def case_wp_marker(c: Ctx):
    """WP on a none PTE of file memory installs a uffd-wp marker (pagemap swap+uffd_wp, not present);
    a write to it raises WRITE|WP, and un-protect resolves it."""
    c.u.writeprotect(c.page(1), c.ps, uapi.WriteprotectMode.WP)
    e = c.pm(1)
    # hugetlb's pagemap walker reports a marker as uffd_wp without PM_SWAP [measured on 6.18]
    assert e.uffd_wp and not e.present and e.swap == (not c.mt.hugetlb), e.flags()
    acc = c.touch(1, True, fill=0x11)
    assert c.blocked(acc)
    c.fault(1, W | WPF)
    c.u.writeprotect(c.page(1), c.ps, 0)
    c.finished(acc)
    assert c.pm(1).present and not c.pm(1).uffd_wp


def case_wp_anon_none(c: Ctx):
    """WP of an anon none PTE without WP_UNPOPULATED installs nothing (pagemap 0, but for soft-dirty)."""
    c.u.writeprotect(c.page(1), c.ps, uapi.WriteprotectMode.WP)
    assert c.pm(1).raw & ~uapi.PM_SOFT_DIRTY == 0  # (a soft-dirty kernel shows VM_SOFTDIRTY on holes)


def case_wp_unpopulated(c: Ctx):
    """WP_UNPOPULATED: anon none PTEs get markers; a write raises WRITE|WP (2 minor faults for the thread)."""
    c.u.writeprotect(c.page(1), c.ps, uapi.WriteprotectMode.WP)
    e = c.pm(1)
    assert e.swap and e.uffd_wp and not e.present, e.flags()
    acc = c.touch(1, True)
    assert c.blocked(acc)
    c.fault(1, W | WPF)
    c.u.writeprotect(c.page(1), c.ps, 0)
    res = c.finished(acc)
    assert res.minflt == 2, res


def case_wp_async(c: Ctx):
    """WP_ASYNC: a write to a WP page is resolved in the kernel (no message, 1 minor fault);
    PAGEMAP_SCAN then reports the page WRITTEN, an untouched WP page not."""
    c.populate(0)
    c.populate(1)
    c.u.writeprotect(c.r.addr, c.r.len, uapi.WriteprotectMode.WP)
    acc = c.touch(0, True, fill=0x42)
    res = c.finished(acc)
    assert res.minflt == 1
    c.no_msgs()
    assert not c.pm(0).uffd_wp and c.pm(1).uffd_wp
    scan = pagemap.scan_all(c.b, c.r.addr, c.r.end, category_mask=uapi.PageCategory.WRITTEN,
                            return_mask=uapi.PageCategory.WRITTEN)
    assert scan.regions == [(c.page(0), c.page(0) + c.ps, uapi.PageCategory.WRITTEN)], scan


# -- MINOR ----------------------------------------------------------------------------------

def _minor_setup(c: Ctx, i: int):
    alias = c.b.alias(c.r)
    c.b.write(alias.page(i), bytes([0xC0 + i]) * c.ps)
    return alias


def case_continue(c: Ctx):
    """MINOR fault on a page that is in the page cache but not mapped; CONTINUE maps it."""
    alias = _minor_setup(c, 1)
    acc = c.touch(1, False)
    assert c.blocked(acc)
    c.fault(1, MINOR)
    assert c.u.continue_(c.page(1), c.ps) == c.ps
    res = c.finished(acc)
    assert res.minflt == 1
    assert c.data(1) == bytes([0xC1]) * c.ps
    e = c.pm(1)
    assert e.present and e.file and not e.exclusive    # mapped twice: here and through the alias
    c.raises(lambda: c.u.continue_(c.page(1), c.ps), errno.EEXIST, done=-errno.EEXIST)
    c.raises(lambda: c.u.continue_(c.page(2), c.ps), errno.EFAULT, done=-errno.EFAULT)  # nothing in the cache
    w = c.touch(1, True, fill=0x99)
    assert w.wait(DONE)
    # MAP_SHARED: writable, no fault; MAP_PRIVATE: read-only (page_in_cache && !shared) -> COW fault
    assert w.result().minflt == (0 if c.mt.shared else 1), (c.mt, w.result())
    assert c.data(1, alias)[0] == (0x99 if c.mt.shared else 0xC1)


def case_continue_wp(c: Ctx):
    """CONTINUE with MODE_WP (6.4+) maps the page uffd-wp: a write raises WRITE|WP."""
    _minor_setup(c, 0)
    assert c.u.continue_(c.page(0), c.ps, uapi.ContinueMode.WP) == c.ps
    assert c.pm(0).uffd_wp and c.pm(0).present
    acc = c.touch(0, True)
    assert c.blocked(acc)
    c.fault(0, W | WPF)
    c.u.writeprotect(c.page(0), c.ps, 0)
    c.finished(acc)


def case_continue_anon(c: Ctx):
    """CONTINUE on anon memory is EINVAL (result field written)."""
    c.raises(lambda: c.u.continue_(c.page(0), c.ps), errno.EINVAL, done=-errno.EINVAL)


# -- POISON ---------------------------------------------------------------------------------

def case_poison(c: Ctx):
    """POISON installs a marker (pagemap swap, not present); any access is SIGBUS; a second POISON is EEXIST;
    COPY over the marker is allowed on 6.18 (pte_none_mostly)."""
    acc = c.touch(1, False)
    assert c.blocked(acc)
    c.fault(1, 0)
    assert c.u.poison(c.page(1), c.ps) == c.ps
    res = c.finished(acc)
    assert res.sigbus, res
    e = c.pm(1)
    # hugetlb's pagemap walker does not report a poison marker at all [measured on 6.18]
    assert not e.present and not e.uffd_wp and e.swap == (not c.mt.hugetlb), e.flags()
    c.raises(lambda: c.u.poison(c.page(1), c.ps), errno.EEXIST, done=-errno.EEXIST)
    again = c.touch(1, True)
    assert again.wait(DONE) and again.result().sigbus
    c.no_msgs()
    assert c.u.copy(c.page(1), c.spage(1), c.ps) == c.ps
    assert c.pm(1).present


# -- MOVE -----------------------------------------------------------------------------------

def case_move(c: Ctx):
    """MOVE re-homes an exclusive anon page: dst present (same contents), src becomes none."""
    s = c.b.mmap(c.r.len, MemType.ANON, name="movesrc")
    for i in range(2):
        c.b.write(s.page(i), bytes([0xE0 + i]) * c.ps)
    acc = c.touch(0, False)
    assert c.blocked(acc)
    c.fault(0, 0)
    assert c.u.move(c.page(0), s.page(0), 2 * c.ps) == 2 * c.ps
    c.finished(acc)
    assert c.data(0) == bytes([0xE0]) * c.ps and c.data(1) == bytes([0xE1]) * c.ps
    assert c.pm(0).present and c.pm(0).exclusive
    assert c.pm(0, s).raw & ~uapi.PM_SOFT_DIRTY == 0 and c.pm(1, s).raw & ~uapi.PM_SOFT_DIRTY == 0
    # dst exists: EEXIST; src hole: ENOENT, unless ALLOW_SRC_HOLES (holes count as moved)
    c.b.write(s.page(2), b"x" * c.ps)
    c.raises(lambda: c.u.move(c.page(0), s.page(2), c.ps), errno.EEXIST, done=-errno.EEXIST)
    c.raises(lambda: c.u.move(c.page(2), s.page(0), c.ps), errno.ENOENT, done=-errno.ENOENT)
    assert c.u.move(c.page(2), s.page(0), c.ps, uapi.MoveMode.ALLOW_SRC_HOLES) == c.ps
    assert not c.pm(2).present


def case_move_shmem(c: Ctx):
    """MOVE into file memory is EINVAL; REGISTER advertises MOVE for shmem anyway, not for hugetlb (spec §3.3)."""
    assert bool(c.ioctls & uapi.Ioctl.MOVE) == (not c.mt.hugetlb)
    c.raises(lambda: c.u.move(c.page(0), c.spage(0), c.ps), errno.EINVAL, done=-errno.EINVAL)


# -- DONTWAKE on every resolving ioctl ----------------------------------------------------------

def _dontwake(c: Ctx, i: int, write: bool, flags: int, resolve):
    """The resolving ioctl with DONTWAKE leaves the faulting access blocked until UFFDIO_WAKE."""
    acc = c.touch(i, write)
    assert c.blocked(acc)
    c.fault(i, flags)
    resolve()
    assert c.blocked(acc), "DONTWAKE woke the faulting thread"
    c.u.wake(c.page(i), c.ps)
    return c.finished(acc)


def case_zeropage_dontwake(c: Ctx):
    _dontwake(c, 1, False, 0, lambda: c.u.zeropage(c.page(1), c.ps, uapi.ZeropageMode.DONTWAKE))
    assert c.pm(1).present


def case_poison_dontwake(c: Ctx):
    res = _dontwake(c, 1, False, 0, lambda: c.u.poison(c.page(1), c.ps, uapi.PoisonMode.DONTWAKE))
    assert res.sigbus


def case_continue_dontwake(c: Ctx):
    _minor_setup(c, 2)
    _dontwake(c, 2, False, MINOR, lambda: c.u.continue_(c.page(2), c.ps, uapi.ContinueMode.DONTWAKE))
    assert c.data(2)[0] == 0xC2


def case_writeprotect_dontwake(c: Ctx):
    """Un-protect with DONTWAKE resolves the PTE but leaves the writer blocked until WAKE."""
    c.populate(0)
    c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.WP)
    _dontwake(c, 0, True, W | WPF, lambda: c.u.writeprotect(c.page(0), c.ps, uapi.WriteprotectMode.DONTWAKE))
    assert not c.pm(0).uffd_wp


def case_move_dontwake(c: Ctx):
    s = c.b.mmap(c.ps, MemType.ANON, name="movesrc")
    c.b.write(s.addr, b"m" * c.ps)
    _dontwake(c, 3, True, W, lambda: c.u.move(c.page(3), s.addr, c.ps, uapi.MoveMode.DONTWAKE))
    assert c.data(3)[1:2] == b"m"


# -- events ---------------------------------------------------------------------------------

def case_events(c: Ctx):
    """REMOVE (madvise DONTNEED) and UNMAP (munmap) events, read by a handler thread (the mm operation
    blocks until the event is read)."""
    from uffdctl.backend import HandlerPolicy
    assert c.u.copy(c.page(0), c.spage(0), 2 * c.ps) == 2 * c.ps
    h = c.b.fault_handler(c.u, HandlerPolicy(missing="queue", wp="queue", minor="queue"))
    with h:
        c.b.madvise(c.page(0), c.ps, uapi.MADV_DONTNEED)
        assert not c.pm(0).present and c.pm(1).present
        c.b.munmap(c.page(3), c.ps)
        deadline = time.monotonic() + 2
        evs = []
        while len(evs) < 2 and time.monotonic() < deadline:
            evs += h.events()
            time.sleep(0.01)
    kinds = [(e.msg.event_name, e.msg.start, e.msg.end) for e in evs]
    assert kinds == [("remove", c.page(0), c.page(0) + c.ps), ("unmap", c.page(3), c.page(3) + c.ps)], kinds


def case_event_remap(c: Ctx):
    """REMAP (mremap moving a registered VMA): from/to/len, then UNMAP of nothing (spec §3.5 [E K5])."""
    from uffdctl.backend import HandlerPolicy
    dest = c.b.mmap(c.r.len, MemType.ANON, name="remap-dest")
    with c.b.fault_handler(c.u, HandlerPolicy(missing="queue")) as h:
        new = c.b.mremap(c.r.addr, c.r.len, c.r.len, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, dest.addr)
        assert new == dest.addr
        deadline = time.monotonic() + 2
        evs = []
        while not evs and time.monotonic() < deadline:
            evs += h.events()
            time.sleep(0.01)
    m = evs[0].msg
    assert (m.event_name, m.from_, m.to, m.len) == ("remap", c.r.addr, dest.addr, c.r.len), evs


def case_event_fork(c: Ctx):
    """FORK: the child's uffd arrives as a new fd in the monitor; the child's range is registered on it.
    Once the child exits, range ioctls on that uffd give ESRCH and REGISTER gives ENOMEM (spec §3.2 [E P1-P4])."""
    from uffdctl.backend import HandlerPolicy
    with c.b.fault_handler(c.u, HandlerPolicy(missing="queue")) as h:
        c.b.fork_child()
        deadline = time.monotonic() + 2
        evs = []
        while not evs and time.monotonic() < deadline:
            evs += h.events()
            time.sleep(0.01)
    assert [e.msg.event_name for e in evs] == ["fork"], evs
    child = c.b.adopt_uffd(evs[0].msg.ufd)
    try:
        c.raises(lambda: child.zeropage(c.page(0), c.ps), errno.ESRCH)
        c.raises(lambda: child.register(c.r.addr, c.r.len, M.MISSING), errno.ENOMEM)
    finally:
        child.close()


def case_handler(c: Ctx):
    """The handler thread resolves MISSING faults by policy and logs each message with the action taken."""
    from uffdctl.backend import HandlerPolicy
    pol = HandlerPolicy(missing="copy", base=c.r.addr, src=c.src.addr, page_size=c.ps)
    with c.b.fault_handler(c.u, pol) as h:
        for i in range(c.case.pages):
            acc = c.touch(i, False)
            c.finished(acc)
    evs = h.events()  # after stop: an entry is logged after its ioctl, so it can trail the woken access
    assert [(e.action, e.msg.address, e.err) for e in evs] == [("copy", c.page(i), 0) for i in range(c.case.pages)]
    for i in range(c.case.pages):
        assert c.data(i) == bytes([c.fill(i)]) * c.ps


CASES = [
    UffdCase("register-ioctls", case_register_ioctls, ALL),
    UffdCase("copy", case_copy, ALL),
    UffdCase("copy-read", case_copy_read, ALL),
    UffdCase("copy-wp", case_copy_wp, ALL, register_mode=M.MISSING | M.WP),
    UffdCase("copy-wp-einval", case_copy_wp_needs_wp_mode, ALL),
    UffdCase("copy-dontwake", case_copy_dontwake, ALL),
    UffdCase("copy-eexist", case_copy_eexist, ALL),
    UffdCase("copy-unaligned", case_copy_unaligned_src, NOT_HUGETLB),
    UffdCase("zeropage", case_zeropage, NOT_HUGETLB),
    UffdCase("zeropage-einval", case_zeropage_hugetlb, HUGE),
    UffdCase("unregister-wakes", case_unregister_wakes_missing, ALL),
    UffdCase("close-releases", case_close_releases, ALL),
    UffdCase("sigbus", case_sigbus, ALL, F.SIGBUS, F.SIGBUS),
    UffdCase("thread-id", case_thread_id, NOT_HUGETLB, F.THREAD_ID, F.THREAD_ID),
    UffdCase("exact-address", case_exact_address, ALL, F.EXACT_ADDRESS, F.EXACT_ADDRESS),
    UffdCase("writeprotect", case_writeprotect, ALL, F.PAGEFAULT_FLAG_WP, register_mode=M.WP),
    UffdCase("unprotect-write", case_unprotect_write_fault, ALL, F.PAGEFAULT_FLAG_WP, register_mode=M.WP),
    UffdCase("wp-einval", case_wp_dontwake_einval, ALL, register_mode=M.WP),
    UffdCase("wp-marker", case_wp_marker, FILE, F.WP_HUGETLBFS_SHMEM, register_mode=M.WP),
    UffdCase("wp-none", case_wp_anon_none, frozenset({ANON}), register_mode=M.WP),
    UffdCase("wp-unpopulated", case_wp_unpopulated, frozenset({ANON}), F.WP_UNPOPULATED, F.WP_UNPOPULATED,
             register_mode=M.WP),
    UffdCase("wp-async", case_wp_async, NOT_HUGETLB, F.WP_ASYNC, F.WP_ASYNC, register_mode=M.WP),
    UffdCase("continue", case_continue, FILE, F.MINOR_SHMEM | F.MINOR_HUGETLBFS, register_mode=M.MINOR),
    UffdCase("continue-wp", case_continue_wp, FILE, F.MINOR_SHMEM | F.MINOR_HUGETLBFS, register_mode=M.MINOR | M.WP),
    UffdCase("continue-einval", case_continue_anon, frozenset({ANON})),
    UffdCase("poison", case_poison, ALL, F.POISON),
    UffdCase("move", case_move, frozenset({ANON}), F.MOVE),
    UffdCase("move-einval", case_move_shmem, FILE, F.MOVE),
    UffdCase("events", case_events, NOT_HUGETLB, F.EVENT_REMOVE | F.EVENT_UNMAP, F.EVENT_REMOVE | F.EVENT_UNMAP),
    UffdCase("zeropage-dontwake", case_zeropage_dontwake, NOT_HUGETLB),
    UffdCase("poison-dontwake", case_poison_dontwake, NOT_HUGETLB, F.POISON),
    UffdCase("continue-dontwake", case_continue_dontwake, FILE, F.MINOR_SHMEM | F.MINOR_HUGETLBFS,
             register_mode=M.MINOR),
    UffdCase("writeprotect-dontwake", case_writeprotect_dontwake, ALL, F.PAGEFAULT_FLAG_WP, register_mode=M.WP),
    UffdCase("move-dontwake", case_move_dontwake, frozenset({ANON}), F.MOVE),
    UffdCase("event-remap", case_event_remap, NOT_HUGETLB, F.EVENT_REMAP, F.EVENT_REMAP),
    UffdCase("event-fork", case_event_fork, frozenset({ANON}), F.EVENT_FORK, F.EVENT_FORK),
    UffdCase("handler", case_handler, ALL),
]
