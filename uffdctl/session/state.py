"""The state of one session: what a daemon (or one ``uffdctl run``) owns.

One backend (one address space), one userfaultfd (opened and UFFDIO_API'd on
first need, or by the ``api`` command), the user's regions by name, the fault
handler (policy ``queue`` by default: faults wait for the user), named threads
that touch memory, the touches they made, and the message log with ``seq``
numbers.  Command functions (``uffdctl.session.commands``) take this object;
neither module imports click or cffi at import time.
"""
from __future__ import annotations

import errno as _errno
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import uapi
from ..backend import Access, Backend
from ..errors import UsageError
from ..registry import open_backend
from ..types import HandlerPolicy, Region
from .multi import MultiState

# Features asked for when the uffd is opened implicitly: THREAD_ID, so every
# fault message names the thread that is blocked (``events`` shows it).
DEFAULT_FEATURES = int(uapi.Feature.THREAD_ID)

# The session's message log keeps the newest EVENTS_KEPT entries (the handler's own ring is bounded too).
EVENTS_KEPT = 65536

# Faults wait for the user by default (copy/zeropage/continue/wake/writeprotect --off).
DEFAULT_POLICY = dict(missing="queue", wp="queue", minor="queue")


@dataclass
class Touch:
    """One access made by ``touch``."""

    id: int
    thread: str
    start: int
    len: int
    write: bool
    access: Access
    tid: int = 0
    first_seq: int = 0       # the first event seq that can belong to this touch
    page_size: int = uapi.PAGE_SIZE
    started_ns: int = field(default_factory=time.monotonic_ns)
    proc: str = "self"          # the process the touch runs in (uffdctl.session.multi)
    kind: str = "touch"         # or the system call issued with --thread (madvise, fork): see proc_commands
    finish: Any = None          # --thread: the command's bookkeeping, run once the call returned (finish_op)
    outcome: dict | None = None  # ... and what it returned: the command's own result

    def to_dict(self) -> dict:
        d = {"touch": self.id, "proc": self.proc, "thread": self.thread, "tid": self.tid, "start": self.start,
             "len": self.len,
             "write": int(self.write), "finished": int(self.access.done), "blocked": int(not self.access.done)}
        if self.kind != "touch":
            d["op"] = self.kind
        if self.access.done:
            try:
                r = self.access.result()
            except Exception as e:  # handed back from the thread
                d.update(error=str(e))
                if isinstance(getattr(e, "errno", None), int):
                    d.update(errno=e.errno, errno_name=_errno.errorcode.get(e.errno, str(e.errno)))
            else:
                if self.kind != "touch":
                    d["ret"] = r if isinstance(r, int) else 0
                    if self.outcome:
                        d.update({k: v for k, v in self.outcome.items() if k not in d})
                    return d
                d.update(minflt=r.minflt, majflt=r.majflt, sigbus=int(r.sigbus), si_code=r.si_code,
                         fault_addr=r.fault_addr, ns=r.ns)
                if not self.write and r.data is not None:   # mmops: what the read saw, one byte per page
                    import zlib
                    data = per_page(r.data, self.len)
                    d.update(data=data.hex(), crc32=zlib.crc32(data))
                if hasattr(r, "sigsegv"):
                    d["sigsegv"] = int(r.sigsegv)
        return d


# -- addresses as REGION:PAGE (mmops) ---------------------------------------------------------------
def locate(st: "SessionState", addr: int, end: bool = False) -> str | None:
    """``buf:3`` (or ``buf:3+0x10``) for an address inside a region; ``end``: an exclusive end, so the
    end of a region is ``buf:N`` rather than page 0 of the region after it."""
    regs = sorted(st.regions.values(), key=lambda r: r.len)    # the innermost (an overlay) first
    if end:
        for r in regs:
            if r.addr < addr <= r.end:
                off = addr - r.addr
                return f"{r.name}:{off // r.page_size}" + (f"+{off % r.page_size:#x}" if off % r.page_size else "")
    for r in regs:
        if r.addr <= addr < r.end:
            off = addr - r.addr
            return f"{r.name}:{off // r.page_size}" + (f"+{off % r.page_size:#x}" if off % r.page_size else "")
    return None


EVENT_ADDR_FIELDS = ("address", "start", "end", "from", "to")


def locate_event(st: "SessionState", d: dict) -> dict:
    """``{"start": "buf:1", "end": "buf:4", ...}`` for a logged message, against the regions as they are
    now (called when the message enters the log)."""
    out = {}
    for k in EVENT_ADDR_FIELDS:
        v = d.get(k)
        if isinstance(v, int) and v:
            loc = locate(st, v, end=(k == "end"))
            if loc:
                out[k] = loc
    return out


def per_page(data: bytes | None, length: int) -> bytes | None:
    """The byte a strided touch read from each page (the kernel hands back the whole buffer, the
    emulator the bytes it read)."""
    if data is None:
        return None
    if len(data) == length:
        return bytes(data[::uapi.PAGE_SIZE])
    return bytes(data)


class SessionState(MultiState):
    """Everything one session owns.  ``lock`` serialises commands (touch waits outside it)."""

    def __init__(self, backend: "str | Backend" = "auto", profile: str | None = None, name: str = "run",
                 soft_dirty: bool | None = None, user_mode_only: bool = False):
        """``backend``: a name (opened by uffdctl.registry.open_backend on first need, with ``profile`` and
        ``soft_dirty`` for the emulator) or a ready Backend (e.g. an emulator with switches)."""
        self.name = name
        ready = backend if isinstance(backend, Backend) else None
        self.backend_name = ready.name if ready else backend
        self.profile = profile
        self.soft_dirty = soft_dirty
        self.kernel_opts = {"user_mode_only": True} if user_mode_only else {}
        self.lock = threading.RLock()
        self.started = time.time()
        self._backend: Backend | None = ready
        self.uffd = None
        self.api_result = None
        self.requested_features: int | None = None
        self.handler = None
        self.policy = HandlerPolicy(**DEFAULT_POLICY)
        self.regions: dict[str, Region] = {}
        self.registrations: dict[tuple[int, int], int] = {}   # (start, len) -> mode
        self.touches: dict[int, Touch] = {}
        self._pending: dict[int, Touch] = {}            # touches not seen finished yet (see pending_touches)
        self._fault_sums: dict[tuple[str, str], tuple[int, int]] = {}   # (thread, proc) -> finished touches' faults
        self._touch_ids = itertools.count(1)
        self.events: list[dict] = []
        self.events_dropped = 0        # entries no longer in the log (see collect_events)
        self.zero_pfn: int | None = None
        self.thread_names: list[str] = []
        self._scratch: Region | None = None
        self.last_result: dict | None = None
        self.closed = False

    # -- the backend and the uffd ---------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.backend_name, profile=self.profile, soft_dirty=self.soft_dirty,
                                         **self.kernel_opts)
        return self.proc_view(self._backend) or self._backend   # a child's mm while addressing one

    def open(self) -> "SessionState":
        """Open the backend now (a daemon fails fast, before it says it is ready)."""
        _ = self.backend
        return self

    def backend_info(self) -> dict:
        """Which backend runs this session and why: the opener's selection (requested, reason, fallback) and
        what the backend says it is (release, profile, soft_dirty).  Shown by run -j, session start, status."""
        b = self.backend
        d = b.describe()
        sel = b.selection.to_dict() if b.selection is not None else \
            {"requested": b.name, "backend": b.name, "reason": "given", "fallback": 0}
        sel.update(release=d.get("release"), profile=d.get("profile"), soft_dirty=int(bool(d.get("soft_dirty"))),
                   soft_dirty_reason=d.get("soft_dirty_reason"))
        if "user_mode_only" in d:
            sel.update(user_mode_only=d["user_mode_only"], user_mode_only_reason=d.get("user_mode_only_reason"))
        return sel

    def notice(self) -> str | None:
        """The one stderr line to print when ``auto`` did not give the kernel, or when the kernel backend
        fell back to UFFD_USER_MODE_ONLY uffds by itself (None otherwise)."""
        b = self.backend
        line = b.selection.notice() if b.selection is not None else None
        d = b.describe()
        if line is None and d.get("user_mode_only") and d.get("user_mode_only_reason") not in (None, "asked for"):
            line = f"uffdctl: the kernel backend opens uffds with UFFD_USER_MODE_ONLY: {d['user_mode_only_reason']}"
        return line

    def get_uffd(self, features: int | None = None):
        """The session's uffd, opened and UFFDIO_API'd (with ``features``) on first need."""
        if self.uffd is None:
            u = self.backend.userfaultfd()
            self.requested_features = DEFAULT_FEATURES if features is None else features
            try:
                self.api_result = u.api(self.requested_features)
            except Exception:
                u.close()
                raise
            self.uffd = u
            self.start_handler()
        return self.uffd

    def start_handler(self, policy: HandlerPolicy | None = None) -> None:
        if policy is not None:
            self.policy = policy
        if self.uffd is None or self.slot.unread:
            return  # starts with the uffd (or when the handler reads again: handler --read)
        if self.handler is not None:
            self.collect_events()
            self.handler.stop()   # queued faults are woken: they fault again into the new handler
            self.collect_events()
            self.slot.seen = 0     # the new handler's stream starts afresh
        self.handler = self.backend.fault_handler(self.uffd, self.policy)
        self.handler.start()

    def collect_events(self) -> list[dict]:
        """Move what the handler logged into the session's event log.

        ``seq`` is the message's position in the stream the session's handlers read (1-based), so it never
        changes.  When the handler's bounded log overwrote entries before they were collected (a fault
        storm under a resolving policy), their seq numbers are skipped and one ``dropped`` entry says how
        many and why; the faults themselves were resolved by the policy all the same.  The session keeps the
        newest EVENTS_KEPT entries.
        With several uffds (uffdctl.session.multi) every handler's stream is followed on its own, and seq
        numbers the messages of all of them in the order they were collected."""
        new = self.collect_all_events()   # every uffd's handler, with uffd/proc; each drain a barrier
        for d in new:
            at = self.locate_event(d)
            if at:
                d["at"] = at   # region:page of each address field, as the regions were when it was logged
        self.events.extend(new)
        if len(self.events) > EVENTS_KEPT:
            cut = len(self.events) - EVENTS_KEPT
            self.events_dropped += sum(e.get("count", 1) if e["event"] == "dropped" else 1
                                       for e in self.events[:cut])
            del self.events[:cut]
        return new

    # -- regions --------------------------------------------------------------------
    def locate(self, addr: int, end: bool = False) -> str | None:
        """``buf:3`` for an address inside a region (``end``: an exclusive end, ``buf:N`` at its end)."""
        return locate(self, addr, end)

    def locate_event(self, d: dict) -> dict:
        return locate_event(self, d)

    def region_at(self, addr: int) -> Region | None:
        """The region containing addr; the innermost one where a MAP_FIXED mapping overlays a region."""
        best = None
        for r in self.regions.values():
            if r.addr <= addr < r.end and (best is None or r.len < best.len):
                best = r
        return best

    def scratch(self, len: int) -> Region:
        """An unregistered anon buffer (COPY's src, probes): never one of the user's regions."""
        if self._scratch is None or self._scratch.len < len:
            if self._scratch is not None:
                self.self_backend.munmap(self._scratch.addr, self._scratch.len)
            size = max(len, 16 * uapi.PAGE_SIZE)
            self._scratch = self.self_backend.mmap(size, "anon", name=f"__scratch{os.getpid()}_{size}")
        return self._scratch

    def learn_zero_pfn(self) -> int:
        """PFN of the zero page: read-fault a fresh anon page once, read its pagemap PFN."""
        if self.zero_pfn is None:
            b = self.backend
            r = b.mmap(uapi.PAGE_SIZE, "anon", name="__zero_pfn_probe")
            try:
                b.read(r.addr, 1)
                self.zero_pfn = b.pagemap(r.addr, 1)[0] & uapi.PM_PFRAME_MASK
            finally:
                b.munmap(r.addr, r.len)
        return self.zero_pfn

    # -- threads --------------------------------------------------------------------
    def pending_touches(self) -> list[Touch]:
        """The touches still in progress. A touch found finished is folded into its thread's fault sums once
        and dropped from the scan, so a script of 10,000 touches costs what is in flight, not what was made."""
        live = []
        for tid, t in list(self._pending.items()):
            if not t.access.done:
                live.append(t)
                continue
            del self._pending[tid]
            if t.kind != "touch":     # a system call issued with --thread: no access, no fault counts
                continue
            try:
                r = t.access.result()
            except Exception:
                continue
            key = (t.thread, t.proc)
            mn, mj = self._fault_sums.get(key, (0, 0))
            self._fault_sums[key] = (mn + r.minflt, mj + r.majflt)
        return live

    def busy_touch(self, thread: str) -> Touch | None:
        for t in self.pending_touches():
            if t.thread == thread and t.proc == self.cur_proc_name:
                return t
        return None

    def new_touch(self, thread: str, start: int, len: int, write: bool, fill: int) -> Touch:
        th = self.thread(thread)
        self.collect_events()       # what is logged so far belongs to earlier accesses
        first = (self.events[-1]["seq"] + 1) if self.events else 1
        reg = self.region_at(start)
        acc = th.access(start, len, write, fill=fill, stride=uapi.PAGE_SIZE, want_data=not write)
        t = Touch(next(self._touch_ids), thread, start, len, write, acc, th.tid, first,
                  reg.page_size if reg else uapi.PAGE_SIZE, proc=self.cur_proc_name)
        self.touches[t.id] = self._pending[t.id] = t
        return t

    def new_op(self, thread: str, start: int, len: int, access, kind: str) -> Touch:
        """A system call issued from a session thread (``--thread``), waited for like a touch."""
        first = (self.events[-1]["seq"] + 1) if self.events else 1
        t = Touch(next(self._touch_ids), thread, start, len, False, access, 0, first, proc=self.cur_proc_name,
                  kind=kind)
        self.touches[t.id] = self._pending[t.id] = t
        return t

    def thread(self, name: str):
        """The named thread (created on first use; ``main`` is the default toucher)."""
        t = self.backend.thread(name)
        if name not in self.thread_names:
            self.thread_names.append(name)
        return t

    def access_faults(self, thread: str) -> tuple[int, int]:
        """(minflt, majflt) summed over the thread's finished touches: the kernel's count around each
        access (getrusage RUSAGE_THREAD), free of the thread's own bookkeeping faults."""
        self.pending_touches()
        return self._fault_sums.get((thread, self.cur_proc_name), (0, 0))

    # -- shutdown -------------------------------------------------------------------
    def close(self) -> None:
        """Release everything: closing the uffd wakes every blocked fault, then threads stop."""
        with self.lock:   # not in the middle of a command (touch waits outside the lock)
            if self.closed:
                return
            self.closed = True
            if self._backend is not None:
                try:
                    self.collect_events()
                except Exception:
                    pass
                self.close_procs()
                self._backend.close()
