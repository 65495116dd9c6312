"""The event log never renumbers and never drops silently (issue 11.6).

The native handler's log is a bounded ring: under a fault storm with a resolving policy the oldest
entries are overwritten before anyone reads them.  Each entry carries its position in the stream the
handler read (``seq``, set in C), so the session keeps the numbers and says what is missing and why.
"""
from __future__ import annotations

import pytest

from conftest import make_backend, registered
from uffdctl import uapi
from uffdctl.backend import Handler
from uffdctl.emu.backend import EmuHandler
from uffdctl.handler import NativeHandler
from uffdctl.session.commands import execute
from uffdctl.session.state import SessionState
from uffdctl.types import HandledEvent, HandlerPolicy, UffdMsg

P = uapi.PAGE_SIZE


def _ring_of_8(name):
    """64 zeropage faults through a handler whose log keeps 8: the seqs left, and the stats."""
    b = make_backend(name)
    try:
        r, u = registered(b, pages=64, mode=int(uapi.RegisterMode.MISSING))
        policy = HandlerPolicy(missing="zeropage")
        h = NativeHandler(u, policy, log_cap=8) if name == "kernel" else EmuHandler(b, u, policy, log_cap=8)
        h.start()
        acc = b.thread("t").access(r.addr, r.len, False, stride=P)
        assert acc.wait(30), "the zeropage handler did not resolve the touch"
        h.stop()
        seqs = [e.seq for e in h.events()]
        st = h.stats()
        again = [e.seq for e in h.events()]
        return seqs, st["dropped"], st["msgs"], again
    finally:
        b.close()


@pytest.mark.parametrize("name", ["kernel", "emu"])
def test_log_numbers_survive_overwrites(name):
    """A ring of 8 entries, 64 zeropage faults: the 8 left are seq 57-64 and stats say 56 dropped -- the
    emulator's handler keeps the native ring's bound and numbers, so a session reports the same gap."""
    seqs, dropped, msgs, again = _ring_of_8(name)
    assert seqs == list(range(57, 65)), seqs
    assert (dropped, msgs) == (56, 64)
    assert again == []


def test_emu_log_numbers_continue_across_drains():
    """Drained in two halves, the numbers go on where the first drain stopped; nothing is dropped."""
    b = make_backend("emu")
    try:
        r, u = registered(b, pages=8, mode=int(uapi.RegisterMode.MISSING))
        h = EmuHandler(b, u, HandlerPolicy(missing="zeropage"), log_cap=8)
        h.start()
        t = b.thread("t")
        assert t.access(r.addr, 4 * P, False, stride=P).wait(5)
        first = [e.seq for e in h.events()]
        assert t.access(r.addr + 4 * P, 4 * P, False, stride=P).wait(5)
        second = [e.seq for e in h.events()]
        h.stop()
        assert (first, second, h.stats()["dropped"]) == ([1, 2, 3, 4], [5, 6, 7, 8], 0)
    finally:
        b.close()


class _Ring(Handler):
    """A handler whose log lost entries 3-4 (what a full ring does), for the session's bookkeeping."""

    log_cap = 2

    def __init__(self, seqs):
        self.seqs = list(seqs)
        self.policy = HandlerPolicy(missing="zeropage")

    def start(self):
        pass

    def stop(self):
        pass

    def stats(self):
        return {}

    def events(self):
        out = [HandledEvent(UffdMsg(event=uapi.Event.PAGEFAULT, address=0x1000 * s), "zeropage", seq=s)
               for s in self.seqs]
        self.seqs = []
        return out


def test_session_keeps_seq_and_says_what_was_dropped():
    st = SessionState("emu", name="ev")
    try:
        st.handler = _Ring([1, 2, 5, 6])
        st.policy = st.handler.policy
        r = execute(st, "events", {})
        seqs = [(e["seq"], e["event"]) for e in r["events"]]
        assert seqs == [(1, "pagefault"), (2, "pagefault"), (4, "dropped"), (5, "pagefault"), (6, "pagefault")]
        drop = r["events"][2]
        assert (drop["first_seq"], drop["last_seq"], drop["count"]) == (3, 4, 2)
        assert "keeps the newest 2 messages" in drop["reason"] and "resolved their faults" in drop["reason"]
        st.handler.seqs = [7, 8]
        assert [e["seq"] for e in execute(st, "events", {"since": 5})["events"]] == [6, 7, 8]
        assert [e["seq"] for e in execute(st, "events", {"last": 2})["events"]] == [7, 8]
        from uffdctl.cli.output import render
        assert "#3-#4 dropped: 2 messages not in the log" in render("events", r)
    finally:
        st.handler = None
        st.close()


@pytest.mark.parametrize("bad", [0, -1, "x"])
def test_events_last_must_be_positive(bad):
    from uffdctl.errors import UsageError
    st = SessionState("emu", name="ev")
    try:
        with pytest.raises(UsageError):
            execute(st, "events", {"last": bad})
    finally:
        st.close()


def test_a_restarted_handler_continues_the_numbers(tmp_path):
    """Changing the policy starts a new handler; its messages continue the session's numbering."""
    st = SessionState("emu", name="ev")
    try:
        execute(st, "mmap", {"size": "16K", "name": "buf"})
        execute(st, "register", {"range": "buf", "mode": "missing"})
        execute(st, "handler", {"policy": "zeropage"})
        execute(st, "touch", {"range": "buf:0", "read": True, "wait": True, "timeout": 5})
        execute(st, "handler", {"policy": "fill", "fill": "7"})
        execute(st, "touch", {"range": "buf:1", "read": True, "wait": True, "timeout": 5})
        seqs = [e["seq"] for e in execute(st, "events", {})["events"]]
        assert seqs == sorted(set(seqs)) and seqs[0] == 1 and len(seqs) >= 2
    finally:
        st.close()
