"""Session commands for processes and several uffds: fork, kill, waitpid, procs, uffd, read; and the
helpers of ``api`` (raw values) and ``handler`` (copy source, unread mode).

Registered into :data:`uffdctl.session.commands.COMMANDS` on import (commands.py imports this module
last).  Addressing (``--proc``, ``--uffd``, ``child/buf:3``) is :mod:`uffdctl.session.multi`.
"""
from __future__ import annotations

import errno as E
import math
import signal as _signal
import time

from .. import uapi
from ..errors import NotModelled, UffdctlError, UsageError, uffd_error
from ..types import HandledEvent
from .commands import TOUCH_DECIDE_S, _NAME_OK, Param, command, parse_size
from .multi import DEFAULT_UFFD, SELF, UffdSlot

FORK_WAIT_S = 10.0      # fork without --thread: how long it may stay blocked (its FORK message unread)
READ_FORK_WAIT_S = 5.0  # after read() hands over a FORK message, the fork returns: wait that long for it


def _check_new_name(st, name: str, what: str) -> str:
    if not _NAME_OK.match(name) or name.startswith("__") or name == SELF:
        raise UsageError(f"bad {what} name {name!r}: letters, digits, _ . - (not starting with a digit or __, "
                         f"not 'self')")
    return name


# -- processes ------------------------------------------------------------------------------
def _forking(st) -> dict:
    return st._m().setdefault("forking", {})


def finish_forks(st, wait: float = 0.0) -> list[str]:
    """Register the forks (``fork --thread``) that have returned meanwhile."""
    done = []
    deadline = time.monotonic() + wait
    for name, (acc, parent) in list(_forking(st).items()):
        if not acc.wait(max(deadline - time.monotonic(), 0)):
            continue
        del _forking(st)[name]
        _register_child(st, name, parent, acc)
        done.append(name)
    return done


def _register_child(st, name, parent, acc):
    pend = st._m()["pending_forks"]
    try:
        proc = acc.result()
    except Exception:
        if (name, parent) in pend:
            pend.remove((name, parent))
        raise
    st.procs[name] = proc
    st.collect_events()   # the FORK messages of this fork (read before fork() returned) adopt their uffds
    if (name, parent) in pend:
        pend.remove((name, parent))
    return proc


def _proc_dict(st, name: str) -> dict:
    p = st.procs[name]
    d = p.to_dict()
    d["uffds"] = sorted(n for n, s in st.uffds.items() if s.proc == name)
    return d


@command("fork", "fork(2) the session (or --proc P): the child is a copy of its mm (regions, registrations "
         "with EVENT_FORK) that runs no Python - a native command loop the session drives. With "
         "UFFD_FEATURE_EVENT_FORK the FORK message's uffd becomes the child's NAME/u0, served by a handler.",
         "uffdctl api --features event_fork,thread_id && uffdctl fork --name child && uffdctl touch child/buf:0 --read",
         Param("--name", "the child's name (default p1, p2, ...)"),
         Param("--thread", "issue fork(2) from this session thread and return after 0.2 s (blocked=1 while its "
               "FORK message waits to be read, with handler --unread)"))
def cmd_fork(st, a):
    name = a.get("name")
    if name is None:
        name = next(f"p{i}" for i in range(1, 1 << 20) if f"p{i}" not in st.procs and f"p{i}" not in _forking(st))
    _check_new_name(st, name, "process")
    if name in st.procs or name in _forking(st):
        raise UsageError(f"process {name!r} exists")
    thread = a.get("thread")
    if thread is not None and not _NAME_OK.match(thread):
        raise UsageError(f"bad thread name {thread!r}")
    parent = st.cur_proc
    pname = st.cur_proc_name
    if parent is not None and not parent.alive:
        raise UsageError(f"process {pname} has exited")
    if parent is not None and thread is not None:
        raise UsageError("fork --thread: a child process has one thread; --thread is for the session itself")
    finish_forks(st)
    pend = st._m()["pending_forks"]
    pend.append((name, pname))
    try:
        if parent is None:
            acc = st.self_backend.fork(name, dict(st.regions_of(SELF)), thread=thread)
        else:
            acc = parent.fork_access(name)
    except BaseException:
        pend.remove((name, pname))
        raise
    if not acc.wait(TOUCH_DECIDE_S if thread else FORK_WAIT_S):
        _forking(st)[name] = (acc, pname)
        if thread is None:
            raise UffdctlError(f"fork of {name} has not returned after {FORK_WAIT_S:g} s: its FORK message is not "
                               f"being read (handler --unread?); read it with `read`, then `procs`")
        return {"name": name, "parent": pname, "thread": thread, "blocked": 1, "pid": None, "uffds": []}
    _register_child(st, name, pname, acc)
    return dict(_proc_dict(st, name), blocked=0, thread=thread)


def _proc_arg(st, a, what: str):
    name = a.get("name") or st._m()["ctx"].proc
    if not name:
        raise UsageError(f"{what}: which process? (give its name; processes: {', '.join(st.procs) or 'none'})")
    if name == SELF:
        raise UsageError(f"{what} self: that is the session itself (use session stop)")
    finish_forks(st)
    p = st.procs.get(name)
    if p is None:
        raise UsageError(f"unknown process {name!r} (processes: {', '.join(st.procs) or 'none; use fork'})")
    return p


def _parse_signal(text) -> int:
    t = str(text).strip().upper()
    if t.isdigit():
        n = int(t)
    else:
        t = t if t.startswith("SIG") else "SIG" + t
        try:
            n = int(_signal.Signals[t])
        except KeyError:
            raise UsageError(f"unknown signal {text!r} (KILL, TERM, SEGV, 9, ...)") from None
    if n not in _signal.valid_signals() or n == 0:
        raise UsageError(f"bad signal {text!r}")
    return n


@command("kill", "kill(2) a process of the session (default SIGKILL); waitpid reaps it.", "uffdctl kill child --signal TERM",
         Param("name", "the process", metavar="NAME"),
         Param("--signal", "signal name or number (default KILL)", default="KILL"))
def cmd_kill(st, a):
    sig = _parse_signal(a.get("signal") or "KILL")
    p = _proc_arg(st, a, "kill")
    p.kill(sig)
    return {"name": p.name, "pid": p.pid, "signal": sig, "signal_name": _signal.Signals(sig).name}


@command("waitpid", "waitpid(2) a process of the session: how it ended (exited/code, signaled/signal, core).",
         "uffdctl waitpid child --timeout 5",
         Param("name", "the process", metavar="NAME"),
         Param("--timeout", "seconds to wait (default 10; 0: WNOHANG)", kind="float", default=10.0),
         locked=False)
def cmd_waitpid(st, a):
    timeout = a.get("timeout")
    if not isinstance(timeout, (int, float)) or timeout < 0:
        raise UsageError(f"bad --timeout {timeout!r}")
    with st.lock:
        p = _proc_arg(st, a, "waitpid")
    r = p.wait(timeout)
    if r is None:
        return {"name": p.name, "pid": p.pid, "running": 1, "exited": 0, "signaled": 0}
    return dict(r, name=p.name, running=0)


@command("procs", "The processes of the session: self and every child, with their uffds.", "uffdctl procs")
def cmd_procs(st, a):
    finish_forks(st)
    import os
    out = [{"name": SELF, "pid": os.getpid(), "parent": None, "alive": 1, "regions": sorted(st.regions_of(SELF)),
            "uffds": sorted(n for n, s in st.uffds.items() if s.proc == SELF)}]
    out += [_proc_dict(st, n) for n in st.procs]
    out += [{"name": n, "pid": None, "parent": p, "alive": 1, "forking": 1} for n, (_a, p) in _forking(st).items()]
    return {"procs": out}


# -- several uffds ----------------------------------------------------------------------------
@command("uffd", "Open, close or list the session's uffds. open: userfaultfd(2) (or --dev: /dev/userfaultfd), "
         "no UFFDIO_API yet (give api --uffd NAME); with --proc P the uffd is opened in P, for P's mm.",
         "uffdctl uffd open --name u2 --dev && uffdctl api --uffd u2 --features thread_id",
         Param("action", "open, close or list", kind="choice", choices=("open", "close", "list"),
               metavar="open|close|list"),
         Param("target", "close: the uffd's name", metavar="[NAME]"),
         Param("--name", "open: the new uffd's name (default u1, u2, ...)"),
         Param("--dev", "open through /dev/userfaultfd (USERFAULTFD_IOC_NEW)", kind="flag"),
         Param("--user-mode-only", "UFFD_USER_MODE_ONLY", kind="flag"),
         Param("--blocking", "without O_NONBLOCK (read() then blocks)", kind="flag"),
         Param("--no-cloexec", "without O_CLOEXEC", kind="flag"))
def cmd_uffd(st, a):
    action = a.get("action")
    if action not in ("open", "close", "list"):
        raise UsageError("uffd: say open, close or list")
    if action == "list":
        if a.get("target"):
            raise UsageError("uffd list takes no name")
        return {"uffds": [s.to_dict() for s in st.uffds.values()]}
    if action == "close":
        name = a.get("target")
        if not name:
            raise UsageError("uffd close NAME")
        s = st.uffds.get(st.slot_name(name))
        if s is None:
            raise UsageError(f"unknown uffd {name!r} (uffds: {', '.join(st.uffds)})")
        st.collect_events()
        if s.handler is not None:
            s.handler.stop()
            st.collect_events()
        fd = None
        if s.uffd is not None:
            fd = s.uffd.fileno()
            s.uffd.close()      # the last reference: every fault blocked on it is woken
        if s.name == DEFAULT_UFFD:
            pol = s.policy
            st.uffds[s.name] = UffdSlot(s.name, policy=pol)
        else:
            del st.uffds[s.name]
        return {"name": s.name, "fd": fd, "closed": 1}
    # open
    if a.get("target"):
        raise UsageError("uffd open takes --name NAME, not a positional name")
    proc = st.cur_proc_name
    base = a.get("name")
    if base is None:
        base = next(f"u{i}" for i in range(1, 1 << 20) if st.slot_name(f"u{i}") not in st.uffds)
    if "/" in base:
        raise UsageError(f"bad uffd name {base!r}: give --proc P for a uffd of another process")
    _check_new_name(st, base, "uffd")
    full = st.slot_name(base)
    if full in st.uffds:
        raise UsageError(f"uffd {full!r} exists")
    flags = (0 if a.get("blocking") else uapi.O_NONBLOCK) | (0 if a.get("no_cloexec") else uapi.O_CLOEXEC) | \
        (uapi.UFFD_USER_MODE_ONLY if a.get("user_mode_only") else 0)
    via = "dev" if a.get("dev") else "syscall"
    u = st.backend.userfaultfd(flags, via=via)   # the addressed process's (a child opens it in its own mm)
    s = st.uffds[full] = UffdSlot(full, proc, uffd=u, policy=st.uffds[DEFAULT_UFFD].policy,
                                  origin="open" if proc == SELF else "child-open")
    return {"name": full, "proc": proc, "fd": u.fileno(), "via": via, "flags": flags,
            "flags_decoded": [n for n, v in (("O_NONBLOCK", uapi.O_NONBLOCK), ("O_CLOEXEC", uapi.O_CLOEXEC),
                                              ("UFFD_USER_MODE_ONLY", uapi.UFFD_USER_MODE_ONLY)) if flags & v],
            "api_done": 0, "origin": s.origin}


@command("read", "read(2) messages from a uffd by hand (its handler --unread): they go to the event log. "
         "EAGAIN when none is pending; EINVAL for a buffer under 32 bytes.",
         "uffdctl read --size 32    (the UNMAP that follows a REMAP: uffdctl read --timeout 5)",
         Param("--size", "buffer size in bytes (default 512: 16 messages)"),
         Param("--timeout", "poll(2) up to S seconds for a message first (a message raised only once an earlier "
                            "one was read, e.g. mremap's UNMAP after its REMAP); default 0: one read(2) now",
               kind="float"),
         kernel_name="read")
def cmd_read(st, a):
    size = parse_size_arg(a.get("size"))
    timeout = a.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or
                                not 0 <= timeout <= 3600):
        raise UsageError(f"bad --timeout {timeout!r}: a finite number of seconds, 0-3600")
    s = st.slot
    if s.handler is not None:
        raise UsageError(f"the handler of {s.name} is reading: say handler --unread first")
    u = s.uffd
    if u is None:
        raise UsageError(f"uffd {s.name} is not open yet")
    if size < 32:
        raw = getattr(u, "read_raw", None)
        if raw is None:
            raise NotModelled("read with a buffer under 32 bytes")
        r = raw(size)
        if r < 0:
            raise uffd_error(-r, "read", message=f"size {size}")
        raise UsageError(f"read of {size} bytes returned {r}")  # pragma: no cover (the kernel says EINVAL)
    msgs = u.wait_msgs(timeout, size // 32) if timeout else u.read_msgs(size // 32)
    if not msgs:
        raise uffd_error(E.EAGAIN, "read", message=f"no message pending on {s.name}")
    evs = st.log_messages(s, [HandledEvent(m, "read") for m in msgs])
    if any(m.event == uapi.Event.FORK for m in msgs):
        finish_forks(st, READ_FORK_WAIT_S)
    return {"uffd": s.name, "bytes": 32 * len(msgs), "messages": evs}


def parse_size_arg(v) -> int:
    if v is None:
        return 512
    n = parse_size(v, "--size")
    if n < 0:
        raise UsageError(f"bad --size {v!r}")
    return n
