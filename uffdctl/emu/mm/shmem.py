"""shmem / memfd (mm/shmem.c): the file with its page cache, and shmem_get_folio_gfp() with its
MINOR and MISSING userfaults.
"""
from __future__ import annotations

from .mm_types import (Folio, VM_FAULT_MAJOR, VM_FAULT_OK, VM_FAULT_SIGBUS, VM_HUGEPAGE, VM_UFFD_MINOR, VM_UFFD_MISSING, userfaultfd_minor,
                       userfaultfd_missing)


class ShmemFile:
    """A memfd / tmpfs file: size and page cache (index -> Folio).  ``sysv``: a SysV segment (shm_vm_ops
    wraps shmem's, so its pages are shmem's, but its VMAs are not vma_is_shmem())."""

    shmem = True

    def __init__(self, name: str, size: int, page_size: int, sysv: bool = False):
        self.name = name
        self.size = size
        self.page_size = page_size
        self.pages: dict[int, Folio] = {}
        self.sysv = sysv



class Shmem:
    """mm/shmem.c: the page-cache lookup of a shmem fault."""

    def shmem_get_folio(self, vmf) -> tuple[int, Folio | None]:
        """shmem_get_folio_gfp() with a vmf: MINOR / MISSING userfaults, else the (new) cache page."""
        vma = vmf.vma
        if not vma.file.shmem:                   # a regular file: ->fault is filemap_fault()
            return self.filemap_fault(vmf)
        idx = vma.linear_page_index(vmf.address)
        folio = vma.file.pages.get(idx)
        if folio is not None:
            if userfaultfd_minor(vma):
                return self.handle_userfault(vmf, VM_UFFD_MINOR), None
            return self.shmem_swapin_folio(folio), folio
        if idx * vma.page_size >= vma.file.size:
            return VM_FAULT_SIGBUS, None
        if userfaultfd_missing(vma):
            return self.handle_userfault(vmf, VM_UFFD_MISSING), None
        if not vma.hugetlb and (self.thp.shmem_any or vma.flags & VM_HUGEPAGE):
            folio = self.shmem_alloc_large(vmf, idx)            # huge_memory.py: a large folio, if allowed
            if folio is not None:
                return VM_FAULT_OK, folio
        folio = vma.file.pages[idx] = self.alloc_folio(vma.page_size, anon=False)
        return VM_FAULT_OK, folio

    def shmem_swapin_folio(self, folio) -> int:
        """A page-cache entry that is in swap: the folio (still in the swap cache) goes back into the page cache
        and its slot is freed; it stays dirty.  VM_FAULT_MAJOR when it had to be read (a zeromap entry)."""
        if folio.swap is None:
            return VM_FAULT_OK
        entry = folio.swap
        major = VM_FAULT_MAJOR if self.swap.swap_read_folio(entry) else VM_FAULT_OK
        self.swap.delete_from_swap_cache(folio)
        self.swap.swap_free(entry)
        folio.dirty = True
        return major
