"""The native fault handler: a pthread in C that polls the uffd and a stop eventfd.

It reads messages in batches, resolves page faults by policy (zeropage, copy
from a source or a fill page, continue, unprotect, wake, or queue for a manual
resolution) and logs every message with a CLOCK_MONOTONIC timestamp into a
ring that Python drains.  The resolve path never needs the GIL, so even a
Python thread that faults *while holding the GIL* (ffi.buffer, mmap slices)
is served — a Python handler could not do that (tests/test_handler.py).

Shutdown never hangs: stop() signals the eventfd and joins the thread (cffi
releases the GIL while it waits) for at most ~3 s; a thread that does not stop
is blocked in a fault (its own: ``--policy copy --src`` inside registered memory
faults on that page, and only this thread would read the message), so stop()
resolves whatever is unread on the uffd from the caller's thread and joins
again; one still stuck after that is left behind (closing the uffd, or process
exit, ends it) and reported.  Faults still queued are woken.

The log is a barrier (:meth:`NativeHandler.events`): events that block the mm
operation that raised them (REMOVE, UNMAP, REMAP, FORK) are read before the
operation returns, but logged by the handler thread a moment later; events()
first waits until every read() begun so far is logged, so such an event is in
the log when the command that caused it returns.  A fault answered EAGAIN
(an event pending: mmap changing) is retried after the next read, not dropped.
"""
from __future__ import annotations

import errno as _E
import os

from ._native import load
from .backend import Handler
from .types import HandledEvent, HandlerPolicy, UffdMsg, decode_msg

_MISSING = {"queue": "UFFDCTL_POL_QUEUE", "zeropage": "UFFDCTL_POL_ZEROPAGE",
            "copy": "UFFDCTL_POL_COPY_SRC", "fill": "UFFDCTL_POL_COPY_FILL"}
_WP = {"queue": "UFFDCTL_POL_QUEUE", "unprotect": "UFFDCTL_POL_UNPROTECT", "wake": "UFFDCTL_POL_WAKE"}
_MINOR = {"queue": "UFFDCTL_POL_QUEUE", "continue": "UFFDCTL_POL_CONTINUE"}
_ACTION_NAMES = {"UFFDCTL_POL_QUEUE": "queue", "UFFDCTL_POL_ZEROPAGE": "zeropage",
                 "UFFDCTL_POL_COPY_SRC": "copy", "UFFDCTL_POL_COPY_FILL": "fill",
                 "UFFDCTL_POL_CONTINUE": "continue", "UFFDCTL_POL_UNPROTECT": "unprotect",
                 "UFFDCTL_POL_WAKE": "wake"}


SYNC_TIMEOUT_MS = 2000        # the barrier's bound; a handler blocked that long is stuck (see stop)
SYNC_STUCK_MS = 20            # ... and once found stuck, each later barrier waits only this long


class NativeHandler(Handler):
    def __init__(self, uffd, policy: HandlerPolicy, batch: int = 16, log_cap: int = 65536):
        self._ffi, self._lib = load()
        self.uffd = uffd
        self.policy = policy
        self._batch = batch
        self._log_cap = log_cap
        self.log_cap = log_cap
        self._h = None
        self._actions = {getattr(self._lib, k): v for k, v in _ACTION_NAMES.items()}
        self._final_stats: dict | None = None
        self.stuck = False            # the barrier timed out: the thread is blocked (in a fault of its own?)
        self.stop_result = 0          # 0, or -ETIMEDOUT if stop() had to leave the thread behind

    def start(self) -> None:
        if self._h is not None:
            return
        p, lib = self.policy, self._lib
        cfg = self._ffi.new("struct uffdctl_handler_cfg *", {
            "uffd": self.uffd.fileno(),
            "missing_policy": getattr(lib, _MISSING[p.missing]),
            "wp_policy": getattr(lib, _WP[p.wp]),
            "minor_policy": getattr(lib, _MINOR[p.minor]),
            "base": p.base, "src": p.src, "page_size": p.page_size, "copy_mode": p.copy_mode,
            "fill": p.fill, "batch": self._batch, "log_cap": self._log_cap,
            "src_len": getattr(p, "src_len", 0) or 0,
            "delay_us": int(os.environ.get("UFFDCTL_TEST_HANDLER_DELAY_US", "0") or 0)})
        err = self._ffi.new("int *")
        h = lib.uffdctl_handler_start(cfg, err)
        if h == self._ffi.NULL:
            raise OSError(-err[0], "cannot start the fault handler thread")
        self._h = h
        self._pending: list[HandledEvent] = []
        self.uffd.attach_handler(self)

    def stop(self, release: bool = True) -> None:
        """Stop the thread; with ``release`` (default) resolve every fault it queued, and any message
        still unread, so that no thread stays blocked (MISSING -> zero-filled page, WP -> un-protect,
        MINOR -> CONTINUE; already-resolved ones are just woken)."""
        if self._h is None:
            return
        self.stop_result = self._lib.uffdctl_handler_stop(self._h, 1 if release else 0)
        if self.stop_result == -_E.ETIMEDOUT:
            self.stuck = True
        self._pending = self._drain()
        self._final_stats = self._stats()
        self._lib.uffdctl_handler_free(self._h)
        self._h = None
        self.uffd.detach_handler(self)

    @property
    def running(self) -> bool:
        return self._h is not None

    def stack(self) -> tuple[int, int] | None:
        """[lo, hi) of the handler thread's stack (guard page included), None once stopped."""
        if self._h is None:
            return None
        out = self._ffi.new("uint64_t[2]")
        return (out[0], out[1]) if self._lib.uffdctl_handler_stack(self._h, out) == 0 else None

    def _drain(self) -> list[HandledEvent]:
        out = []
        buf = self._ffi.new("struct uffdctl_event[]", 256)
        while True:
            n = self._lib.uffdctl_handler_drain(self._h, buf, 256)
            for i in range(n):
                e = buf[i]
                m = e.msg
                raw = bytes(self._ffi.buffer(self._ffi.addressof(m), 32))
                msg: UffdMsg = decode_msg(raw, e.ts_ns)
                action = self._actions.get(e.action, "event") if e.action >= 0 else "event"
                out.append(HandledEvent(msg, action, e.err, e.result, e.seq))
            if n < 256:
                return out

    def sync(self) -> bool:
        """The barrier: wait until every read() begun so far has its messages logged (bounded)."""
        if self._h is None:
            return True
        r = self._lib.uffdctl_handler_sync(self._h, SYNC_STUCK_MS if self.stuck else SYNC_TIMEOUT_MS)
        self.stuck = r == -_E.ETIMEDOUT
        return not self.stuck

    def events(self) -> list[HandledEvent]:
        """Drain the log, after the barrier (see the module doc)."""
        out = getattr(self, "_pending", [])
        self._pending = []
        if self._h is not None:
            self.sync()
            out = out + self._drain()
        return out

    def _stats(self) -> dict:
        s = self._ffi.new("uint64_t[5]")
        self._lib.uffdctl_handler_stats(self._h, s)
        return {"msgs": s[0], "resolved": s[1], "errors": s[2], "dropped": s[3], "reads": s[4],
                "stuck": int(self.stuck)}

    def stats(self) -> dict:
        if self._h is None:
            return dict(self._final_stats or {"msgs": 0, "resolved": 0, "errors": 0, "dropped": 0, "reads": 0})
        return self._stats()
