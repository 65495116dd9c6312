"""The emulator's per-fault objects made by slot offset (uffdctl/emu/slots.py, cdefs/uffdctl_slots.c):
each maker builds what its Python constructor builds, slot by slot (tests/test_emu.py holds the makers to the
class calls); it refuses what it cannot make; and a
fault round trip comes out the same with the C makers and without them (UFFDCTL_NO_FASTPATH=1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from uffdctl.emu import slots
from uffdctl.emu.backend import _handled
from uffdctl.emu.fs.userfaultfd import Waiter, _new_waiter, _pagefault_msg
from uffdctl.emu.mm import mm_types as T
from uffdctl.types import HandledEvent, UffdMsg


def _built() -> bool:
    try:
        import uffdctl._uffd  # noqa: F401  (the cffi extension: a compiler was there)
    except ImportError:
        return False
    return True


def _state(o) -> dict:
    return {s: getattr(o, s) for s in slots.all_slots(type(o))}


def test_the_c_makers_are_built_where_the_extensions_are():
    """Where the package built its C extensions the slot makers are C (no silent fallback to Python)."""
    if not _built():
        pytest.skip("uffdctl._uffd is not built here (no compiler): only the Python constructors exist")
    assert slots.SlotMaker is not None, "uffdctl._slots did not build beside uffdctl._uffd"
    if os.environ.get("UFFDCTL_NO_FASTPATH") != "1":
        for m in (T.new_present_pte, T.new_anon_page, T.new_vmf, _new_waiter, _pagefault_msg, _handled):
            assert isinstance(m, slots.SlotMaker), m


@pytest.mark.parametrize("make, python, args", [
    (T.new_present_pte, T._new_present_pte, ("PAGE", True, True, True, True, False, False)),
    (T.new_present_pte, T._new_present_pte, ("PAGE", False, False, True, False, True, True)),
    (T.new_anon_page, T._new_anon_page, (0x12345, bytearray(b"abc"))),
    (T.new_anon_page, T._new_anon_page, (1 << 45, None)),
    (T.new_vmf, T.VmFault, ("VMA", 0x7f0000001234, 0x7f0000001000, True, None, "TASK")),
    (_new_waiter, Waiter, ("MSG", "ACCESS")),
    (_pagefault_msg, UffdMsg, (0x12, 3, 0x7f0000001000, 4_000_001)),
    (_handled, HandledEvent, ("MSG", "copy", -17, 4096)),
], ids=["pte-write", "pte-zero", "folio", "folio-high-pfn", "vmf", "waiter", "uffd_msg", "handled"])
def test_a_maker_builds_what_its_constructor_builds(make, python, args):
    got, ref = make(*args), python(*args)
    assert type(got) is type(ref)
    assert _state(got) == _state(ref)
    assert all(getattr(got, s) is getattr(ref, s) for s in slots.all_slots(type(ref))
               if isinstance(getattr(ref, s), (str, bytearray)) or getattr(ref, s) is None)


@pytest.mark.skipif(slots.SlotMaker is None, reason="uffdctl._slots is not built")
def test_a_maker_holds_its_references_and_checks_its_arguments():
    class K:
        __slots__ = ("a", "b")
    val = object()
    before = sys.getrefcount(val), sys.getrefcount(K)
    mk = slots.SlotMaker(K, ("a",), (("b", 7),))
    objs = [mk(val) for _ in range(1000)]
    assert objs[0].a is val and objs[0].b == 7
    assert sys.getrefcount(val) == before[0] + 1000
    del objs
    assert (sys.getrefcount(val), sys.getrefcount(K)) == (before[0], before[1] + 1)   # + mk's own
    with pytest.raises(TypeError, match="exactly 1 positional"):
        mk()
    with pytest.raises(TypeError, match="exactly 1 positional"):
        mk(1, 2)
    with pytest.raises(TypeError):
        mk(a=1)
    with pytest.raises(TypeError, match="not a writable object slot"):
        slots.SlotMaker(K, ("a", "c"), ())


def test_slot_maker_falls_back_where_it_cannot_make_the_class(monkeypatch):
    class Slotted:
        __slots__ = ("a", "b")

    class NoSlots:
        pass

    class OwnNew:
        __slots__ = ("a",)

        def __new__(cls, *a):
            return super().__new__(cls)

    fb = object()
    assert slots.slot_maker(Slotted, ("a",), fb) is fb                  # b left out
    assert slots.slot_maker(NoSlots, (), fb) is fb
    assert slots.slot_maker(OwnNew, ("a",), fb) is fb
    monkeypatch.setenv("UFFDCTL_NO_FASTPATH", "1")
    assert slots.slot_maker(Slotted, ("a", "b"), fb) is fb
    monkeypatch.delenv("UFFDCTL_NO_FASTPATH")
    if slots.SlotMaker is not None:
        assert isinstance(slots.slot_maker(Slotted, ("a",), fb, b=1), slots.SlotMaker)


ROUND_TRIP = r"""
import json
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.emu import EmuBackend
from uffdctl.emu.mm import mm_types
PS = uapi.PAGE_SIZE
b = EmuBackend(profile="6.18", soft_dirty=True)
r = b.mmap(64 * PS, MemType.ANON)
src = b.mmap(64 * PS, MemType.ANON)
b.write(src.addr, b"s" * (3 * PS))
u = b.userfaultfd()
u.api(int(uapi.Feature.THREAD_ID))
u.register(r.addr, r.len, uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
h = b.fault_handler(u, HandlerPolicy(missing="copy", src=src.addr, base=r.addr, page_size=PS))
res = b.thread("t").access(r.addr, r.len, True, fill=7, stride=2 * PS).wait(1)
u.writeprotect(r.addr, 8 * PS, uapi.WriteprotectMode.WP)
print(json.dumps({"maker": type(mm_types.new_present_pte).__name__, "stats": h.stats(),
                  "events": [e.to_dict() | {"ts_ns": 0} for e in h.events()],
                  "pagemap": [str(e) for e in b.pagemap(r.addr, 64)] + [str(e) for e in b.pagemap(src.addr, 64)],
                  "data": b.read(r.addr, 8 * PS).hex()}))
h.stop()
b.close()
"""


def test_a_fault_round_trip_is_the_same_with_and_without_the_c_makers():
    out = {}
    for fast in ("0", "1"):
        env = {**os.environ, "UFFDCTL_NO_FASTPATH": "1" if fast == "0" else "0"}
        # cwd "/": the installed package (a checkout's uffdctl/ has no built extension beside its sources)
        r = subprocess.run([sys.executable, "-c", ROUND_TRIP], capture_output=True, text=True, env=env, timeout=120,
                           cwd="/")
        assert r.returncode == 0, r.stderr
        out[fast] = json.loads(r.stdout)
    assert out["0"].pop("maker") == "function"
    maker = out["1"].pop("maker")
    assert maker == ("SlotMaker" if slots.SlotMaker is not None else "function")
    assert out["1"]["stats"]["resolved"] == 32
    assert out["0"] == out["1"]
