"""Counting TLB flushes on the real kernel: the ``tlb:tlb_flush`` tracepoint (pte_flags_need_flush(): a write-protect of a writable PTE needs one).

A private tracefs instance (``instances/uffdctl-repro-PID``) so the global
trace buffer is left alone; the event is filtered on the thread that issues the
ioctls (``common_pid`` is a tid).  One flush of the caller's own CPU shows up
as a *local* shootdown event (reason 2 or 3, matched by number); a flush that also needs other
CPUs adds a "remote IPI send" event (4) from the same thread, which is the same
flush and is not counted again.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading

TRACEFS = "/sys/kernel/tracing"
EVENT = "events/tlb/tlb_flush"
# enum tlb_flush_reason: TLB_LOCAL_SHOOTDOWN = 2, TLB_LOCAL_MM_SHOOTDOWN = 3 (the printed names differ
# between kernels: "local mm shootdown" on 6.1, "local MM shootdown" on 6.18; the numbers do not)
LOCAL_REASONS = (2, 3)
_REASON = re.compile(r"tlb_flush: .*reason:.*\((\d+)\)\s*$")


class TlbTraceUnavailable(Exception):
    pass


def _ensure_tracefs() -> str:
    if os.path.exists(os.path.join(TRACEFS, EVENT)):
        return TRACEFS
    if not os.path.isdir(TRACEFS):
        raise TlbTraceUnavailable(f"{TRACEFS} does not exist (no tracefs in this kernel)")
    if os.geteuid() != 0:
        raise TlbTraceUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it needs root")
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        raise TlbTraceUnavailable(f"cannot mount tracefs at {TRACEFS}: {e}") from None
    if not os.path.exists(os.path.join(TRACEFS, EVENT)):
        raise TlbTraceUnavailable(f"{TRACEFS}/{EVENT} missing (kernel without the tlb:tlb_flush tracepoint)")
    return TRACEFS


class TlbTrace:
    """``with TlbTrace() as t: ...; t.take()`` -> flushes since the last take (of this thread)."""

    def __init__(self, tid: int | None = None):
        root = _ensure_tracefs()
        self.tid = tid or threading.get_native_id()
        self.dir = os.path.join(root, "instances", f"uffdctl-repro-{os.getpid()}-{self.tid}")
        try:
            os.mkdir(self.dir)
        except FileExistsError:
            pass
        except OSError as e:
            raise TlbTraceUnavailable(f"cannot create a tracefs instance ({self.dir}): {e.strerror}") from None
        try:
            self._write(f"{EVENT}/filter", f"common_pid == {self.tid}")
            self._write(f"{EVENT}/enable", "1")
            self._write("trace", "")
        except OSError as e:
            self.close()
            raise TlbTraceUnavailable(f"cannot enable {EVENT} in {self.dir}: {e.strerror}") from None

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir, rel), "w") as f:
            f.write(text)

    def take(self) -> int:
        """Flushes recorded since the previous take; the buffer is cleared."""
        with open(os.path.join(self.dir, "trace")) as f:
            lines = [ln for ln in f if "tlb_flush:" in ln]
        self._write("trace", "")
        return sum(1 for ln in lines if (m := _REASON.search(ln)) and int(m.group(1)) in LOCAL_REASONS)

    def close(self) -> None:
        try:
            self._write(f"{EVENT}/enable", "0")
        except OSError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
