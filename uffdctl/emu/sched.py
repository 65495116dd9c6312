"""The emulated tasks' run queue: who is runnable, who waits on what, who wakes them (kernel/sched/wait.c
in miniature, below both the userfaultfd ctx and the backend adapter).

Emulated threads run synchronously.  A task (an access in progress, ``backend.EmuAccess``) is
*runnable* (queued here), *blocked* on one wait-queue entry (``task.waiter``: the ctx's
``struct userfaultfd_wait_queue``; only :meth:`RunQueue.wake_up` of that very entry makes it runnable
again) or *spinning* (a fault that returns without progress, forever: it runs again whenever anything
may have changed).  Services (the fault-handler threads) run whenever no task is runnable, for as long
as one of them finds work: the loop a kernel thread runs between faults and handler wake-ups.

A task has ``waiter``, ``woken()`` (called as it is handed back: the fault retries) and ``run()`` (runs
until it finishes, blocks or spins); a service has ``service() -> bool`` (True: it did some work).
"""
from __future__ import annotations

import collections
import gc
import threading


class RunQueue:
    def __init__(self):
        self._runnable: collections.deque = collections.deque()
        self._spinning: list = []
        self._services: list = []
        self._running = False
        self.current = None        # the SyscallTask whose system call runs now (its events wait: see below)
        self._readable: dict = {}      # uffds whose pollable pipe is brought up to date when the run ends

    def defer_readable(self, uffd) -> None:
        """Inside run(): bring ``uffd``'s pollable state up to date when the run ends, not at each message
        (no one can poll it before: emulated threads, handlers and system calls run inside run(), and the
        caller only once it returns)."""
        self._readable[id(uffd)] = uffd

    def enqueue(self, task) -> None:
        """A new or resumed task becomes runnable."""
        self._runnable.append(task)

    def spin(self, task) -> None:
        """The task made no progress and will fault again: rerun it the next time the queue runs."""
        self._spinning.append(task)

    def wake_up(self, waiter) -> None:
        """Wake the task blocked on ``waiter`` (a no-op if it no longer waits on it)."""
        task = waiter.access
        if task.waiter is waiter:
            task.waiter = None
            task.woken()
            self._runnable.append(task)

    def add_service(self, service) -> None:
        self._services.append(service)

    def remove_service(self, service) -> None:
        self._services.remove(service)

    def run(self) -> None:
        """Run until nothing is runnable and no service finds work (re-entrant calls return at once)."""
        if self._running:
            return
        self._running = True
        # The cyclic GC is paused for the run, as mm/userfaultfd.py pauses it for a ranged fill: what a run
        # makes (a message, a waiter, PTEs, folios, a log entry per fault) stays reachable, and the
        # collections its allocations trigger would traverse the heap to free nothing (4% of a fault round
        # trip's instructions).  Garbage a run leaves is collected once it returns.
        gc_on = gc.isenabled()
        if gc_on:
            gc.disable()
        spinning, self._spinning = self._spinning, []
        self._runnable.extend(spinning)                # state may have changed: let them fault again
        runnable, services = self._runnable, self._services
        try:
            while True:
                while runnable:
                    runnable.popleft().run()
                if len(services) == 1:         # one handler (the fault round trip): no copy, no list
                    if not services[0].service():
                        break
                elif not any([s.service() for s in list(services)]):
                    break
        finally:
            self._running = False
            if gc_on:
                gc.enable()
            if self._readable:
                sync, self._readable = self._readable, {}
                for u in sync.values():
                    u._update_readable()


class _Cancelled(BaseException):
    """A parked system call whose process goes away: its stack unwinds (never a result)."""


class SyscallTask:
    """A system call issued by an emulated thread that may sleep in the kernel: in
    userfaultfd_event_wait_completion() until its non-cooperative event (REMOVE, UNMAP, REMAP) is read, or in a
    fault it takes (GUP of mlock) until the fault is resolved.  The call's code is the model's own, run on a
    stack of its own (an OS thread) that only ever runs while the run queue hands it the CPU: it and the
    caller strictly alternate, so the model is never touched by two at once.

    ``park(cond)`` (from the call's code) sleeps until ``cond()`` holds: the task spins on the run queue,
    rechecked whenever the queue runs, and ``wake()`` makes it runnable at once.  The blocking events the call
    raises are held back (``deferred``, mmap_changing raised, as userfaultfd_unmap_prep() /
    mremap_userfaultfd_prep() do) and sent one by one where the kernel sends them: ``send_events()`` -- each
    queued, then waited for until it is read (or dropped by a close), before the next is queued."""

    def __init__(self, rq: RunQueue, fn, on_done=None):
        self._rq, self._fn, self._on_done = rq, fn, on_done
        self.waiter = None               # never on a userfault wait queue itself
        self.deferred: list = []         # (ctx, msg) held back until the call's wait point
        self.done = False
        self.value = None
        self.exc: BaseException | None = None
        self._cond = None
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._cancelled = False
        self._sent = None                # (ctx, msg) queued and waited for, not read yet

    # -- the run queue's side ------------------------------------------------------------------
    def woken(self) -> None:
        pass

    def run(self) -> None:
        """Give the call the CPU until it finishes or parks (a parked call whose condition does not hold
        spins: it is rechecked the next time the queue runs)."""
        if self.done:
            return
        if self._cond is not None:
            if not self._cond():
                self._rq.spin(self)
                return
            self._cond = None
        prev, self._rq.current = self._rq.current, self
        try:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="uffdctl-emu-syscall", daemon=True)
                self._thread.start()
            self._go.release()
            self._back.acquire()
        finally:
            self._rq.current = prev
        if not self.done:
            self._rq.spin(self)

    def wake(self) -> None:
        if not self.done:
            self._rq.enqueue(self)

    def fatal_signal(self) -> None:
        """The task is killed while its call sleeps: userfaultfd_event_wait_completion() gives up on a fatal
        signal (the message it waits on, not read yet, is taken back), the events still held back are never
        sent (their mmap_changing dropped), and the call's stack unwinds."""
        if self.done:
            return
        if self._sent is not None:
            ctx, msg = self._sent
            ctx.drop_event(lambda m, msg=msg: m is msg)
        for ctx, _msg in self.deferred:
            ctx.changing -= 1
        self.deferred.clear()
        self.cancel()

    def cancel(self) -> None:
        """The process goes away with the call parked: unwind its stack (no result)."""
        if self._thread is not None and not self.done:
            self._cancelled = True
            self._go.release()
            self._back.acquire()

    # -- the call's side (on its own stack) ------------------------------------------------------
    def _main(self) -> None:
        self._go.acquire()
        try:
            try:
                self.value = self._fn()
            except _Cancelled:
                raise
            except BaseException as e:   # handed to whoever reads the result
                self.exc = e
            self.send_events()           # userfaultfd_unmap_complete() / mremap_userfaultfd_complete()
        except _Cancelled:
            self.exc = RuntimeError("the emulated process went away while the system call slept")
        self.done = True
        if self._on_done is not None and not self._cancelled:
            self._on_done(self)
        self._back.release()

    def park(self, cond) -> None:
        """Sleep until ``cond()`` holds (called from the call's own code only)."""
        if cond():
            return
        self._cond = cond
        self._back.release()
        self._go.acquire()
        if self._cancelled:
            raise _Cancelled()

    def send_events(self) -> None:
        """userfaultfd_event_wait_completion() for each event held back, in order."""
        while self.deferred:
            ctx, msg = self.deferred.pop(0)
            ctx.changing -= 1
            if ctx.released:            # userfaultfd_event_wait_completion(): a released ctx takes none
                continue
            read = []
            ctx.queue_event(msg, on_read=lambda released, read=read: (read.append(released), self.wake()))
            self._sent = (ctx, msg)
            self.park(lambda read=read: bool(read))
            self._sent = None
