"""Emulated processes: a child forked from the emulator's process (or from another child), with its own mm
(``kernel.fork.dup_mmap``), its only thread, its regions, and the exit and reaping rules of the kernel
backend's children (:class:`uffdctl.process.KernelProcess`), which it mirrors call for call: the same
methods, results and errors, so a script says the same thing on both backends.

What the children of the kernel backend do that this one says instead:

* the only thread is busy while an access (or a fork waiting for its FORK message to be read) is blocked:
  any other request is refused with the same ProcessError;
* ``kill``: a signal whose default action terminates (SIGKILL, SIGTERM, ...) ends the process at once
  (exit_mmap(): its mappings go, so pages the parent still maps are exclusive to it again), and waitpid
  reaps it; SIGCHLD / SIGURG / SIGWINCH / SIGCONT are ignored; stop signals, and SIGBUS / SIGSEGV sent to a
  process blocked in an access (its handler would end the access), are not modelled;
* ``waitpid`` never sleeps: the emulated world changes only through calls, so a live process is still
  running after any timeout.
"""
from __future__ import annotations

import dataclasses
import errno as E
import resource
import signal as _signal

from .. import uapi
from ..backend import Access, Process, Thread, decode_status
from ..errors import NotModelled, ProcessError, UffdError, uffd_error
from ..types import AccessResult, MemType, Region
from .fs.proc import task_mmu
from .kernel.fork import exit_mmap
from .sched import SyscallTask
from .mm.mm_types import VM_READ, VM_WRITE

_IGNORED = {_signal.SIGCHLD, _signal.SIGURG, _signal.SIGWINCH, _signal.SIGCONT}
_STOP = {_signal.SIGSTOP, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU}
_CORE = {_signal.SIGQUIT, _signal.SIGILL, _signal.SIGTRAP, _signal.SIGABRT, _signal.SIGBUS, _signal.SIGFPE,
         _signal.SIGSEGV, _signal.SIGXCPU, _signal.SIGXFSZ, _signal.SIGSYS}
MAX_READ = 64 << 20
SEGV_MAPERR, SEGV_ACCERR = 1, 2


class _ProcThread(Thread):
    """The only thread of an emulated child (an emulator thread on the child's mm, tid = pid)."""

    def __init__(self, proc: "EmuProcess", thread):
        self._p, self._t = proc, thread
        self.name = "main"
        self.tid = thread.tid = proc.pid

    def access(self, addr, len, write, data=None, fill=0, stride=0, want_data=False) -> Access:
        if data is not None and not write:
            raise ValueError("data is for writes")
        if want_data and len > MAX_READ:
            raise ValueError(f"read of {len} bytes: at most {MAX_READ} from a child")
        self._p._ready("touch")
        return _ChildAccess(self._t.access(addr, len, write, data=data, fill=fill, stride=stride,
                                           want_data=want_data))

    def faults(self) -> tuple[int, int]:
        return self._t.faults()

    @property
    def busy(self) -> bool:
        return self._t.busy


class _ChildAccess(Access):
    """An access by a child: a SIGSEGV is its result (the child's command loop catches it), as on the kernel."""

    def __init__(self, acc):
        self._a = acc

    def wait(self, timeout=None) -> bool:
        return self._a.wait(timeout)

    @property
    def done(self) -> bool:
        return self._a.done

    @property
    def waiter(self):
        return self._a.waiter

    @property
    def blocks(self) -> int:
        return self._a.blocks

    def result(self) -> AccessResult:
        a = self._a
        if a.done and a._segv is not None:
            vma = a.mm.find_vma(a._segv)
            denied = vma is not None and (a.write and not vma.flags & VM_WRITE or not vma.flags & (VM_READ | VM_WRITE))
            r = dataclasses.replace(a._res, si_code=SEGV_ACCERR if denied else SEGV_MAPERR, fault_addr=a._segv,
                                    data=None)
            r.sigsegv = True
            return r
        r = a.result()
        r.sigsegv = False
        return r


class EmuCall(Access):
    """A system call issued from a job thread (sched.SyscallTask): done once it has returned."""

    def __init__(self, backend, task):
        self._b, self._t = backend, task

    def wait(self, timeout=None) -> bool:
        if not self._t.done:
            self._b._rq.run()
        return self._t.done      # the emulated world changes only through calls: never worth sleeping for

    @property
    def done(self) -> bool:
        return self._t.done

    def result(self):
        if not self._t.done:
            raise RuntimeError("still blocked in the kernel")
        if self._t.exc is not None:
            raise self._t.exc
        return self._t.value


class _ForkAccess(Access):
    """fork(2) in progress: done once every FORK message it raised has been read (or dropped)."""

    def __init__(self, backend, child: "EmuProcess"):
        self._b, self._child, self._done = backend, child, False
        self._exc: BaseException | None = None
        self.fatal_signal = None          # set by the backend: the forking task dies before fork() returns

    def finish(self) -> None:
        self._done = True

    def fail(self, exc: BaseException) -> None:
        self._exc, self._done = exc, True

    @property
    def result_pid(self) -> int:
        return self._child.pid

    def wait(self, timeout=None) -> bool:
        if not self._done:
            self._b._rq.run()
        return self._done     # nothing else can read the message meanwhile: never worth sleeping for

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> "EmuProcess":
        if not self._done:
            raise RuntimeError("fork still blocked: its FORK message has not been read")
        if self._exc is not None:
            raise self._exc
        return self._child


class EmuProcess(task_mmu.TaskMmuFiles, Process):
    """A child of the emulated process: its own mm, one thread (``main``), the parent's regions at fork
    time (a MADV_DONTFORK one is there by name and faults SIGSEGV, as on the kernel)."""

    _answer_timeout = 0               # nothing else runs meanwhile: an access done at all is done at once

    def __init__(self, backend, name: str, pid: int, mm, parent: "EmuProcess | None", regions: dict, thread):
        self._b = backend
        self.name, self.pid, self.mm, self.parent = name, pid, mm, parent
        self.regions: dict[str, Region] = dict(regions)
        self.children: list[EmuProcess] = []
        self._thread = _ProcThread(self, thread)
        self._status: int | None = None      # the wait status once it has died
        self._exit: dict | None = None        # once reaped
        self._closed = False
        self._forking: _ForkAccess | None = None
        self._calling = None                  # submit_call(): the system call its only thread is in

    # -- the only thread ----------------------------------------------------------------
    def _ready(self, what: str) -> None:
        if self._closed:
            raise ProcessError(f"process {self.name} is closed")
        if self._status is not None:
            raise ProcessError(f"process {self.name} (pid {self.pid}) is gone")
        busy = self.busy_what
        if busy and not (self._calling is not None and self._b._rq.current is self._calling):
            raise ProcessError(f"process {self.name} (pid {self.pid}) is still busy with {busy}: its only thread "
                               f"is blocked (resolve the fault, read the event, or kill it)")

    @property
    def busy_what(self) -> str | None:
        if self._forking is not None and not self._forking.done:
            return "fork"
        if self._calling is not None and not self._calling.done:
            return self._calling.what
        return "touch" if self._thread.busy else None

    def submit_call(self, what: str, fn) -> Access:
        """Run ``fn`` (one system call of this process) on its only thread without waiting: a sched.SyscallTask
        that sleeps where the kernel's call would (an event not read yet, a fault in mlock's populate); the
        process is busy with it until it returns."""
        self._ready(what)
        task = SyscallTask(self._b._rq, fn)
        task.thread, task.what = self._thread._t, what
        self._calling = task
        self._b._rq.enqueue(task)
        self._b._rq.run()
        return EmuCall(self._b, task)

    def _call(self, what: str, fn, start=None, length=None):
        self._ready(what)
        try:
            return fn()
        except UffdError as e:
            raise uffd_error(e.errno, what, start, length, message=f"in process {self.name}") from None

    def faults(self) -> tuple[int, int]:
        if self._exit is not None:        # a zombie's /proc/PID/stat still counts; a reaped one is gone
            raise ProcessError(f"process {self.name} (pid {self.pid}) is gone")
        return self._thread.faults()

    # -- system calls in the child --------------------------------------------------------
    def madvise(self, addr, len, advice):
        self._call("madvise", lambda: self._b.madvise(addr, len, advice, mm=self.mm), addr, len)

    def _munmap(self, addr, len):
        self._call("munmap", lambda: self._b.munmap(addr, len, mm=self.mm), addr, len)

    def mprotect(self, addr, len, prot):
        self._call("mprotect", lambda: self._b.mprotect(addr, len, prot, mm=self.mm), addr, len)

    def mremap(self, old, old_len, new_len, flags=0, new_addr=0):
        return self._call("mremap", lambda: self._b.mremap(old, old_len, new_len, flags, new_addr, mm=self.mm),
                          old, old_len)

    def _mmap_anon(self, len, prot, addr):
        v = self._call("mmap", lambda: self.mm.mmap(len, MemType.ANON, prot, addr), addr, len)
        if isinstance(v, int):
            raise uffd_error(-v, "mmap", addr, len, message=f"in process {self.name}")
        return v.start

    def write(self, addr, data) -> None:
        acc = self._thread.access(addr, len(data), True, data=bytes(data))
        if not acc.wait(0):
            raise ProcessError(f"write in process {self.name} (pid {self.pid}) has not returned: blocked in the "
                               f"kernel (an event waiting to be read? see events, read)")
        res = acc.result()
        if res.sigbus or res.sigsegv:
            raise uffd_error(E.EFAULT, "write", addr, len(data), message=f"in process {self.name}")

    # -- /proc/PID views --------------------------------------------------------------------
    def pagemap(self, addr, npages) -> list[int]:
        if self.mm.exited:
            return []                     # pagemap_read() of a task without an mm reads nothing
        return task_mmu.pagemap_read(self.mm, addr, npages)

    def pagemap_array(self, addr, npages):
        from array import array
        return array("Q", self.pagemap(addr, npages))

    # clear_refs, pagemap_scan, smaps_private_dirty, pte_bits, vma_bounds: task_mmu.TaskMmuFiles, as the
    # emulated process itself
    @property
    def _task_label(self) -> str:
        return f"process {self.name}"

    # -- processes and uffds of the child -------------------------------------------------------
    def fork_access(self, name: str) -> Access:
        """The child forks (a grandchild): an Access whose result() is the new EmuProcess."""
        self._ready("fork")
        self._forking = self._b._fork(self.mm, name, dict(self.regions), self)
        return self._forking

    def userfaultfd(self, flags=uapi.O_CLOEXEC | uapi.O_NONBLOCK, via="syscall"):
        """A uffd opened by the child in its own mm; the session drives it."""
        self._ready("userfaultfd" if via != "dev" else "USERFAULTFD_IOC_NEW")
        u = self._b.userfaultfd(flags, via=via, mm=self.mm)
        u.via = f"{via} (in {self.name})"
        return u

    # -- exit ------------------------------------------------------------------------------------
    def kill(self, sig: int = _signal.SIGKILL) -> None:
        self._not_reaped()
        if self._status is not None or sig in _IGNORED:
            return                         # a zombie, or the default action is to ignore it
        if sig in _STOP:
            raise NotModelled(f"kill --signal {_signal.Signals(sig).name} (a stopped process)")
        if sig in (_signal.SIGBUS, _signal.SIGSEGV) and self._thread.busy:
            raise NotModelled(f"kill --signal {_signal.Signals(sig).name} during a blocked access")
        core = sig in _CORE and resource.getrlimit(resource.RLIMIT_CORE)[0] != 0
        self.die(sig | (0x80 if core else 0))

    def die(self, status: int) -> None:
        """do_exit(): the blocked access (if any) goes with the task -- and a fork it is blocked in, which
        then creates no child -- then exit_mmap()."""
        if self._forking is not None and not self._forking.done:
            self._forking.fatal_signal()
        if self._calling is not None and not self._calling.done:
            self._calling.fatal_signal()     # a --thread system call asleep in the kernel
        self._b._cancel_thread(self._thread._t)
        exit_mmap(self.mm)
        self._status = status
        self._b._rq.run()

    def wait(self, timeout: float) -> dict | None:
        if self._exit is not None:
            return self._exit
        if self.parent is not None and self.parent._status is not None:
            raise ProcessError(f"process {self.parent.name} (pid {self.parent.pid}) is gone")
        if self._status is None:
            return None
        self._exit = decode_status(self.pid, self._status)
        return self._exit

    def _kill_and_reap(self) -> None:
        """Never blocks."""
        if self._status is None:
            self.die(_signal.SIGKILL)
        self._exit = decode_status(self.pid, self._status)

    @property
    def _busy_now(self) -> str | None:
        return self.busy_what if self._status is None else None


__all__ = ["EmuProcess"]
