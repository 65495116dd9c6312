"""EmuBackend: the backend interface over the model (``mm.MM``, ``fs.userfaultfd.EmuUffd``,
``fs.proc.task_mmu``), run by the run queue (``sched.RunQueue``).

Simulated threads run synchronously: an access walks its pages through the
fault rules; a userfault queues a message and leaves the access blocked on the
ctx's wait-queue entry until a wake hands it back to the run queue, which
retries it — the same loop the faulting thread runs in the kernel.  Fault
handlers (``fault_handler``) are the run queue's services: they run as soon as
messages are queued.

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
from .._libc import on_tmpfs
from ..backend import (Access, AccessResult, Backend, HandledEvent, Handler, HandlerPolicy, MemType, Region,
                       SoftDirtyProbe, Thread, UffdMsg)
from ..errors import NotModelled, ProcessError, UffdError, UsageError, uffd_error
from ..types import size_name
from . import mm as M
from .fs.proc import task_mmu
from .mm.khugepaged import NotModelledCollapse
from .mm.madvise import MADV_NOT_MODELLED
from .fs.userfaultfd import EmuUffd
from .kernel.fork import dup_mmap
from .process import EmuCall, EmuProcess, _ForkAccess
from .profiles import DEFAULT_PROFILE, get_profile
from .sched import RunQueue, SyscallTask
from .slots import slot_maker

BUS_ADRERR = 2
_TIDS = itertools.count(4_000_001)
_EV_PAGEFAULT = int(uapi.Event.PAGEFAULT)
_PF_WP, _PF_MINOR = int(uapi.PagefaultFlag.WP), int(uapi.PagefaultFlag.MINOR)
_VM_FAULT_RETRY, _VM_FAULT_LIVELOCK, _VM_FAULT_MAJOR = M.VM_FAULT_RETRY, M.VM_FAULT_LIVELOCK, M.VM_FAULT_MAJOR
_VM_FAULT_SIGSEGV, _VM_FAULT_ERROR = M.VM_FAULT_SIGSEGV, M.VM_FAULT_ERROR
_TWICE = (0, 1)
_VM_HUGETLB, _PAGE_OFF = M.VM_HUGETLB, uapi.PAGE_SIZE - 1
_PAGE_MASK = ~_PAGE_OFF
_handled = slot_maker(HandledEvent, ("msg", "action", "err", "result"), HandledEvent, seq=0)   # a log entry per fault


class EmuAccess(Access):
    def __init__(self, backend, thread, addr, length, write, data, fill, stride, want_data):
        self._b = backend
        self.thread = thread
        self.mm = thread.mm
        self.write = write
        self._data = data
        self._fill_byte = bytes((fill & 0xFF,))   # a write without data writes this byte
        self._want = want_data and not write
        self._buf = bytearray()
        self._segs = _segments(addr, length, stride)
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
        self._segv = None        # the address of a SIGSEGV
        self.populate = False    # GUP (mlock's populate): fault the pages in, read or write no data

    def woken(self) -> None:
        """Handed back by a wake: with per-VMA locks the first retry is an mmap_lock retry; without, it
        is FAULT_FLAG_TRIED."""
        self.attempt += 1 if self.mm.profile.per_vma_lock else 2

    def run(self) -> None:
        mm = self.mm
        segs, write, i = self._segs, self.write, self._i
        nsegs = len(segs)
        vma = None
        while i < nsegs:
            a, off, n = segs[i]
            # find_vma(), unless the last VMA holds it: no fault changes the VMAs, and the segments are in
            # address order (a >= vma.start); a blocked access looks its VMA up again when it retries
            if vma is None or a >= vma.end:
                vma = mm.find_vma(a)
                if vma is None:
                    self._segv = a
                    break
            if not self.attempt and mm.access_ok(vma, a, write):
                if not mm.pmds and not vma.flags & _VM_HUGETLB:    # page_at() of a 4 KiB PTE, inline
                    page, poff = mm.ptes[a & _PAGE_MASK].page, a & _PAGE_OFF
                else:
                    _, page, poff = mm.page_at(vma, a)
                if write and not self.populate:
                    buf = self._data[off:off + n] if self._data is not None else self._fill_byte * n
                    if page.data is None and page.pages is None and not poff:
                        page.data = bytearray(buf)   # Folio.write() of a page never written, inline
                    else:
                        page.write(poff, buf)
                elif self._want:
                    self._buf += page.read(poff, n)
                i += 1
                continue
            r = mm.handle_mm_fault(vma, a, write, self)
            if r == _VM_FAULT_RETRY:
                self._i = i
                self.blocks += 1
                return                                  # blocked on self.waiter until woken
            if r == _VM_FAULT_LIVELOCK:
                self._i = i
                self.spinning = True                    # retried after the next ioctl, never counted
                self._b._rq.spin(self)
                return
            if r & _VM_FAULT_SIGSEGV:
                self._segv = a
                break
            res = self._res
            if r & _VM_FAULT_ERROR:
                res.sigbus, res.si_code, res.fault_addr = True, BUS_ADRERR, a
                break
            if self.attempt >= 2 or r & _VM_FAULT_MAJOR:   # mm_account_fault(): TRIED or a read counts major
                res.majflt += 1
                self.thread.majflt += 1
            else:
                res.minflt += 1
                self.thread.minflt += 1
            self.attempt = 0
        self._i = i
        if self._want and not self._res.sigbus:
            self._res.data = bytes(self._buf)
        self._done = True
        self.thread._finished(self)

    def wait(self, timeout=None) -> bool:
        if not self._done:
            self._b._rq.run()
        return self._done

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> AccessResult:
        if not self._done:
            raise RuntimeError("access still in progress: blocked in a userfault that nothing has resolved yet "
                               "(resolve it with copy/zeropage/continue/wake/writeprotect, or run a fault_handler)")
        if self._segv is not None:
            raise uffd_error(E.EFAULT, "access", message="SIGSEGV: no mapping or no permission")
        return self._res


def _segments(addr, length, stride) -> list:
    """(address, offset into the buffer, length) runs, split at 4 KiB boundaries, in address order."""
    if stride:
        return [(addr + off, off, 1) for off in range(0, length, stride)]
    out, off = [], 0
    while off < length:
        a = addr + off
        n = min(length - off, uapi.PAGE_SIZE - a % uapi.PAGE_SIZE)
        out.append((a, off, n))
        off += n
    return out


class EmuThread(Thread):
    def __init__(self, backend, name, mm=None):
        self._b = backend
        self.mm = backend.mm if mm is None else mm     # a thread of the emulator's process, or of a child
        self.name = name
        self.tid = next(_TIDS)
        self.minflt = 0
        self.majflt = 0
        self._queue: collections.deque = collections.deque()
        self._current: EmuAccess | None = None

    def access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False, populate=False) -> Access:
        acc = EmuAccess(self._b, self, addr, len, write, bytes(data) if data is not None else None, fill,
                        stride, want_data)
        acc.populate = populate      # GUP: fault the pages in, touch no data
        self._queue.append(acc)
        self._start_next()
        self._b._rq.run()
        return acc

    def _start_next(self):
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
            self._b._rq.enqueue(self._current)

    def _finished(self, acc):
        if self._current is acc:
            self._current = None
            self._start_next()

    def faults(self) -> tuple[int, int]:
        return self.minflt, self.majflt

    @property
    def busy(self) -> bool:
        return self._current is not None


class EmuJobThread:
    """A thread of the emulated process that runs system calls in order (uffdctl.process.JobThread's
    interface), each one a sched.SyscallTask that may sleep where the kernel's would."""

    def __init__(self, backend, name: str):
        self._b, self.name = backend, name
        self.thread = EmuThread(backend, f"job-{name}")   # its own task: the faults its calls take
        self._calls: collections.deque = collections.deque()

    def submit(self, fn) -> Access:
        task = SyscallTask(self._b._rq, fn, on_done=self._next)
        task.thread = self.thread
        self._calls.append(task)
        if len(self._calls) == 1:
            self._b._rq.enqueue(task)
            self._b._rq.run()
        return EmuCall(self._b, task)

    def _next(self, task) -> None:
        """A call returned: the next one of this thread starts (it was queued behind it)."""
        self._calls.remove(task)
        if self._calls:
            self._b._rq.enqueue(self._calls[0])

    def cancel(self) -> None:
        for t in list(self._calls):
            t.cancel()
        self._calls.clear()


class EmuHandler(Handler):
    """Resolves faults by policy as they are queued (from the backend's pump), like the native handler."""

    def __init__(self, backend, uffd: EmuUffd, policy: HandlerPolicy, batch: int = 16, log_cap: int = 65536):
        self._b = backend
        self.uffd = uffd
        self.policy = policy
        self._batch = batch
        # the native handler's bounded ring (cdefs/uffdctl_handler.c): the newest ``log_cap`` entries are
        # kept, older ones are dropped and counted; each entry's ``seq`` is its position in the stream
        # (1-based), given as it is drained -- the fault path pays one length test per batch, not per entry
        self.log_cap = log_cap
        self._log: list[HandledEvent] = []
        self._log_base = 0       # entries before self._log[0]: drained or dropped
        self._stats = {"msgs": 0, "resolved": 0, "errors": 0, "dropped": 0, "reads": 0}
        self._queued: list = []
        self.running = False

    def start(self) -> None:
        if self.running:
            return
        if self.policy.missing == "fill":
            self._fill_page()       # now: from a service (inside the run queue) the caller's write cannot run
        self.running = True
        self._b._rq.add_service(self)
        self.uffd.attach_handler(self)
        self._b._rq.run()

    def stop(self, release: bool = True) -> None:
        """``release`` False (handler --unread): what it queued stays queued, what it did not read unread."""
        if not self.running:
            return
        self.running = False
        self._b._rq.remove_service(self)
        self.uffd.detach_handler(self)
        if release and not self.uffd.closed:
            self._release_pending()
            self._b._rq.run()
        self._queued = []

    def _release_pending(self) -> None:
        """As the native handler's uffdctl_release_pending(): every message still unread is drained (logged as
        queued), then every fault it queued is resolved so that its thread goes on -- MISSING: a zero-filled
        page (UFFDIO_COPY), WP: un-protect, MINOR: CONTINUE; one already resolved (EEXIST) is woken; EAGAIN
        (an event pending) drains and retries."""
        self._drain_unread()
        ps = self.policy.page_size
        for m in self._queued:
            page = m.address & ~(ps - 1)
            for _ in range(1000):
                try:
                    if m.flags & _PF_WP:
                        self.uffd.writeprotect(page, ps, 0)
                    elif m.flags & _PF_MINOR:
                        self.uffd.continue_(page, ps)
                    else:
                        self.uffd.copy(page, self._zero_page(), ps)
                except UffdError as e:
                    if e.errno == E.EAGAIN:
                        self._drain_unread()
                        continue
                    if e.errno == E.EEXIST:
                        self.uffd.wake(page, ps)
                break

    def _drain_unread(self) -> None:
        while not self.uffd.closed and (msgs := self.uffd.read_msgs(64)):
            for m in msgs:
                if m.event == _EV_PAGEFAULT:
                    self._queued.append(m)
                    self._log.append(HandledEvent(m, "queue"))
                else:
                    self._log.append(HandledEvent(m, "event"))
            self._trim_log()

    def _trim_log(self) -> None:
        """The ring overwrites its oldest entries: keep the newest ``log_cap``, count the rest dropped."""
        n = len(self._log) - self.log_cap
        if n > 0:
            del self._log[:n]
            self._log_base += n
            self._stats["dropped"] += n

    def _zero_page(self) -> int:
        """The zero-filled source of a release (the native handler's fill page, memset to 0)."""
        r = getattr(self, "_zero_region", None)
        if r is None:
            r = self._zero_region = self._b.mmap(self.policy.page_size, MemType.ANON, name=None)
            self._b.write(r.addr, bytes(self.policy.page_size))
        return r.addr

    def service(self) -> bool:
        """Read and resolve one batch of messages (the run queue calls it); False: nothing to read."""
        u = self.uffd
        if u._closed or not (u.pending or u.event_q):   # nothing to read (read_msgs would return [])
            return False
        msgs = u.read_msgs(self._batch)
        if not msgs:
            return False
        stats, log = self._stats, self._log
        stats["reads"] += 1
        stats["msgs"] += len(msgs)
        for m in msgs:
            if m.event != _EV_PAGEFAULT:
                log.append(HandledEvent(m, "event"))
                continue
            action, err, result = self._resolve(m)
            if err:
                stats["errors"] += 1
            elif action != "queue":
                stats["resolved"] += 1
            if action == "queue":
                self._queued.append(m)
            log.append(_handled(m, action, err, result))
        if len(log) > self.log_cap:
            self._trim_log()
        return True

    def _call(self, action: str, page: int):
        p, u = self.policy, self.uffd
        if action == "copy":
            return u.copy(page, p.src + (page - p.base), p.page_size, p.copy_mode)
        if action == "zeropage":
            return u.zeropage(page, p.page_size)
        if action == "fill":
            return u.copy(page, self._fill_page(), p.page_size, p.copy_mode)
        if action == "continue":
            return u.continue_(page, p.page_size)
        if action == "unprotect":
            return u.writeprotect(page, p.page_size, 0)
        if action == "wake":
            return u.wake(page, p.page_size)
        raise KeyError(action)

    def _resolve(self, m) -> tuple[str, int, int]:
        p, u = self.policy, self.uffd
        page = m.address & ~(p.page_size - 1)
        flags = m.flags
        action = p.wp if flags & _PF_WP else p.minor if flags & _PF_MINOR else p.missing
        if action == "queue":
            return action, 0, 0
        if action == "copy" and getattr(p, "src_len", 0) and \
                not (p.base <= page and page - p.base + p.page_size <= p.src_len):
            return "queue", -E.EFAULT, 0       # outside the copy source: left to the user, as the native handler
        for _ in _TWICE:
            try:
                if action == "copy":           # _call("copy"), inline: the MISSING round trip
                    r = u.copy(page, p.src + (page - p.base), p.page_size, p.copy_mode)
                else:
                    r = self._call(action, page)
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
        base = self._log_base
        for i, ev in enumerate(out, base + 1):
            ev.seq = i
        self._log_base = base + len(out)
        return out

    def stats(self) -> dict:
        return dict(self._stats)


class EmuBackend(task_mmu.TaskMmuFiles, Backend):
    """The emulator: ``EmuBackend(profile="6.18", soft_dirty=True, **switch_overrides)``."""

    name = "emu"
    MODELLED_ADVICE = Backend.MODELLED_ADVICE | {10, 11, 18, 19}   # + MADV_DONTFORK/DOFORK/WIPEONFORK/KEEPONFORK

    def __init__(self, profile: str = DEFAULT_PROFILE, soft_dirty: bool = True, thp: dict | None = None,
                 **switches):
        self.profile = get_profile(profile, **switches)
        self.mm = M.MM(self.profile, soft_dirty, thp=thp)
        self._regions: dict[str, Region] = {}
        self._files: dict[int, M.ShmemFile] = {}
        self._uffds: list[EmuUffd] = []
        self._threads: dict[str, EmuThread] = {}
        self._caller = EmuThread(self, "caller")
        self._job_threads: dict = {}     # job_thread(): name -> EmuJobThread
        self._pids = itertools.count(1000)  # pids of emulated fork children
        self._procs: list[EmuProcess] = []
        self._rq = RunQueue()
        self._names = itertools.count()
        self._fds = itertools.count(1000)
        self._swapdevs: list = []        # the model's swap devices (swap on), newest last
        self._paths: dict = {}           # path -> the model's file at it (two mappings share its page cache)

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
    def tlb_flush_count(self) -> int:
        return self.mm.tlb.flushes

    def uffd_vmas(self, start: int, end: int) -> list[tuple[int, int, int]]:
        bits = ((M.VM_UFFD_MISSING, uapi.RegisterMode.MISSING), (M.VM_UFFD_WP, uapi.RegisterMode.WP),
                (M.VM_UFFD_MINOR, uapi.RegisterMode.MINOR))
        return [(max(v.start, start), min(v.end, end), sum(int(m) for f, m in bits if v.flags & f))
                for v in self.mm.vmas if v.start < end and start < v.end]

    def hint_modes(self, ioctl: str) -> dict[str, int]:
        return uapi.rfc_hint_modes(ioctl) if self.profile.hints else {}

    # -- mappings -------------------------------------------------------------------------
    def mmap(self, len, memtype=MemType.ANON, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None,
             noreserve=False, page_size=None):   # sparse: no commit accounting to skip
        memtype = MemType(memtype)
        if page_size is not None and not memtype.hugetlb:
            raise UsageError(f"a page size is for hugetlb mappings, not {memtype.value}")
        if page_size not in (None,) + M.HSTATES:
            raise UsageError(f"no hugetlb page size {size_name(page_size)} in the model (sizes: "
                             f"{', '.join(size_name(s) for s in M.HSTATES)}: x86-64's PMD and PUD hstates)")
        name = self._region_name(name)
        page = (page_size or M.HPAGE_SIZE) if memtype.hugetlb else uapi.PAGE_SIZE
        self._check_len(len, page, addr)
        f = None
        fd = None
        if memtype.file_backed:
            fd = next(self._fds)
            f = self._files[fd] = M.ShmemFile(f"uffdctl-{name}", len, page)
        v = self.mm.mmap(len, memtype, prot, addr, f, page_size=page if memtype.hugetlb else None)
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, len)
        if memtype is MemType.ANON:      # as the kernel backend: MADV_NOHUGEPAGE unless asked (mmap --thp)
            v.flags |= M.VM_NOHUGEPAGE
        return self._add_region(Region(name, v.start, len, memtype, page, fd, prot))

    def mmap_fixed(self, len, memtype, name, prot, addr, page_size=None):
        memtype = MemType(memtype)
        page = (page_size or M.HPAGE_SIZE) if memtype.hugetlb else uapi.PAGE_SIZE
        self._check_len(len, page, addr)
        self._map_fixed_unmap(addr, len, page)
        return self.mmap(len, memtype, name=name, prot=prot, addr=addr, page_size=page_size)

    def _map_fixed_unmap(self, addr, len, page) -> None:
        """MAP_FIXED: mmap_region() unmaps what lies in [addr, addr+len) first (do_vmi_munmap(), with
        userfaultfd_unmap_prep(): an UNMAP message for each EVENT_UNMAP ctx there; the caller's
        userfaultfd_unmap_complete() follows the new mapping), as munmap() would; a bad address is EINVAL
        before anything is unmapped."""
        if addr is None or addr % page or addr + len > M.TASK_SIZE:
            raise uffd_error(E.EINVAL, "mmap", addr, len)
        if self.mm.vmas_in(addr, addr + len):
            self.munmap(addr, len)

    def mmap_shared_anon(self, len, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None, fixed=False):
        """MAP_SHARED|MAP_ANONYMOUS is shmem in mm/mmap.c (shmem_zero_setup()): a shmem file no fd reaches."""
        name = self._region_name(name)
        self._check_len(len, uapi.PAGE_SIZE, addr)
        if fixed:
            self._map_fixed_unmap(addr, len, uapi.PAGE_SIZE)
        v = self.mm.mmap(len, MemType.SHMEM, prot, addr, M.ShmemFile("dev/zero", len, uapi.PAGE_SIZE))
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, len)
        return self._add_region(Region(name, v.start, len, MemType.SHMEM, uapi.PAGE_SIZE, None, prot,
                                       kind="shared-anon"))

    def alias(self, region, name=None):
        name = self._alias_name(region, name)
        v = self.mm.mmap(region.len, region.memtype, uapi.PROT_READ | uapi.PROT_WRITE, None,
                         self._files[region.fd], shared=True)
        return self._add_region(Region(name, v.start, region.len, region.memtype, region.page_size, None))

    def _event(self, feature, msg_kw, vmas) -> None:
        for ctx in {id(v.ctx): v.ctx for v in vmas if v.ctx is not None}.values():
            if ctx.features & feature:
                ctx.queue_event(UffdMsg(**msg_kw))

    def munmap(self, addr, len, mm=None):
        self._syscall("munmap", addr, len, (self.mm if mm is None else mm).munmap(addr, len))
        if mm is not None:
            return                      # a child keeps its own regions (uffdctl.emu.process)
        for name, reg in list(self._regions.items()):
            if addr <= reg.addr and reg.end <= addr + len:
                del self._regions[name]

    def madvise(self, addr, len, advice, mm=None):
        """``mm``: of a child (uffdctl.emu.process), else the emulator's own process."""
        mm = self.mm if mm is None else mm
        if advice in MADV_NOT_MODELLED:
            raise NotModelled(f"madvise {MADV_NOT_MODELLED[advice]}")
        if advice in (uapi.MADV_DONTNEED, uapi.MADV_REMOVE):
            self._event(uapi.Feature.EVENT_REMOVE, {"event": uapi.Event.REMOVE, "start": addr, "end": addr + len},
                        mm.vmas_in(addr, addr + len))
            if self._rq.current is not None:    # userfaultfd_remove(): asleep until read, before the zap
                self._rq.current.send_events()
        try:
            ret = mm.madvise(addr, len, advice)
        except NotModelledCollapse as e:
            raise NotModelled(str(e)) from None
        self._syscall("madvise", addr, len, ret)

    def mprotect(self, addr, len, prot, mm=None):
        self._syscall("mprotect", addr, len, (self.mm if mm is None else mm).mprotect(addr, len, prot))

    # -- regular files and SysV shm (emu/mm/filemap.py, shmem) ------------------------------------------------
    def mmap_file(self, len, path, shared, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None,
                  fixed=False):
        """A regular file of ``len`` bytes at ``path`` (a directory: a fresh file there).  The filesystem is the
        one the path has on this machine: tmpfs gives shmem's semantics, anything else a disk file's
        (emu/mm/filemap.py).  The model's file starts empty (a host file's contents are not read)."""
        import os
        name = self._region_name(name)
        self._check_len(len, uapi.PAGE_SIZE, addr)
        if not os.path.isdir(path) and os.path.exists(path) and os.path.getsize(path):
            raise NotModelled("the contents of an existing host file")
        d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise uffd_error(E.ENOENT, "open", None, len, message=path)
        if fixed:
            self._map_fixed_unmap(addr, len, uapi.PAGE_SIZE)
        key = None if os.path.isdir(path) else os.path.abspath(path)
        f = self._paths.get(key) if key else None
        if f is None:
            fname = f"{path} (emulated)" if key else f"{path}/uffdctl-{name} (emulated)"
            f = M.ShmemFile(fname, len, uapi.PAGE_SIZE) if on_tmpfs(d) else M.RegularFile(fname, len)
            if key:
                self._paths[key] = f
        f.size = max(f.size, len)
        fd = next(self._fds)
        self._files[fd] = f
        v = self.mm.mmap(len, MemType.SHMEM if shared else MemType.SHMEM_PRIVATE, prot, addr, f, shared=shared)
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, len, message=path)
        return self._add_region(Region(name, v.start, len, MemType.SHMEM if shared else MemType.SHMEM_PRIVATE,
                                       uapi.PAGE_SIZE, fd, prot, kind="file" if shared else "file-private",
                                       path=f.name))

    def mmap_sysv(self, len, hugetlb, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None):
        """shmget(IPC_PRIVATE) + shmat, IPC_RMID at once: a shmem (or hugetlb) segment whose VMA is not
        vma_is_shmem() (shm_vm_ops); SHM_RDONLY without PROT_WRITE (no VM_MAYWRITE)."""
        name = self._region_name(name)
        page = M.HPAGE_SIZE if hugetlb else uapi.PAGE_SIZE
        self._check_len(len, page, addr)
        mt = MemType.HUGETLB if hugetlb else MemType.SHMEM
        f = M.ShmemFile(f"SYSV-{name}", len, page, sysv=True)
        v = self.mm.mmap(len, mt, prot, addr, f, shared=True)
        if isinstance(v, int):
            raise uffd_error(-v, "shmat", addr, len)
        if not prot & uapi.PROT_WRITE:
            v.flags &= ~M.VM_MAYWRITE
        return self._add_region(Region(name, v.start, len, mt, page, None, prot,
                                       kind="sysv-hugetlb" if hugetlb else "sysv"))

    def msync(self, addr, len, flags):
        self._syscall("msync", addr, len, self.mm.msync(addr, len, flags))

    def mlock(self, addr, len, flags=0):
        """mlock2(): VM_LOCKED on the range, then (without MLOCK_ONFAULT) every page faulted in by the caller --
        a write fault on private writable VMAs, as GUP's FOLL_WRITE; a userfault no handler resolves is EDEADLK
        here (the kernel's mlock would block)."""
        from .mm.mlock import MLOCK_ONFAULT, VM_LOCKONFAULT
        if flags & ~MLOCK_ONFAULT:
            raise uffd_error(E.EINVAL, "mlock2", addr, len)
        start = addr & ~(uapi.PAGE_SIZE - 1)
        len += addr - start
        self._syscall("mlock2", start, len, self.mm.apply_vma_lock_flags(
            start, len, M.VM_LOCKED | (VM_LOCKONFAULT if flags & MLOCK_ONFAULT else 0)))
        if flags & MLOCK_ONFAULT:
            return
        call = self._rq.current                 # a session thread's mlock (job_thread()) sleeps in its faults
        for s, e, write in self.mm.populate_ranges(start, len):
            acc = (self._caller if call is None else call.thread).access(s, e - s, write, stride=uapi.PAGE_SIZE,
                                                                          populate=True)
            if not acc.done and call is not None:
                call.park(lambda acc=acc: acc.done)
            if not acc.done:
                self._withdraw(acc)
                raise uffd_error(E.EDEADLK, "mlock2", s, e - s,
                                 message="emulator: populating the locked range blocked in a userfault that no "
                                         "handler resolves (the kernel's mlock would block): run a fault_handler")

    def munlock(self, addr, len):
        start = addr & ~(uapi.PAGE_SIZE - 1)
        self._syscall("munlock", start, len + addr - start, self.mm.apply_vma_lock_flags(start, len + addr - start, 0))

    # -- the model's own swap devices (emu/mm/swapfile.py): never the host's -------------------------------
    def swap_on(self, size, directory=None):
        """swapon of an emulated device of ``size`` bytes (``directory`` names nothing on the host)."""
        if size < 40 * uapi.PAGE_SIZE:
            raise uffd_error(E.EINVAL, "swapon", None, size, message="a swapfile needs at least 40 pages")
        name = f"emu-swap{len(self._swapdevs)}"
        si = self.mm.swap.swapon(size, name)
        if isinstance(si, int):
            raise uffd_error(-si, "swapon", None, size)
        self._swapdevs.append(si)
        return {"filename": name, "size": size, "active": self._swap_entry(si), "emulated": 1}

    def _swap_entry(self, si) -> dict:
        return {"filename": si.name, "type": "emulated", "size": (si.max - 1) * uapi.PAGE_SIZE,
                "used": si.inuse_pages * uapi.PAGE_SIZE, "priority": -2 - si.type}

    def swap_off(self):
        if not self._swapdevs:
            raise uffd_error(E.ENOENT, "swapoff", message="no swap device of this session is on")
        out = []
        while self._swapdevs:
            si = self._swapdevs.pop()
            M.swapoff(self.mm.swap, si)
            out.append({"filename": si.name})
        self._rq.run()
        return {"removed": out}

    def swap_status(self):
        return {"swaps": [dict(self._swap_entry(si), mine=1) for si in self._swapdevs],
                "mine": [si.name for si in self._swapdevs]}

    def _syscall(self, name, addr, length, ret):
        """Let woken or queued work run, then turn a -errno from the model into the exception."""
        self._rq.run()
        if ret < 0:
            raise uffd_error(-ret, name, addr, length)

    def mremap(self, old, old_len, new_len, flags=0, new_addr=0, mm=None):
        """mremap(): grow/shrink in place when free, else move (MREMAP_MAYMOVE / FIXED / DONTUNMAP)."""
        ret = (self.mm if mm is None else mm).mremap(old, old_len, new_len, flags, new_addr)
        self._syscall("mremap", old, old_len, ret)
        if mm is None:
            self._remap_regions(old, old_len, ret, new_len, flags)
        return ret

    @property
    def regions(self) -> dict[str, Region]:
        return dict(self._regions)

    def alias_at(self, region, name=None, addr=None):
        name = self._alias_name(region, name)
        v = self.mm.mmap(region.len, region.memtype, uapi.PROT_READ | uapi.PROT_WRITE, addr,
                         self._files[region.fd], shared=True)
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, region.len)
        return self._add_region(Region(name, v.start, region.len, region.memtype, region.page_size, None))

    def smaps_vmas(self, start, end):
        return task_mmu.smaps_vmas(self.mm, start, end)

    def thp_knob(self, knob):
        return self.mm.thp.show(knob) if knob in self.mm.thp.choices else None

    def set_thp_knob(self, knob, value):
        """The emulated kernel's sysfs store: a bad value is EINVAL, as the kernel's."""
        err = self.mm.thp.set(knob, value)
        if err:
            raise uffd_error(E.EINVAL, "thp", message=err)

    # -- userfaultfd ----------------------------------------------------------------------
    def userfaultfd(self, flags=uapi.O_CLOEXEC | uapi.O_NONBLOCK, via="auto", mm=None) -> EmuUffd:
        if via not in ("auto", "syscall", "dev"):
            raise ValueError(f"unknown open method {via!r} (valid: auto, syscall, dev)")
        if flags & ~int(uapi.O_CLOEXEC | uapi.O_NONBLOCK | uapi.UFFD_USER_MODE_ONLY):
            raise uffd_error(E.EINVAL, "userfaultfd", message="flags not accepted")
        u = EmuUffd(self.mm if mm is None else mm, self._rq, flags)
        self._uffds = [x for x in self._uffds if not x.closed]
        self._uffds.append(u)
        return u

    def fault_handler(self, uffd, policy: HandlerPolicy, start: bool = True) -> Handler:
        h = EmuHandler(self, uffd, policy)
        if start:
            h.start()
        return h

    def fork(self, name: str, regions: dict, thread: str | None = None) -> Access:
        """fork(2) of the emulator's process (kernel/fork.py): the child (an EmuProcess, uffdctl.emu.process)
        once every FORK message has been read.  ``thread``: no job thread is needed here (nothing blocks)."""
        return self._fork(self.mm, name, regions, None)

    def _fork(self, oldmm, name: str, regions: dict, parent) -> Access:
        """dup_mmap() of ``oldmm`` into a new process, then dup_userfaultfd_complete(): one FORK message per
        parent ctx with EVENT_FORK, queued one after the other (each is read before the next is sent, and the
        parent ctx is mmap_changing from dup_userfaultfd() until its message is read); fork() returns after
        the last.  A parent ctx closed before its message is read drops it and releases the child ctx
        (userfaultfd_release_new(): the child's VMAs on it are unregistered)."""
        mm, fcs = dup_mmap(oldmm)
        child = EmuProcess(self, name, next(self._pids), mm, parent, regions, EmuThread(self, "main", mm))
        acc = _ForkAccess(self, child)
        # copy_files(): the child's fd table holds every uffd of ours until it runs (its command loop closes
        # them), i.e. until fork() returns; a child process's own fd table has none (it passes them on)
        inherited = [u for u in self._uffds if not u.closed] if parent is None else []
        for u in inherited:
            u.file_refs += 1
        for octx, nctx in fcs:
            octx.changing += 1
            self._uffds.append(nctx)
        todo = list(fcs)
        current = []                # the (parent ctx, child ctx) whose FORK message waits to be read

        def dup_fctx(released=None, octx=None, nctx=None):
            if octx is not None:
                current.clear()
                octx.changing -= 1
                if released:
                    nctx.userfaultfd_release_new()
            if todo:
                o, n = todo.pop(0)
                current.append((o, n))
                o.queue_event(UffdMsg(uapi.Event.FORK, ufd=n.fd),
                              on_read=lambda rel, o=o, n=n: dup_fctx(rel, o, n))
                return
            acc.finish()
            self._procs.append(child)
            if parent is not None:
                parent.children.append(child)
            for u in inherited:
                u.drop_file_ref()

        def fatal_signal():
            """The forking task got a fatal signal (a child process killed in its fork): the FORK message not
            read yet is dropped, the child ctxs are released, and copy_process() fails: no child at all."""
            for o, n in current:
                o.drop_event(lambda m, n=n: m.event == uapi.Event.FORK and m.ufd == n.fd)
            for o, n in current + todo:
                o.changing -= 1
                n.userfaultfd_release_new()
            current.clear()
            todo.clear()
            mm.exited = True
            acc.fail(ProcessError(f"process {parent.name} (pid {parent.pid}) is gone"))

        acc.fatal_signal = fatal_signal
        dup_fctx()
        self._rq.run()
        return acc

    def fork_child(self) -> int:
        """fork() a child that exits at once (with EVENT_FORK: once fork() has returned, i.e. the FORK
        messages were read); returns its pid.  Its uffds are left on an exited mm (range ioctls ->
        ESRCH, REGISTER/UNREGISTER -> ENOMEM)."""
        acc = self._fork(self.mm, f"__fork{next(self._names)}", {}, None)
        finish = acc.finish

        def exit_at_once():
            finish()
            acc.result().die(0)
            acc.result().close()
        if acc.done:
            exit_at_once()
        else:
            acc.finish = exit_at_once
        return acc.result_pid

    def _cancel_thread(self, thread) -> None:
        """The thread exits: its blocked access (if any) leaves the wait queues, queued ones are dropped."""
        cur = thread._current
        if cur is not None and cur.waiter is not None:
            for u in self._uffds:
                u.cancel(cur.waiter)
            cur.waiter = None
        thread._current = None
        thread._queue.clear()

    def job_thread(self, name: str) -> "EmuJobThread":
        """A thread of the emulated process that issues system calls which may sleep in the kernel (an event
        that waits to be read, a fault in mlock's populate): each runs as a sched.SyscallTask."""
        jt = self._job_threads.get(name)
        if jt is None:
            jt = self._job_threads[name] = EmuJobThread(self, name)
        return jt

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
            self._withdraw(acc)
            raise uffd_error(E.EDEADLK, op, addr, length,
                             message="emulator: the caller's own access blocked in a userfault that no handler "
                                     "resolves (the kernel would block): use a thread or a fault_handler")
        r = acc.result()
        if r.sigbus:
            raise uffd_error(E.EFAULT, op, addr, length, message=f"SIGBUS (si_code {r.si_code})")
        return r

    def _withdraw(self, acc) -> None:
        """Take back a caller's access left blocked in a userfault (the emulator cannot block its caller)."""
        w = acc.waiter
        if w is not None:
            for u in self._uffds:
                u.cancel(w)
        self._caller._current = None
        self._caller._queue.clear()

    def read(self, addr, len) -> bytes:
        return self._caller_access("read", addr, len, False).data

    def write(self, addr, data) -> None:
        self._caller_access("write", addr, len(data), True, bytes(data))

    # -- /proc ----------------------------------------------------------------------------
    def pagemap(self, addr, npages) -> list[int]:
        return task_mmu.pagemap_read(self.mm, addr, npages)

    # clear_refs, pagemap_scan, smaps_private_dirty, pte_bits, vma_bounds: task_mmu.TaskMmuFiles

    def soft_dirty(self) -> SoftDirtyProbe:
        if self.mm.soft_dirty_config:
            return SoftDirtyProbe(True, "emulated CONFIG_MEM_SOFT_DIRTY=y")
        return SoftDirtyProbe(False, "emulated CONFIG_MEM_SOFT_DIRTY=n: bit 55 reads 0")

    def close(self) -> None:
        for jt in self._job_threads.values():
            jt.cancel()
        for p in reversed(self._procs):
            p.close()
        for u in list(self._uffds):
            u.close()
        self._threads.clear()
        for r in list(self._regions.values()):
            self.mm.munmap(r.addr, r.len)
        self._regions.clear()


__all__ = ["EmuBackend", "EmuUffd", "EmuThread", "EmuAccess", "EmuHandler"]
