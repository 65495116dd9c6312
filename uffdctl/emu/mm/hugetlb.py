"""hugetlbfs (mm/hugetlb.c): hugetlb_no_page() / hugetlb_wp() as one fault handler, and
hugetlb_mfill_atomic_pte().
"""
from __future__ import annotations

import errno as E

from .mm_types import (MFILL_ATOMIC_CONTINUE, MFILL_ATOMIC_POISON, PTE_MARKER_POISONED, Pte, VM_FAULT_OK,
                       VM_FAULT_SIGBUS, VM_UFFD_MINOR, VM_UFFD_MISSING, VM_WRITE, make_pte_marker,
                       userfaultfd_minor, userfaultfd_missing)


class Hugetlb:
    """mm/hugetlb.c: faults and mfill on huge pages."""

    def hugetlb_fault(self, vmf) -> int:
        """hugetlb_no_page(): shared -> page cache; private -> the cache page if there is one (COW on
        write), else a new anon page; a private write fault does the COW at once (hugetlb_wp)."""
        vma = vmf.vma
        self.huge_pte_alloc(vmf.address)     # hugetlb_fault(): first of all, even for a fault that goes to userfault
        idx = vma.linear_page_index(vmf.address)
        folio = vma.file.pages.get(idx)
        if folio is not None and userfaultfd_minor(vma):
            return self.handle_userfault(vmf, VM_UFFD_MINOR)
        if folio is None:
            if idx * vma.page_size >= vma.file.size:
                return VM_FAULT_SIGBUS
            if userfaultfd_missing(vma):
                return self.handle_userfault(vmf, VM_UFFD_MISSING)
            if vma.shared:
                folio = self.alloc_folio(vma.page_size, anon=False)
            else:
                folio = self.alloc_anon(vma, vma.page_size)
            if vma.shared:
                vma.file.pages[idx] = folio
        uffd_wp = vmf.orig_pte_uffd_wp
        # make_huge_pte(vma, folio, VM_SHARED): shared is mapped writable+dirty even on a read; a private write
        # does the CoW at once (hugetlb_wp), unless the PTE carries uffd-wp: "never CoW a uffd-wp page"
        cow = vmf.write and not vma.shared and not uffd_wp
        if cow and not folio.anon:
            folio = self.alloc_anon(vma, vma.page_size, folio.copy_data())
        pte = Pte(folio, write=bool(vma.flags & VM_WRITE and (vma.shared or cow)), young=True)
        if pte.write:
            self.pte_mkdirty(pte)
        if uffd_wp:
            pte.uffd_wp, pte.write = True, False
        self.set_pte(vmf.address, pte)
        return VM_FAULT_OK

    def hugetlb_mfill_atomic_pte(self, vma, kind, dst, src, wp) -> int:
        """mfill_atomic_hugetlb() + hugetlb_mfill_atomic_pte(): the table is allocated and the PTE checked before
        the copy."""
        self.huge_pte_alloc(dst)
        pte = self.ptes.get(dst)
        if kind == MFILL_ATOMIC_POISON:
            if pte is not None:
                return -E.EEXIST
            self.set_pte(dst, make_pte_marker(PTE_MARKER_POISONED))
            return 0
        if kind != MFILL_ATOMIC_CONTINUE and not self.pte_none_mostly(pte):
            return -E.EEXIST
        idx = vma.linear_page_index(dst)
        if kind == MFILL_ATOMIC_CONTINUE:
            folio = vma.file.pages.get(idx)
            if folio is None:
                return -E.EFAULT
        else:
            if vma.shared and idx in vma.file.pages:
                return -E.EEXIST
            data = self.copy_from_user(src, vma.page_size)
            if isinstance(data, int):
                return data
            folio = self.alloc_folio(vma.page_size, anon=not vma.shared, data=bytearray(data))
        if idx * vma.page_size >= vma.file.size:
            return -E.EFAULT
        if not self.pte_none_mostly(self.ptes.get(dst)):
            return -E.EEXIST
        if vma.shared and kind != MFILL_ATOMIC_CONTINUE:
            vma.file.pages[idx] = folio
        writable = bool(vma.flags & VM_WRITE) and not wp and not (kind == MFILL_ATOMIC_CONTINUE and not vma.shared)
        pte = Pte(folio, write=writable, young=True, uffd_wp=wp)
        self.pte_mkdirty(pte)
        self.set_pte(dst, pte)
        return 0
