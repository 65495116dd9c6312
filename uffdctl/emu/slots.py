"""Makers of the objects the emulator builds on every fault round trip (struct vm_fault, the wait-queue
entry, the uffd_msg, the handler's log entry, PTEs, folios).

``slot_maker(cls, names, fallback, **fixed)`` returns a callable ``make(*values)`` that builds a ``cls``
with ``values`` in the slots ``names`` and ``fixed`` in all the others, as ``object.__new__(cls)`` and
one store per slot would, without running ``__init__``.  Where the C extension ``uffdctl._slots``
(cdefs/uffdctl_slots.c) is built it writes the slots by offset: ~500 instructions an object instead of
~2,500 for the Python call (callgrind; docs/performance.md).  Elsewhere, with ``UFFDCTL_NO_FASTPATH=1``,
or for a class it cannot make (no ``__slots__``, a ``__new__`` of its own, a slot left out) it returns
``fallback``: the Python constructor it stands for, which stays the specification --
tests/test_emu_slots.py holds the two equal slot by slot.
"""
from __future__ import annotations

import os

try:
    from .._slots import SlotMaker
except ImportError:                      # not built: the Python constructors serve
    SlotMaker = None


def all_slots(cls) -> tuple[str, ...]:
    """Every slot of ``cls`` (its MRO's ``__slots__``, base classes first); () if one of them has none."""
    out: list[str] = []
    for c in reversed(cls.__mro__[:-1]):          # without object
        s = c.__dict__.get("__slots__")
        if s is None:
            return ()
        out += [s] if isinstance(s, str) else list(s)
    return tuple(n for n in out if n not in ("__dict__", "__weakref__"))


def slot_maker(cls, names: tuple[str, ...], fallback, **fixed):
    """``make(*values)``: a ``cls`` with ``values`` in ``names`` and ``fixed`` elsewhere (see the module)."""
    if SlotMaker is None or os.environ.get("UFFDCTL_NO_FASTPATH") == "1":
        return fallback
    slots = all_slots(cls)
    if not slots or cls.__new__ is not object.__new__ or sorted(slots) != sorted((*names, *fixed)):
        return fallback
    return SlotMaker(cls, tuple(names), tuple(fixed.items()))
