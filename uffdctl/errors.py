"""One exception family: every error uffdctl raises, and its wire form.

Every class derives from :class:`UffdctlError`, which carries ``exit_code`` (the
CLI's exit status: 1 failed, 2 usage, 4 unsupported here).  The ioctl errors
(:class:`UffdError` and its errno subclasses) carry the errno, the ioctl name,
the range and **done**: the struct's last field (bytes done, or -errno), which
is how the kernel reports partial progress.  Backends raise these directly
(thin: fill the struct, call, raise with the struct's result field); policy
(EEXIST -> wake, EAGAIN -> resume at dst+done) lives one layer up in uffdctl.ops.

:func:`to_wire` is the one JSON form of an error (session socket, ``-j``
output, ``run`` logs) and :func:`from_wire` the one way back: it rebuilds the
original class with its message, errno, ioctl and done, so ``except PageExists``
works the same through a session as in-process.  An exception from outside the
family (a bug) travels as :class:`RemoteError`, naming its type.

This module is a leaf: it imports nothing of uffdctl.
"""
from __future__ import annotations

import errno as _errno
import os


class UffdctlError(Exception):
    """Base of every uffdctl exception; ``exit_code`` is the CLI's exit status for it."""

    __module__ = "uffdctl"
    exit_code = 1

    def to_dict(self) -> dict:
        """The wire form (see :func:`to_wire`)."""
        return {"type": type(self).__name__, "errno": None, "ioctl": None, "message": str(self),
                "exit": self.exit_code}

    @classmethod
    def _from_wire(cls, d: dict) -> "UffdctlError":
        return cls(d.get("message") or "")


class UffdError(UffdctlError, OSError):
    """A userfaultfd ioctl (or related syscall) failed.

    :ivar errno: the errno the kernel (or the emulator) returned
    :ivar ioctl: ``"UFFDIO_COPY"`` etc.
    :ivar start: range start (``dst`` for COPY/MOVE), or None
    :ivar len: range length, or None
    :ivar done: the result field (``copy``/``zeropage``/``mapped``/``updated``/``move``):
        bytes done, or -errno when nothing was done; None when the ioctl has no
        result field or argument validation failed before it was written.
    """

    __module__ = "uffdctl"

    def __init__(self, err: int, ioctl: str, start: int | None = None, len: int | None = None,
                 done: int | None = None, message: str | None = None):
        OSError.__init__(self, err, os.strerror(err))
        self.ioctl = ioctl
        self.start = start
        self.len = len
        self.done = done
        self.message = message

    def __str__(self) -> str:
        parts = [f"{self.ioctl}: {_errno.errorcode.get(self.errno, self.errno)} ({self.strerror})"]
        if self.start is not None:
            parts.append(f"start=0x{self.start:x}")
        if self.len is not None:
            parts.append(f"len=0x{self.len:x}")
        if self.done is not None:
            parts.append(f"done={self.done}")
        s = " ".join(parts)
        if self.message:
            s += f": {self.message}"
        return s

    def __reduce__(self):
        return (uffd_error, (self.errno, self.ioctl, self.start, self.len, self.done, self.message))

    def to_dict(self) -> dict:
        return {
            "type": type(self).__name__,
            "errno": self.errno,
            "errno_name": _errno.errorcode.get(self.errno, str(self.errno)),
            "ioctl": self.ioctl,
            "start": self.start,
            "len": self.len,
            "done": self.done,
            "message": str(self),
            "detail": self.message,
            "exit": self.exit_code,
        }

    @classmethod
    def _from_wire(cls, d: dict) -> "UffdError":
        err = d.get("errno")
        if not isinstance(err, int):
            err = getattr(_errno, str(d.get("errno_name")), 0)
        e = cls(err, d.get("ioctl") or "", d.get("start"), d.get("len"), d.get("done"), d.get("detail"))
        return e


class PageExists(UffdError):
    """EEXIST: the first page of the range is already mapped (done == -EEXIST)."""


class RetryLater(UffdError):
    """EAGAIN: partial progress (done = bytes done) or mmap changing; resume at start+done."""


class InvalidArgument(UffdError):
    """EINVAL."""


class NotFound(UffdError):
    """ENOENT: no registered VMA covers the range (or MOVE src hole)."""


class BadAddress(UffdError):
    """EFAULT."""


class Busy(UffdError):
    """EBUSY."""


class PermissionDenied(UffdError):
    """EPERM / EACCES."""


class MmGone(UffdError):
    """ESRCH: the mm of the uffd has exited."""


class OutOfMemory(UffdError):
    """ENOMEM."""


_BY_ERRNO = {
    _errno.EEXIST: PageExists,
    _errno.EAGAIN: RetryLater,
    _errno.EINVAL: InvalidArgument,
    _errno.ENOENT: NotFound,
    _errno.EFAULT: BadAddress,
    _errno.EBUSY: Busy,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.ESRCH: MmGone,
    _errno.ENOMEM: OutOfMemory,
}


def uffd_error(err: int, ioctl: str, start=None, len=None, done=None, message=None) -> UffdError:
    """The one errno -> exception class table."""
    return _BY_ERRNO.get(err, UffdError)(err, ioctl, start, len, done, message)


def from_dict(d: dict) -> UffdError:
    """The ioctl error a wire dict describes (its class chosen by errno, as :func:`uffd_error`)."""
    return uffd_error(d["errno"], d["ioctl"], d.get("start"), d.get("len"), d.get("done"), d.get("detail"))


class Unsupported(UffdctlError):
    """Something is not available here (exit code 4): carries the reason and, when known, the cure."""

    exit_code = 4

    def __init__(self, reason: str, cure: str | None = None):
        super().__init__(reason if not cure else f"{reason} ({cure})")
        self.reason = reason
        self.cure = cure

    def to_dict(self) -> dict:
        d = UffdctlError.to_dict(self)
        d.update(reason=self.reason, cure=self.cure)
        return d

    @classmethod
    def _from_wire(cls, d: dict) -> "Unsupported":
        if "reason" not in d:
            return cls(d.get("message") or "")
        return cls(d["reason"], d.get("cure"))


class BackendUnavailable(Unsupported):
    """The requested backend cannot serve here."""


class FeatureMissing(Unsupported):
    """A UFFD_FEATURE_* bit the operation needs is not offered by UFFDIO_API."""


class NotModelled(Unsupported):
    """The emulator does not model this operation yet (exit code 4): ``not modelled: fork (emulator)``.

    Raised by a backend for an operation it cannot perform faithfully, so a script or test reports
    UNSUPPORTED with the reason instead of passing on a guess.
    """

    def __init__(self, what: str, backend: str = "emulator"):
        Unsupported.__init__(self, f"not modelled: {what} ({backend})")
        self.what = what
        self.backend = backend

    def to_dict(self) -> dict:
        d = Unsupported.to_dict(self)
        d.update(what=self.what, backend=self.backend)
        return d

    @classmethod
    def _from_wire(cls, d: dict) -> "NotModelled":
        return cls(d.get("what") or d.get("message") or "", d.get("backend") or "emulator")


# -- usage, sessions, scripts ------------------------------------------------------------------
class UsageError(UffdctlError, ValueError):
    """Bad input (exit code 2): nothing was changed."""

    exit_code = 2


class ProcessError(UffdctlError):
    """A process of the session (a forked child) cannot do what was asked: gone, busy, or blocked (exit 1)."""


class HelpRequested(UsageError):
    """``--help`` on a line of a script or a reproduction step: there is no help to print there (exit 2)."""


class ProtocolError(UffdctlError):
    """A session message that is not JSON, not an object, of another version or too large (exit 2)."""

    exit_code = 2


class SessionGone(UffdctlError):
    """The session is not running, died, or closed the connection (exit 1)."""


class RuntimeDirError(UffdctlError):
    """The session runtime directory cannot be used (another owner, not creatable): names the cure."""


class ScriptError(UffdctlError):
    """A ``run`` script line that cannot run (malformed, or an expectation that failed).

    Its wire form reports the line and, as ``type``, what went wrong on it: ``ExpectationFailed``,
    ``UsageError``, or the class of the command's own error (``PageExists``...), whose fields it carries.
    """

    def __init__(self, lineno: int, line: str, message: str, exit_code: int = 1, kind: str = "ExpectationFailed",
                 cause: dict | None = None):
        super().__init__(f"line {lineno}: {message}")
        self.lineno, self.line, self.message, self.exit_code, self.kind = lineno, line, message, exit_code, kind
        self.cause = cause or {}
        self.iteration: list[int] | None = None   # the repeat iteration(s) the line failed in, outermost first

    def __str__(self) -> str:
        it = f" (repeat iteration {'/'.join(map(str, self.iteration))})" if self.iteration else ""
        return f"line {self.lineno}{it}: {self.message}"

    def to_dict(self) -> dict:
        d = {"type": self.kind, "errno": None, "ioctl": None}
        d.update(self.cause)
        d.update(line=self.lineno, text=self.line, message=str(self), exit=self.exit_code, script_error=1)
        if self.iteration:
            d["iteration"] = self.iteration
        return d

    @classmethod
    def _from_wire(cls, d: dict) -> "ScriptError":
        msg = d.get("message") or ""
        prefix = f"line {d.get('line')}: "
        cause = {k: v for k, v in d.items() if k not in ("type", "line", "text", "message", "exit", "script_error")}
        return cls(d.get("line") or 0, d.get("text") or "", msg[len(prefix):] if msg.startswith(prefix) else msg,
                   d.get("exit", 1), d.get("type") or "ExpectationFailed", cause)


class StressFailed(UffdctlError):
    """A ``uffdctl stress`` bounce found a lost update or an ioctl failed (exit code 1)."""


class RemoteError(UffdctlError):
    """An error from outside the family (a bug, or an exception of a library), carried by its wire form:
    ``type`` names the original class, ``payload`` is the whole dict."""

    def __init__(self, payload: dict, exit_code: int = 1):
        super().__init__(payload.get("message") or payload.get("type", "error"))
        self.payload = dict(payload)
        self.type = payload.get("type")
        self.errno = payload.get("errno")
        self.exit_code = exit_code

    def to_dict(self) -> dict:
        d = dict(self.payload)
        d["exit"] = self.exit_code
        return d

    @classmethod
    def _from_wire(cls, d: dict) -> "RemoteError":
        return cls(d, d.get("exit", 1))


RemoteErrorLike = RemoteError   # the name session/commands.py used


# -- the wire form -------------------------------------------------------------------------------
def exit_code_of(e: BaseException) -> int:
    """The CLI exit status of any exception: its class's ``exit_code``, 1 outside the family."""
    return e.exit_code if isinstance(e, UffdctlError) else 1


def to_wire(e: BaseException) -> dict:
    """The one JSON form of an error: ``{"type", "errno", "ioctl", "message", "exit", ...}`` plus the fields
    of its class (UffdError: errno_name, start, len, done, detail; Unsupported: reason, cure)."""
    if isinstance(e, UffdctlError):
        return e.to_dict()
    err = getattr(e, "errno", None)
    return {"type": type(e).__name__, "errno": err if isinstance(err, int) else None, "ioctl": None,
            "message": str(e), "exit": 1}


def _classes() -> dict[str, type]:
    out, todo = {}, [UffdctlError]
    while todo:
        c = todo.pop()
        out.setdefault(c.__name__, c)
        todo.extend(c.__subclasses__())
    return out


def from_wire(d: dict, exit_code: int | None = None) -> UffdctlError:
    """Rebuild the error a wire dict describes: the original class (by ``type``) with its message, errno, ioctl,
    range and done.  A ScriptError's dict comes back as a ScriptError; anything else as a RemoteError."""
    d = dict(d or {})
    if exit_code is not None:
        d.setdefault("exit", exit_code)
    if d.get("script_error"):
        return ScriptError._from_wire(d)
    cls = _classes().get(d.get("type") or "")
    if cls is None or cls is UffdctlError:
        return RemoteError(d, d.get("exit", 1))
    if issubclass(cls, UffdError) and not isinstance(d.get("ioctl"), str):
        return RemoteError(d, d.get("exit", 1))
    return cls._from_wire(d)
