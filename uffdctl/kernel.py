"""The real-kernel backend: userfaultfd(2), /dev/userfaultfd and ioctl(2) through cffi.

Hazmat-thin: every ioctl fills its struct, calls the non-variadic C wrapper
``uffdctl_ioctl`` (which returns -errno) and either returns the struct's result
field or raises :class:`~uffdctl.errors.UffdError` carrying it.  No retries here.

Memory is only ever touched through C calls, which cffi makes with the GIL
released: a thread blocked in a userfault never holds the GIL, so a Python
fault handler can always run (tests/test_handler.py proves it with a timeout).
"""
from __future__ import annotations

import errno as E
import itertools
import os
import platform
import select
import struct
import time
from array import array

from . import uapi
from ._native import load
from .backend import Access, Backend, Handler, Thread, Uffd
from .errors import BackendUnavailable, Unsupported, UsageError, uffd_error
from .handler import NativeHandler
from .kernel_mm import KernelMm, _hpage_size, hugepages_total, meminfo  # noqa: F401  (their old home)
from .kernel_mm import hugetlb_page_flags, hugetlb_pool
from .types import (AccessResult, HandlerPolicy, MemType, Region, RegionArray, ScanResult, SoftDirtyProbe,
                    UffdioApi, UffdMsg, decode_msg)

# A value the kernel never writes into a result field: seeing it afterwards means
# "not written" (argument validation failed before the copy-out).
_UNWRITTEN = -(1 << 63)

_T: dict = {}  # cached cffi pointer types of the uffdio_* structs
_ORPHANS: list = []  # jobs of a thread stopped while blocked in a fault: kept, the worker may still write them


_MSG_ONE = struct.Struct("<B7xQQQ")  # event, then struct uffd_msg's 24-byte arg as three u64
_M32 = 0xFFFFFFFF
_PF, _FORK, _REMAP = int(uapi.Event.PAGEFAULT), int(uapi.Event.FORK), int(uapi.Event.REMAP)
max_ = max
_ZERO8 = bytes(8)
_mono = time.monotonic_ns
_unpack_msg = _MSG_ONE.unpack_from

try:  # the per-call fast path (cdefs/uffdctl_fastpath.c); without it the cffi wrappers below serve
    from ._fastpath import FastUffd as _FastUffd  # type: ignore[import-not-found]
except ImportError:
    _FastUffd = None


def _fast_fail(name: str, r: int, start, len, done, closed: bool):
    """The exception of a failed fast-path call (KernelUffd._fail's, for the C caller)."""
    return uffd_error(-r, name, start, len, done, "uffd is closed" if closed else None)


def fastpath_enabled() -> bool:
    """Whether KernelUffd's copy/zeropage/writeprotect/read_msgs/wait_msgs run the C fast path
    (built, and not turned off with UFFDCTL_NO_FASTPATH=1)."""
    return _FastUffd is not None and os.environ.get("UFFDCTL_NO_FASTPATH") != "1"


def _decode_batch(buf, nbytes: int, ts_ns: int) -> list[UffdMsg]:
    """Decode ``nbytes // 32`` packed ``struct uffd_msg`` from a buffer: one unpack_from per message."""
    unpack, Msg = _MSG_ONE.unpack_from, UffdMsg
    if nbytes == 32:  # the round-trip case: one message, most often a page fault
        ev, a0, a1, a2 = unpack(buf, 0)
        if ev == _PF:  # flags, address, feat.ptid
            return [Msg(ev, a0, a1, a2 & _M32, 0, 0, 0, 0, 0, 0, ts_ns)]
        return [_decode_event(ev, a0, a1, a2, ts_ns)]
    out = []
    PF = _PF
    for off in range(0, nbytes - nbytes % 32, 32):
        ev, a0, a1, a2 = unpack(buf, off)
        out.append(Msg(ev, a0, a1, a2 & _M32, 0, 0, 0, 0, 0, 0, ts_ns) if ev == PF else
                   _decode_event(ev, a0, a1, a2, ts_ns))
    return out


def _decode_event(ev: int, a0: int, a1: int, a2: int, ts_ns: int) -> UffdMsg:
    if ev == _FORK:
        return UffdMsg(ev, 0, 0, 0, a0 & _M32, 0, 0, 0, 0, 0, ts_ns)
    if ev == _REMAP:
        return UffdMsg(ev, 0, 0, 0, 0, a0, a1, a2, 0, 0, ts_ns)
    return UffdMsg(ev, 0, 0, 0, 0, 0, 0, 0, a0, a1, ts_ns)  # REMOVE, UNMAP: start, end


def parse_version(release: str, proc_version: str = "") -> tuple[int, int, int]:
    """(major, minor, sublevel).  Debian's ``uname -r`` is "6.1.0-50-amd64" for 6.1.176: the real sublevel
    is in /proc/version ("... Debian 6.1.176-1 ..."), which wins when it names the same series."""
    import re
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        raise ValueError(f"cannot parse a kernel version from {release!r}")
    v = tuple(int(x or 0) for x in m.groups())
    # /proc/version also names the compiler ("gcc-12 (Debian 12.2.0-14) ..."): take the one matching uname
    for d in re.findall(r"Debian (\d+)\.(\d+)\.(\d+)", proc_version):
        if tuple(map(int, d[:2])) == v[:2]:
            return tuple(map(int, d))
    return v


def running_version() -> tuple[int, int, int]:
    """The running kernel's upstream version, sublevel included (see parse_version()); ValueError when
    neither uname nor /proc/version gives one."""
    try:
        with open("/proc/version") as f:
            pv = f.read()
    except OSError:
        pv = ""
    return parse_version(platform.release(), pv)


def running_version_str() -> str | None:
    """running_version() as "6.1.176", None when it cannot be read."""
    try:
        return "%d.%d.%d" % running_version()
    except ValueError:
        return None


def open_error_hint(err: int, via: str) -> str:
    """Why a uffd could not be opened, and what cures it."""
    if via == "dev":
        if err in (E.EACCES, E.EPERM):
            return "/dev/userfaultfd is not accessible to this user: check its mode/group (crw------- root by default)"
        if err == E.ENOENT:
            return "/dev/userfaultfd does not exist (kernel older than 6.1, or devtmpfs not mounted)"
        if err == E.ENODEV:
            return "/dev/userfaultfd exists but the kernel lacks CONFIG_USERFAULTFD"
    if err == E.EPERM:
        return ("userfaultfd(2) refused: set sysctl vm.unprivileged_userfaultfd=1, run with CAP_SYS_PTRACE, "
                "or open with UFFD_USER_MODE_ONLY")
    if err == E.ENOSYS:
        return "userfaultfd(2) is not implemented: kernel without CONFIG_USERFAULTFD, or a seccomp filter blocks it"
    if err == E.EINVAL:
        return "flags not accepted (only O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY)"
    return os.strerror(err)


class KernelUffd(Uffd):
    def __init__(self, backend: "KernelBackend", fd: int, via: str, flags: int):
        self._b = backend
        self._ffi, self._lib = backend._ffi, backend._lib
        self.fd = fd
        self.via = via
        self.flags = flags
        self.features = 0
        self._closed = False
        self._handlers: list[Handler] = []
        self._new = self._ffi.new
        self._ioctl = self._lib.uffdctl_ioctl
        self._io_range = self._lib.uffdctl_ioctl_range
        self._io_range_mode = self._lib.uffdctl_ioctl_range_mode
        self._io_dst_src = self._lib.uffdctl_ioctl_dst_src
        self._ds1, self._rm1 = self._lib.uffdctl_dst_src1, self._lib.uffdctl_range_mode1
        self._copy1, self._zp1, self._wp1 = (self._lib.uffdctl_copy1, self._lib.uffdctl_zeropage1,
                                             self._lib.uffdctl_writeprotect1)
        self._last = self._lib.uffdctl_last_result
        self._read, self._poll_read = self._lib.uffdctl_read, self._lib.uffdctl_poll_read
        self._poll_first = 0 if flags & uapi.O_NONBLOCK else 1  # a blocking read would ignore the timeout
        self._bufs: list = []  # free message buffers (see read_msgs)
        if not _T:
            _T.update((k, self._ffi.typeof(f"struct uffdio_{k} *")) for k in ("api", "register"))
        self._fast = None
        if fastpath_enabled():  # the same five methods as METH_FASTCALL calls (same results and errors)
            f = self._fast = _FastUffd(fd, self._poll_first, _fast_fail, UffdMsg, _decode_event)
            self.copy, self.zeropage, self.writeprotect = f.copy, f.zeropage, f.writeprotect
            self.read_msgs, self.wait_msgs = f.read_msgs, f.wait_msgs

    # -- plumbing -----------------------------------------------------------------
    def _fail(self, name: str, r: int, start, len, done=None):
        """The one place an ioctl's -errno becomes an exception (done: the result field, or None if unwritten)."""
        if done == _UNWRITTEN:
            done = None
        msg = "uffd is closed" if self._closed else None
        return uffd_error(-r, name, start, len, done, msg)

    def _call(self, name: str, req: int, s, start=None, len=None) -> None:
        r = self._ioctl(self.fd, req, s)
        if r < 0:
            raise self._fail(name, r, start, len)

    # -- ioctls -------------------------------------------------------------------
    # The range ioctls go through per-shape C wrappers that take scalars (the struct is
    # filled in C; a cffi field set costs ~100 ns) and return the result field through a
    # per-thread int64_t, preset by C to a value the kernel never writes.  Request codes
    # are uapi's Python ints (checked against the compiled ones by tests/test_bindings.py).
    def api(self, features: int = 0, api: int = uapi.UFFD_API) -> UffdioApi:
        s = self._new(_T["api"])
        s.api = api
        s.features = features
        self._call("UFFDIO_API", uapi.UFFDIO_API, s)
        self.features = s.features
        return UffdioApi(s.api, s.features, s.ioctls)

    def register(self, start: int, len: int, mode: int) -> int:
        s = self._new(_T["register"])
        rng = s.range  # one cdata for the nested struct, not one per field
        rng.start = start
        rng.len = len
        s.mode = mode
        self._call("UFFDIO_REGISTER", uapi.UFFDIO_REGISTER, s, start, len)
        return s.ioctls

    def _range(self, name: str, req: int, start: int, len: int) -> None:
        r = self._io_range(self.fd, req, start, len)
        if r < 0:
            raise self._fail(name, r, start, len)

    def unregister(self, start: int, len: int) -> None:
        self._range("UFFDIO_UNREGISTER", uapi.UFFDIO_UNREGISTER, start, len)

    def wake(self, start: int, len: int) -> None:
        self._range("UFFDIO_WAKE", uapi.UFFDIO_WAKE, start, len)

    # The per-page fast path: one C call that returns the result field (or -errno; the partial
    # progress of a failure is fetched only then, from a thread-local kept by C).
    def _range_mode(self, name: str, req: int, start: int, len: int, mode: int) -> int:
        r = self._rm1(self.fd, req, start, len, mode)
        if r < 0:
            raise self._fail(name, r, start, len, self._last())
        return r

    def _dst_src(self, name: str, req: int, dst: int, src: int, len: int, mode: int) -> int:
        r = self._ds1(self.fd, req, dst, src, len, mode)
        if r < 0:
            raise self._fail(name, r, dst, len, self._last())
        return r

    def copy(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        r = self._copy1(self.fd, dst, src, len, mode)
        if r < 0:
            raise self._fail("UFFDIO_COPY", r, dst, len, self._last())
        return r

    def move(self, dst: int, src: int, len: int, mode: int = 0) -> int:
        return self._dst_src("UFFDIO_MOVE", uapi.UFFDIO_MOVE, dst, src, len, mode)

    def zeropage(self, start: int, len: int, mode: int = 0) -> int:
        r = self._zp1(self.fd, start, len, mode)
        if r < 0:
            raise self._fail("UFFDIO_ZEROPAGE", r, start, len, self._last())
        return r

    def continue_(self, start: int, len: int, mode: int = 0) -> int:
        return self._range_mode("UFFDIO_CONTINUE", uapi.UFFDIO_CONTINUE, start, len, mode)

    def poison(self, start: int, len: int, mode: int = 0) -> int:
        return self._range_mode("UFFDIO_POISON", uapi.UFFDIO_POISON, start, len, mode)

    def writeprotect(self, start: int, len: int, mode: int = 0) -> None:
        r = self._wp1(self.fd, start, len, mode)
        if r < 0:
            raise self._fail("UFFDIO_WRITEPROTECT", r, start, len)

    def ioctl_raw(self, req: int, buf: bytes) -> tuple[int, bytes]:
        """Issue an arbitrary ioctl number on this fd (for unknown-command tests): (ret or -errno, buffer after)."""
        b = self._ffi.new("char[]", bytes(buf) or b"\0" * 8)
        r = self._lib.uffdctl_ioctl(self.fd, req, b)
        return r, bytes(self._ffi.buffer(b))

    # -- messages -----------------------------------------------------------------
    # The Python fault path (a round trip is two context switches; what Python adds is counted in
    # hundreds of ns): a free list of message buffers per uffd (list.pop/append are atomic under the
    # GIL, so concurrent readers each take their own buffer, and no read allocates one), the C call
    # and the poll-first choice bound once, one precompiled Struct.unpack_from per message.
    def _newbuf(self, n: int):
        cap = max_(n, 64)
        buf = self._new("char[]", cap * 32)
        return buf, self._ffi.buffer(buf), cap

    def read_msgs(self, max: int = 64) -> list[UffdMsg]:
        bufs = self._bufs
        b = bufs.pop() if bufs else self._newbuf(max)
        if b[2] < max:
            b = self._newbuf(max)
        r = self._read(self.fd, b[0], max << 5)
        return self._decoded(b, r, E.EAGAIN)

    def wait_msgs(self, timeout: float | None = None, max: int = 64) -> list[UffdMsg]:
        """Wait up to ``timeout`` seconds (None: forever) for messages and read them: poll(2) and read(2)
        in one C call with the GIL released (other Python threads run meanwhile).  [] on timeout.
        On a non-blocking uffd (the default) it reads first and polls only when nothing is queued, so
        a message already waiting costs one read(2)."""
        bufs = self._bufs
        b = bufs.pop() if bufs else self._newbuf(max)
        if b[2] < max:
            b = self._newbuf(max)
        r = self._poll_read(self.fd, b[0], max << 5,
                            -1 if timeout is None else (int(timeout * 1000) if timeout > 0 else 0), self._poll_first)
        if r == 32:  # the round trip's case: one message, most often a page fault (decoded here: no call)
            ev, a0, a1, a2 = _unpack_msg(b[1], 0)
            bufs.append(b)  # after the unpack: another thread may take the buffer from here on
            if ev == _PF:
                return [UffdMsg(ev, a0, a1, a2 & _M32, 0, 0, 0, 0, 0, 0, _mono())]
            return [_decode_event(ev, a0, a1, a2, _mono())]
        return self._decoded(b, r, 0)

    def _decoded(self, b, r: int, empty: int) -> list[UffdMsg]:
        """The messages of a read of r bytes into buffer b (then back to the free list); [] for 0 or
        -``empty``; other errors raise."""
        try:
            if r > 0:
                return _decode_batch(b[1], r, _mono())
        finally:
            self._bufs.append(b)
        if r == 0 or r == -empty:
            return []
        raise uffd_error(-r, "read", message="uffd is closed" if self._closed else None)

    def _wait_readable(self, timeout: float) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(max(0, int(timeout * 1000))))

    def read_raw(self, size: int) -> int:
        """read() with an arbitrary buffer size: bytes read or -errno (for the size<32 test)."""
        buf = self._ffi.new("char[]", max(size, 1))
        return self._lib.uffdctl_read(self.fd, buf, size)

    def close(self) -> None:
        if self._closed:
            return
        for h in list(self._handlers):
            h.stop()
        self._closed = True
        os.close(self.fd)
        self.fd = -1  # later ioctls fail with EBADF ("uffd is closed")
        if self._fast is not None:
            self._fast.fd = -1
        if self in self._b._uffds:
            self._b._uffds.remove(self)

    @property
    def closed(self) -> bool:
        return self._closed


class _KernelAccess(Access):
    """One job of a native access thread (cdefs/uffdctl_access.c); waiting releases the GIL."""

    __slots__ = ("_t", "_job", "_keep", "_len", "_want", "_res")

    def __init__(self, t: "KernelThread", job, keep, len: int, want_data: bool):
        self._t, self._job, self._keep, self._len, self._want = t, job, keep, len, want_data
        self._res: AccessResult | None = None

    def wait(self, timeout=None) -> bool:
        if self._res is not None:
            return True
        w = self._t._w
        if w is None:  # the thread was stopped: it ran its queue first, or was left blocked in a fault
            end = None if timeout is None else time.monotonic() + timeout
            while not self._job.done and (end is None or time.monotonic() < end):
                time.sleep(0.001)
            return bool(self._job.done)
        ms = -1 if timeout is None else max_(0, int(timeout * 1000))
        return bool(self._t._lib.uffdctl_worker_wait(w, self._job, ms))

    @property
    def done(self) -> bool:
        return self._res is not None or bool(self._job.done)

    def result(self) -> AccessResult:
        if self._res is None:
            if not self._job.done:
                raise RuntimeError("access still in progress: blocked in a userfault that nothing has resolved yet "
                                   "(resolve it with copy/zeropage/continue/wake/writeprotect, or run a fault_handler)")
            r = self._job.res
            out = AccessResult(r.minflt, r.majflt, bool(r.sigbus), r.si_code, r.fault_addr, None, r.ns)
            if self._want and not out.sigbus:
                out.data = bytes(self._t._ffi.buffer(self._keep[1], self._len))
            self._res = out
        return self._res


class KernelThread(Thread):
    """A native thread (pthread, cdefs/uffdctl_access.c) that performs accesses with uffdctl_access().

    ``access()`` queues a job and returns at once; the thread runs jobs in order.  There is no Python
    thread behind it, so handing an access over costs a mutex and a condition signal, not a GIL
    switch; ``access_many()`` queues several in one call.
    """

    def __init__(self, backend: "KernelBackend", name: str):
        self._b = backend
        self._ffi, self._lib = backend._ffi, backend._lib
        self.name = name
        err = self._ffi.new("int *")
        self._w = self._lib.uffdctl_worker_start(err)
        if self._w == self._ffi.NULL:
            raise uffd_error(-err[0], "pthread_create", message=f"cannot start thread {name}")
        self.tid = self._lib.uffdctl_worker_tid(self._w)
        self._jobs: list[_KernelAccess] = []

    def _fill(self, j, addr, len, write, data, fill, stride, want_data):
        ffi = self._ffi
        keep = [None, None]
        j.addr, j.len, j.write, j.fill, j.stride = addr, len, 1 if write else 0, fill, stride
        if write and data is not None:
            keep[0] = ffi.from_buffer(data)
            j.wbuf = keep[0]
        if want_data and not write:
            keep[1] = ffi.new("char[]", len)
            j.rbuf = keep[1]
        return keep

    def access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False) -> Access:
        if self._w is None:
            raise RuntimeError(f"thread {self.name} is stopped")
        j = self._ffi.new("struct uffdctl_access_job *")
        keep = self._fill(j, addr, len, write, data, fill, stride, want_data)
        keep.append(j)
        acc = _KernelAccess(self, j, keep, len, want_data)
        self._outstanding((acc,))
        r = self._lib.uffdctl_worker_submit(self._w, j, 1)
        if r < 0:
            raise uffd_error(-r, "access", addr, len, message=f"thread {self.name}")
        return acc

    def access_many(self, specs) -> list[Access]:
        """Queue several accesses in one hand-off: ``specs`` are dicts of access()'s arguments
        (addr, len, write, data, fill, stride, want_data); they run in order."""
        specs = [dict(sp) for sp in specs]
        if self._w is None:
            raise RuntimeError(f"thread {self.name} is stopped")
        if not specs:
            return []
        jobs = self._ffi.new("struct uffdctl_access_job[]", len(specs))
        out = []
        for i, sp in enumerate(specs):
            want = sp.get("want_data", False)
            keep = self._fill(jobs[i], sp["addr"], sp["len"], sp["write"], sp.get("data"), sp.get("fill", 0),
                              sp.get("stride", 0), want)
            keep.append(jobs)  # the array owns every job's memory
            out.append(_KernelAccess(self, jobs + i, keep, sp["len"], want))
        self._outstanding(out)
        r = self._lib.uffdctl_worker_submit(self._w, jobs, len(specs))
        if r < 0:
            raise uffd_error(-r, "access", message=f"thread {self.name}")
        return out

    def _outstanding(self, accs) -> None:
        """Remember queued jobs until they are done: their memory must outlive the worker's use of it."""
        self._jobs = [a for a in self._jobs if not a._job.done] + list(accs)

    def faults(self) -> tuple[int, int]:
        # Read from outside: works while the thread is blocked in a fault.
        with open(f"/proc/self/task/{self.tid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[7]), int(fields[9])  # minflt, majflt (stat fields 10, 12)

    def stop(self, timeout: float = 5.0) -> bool:
        if self._w is None:
            return True
        r = self._lib.uffdctl_worker_stop(self._w, int(timeout * 1000))
        self._w = None  # stopped, or left to end on its own (blocked in a fault nobody resolves)
        if r != 0:
            _ORPHANS.extend(a._keep for a in self._jobs if not a._job.done)  # it may still write them
        self._jobs = []
        return r == 0

    @property
    def busy(self) -> bool:
        return self._w is not None and bool(self._lib.uffdctl_worker_busy(self._w))

    def stack(self) -> tuple[int, int] | None:
        """[lo, hi) of the thread's stack (guard page included), None once stopped."""
        if self._w is None:
            return None
        out = self._ffi.new("uint64_t[2]")
        return (out[0], out[1]) if self._lib.uffdctl_worker_stack(self._w, out) == 0 else None


class KernelBackend(KernelMm, Backend):
    """The running kernel, this process's own mm."""

    name = "kernel"

    def __init__(self, probe: bool = True, user_mode_only: bool | None = None):
        """``user_mode_only``: True opens every uffd with UFFD_USER_MODE_ONLY; None (default) does so only when
        the default open (``userfaultfd()``, via "auto") is refused with EPERM (an unprivileged user under vm.unprivileged_userfaultfd=0, the
        kernel's userfaultfd_syscall_allowed()), and says so in describe(); False never."""
        self._ffi, self._lib = load()
        self.user_mode_only = user_mode_only
        self.user_mode_only_reason: str | None = "asked for" if user_mode_only else None
        self._regions: dict[str, Region] = {}
        self._uffds: list[KernelUffd] = []
        self._procs: list = []           # the processes fork() made (uffdctl.process.KernelProcess)
        self._threads: dict[str, KernelThread] = {}
        self._names = itertools.count()
        self._pagemap_fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self._sd: SoftDirtyProbe | None = None
        self._features: int | None = None
        self._swapfiles: list[str] = []          # kernel_mm: swapfiles this backend turned on
        self._created_files: dict[str, str] = {}  # kernel_mm: region name -> file it created
        if probe:
            self._features = self.probe_features()

    # -- identity -----------------------------------------------------------------
    def probe_features(self) -> int:
        """UFFDIO_API on a throwaway fd (UFFDIO_API works once per fd); raises BackendUnavailable."""
        try:
            u = self.userfaultfd()
        except OSError as e:
            raise BackendUnavailable(f"cannot open a userfaultfd: {e}") from None
        with u:
            return u.api(0).features

    def hint_modes(self, ioctl: str) -> dict[str, int]:
        """None on a real kernel, except one built with uffdctl's reconstruction of the 2022 hint RFC
        (patches/6.1/rfc-hints*.patch, which uses the emulator's uffdctl-private mode values): the kernel
        cannot be asked, so scripts/vmtest says so with UFFDCTL_KERNEL_HINTS=rfc in that kernel's guest.
        Anywhere else the bits would be EINVAL."""
        if os.environ.get("UFFDCTL_KERNEL_HINTS") != "rfc":
            return {}
        return uapi.rfc_hint_modes(ioctl)

    def describe(self) -> dict:
        if self._features is None:
            self._features = self.probe_features()
        sd = self.soft_dirty()
        return {"backend": self.name, "release": platform.release(), "version": running_version_str(),
                "machine": platform.machine(), "profile": None, "soft_dirty": sd.available, "soft_dirty_reason": sd.reason,
                "features": self._features, "user_mode_only": int(bool(self.user_mode_only)),
                "user_mode_only_reason": self.user_mode_only_reason}

    # -- mappings -----------------------------------------------------------------
    def mmap(self, len, memtype=MemType.ANON, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None,
             fixed=False, noreserve=False, page_size=None):
        """``fixed``: MAP_FIXED at ``addr`` (else MAP_FIXED_NOREPLACE); ``noreserve``: MAP_NORESERVE;
        ``page_size``: the hugetlb page size (MFD_HUGE_1GB for 1 GiB; default: the default hstate's)."""
        memtype = MemType(memtype)
        if page_size is not None and not memtype.hugetlb:
            raise UsageError(f"a page size is for hugetlb mappings, not {memtype.value}")
        name = self._region_name(name)
        page = uapi.PAGE_SIZE
        fd = None
        flags = (uapi.MAP_SHARED if memtype.shared else uapi.MAP_PRIVATE) | self._map_fixed(addr, len, fixed)
        if noreserve:
            flags |= uapi.MAP_NORESERVE
        huge_bits = 0
        if memtype.hugetlb:
            page, huge_bits = hugetlb_page_flags(page_size)
            if not huge_bits and hugepages_total() == 0:
                raise Unsupported("HugePages_Total=0: no huge pages reserved",
                                  "reserve some with: sysctl vm.nr_hugepages=N")
        self._check_len(len, page, addr)
        if memtype is MemType.ANON:
            flags |= uapi.MAP_ANONYMOUS
        else:
            mfd_flags = uapi.MFD_CLOEXEC | (uapi.MFD_HUGETLB | huge_bits if memtype.hugetlb else 0)
            fd = self._lib.uffdctl_memfd_create(f"uffdctl-{name}".encode(), mfd_flags)
            if fd < 0:
                raise uffd_error(-fd, "memfd_create", None, len)
            os.ftruncate(fd, len)
        a = self._lib.uffdctl_mmap(addr or 0, len, prot, flags, -1 if fd is None else fd, 0)
        if a < 0:
            if fd is not None:
                os.close(fd)
            hint = None
            if -a == E.ENOMEM and memtype.hugetlb and huge_bits:
                pool = hugetlb_pool(page)
                hint = (f"no free {page >> 20} MiB huge page to reserve: free_hugepages={pool['free_hugepages']}, "
                        f"resv_hugepages={pool['resv_hugepages']} (/sys/kernel/mm/hugepages/"
                        f"hugepages-{page // 1024}kB/nr_hugepages reserves more)")
            elif -a == E.ENOMEM and memtype.hugetlb:
                mi = meminfo()
                hint = (f"no free huge page to reserve: HugePages_Free={mi.get('HugePages_Free', 0)}, "
                        f"HugePages_Rsvd={mi.get('HugePages_Rsvd', 0)} (other mappings hold the rest; "
                        f"sysctl vm.nr_hugepages=N reserves more)")
            elif -a == E.ENOMEM and not noreserve:
                hint = ("the kernel's overcommit accounting refused it (a private mapping larger than what "
                        "RAM + swap can commit); mmap --noreserve maps it with MAP_NORESERVE")
            raise uffd_error(-a, "mmap", addr, len, message=hint)
        if memtype is MemType.ANON:
            if name and name.startswith("__"):
                # the tool's own pages (zero-PFN probe, scratch, LRU drain; "__" names are refused to users):
                # VM_DONTDUMP, first, keeps them from merging into a session region mapped next to them
                # (vma_merge() compares every flag but VM_SOFTDIRTY).  Merged -- at the MADV_NOHUGEPAGE below,
                # which made the flags equal -- the region took the new VMA's VM_SOFTDIRTY (mmap_region()) and
                # kept it after the split at munmap: soft-dirty.c test_simple read 1 at iteration 0 on 6.1.192,
                # the first `pagemap` having made the zero-PFN probe.
                self._lib.uffdctl_madvise(a, len, uapi.MADV_DONTDUMP)
            # page-granular behaviour, as the selftests ask for: no THP under our feet
            self._lib.uffdctl_madvise(a, len, uapi.MADV_NOHUGEPAGE)
        return self._add_region(Region(name, a, len, memtype, page, fd, prot))

    def alias(self, region, name=None):
        name = self._alias_name(region, name)
        a = self._lib.uffdctl_mmap(0, region.len, uapi.PROT_READ | uapi.PROT_WRITE, uapi.MAP_SHARED, region.fd, 0)
        if a < 0:
            raise uffd_error(-a, "mmap", None, region.len)
        return self._add_region(Region(name, a, region.len, region.memtype, region.page_size, None))

    def munmap(self, addr, len):
        r = self._lib.uffdctl_munmap(addr, len)
        if r < 0:
            raise uffd_error(-r, "munmap", addr, len)
        for name, reg in list(self._regions.items()):
            if addr <= reg.addr and reg.end <= addr + len:
                if reg.fd is not None:
                    os.close(reg.fd)
                del self._regions[name]
                self._forget_region(name)

    def madvise(self, addr, len, advice):
        r = self._lib.uffdctl_madvise(addr, len, advice)
        if r < 0:
            raise uffd_error(-r, "madvise", addr, len)

    def mprotect(self, addr, len, prot):
        r = self._lib.uffdctl_mprotect(addr, len, prot)
        if r < 0:
            raise uffd_error(-r, "mprotect", addr, len)

    def own_stacks(self) -> list[tuple[int, int, str]]:
        """The stacks of this backend's native threads (fault handlers, access threads): mappings the
        caller never made, placed wherever mmap found room -- often the hole the caller just freed."""
        out = []
        for u in self._uffds:
            for h in u._handlers:
                st = h.stack() if hasattr(h, "stack") else None
                if st:
                    out.append((*st, "[stack of uffdctl's fault-handler thread]"))
        for name, t in self._threads.items():
            st = t.stack()
            if st:
                out.append((*st, f"[stack of uffdctl's access thread {name}]"))
        return out

    def _map_fixed(self, addr, len, fixed) -> int:
        """The mmap flags that place a mapping at ``addr``: MAP_FIXED_NOREPLACE, or MAP_FIXED with ``fixed``
        (checked by _check_fixed_target first); 0 without an address."""
        if not addr:
            return 0
        if not fixed:
            return uapi.MAP_FIXED_NOREPLACE
        self._check_fixed_target("mmap MAP_FIXED", addr, addr + len)
        return uapi.MAP_FIXED

    def _check_fixed_target(self, what, start, end):
        """MAP_FIXED / MREMAP_FIXED replace what is at the target: never one of our own threads' stacks
        (the thread would return into the new mapping: SIGSEGV, or a fault on a registered range nobody
        serves)."""
        for lo, hi, desc in self.own_stacks():
            if lo < end and start < hi:
                raise UsageError(f"{what}: 0x{start:x}-0x{end:x} would replace {desc} at 0x{lo:x}-0x{hi:x}; "
                                 "reserve the target with a mapping of your own first (e.g. mmap PROT_NONE, "
                                 "as the selftests do) instead of a hole that was free when you looked")

    def mremap(self, old, old_len, new_len, flags=0, new_addr=0):
        if flags & uapi.MREMAP_FIXED:
            self._check_fixed_target("mremap MREMAP_FIXED", new_addr, new_addr + new_len)
        r = self._lib.uffdctl_mremap(old, old_len, new_len, flags, new_addr)
        if r < 0:
            raise uffd_error(-r, "mremap", old, old_len)
        self._remap_regions(old, old_len, r, new_len, flags)
        return r

    @property
    def regions(self) -> dict[str, Region]:
        return dict(self._regions)

    # -- userfaultfd --------------------------------------------------------------
    def userfaultfd(self, flags=uapi.O_CLOEXEC | uapi.O_NONBLOCK, via="auto") -> KernelUffd:
        order = {"auto": ("syscall", "dev"), "syscall": ("syscall",), "dev": ("dev",)}.get(via)
        if order is None:
            raise ValueError(f"unknown open method {via!r} (valid: auto, syscall, dev)")
        if self.user_mode_only:
            flags |= uapi.UFFD_USER_MODE_ONLY
        errs = []
        for how in order:
            fn = self._lib.uffdctl_userfaultfd if how == "syscall" else self._lib.uffdctl_dev_userfaultfd
            fd = fn(flags)
            if fd >= 0:
                u = KernelUffd(self, fd, how, flags)
                self._uffds.append(u)
                return u
            errs.append((how, -fd))
        # the fallback is for the default open (via "auto"); asking for one method gets exactly that one
        if self.user_mode_only is None and via == "auto" and dict(errs).get("syscall") == E.EPERM \
                and not flags & uapi.UFFD_USER_MODE_ONLY:
            fd = self._lib.uffdctl_userfaultfd(flags | uapi.UFFD_USER_MODE_ONLY)
            if fd >= 0:      # from now on every uffd of this backend is user-mode-only, and describe() says so
                self.user_mode_only = True
                self.user_mode_only_reason = ("userfaultfd(2) refused a full uffd (EPERM: vm.unprivileged_"
                                              "userfaultfd=0 and no CAP_SYS_PTRACE); faults the kernel takes "
                                              "on this range itself (e.g. in a read(2) into it) are not handled")
                u = KernelUffd(self, fd, "syscall", flags | uapi.UFFD_USER_MODE_ONLY)
                self._uffds.append(u)
                return u
        how, err = errs[0]  # the first method's errno; the message gives every method's, with its cure
        hints = "; ".join(f"{h}: {os.strerror(e)} - {open_error_hint(e, h)}" for h, e in errs)
        raise uffd_error(err, "userfaultfd" if how == "syscall" else "USERFAULTFD_IOC_NEW", message=hints)

    def fork_child(self) -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return pid

    def fork(self, name, regions, thread=None) -> Access:
        """fork(2) in C from a long-lived job thread of the session (the child's PR_SET_PDEATHSIG follows that
        thread): the child runs the native command loop of cdefs/uffdctl_proc.c (uffdctl.process)."""
        from .process import KernelProcess, job_thread

        def job():
            sock = self._ffi.new("int *")
            pid = self._lib.uffdctl_proc_fork(sock)
            if pid < 0:
                raise uffd_error(-pid, "fork")
            p = KernelProcess(self, name, pid, sock[0], None, regions)
            self._procs.append(p)
            return p

        return job_thread(self, thread or "__fork").submit(job)

    def job_thread(self, name: str):
        from .process import job_thread
        return job_thread(self, name)

    def adopt_uffd(self, fd: int) -> KernelUffd:
        import fcntl
        u = KernelUffd(self, fd, "fork", fcntl.fcntl(fd, fcntl.F_GETFL))
        u.features = -1  # negotiated by the parent's UFFDIO_API; the child ctx inherits it
        self._uffds.append(u)
        return u

    def fault_handler(self, uffd, policy: HandlerPolicy, start: bool = True) -> Handler:
        h = NativeHandler(uffd, policy)
        if start:
            h.start()
        return h

    _VMFLAG_MODE = {"um": uapi.RegisterMode.MISSING, "uw": uapi.RegisterMode.WP, "ui": uapi.RegisterMode.MINOR}

    def uffd_vmas(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """From the VmFlags of /proc/self/smaps (um, uw, ui)."""
        out, cur = [], None
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    cur = (lo, hi) if lo < end and start < hi else None
                elif cur is not None and head == "VmFlags:":
                    mode = 0
                    for flag in line.split()[1:]:
                        mode |= int(self._VMFLAG_MODE.get(flag, 0))
                    out.append((max(cur[0], start), min(cur[1], end), mode))
                    cur = None
        return out

    def vma_bounds(self, addr: int) -> tuple[int, int] | None:
        """From /proc/self/maps."""
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                if lo <= addr < hi:
                    return lo, hi
        return None

    # -- memory access ------------------------------------------------------------
    def thread(self, name="main") -> KernelThread:
        t = self._threads.get(name)
        if t is None:
            t = self._threads[name] = KernelThread(self, name)
        return t

    def _access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False) -> AccessResult:
        ffi, lib = self._ffi, self._lib
        res = ffi.new("struct uffdctl_access_result *")
        wbuf = ffi.from_buffer(data) if (write and data is not None) else ffi.NULL
        rbuf = ffi.new("char[]", len) if (want_data and not write) else ffi.NULL
        lib.uffdctl_access(addr, len, 1 if write else 0, wbuf, rbuf, fill, stride, res)
        out = AccessResult(res.minflt, res.majflt, bool(res.sigbus), res.si_code, res.fault_addr, None, res.ns)
        if rbuf != ffi.NULL and not out.sigbus:
            out.data = bytes(ffi.buffer(rbuf, len))
        return out

    def read(self, addr, len) -> bytes:
        r = self._access(addr, len, False, want_data=True)
        if r.sigbus:
            raise uffd_error(E.EFAULT, "read", addr, len, message=f"SIGBUS (si_code {r.si_code})")
        return r.data

    def write(self, addr, data) -> None:
        r = self._access(addr, len(data), True, data=bytes(data))
        if r.sigbus:
            raise uffd_error(E.EFAULT, "write", addr, len(data), message=f"SIGBUS (si_code {r.si_code})")

    # -- /proc --------------------------------------------------------------------
    def pagemap(self, addr, npages) -> list[int]:
        return self.pagemap_array(addr, npages).tolist()

    def pagemap_array(self, addr, npages) -> array:
        out = array("Q", _ZERO8) * npages
        n = self._lib.uffdctl_pagemap_read(self._pagemap_fd, addr, npages,
                                           self._ffi.from_buffer("uint64_t[]", out)) if npages else 0
        if n < 0:
            raise uffd_error(-n, "pread", addr, npages * uapi.PAGE_SIZE, message="/proc/self/pagemap")
        if n < npages:
            del out[n:]
        return out

    def clear_refs(self, value) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write(str(value))
        except OSError as e:
            raise uffd_error(e.errno, "clear_refs", message=f"value {value!r}") from None

    def pagemap_scan(self, start, end, *, flags=0, category_inverted=0, category_mask=0,
                     category_anyof_mask=0, return_mask=uapi.PM_SCAN_CATEGORIES_6_18, max_pages=0,
                     vec_len=512, null_vec=False) -> ScanResult:
        ffi, lib = self._ffi, self._lib
        vec = ffi.new("struct page_region[]", max(vec_len, 1))
        arg = ffi.new("struct pm_scan_arg *", {
            "size": ffi.sizeof("struct pm_scan_arg"), "flags": flags, "start": start, "end": end,
            "vec": int(ffi.cast("uintptr_t", vec)) if vec_len and not null_vec else 0, "vec_len": vec_len,
            "max_pages": max_pages, "category_inverted": category_inverted, "category_mask": category_mask,
            "category_anyof_mask": category_anyof_mask, "return_mask": return_mask})
        n = lib.uffdctl_ioctl(self._pagemap_fd, lib.PAGEMAP_SCAN, arg)
        if n < 0:
            raise uffd_error(-n, "PAGEMAP_SCAN", start, end - start)
        # The regions in bulk: one view of the vector as u64 (three per page_region), not three
        # cdata field reads per region.
        q = memoryview(ffi.buffer(vec, n * 24)).cast("Q")
        return ScanResult(list(zip(q[0::3], q[1::3], q[2::3])), arg.walk_end)

    def pagemap_scan_all(self, start, end, *, flags=0, category_inverted=0, category_mask=0,
                         category_anyof_mask=0, return_mask=uapi.PM_SCAN_CATEGORIES_6_18, max_pages=0,
                         vec_len=512) -> ScanResult:
        """uffdctl.pagemap.scan_all() in one C call (uffdctl_scan_all): the continuation, the merge and
        the duplicate filter run in C; the regions come back as one array, read as tuples on demand."""
        ffi, lib = self._ffi, self._lib
        arg = ffi.new("struct pm_scan_arg *", {
            "size": ffi.sizeof("struct pm_scan_arg"), "flags": flags, "start": start, "end": end,
            "vec_len": vec_len, "category_inverted": category_inverted, "category_mask": category_mask,
            "category_anyof_mask": category_anyof_mask, "return_mask": return_mask})
        out = ffi.new("struct page_region **")
        n = lib.uffdctl_scan_all(self._pagemap_fd, arg, max_pages, out)
        if n <= 0:
            lib.uffdctl_free(out[0])
            if n < 0:
                raise uffd_error(-n, "PAGEMAP_SCAN", start, end - start)
            return ScanResult(RegionArray(array("Q")), arg.walk_end)
        # the regions stay where C put them, read in place ('Q' words; freed with the last view of them): a
        # copy into an array('Q') was 3 MiB more of fresh memory for 1 GiB written every other page, 0.3-1 ms
        regions = ffi.gc(out[0], lib.uffdctl_free, n * 24)
        return ScanResult(RegionArray(memoryview(ffi.buffer(regions, n * 24)).cast("Q")), arg.walk_end)

    def soft_dirty(self) -> SoftDirtyProbe:
        if self._sd is None:
            self._sd = soft_dirty_roundtrip(self)
        return self._sd

    def smaps_private_dirty(self, addr) -> int:
        import psutil
        for m in psutil.Process().memory_maps(grouped=False):
            lo, hi = (int(x, 16) for x in m.addr.split("-"))
            if lo <= addr < hi:
                return m.private_dirty
        raise uffd_error(E.ENOENT, "smaps", addr, message="no mapping contains this address")

    def close(self) -> None:
        for p in reversed(self._procs):  # killed and reaped, their workers stopped (Process.close(): bounded)
            p.close()
        self._procs.clear()
        for u in list(self._uffds):
            u.close()  # releases any fault still blocked (memory then reads as zeros)
        from .process import stop_job_threads
        stop_job_threads(self)
        for t in self._threads.values():
            t.stop()
        self._threads.clear()
        for r in list(self._regions.values()):
            self._lib.uffdctl_munmap(r.addr, r.len)
            if r.fd is not None:
                os.close(r.fd)
        self._regions.clear()
        self._close_mm()
        if self._pagemap_fd >= 0:
            os.close(self._pagemap_fd)
            self._pagemap_fd = -1


# The round trip, in a process of its own: clear_refs 4 acts on a whole mm (clear_refs_write() clears
# every PTE's soft-dirty bit and every VMA's VM_SOFTDIRTY), so run in the caller's process -- lazily, at the
# first soft-dirty question, in the middle of a script -- it wiped the caller's own soft-dirty state; and
# its scratch page, mapped next to the caller's newest anon region with the same flags, merged into that
# VMA (vma_merge() from madvise_update_vma()) and left it VM_SOFTDIRTY, so a never-touched page of the
# caller's read soft-dirty (soft-dirty.c test_simple on 6.1.192, iteration 0).
_SD_PROBE = r"""
import ctypes, mmap, os, struct
m = mmap.mmap(-1, 4096)
a = ctypes.addressof(ctypes.c_char.from_buffer(m))
fd = os.open("/proc/self/pagemap", os.O_RDONLY)
def pm():
    return struct.unpack("Q", os.pread(fd, 8, a // 4096 * 8))[0]
m[0] = 1
with open("/proc/self/clear_refs", "w") as f:
    f.write("4")
before = pm()
m[0] = 2
print(before, pm())
"""


def _sd_verdict(before: int, after: int) -> SoftDirtyProbe:
    if after & uapi.PM_SOFT_DIRTY and not before & uapi.PM_SOFT_DIRTY:
        return SoftDirtyProbe(True, "round trip: clear_refs 4 cleared bit 55, a write set it", before, after)
    if before & uapi.PM_SOFT_DIRTY:
        return SoftDirtyProbe(False, "clear_refs 4 did not clear bit 55", before, after)
    return SoftDirtyProbe(False, "CONFIG_MEM_SOFT_DIRTY off: round trip read 0", before, after)


def soft_dirty_roundtrip(b: Backend | None = None) -> SoftDirtyProbe:
    """clear_refs 4, then write a scratch page: PM_SOFT_DIRTY must read 0 then 1.

    Writing 4 to clear_refs succeeds silently on kernels without CONFIG_MEM_SOFT_DIRTY,
    so only the round trip tells (measured here: CONFIG_MEM_SOFT_DIRTY is off and bit 55 stays 0).
    It runs in a child process (``_SD_PROBE``; fork + exec, no Python between them), never in the
    caller's mm; ``b`` is unused (kept for callers that pass the backend).
    """
    import subprocess
    import sys
    exe = sys.executable or "/usr/bin/python3"
    try:
        p = subprocess.run([exe, "-I", "-S", "-c", _SD_PROBE], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return SoftDirtyProbe(False, f"the soft-dirty round trip could not run: {e}")
    try:
        before, after = (int(x) for x in p.stdout.split())
    except ValueError:
        tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return SoftDirtyProbe(False, f"the soft-dirty round trip failed: {tail}")
    return _sd_verdict(before, after)
