"""The emulation backend: userfaultfd, pagemap and soft-dirty semantics modelled in pure Python.

``EmuBackend(profile="6.18", soft_dirty=True)`` implements :class:`uffdctl.backend.Backend`.
Layers, bottom up: ``profiles`` (kernel-version switches), ``tlb`` (x86 flush rules),
``sched`` (the run queue), ``mm`` (the address space: one module per kernel file —
memory.c, mmap.c, userfaultfd.c, mprotect.c, ...), ``fs`` (fs/userfaultfd.c: the ctx
and its ioctls; fs/proc/task_mmu.c: pagemap, clear_refs, PAGEMAP_SCAN), ``backend``
(the adapter: threads, handlers).  docs/emulator.md describes the model and where it
differs from the kernel.
"""
from .backend import EmuBackend
from .profiles import DEFAULT_PROFILE, PROFILES, Profile, get_profile

__all__ = ["EmuBackend", "PROFILES", "DEFAULT_PROFILE", "Profile", "get_profile"]
