"""The memory-management model: one :class:`MM` (struct mm_struct) and the kernel files that act on it.

Each room is named after the kernel file it mirrors and holds that file's functions under their kernel
names; :class:`MM` is their union over one address space's state:

=================  ===========================================  ==========================================
room               kernel                                       owns
=================  ===========================================  ==========================================
``mm_types``       include/linux/mm_types.h, mm.h, swapops.h    Folio, Pte, Vma, VmFault, VM_* / markers
``mmap``           mm/mmap.c, mm/vma.c                          ``vmas`` (changed only through its methods)
``pgtable``        include/linux/pgtable.h, mm/pagewalk.c       ``pgtables``, set_pte(), sparse walks
``memory``         mm/memory.c (+ anon_vma_prepare, rmap.c)     the fault path, zap_pte_range()
``shmem``          mm/shmem.c                                   ShmemFile (page cache), shmem_get_folio()
``huge_memory``    mm/huge_memory.c                             THP knobs, PMD faults, split, zap, move
``khugepaged``     mm/khugepaged.c                              MADV_COLLAPSE
``hugetlb``        mm/hugetlb.c                                 hugetlb faults and mfill
``userfaultfd``    mm/userfaultfd.c                             mfill_atomic*, uffd_wp_range, move_pages
``mprotect``       mm/mprotect.c                                change_pte_range, can_change_pte_writable
``madvise``        mm/madvise.c                                 madvise()
``mremap``         mm/mremap.c                                  mremap(), move_page_tables()
``swapfile``       mm/swapfile.c, mm/swap_state.c               SwapSystem (devices, swap map, swap cache)
``vmscan``         mm/vmscan.c, mm/rmap.c                       reclaim_pages(), try_to_unmap_one()
``filemap``        mm/filemap.c, mm/msync.c                     RegularFile (disk page cache), msync()
``mlock``          mm/mlock.c                                   apply_vma_lock_flags(), what populate faults
=================  ===========================================  ==========================================

The state: ``vmas`` (sorted; the mmap room's), ``ptes`` (the page table: page address -> Pte, absent =
pte_none; any room reads and rewrites entries in place, and installs through set_pte() when the mapped
page changes, which keeps mapcounts), ``pgtables`` (PMDs with a PTE table), ``tlb`` (``..tlb.Tlb``).
Above the model: ``..fs.userfaultfd`` (the ctx and its ioctls, fs/userfaultfd.c) and
``..fs.proc.task_mmu`` (pagemap, clear_refs, PAGEMAP_SCAN).  Errors are returned as ``-errno`` as the
kernel does; the ioctl and syscall layers turn them into exceptions.  Cost is proportional to the PTEs
and VMAs that exist, never to the size of a range.
"""
from __future__ import annotations

import itertools

from .. import tlb as _tlb
from ..profiles import Profile
from .huge_memory import HugeMemory, ThpSettings
from .filemap import Filemap, RegularFile
from .hugetlb import Hugetlb
from .khugepaged import Khugepaged
from .madvise import Madvise
from .memory import Memory
from . import mm_types
from .mm_types import *  # noqa: F403  (the model's names, as M.VM_WRITE etc.)
from .mm_types import FIRST_PFN, HPAGE_SIZE, MMAP_BASE, PAGE_SIZE, ZERO_PFN, Folio, Pte, Vma
from .mlock import Mlock
from .mmap import Mmap
from .mprotect import Mprotect
from .mremap import Mremap
from .pgtable import PageTables
from .shmem import Shmem, ShmemFile
from .swapfile import SwapSystem, Swapfile, swapoff
from .vmscan import Vmscan
from .userfaultfd import Userfaultfd


class MM(Mmap, PageTables, Memory, HugeMemory, Khugepaged, Shmem, Hugetlb, Userfaultfd, Mprotect, Madvise, Mremap,
         Swapfile, Vmscan, Filemap, Mlock):
    """One emulated address space (struct mm_struct); ``swap``: the machine's swap devices (a fork child
    passes its parent's); ``thp``: THP knob values for the emulated sysfs (huge_memory.ThpSettings)."""

    def __init__(self, profile: Profile, soft_dirty: bool = True, swap: SwapSystem | None = None,
                 thp: dict | None = None):
        self.profile = profile
        self.thp = ThpSettings(profile, thp)              # /sys/kernel/mm/transparent_hugepage, emulated
        self.swap = swap if swap is not None else SwapSystem()
        self.uaccess_mm = self      # current->mm of a UFFDIO_COPY's copy_from_user() (kernel/fork.py: the monitor's)
        self.swap.mms.append(self)
        self.soft_dirty_config = soft_dirty          # CONFIG_MEM_SOFT_DIRTY
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.ptes: dict[int, Pte] = {}
        self.tlb = _tlb.Tlb()
        self._next_pfn = FIRST_PFN
        self._origins = itertools.count(1)
        self._anon_vmas = itertools.count(1)
        self.zero_page = Folio(ZERO_PFN, PAGE_SIZE, anon=False, zero=True)
        self.zero_page.exclusive = False
        self.next_addr = MMAP_BASE
        self.low_addr = MMAP_BASE - HPAGE_SIZE
        self.pgtables: set[int] = set()   # PMD indices (addr >> 21) that have a PTE table
        self.pmd_tables: set[int] = set()  # PUD indices (addr >> 30) that have a PMD table (pgtable.py)
        self.pmds: dict[int, Pte] = {}    # PMD leaves: 2 MiB-aligned address -> Pte of a THP (huge_memory)
        self._pgt_sorted: list[int] | None = None   # pgtable.py's sorted view of it (None: rebuild)
        self._pte_index: list[int] | None = None    # pgtable.py's sorted view of ptes' keys (None: rebuild)
        self.exited = False


__all__ = ["MM", "ShmemFile", "RegularFile", "SwapSystem", "swapoff", *mm_types.__all__]
