"""What one MISSING round trip through fault_handler costs the emulator -- counted, not timed.

A thread writes every page of a MISSING-registered anon region; each write faults, the handler reads the
message, COPYs the page and wakes the thread, which retries.  The cost is the number of Python calls and
lines the package runs per fault (``sys.settrace`` inside uffdctl/), a property of the code that a loaded
machine does not change (``scripts/bench_emu.py --round-trip`` prints it beside the time).  The budget is
the cost of the tree that passed it plus a margin: a change that adds a layer to every fault has to say
so here.
"""
from __future__ import annotations

import os
import sys

import pytest

from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.emu import EmuBackend

PS = uapi.PAGE_SIZE
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from bench_emu import python_cost as cost  # noqa: E402
PAGES = 256
# measured per fault (src untouched / populated): 25 calls, 293 lines / 26, 296 with the per-fault objects made
# in C (uffdctl._slots: their constructors are no Python calls), a TLB-hit source read inline in
# mfill_atomic_anon(), and page_at() + Folio.write() of a fresh page, _finish() of a handler's whole fill and
# read_msgs()' lone fault inline where the round trip calls them; 30, 329 / 30, 320 without the C makers
# (UFFDCTL_NO_FASTPATH=1); 30, 314 / 30, 312 before those inlinings; 30, 313 / 34, 339 before the inline read;
# 41, 367 / 43, 367 before that; 54 / ~390 before that
CALLS_PER_FAULT, LINES_PER_FAULT = 32, 345


@pytest.mark.parametrize("populated", [False, True], ids=["src-untouched", "src-populated"])
def test_missing_round_trip_cost(populated):
    b = EmuBackend(profile="6.18", soft_dirty=False)
    try:
        r = b.mmap(PAGES * PS, MemType.ANON)
        src = b.mmap(PAGES * PS, MemType.ANON)
        b.write(src.addr, b"s" * (src.len if populated else PS))
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, int(uapi.RegisterMode.MISSING))
        h = b.fault_handler(u, HandlerPolicy(missing="copy", src=src.addr, base=r.addr, page_size=PS))
        t = b.thread("t")
        calls, lines = cost(lambda: t.access(r.addr, r.len, True, fill=1, stride=PS).wait(1))
        # the work was done: every page faulted once, was copied, and holds the source then the fill byte
        assert h.stats()["resolved"] == PAGES and t.faults()[0] == PAGES
        assert b.read(r.addr, 2) == b"\1s"
        assert b.read(r.addr + 5 * PS, 2) == (b"\1s" if populated else b"\1\0")
        h.stop()
        assert calls / PAGES <= CALLS_PER_FAULT, f"{calls / PAGES:.1f} Python calls per fault"
        assert lines / PAGES <= LINES_PER_FAULT, f"{lines / PAGES:.1f} Python lines per fault"
    finally:
        b.close()
