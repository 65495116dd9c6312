"""The shared types: what crosses the line between the backends and everything above them.

Memory types and page sizes, :class:`Region`, the decoded ``struct uffd_msg``
(:class:`UffdMsg`, :func:`decode_msg`), the result dataclasses of the ioctls and
the /proc views, and :class:`HandlerPolicy`.  Plain data with kernel field names;
``to_dict()`` is the JSON form.

This module is a leaf: it imports only :mod:`uffdctl.uapi` (kernel names and
values), so the emulator's lowest room, the kernel backend, the services and the
command table can all share it without importing each other.
"""
from __future__ import annotations

import enum
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from . import uapi

PAGE_SIZE = uapi.PAGE_SIZE

class MemType(str, enum.Enum):
    """Memory types, named as the kernel selftests name them (uffd-unit-tests.c)."""

    ANON = "anon"                        # mmap(MAP_PRIVATE|MAP_ANONYMOUS)
    SHMEM = "shmem"                      # memfd_create + MAP_SHARED
    SHMEM_PRIVATE = "shmem-private"      # memfd_create + MAP_PRIVATE
    HUGETLB = "hugetlb"                  # memfd_create(MFD_HUGETLB) + MAP_SHARED
    HUGETLB_PRIVATE = "hugetlb-private"  # memfd_create(MFD_HUGETLB) + MAP_PRIVATE

    @property
    def shared(self) -> bool:
        return self in (MemType.SHMEM, MemType.HUGETLB)

    @property
    def hugetlb(self) -> bool:
        return self in (MemType.HUGETLB, MemType.HUGETLB_PRIVATE)

    @property
    def file_backed(self) -> bool:
        return self is not MemType.ANON

    def __str__(self) -> str:
        return self.value


HPAGE_SIZE = 2 << 20
"""The hugetlb page size uffdctl maps (the default hstate on x86-64)."""


def page_size_of(memtype: "MemType | str") -> int:
    """The page size a mapping of ``memtype`` faults and is registered in."""
    return HPAGE_SIZE if MemType(memtype).hugetlb else PAGE_SIZE


def size_name(size: int) -> str:
    """A size as the page-size options spell it: 2M, 1G, 64K (bytes when no unit divides it)."""
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift and not size % (1 << shift):
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass
class Region:
    """One mapping made by :meth:`Backend.mmap`.

    For shmem/hugetlb types ``fd`` is the memfd (the page cache behind it);
    ``alias`` may hold a second mapping of the same file (for CONTINUE tests
    the page cache is populated through it).
    """

    name: str
    addr: int
    len: int
    memtype: MemType
    page_size: int = uapi.PAGE_SIZE
    fd: int | None = None
    prot: int = uapi.PROT_READ | uapi.PROT_WRITE
    kind: str | None = None     # a finer type than memtype: "file", "file-private", "sysv", "sysv-hugetlb", "thp"
    path: str | None = None     # the file behind a "file" region

    @property
    def end(self) -> int:
        return self.addr + self.len

    @property
    def pages(self) -> int:
        return self.len // self.page_size

    def page(self, i: int) -> int:
        """Address of page ``i`` (in units of this region's page size)."""
        if not 0 <= i < self.pages:
            raise IndexError(f"page {i} outside region {self.name} ({self.pages} pages)")
        return self.addr + i * self.page_size

    def to_dict(self) -> dict:
        d = {"name": self.name, "start": self.addr, "len": self.len, "type": self.kind or self.memtype.value,
             "page_size": self.page_size}
        if self.path is not None:
            d["path"] = self.path
        return d


@dataclass
class UffdioApi:
    api: int
    features: int
    ioctls: int

    def to_dict(self) -> dict:
        return {"api": self.api, "features": self.features, "ioctls": self.ioctls,
                "features_decoded": uapi.Feature.decode(self.features),
                "ioctls_decoded": uapi.Ioctl.decode(self.ioctls)}


# slots: a message is made per fault on the Python fault path (dataclass(slots=) needs 3.10)
@dataclass(**({"slots": True} if sys.version_info >= (3, 10) else {}))
class UffdMsg:
    """A decoded ``struct uffd_msg``; field names are the kernel's (``arg.pagefault.flags`` -> ``flags``)."""

    event: int
    flags: int = 0       # pagefault
    address: int = 0     # pagefault
    ptid: int = 0        # pagefault (UFFD_FEATURE_THREAD_ID)
    ufd: int = 0         # fork
    from_: int = 0       # remap (``from`` in C)
    to: int = 0          # remap
    len: int = 0         # remap
    start: int = 0       # remove / unmap
    end: int = 0         # remove / unmap
    ts_ns: int = 0       # CLOCK_MONOTONIC when read (not part of uffd_msg)

    @property
    def event_name(self) -> str:
        return uapi.EVENT_NAMES.get(self.event, hex(self.event))

    def to_dict(self) -> dict:
        d: dict = {"event": self.event_name, "ts_ns": self.ts_ns}
        if self.event == uapi.Event.PAGEFAULT:
            d.update(flags=self.flags, flags_decoded=uapi.PagefaultFlag.decode(self.flags),
                     address=self.address, ptid=self.ptid)
        elif self.event == uapi.Event.FORK:
            d.update(ufd=self.ufd)
        elif self.event == uapi.Event.REMAP:
            d.update({"from": self.from_, "to": self.to, "len": self.len})
        else:
            d.update(start=self.start, end=self.end)
        return d


_MSG = struct.Struct("<BBHI24s")
UFFD_MSG_SIZE = _MSG.size   # 32: struct uffd_msg is packed


def decode_msg(raw: bytes, ts_ns: int = 0) -> UffdMsg:
    """Decode one packed 32-byte ``struct uffd_msg`` (``ts_ns``: when it was read; not part of it)."""
    event, _r1, _r2, _r3, arg = _MSG.unpack(raw)
    m = UffdMsg(event=event, ts_ns=ts_ns)
    if event == uapi.Event.PAGEFAULT:
        m.flags, m.address, m.ptid = struct.unpack_from("<QQI", arg)
    elif event == uapi.Event.FORK:
        (m.ufd,) = struct.unpack_from("<I", arg)
    elif event == uapi.Event.REMAP:
        m.from_, m.to, m.len = struct.unpack_from("<QQQ", arg)
    else:
        m.start, m.end = struct.unpack_from("<QQ", arg)
    return m


@dataclass
class AccessResult:
    """What one memory access from a thread saw."""

    minflt: int = 0          # minor faults of the thread during the access (getrusage RUSAGE_THREAD)
    majflt: int = 0
    sigbus: bool = False
    si_code: int = 0
    fault_addr: int = 0
    data: bytes | None = None  # bytes read, for reads that asked for them
    ns: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("data")
        return d


class RegionArray(Sequence):
    """PAGEMAP_SCAN regions held as one sequence of 64-bit words (start, end, categories per region: an
    ``array('Q')``, or a ``memoryview`` cast to 'Q' over the buffer the kernel backend's C loop filled):
    a ``(start, end, categories)`` tuple is made only when one is asked for.  Compares equal to any
    sequence of the same tuples."""

    __slots__ = ("flat",)

    def __init__(self, flat):
        self.flat = flat

    def __len__(self) -> int:
        return len(self.flat) // 3

    def __getitem__(self, i):
        f = self.flat
        if isinstance(i, slice):
            return [(f[3 * j], f[3 * j + 1], f[3 * j + 2]) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("region index out of range")
        return (f[3 * i], f[3 * i + 1], f[3 * i + 2])

    def __iter__(self):
        f = self.flat
        return zip(f[0::3], f[1::3], f[2::3])

    def __eq__(self, other):
        if isinstance(other, RegionArray):
            return self.flat == other.flat
        try:
            return len(other) == len(self) and all(a == tuple(b) for a, b in zip(self, other))
        except TypeError:
            return NotImplemented

    def __repr__(self):
        return f"RegionArray({list(self)!r})" if len(self) <= 8 else f"<RegionArray {len(self)} regions>"


@dataclass
class ScanResult:
    """PAGEMAP_SCAN output: ``regions`` of (start, end, categories) and ``walk_end``."""

    regions: list[tuple[int, int, int]]
    walk_end: int

    def to_dict(self) -> dict:
        return {"walk_end": self.walk_end,
                "regions": [{"start": s, "end": e, "categories": c,
                             "categories_decoded": uapi.PageCategory.decode(c)} for s, e, c in self.regions]}


def scan_continuation(scan, start: int, end: int, max_pages: int = 0, join=None) -> ScanResult:
    """PAGEMAP_SCAN over [start, end) as calls of ``scan(pos, budget) -> ScanResult`` (budget 0: unlimited),
    each from the last one's ``walk_end`` until the walk is done, no progress is made or ``max_pages`` (the
    total over the calls) is spent: the continuation uffdctl.pagemap.scan_all() describes.  ``join(regions,
    got, covered, count) -> (covered, new_pages)`` adds one call's regions (default :func:`join_scan_regions`;
    ``count``: whether the new pages are needed, i.e. there is a budget)."""
    join = join or join_scan_regions
    regions: list[tuple[int, int, int]] = []
    pos = covered = start  # every page below ``covered`` has been reported (or was not matching)
    budget = max_pages
    while pos < end:
        res = scan(pos, budget)
        covered, new_pages = join(regions, res.regions, covered, bool(budget))
        if res.walk_end <= pos:  # no progress: never loop forever
            break
        pos = res.walk_end
        if covered < pos:
            covered = pos
        if budget:
            budget -= new_pages
            if budget <= 0:
                break
    return ScanResult(regions, min(pos, end))


def join_scan_regions(regions: list, got, covered: int, count: bool = True) -> tuple[int, int]:
    """One call's regions ``got`` appended to ``regions``: what ends at or below ``covered`` is dropped (the
    kernel may return it again from below a short walk_end), a region that meets the last one held with the
    same categories extends it.  Returns (covered, pages new)."""
    new_pages = 0
    for s, e, c in got:
        if e <= covered:
            continue  # returned again from below a short walk_end
        if s < covered:
            s = covered
        new_pages += (e - s) // uapi.PAGE_SIZE
        if regions and regions[-1][1] == s and regions[-1][2] == c:
            regions[-1] = (regions[-1][0], e, c)
        else:
            regions.append((s, e, c))
        covered = e
    return covered, new_pages


@dataclass
class HandlerPolicy:
    """How a fault handler resolves each kind of fault.

    missing: ``zeropage`` | ``copy`` (from ``src`` + offset into ``base``) | ``fill`` (a page of ``fill``) | ``queue``
    wp:      ``unprotect`` | ``wake`` | ``queue``
    minor:   ``continue`` | ``queue``
    """

    missing: str = "zeropage"
    wp: str = "unprotect"
    minor: str = "continue"
    base: int = 0
    src: int = 0
    fill: int = 0
    page_size: int = uapi.PAGE_SIZE
    copy_mode: int = 0

    MISSING = ("zeropage", "copy", "fill", "queue")
    WP = ("unprotect", "wake", "queue")
    MINOR = ("continue", "queue")

    def __post_init__(self):
        for kind, allowed in (("missing", self.MISSING), ("wp", self.WP), ("minor", self.MINOR)):
            if getattr(self, kind) not in allowed:
                raise ValueError(f"unknown {kind} policy {getattr(self, kind)!r} (valid: {', '.join(allowed)})")


@dataclass(**({"slots": True} if sys.version_info >= (3, 10) else {}))   # one per handled fault, as UffdMsg
class HandledEvent:
    """One message the handler read, with what it did about it."""

    msg: UffdMsg
    action: str          # policy applied ("zeropage", ..., "queue"), or "event" for non-fault messages
    err: int = 0         # 0 or -errno of the resolving ioctl
    result: int = 0      # result field of the resolving ioctl
    seq: int = 0         # position in the handler's message stream (1-based; 0: the handler does not number)

    def to_dict(self) -> dict:
        d = self.msg.to_dict()
        d.update(action=self.action, err=self.err, result=self.result)
        return d


@dataclass
class SoftDirtyProbe:
    """Result of the soft-dirty round trip (clear_refs 4, write a page, read PM_SOFT_DIRTY)."""

    available: bool
    reason: str
    raw_before: int = 0
    raw_after: int = 0

    def to_dict(self) -> dict:
        return asdict(self)



@dataclass(frozen=True)
class PteBits:
    """The hardware bits of one PTE that pagemap does not show: RW (``write``) and D (``dirty``)."""

    write: int
    dirty: int

    def to_dict(self) -> dict:
        return {"write": self.write, "dirty": self.dirty}


@dataclass(frozen=True)
class BackendSelection:
    """Which backend the opener (uffdctl.registry.open_backend) opened for a request, and why.

    ``requested``: ``auto`` | ``kernel`` | ``emu``; ``backend``: what opened; ``reason``: ``requested``, ``the
    kernel can serve``, ``--profile 5.19 asks for the emulator``, or after a fallback (``fallback`` true) why
    the kernel could not serve.
    """

    requested: str
    backend: str
    reason: str
    fallback: bool = False

    def notice(self) -> str | None:
        """The one line a command prints on stderr when ``auto`` did not give the kernel (None otherwise)."""
        if self.requested == "auto" and self.backend != "kernel":
            how = "falling back to" if self.fallback else "using"
            return f"uffdctl: {how} the emulator backend: {self.reason}"
        return None

    def to_dict(self) -> dict:
        return {"requested": self.requested, "backend": self.backend, "reason": self.reason,
                "fallback": int(self.fallback)}


__all__ = ["size_name", "BackendSelection", "RegionArray", "scan_continuation", "join_scan_regions", "PteBits", "PAGE_SIZE", "HPAGE_SIZE", "UFFD_MSG_SIZE", "MemType", "Region", "UffdioApi", "UffdMsg", "decode_msg",
           "AccessResult", "ScanResult", "HandlerPolicy", "HandledEvent", "SoftDirtyProbe", "page_size_of"]
