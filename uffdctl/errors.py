"""One exception family for everything a uffd ioctl can say.

Backends raise these directly (thin: fill the struct, call, raise with the
struct's result field); policy (EEXIST -> wake, EAGAIN -> resume at dst+done)
lives one layer up in uffdctl.ops.  Every error carries the errno, the ioctl
name, the range and **done**: the struct's last field (bytes done, or -errno),
which is how the kernel reports partial progress.
"""
from __future__ import annotations

import errno as _errno
import os


class UffdctlError(Exception):
    """Base of every uffdctl exception."""

    __module__ = "uffdctl"
    exit_code = 1


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
        }


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
    return uffd_error(d["errno"], d["ioctl"], d.get("start"), d.get("len"), d.get("done"))


class Unsupported(UffdctlError):
    """Something is not available here (exit code 4): carries the reason and, when known, the cure."""

    exit_code = 4

    def __init__(self, reason: str, cure: str | None = None):
        super().__init__(reason if not cure else f"{reason} ({cure})")
        self.reason = reason
        self.cure = cure


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
