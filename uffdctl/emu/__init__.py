"""The emulation backend: userfaultfd, pagemap and soft-dirty semantics modelled in pure Python.

``EmuBackend(profile="6.18", soft_dirty=True)`` implements :class:`uffdctl.backend.Backend`.
Layers: ``profiles`` (kernel-version switches), ``tlb`` (x86 flush rules), ``mm``
(VMAs, PTEs, page cache, the fault and mfill paths), ``userfaultfd`` (the ctx and
its ioctls), ``backend`` (threads, handlers, /proc views).  docs/emulator.md
describes the model and where it differs from the kernel.
"""
from .backend import EmuBackend
from .profiles import DEFAULT_PROFILE, PROFILES, Profile, get_profile

__all__ = ["EmuBackend", "PROFILES", "DEFAULT_PROFILE", "Profile", "get_profile"]
