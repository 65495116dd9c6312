"""The userfaultfd context and its ioctls, as fs/userfaultfd.c does them.

:class:`EmuUffd` is the ``struct userfaultfd_ctx``: negotiated features, the
fault queues (``fault_pending_wqh``: messages not yet read; ``fault_wqh``: read,
still waiting), the event queue with ``mmap_changing``, and the ioctls in the
kernel's check order.  Page-table work is delegated to the model (``..mm``: mm/userfaultfd.c).

Each waiter is one faulting access; a wake (resolving ioctl without DONTWAKE,
UFFDIO_WAKE, close, UNREGISTER of a MISSING VMA) hands it back to the run
queue (``..sched``), which retries the access (userfaultfd_must_wait()).
"""
from __future__ import annotations

import errno as E
import os
import time

from ... import uapi
from ...backend import Uffd
from ...types import UFFD_MSG_SIZE, UffdioApi, UffdMsg
from ...errors import uffd_error
from .. import mm as M
from ..profiles import HINT_MODES
from ..slots import slot_maker

# The uapi flags as plain ints on the per-fault and per-ioctl paths: IntFlag arithmetic was 11% of an
# emulated fault.
_F_SIGBUS, _F_EXACT_ADDRESS, _F_THREAD_ID = (int(uapi.Feature.SIGBUS), int(uapi.Feature.EXACT_ADDRESS),
                                             int(uapi.Feature.THREAD_ID))
_F_WP_ASYNC, _F_WP_UNPOPULATED = int(uapi.Feature.WP_ASYNC), int(uapi.Feature.WP_UNPOPULATED)
_WAITED_EVENTS = frozenset({uapi.Event.REMOVE, uapi.Event.UNMAP, uapi.Event.REMAP})   # the caller sleeps until read
_PF_WRITE, _PF_WP, _PF_MINOR = (int(uapi.PagefaultFlag.WRITE), int(uapi.PagefaultFlag.WP),
                                int(uapi.PagefaultFlag.MINOR))
_EV_PAGEFAULT = int(uapi.Event.PAGEFAULT)
_EV_PAGEFAULT_ENUM = uapi.Event.PAGEFAULT
_COPY_MODES = int(uapi.CopyMode.DONTWAKE | uapi.CopyMode.WP)
_COPY_DONTWAKE, _COPY_WP = int(uapi.CopyMode.DONTWAKE), int(uapi.CopyMode.WP)
_ZP_DONTWAKE = int(uapi.ZeropageMode.DONTWAKE)
_WPM_WP, _WPM_DONTWAKE = int(uapi.WriteprotectMode.WP), int(uapi.WriteprotectMode.DONTWAKE)
_PAGE_OFF = uapi.PAGE_SIZE - 1
_TASK_SIZE = M.TASK_SIZE
_VM_UFFD_WP, _VM_UFFD_MINOR, _VM_FAULT_RETRY = M.VM_UFFD_WP, M.VM_UFFD_MINOR, M.VM_FAULT_RETRY
_COPY = M.MFILL_ATOMIC_COPY
_monotonic_ns = time.monotonic_ns
_MSG_FIELDS = ("event", "flags", "address", "ptid", "ufd", "from_", "to", "len", "start", "end", "ts_ns")
assert tuple(UffdMsg.__dataclass_fields__) == _MSG_FIELDS, "UffdMsg changed: update _stamped()"


def _stamped(m: UffdMsg, ts: int) -> UffdMsg:
    """A copy of ``m`` with ``ts_ns`` set (dataclasses.replace() without its per-call field introspection)."""
    return UffdMsg(m.event, m.flags, m.address, m.ptid, m.ufd, m.from_, m.to, m.len, m.start, m.end, ts)


class Waiter:
    """A faulting access queued on the ctx (struct userfaultfd_wait_queue)."""

    __slots__ = ("msg", "access", "read")

    def __init__(self, msg: UffdMsg, access):
        self.msg, self.access, self.read = msg, access, False


# the two objects a fault queues, made by slot where uffdctl._slots is built (..slots)
_new_waiter = slot_maker(Waiter, ("msg", "access"), Waiter, read=False)
_pagefault_msg = slot_maker(UffdMsg, ("event", "flags", "address", "ptid"), UffdMsg, ufd=0, from_=0, to=0,
                            len=0, start=0, end=0, ts_ns=0)


class EmuUffd(Uffd):
    def __init__(self, mm, rq, flags: int):
        self.mm: M.MM = mm
        self.rq = rq                        # the run queue its waiters are woken onto
        self.released = False
        self.flags = flags
        self.features = 0
        self._initialized = False
        self._closed = False
        self.pending: list[Waiter] = []     # fault_pending_wqh
        self.waiting: list[Waiter] = []     # fault_wqh
        self.event_q: list[UffdMsg] = []
        self.event_done: dict[int, object] = {}   # id(msg) -> called once it is read or dropped (fork waits)
        self.changing = 0                   # mmap_changing raised by a fork whose FORK message is not read yet
        self.file_refs = 1                  # fd-table references to the file: ours, and a pending fork's child
        self._handlers: list = []
        self._r, self._w = os.pipe()        # readable while a message is pending: pollable like the real fd
        os.set_blocking(self._r, False)
        self._signalled = False
        self.fd = self._r

    # -- plumbing ----------------------------------------------------------------------
    @property
    def mmap_changing(self) -> bool:
        return bool(self.event_q) or self.changing > 0

    @property
    def wp_async(self) -> bool:
        return bool(self.features & _F_WP_ASYNC)

    @property
    def wp_unpopulated(self) -> bool:
        return bool(self.features & (_F_WP_UNPOPULATED | _F_WP_ASYNC))

    def _update_readable(self):
        want = bool(self.pending or self.event_q) and not self._closed
        if want and not self._signalled:
            os.write(self._w, b"\1")
            self._signalled = True
        elif not want and self._signalled:
            try:
                os.read(self._r, 1)
            except BlockingIOError:
                pass
            self._signalled = False

    def _check(self, name: str, start=None, length=None):
        if self._closed:
            raise uffd_error(E.EBADF, name, start, length, message="uffd is closed")
        if not self._initialized:
            raise uffd_error(E.EINVAL, name, start, length, message="UFFDIO_API not done yet")

    def _validate_range(self, name, start, length, aligned=True):
        if aligned and start & _PAGE_OFF or length & _PAGE_OFF or length <= 0 \
                or start >= _TASK_SIZE or length > _TASK_SIZE - start:
            raise uffd_error(E.EINVAL, name, start, length)

    def _has_ioctl(self, bit: int) -> bool:
        return bool(self._range_ioctls() & bit)

    def _range_ioctls(self) -> int:
        mask = int(uapi.UFFD_API_RANGE_IOCTLS)
        if not self.mm.profile.features & uapi.Feature.POISON:
            mask &= ~int(uapi.Ioctl.POISON)
        if not self.mm.profile.features & uapi.Feature.MOVE:
            mask &= ~int(uapi.Ioctl.MOVE)
        return mask

    # -- the fault side ------------------------------------------------------------------
    def handle_userfault(self, vmf, reason: int) -> int:
        features = self.features
        if features & _F_SIGBUS:
            return M.VM_FAULT_SIGBUS
        if vmf.task is None:          # a kernel access (copy_from_user) by the ioctl caller
            return M.VM_FAULT_SIGBUS
        flags = _PF_WRITE if vmf.write else 0
        if reason == _VM_UFFD_WP:
            flags |= _PF_WP
        elif reason == _VM_UFFD_MINOR:
            flags |= _PF_MINOR
        # EXACT_ADDRESS: the faulting address, else the page- (hugetlb: huge-page-) aligned one
        address = vmf.real_address if features & _F_EXACT_ADDRESS else vmf.address
        task = vmf.task
        w = _new_waiter(_pagefault_msg(_EV_PAGEFAULT_ENUM, flags, address,
                                       task.thread.tid if features & _F_THREAD_ID else 0), task)
        self.pending.append(w)
        task.waiter = w
        if self._closed == self._signalled:   # _readable_changed(): only when the pipe's state changes
            self._readable_changed()
        return _VM_FAULT_RETRY

    def _readable_changed(self) -> None:
        if (bool(self.pending or self.event_q) and not self._closed) == self._signalled:
            return                          # the pipe already says it
        rq = self.rq
        if rq._running:
            rq._readable[id(self)] = self   # rq.defer_readable(), inline: synced when the run queue's run ends
        else:
            self._update_readable()

    def dup(self, mm) -> "EmuUffd":
        """dup_userfaultfd(): a ctx for the child's mm with this one's flags and negotiated features."""
        child = EmuUffd(mm, self.rq, self.flags)
        child.features, child._initialized = self.features, True
        return child

    def userfaultfd_release_new(self) -> None:
        """A child ctx whose FORK message was dropped (its parent ctx closed first): the child's VMAs still
        pointing at it are unregistered (userfaultfd_reset_ctx(); PTE bits stay) and it is released."""
        for v in self.mm.vmas:
            if v.ctx is self:
                v.ctx = None
                v.flags &= ~M.VM_UFFD_FLAGS
        self.mm.merge()
        if not self._closed:
            self._close_fd()
            self.file_refs = 0

    def mremap_userfaultfd_complete(self, old: int, new: int, length: int) -> None:
        """The REMAP event of a moved VMA whose ctx kept it (EVENT_REMAP): ``len`` is the old length."""
        self.queue_event(UffdMsg(uapi.Event.REMAP, from_=old, to=new, len=length))

    def userfaultfd_unmap_prep(self, start: int, end: int) -> None:
        """munmap() (also of mremap's vacated source and MREMAP_FIXED destination): UNMAP with EVENT_UNMAP."""
        if self.features & uapi.Feature.EVENT_UNMAP:
            self.queue_event(UffdMsg(uapi.Event.UNMAP, start=start, end=end))

    def queue_event(self, msg: UffdMsg, on_read=None) -> None:
        """A non-cooperative event: mmap_changing until read (the mm operation does not block here).
        ``on_read(released)``: called once the message has been read (False) or dropped by close (True) --
        userfaultfd_event_wait_completion(), which fork() waits in."""
        call = self.rq.current
        if call is not None and on_read is None and msg.event in _WAITED_EVENTS:
            # raised by a system call that can sleep (sched.SyscallTask): held back, mmap_changing raised, and
            # sent where the kernel waits for it to be read (its send_events())
            self.changing += 1
            call.deferred.append((self, msg))
            return
        self.event_q.append(msg)
        if on_read is not None:
            self.event_done[id(msg)] = on_read
        self._update_readable()

    def drop_event(self, which) -> None:
        """An event whose waiter died before it was read is taken back (it will never be read)."""
        for m in [m for m in self.event_q if which(m)]:
            self.event_q.remove(m)
            self.event_done.pop(id(m), None)
        self._update_readable()

    def wake_userfault(self, start: int, length: int | None) -> None:
        """Wake waiters whose message address lies in [start, start+len); len None: all."""
        pending, waiting = self.pending, self.waiting
        if not pending:
            if not waiting:
                return                     # nothing waits: no wake, and readability cannot have changed
            if len(waiting) == 1:          # one fault read and waiting (a handler's round trip): the loop below
                w = waiting[0]
                if length is None or start <= w.msg.address < start + length:
                    waiting.clear()
                else:
                    w = None
                if (bool(self.event_q) and not self._closed) != self._signalled:
                    self._update_readable()
                if w is not None:
                    self.rq.wake_up(w)
                return
        woken = []
        for q in (pending, waiting):
            if not q:
                continue
            keep = []
            for w in q:
                if length is None or start <= w.msg.address < start + length:
                    woken.append(w)
                else:
                    keep.append(w)
            q[:] = keep
        if (bool(pending or self.event_q) and not self._closed) != self._signalled:
            self._update_readable()
        wake_up = self.rq.wake_up
        for w in woken:
            wake_up(w)

    def cancel(self, w: Waiter) -> None:
        for q in (self.pending, self.waiting):
            if w in q:
                q.remove(w)
        self._update_readable()

    # -- ioctls --------------------------------------------------------------------------
    def api(self, features: int = 0, api: int = uapi.UFFD_API) -> UffdioApi:
        if self._closed:
            raise uffd_error(E.EBADF, "UFFDIO_API")
        avail = self.mm.profile.features
        if api != uapi.UFFD_API or self._initialized or features & ~avail:
            raise uffd_error(E.EINVAL, "UFFDIO_API")
        if features & uapi.Feature.WP_ASYNC:
            features |= uapi.Feature.WP_UNPOPULATED
        self.features = features
        self._initialized = True
        return UffdioApi(uapi.UFFD_API, avail, int(uapi.UFFD_API_IOCTLS))

    def register(self, start: int, len: int, mode: int) -> int:
        name = "UFFDIO_REGISTER"
        self._check(name, start, len)
        R = uapi.RegisterMode
        if mode == 0 or mode & ~int(R.MISSING | R.WP | R.MINOR):
            raise uffd_error(E.EINVAL, name, start, len)
        self._validate_range(name, start, len)
        if self.mm.exited:
            raise uffd_error(E.ENOMEM, name, start, len)
        end = start + len
        vmas = self.mm.vmas_in(start, end)
        if not vmas:
            raise uffd_error(E.EINVAL, name, start, len)
        vm_flags = (M.VM_UFFD_MISSING if mode & R.MISSING else 0) | (M.VM_UFFD_WP if mode & R.WP else 0) \
            | (M.VM_UFFD_MINOR if mode & R.MINOR else 0)
        basic = False
        for v in vmas:
            if v.hugetlb and (start % v.page_size or end % v.page_size):
                raise uffd_error(E.EINVAL, name, start, len)
            if not M.vma_can_userfault(v, vm_flags, self.wp_async):
                raise uffd_error(E.EINVAL, name, start, len)
            if not v.flags & M.VM_MAYWRITE:
                raise uffd_error(E.EPERM, name, start, len)
            if v.ctx is not None and v.ctx is not self:
                raise uffd_error(E.EBUSY, name, start, len)
            basic |= v.hugetlb
        for old in list(vmas):
            if old.ctx is self and old.flags & vm_flags == vm_flags:
                continue                                  # already registered with these modes: not split
            for v in self.mm.split(max(start, old.start), min(end, old.end)):
                v.flags = (v.flags & ~M.VM_UFFD_FLAGS) | vm_flags
                v.ctx = self
        self.mm.merge()
        ioctls = int(uapi.UFFD_API_RANGE_IOCTLS_BASIC if basic else uapi.UFFD_API_RANGE_IOCTLS)
        ioctls &= self._range_ioctls()
        if not mode & R.WP:
            ioctls &= ~int(uapi.Ioctl.WRITEPROTECT)
        if not mode & R.MINOR:
            ioctls &= ~int(uapi.Ioctl.CONTINUE)
        return ioctls

    def _clear_vma(self, v, reset_wp: bool = True) -> None:
        """userfaultfd_clear_vma(): drop uffd-wp bits and markers (``reset_wp``), then the flags."""
        if reset_wp and M.userfaultfd_wp(v):
            self.mm.uffd_wp_range(v, v.start, v.end, False)
        v.flags &= ~M.VM_UFFD_FLAGS
        v.ctx = None

    def unregister(self, start: int, len: int) -> None:
        name = "UFFDIO_UNREGISTER"
        self._check(name, start, len)
        self._validate_range(name, start, len)
        if self.mm.exited:
            raise uffd_error(E.ENOMEM, name, start, len)
        end = start + len
        vmas = self.mm.vmas_in(start, end)
        if not vmas:
            raise uffd_error(E.EINVAL, name, start, len)
        # "check not compatible vmas": a VMA no mode could register (a disk file, SysV shm) is EINVAL
        if any(not M.vma_can_userfault(v, v.flags, self.wp_async) for v in vmas):
            raise uffd_error(E.EINVAL, name, start, len)
        # userfaultfd_unregister(): a VMA without a ctx is skipped, not split
        for v in self.mm.split(start, end, only=lambda v: v.ctx is self):
            if v.ctx is not self:
                continue
            if M.userfaultfd_missing(v):
                self.wake_userfault(v.start, v.end - v.start)
            self._clear_vma(v)
        self.mm.merge()
        self.rq.run()

    def wake(self, start: int, len: int) -> None:
        self._check("UFFDIO_WAKE", start, len)
        self._validate_range("UFFDIO_WAKE", start, len)
        self.wake_userfault(start, len)
        self.rq.run()

    def _mfill(self, name: str, kind: str, dst: int, src: int, length: int, mode: int, modes: int,
               dontwake: int, wp_bit: int = 0) -> int:
        if self._closed or not self._initialized:
            self._check(name, dst, length)
        mm = self.mm
        p = mm.profile
        if self.event_q or self.changing > 0:   # mmap_changing
            raise uffd_error(E.EAGAIN, name, dst, length, -E.EAGAIN if p.early_eagain_result else None)
        if kind == _COPY:
            self._validate_range(name, src, length, aligned=False)
        self._validate_range(name, dst, length)
        if p.hints and kind != M.MFILL_ATOMIC_CONTINUE and kind != M.MFILL_ATOMIC_POISON:
            modes |= HINT_MODES
        if mode & ~modes:
            raise uffd_error(E.EINVAL, name, dst, length)
        if mm.exited:
            raise uffd_error(E.ESRCH, name, dst, length)
        ret = mm.mfill_atomic(self, kind, dst, src, length, bool(mode & wp_bit), mode & HINT_MODES)
        if ret == length and not mode & dontwake and self.rq._running:
            self.wake_userfault(dst, ret)       # _finish() of a handler's whole fill, inline
            return ret
        return self._finish(name, dst, length, ret, mode & dontwake)

    def _finish(self, name, dst, length, ret, dontwake) -> int:
        if ret < 0:
            self.rq.run()
            raise uffd_error(-ret, name, dst, length, ret)
        if not dontwake:
            self.wake_userfault(dst, ret)
        rq = self.rq
        if not rq._running:                 # run() would return at once (an ioctl from a handler's service)
            rq.run()
        if ret != length:
            raise uffd_error(E.EAGAIN, name, dst, length, ret)
        return ret

    def copy(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        return self._mfill("UFFDIO_COPY", _COPY, dst, src, len, mode, _COPY_MODES, _COPY_DONTWAKE, _COPY_WP)

    def zeropage(self, start: int, len: int, mode: int = 0) -> int:
        return self._mfill("UFFDIO_ZEROPAGE", M.MFILL_ATOMIC_ZEROPAGE, start, 0, len, mode, _ZP_DONTWAKE,
                           _ZP_DONTWAKE)

    def continue_(self, start: int, len: int, mode: int = 0) -> int:
        C = uapi.ContinueMode
        modes = int(C.DONTWAKE | (C.WP if self.mm.profile.continue_mode_wp else 0))
        return self._mfill("UFFDIO_CONTINUE", M.MFILL_ATOMIC_CONTINUE, start, 0, len, mode, modes, int(C.DONTWAKE),
                           int(C.WP))

    def poison(self, start: int, len: int, mode: int = 0) -> int:
        self._check("UFFDIO_POISON", start, len)
        if not self._has_ioctl(uapi.Ioctl.POISON):
            raise uffd_error(E.EINVAL, "UFFDIO_POISON", start, len, message="no UFFDIO_POISON before 6.6")
        P = uapi.PoisonMode
        return self._mfill("UFFDIO_POISON", M.MFILL_ATOMIC_POISON, start, 0, len, mode, int(P.DONTWAKE),
                           int(P.DONTWAKE))

    def writeprotect(self, start: int, len: int, mode: int = 0) -> None:
        name = "UFFDIO_WRITEPROTECT"
        self._check(name, start, len)
        if self.mmap_changing:
            raise uffd_error(E.EAGAIN, name, start, len)
        self._validate_range(name, start, len)
        modes = _WPM_WP | _WPM_DONTWAKE | (HINT_MODES if self.mm.profile.hints else 0)
        if mode & ~modes or mode & _WPM_WP and mode & _WPM_DONTWAKE:
            raise uffd_error(E.EINVAL, name, start, len)
        if self.mm.exited:
            raise uffd_error(E.ESRCH, name, start, len)
        ret = self.mm.mwriteprotect_range(self, start, len, bool(mode & _WPM_WP), mode & HINT_MODES)
        if ret:
            self.rq.run()
            raise uffd_error(-ret, name, start, len)
        if not mode & (_WPM_WP | _WPM_DONTWAKE):
            self.wake_userfault(start, len)
        self.rq.run()

    def move(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        name = "UFFDIO_MOVE"
        self._check(name, dst, len)
        if not self._has_ioctl(uapi.Ioctl.MOVE):
            raise uffd_error(E.EINVAL, name, dst, len, message="no UFFDIO_MOVE before 6.8")
        if self.mmap_changing:
            raise uffd_error(E.EAGAIN, name, dst, len, -E.EAGAIN if self.mm.profile.early_eagain_result else None)
        Mv = uapi.MoveMode
        if mode & ~int(Mv.DONTWAKE | Mv.ALLOW_SRC_HOLES):
            raise uffd_error(E.EINVAL, name, dst, len)
        self._validate_range(name, dst, len)
        self._validate_range(name, src, len)
        if self.mm.exited:
            raise uffd_error(E.ESRCH, name, dst, len)
        ret = self.mm.move_pages(self, dst, src, len, mode)
        return self._finish(name, dst, len, ret, mode & Mv.DONTWAKE)

    # -- read / close ----------------------------------------------------------------------
    def read_msgs(self, max: int = 64) -> list[UffdMsg]:
        if self._closed:
            raise uffd_error(E.EBADF, "read")
        if not self._initialized:
            raise uffd_error(E.EINVAL, "read")
        pending = self.pending
        if len(pending) == 1 and not self.event_q and max > 0:   # one fault queued (a round trip): the loops
            w = pending.pop()                                      # below, inline
            w.read = True
            self.waiting.append(w)
            msg = w.msg
            msg.ts_ns = _monotonic_ns()
            if self._signalled:             # nothing left to read
                self._readable_changed()
            return [msg]
        out = []
        ts = _monotonic_ns()
        while pending and len(out) < max:   # userfaultfd_ctx_read(): page faults first, then events
            w = pending.pop(0)
            w.read = True
            self.waiting.append(w)
            msg = w.msg                     # made by handle_userfault() for this read alone: stamped as is
            msg.ts_ns = ts
            out.append(msg)
        completed = None
        event_q = self.event_q
        while event_q and len(out) < max:
            msg = event_q.pop(0)
            done = self.event_done.pop(id(msg), None) if self.event_done else None
            if done is not None:
                completed = (completed or []) + [done]
            out.append(_stamped(msg, ts))   # a copy stamped with the read time
        if out and (bool(pending or event_q) and not self._closed) != self._signalled:
            self._readable_changed()
        for done in completed or ():        # the waiting mm operation (fork) goes on
            done(False)
        return out

    def read_raw(self, size: int) -> int:
        """read() with a buffer of ``size`` bytes, under 32 here: userfaultfd_read_iter() takes whole messages
        only, EINVAL (also before UFFDIO_API: UFFD_STATE_WAIT_API); EBADF once closed."""
        if self._closed:
            return -E.EBADF
        if size >= UFFD_MSG_SIZE:
            raise ValueError("read_raw() is for a buffer smaller than one uffd_msg")
        return -E.EINVAL

    def _wait_readable(self, timeout: float) -> bool:
        """poll(): what the work woken meanwhile raises (the UNMAP an mremap sends once its REMAP was read) is
        queued once the run queue has run; nothing else can come while the caller waits."""
        self.rq.run()
        return bool(self.pending or self.event_q) and not self._closed

    def close(self) -> None:
        """close() of this fd.  The ctx is released (userfaultfd_release()) when its file's last reference
        goes: a fork still waiting for its FORK message holds one more (the child's copy of the fd table,
        closed by the child only once fork() has returned), and until then every fault stays blocked."""
        if self._closed:
            return
        for h in list(self._handlers):
            h.stop()
        self._close_fd()
        self.drop_file_ref()

    def _close_fd(self) -> None:
        self._closed = True
        self._update_readable()             # drained
        os.close(self._r)
        os.close(self._w)

    def drop_file_ref(self) -> None:
        self.file_refs -= 1
        if self.file_refs == 0:
            self.userfaultfd_release()

    def userfaultfd_release(self) -> None:
        self.released = True                # ctx->released: an event not queued yet is never sent
        # before "mm/userfaultfd: reset ptes when close() for wr-protected ones" (6.2; 6.1.191) the VMAs lose
        # their flags and keep their uffd-wp PTEs and markers: a hugetlb write there then faults forever
        # (hugetlb_wp() never CoWs a uffd-wp page) [measured: 6.1.176 guest, differential seed 77]
        reset_wp = self.mm.profile.release_resets_wp
        for v in list(self.mm.vmas):
            if v.ctx is self:
                self._clear_vma(v, reset_wp)
        self.mm.merge()
        dropped = [self.event_done.pop(id(m)) for m in self.event_q if id(m) in self.event_done]
        self.event_q.clear()
        for done in dropped:                # the released ctx drops its events: the waiters go on
            done(True)
        self.wake_userfault(0, None)
        self.rq.run()

    @property
    def closed(self) -> bool:
        return self._closed
