"""The backend interface: what both the real kernel and the emulator provide.

A *backend* is one address space (an ``mm``) with the operations uffdctl needs:
mappings, userfaultfds and their ioctls, threads that access memory, and the
/proc views (pagemap, clear_refs, PAGEMAP_SCAN).  ``uffdctl.kernel`` drives the
running kernel; ``uffdctl.emu`` models it.  Code written against this module
must not be able to tell which one it has, except by asking (``Backend.name``,
``Backend.describe()``).

The layer is thin: each ioctl fills its struct, calls, and returns the result
field or raises :class:`uffdctl.errors.UffdError` carrying it.  Retry, resume
and wake-on-EEXIST policy live in :mod:`uffdctl.ops`.
"""
from __future__ import annotations

import abc
import enum
import errno
import os
from dataclasses import asdict, dataclass

from . import uapi
from .errors import BackendUnavailable


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


@dataclass
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


class Access(abc.ABC):
    """An access in progress; it may be blocked in a userfault."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """True once the access has finished (False on timeout: still blocked)."""

    @property
    @abc.abstractmethod
    def done(self) -> bool: ...

    @abc.abstractmethod
    def result(self) -> AccessResult:
        """The result; raises RuntimeError if not done."""


class Thread(abc.ABC):
    """A thread of the address space that touches memory (faults are counted per thread)."""

    name: str
    tid: int

    @abc.abstractmethod
    def access(self, addr: int, len: int, write: bool, data: bytes | None = None, fill: int = 0,
               stride: int = 0, want_data: bool = False) -> Access:
        """Start an access; returns at once.  ``stride`` > 0 touches one byte per stride."""

    @abc.abstractmethod
    def faults(self) -> tuple[int, int]:
        """Cumulative (minflt, majflt) of this thread."""


@dataclass
class ScanResult:
    """PAGEMAP_SCAN output: ``regions`` of (start, end, categories) and ``walk_end``."""

    regions: list[tuple[int, int, int]]
    walk_end: int

    def to_dict(self) -> dict:
        return {"walk_end": self.walk_end,
                "regions": [{"start": s, "end": e, "categories": c,
                             "categories_decoded": uapi.PageCategory.decode(c)} for s, e, c in self.regions]}


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


@dataclass
class HandledEvent:
    """One message the handler read, with what it did about it."""

    msg: UffdMsg
    action: str          # policy applied ("zeropage", ..., "queue"), or "event" for non-fault messages
    err: int = 0         # 0 or -errno of the resolving ioctl
    result: int = 0      # result field of the resolving ioctl

    def to_dict(self) -> dict:
        d = self.msg.to_dict()
        d.update(action=self.action, err=self.err, result=self.result)
        return d


class Handler(abc.ABC):
    """A fault-handling thread: polls the uffd, resolves by policy, logs every message."""

    policy: HandlerPolicy

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop; never hangs, never leaves a thread blocked in a fault it took."""

    @abc.abstractmethod
    def events(self) -> list[HandledEvent]:
        """Drain the log (each message once)."""

    @abc.abstractmethod
    def stats(self) -> dict: ...

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class Uffd(abc.ABC):
    """One userfaultfd.  Method names and arguments are the kernel's (``continue_`` for CONTINUE)."""

    fd: int
    features: int = 0   # as negotiated by api(); 0 before

    @abc.abstractmethod
    def api(self, features: int = 0, api: int = uapi.UFFD_API) -> UffdioApi: ...

    @abc.abstractmethod
    def register(self, start: int, len: int, mode: int) -> int:
        """UFFDIO_REGISTER; returns uffdio_register.ioctls."""

    @abc.abstractmethod
    def unregister(self, start: int, len: int) -> None: ...

    @abc.abstractmethod
    def wake(self, start: int, len: int) -> None: ...

    @abc.abstractmethod
    def copy(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        """UFFDIO_COPY; returns uffdio_copy.copy (bytes) or raises with .done set."""

    @abc.abstractmethod
    def zeropage(self, start: int, len: int, mode: int = 0) -> int: ...

    @abc.abstractmethod
    def continue_(self, start: int, len: int, mode: int = 0) -> int: ...

    @abc.abstractmethod
    def writeprotect(self, start: int, len: int, mode: int = 0) -> None: ...

    @abc.abstractmethod
    def poison(self, start: int, len: int, mode: int = 0) -> int: ...

    @abc.abstractmethod
    def move(self, dst: int, src: int, len: int, mode: int = 0) -> int: ...

    @abc.abstractmethod
    def read_msgs(self, max: int = 64) -> list[UffdMsg]:
        """Non-blocking read(); [] when nothing is pending."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    def fileno(self) -> int:
        return self.fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class SoftDirtyProbe:
    """Result of the soft-dirty round trip (clear_refs 4, write a page, read PM_SOFT_DIRTY)."""

    available: bool
    reason: str
    raw_before: int = 0
    raw_after: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(abc.ABC):
    """One address space, real or emulated."""

    name: str  # "kernel" or "emu"

    # -- identity ---------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> dict:
        """{"backend", "release", "profile", "soft_dirty", ...}."""

    # -- region bookkeeping, shared by the backends (they keep ``_regions`` and ``_names``) ----------
    def _region_name(self, name: str | None) -> str:
        """The given name (which must be free), or the first free r<N>."""
        if name is None:
            return next(n for n in map("r{}".format, self._names) if n not in self._regions)
        if name in self._regions:
            raise ValueError(f"region {name!r} exists")
        return name

    @staticmethod
    def _check_len(len: int, page: int, addr: int | None) -> None:
        if len <= 0 or len % page:
            from .errors import uffd_error
            raise uffd_error(errno.EINVAL, "mmap", addr, len, message=f"length must be a positive multiple of {page}")

    def _alias_name(self, region: Region, name: str | None) -> str:
        if region.fd is None:
            raise ValueError(f"region {region.name} is anonymous: no file to alias")
        return self._region_name(name or f"{region.name}-alias")

    def _add_region(self, r: Region) -> Region:
        self._regions[r.name] = r
        return r

    # -- mappings ---------------------------------------------------------------
    @abc.abstractmethod
    def mmap(self, len: int, memtype: MemType | str = MemType.ANON, name: str | None = None,
             prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None) -> Region: ...

    @abc.abstractmethod
    def alias(self, region: Region, name: str | None = None) -> Region:
        """A second MAP_SHARED mapping of a shmem/hugetlb region's file (not registered)."""

    @abc.abstractmethod
    def munmap(self, addr: int, len: int) -> None: ...

    @abc.abstractmethod
    def madvise(self, addr: int, len: int, advice: int) -> None: ...

    @abc.abstractmethod
    def mprotect(self, addr: int, len: int, prot: int) -> None: ...

    @abc.abstractmethod
    def mremap(self, old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int: ...

    # -- more of the mm surface (mmops): defaults say "not modelled"; the kernel backend overrides ----------
    # The advices the emulator models; anything else is NotModelled there (never a guessed EINVAL).
    MODELLED_ADVICE: frozenset | None = frozenset({uapi.MADV_DONTNEED, uapi.MADV_FREE, uapi.MADV_REMOVE,
                                                   uapi.MADV_GUARD_INSTALL, uapi.MADV_GUARD_REMOVE,
                                                   uapi.MADV_NOHUGEPAGE})

    def check_advice(self, advice: int, name: str) -> None:
        """Raise NotModelled unless this backend models ``advice`` (None: every advice, the kernel)."""
        if self.MODELLED_ADVICE is not None and advice not in self.MODELLED_ADVICE:
            from .errors import NotModelled
            raise NotModelled(f"madvise {name}")

    def dup_fd(self, fd: int | None) -> int | None:
        """A second handle on a region's file for a region piece (a model's fds are its own: the same)."""
        return fd

    def close_fd(self, fd: int | None) -> None:
        """Release a handle dup_fd() gave (nothing to do for a model)."""

    def lru_drain(self) -> None:
        """Drain the per-CPU LRU batches before reclaim advice (pageout, cold); a model has none."""

    def alias_at(self, region: Region, name: str | None, addr: int) -> Region:
        """alias(), at ``addr`` (MAP_FIXED_NOREPLACE): e.g. a PMD-aligned alias."""
        from .errors import NotModelled
        raise NotModelled("alias at an address")

    def mmap_fixed(self, len: int, memtype: MemType | str, name: str | None, prot: int, addr: int) -> Region:
        """mmap with MAP_FIXED at ``addr`` (replacing what is there: UNMAP events for registered VMAs)."""
        from .errors import NotModelled
        raise NotModelled("mmap MAP_FIXED")

    def mmap_file(self, len: int, path: str, shared: bool, name: str | None = None,
                  prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None,
                  fixed: bool = False) -> Region:
        """Map a regular file (``path``: a directory gets a fresh temp file, removed with the region)."""
        from .errors import NotModelled
        raise NotModelled("regular file mappings")

    def mmap_sysv(self, len: int, hugetlb: bool, name: str | None = None,
                  prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None) -> Region:
        """SysV shared memory: shmget(IPC_PRIVATE) + shmat, IPC_RMID at once (gone when detached)."""
        from .errors import NotModelled
        raise NotModelled("SysV shm")

    def msync(self, addr: int, len: int, flags: int) -> None:
        from .errors import NotModelled
        raise NotModelled("msync")

    def mlock(self, addr: int, len: int, flags: int = 0) -> None:
        """mlock2(2); flags: MLOCK_ONFAULT."""
        from .errors import NotModelled
        raise NotModelled("mlock")

    def munlock(self, addr: int, len: int) -> None:
        from .errors import NotModelled
        raise NotModelled("munlock")

    def vmas(self, start: int, end: int) -> list[dict]:
        """The VMAs overlapping [start, end) as /proc/self/smaps shows them: ``start end flags`` (VmFlags
        two-letter codes) and the numeric fields in bytes (``Rss``, ``AnonHugePages``, ``Swap``, ...)."""
        from .errors import NotModelled
        raise NotModelled("smaps VMAs")

    def swap_on(self, size: int, directory: str | None = None) -> dict:
        """A swapfile of ``size`` bytes made, mkswap'd and swapon'd; removed by swap_off/close."""
        from .errors import NotModelled
        raise NotModelled("swap")

    def swap_off(self) -> dict:
        from .errors import NotModelled
        raise NotModelled("swap")

    def swap_status(self) -> dict:
        from .errors import NotModelled
        raise NotModelled("swap")

    # -- userfaultfd ------------------------------------------------------------
    @abc.abstractmethod
    def userfaultfd(self, flags: int = uapi.O_CLOEXEC | uapi.O_NONBLOCK, via: str = "auto") -> Uffd:
        """Open a uffd: via "syscall", "dev" (/dev/userfaultfd) or "auto"."""

    @abc.abstractmethod
    def fault_handler(self, uffd: Uffd, policy: HandlerPolicy) -> Handler: ...

    def fork_child(self) -> int:
        """fork() a child of this mm that exits at once (the parent waits for it); returns its pid.
        With UFFD_FEATURE_EVENT_FORK the fork blocks until the FORK event is read (run a handler)."""
        from .errors import Unsupported
        raise Unsupported(f"backend {self.name!r} cannot fork")

    def adopt_uffd(self, fd: int) -> Uffd:
        """Wrap a uffd fd this backend did not open itself: the ``ufd`` of a FORK event (the child's uffd,
        already past UFFDIO_API).  The returned Uffd owns the fd."""
        from .errors import Unsupported
        raise Unsupported(f"backend {self.name!r} cannot adopt a uffd fd")

    # -- memory access ----------------------------------------------------------
    @abc.abstractmethod
    def thread(self, name: str = "main") -> Thread:
        """The named thread (created on first use)."""

    @abc.abstractmethod
    def read(self, addr: int, len: int) -> bytes:
        """Read memory without holding the GIL in the fault (may block in a userfault)."""

    @abc.abstractmethod
    def write(self, addr: int, data: bytes) -> None: ...

    # -- /proc ------------------------------------------------------------------
    @abc.abstractmethod
    def pagemap(self, addr: int, npages: int) -> list[int]:
        """Raw /proc/self/pagemap entries for ``npages`` 4 KiB pages from ``addr``."""

    def pagemap_array(self, addr: int, npages: int) -> "array":
        """The same entries in one ``array('Q')`` (uffdctl.pagemap.PagemapView holds it; the kernel
        backend reads straight into it)."""
        from array import array
        return array("Q", self.pagemap(addr, npages))

    @abc.abstractmethod
    def clear_refs(self, value: int) -> None: ...

    @abc.abstractmethod
    def pagemap_scan(self, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                     category_mask: int = 0, category_anyof_mask: int = 0,
                     return_mask: int = uapi.PM_SCAN_CATEGORIES_6_18, max_pages: int = 0,
                     vec_len: int = 512) -> ScanResult:
        """One PAGEMAP_SCAN ioctl (no continuation: see uffdctl.pagemap.scan_all)."""

    @abc.abstractmethod
    def soft_dirty(self) -> SoftDirtyProbe:
        """Soft-dirty round trip on a scratch page."""

    @abc.abstractmethod
    def smaps_private_dirty(self, addr: int) -> int:
        """Private_Dirty (bytes) of the mapping containing ``addr``."""

    def close(self) -> None:
        """Release everything (uffds, handlers, threads, mappings)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


BACKENDS = ("kernel", "emu")


def open_backend(name: str = "auto", **kw) -> Backend:
    """Pick a backend: "kernel", "emu", or "auto" (kernel if it can serve, else emu).

    Keyword arguments go to the emulator (``profile=``, ``soft_dirty=``).
    """
    if name not in ("auto",) + BACKENDS:
        raise ValueError(f"unknown backend {name!r} (valid: auto, {', '.join(BACKENDS)})")
    if name in ("kernel", "auto"):
        try:
            from .kernel import KernelBackend
            return KernelBackend()
        except BackendUnavailable:
            if name == "kernel":
                raise
    from .emu import EmuBackend
    return EmuBackend(**kw)


def env_backend_default() -> str:
    return os.environ.get("UFFDCTL_BACKEND", "auto")


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("abc", "enum", "errno", "os")]
