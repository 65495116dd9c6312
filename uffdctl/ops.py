"""Policy above the thin backends: resume on partial progress, treat EEXIST as a benign race.

The kernel reports partial progress in the ioctl's result field: a short count
with EAGAIN, or -EEXIST when the very first page already exists.  A caller that
wants "the whole range, whatever was there" resumes at ``dst + done`` and, for an
existing page, wakes it and steps over it (as the selftests' wake_range does).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .backend import Uffd
from .errors import PageExists, RetryLater


@dataclass
class FillResult:
    """What a ranged fill did: bytes installed, pages that already existed, ioctls issued."""

    done: int = 0
    existed: list[int] = field(default_factory=list)
    calls: int = 0

    def to_dict(self) -> dict:
        return {"done": self.done, "existed": self.existed, "calls": self.calls}


def _fill(op, uffd: Uffd, dst: int, len: int, page: int, skip_existing: bool, max_calls: int, **kw) -> FillResult:
    res = FillResult()
    pos, end = dst, dst + len
    while pos < end:
        if res.calls >= max_calls:
            raise RuntimeError(f"no progress after {max_calls} calls at 0x{pos:x}")
        res.calls += 1
        try:
            n = op(uffd, pos, end - pos, **kw)
            res.done += n
            pos += n
        except RetryLater as e:
            if e.done is None or e.done <= 0:  # mmap changing: nothing done, try again
                continue
            res.done += e.done
            pos += e.done
        except PageExists:
            if not skip_existing:
                raise
            uffd.wake(pos, page)
            res.existed.append(pos)
            pos += page
    return res


def copy_range(uffd: Uffd, dst: int, src: int, len: int, mode: int = 0, page: int = 4096,
               skip_existing: bool = False, max_calls: int = 1 << 20) -> FillResult:
    """UFFDIO_COPY the whole range: resume after short counts; with ``skip_existing`` wake and step over
    pages that exist (``src`` advances in step with ``dst``)."""
    def op(u, pos, n, mode):
        return u.copy(pos, src + (pos - dst), n, mode)
    return _fill(op, uffd, dst, len, page, skip_existing, max_calls, mode=mode)


def zeropage_range(uffd: Uffd, dst: int, len: int, mode: int = 0, page: int = 4096,
                   skip_existing: bool = False, max_calls: int = 1 << 20) -> FillResult:
    def op(u, pos, n, mode):
        return u.zeropage(pos, n, mode)
    return _fill(op, uffd, dst, len, page, skip_existing, max_calls, mode=mode)


def continue_range(uffd: Uffd, dst: int, len: int, mode: int = 0, page: int = 4096,
                   skip_existing: bool = False, max_calls: int = 1 << 20) -> FillResult:
    def op(u, pos, n, mode):
        return u.continue_(pos, n, mode)
    return _fill(op, uffd, dst, len, page, skip_existing, max_calls, mode=mode)
