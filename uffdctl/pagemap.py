"""/proc/PID/pagemap entries, clear_refs, and PAGEMAP_SCAN with correct continuation.

Bit names are the kernel's (fs/proc/task_mmu.c): PM_PRESENT (63), PM_SWAP (62,
includes PTE markers: uffd-wp, poison, guard), PM_FILE (61), PM_GUARD_REGION (58,
6.15+), PM_UFFD_WP (57), PM_MMAP_EXCLUSIVE (56), PM_SOFT_DIRTY (55), PFN in
bits 0-54 (0 unless the opener has CAP_SYS_ADMIN).  Works on any backend.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import uapi
from .backend import Backend, ScanResult

FLAG_BITS = (
    ("present", uapi.PM_PRESENT),
    ("swap", uapi.PM_SWAP),
    ("file", uapi.PM_FILE),
    ("guard", uapi.PM_GUARD_REGION),
    ("uffd_wp", uapi.PM_UFFD_WP),
    ("exclusive", uapi.PM_MMAP_EXCLUSIVE),
    ("soft_dirty", uapi.PM_SOFT_DIRTY),
)


@dataclass(frozen=True)
class PagemapEntry:
    """One decoded 64-bit pagemap entry."""

    addr: int
    raw: int

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
        return [n for n, bit in FLAG_BITS if self.raw & bit]

    def symbol(self, zero_pfn: int | None = None) -> str:
        """One character for the --map grid: . none, P present, W present+uffd-wp, Z zero page,
        D present+soft-dirty, M marker (uffd-wp), X marker (other: poison), G guard, S swap."""
        if self.guard:
            return "G"
        if self.present:
            if zero_pfn is not None and self.pfn == zero_pfn and self.pfn:
                return "Z"
            if self.uffd_wp:
                return "W"
            if self.soft_dirty:
                return "D"
            return "P"
        if self.swap:
            return "M" if self.uffd_wp else "X"
        return "s" if self.soft_dirty else "."

    def to_dict(self) -> dict:
        d = {"addr": self.addr, "raw": self.raw, "pfn": self.pfn}
        for n, bit in FLAG_BITS:
            d[n] = int(bool(self.raw & bit))
        return d


def read(backend: Backend, addr: int, npages: int) -> list[PagemapEntry]:
    """Entries for ``npages`` 4 KiB pages from ``addr`` (one pread on the kernel)."""
    raws = backend.pagemap(addr, npages)
    return [PagemapEntry(addr + i * uapi.PAGE_SIZE, r) for i, r in enumerate(raws)]


def entry(backend: Backend, addr: int) -> PagemapEntry:
    return read(backend, addr & ~(uapi.PAGE_SIZE - 1), 1)[0]


def scan_all(backend: Backend, start: int, end: int, *, vec_len: int = 512, **kw) -> ScanResult:
    """PAGEMAP_SCAN over [start, end), continuing from ``walk_end`` until the walk is done.

    The vector may fill before the walk ends (walk_end < end); the next call must
    start at walk_end, not at the end of the last region returned, and regions
    split at the boundary are merged back.  ``max_pages`` (if given) is the total
    budget across calls.
    """
    regions: list[tuple[int, int, int]] = []
    pos = start
    budget = kw.pop("max_pages", 0)  # 0: unlimited
    while pos < end:
        res = backend.pagemap_scan(pos, end, vec_len=vec_len, max_pages=budget, **kw)
        for s, e, c in res.regions:
            if regions and regions[-1][1] == s and regions[-1][2] == c:
                regions[-1] = (regions[-1][0], e, c)
            else:
                regions.append((s, e, c))
        if res.walk_end <= pos:  # no progress: never loop forever
            break
        pos = res.walk_end
        if budget:
            budget -= sum((e - s) // uapi.PAGE_SIZE for s, e, _ in res.regions)
            if budget <= 0:
                break
    return ScanResult(regions, min(pos, end))


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
