"""EmuBackend: the backend interface over the model (``mm.MM`` + ``userfaultfd.EmuUffd``).

Simulated threads run synchronously: an access walks its pages through the
fault rules; a userfault queues a message and leaves the access pending until
a wake hands it back (``_wake``), after which it is retried by ``_pump`` —
the same loop the faulting thread runs in the kernel.  Fault handlers
(``fault_handler``) are served from ``_pump`` as soon as messages are queued.

``backend.read``/``backend.write`` are accesses by the caller itself: when one
blocks in a userfault that no running handler resolves, the emulator cannot
block its own caller; it withdraws the fault and raises ``UffdError(EDEADLK)``
(the kernel would block until another thread resolves it).
"""
from __future__ import annotations

import collections
import errno as E
import itertools

from .. import uapi
from ..backend import (Access, AccessResult, Backend, HandledEvent, Handler, HandlerPolicy, MemType, Region,
                       ScanResult, SoftDirtyProbe, Thread, UffdMsg)
from ..errors import UffdError, uffd_error
from ..types import PteBits
from . import mm as M
from .profiles import DEFAULT_PROFILE, get_profile
from .userfaultfd import EmuUffd

BUS_ADRERR = 2
_TIDS = itertools.count(4_000_001)


class EmuAccess(Access):
    def __init__(self, backend, thread, addr, length, write, data, fill, stride, want_data):
        self._b = backend
        self.thread = thread
        self.write = write
        self._data = data
        self._fill = fill
        self._want = want_data and not write
        self._buf = bytearray()
        self._segs = list(_segments(addr, length, stride))
        self._pos = 0            # offset of the current segment into the caller's buffer
        self._i = 0
        # 0: a new hardware fault (per-VMA lock); after a userfault wake the fault handler retries
        # itself (not the instruction): 1 = mmap_lock retry, >=2 = FAULT_FLAG_TRIED (counted major)
        self.attempt = 0
        self.waiter = None
        self.blocks = 0          # userfault waits so far
        self.spinning = False    # faulting forever without a userfault (see mm.VM_FAULT_LIVELOCK)
        self._res = AccessResult()
        self._done = False
        self._segv = False

    def _run(self) -> None:
        mm = self._b.mm
        res = self._res
        while self._i < len(self._segs):
            a, off, n = self._segs[self._i]
            vma = mm.find_vma(a)
            if vma is None:
                self._segv = True
                break
            if not self.attempt and mm.access_ok(vma, a, self.write):
                page = mm.ptes[mm.page_base(vma, a)].page
                poff = a - mm.page_base(vma, a)
                if self.write:
                    buf = self._data[off:off + n] if self._data is not None else bytes([self._fill & 0xFF]) * n
                    page.write(poff, buf)
                elif self._want:
                    self._buf += page.read(poff, n)
                self._i += 1
                continue
            r = mm.handle_mm_fault(vma, a, self.write, self)
            if r == M.VM_FAULT_RETRY:
                self.blocks += 1
                return                                  # blocked: waits for _wake()
            if r == M.VM_FAULT_LIVELOCK:
                self.spinning = True                    # retried after the next ioctl, never counted
                self._b._spinning.append(self)
                return
            if r & M.VM_FAULT_SIGSEGV:
                self._segv = True
                break
            if r & M.VM_FAULT_ERROR:
                res.sigbus, res.si_code, res.fault_addr = True, BUS_ADRERR, a
                break
            if self.attempt >= 2:                       # mm_account_fault(): TRIED counts as major
                res.majflt += 1
                self.thread.majflt += 1
            else:
                res.minflt += 1
                self.thread.minflt += 1
            self.attempt = 0
        if self._want and not res.sigbus:
            res.data = bytes(self._buf)
        self._done = True
        self.thread._finished(self)

    def wait(self, timeout=None) -> bool:
        if not self._done:
            self._b._pump()
        return self._done

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> AccessResult:
        if not self._done:
            raise RuntimeError("access still in progress: blocked in a userfault that nothing has resolved yet "
                               "(resolve it with copy/zeropage/continue/wake/writeprotect, or run a fault_handler)")
        if self._segv:
            raise uffd_error(E.EFAULT, "access", message="SIGSEGV: no mapping or no permission")
        return self._res


def _segments(addr, length, stride):
    """(address, offset into the buffer, length) runs, split at 4 KiB boundaries, in address order."""
    if stride:
        for off in range(0, length, stride):
            yield addr + off, off, 1
        return
    off = 0
    while off < length:
        a = addr + off
        n = min(length - off, uapi.PAGE_SIZE - a % uapi.PAGE_SIZE)
        yield a, off, n
        off += n


class EmuThread(Thread):
    def __init__(self, backend, name):
        self._b = backend
        self.name = name
        self.tid = next(_TIDS)
        self.minflt = 0
        self.majflt = 0
        self._queue: collections.deque = collections.deque()
        self._current: EmuAccess | None = None

    def access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False) -> Access:
        acc = EmuAccess(self._b, self, addr, len, write, bytes(data) if data is not None else None, fill,
                        stride, want_data)
        self._queue.append(acc)
        self._start_next()
        self._b._pump()
        return acc

    def _start_next(self):
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
            self._b._runq.append(self._current)

    def _finished(self, acc):
        if self._current is acc:
            self._current = None
            self._start_next()

    def faults(self) -> tuple[int, int]:
        return self.minflt, self.majflt

    @property
    def busy(self) -> bool:
        return self._current is not None


class EmuHandler(Handler):
    """Resolves faults by policy as they are queued (from the backend's pump), like the native handler."""

    def __init__(self, backend, uffd: EmuUffd, policy: HandlerPolicy, batch: int = 16):
        self._b = backend
        self.uffd = uffd
        self.policy = policy
        self._batch = batch
        self._log: list[HandledEvent] = []
        self._stats = {"msgs": 0, "resolved": 0, "errors": 0, "dropped": 0, "reads": 0}
        self._queued: list = []
        self.running = False

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self._b._handlers.append(self)
        self.uffd._handlers.append(self)
        self._b._pump()

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._b._handlers.remove(self)
        self.uffd._handlers.remove(self)
        if not self.uffd.closed:                 # release faults left queued by hand
            for m in self._queued:
                self.uffd.wake_userfault(m.address & ~(self.policy.page_size - 1), self.policy.page_size)
            self._b._pump()
        self._queued = []

    def _service(self) -> bool:
        if self.uffd.closed:
            return False
        msgs = self.uffd.read_msgs(self._batch)
        if not msgs:
            return False
        self._stats["reads"] += 1
        for m in msgs:
            self._stats["msgs"] += 1
            if m.event != uapi.Event.PAGEFAULT:
                self._log.append(HandledEvent(m, "event"))
                continue
            action, err, result = self._resolve(m)
            if err:
                self._stats["errors"] += 1
            elif action != "queue":
                self._stats["resolved"] += 1
            else:
                self._queued.append(m)
            self._log.append(HandledEvent(m, action, err, result))
        return True

    def _resolve(self, m) -> tuple[str, int, int]:
        p, u = self.policy, self.uffd
        page = m.address & ~(p.page_size - 1)
        if m.flags & uapi.PagefaultFlag.WP:
            action = p.wp
        elif m.flags & uapi.PagefaultFlag.MINOR:
            action = p.minor
        else:
            action = p.missing
        if action == "queue":
            return action, 0, 0
        calls = {
            "zeropage": lambda: u.zeropage(page, p.page_size),
            "copy": lambda: u.copy(page, p.src + (page - p.base), p.page_size, p.copy_mode),
            "fill": lambda: u.copy(page, self._fill_page(), p.page_size, p.copy_mode),
            "continue": lambda: u.continue_(page, p.page_size),
            "unprotect": lambda: u.writeprotect(page, p.page_size, 0),
            "wake": lambda: u.wake(page, p.page_size),
        }
        for _ in range(2):
            try:
                r = calls[action]()
                return action, 0, r or 0
            except UffdError as e:
                if e.errno == E.EAGAIN and e.done in (None, -E.EAGAIN):
                    continue
                if e.errno == E.EEXIST:        # benign race: wake as the selftests do
                    u.wake(page, p.page_size)
                    return action, 0, e.done or 0
                return action, -e.errno, e.done or 0
        return action, -E.EAGAIN, -E.EAGAIN

    def _fill_page(self) -> int:
        r = getattr(self, "_fill_region", None)
        if r is None:
            r = self._fill_region = self._b.mmap(self.policy.page_size, MemType.ANON, name=None)
            self._b.write(r.addr, bytes([self.policy.fill & 0xFF]) * self.policy.page_size)
        return r.addr

    def events(self) -> list[HandledEvent]:
        out, self._log = self._log, []
        return out

    def stats(self) -> dict:
        return dict(self._stats)


class EmuBackend(Backend):
    """The emulator: ``EmuBackend(profile="6.18", soft_dirty=True, **switch_overrides)``."""

    name = "emu"

    def __init__(self, profile: str = DEFAULT_PROFILE, soft_dirty: bool = True, **switches):
        self.profile = get_profile(profile, **switches)
        self.mm = M.MM(self.profile, soft_dirty)
        self._regions: dict[str, Region] = {}
        self._files: dict[int, M.ShmemFile] = {}
        self._uffds: list[EmuUffd] = []
        self._threads: dict[str, EmuThread] = {}
        self._caller = EmuThread(self, "caller")
        self._handlers: list[EmuHandler] = []
        self._pids = itertools.count(1000)  # pids of emulated fork children
        self._runq: collections.deque = collections.deque()
        self._spinning: list = []
        self._pumping = False
        self._names = itertools.count()
        self._fds = itertools.count(1000)

    # -- identity -------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"backend": self.name, "release": self.profile.release, "machine": "x86_64",
                "profile": self.profile.name, "soft_dirty": self.mm.soft_dirty_config,
                "soft_dirty_reason": "emulated CONFIG_MEM_SOFT_DIRTY=" + ("y" if self.mm.soft_dirty_config else "n"),
                "features": self.profile.features, "switches": self.profile.switches(),
                "tlb_flushes": self.tlb_flushes, "ptes": len(self.mm.ptes), "vmas": len(self.mm.vmas)}

    @property
    def tlb_flushes(self) -> int:
        return self.mm.tlb.flushes

    # -- queries of uffdctl.backend.Backend (what callers ask instead of reading the model) ---------------
    def pte_bits(self, addr: int) -> PteBits:
        pte = self.mm.ptes.get(addr)
        if pte is None or not pte.present:
            return PteBits(0, 0)
        return PteBits(int(pte.write), int(pte.dirty))

    def vma_bounds(self, addr: int) -> tuple[int, int] | None:
        v = self.mm.find_vma(addr)
        return (v.start, v.end) if v is not None else None

    def tlb_flush_count(self) -> int:
        return self.mm.tlb.flushes

    def hint_modes(self, ioctl: str) -> dict[str, int]:
        if not self.profile.hints:
            return {}
        from . import profiles
        consts = {h: f"UFFDIO_{ioctl}_MODE_{h.upper()}" for h in ("access_likely", "write_likely")}
        return {h: int(getattr(profiles, c)) for h, c in consts.items() if hasattr(profiles, c)}

    # -- the run loop ---------------------------------------------------------------------
    def _wake(self, waiter) -> None:
        acc = waiter.access
        if acc.waiter is waiter:
            acc.waiter = None
            # with per-VMA locks the first retry is an mmap_lock retry; without, it is FAULT_FLAG_TRIED
            acc.attempt += 1 if self.mm.profile.per_vma_lock else 2
            self._runq.append(acc)

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        spinning, self._spinning = self._spinning, []
        self._runq.extend(spinning)                    # state may have changed: let them fault again
        try:
            while True:
                while self._runq:
                    self._runq.popleft()._run()
                if not any([h._service() for h in list(self._handlers)]):
                    break
        finally:
            self._pumping = False

    # -- mappings -------------------------------------------------------------------------
    def mmap(self, len, memtype=MemType.ANON, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None):
        memtype = MemType(memtype)
        name = self._region_name(name)
        page = M.HPAGE_SIZE if memtype.hugetlb else uapi.PAGE_SIZE
        self._check_len(len, page, addr)
        f = None
        fd = None
        if memtype.file_backed:
            fd = next(self._fds)
            f = self._files[fd] = M.ShmemFile(f"uffdctl-{name}", len, page)
        v = self.mm.mmap(len, memtype, prot, addr, f)
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, len)
        return self._add_region(Region(name, v.start, len, memtype, page, fd, prot))

    def alias(self, region, name=None):
        name = self._alias_name(region, name)
        v = self.mm.mmap(region.len, region.memtype, uapi.PROT_READ | uapi.PROT_WRITE, None,
                         self._files[region.fd], shared=True)
        return self._add_region(Region(name, v.start, region.len, region.memtype, region.page_size, None))

    def _event(self, feature, msg_kw, vmas) -> None:
        for ctx in {id(v.ctx): v.ctx for v in vmas if v.ctx is not None}.values():
            if ctx.features & feature:
                ctx.queue_event(UffdMsg(**msg_kw))

    def munmap(self, addr, len):
        self._event(uapi.Feature.EVENT_UNMAP, {"event": uapi.Event.UNMAP, "start": addr, "end": addr + len},
                    self.mm.vmas_in(addr, addr + len))
        self._syscall("munmap", addr, len, self.mm.munmap(addr, len))
        for name, reg in list(self._regions.items()):
            if addr <= reg.addr and reg.end <= addr + len:
                del self._regions[name]

    def madvise(self, addr, len, advice):
        if advice in (uapi.MADV_DONTNEED, uapi.MADV_REMOVE):
            self._event(uapi.Feature.EVENT_REMOVE, {"event": uapi.Event.REMOVE, "start": addr, "end": addr + len},
                        self.mm.vmas_in(addr, addr + len))
        self._syscall("madvise", addr, len, self.mm.madvise(addr, len, advice))

    def mprotect(self, addr, len, prot):
        self._syscall("mprotect", addr, len, self.mm.mprotect(addr, len, prot))

    def _syscall(self, name, addr, length, ret):
        """Let woken or queued work run, then turn a -errno from the model into the exception."""
        self._pump()
        if ret < 0:
            raise uffd_error(-ret, name, addr, length)

    def mremap(self, old, old_len, new_len, flags=0, new_addr=0):
        """mremap(): grow/shrink in place when free, else move (MREMAP_MAYMOVE / FIXED / DONTUNMAP)."""
        mm = self.mm
        vma = mm.find_vma(old)
        if vma is None or old % uapi.PAGE_SIZE or old + old_len > vma.end:
            raise uffd_error(E.EFAULT if vma is None else E.EINVAL, "mremap", old, old_len)
        if new_len < old_len and not flags & uapi.MREMAP_FIXED:
            mm.munmap(old + new_len, old_len - new_len)
            return old
        if not flags & uapi.MREMAP_FIXED and not mm.vmas_in(old + old_len, old + new_len):
            vma.end = max(vma.end, old + new_len) if vma.end == old + old_len else vma.end
            if vma.end >= old + new_len:
                return old
        if not flags & uapi.MREMAP_MAYMOVE:
            raise uffd_error(E.ENOMEM, "mremap", old, old_len)
        dst = new_addr if flags & uapi.MREMAP_FIXED else mm.get_unmapped_area(new_len, vma.page_size)
        if flags & uapi.MREMAP_FIXED:
            mm.munmap(dst, new_len)
        (src,) = mm.split(old, old + old_len)
        ctx = src.ctx
        moved = M.Vma(dst, dst + new_len, src.flags | (M.VM_SOFTDIRTY if mm.soft_dirty_config else 0),
                      src.memtype, src.file, src.pgoff, src.page_size, next(mm._origins))
        if ctx is not None and ctx.features & uapi.Feature.EVENT_REMAP:
            moved.ctx = ctx
            ctx.queue_event(UffdMsg(uapi.Event.REMAP, from_=old, to=dst, len=old_len))
        else:
            moved.flags &= ~M.VM_UFFD_FLAGS
        for a in mm.pte_keys(old, old + old_len, src.page_size):
            pte = mm.ptes.pop(a)
            if pte.present and pte.uffd_wp and moved.ctx is None:
                pte.uffd_wp = False
            if not pte.present and pte.marker == M.PTE_MARKER_UFFD_WP and moved.ctx is None:
                continue
            pte.soft_dirty = True                      # move_soft_dirty_pte()
            mm.ptes[dst + a - old] = pte
            mm.pgtables.add((dst + a - old) >> 21)
            mm.tlb.entries.pop(a, None)
        mm.tlb.flushes += 1
        mm.vmas.append(moved)
        if flags & uapi.MREMAP_DONTUNMAP:
            pass                                       # the old VMA stays, now empty
        else:
            mm.vmas.remove(src)
        mm._reindex()
        self._pump()
        return dst

    @property
    def regions(self) -> dict[str, Region]:
        return dict(self._regions)

    # -- userfaultfd ----------------------------------------------------------------------
    def userfaultfd(self, flags=uapi.O_CLOEXEC | uapi.O_NONBLOCK, via="auto") -> EmuUffd:
        if via not in ("auto", "syscall", "dev"):
            raise ValueError(f"unknown open method {via!r} (valid: auto, syscall, dev)")
        if flags & ~int(uapi.O_CLOEXEC | uapi.O_NONBLOCK | uapi.UFFD_USER_MODE_ONLY):
            raise uffd_error(E.EINVAL, "userfaultfd", message="flags not accepted")
        u = EmuUffd(self, flags)
        self._uffds.append(u)
        return u

    def fault_handler(self, uffd, policy: HandlerPolicy, start: bool = True) -> Handler:
        h = EmuHandler(self, uffd, policy)
        if start:
            h.start()
        return h

    def fork_child(self) -> int:
        """dup_userfaultfd(): every ctx with UFFD_FEATURE_EVENT_FORK that has a VMA of this mm gets a FORK
        event carrying a new uffd for the child (a ctx on the child's mm); without the feature the child's
        VMAs are simply unregistered.  The child exits at once, so its ctx is left with an exited mm
        (range ioctls -> ESRCH, REGISTER/UNREGISTER -> ENOMEM).  The parent's fork would block until the
        event is read; here it returns and the event is pending (mmap_changing) until then."""
        child_mm = M.MM(self.mm.profile, self.mm.soft_dirty_config)
        child_mm.exited = True
        for u in self._uffds:
            if u.closed or not u.features & uapi.Feature.EVENT_FORK:
                continue
            if not any(v.ctx is u for v in self.mm.vmas):
                continue
            child = EmuUffd(self, u.flags)
            child.mm = child_mm
            child.features, child._initialized = u.features, True
            self._uffds.append(child)
            u.queue_event(UffdMsg(uapi.Event.FORK, ufd=child.fd))
        self._pump()
        return next(self._pids)

    def adopt_uffd(self, fd: int) -> EmuUffd:
        for u in self._uffds:
            if u.fd == fd and not u.closed:
                return u
        raise uffd_error(E.EBADF, "adopt_uffd", message=f"fd {fd} is not a uffd of this emulated process")

    # -- memory access --------------------------------------------------------------------
    def thread(self, name="main") -> EmuThread:
        t = self._threads.get(name)
        if t is None:
            t = self._threads[name] = EmuThread(self, name)
        return t

    def _caller_access(self, op, addr, length, write, data=None) -> AccessResult:
        acc = self._caller.access(addr, length, write, data=data, want_data=not write)
        if not acc.done:
            w = acc.waiter
            if w is not None:
                for u in self._uffds:
                    u.cancel(w)
            self._caller._current = None
            self._caller._queue.clear()
            raise uffd_error(E.EDEADLK, op, addr, length,
                             message="emulator: the caller's own access blocked in a userfault that no handler "
                                     "resolves (the kernel would block): use a thread or a fault_handler")
        r = acc.result()
        if r.sigbus:
            raise uffd_error(E.EFAULT, op, addr, length, message=f"SIGBUS (si_code {r.si_code})")
        return r

    def read(self, addr, len) -> bytes:
        return self._caller_access("read", addr, len, False).data

    def write(self, addr, data) -> None:
        self._caller_access("write", addr, len(data), True, bytes(data))

    # -- /proc ----------------------------------------------------------------------------
    def pagemap(self, addr, npages) -> list[int]:
        base = addr & ~(uapi.PAGE_SIZE - 1)
        return [self.mm.pagemap_pte(base + i * uapi.PAGE_SIZE) for i in range(npages)]

    def clear_refs(self, value) -> None:
        try:
            v = int(str(value).strip())
        except ValueError:
            v = -1
        r = self.mm.clear_refs(v)
        if r < 0:
            raise uffd_error(-r, "clear_refs", message=f"value {value!r}")

    def pagemap_scan(self, start, end, *, flags=0, category_inverted=0, category_mask=0, category_anyof_mask=0,
                     return_mask=uapi.PM_SCAN_CATEGORIES_6_18, max_pages=0, vec_len=512) -> ScanResult:
        return do_pagemap_scan(self.mm, start, end, flags, category_inverted, category_mask,
                               category_anyof_mask, return_mask, max_pages, vec_len)

    def soft_dirty(self) -> SoftDirtyProbe:
        if self.mm.soft_dirty_config:
            return SoftDirtyProbe(True, "emulated CONFIG_MEM_SOFT_DIRTY=y")
        return SoftDirtyProbe(False, "emulated CONFIG_MEM_SOFT_DIRTY=n: bit 55 reads 0")

    def smaps_private_dirty(self, addr) -> int:
        vma = self.mm.find_vma(addr)
        if vma is None:
            raise uffd_error(E.ENOENT, "smaps", addr, message="no mapping contains this address")
        total = 0
        for a in self.mm.pte_keys(vma.start, vma.end, vma.page_size):
            pte = self.mm.ptes[a]
            if pte.present and not pte.special and pte.dirty and pte.page.mapcount == 1:
                total += vma.page_size
        return total

    def close(self) -> None:
        for u in list(self._uffds):
            u.close()
        self._threads.clear()
        for r in list(self._regions.values()):
            self.mm.munmap(r.addr, r.len)
        self._regions.clear()


def do_pagemap_scan(mm: M.MM, start, end, flags, inverted, mask, anyof, return_mask, max_pages, vec_len):
    """PAGEMAP_SCAN (fs/proc/task_mmu.c do_pagemap_scan), extent-wise over holes."""
    p = mm.profile
    if not p.pagemap_scan:
        raise uffd_error(E.ENOTTY, "PAGEMAP_SCAN", start, end - start, message="no PAGEMAP_SCAN before 6.7")
    allcat = uapi.PM_SCAN_CATEGORIES_6_18 if p.pagemap_guard_bit else uapi.PM_SCAN_CATEGORIES_6_18 & ~(1 << 8)
    if flags & ~int(uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC) \
            or (inverted | mask | anyof | return_mask) & ~int(allcat) or start % uapi.PAGE_SIZE or end < start:
        raise uffd_error(E.EINVAL, "PAGEMAP_SCAN", start, end - start)
    end = (end + uapi.PAGE_SIZE - 1) & ~(uapi.PAGE_SIZE - 1)
    budget = max_pages or (1 << 64)
    regions: list[list[int]] = []
    wp_flush = []

    def emit(a, n, cat) -> int:
        """Record n pages at a; returns how many fit (0: stop here)."""
        nonlocal budget
        n = min(n, budget)
        if n <= 0:
            return 0
        out = cat & return_mask
        if regions and regions[-1][1] == a and regions[-1][2] == out:
            regions[-1][1] += n * uapi.PAGE_SIZE
        else:
            if len(regions) >= vec_len:
                return 0
            regions.append([a, a + n * uapi.PAGE_SIZE, out])
        budget -= n
        return n

    def match(cat) -> bool:
        c = cat ^ inverted
        return (c & mask) == mask and (not anyof or c & anyof)

    partial_at = None
    for vma in mm.vmas_in(start, end):
        s, e = max(start, vma.start), min(end, vma.end)
        wp_allowed = bool(vma.ctx and vma.ctx.wp_async and mm.userfaultfd_wp_use_markers(vma))
        if not wp_allowed:
            if flags & uapi.PM_SCAN_CHECK_WPASYNC:
                raise uffd_error(E.EPERM, "PAGEMAP_SCAN", start, end - start)
            if flags & uapi.PM_SCAN_WP_MATCHING:
                continue
        vcat = uapi.PageCategory.WPALLOWED if wp_allowed else 0
        pos = s
        keys = mm.pte_keys(s, e, vma.page_size) + [e]
        for k in keys:
            for pos, hend, table in (mm.table_runs(pos, k) if k > pos else ()):   # hole runs [pos, k)
                cat = mm.pagemap_scan_category(vma, None, table and not vma.hugetlb) | vcat
                if match(cat):
                    n = (hend - pos) // uapi.PAGE_SIZE
                    got = emit(pos, n, cat)
                    if flags & uapi.PM_SCAN_WP_MATCHING and cat & uapi.PageCategory.WRITTEN:
                        for a in range(pos, pos + got * uapi.PAGE_SIZE, vma.page_size):
                            mm.set_pte(a, M.make_pte_marker(M.PTE_MARKER_UFFD_WP))
                    if got < n:
                        mm.tlb.flush_range(wp_flush)
                        return ScanResult([tuple(r) for r in regions], pos + got * uapi.PAGE_SIZE)
            pos = max(pos, k)
            if k >= e:
                break
            pte = mm.ptes[k]
            cat = mm.pagemap_scan_category(vma, pte) | vcat
            npages = vma.page_size // uapi.PAGE_SIZE
            if match(cat):
                if vma.hugetlb and flags & uapi.PM_SCAN_WP_MATCHING and cat & uapi.PageCategory.WRITTEN \
                        and budget < npages:
                    # "Partial HugeTLB page WP isn't possible": backed out, walk_end = its start, and the
                    # walk goes on (returns 0): walk_end ends at the last such page [measured on 6.18]
                    partial_at = k
                    pos = k + vma.page_size
                    continue
                got = emit(k, npages, cat)
                if got < npages:
                    mm.tlb.flush_range(wp_flush)
                    return ScanResult([tuple(r) for r in regions], k + got * uapi.PAGE_SIZE)
                if flags & uapi.PM_SCAN_WP_MATCHING and cat & uapi.PageCategory.WRITTEN:
                    if pte.present:
                        new = pte.copy()
                        new.uffd_wp, new.write = True, False
                        if mm.needs_flush(pte, new):
                            wp_flush.append(k)
                        mm.ptes[k] = new
                    else:                                 # make_uffd_wp_pte(): pte_swp_mkuffd_wp()
                        pte.uffd_wp = True
            pos = k + vma.page_size
    mm.tlb.flush_range(wp_flush)
    return ScanResult([tuple(r) for r in regions], end if partial_at is None else partial_at)


__all__ = ["EmuBackend", "EmuUffd", "EmuThread", "EmuAccess", "EmuHandler", "do_pagemap_scan"]
