"""Several uffds and several processes in one session.

:class:`MultiState` is mixed into :class:`~uffdctl.session.state.SessionState`.
Every uffd of the session is a named :class:`UffdSlot` (``u0`` is the one
opened on first need, ``u2`` one made by ``uffd open``, ``child/u0`` the one a
FORK message handed over for process ``child``); every process other than the
session itself is a :class:`~uffdctl.process.Process` by name.

A command addresses a process and a uffd through a per-thread *addressing
context* (``--proc``, ``--uffd``, or a range ``child/buf:3``), entered by
:func:`~uffdctl.session.commands.execute`.  Inside it the session's familiar
attributes mean "of the addressed process / uffd": ``st.regions``,
``st.thread_names``, ``st.uffd``, ``st.handler``, ``st.policy``,
``st.registrations``, ``st.api_result``, ``st.requested_features``; and
``st.backend`` is a view that sends the mm operations and the /proc reads to the
child while everything else (handlers, the uffd ioctls) stays with the daemon,
which owns every uffd.  So each command is written once, for any process.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import UffdctlError, UsageError

SELF = "self"
DEFAULT_UFFD = "u0"


def _usage(msg: str) -> Exception:
    return UsageError(msg)


@dataclass
class UffdSlot:
    """One named uffd of the session and what hangs off it."""

    name: str                      # "u0", "u2", "child/u0"
    proc: str = SELF               # the process whose mm it serves
    uffd: Any = None               # None until opened (u0: on first need)
    handler: Any = None
    policy: Any = None
    requested_features: int | None = None
    api_result: Any = None
    registrations: dict = field(default_factory=dict)
    origin: str = "implicit"       # implicit | open | fork | child-open
    unread: bool = False           # handler --unread: messages stay in the uffd
    seen: int = 0                  # the handler's last stream position collected (its ring may overwrite)

    def to_dict(self) -> dict:
        u = self.uffd
        return {"name": self.name, "proc": self.proc, "fd": None if u is None or u.closed else u.fileno(),
                "via": getattr(u, "via", None), "flags": getattr(u, "flags", None), "origin": self.origin,
                "api_done": int(self.api_result is not None), "features": self.requested_features,
                "handler": None if self.handler is None else ("unread" if self.unread else "reading"),
                "registrations": len(self.registrations)}


class MmView:
    """``st.backend`` while a command addresses a child: the child's mm operations and /proc views, the
    backend's own identity and daemon-side machinery (handlers, adoption of FORK uffds).  Anything else is
    refused (Unsupported) rather than silently answered from the session's own mm."""

    _CHILD = frozenset(("mmap", "munmap", "madvise", "mprotect", "mremap", "thread", "read", "write", "pagemap",
                        "pagemap_array", "pagemap_scan", "clear_refs", "smaps_private_dirty", "vma_bounds",
                        "pte_bits", "userfaultfd", "alias", "fork"))
    _BACKEND = frozenset(("name", "describe", "fault_handler", "adopt_uffd", "hint_modes", "soft_dirty", "profile",
                          "tlb_flush_count", "selection",
                          # mmops: daemon-side (the advices the backend models; the per-CPU LRU batches,
                          # which are the machine's).  A child's region fds are not the daemon's: dup_fd and
                          # close_fd are refused, and the bookkeeping keeps the fd it has
                          "check_advice", "MODELLED_ADVICE", "lru_drain"))

    def __init__(self, proc, backend):
        self._proc, self._backend = proc, backend

    def __getattr__(self, k):
        if k in self._CHILD:
            try:
                return getattr(self._proc, k)
            except AttributeError:
                pass
        elif k in self._BACKEND or k.startswith("_"):
            return getattr(self._backend, k)
        from ..errors import Unsupported
        raise Unsupported(f"{k} in a child process is not implemented (process {self._proc.name})")


class _Ctx(threading.local):
    active = 0
    proc: str | None = None
    uffd: str | None = None


class MultiState:
    """The addressing context and the tables of uffds and processes (mixed into SessionState)."""

    # created on first use, so SessionState.__init__ may assign the routed attributes in any order
    def _m(self) -> dict:
        d = self.__dict__.get("_multi")
        if d is None:
            d = self.__dict__["_multi"] = {"ctx": _Ctx(), "slots": {DEFAULT_UFFD: UffdSlot(DEFAULT_UFFD)},
                                           "procs": {}, "regions": {SELF: {}}, "threads": {SELF: []},
                                           "pending_forks": [], "proc_ids": 0}
        return d

    @property
    def uffds(self) -> dict[str, UffdSlot]:
        return self._m()["slots"]

    @property
    def procs(self) -> dict:
        return self._m()["procs"]

    # -- the addressing context ----------------------------------------------------------
    @contextlib.contextmanager
    def addressing(self, proc: str | None = None, uffd: str | None = None):
        ctx = self._m()["ctx"]
        saved = (ctx.active, ctx.proc, ctx.uffd)
        if proc is not None:
            self._check_proc(proc)
        ctx.active, ctx.proc, ctx.uffd = ctx.active + 1, (None if proc == SELF else proc), uffd
        try:
            yield ctx
        finally:
            ctx.active, ctx.proc, ctx.uffd = saved

    def addressing_ctx(self):
        """The current context: ``.proc`` (None: the session itself) and ``.uffd`` (None: the default)."""
        return self._m()["ctx"]

    def _check_proc(self, name: str):
        if name != SELF and name not in self.procs:
            raise _usage(f"unknown process {name!r} (processes: {', '.join([SELF] + list(self.procs))})")

    def address_proc(self, name: str) -> None:
        """A range named its process (``child/buf:3``): address it for the rest of the command."""
        ctx = self._m()["ctx"]
        self._check_proc(name)
        want = None if name == SELF else name
        if ctx.proc is not None and ctx.proc != want:
            raise _usage(f"the range names process {name!r} but the command addresses {ctx.proc!r}")
        if ctx.active:
            ctx.proc = want

    @property
    def cur_proc_name(self) -> str:
        return self._m()["ctx"].proc or SELF

    @property
    def cur_proc(self):
        """The addressed Process, or None for the session itself."""
        name = self._m()["ctx"].proc
        if name is None:
            return None
        p = self.procs.get(name)
        if p is None:
            raise _usage(f"unknown process {name!r}")
        return p

    @property
    def self_backend(self):
        """The backend itself (the session's own mm), whatever process is addressed."""
        ctx = self._m()["ctx"]
        saved, ctx.proc = ctx.proc, None
        try:
            return self.backend
        finally:
            ctx.proc = saved

    def proc_view(self, real):
        p = self.cur_proc
        return None if p is None else MmView(p, real)

    # -- uffd slots ----------------------------------------------------------------------------
    def slot_name(self, uffd: str | None = None, proc: str | None = None) -> str:
        ctx = self._m()["ctx"]
        uffd = uffd if uffd is not None else ctx.uffd
        proc = proc if proc is not None else self.cur_proc_name
        if uffd is None:
            return DEFAULT_UFFD if proc == SELF else f"{proc}/{DEFAULT_UFFD}"
        if "/" in uffd or proc == SELF:
            return uffd
        return f"{proc}/{uffd}"

    @property
    def slot(self) -> UffdSlot:
        name = self.slot_name()
        s = self.uffds.get(name)
        if s is None:
            explicit = self._m()["ctx"].uffd is not None
            if explicit:
                raise _usage(f"unknown uffd {name!r} (uffds: {', '.join(self.uffds)}; open one with uffd open)")
            proc = name.rsplit("/", 1)[0] if "/" in name else SELF
            s = self.uffds[name] = UffdSlot(name, proc, origin="implicit" if proc == SELF else "child-open")
            s.policy = self.uffds[DEFAULT_UFFD].policy
        return s

    def _slot_attr(name):
        def get(self):
            return getattr(self.slot, name)

        def set_(self, v):
            setattr(self.slot, name, v)
        return property(get, set_)

    uffd = _slot_attr("uffd")
    handler = _slot_attr("handler")
    policy = _slot_attr("policy")
    requested_features = _slot_attr("requested_features")
    api_result = _slot_attr("api_result")
    registrations = _slot_attr("registrations")
    del _slot_attr

    # -- per-process tables -------------------------------------------------------------------
    @property
    def regions(self) -> dict:
        p = self.cur_proc
        return self._m()["regions"][SELF] if p is None else p.regions

    @regions.setter
    def regions(self, v):
        self._m()["regions"][SELF] = v

    @property
    def thread_names(self) -> list:
        p = self.cur_proc
        return self._m()["threads"][SELF] if p is None else ["main"]

    @thread_names.setter
    def thread_names(self, v):
        self._m()["threads"][SELF] = v

    def regions_of(self, proc: str) -> dict:
        return self._m()["regions"][SELF] if proc == SELF else self.procs[proc].regions

    # -- events of every uffd ---------------------------------------------------------------------
    def collect_all_events(self) -> list[dict]:
        """Drain every handler (each drain is a barrier: see handler.py) into dicts with ``uffd``/``proc``."""
        new = []
        for s in list(self.uffds.values()):
            if s.handler is not None:
                new += self.log_messages(s, s.handler.events(), append=False)
        return new

    def _next_seq(self, n: int = 1) -> int:
        m = self._m()
        m["seq"] = m.get("seq", 0) + n
        return m["seq"]

    def log_messages(self, s: UffdSlot, handled, append: bool = True) -> list[dict]:
        """Event dicts for messages read from slot ``s`` (region-relative, FORK uffds adopted).  A gap in the
        handler's stream positions (its bounded ring overwrote entries before they were collected) becomes
        one ``dropped`` entry saying how many and why."""
        from .. import uapi
        regions = self.regions_of(s.proc) if (s.proc == SELF or s.proc in self.procs) else {}
        out = []
        for ev in handled:
            pos = getattr(ev, "seq", 0) or 0
            if pos:
                if pos > s.seen + 1:
                    count = pos - s.seen - 1
                    last = self._next_seq(count)
                    cap = getattr(s.handler, "log_cap", None)
                    p = s.policy
                    out.append({"seq": last, "event": "dropped", "first_seq": last - count + 1, "last_seq": last,
                                "count": count, "uffd": s.name, "proc": s.proc,
                                "reason": f"the fault handler's log keeps the newest {cap} messages: these were "
                                          f"overwritten before they were collected (the policy "
                                          f"{p.missing}/{p.wp}/{p.minor} resolved their faults all the same)"})
                s.seen = pos
            d = {"seq": self._next_seq()}
            d.update(ev.to_dict())
            d["uffd"], d["proc"] = s.name, s.proc
            if "address" in d:
                for r in regions.values():
                    if r.addr <= d["address"] < r.end:
                        d["region"] = r.name
                        d["page"] = (d["address"] - r.addr) // r.page_size
                        break
            if ev.msg.event == uapi.Event.FORK:
                self._adopt_fork(s, ev.msg.ufd, d)
            out.append(d)
        if append:      # read by hand (``read``): region:page of each address field, as the regions are now
            for d in out:
                at = self.locate_event(d) if hasattr(self, "locate_event") else None
                if at:
                    d["at"] = at
            self.events.extend(out)
        return out

    def _adopt_fork(self, parent: UffdSlot, ufd: int, d: dict) -> None:
        """The FORK message's ``ufd`` (installed in our fd table at read time) becomes the child's uffd."""
        pend = self._m()["pending_forks"]
        child = next((c for c, p in pend if p == parent.proc), None)
        if child is None:
            import os
            os.close(ufd)   # not a fork of ours: do not keep the child's mm pinned
            d.update(child=None, ufd_name=None)
            return
        base = parent.name.rsplit("/", 1)[-1]
        name = f"{child}/{base}"
        u = self._backend.adopt_uffd(ufd)
        s = self.uffds[name] = UffdSlot(name, child, uffd=u, policy=parent.policy,
                                        requested_features=parent.requested_features,
                                        api_result=parent.api_result, origin="fork",
                                        registrations=dict(parent.registrations), unread=parent.unread)
        if not parent.unread:
            s.handler = self._backend.fault_handler(u, s.policy)
            s.handler.start()
        d.update(child=child, ufd_name=name)

    # -- shutdown ---------------------------------------------------------------------------------
    def close_procs(self) -> None:
        """Kill and reap every child (bounded), children first."""
        for p in reversed(list(self.procs.values())):
            try:
                p.close()
            except (OSError, UffdctlError):
                pass
