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
import dataclasses
import errno
import os
import signal as _signal
import time

from . import uapi
from .errors import NotModelled, ProcessError, Unsupported, uffd_error
# The shared types live in the leaf module uffdctl.types; they are re-exported here, where they were first
# defined, so that ``from uffdctl.backend import MemType, Region, HandlerPolicy`` keeps working.
from .types import (HPAGE_SIZE, PAGE_SIZE, AccessResult, BackendSelection, HandledEvent, HandlerPolicy, MemType,
                    PteBits, Region, ScanResult, SoftDirtyProbe, UffdioApi, UffdMsg, decode_msg, page_size_of)


class Access(abc.ABC):
    """An access in progress; it may be blocked in a userfault."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """True once the access has finished (False on timeout: still blocked)."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Has the access finished (every page touched, or a SIGBUS ended it)?"""

    @abc.abstractmethod
    def result(self) -> AccessResult:
        """The result (faults taken, SIGBUS, data read); raises RuntimeError naming why while not done
        (blocked in a userfault that nothing resolves: resolve it, or run a fault_handler)."""


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


class Handler(abc.ABC):
    """A fault-handling thread: polls the uffd, resolves by policy, logs every message."""

    policy: HandlerPolicy
    log_cap: int | None = None   # entries the log keeps before the oldest are overwritten (None: unbounded)

    @abc.abstractmethod
    def start(self) -> None:
        """Start the thread; returns once it polls the uffd (idempotent)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop; never hangs, never leaves a thread blocked in a fault it took."""

    @abc.abstractmethod
    def events(self) -> list[HandledEvent]:
        """Drain the log (each message once)."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """Counters: msgs read, resolved, errors, dropped (log entries lost to the bounded log), reads."""

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
    def api(self, features: int = 0, api: int = uapi.UFFD_API) -> UffdioApi:
        """UFFDIO_API: ask for ``features`` (UFFD_FEATURE_* bits); returns what the kernel offers (``features``)
        and the ioctls of the fd.  Works once per fd: a second call fails with EINVAL."""

    @abc.abstractmethod
    def register(self, start: int, len: int, mode: int) -> int:
        """UFFDIO_REGISTER [start, start+len) in ``mode`` (RegisterMode MISSING|WP|MINOR); returns
        uffdio_register.ioctls, the range ioctls allowed on it."""

    @abc.abstractmethod
    def unregister(self, start: int, len: int) -> None:
        """UFFDIO_UNREGISTER the range (threads blocked on it are woken)."""

    @abc.abstractmethod
    def wake(self, start: int, len: int) -> None:
        """UFFDIO_WAKE: wake threads blocked on faults in the range (after a *_MODE_DONTWAKE resolution)."""

    @abc.abstractmethod
    def copy(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        """UFFDIO_COPY ``len`` bytes from ``src`` into the missing pages at ``dst`` (CopyMode DONTWAKE|WP);
        returns uffdio_copy.copy (bytes copied) or raises UffdError with ``.done`` set (partial progress)."""

    @abc.abstractmethod
    def zeropage(self, start: int, len: int, mode: int = 0) -> int:
        """UFFDIO_ZEROPAGE: map the zero page (anon) into the missing range; returns bytes done."""

    @abc.abstractmethod
    def continue_(self, start: int, len: int, mode: int = 0) -> int:
        """UFFDIO_CONTINUE: map the page cache pages of a MINOR-registered range; returns bytes mapped."""

    @abc.abstractmethod
    def writeprotect(self, start: int, len: int, mode: int = 0) -> None:
        """UFFDIO_WRITEPROTECT: WriteprotectMode.WP protects, 0 un-protects (and wakes unless DONTWAKE)."""

    @abc.abstractmethod
    def poison(self, start: int, len: int, mode: int = 0) -> int:
        """UFFDIO_POISON: install poison markers (an access gets SIGBUS); returns bytes updated."""

    @abc.abstractmethod
    def move(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        """UFFDIO_MOVE pages from ``src`` to ``dst`` (anon; MoveMode ALLOW_SRC_HOLES|DONTWAKE); returns bytes
        moved."""

    @abc.abstractmethod
    def read_msgs(self, max: int = 64) -> list[UffdMsg]:
        """read() up to ``max`` messages without waiting (the fd is O_NONBLOCK): [] when nothing is pending.
        To wait for a fault another thread is about to take, use :meth:`wait_msgs`."""

    def wait_msgs(self, timeout: float, max: int = 64) -> list[UffdMsg]:
        """Messages, waiting up to ``timeout`` seconds for the first one (poll(2) POLLIN); [] if none came.

        A real fault arrives asynchronously: ``thread.access()`` returns at once and the kernel queues the
        PAGEFAULT message when the thread reaches the page, so read_msgs() right after may see nothing."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.read_msgs(max)
            left = deadline - time.monotonic()
            if msgs or left <= 0 or not self._wait_readable(left):
                return msgs

    def _wait_readable(self, timeout: float) -> bool:
        """Block until a message may be read (True) or ``timeout`` passes (False).  A backend whose messages
        are all queued by the time the call that caused them returns (the emulator) has nothing to wait for."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """close(2) the fd: faults still blocked on it are released (they retry and are handled normally)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Has close() been called?"""

    def fileno(self) -> int:
        """The fd (for poll/select)."""
        return self.fd

    # the fault handlers serving this uffd: close() stops them first (implementations keep ``_handlers``)
    def attach_handler(self, handler) -> None:
        self._handlers.append(handler)

    def detach_handler(self, handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Backend(abc.ABC):
    """One address space, real or emulated."""

    name: str  # "kernel" or "emu"
    selection: BackendSelection | None = None   # set by uffdctl.registry.open_backend: what was asked, and why

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
            raise uffd_error(errno.EINVAL, "mmap", addr, len, message=f"length must be a positive multiple of {page}")

    def _alias_name(self, region: Region, name: str | None) -> str:
        if region.fd is None:
            raise ValueError(f"region {region.name} is anonymous: no file to alias")
        return self._region_name(name or f"{region.name}-alias")

    def _add_region(self, r: Region) -> Region:
        self._regions[r.name] = r
        return r

    def _remap_regions(self, old: int, old_len: int, new: int, new_len: int, flags: int) -> None:
        """Bookkeeping after a successful mremap(): a region that was exactly [old, old+old_len) is now
        [new, new+new_len); one that was partly inside keeps its head before ``old`` and forgets the rest,
        so that close() never unmaps an address the region no longer owns.  DONTUNMAP leaves the old range
        mapped (and the new mapping is no region)."""
        if flags & uapi.MREMAP_DONTUNMAP:
            return
        end = old + old_len
        for name, reg in list(self._regions.items()):
            if reg.end <= old or reg.addr >= end:
                continue
            if reg.addr == old and reg.len == old_len:
                self._regions[name] = dataclasses.replace(reg, addr=new, len=new_len)
            elif reg.addr < old:
                self._regions[name] = dataclasses.replace(reg, len=old - reg.addr)
            else:
                del self._regions[name]

    # -- mappings ---------------------------------------------------------------
    @abc.abstractmethod
    def mmap(self, len: int, memtype: MemType | str = MemType.ANON, name: str | None = None,
             prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None,
             noreserve: bool = False, page_size: int | None = None) -> Region:
        """mmap(2) ``len`` bytes of ``memtype`` (a memfd behind shmem/hugetlb), named ``name`` (default r<N>);
        ``addr``: MAP_FIXED_NOREPLACE there; ``noreserve``: MAP_NORESERVE (no commit charge; the emulator,
        sparse, charges nothing either way); ``page_size``: hugetlb only, the hstate (1 << 30: MFD_HUGE_1GB;
        default the default hstate's, 2 MiB on x86-64)."""

    @abc.abstractmethod
    def alias(self, region: Region, name: str | None = None) -> Region:
        """A second MAP_SHARED mapping of a shmem/hugetlb region's file (not registered)."""

    @abc.abstractmethod
    def munmap(self, addr: int, len: int) -> None:
        """munmap(2) (UNMAP events are read before it returns when a handler runs)."""

    @abc.abstractmethod
    def madvise(self, addr: int, len: int, advice: int) -> None:
        """madvise(2) with a uapi.MADV_* advice."""

    @abc.abstractmethod
    def mprotect(self, addr: int, len: int, prot: int) -> None:
        """mprotect(2) with uapi.PROT_* bits."""

    @abc.abstractmethod
    def mremap(self, old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
        """mremap(2); returns the new address."""

    # -- more of the mm surface (mmops): defaults say "not modelled"; the kernel backend overrides ----------
    # The advices the emulator models; anything else is NotModelled there (never a guessed EINVAL).
    MODELLED_ADVICE: frozenset | None = frozenset({uapi.MADV_DONTNEED, uapi.MADV_FREE, uapi.MADV_REMOVE,
                                                   uapi.MADV_GUARD_INSTALL, uapi.MADV_GUARD_REMOVE,
                                                   uapi.MADV_NOHUGEPAGE, uapi.MADV_HUGEPAGE, uapi.MADV_COLLAPSE,
                                                   uapi.MADV_COLD, uapi.MADV_PAGEOUT})

    def check_advice(self, advice: int, name: str) -> None:
        """Raise NotModelled unless this backend models ``advice`` (None: every advice, the kernel)."""
        if self.MODELLED_ADVICE is not None and advice not in self.MODELLED_ADVICE:
            raise NotModelled(f"madvise {name}")

    def mappings(self, start: int, end: int) -> list[tuple[int, int, str]]:
        """Every mapping of this address space overlapping [start, end): (start, end, what) — for the caller
        to see whether a MAP_FIXED target holds memory it does not own.  A model holds only the caller's."""
        return []

    def dup_fd(self, fd: int | None) -> int | None:
        """A second handle on a region's file for a region piece (a model's fds are its own: the same)."""
        return fd

    def close_fd(self, fd: int | None) -> None:
        """Release a handle dup_fd() gave (nothing to do for a model)."""

    def lru_drain(self) -> None:
        """Drain the per-CPU LRU batches before reclaim advice (pageout, cold); a model has none."""

    def alias_at(self, region: Region, name: str | None, addr: int) -> Region:
        """alias(), at ``addr`` (MAP_FIXED_NOREPLACE): e.g. a PMD-aligned alias."""
        raise NotModelled("alias at an address")

    def mmap_fixed(self, len: int, memtype: MemType | str, name: str | None, prot: int, addr: int,
                   page_size: int | None = None) -> Region:
        """mmap with MAP_FIXED at ``addr`` (replacing what is there: UNMAP events for registered VMAs)."""
        raise NotModelled("mmap MAP_FIXED")

    def mmap_shared_anon(self, len: int, name: str | None = None, prot: int = uapi.PROT_READ | uapi.PROT_WRITE,
                         addr: int | None = None, fixed: bool = False) -> Region:
        """mmap(MAP_SHARED|MAP_ANONYMOUS): shmem the kernel sets up itself (shmem_zero_setup()), no fd."""
        raise NotModelled("MAP_SHARED|MAP_ANONYMOUS")

    def mmap_file(self, len: int, path: str, shared: bool, name: str | None = None,
                  prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None,
                  fixed: bool = False) -> Region:
        """Map a regular file (``path``: a directory gets a fresh temp file, removed with the region)."""
        raise NotModelled("regular file mappings")

    def mmap_sysv(self, len: int, hugetlb: bool, name: str | None = None,
                  prot: int = uapi.PROT_READ | uapi.PROT_WRITE, addr: int | None = None) -> Region:
        """SysV shared memory: shmget(IPC_PRIVATE) + shmat, IPC_RMID at once (gone when detached)."""
        raise NotModelled("SysV shm")

    def msync(self, addr: int, len: int, flags: int) -> None:
        raise NotModelled("msync")

    def mlock(self, addr: int, len: int, flags: int = 0) -> None:
        """mlock2(2); flags: MLOCK_ONFAULT."""
        raise NotModelled("mlock")

    def munlock(self, addr: int, len: int) -> None:
        raise NotModelled("munlock")

    def smaps_vmas(self, start: int, end: int) -> list[dict]:
        """The VMAs overlapping [start, end) as /proc/self/smaps shows them: ``start end flags`` (VmFlags
        two-letter codes) and the numeric fields in bytes (``Rss``, ``AnonHugePages``, ``Swap``, ...)."""
        raise NotModelled("smaps VMAs")

    def thp_knob(self, knob: str) -> str | None:
        """The text of transparent_hugepage/<knob> (``enabled``, ``hugepages-16kB/shmem_enabled`` ...) of the
        kernel this backend is (a model: its own knobs, never the host's); None: no such knob."""
        raise NotModelled("THP sysfs knobs")

    def set_thp_knob(self, knob: str, value: str) -> None:
        """Write a THP knob (a model's own; uffdctl never writes the host's sysfs)."""
        raise Unsupported(f"uffdctl never writes the host's /sys/kernel/mm/transparent_hugepage/{knob}")

    def swap_on(self, size: int, directory: str | None = None) -> dict:
        """A swapfile of ``size`` bytes made, mkswap'd and swapon'd; removed by swap_off/close."""
        raise NotModelled("swap")

    def swap_off(self) -> dict:
        raise NotModelled("swap")

    def swap_status(self) -> dict:
        raise NotModelled("swap")

    # -- userfaultfd ------------------------------------------------------------
    @abc.abstractmethod
    def userfaultfd(self, flags: int = uapi.O_CLOEXEC | uapi.O_NONBLOCK, via: str = "auto") -> Uffd:
        """Open a uffd: via "syscall", "dev" (/dev/userfaultfd) or "auto"."""

    @abc.abstractmethod
    def fault_handler(self, uffd: Uffd, policy: HandlerPolicy, start: bool = True) -> Handler:
        """A fault-handling thread for ``uffd`` resolving by ``policy``, running when this returns (``start``
        False: call start() yourself).  stop() (or leaving a ``with`` block) never strands a thread."""

    def fork_child(self) -> int:
        """fork() a child of this mm that exits at once (the parent waits for it); returns its pid.
        With UFFD_FEATURE_EVENT_FORK the fork blocks until the FORK event is read (run a handler)."""
        raise Unsupported(f"backend {self.name!r} cannot fork")

    def fork(self, name: str, regions: dict, thread: str | None = None) -> Access:
        """fork(2) this mm: a child process that runs no Python (uffdctl.process).  Returns at once: the
        Access finishes when fork() returns (with EVENT_FORK: once the FORK message is read); its result()
        is the :class:`uffdctl.process.Process`.  ``thread``: the session thread that issues it."""
        from .errors import NotModelled
        raise NotModelled("fork")

    def job_thread(self, name: str):
        """A long-lived thread of this backend's process that runs calls in order (``submit(fn) -> Access``):
        how a system call that blocks until its event is read is issued without blocking the caller."""
        from .errors import NotModelled
        raise NotModelled("a system call blocked until its event is read")

    def adopt_uffd(self, fd: int) -> Uffd:
        """Wrap a uffd fd this backend did not open itself: the ``ufd`` of a FORK event (the child's uffd,
        already past UFFDIO_API).  The returned Uffd owns the fd."""
        raise Unsupported(f"backend {self.name!r} cannot adopt a uffd fd")

    # -- memory access ----------------------------------------------------------
    @abc.abstractmethod
    def thread(self, name: str = "main") -> Thread:
        """The named thread (created on first use)."""

    @abc.abstractmethod
    def read(self, addr: int, len: int) -> bytes:
        """Read memory without holding the GIL in the fault (may block in a userfault)."""

    @abc.abstractmethod
    def write(self, addr: int, data: bytes) -> None:
        """Write memory without holding the GIL in the fault (may block in a userfault)."""

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
    def clear_refs(self, value: int) -> None:
        """Write ``value`` (1-5; 4 clears soft-dirty) to /proc/self/clear_refs."""

    @abc.abstractmethod
    def pagemap_scan(self, start: int, end: int, *, flags: int = 0, category_inverted: int = 0,
                     category_mask: int = 0, category_anyof_mask: int = 0,
                     return_mask: int = uapi.PM_SCAN_CATEGORIES_6_18, max_pages: int = 0,
                     vec_len: int = 512, null_vec: bool = False) -> ScanResult:
        """One PAGEMAP_SCAN ioctl (no continuation: see uffdctl.pagemap.scan_all); ``null_vec``: pass vec=NULL
        whatever vec_len is (the kernel's EINVAL for NULL with vec_len > 0)."""

    @abc.abstractmethod
    def soft_dirty(self) -> SoftDirtyProbe:
        """Soft-dirty round trip on a scratch page."""

    @abc.abstractmethod
    def smaps_private_dirty(self, addr: int) -> int:
        """Private_Dirty (bytes) of the mapping containing ``addr``."""

    # -- queries: what callers ask instead of reaching into one implementation ------------------
    # Each answers None (or empty) where the backend cannot see the thing; a caller never tests which
    # backend it has to decide what it may read.
    def pte_bits(self, addr: int) -> PteBits | None:
        """RW and D of the PTE mapping ``addr`` (both 0 when none is present), or None where they cannot be
        seen: the kernel does not export them to user space (a write's fault count shows write-ability)."""
        return None

    def vma_bounds(self, addr: int) -> tuple[int, int] | None:
        """[start, end) of the VMA containing ``addr`` (None: no VMA there, or not known)."""
        return None

    def uffd_vmas(self, start: int, end: int) -> list[tuple[int, int, int]] | None:
        """The VMAs overlapping [start, end), clipped to it, each with the userfaultfd registration the kernel
        keeps on it (RegisterMode bits: VM_UFFD_MISSING/WP/MINOR, smaps ``um``/``uw``/``ui``), or None."""
        return None

    def tlb_flush_count(self) -> int | None:
        """TLB flushes the backend itself counted so far, or None where it does not count them (the kernel's
        are seen through tracefs ``tlb:tlb_flush``: uffdctl.repro.tlbtrace)."""
        return None

    def hint_modes(self, ioctl: str) -> dict[str, int]:
        """The never-merged 2022 RFC access/write hint mode bits UFFDIO_<ioctl> accepts here, by name
        (``access_likely``, ``write_likely``); empty where there are none (every real kernel)."""
        return {}

    def close(self) -> None:
        """Release everything (uffds, handlers, threads, mappings)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- processes (uffdctl.process: the kernel's children; uffdctl.emu.process: the emulator's) ---------------
class Process(abc.ABC):
    """A process of the session other than the session itself: its own mm, one thread (``main``),
    its own regions (the parent's at fork time, minus MADV_DONTFORK ones).

    What both kinds share lives here: the one thread, the session's names for the child's regions (anon
    mmap and munmap), the exit status once reaped, the ``procs`` row.  A subclass provides the system calls
    (``_mmap_anon``, ``_munmap``), ``_busy_now`` and the rest."""

    name: str
    pid: int
    parent: "Process | None"          # None: the session itself
    regions: dict[str, Region]
    children: list
    _b: "Backend"
    _thread: "Thread"
    _exit: dict | None                # the decoded wait status, once reaped
    _closed: bool

    def thread(self, name: str = "main") -> "Thread":
        if name != "main":
            raise ProcessError(f"process {self.name} has one thread, main (not {name!r})")
        return self._thread

    # -- mappings: the system call is the subclass's, the session's name for the range is kept here -----
    @abc.abstractmethod
    def _mmap_anon(self, len: int, prot: int, addr: int | None) -> int:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) in the child (MAP_FIXED_NOREPLACE at ``addr``): the address."""

    @abc.abstractmethod
    def _munmap(self, addr: int, len: int) -> None: ...

    def mmap(self, len, memtype="anon", name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None, **kw):
        memtype = MemType(memtype)
        if memtype is not MemType.ANON:
            raise uffd_error(errno.EOPNOTSUPP, "mmap", addr, len,
                             message=f"a child process maps anon memory only (not {memtype.value})")
        if name is None:
            name = next(f"r{i}" for i in range(1 << 20) if f"r{i}" not in self.regions)
        r = Region(name, self._mmap_anon(len, prot, addr), len, memtype, uapi.PAGE_SIZE, None, prot)
        self.regions[name] = r
        return r

    def munmap(self, addr, len):
        self._munmap(addr, len)
        for name, reg in list(self.regions.items()):
            if addr <= reg.addr and reg.end <= addr + len:
                del self.regions[name]

    def soft_dirty(self):
        return self._b.soft_dirty()

    _answer_timeout: float            # how long read() waits for the child's thread to answer

    def read(self, addr, len) -> bytes:
        """The child's memory, read by its only thread; a signal there (SIGBUS, or SIGSEGV: nothing mapped, a
        MADV_DONTFORK range) is EFAULT, as copy_to_user() of a fault nobody resolves."""
        acc = self._thread.access(addr, len, False, want_data=True)
        if not acc.wait(self._answer_timeout):
            raise ProcessError(f"read in process {self.name} blocked (in a fault?)")
        res = acc.result()
        if res.sigbus or getattr(res, "sigsegv", False):
            raise uffd_error(errno.EFAULT, "read", addr, len, message=f"signal in process {self.name}")
        return res.data

    # -- exit ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def kill(self, sig: int = _signal.SIGKILL) -> None: ...

    def _not_reaped(self) -> None:
        """kill(2) of a reaped pid would name another process (or none): refused."""
        if self._exit is not None:
            raise ProcessError(f"process {self.name} (pid {self.pid}) has been reaped already")

    @abc.abstractmethod
    def wait(self, timeout: float) -> dict | None:
        """Reap the process; its exit as a dict, or None if it is still running after ``timeout``."""

    @property
    def alive(self) -> bool:
        return self._exit is None and not self._closed

    @property
    def exit(self) -> dict | None:
        return self._exit

    def close(self) -> None:
        """Kill (SIGKILL) and reap, children first, then release what the parent holds of it; bounded,
        never hangs."""
        if self._closed:
            return
        for c in list(self.children):
            c.close()
        if self._exit is None:
            self._kill_and_reap()
        self._closed = True
        self._release()

    @abc.abstractmethod
    def _kill_and_reap(self) -> None:
        """close() of a process not reaped yet: SIGKILL it and reap it (bounded)."""

    def _release(self) -> None:
        """What the parent holds of a closed process (sockets, fds): nothing here."""

    @property
    @abc.abstractmethod
    def _busy_now(self) -> str | None:
        """What the only thread is blocked in (``touch``, ``fork``, ...), or None."""

    def to_dict(self) -> dict:
        d = {"name": self.name, "pid": self.pid, "ppid": self.parent.pid if self.parent else os.getpid(),
             "parent": self.parent.name if self.parent else "self", "alive": int(self.alive),
             "busy": self._busy_now, "regions": sorted(self.regions)}
        if self._exit is not None:
            d.update(exit=self._exit)
        return d


def decode_status(pid: int, status: int) -> dict:
    d = {"pid": pid, "status": status, "exited": int(os.WIFEXITED(status)),
         "signaled": int(os.WIFSIGNALED(status)), "code": None, "signal": None, "signal_name": None,
         "core": int(os.WCOREDUMP(status)) if os.WIFSIGNALED(status) else 0}
    if os.WIFEXITED(status):
        d["code"] = os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        d["signal"] = os.WTERMSIG(status)
        d["signal_name"] = _signal.Signals(d["signal"]).name if d["signal"] in _signal.valid_signals() else None
    return d


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("abc", "errno", "os", "annotations")]
