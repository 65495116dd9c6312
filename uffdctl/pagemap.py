"""/proc/PID/pagemap entries, clear_refs, and PAGEMAP_SCAN with correct continuation.

Bit names are the kernel's (fs/proc/task_mmu.c): PM_PRESENT (63), PM_SWAP (62,
includes PTE markers: uffd-wp, poison, guard), PM_FILE (61), PM_GUARD_REGION (58,
6.15+), PM_UFFD_WP (57), PM_MMAP_EXCLUSIVE (56), PM_SOFT_DIRTY (55), PFN in
bits 0-54 (0 unless the opener has CAP_SYS_ADMIN).  Works on any backend.
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence

from . import uapi
from .backend import Backend, ScanResult
from .types import RegionArray  # noqa: F401 (re-exported: PAGEMAP_SCAN regions in one array)
from .types import scan_continuation

FLAG_BITS = (
    ("present", uapi.PM_PRESENT),
    ("swap", uapi.PM_SWAP),
    ("file", uapi.PM_FILE),
    ("guard", uapi.PM_GUARD_REGION),
    ("uffd_wp", uapi.PM_UFFD_WP),
    ("exclusive", uapi.PM_MMAP_EXCLUSIVE),
    ("soft_dirty", uapi.PM_SOFT_DIRTY),
)


class PagemapEntry:
    """One decoded 64-bit pagemap entry (made on demand: a :class:`PagemapView` holds raw integers)."""

    __slots__ = ("addr", "raw")

    def __init__(self, addr: int, raw: int):
        self.addr = addr
        self.raw = raw

    def __eq__(self, other):
        return isinstance(other, PagemapEntry) and self.addr == other.addr and self.raw == other.raw

    def __hash__(self):
        return hash((self.addr, self.raw))

    def __repr__(self):
        return f"PagemapEntry(addr=0x{self.addr:x}, raw=0x{self.raw:016x})"

    @property
    def present(self) -> bool:
        return bool(self.raw & uapi.PM_PRESENT)

    @property
    def swap(self) -> bool:
        return bool(self.raw & uapi.PM_SWAP)

    @property
    def file(self) -> bool:
        return bool(self.raw & uapi.PM_FILE)

    @property
    def guard(self) -> bool:
        return bool(self.raw & uapi.PM_GUARD_REGION)

    @property
    def uffd_wp(self) -> bool:
        return bool(self.raw & uapi.PM_UFFD_WP)

    @property
    def exclusive(self) -> bool:
        return bool(self.raw & uapi.PM_MMAP_EXCLUSIVE)

    @property
    def soft_dirty(self) -> bool:
        return bool(self.raw & uapi.PM_SOFT_DIRTY)

    @property
    def pfn(self) -> int:
        """PFN when present (0 without CAP_SYS_ADMIN); swap type/offset bits otherwise."""
        return self.raw & uapi.PM_PFRAME_MASK

    @property
    def marker(self) -> bool:
        """A non-present, non-none entry with no swap offset: a PTE marker (uffd-wp, poison, guard)."""
        return self.swap and not self.present

    def flags(self) -> list[str]:
        return flag_names(self.raw)

    def symbol(self, zero_pfn: int | None = None) -> str:
        """One character for the --map grid: . none, P present, W present+uffd-wp, Z zero page,
        D present+soft-dirty, M marker (uffd-wp), X marker (other: poison), G guard, S swap."""
        return symbol(self.raw, zero_pfn)

    def to_dict(self) -> dict:
        raw = self.raw
        d = {"addr": self.addr, "raw": raw, "pfn": raw & uapi.PM_PFRAME_MASK}
        for n, bit in FLAG_BITS:
            d[n] = 1 if raw & bit else 0
        return d


FLAG_MASK = 0
for _n, _bit in FLAG_BITS:
    FLAG_MASK |= _bit


def flag_names(raw: int) -> list[str]:
    return [n for n, bit in FLAG_BITS if raw & bit]


def symbol(raw: int, zero_pfn: int | None = None) -> str:
    """The --map character of one raw entry (see :meth:`PagemapEntry.symbol`)."""
    if raw & uapi.PM_GUARD_REGION:
        return "G"
    if raw & uapi.PM_PRESENT:
        pfn = raw & uapi.PM_PFRAME_MASK
        if zero_pfn is not None and pfn == zero_pfn and pfn:
            return "Z"
        if raw & uapi.PM_UFFD_WP:
            return "W"
        if raw & uapi.PM_SOFT_DIRTY:
            return "D"
        return "P"
    if raw & uapi.PM_SWAP:
        return "M" if raw & uapi.PM_UFFD_WP else "X"
    return "s" if raw & uapi.PM_SOFT_DIRTY else "."


def _lib():
    """The compiled helpers when built (pure computation: they work on any backend's entries), else None."""
    try:
        from ._native import load
        return load()
    except Exception:  # BackendUnavailable: the Python fallbacks below give the same answers
        return None


class PagemapView(Sequence):
    """``npages`` raw pagemap entries from ``addr`` held in one ``array('Q')``.

    Indexing makes a :class:`PagemapEntry` on demand; the bulk questions (``counts``, ``runs``,
    ``symbols``) are answered over the whole array in C when the native module is built, so a
    range of a million pages costs one read and no Python object per entry.
    """

    __slots__ = ("addr", "raw")

    def __init__(self, addr: int, raw: array):
        self.addr = addr
        self.raw = raw  # array('Q'): the kernel's 64-bit entries, index i is page addr + i * 4096

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, _, step = i.indices(len(self.raw))
            if step != 1:
                return [self[j] for j in range(*i.indices(len(self.raw)))]
            return PagemapView(self.addr + start * uapi.PAGE_SIZE, self.raw[i])
        if i < 0:
            i += len(self.raw)
        return PagemapEntry(self.addr + i * uapi.PAGE_SIZE, self.raw[i])

    def __iter__(self):
        a, P = self.addr, uapi.PAGE_SIZE
        for i, r in enumerate(self.raw):
            yield PagemapEntry(a + i * P, r)

    def __repr__(self):
        return f"<PagemapView 0x{self.addr:x} {len(self.raw)} pages>"

    def counts(self) -> dict[str, int]:
        """How many entries have each flag set (FLAG_BITS names)."""
        nat = _lib()
        if nat is not None and len(self.raw):
            ffi, lib = nat
            out = ffi.new("uint64_t[]", len(FLAG_BITS))
            lib.uffdctl_pagemap_counts(ffi.from_buffer("uint64_t[]", self.raw), len(self.raw), out)
            return {n: out[i] for i, (n, _) in enumerate(FLAG_BITS)}
        return {n: sum(1 for r in self.raw if r & bit) for n, bit in FLAG_BITS}

    def runs(self, mask: int = FLAG_MASK) -> list[tuple[int, int, int]]:
        """Runs of consecutive entries whose ``raw & mask`` is equal: (first index, count, raw & mask)."""
        raw, n = self.raw, len(self.raw)
        if not n:
            return []
        nat = _lib()
        if nat is not None:
            ffi, lib = nat
            src = ffi.from_buffer("uint64_t[]", raw)
            cap = 64
            while True:
                starts = ffi.new("uint64_t[]", cap)
                got = lib.uffdctl_pagemap_runs(src, n, mask, starts, cap)
                if got <= cap:
                    break
                cap = got
            idx = list(ffi.unpack(starts, got))
        else:
            idx, prev = [], None
            for i, r in enumerate(raw):
                v = r & mask
                if v != prev:
                    idx.append(i)
                    prev = v
        idx.append(n)
        return [(idx[k], idx[k + 1] - idx[k], raw[idx[k]] & mask) for k in range(len(idx) - 1)]

    def symbols(self, zero_pfn: int | None = None) -> str:
        """The --map characters of every entry, as one string."""
        nat = _lib()
        if nat is not None and len(self.raw):
            ffi, lib = nat
            out = ffi.new("char[]", len(self.raw))
            lib.uffdctl_pagemap_symbols(ffi.from_buffer("uint64_t[]", self.raw), len(self.raw), zero_pfn or 0, out)
            return ffi.unpack(out, len(self.raw)).decode("ascii")
        return "".join(symbol(r, zero_pfn) for r in self.raw)


def read(backend: Backend, addr: int, npages: int) -> PagemapView:
    """Entries for ``npages`` 4 KiB pages from ``addr`` (one pread on the kernel, straight into an array)."""
    return PagemapView(addr, backend.pagemap_array(addr, npages))


def entry(backend: Backend, addr: int) -> PagemapEntry:
    return read(backend, addr & ~(uapi.PAGE_SIZE - 1), 1)[0]


def scan_all(backend: Backend, start: int, end: int, *, vec_len: int = 512, **kw) -> ScanResult:
    """PAGEMAP_SCAN over [start, end), continuing from ``walk_end`` until the walk is done.

    The vector may fill before the walk ends (walk_end < end); the next call must
    start at walk_end, not at the end of the last region returned, and regions
    split at the boundary are merged back.  ``max_pages`` (if given) is the total
    budget across calls.

    A continuation never yields a page twice: the kernel may report a ``walk_end``
    below the end of regions it already returned (6.18 does, by up to 4 MiB, when a
    call returns more than 512 regions without filling the vector: see
    docs/pagemap-scan-walk-end.md), so what a later call returns below the end of
    what is already held is dropped, and only new pages count against ``max_pages``.
    """
    native = getattr(backend, "pagemap_scan_all", None)
    if native is not None:  # the same loop in C (kernel backend)
        return native(start, end, vec_len=vec_len, **kw)
    return scan_all_loop(backend, start, end, vec_len=vec_len, **kw)


def scan_all_loop(backend: Backend, start: int, end: int, *, vec_len: int = 512, **kw) -> ScanResult:
    """scan_all() written over single ``pagemap_scan`` calls (any backend; the kernel's does it in C)."""
    budget = kw.pop("max_pages", 0)  # 0: unlimited
    return scan_continuation(lambda pos, left: backend.pagemap_scan(pos, end, vec_len=vec_len, max_pages=left, **kw),
                             start, end, budget)


def probe_scan_categories(backend: Backend, addr: int) -> dict[str, bool]:
    """Which PAGE_IS_* categories the running kernel accepts in category_mask (unknown -> EINVAL)."""
    out = {}
    for cat in uapi.PageCategory:
        try:
            backend.pagemap_scan(addr, addr + uapi.PAGE_SIZE, category_mask=cat.value, return_mask=cat.value,
                                 vec_len=1)
            out[cat.name] = True
        except OSError:
            out[cat.name] = False
    return out


# /proc/kpageflags (include/uapi/linux/kernel-page-flags.h): needs CAP_SYS_ADMIN and a real PFN.
KPF_NAMES = ("LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB", "WRITEBACK",
             "RECLAIM", "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED", "COMPOUND_HEAD", "COMPOUND_TAIL",
             "HUGE", "UNEVICTABLE", "HWPOISON", "NOPAGE", "KSM", "THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE")


def kpageflags(pfn: int, path: str = "/proc/kpageflags") -> list[str]:
    """The KPF_* flags of a page frame, by kernel name (e.g. ['UPTODATE', 'DIRTY', 'LRU', 'MMAP', 'ANON'])."""
    import os
    import struct
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, 8, pfn * 8)
    finally:
        os.close(fd)
    if len(raw) != 8:
        raise ValueError(f"no kpageflags entry for pfn 0x{pfn:x}")
    (v,) = struct.unpack("<Q", raw)
    return [name for i, name in enumerate(KPF_NAMES) if v >> i & 1]
