"""mlock() / munlock() (mm/mlock.c): apply_vma_lock_flags() sets VM_LOCKED (and VM_LOCKONFAULT) on the VMAs of the
range, splitting them; the population that follows (__mm_populate(), mm/gup.c populate_vma_page_range()) is a
fault on every page, a write fault where the VMA is private and writable (FOLL_WRITE) -- it runs as an access of
the caller (``EmuBackend.mlock``), so a userfault blocks it as it blocks the syscall.
"""
from __future__ import annotations

import errno as E

from .mm_types import PAGE_SIZE, VM_LOCKED, VM_READ, VM_SHARED, VM_WRITE

VM_LOCKONFAULT = 0x00080000
MLOCK_ONFAULT = 0x01


class Mlock:
    """mm/mlock.c."""

    def apply_vma_lock_flags(self, start: int, length: int, flags: int) -> int:
        """do_mlock() / sys_munlock(): ``flags`` VM_LOCKED [| VM_LOCKONFAULT], or 0 to unlock; ENOMEM for a hole."""
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if end < start:
            return -E.EINVAL
        if end == start:
            return 0
        vmas = self.vmas_in(start, end)
        if sum(min(end, v.end) - max(start, v.start) for v in vmas) != end - start:
            return -E.ENOMEM
        for vma in self.split(start, end):
            vma.flags = (vma.flags & ~(VM_LOCKED | VM_LOCKONFAULT)) | flags
        self.merge()
        return 0

    def populate_ranges(self, start: int, length: int) -> list[tuple[int, int, bool]]:
        """What __mm_populate() faults in: (start, end, write) per VMA (FOLL_WRITE: private and writable)."""
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        return [(max(start, v.start), min(end, v.end), v.flags & (VM_WRITE | VM_SHARED) == VM_WRITE)
                for v in self.vmas_in(start, end) if v.flags & VM_LOCKED and v.flags & (VM_READ | VM_WRITE)]
