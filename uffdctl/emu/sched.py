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


class RunQueue:
    def __init__(self):
        self._runnable: collections.deque = collections.deque()
        self._spinning: list = []
        self._services: list = []
        self._running = False
        self._readable: dict = {}      # uffds whose pollable pipe is brought up to date when the run ends

    def defer_readable(self, uffd) -> None:
        """Inside run(): bring ``uffd``'s pollable state up to date when the run ends, not at each message
        (no one can poll it before: emulated threads and handlers run synchronously, inside run())."""
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
        spinning, self._spinning = self._spinning, []
        self._runnable.extend(spinning)                # state may have changed: let them fault again
        try:
            while True:
                while self._runnable:
                    self._runnable.popleft().run()
                if not any([s.service() for s in list(self._services)]):
                    break
        finally:
            self._running = False
            if self._readable:
                sync, self._readable = self._readable, {}
                for u in sync.values():
                    u._update_readable()
