"""Processes of a session: children forked from it, which run no Python.

A session daemon is multi-threaded (client threads, touchers, the native fault
handler), so a child forked from it must not run Python between fork and exec:
the GIL and glibc's locks (malloc, stdio) may be held by threads that do not
exist in the child.  :meth:`KernelBackend.fork <uffdctl.kernel.KernelBackend.fork>`
therefore forks in C with the raw clone syscall (no atfork handlers, no allocator
lock held across a fork that ``UFFD_FEATURE_EVENT_FORK`` keeps blocked until the
FORK message is read) and the child runs a command loop in C
(``cdefs/uffdctl_proc.c``) over a stream socketpair: access, madvise, munmap,
mprotect, mremap, mmap, fork, userfaultfd, write, waitpid, kill, exit.  The loop
makes only system calls and never allocates.

The parent side is :class:`KernelProcess`: one Python thread per child sends
requests and reads the replies, so a request that blocks in the child (a touch
in a fault, a madvise waiting for its REMOVE message to be read) blocks nobody
else.  The child's pagemap, PAGEMAP_SCAN, clear_refs, smaps and fault counters
are read from ``/proc/PID/*`` by the parent (opened in the parent, naming the
child: never an fd inherited across the fork, which would read the parent).
"""
from __future__ import annotations

import errno as E
import os
import queue
import select
import signal as _signal
import socket
import struct
import threading

from . import uapi
from .backend import Access, Process, Thread, decode_status   # noqa: F401  (Process, decode_status: re-exported)
from .errors import ProcessError, UffdctlError, uffd_error
from .types import AccessResult, Region

_REQ = struct.Struct("<II6Q")          # struct uffdctl_proc_req
_REP = struct.Struct("<qqqiiQQQii")    # struct uffdctl_proc_rep
ANSWER_TIMEOUT_S = 10.0                # a synchronous request the child does not answer by then is "blocked"
MAX_READ = 64 << 20


class _Completion(Access):
    """An Access that is done once its event is set (by the thread that ran the call)."""

    def __init__(self):
        self._ev = threading.Event()

    def wait(self, timeout=None) -> bool:
        return self._ev.wait(timeout)

    @property
    def done(self) -> bool:
        return self._ev.is_set()


class _Job(_Completion):
    def __init__(self):
        super().__init__()
        self._value = None
        self._exc: BaseException | None = None

    def result(self):
        if not self._ev.is_set():
            raise RuntimeError("still blocked in the kernel")
        if self._exc:
            raise self._exc
        return self._value


class JobThread:
    """A long-lived thread of the session that runs calls in order, each a C call that releases the GIL: the
    way to issue a system call that may block until its event is read (fork with EVENT_FORK, madvise with
    EVENT_REMOVE) without blocking the caller, and the thread a child's PR_SET_PDEATHSIG follows."""

    def __init__(self, name: str):
        self.name = name
        self._q: queue.Queue = queue.Queue()
        self._busy: _Job | None = None
        self._t = threading.Thread(target=self._run, name=f"uffdctl-job-{name}", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, job = item
            try:
                job._value = fn()
            except BaseException as e:   # handed to the waiter
                job._exc = e
            job._ev.set()

    def submit(self, fn) -> Access:
        job = _Job()
        self._q.put((fn, job))
        return job

    def stop(self, timeout: float = 2.0) -> bool:
        self._q.put(None)
        self._t.join(timeout)   # one blocked in the kernel is a daemon thread: process exit ends it
        return not self._t.is_alive()


def job_thread(backend, name: str) -> JobThread:
    """The backend's job thread ``name`` (created on first use, stopped by :func:`stop_job_threads`)."""
    table = backend.__dict__.setdefault("_job_threads", {})
    t = table.get(name)
    if t is None:
        t = table[name] = JobThread(name)
    return t


def stop_job_threads(backend) -> None:
    for t in backend.__dict__.pop("_job_threads", {}).values():
        t.stop()


class _Future(_Completion):
    """One request to a child; also the Access of a touch made in the child."""

    def __init__(self):
        super().__init__()
        self.rep: dict | None = None
        self.data: bytes | None = None
        self.fd: int | None = None
        self.exc: BaseException | None = None

    def result(self) -> AccessResult:
        if not self._ev.is_set():
            raise RuntimeError("access still in progress (blocked in a fault?)")
        if self.exc:
            raise self.exc
        r = self.rep
        out = AccessResult(r["minflt"], r["majflt"], r["sig"] == _signal.SIGBUS, r["si_code"] if r["sig"] else 0,
                           r["fault_addr"], self.data, r["ns"])
        # a SIGSEGV (MADV_DONTFORK'd region, PROT_NONE) is reported, not fatal: the loop catches it
        try:
            out.sigsegv = r["sig"] == _signal.SIGSEGV
        except AttributeError:
            pass
        return out


class _OnFuture(Access):
    """An Access done when its request's _Future is."""

    def __init__(self, fut: _Future):
        self._f = fut

    def wait(self, timeout=None) -> bool:
        return self._f.wait(timeout)

    @property
    def done(self) -> bool:
        return self._f.done


class _CallAccess(_OnFuture):
    def result(self):
        if self._f.exc:
            raise self._f.exc
        return (self._f.rep or {}).get("value", 0)


class _ForkAccess(_OnFuture):
    def __init__(self, parent: "KernelProcess", name: str, fut: _Future):
        super().__init__(fut)
        self._p, self._name, self._child = parent, name, None

    def result(self):
        if self._child is None:
            f = self._f
            if f.exc:
                raise f.exc
            if f.rep["ret"] < 0:
                raise uffd_error(-f.rep["ret"], "fork", message=f"in process {self._p.name}")
            self._child = KernelProcess(self._p._b, self._name, f.rep["ret"], f.fd, self._p, dict(self._p.regions))
            self._p.children.append(self._child)
        return self._child


class _ProcThread(Thread):
    """The only thread of a child process."""

    def __init__(self, proc: "KernelProcess"):
        self._p = proc
        self.name = "main"
        self.tid = proc.pid

    def access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False) -> Access:
        if data is not None:
            if not write:
                raise ValueError("data is for writes")
            return self._p._submit(self._p._lib.UFFDCTL_PROC_WRITE, addr, payload=bytes(data), kind="touch")
        if want_data and len > MAX_READ:
            raise ValueError(f"read of {len} bytes: at most {MAX_READ} from a child")
        return self._p._submit(self._p._lib.UFFDCTL_PROC_ACCESS, addr, len, int(bool(write)), fill & 0xff,
                               stride, int(bool(want_data and not write)), kind="touch")

    def faults(self) -> tuple[int, int]:
        return self._p.faults()


class KernelProcess(Process):
    """A child of the session on the real kernel, driven over its command socket."""

    _answer_timeout = ANSWER_TIMEOUT_S

    def __init__(self, backend, name: str, pid: int, sock: int, parent: "KernelProcess | None",
                 regions: dict[str, Region]):
        self._b = backend
        self._ffi, self._lib = backend._ffi, backend._lib
        self.name = name
        self.pid = pid
        self.parent = parent
        self.regions = regions
        self.children: list[KernelProcess] = []
        self._sock = socket.socket(fileno=sock)
        self._q: queue.Queue = queue.Queue()
        self._exit: dict | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.busy: _Future | None = None         # the request the child is working on
        self.busy_what = ""
        self._pidfd = os.pidfd_open(pid)
        self._pagemap_fd = -1
        try:
            self._pagemap_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        self._thread = _ProcThread(self)
        self._worker = threading.Thread(target=self._run, name=f"uffdctl-proc-{name}", daemon=True)
        self._worker.start()

    # -- the wire ------------------------------------------------------------------
    def _run(self):
        while True:
            job = self._q.get()
            if job is None:
                return
            req, payload, fut = job
            try:
                self._sock.sendall(req + payload)
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, _REP.size, 1)
                while len(msg) < _REP.size:
                    more = self._sock.recv(_REP.size - len(msg))
                    if not more:
                        break
                    msg += more
                if len(msg) < _REP.size:
                    raise ProcessError(f"process {self.name} (pid {self.pid}) is gone")
                vals = _REP.unpack(msg)
                rep = dict(zip(("ret", "minflt", "majflt", "sig", "si_code", "fault_addr", "ns", "data_len",
                                "fd", "pad"), vals))
                if rep["data_len"]:
                    fut.data = self._recv_exact(rep["data_len"])
                if fds:
                    fut.fd = fds[0]
                fut.rep = rep
            except (OSError, ProcessError) as e:
                fut.exc = e if isinstance(e, ProcessError) else \
                    ProcessError(f"process {self.name} (pid {self.pid}) is gone ({e.strerror or e})")
            with self._lock:
                if self.busy is fut:
                    self.busy = None
            fut._ev.set()

    def _recv_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = self._sock.recv(min(n - got, 1 << 20))
            if not b:
                raise ProcessError(f"process {self.name} (pid {self.pid}) is gone")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def _submit(self, op: int, *a: int, payload: bytes = b"", kind: str = "request") -> _Future:
        if self._closed:
            raise ProcessError(f"process {self.name} is closed")
        with self._lock:
            if self.busy is not None and not self.busy.done:
                raise ProcessError(f"process {self.name} (pid {self.pid}) is still busy with {self.busy_what}: "
                                   f"its only thread is blocked (resolve the fault, read the event, or kill it)")
            fut = _Future()
            self.busy, self.busy_what = fut, kind
        args = (list(a) + [0] * 6)[:6]
        self._q.put((_REQ.pack(op, len(payload), *[x & (2 ** 64 - 1) for x in args]), payload, fut))
        return fut

    def call(self, op: int, *a: int, what: str, payload: bytes = b"", timeout: float = ANSWER_TIMEOUT_S,
             start=None, len=None) -> _Future:
        """A synchronous request; raises with the child's -errno, or ProcessError if it is blocked."""
        fut = self._submit(op, *a, payload=payload, kind=what)
        if not fut.wait(timeout):
            raise ProcessError(f"{what} in process {self.name} (pid {self.pid}) has not returned after {timeout:g} s: "
                               f"blocked in the kernel (an event waiting to be read? see events, read)")
        if fut.exc:
            raise fut.exc
        if fut.rep["ret"] < 0:
            if fut.fd is not None:
                os.close(fut.fd)
            raise uffd_error(-fut.rep["ret"], what, start, len, message=f"in process {self.name}")
        return fut

    def submit_call(self, what: str, fn) -> Access:
        """Run ``fn`` (which makes one synchronous request to this process) without waiting for it."""
        acc = _Future()

        def run():
            try:
                acc.rep = {"ret": 0, "value": fn()}
            except BaseException as e:
                acc.exc = e
            acc._ev.set()
        threading.Thread(target=run, name=f"uffdctl-{self.name}-{what}", daemon=True).start()
        return _CallAccess(acc)

    # -- the Backend-like surface the session commands use ---------------------------
    def faults(self) -> tuple[int, int]:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            raise ProcessError(f"process {self.name} (pid {self.pid}) is gone") from None
        return int(fields[7]), int(fields[9])

    def madvise(self, addr, len, advice):
        self.call(self._lib.UFFDCTL_PROC_MADVISE, addr, len, advice, what="madvise", start=addr, len=len)

    def _munmap(self, addr, len):
        self.call(self._lib.UFFDCTL_PROC_MUNMAP, addr, len, what="munmap", start=addr, len=len)

    def mprotect(self, addr, len, prot):
        self.call(self._lib.UFFDCTL_PROC_MPROTECT, addr, len, prot, what="mprotect", start=addr, len=len)

    def mremap(self, old, old_len, new_len, flags=0, new_addr=0):
        return self.call(self._lib.UFFDCTL_PROC_MREMAP, old, old_len, new_len, flags, new_addr, what="mremap",
                         start=old, len=old_len).rep["ret"]

    def _mmap_anon(self, len, prot, addr):
        flags = uapi.MAP_PRIVATE | (uapi.MAP_FIXED_NOREPLACE if addr else 0)
        return self.call(self._lib.UFFDCTL_PROC_MMAP, addr or 0, len, prot, flags, what="mmap", len=len).rep["ret"]

    def write(self, addr, data) -> None:
        self.call(self._lib.UFFDCTL_PROC_WRITE, addr, payload=bytes(data), what="write", start=addr, len=len(data))

    # /proc/PID views, opened by the parent
    def pagemap(self, addr, npages) -> list[int]:
        if self._pagemap_fd < 0:
            raise ProcessError(f"cannot read /proc/{self.pid}/pagemap")
        raw = os.pread(self._pagemap_fd, 8 * npages, (addr // uapi.PAGE_SIZE) * 8)
        return list(struct.unpack(f"<{len(raw) // 8}Q", raw))

    def pagemap_array(self, addr, npages):
        if self._pagemap_fd < 0:
            raise ProcessError(f"cannot read /proc/{self.pid}/pagemap")
        return type(self._b).pagemap_array(self, addr, npages)   # the kernel's read, on /proc/PID/pagemap

    def vma_bounds(self, addr):
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                if lo <= addr < hi:
                    return lo, hi
        return None

    def pte_bits(self, addr):
        return None     # the kernel shows no PTE bits beyond pagemap

    def pagemap_scan(self, start, end, **kw):
        return type(self._b).pagemap_scan(self, start, end, **kw)   # the kernel's ioctl, on /proc/PID/pagemap

    def clear_refs(self, value) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write(str(value))
        except OSError as e:
            raise uffd_error(e.errno, "clear_refs", message=f"process {self.name}: value {value!r}") from None

    def smaps_private_dirty(self, addr) -> int:
        import psutil
        for m in psutil.Process(self.pid).memory_maps(grouped=False):
            lo, hi = (int(x, 16) for x in m.addr.split("-"))
            if lo <= addr < hi:
                return m.private_dirty
        raise uffd_error(E.ENOENT, "smaps", addr, message=f"no mapping of process {self.name} contains this address")

    # -- processes and uffds of the child ---------------------------------------------
    def fork_access(self, name: str) -> Access:
        """The child forks (a grandchild): an Access whose result() is the new KernelProcess."""
        return _ForkAccess(self, name, self._submit(self._lib.UFFDCTL_PROC_FORK, kind="fork"))

    def userfaultfd(self, flags=uapi.O_CLOEXEC | uapi.O_NONBLOCK, via="syscall"):
        """A uffd opened by the child in its own mm (fd passed back in SCM_RIGHTS): the parent drives it."""
        fut = self.call(self._lib.UFFDCTL_PROC_USERFAULTFD, flags, 1 if via == "dev" else 0,
                        what="userfaultfd" if via != "dev" else "USERFAULTFD_IOC_NEW")
        u = self._b.adopt_uffd(fut.fd)     # the daemon owns it, as every uffd of the session
        u.via, u.flags, u.features = f"{via} (in {self.name})", flags, 0
        return u

    # -- exit ---------------------------------------------------------------------------
    def kill(self, sig: int = _signal.SIGKILL) -> None:
        self._not_reaped()
        _signal.pidfd_send_signal(self._pidfd, sig)

    def wait(self, timeout: float) -> dict | None:
        if self._exit is not None:
            return self._exit
        r, _, _ = select.select([self._pidfd], [], [], max(timeout, 0))
        if not r:
            return None
        if self.parent is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return None
        else:   # a grandchild: only its parent (a child of ours) can reap it
            fut = self.parent.call(self.parent._lib.UFFDCTL_PROC_WAITPID, self.pid, os.WNOHANG, what="waitpid")
            if fut.rep["ret"] == 0:
                return None
            status = fut.rep["si_code"]
        self._exit = decode_status(self.pid, status)
        return self._exit

    def _kill_and_reap(self) -> None:
        try:
            self.kill(_signal.SIGKILL)
        except (OSError, ProcessError):
            pass
        try:
            self.wait(5.0)
        except (OSError, UffdctlError):
            pass

    def _release(self) -> None:
        """Close the socket and the /proc fds."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._q.put(None)
        self._worker.join(5.0)
        self._sock.close()
        for fd in (self._pidfd, self._pagemap_fd):
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._pagemap_fd = -1

    @property
    def _busy_now(self) -> str | None:
        return self.busy_what if (self.busy is not None and not self.busy.done) else None


__all__ = ["KernelProcess", "Process", "ProcessError", "decode_status"]
