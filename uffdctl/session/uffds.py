"""The helpers behind ``api`` (raw values), ``handler`` (the copy source, the unread mode) and ``--thread``
on system calls that may block until their event is read.  Imports nothing of the command table (which
calls in here), so the table's modules stay free of circles."""
from __future__ import annotations

import errno as E
import re
import struct

from .. import uapi
from ..errors import NotModelled, UsageError, uffd_error
from ..types import UffdioApi
from .multi import SELF

NAME_OK = re.compile(r"^[A-Za-z_][\w.-]*$")


# -- UFFDIO_API with raw values -------------------------------------------------------------
_API = struct.Struct("<QQQ")


def _available(st) -> int | None:
    b = st.self_backend
    f = getattr(b, "_features", None)
    if f is None:
        prof = getattr(b, "profile", None)
        f = getattr(prof, "features", None)
    return None if f is None else int(f)


def api_command(st, features: int, api: int, explicit_features: bool) -> dict:
    """UFFDIO_API on the addressed uffd (opened on first need), with raw values; errors explained."""
    if not 0 <= api < 1 << 64 or not 0 <= features < 1 << 64:
        raise UsageError("--api and --features are 64-bit unsigned values")
    s = st.slot
    if s.uffd is None:
        if s.origin == "implicit" and s.proc == SELF and api == uapi.UFFD_API:
            try:
                st.get_uffd(features if explicit_features else None)
            except Exception as e:
                raise _explain_api(st, e, s, api, features, first=True) from None
            return dict(st.api_result.to_dict(), uffd=s.name)
        st.uffd = st.backend.userfaultfd()   # opened now (in the addressed process), the API below is raw
    u = s.uffd
    was = s.api_result is not None
    try:
        res = _raw_api(u, api, features)
    except Exception as e:
        raise _explain_api(st, e, s, api, features, first=not was) from None
    if not was:
        s.api_result, s.requested_features = res, features
        if s.handler is None and not s.unread:
            st.start_handler()
    return dict(res.to_dict(), uffd=s.name)


def _raw_api(u, api: int, features: int):
    """UFFDIO_API as given; on the kernel through the raw ioctl, so the struct as the kernel left it (zeroed on
    failure) is reported."""
    raw = getattr(u, "ioctl_raw", None)
    if raw is None:
        return u.api(features, api)
    r, after = raw(uapi.UFFDIO_API, _API.pack(api, features, 0))
    got = _API.unpack(after[:_API.size])
    if r < 0:
        e = uffd_error(-r, "UFFDIO_API")
        e.api_struct = got
        raise e
    u.features = got[1]
    return UffdioApi(*got)


def _explain_api(st, e, s, api, features, first: bool):
    if getattr(e, "errno", None) is None or getattr(e, "ioctl", None) != "UFFDIO_API":
        return e
    why = []
    if e.errno == E.EINVAL:
        if not first:
            why.append("already initialised: UFFDIO_API works once per uffd" +
                       (" (this one was handed over by a FORK message, initialised by the parent's)"
                        if s.origin == "fork" else ""))
        if api != uapi.UFFD_API:
            why.append(f"api 0x{api:x} is not UFFD_API (0x{uapi.UFFD_API:x})")
        avail = _available(st)
        if avail is not None and features & ~avail:
            why.append(f"features 0x{features & ~avail:x} not available here (available 0x{avail:x})")
    elif e.errno == E.EPERM and features & uapi.Feature.EVENT_FORK:
        why.append("UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE")
    got = getattr(e, "api_struct", None)
    if got is not None:
        why.append("the kernel left api=0x%x features=0x%x ioctls=0x%x" % got)
    e2 = uffd_error(e.errno, "UFFDIO_API", message="; ".join(why) or None)
    if got is not None:
        e2.api_struct = got
    return e2


# -- the handler: copy source, unread mode ------------------------------------------------------
def handler_copy_source(st, src, dst, src_text: str):
    """(base, src, src_len, warning) for spans ``src`` (in the session's own mm: the handler's ioctl reads it)
    and ``dst`` (or None: the one region registered on the uffd): a fault at ``base + off`` is filled from
    ``src + off``."""
    regs = st.registrations
    if dst is not None:
        base = dst.start
    else:
        hit = {}
        for (s0, n), _m in regs.items():
            for r in st.regions.values():
                if r.addr <= s0 < r.end:
                    hit[r.name] = r
        if len(hit) != 1:
            raise UsageError("--policy copy --src: say --dst REGION (the region the source lines up with); "
                             + (f"registered regions: {', '.join(sorted(hit))}" if hit else
                                "nothing is registered on this uffd yet"))
        base = next(iter(hit.values())).addr
    warning = None
    for slot in st.uffds.values():
        if slot.proc != SELF:
            continue
        for (s0, n), _m in slot.registrations.items():
            if s0 < src.end and src.start < s0 + n:
                warning = (f"--src {src_text} lies in memory registered on {slot.name}: the handler will fault on "
                           f"its own page and block (teardown still completes: it resolves that fault itself)")
    return base, src.start, src.len, warning


def set_unread(st, unread: bool) -> None:
    s = st.slot
    if unread == s.unread:
        return
    s.unread = unread
    if unread:
        if s.handler is not None:
            st.collect_events()
            try:
                s.handler.stop(release=False)   # what it queued stays queued; what it did not read stays unread
            except TypeError:   # the emulator's handler wakes what it queued when it stops
                s.unread = False
                raise NotModelled("handler --unread (messages left unread in the uffd)") from None
            st.collect_events()
            s.handler = None
    elif s.uffd is not None and s.api_result is not None:
        st.start_handler()



# -- system calls issued from a session thread (--thread) -------------------------------------
def maybe_async(st, a, what, span, call, decide_s: float, finish=None):
    """Without --thread: call(backend) now, returns None (or, with ``finish``, finish(what call returned): the
    command's result).  With --thread T: issue it from session thread T (a child: from its only thread,
    without waiting), wait 0.2 s like touch, and return the touch-like record (``touch`` number for wait,
    ``blocked``, ``op``); ``finish`` -- the command's bookkeeping (regions carved, moved) -- runs once the call
    has returned: now, or at the next command or ``wait`` (finish_ops), and its result joins the record."""
    thread = a.get("thread")
    if thread is None:
        ret = call(st.backend)
        return finish(ret) if finish is not None else None
    if not NAME_OK.match(thread):
        raise UsageError(f"bad thread name {thread!r}")
    b = st.backend
    proc = st.cur_proc
    busy = st.busy_touch(thread if proc is None else "main")
    if busy is not None:
        raise UsageError(f"thread {thread} is still blocked in touch #{busy.id}: use another --thread")
    if proc is not None:
        if thread != "main":
            raise UsageError(f"process {proc.name} has one thread, main")
        acc = proc.submit_call(what, lambda: call(b))
    else:
        try:
            jt = b.job_thread(thread)
        except NotModelled:   # the emulator: an mm operation there never waits for its event to be read
            raise NotModelled(f"{what} --thread (a system call blocked until its event is read)") from None
        acc = jt.submit(lambda: call(b))
    tch = st.new_op(thread, span.start, span.len, acc, what)
    tch.finish = finish
    acc.wait(decide_s)
    finish_op(st, tch)
    return tch.to_dict()


def finish_op(st, t) -> None:
    """Run a --thread system call's bookkeeping once it has returned (once; a failed call has none)."""
    if t.finish is None or not t.access.done:
        return
    fn, t.finish = t.finish, None
    try:
        ret = t.access.result()
    except Exception:
        return
    st.collect_events()     # its UNMAP / REMAP messages, located against the regions as they were
    t.outcome = fn(ret)


def finish_ops(st) -> None:
    """The bookkeeping of every --thread system call that has returned meanwhile."""
    for t in list(st.touches.values()):
        if t.finish is not None and t.access.done:
            finish_op(st, t)
