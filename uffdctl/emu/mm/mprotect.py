"""change_protection() (mm/mprotect.c): change_pte_range(), can_change_pte_writable() as it changed
across versions, and mprotect() itself.
"""
from __future__ import annotations

import errno as E

from ... import uapi
from ..profiles import UFFDIO_COPY_MODE_WRITE_LIKELY
from .mm_types import (MM_CP_TRY_CHANGE_WRITABLE, MM_CP_UFFD_WP, MM_CP_UFFD_WP_RESOLVE, PAGE_SIZE,
                       PTE_MARKER_UFFD_WP, Pte, VM_MAYWRITE, VM_READ, VM_WRITE, make_pte_marker)


def pte_prot_change_needs_flush(old_write: bool, old_d: bool, new_write: bool, new_d: bool,
                                clean_wp_noflush: bool = False) -> bool:
    """x86 pte_needs_flush() (``..tlb``) of a present PTE whose PFN, presence and caching bits stay: only
    RW and hardware D matter (A is ignored, the uffd-wp / soft-dirty / special / SavedDirty bits are
    software).  A cleared D always flushes; an RW change flushes unless Nadav's RFC 12/14 rule
    (``clean_wp_noflush``) waives it, where RW->RO of a dirty PTE flushes through the D rule anyway."""
    if old_d and not new_d:
        return True
    return not clean_wp_noflush and old_write != new_write


def _never(pte) -> bool:
    return False


class Mprotect:
    """mm/mprotect.c."""

    def vma_wants_manual_pte_write_upgrade(self, vma) -> bool:
        """Private: VM_WRITE.  Shared: vma_wants_writenotify(vma, vm_page_prot), which is false
        whenever vm_page_prot was write-protected for write-notify (vma_wants_writenotify(): the shmem quirk) and
        false anyway for shmem otherwise: so never for shmem."""
        if vma.hugetlb or not vma.flags & VM_WRITE:                          # hugetlb: never
            return False
        return not vma.shared or vma.file is not None and not vma.file.shmem  # page_mkwrite: writenotify

    def can_change_pte_writable(self, vma, pte: Pte, write_likely: bool = False) -> bool:
        return self.can_change_pte_writable_in(vma, write_likely)(pte)

    def can_change_pte_writable_in(self, vma, write_likely: bool = False):
        """can_change_pte_writable() of ``vma`` as a function of the PTE: what depends on the VMA and the
        version is decided once (change_pte_range() asks it of every PTE of a range)."""
        if not vma.flags & VM_WRITE:
            return _never
        # pte_needs_soft_dirty_wp(): a PTE not soft-dirty while tracking is on stays read-only (the RFC waives it)
        sd_wp = self.vma_soft_dirty_enabled(vma) and not (
            self.profile.hints == "rfc" or self.profile.hints == "rfc-fixed" and write_likely)
        if vma.shared:
            def shared(pte) -> bool:
                return not (sd_wp and not pte.soft_dirty) and not pte.uffd_wp and pte.dirty
            return shared
        needs_dirty = self.profile.can_change_writable_needs_dirty

        def private(pte) -> bool:
            if sd_wp and not pte.soft_dirty or pte.uffd_wp:
                return False
            page = pte.page
            if pte.special or not page.anon or not page.exclusive:
                return False
            return pte.dirty if needs_dirty else True
        return private

    def change_pte_range(self, vma, start: int, end: int, newprot_writable: bool, cp_flags: int,
                         hints: int = 0) -> int:
        """change_pte_range(): PTEs are rewritten in place (no PTE is shared between two addresses); the
        TLB-flush decision is pte_needs_flush() of the before/after values, reduced to the bits a protection
        change can touch (same PFN and presence: hardware D and RW, see :func:`pte_prot_change_needs_flush`)."""
        uffd_wp = cp_flags & MM_CP_UFFD_WP
        uffd_wp_resolve = cp_flags & MM_CP_UFFD_WP_RESOLVE
        try_change = cp_flags & MM_CP_TRY_CHANGE_WRITABLE
        write_likely = bool(hints & UFFDIO_COPY_MODE_WRITE_LIKELY)
        rfc_hints = bool(hints and self.profile.hints)
        clean_wp_noflush = self.profile.clean_wp_noflush
        flush, pages = [], 0
        step = vma.page_size
        can_change = self.can_change_pte_writable_in(vma, write_likely) if try_change else None
        if self.pmds:                      # huge_memory.py: change_huge_pmd() / split
            pages += self.change_huge_pmds(vma, start, end, newprot_writable, cp_flags)
        ptes = self.ptes
        if uffd_wp and self.userfaultfd_wp_use_markers(vma):
            for a in range(start, end, step):
                if a not in ptes and not (self.pmds and self.pmd_leaf(a)):
                    self.set_pte(a, make_pte_marker(PTE_MARKER_UFFD_WP))
                    pages += 1
        for a in self.pte_keys(start, end, step):
            pte = ptes[a]
            if pte.swp is not None:                      # a swap entry: only its swp uffd-wp bit changes
                if uffd_wp and not pte.uffd_wp or uffd_wp_resolve and pte.uffd_wp:
                    pte.uffd_wp = bool(uffd_wp)
                    pages += 1
                continue
            if pte.page is None:
                if uffd_wp_resolve and pte.marker & PTE_MARKER_UFFD_WP and not pte.marker & ~PTE_MARKER_UFFD_WP:
                    del ptes[a]
                    pages += 1
                continue
            old_write = pte.write
            old_d = old_write and pte.dirty                     # hardware D (else SavedDirty)
            pte.write = newprot_writable and not pte.special    # pte_modify(oldpte, newprot)
            if uffd_wp:
                pte.uffd_wp, pte.write = True, False
            elif uffd_wp_resolve:
                pte.uffd_wp = False
            if rfc_hints:
                pte.young = True
            if try_change and not pte.write and can_change(pte):
                pte.write = True
                if write_likely and self.profile.hints:
                    self.pte_mkdirty(pte)
            if pte_prot_change_needs_flush(old_write, old_d, pte.write, pte.write and pte.dirty,
                                           clean_wp_noflush):
                flush.append(a)
            pages += 1
        self.tlb.flush_range(flush)
        return pages

    def mprotect(self, start: int, length: int, prot: int) -> int:
        if start % PAGE_SIZE:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        vmas = self.vmas_in(start, end)
        if sum(min(end, v.end) - max(start, v.start) for v in vmas) != end - start:
            return -E.ENOMEM
        if prot & uapi.PROT_WRITE and any(not v.flags & VM_MAYWRITE for v in vmas):
            return -E.EACCES
        for vma in self.split(start, end):
            vma.flags = (vma.flags & ~(VM_READ | VM_WRITE)) | (VM_READ if prot & uapi.PROT_READ else 0) \
                | (VM_WRITE if prot & uapi.PROT_WRITE else 0)
            try_change = self.profile.mprotect_try_change_writable and self.vma_wants_manual_pte_write_upgrade(vma)
            self.change_pte_range(vma, vma.start, vma.end, self.vm_page_prot_writable(vma),
                                  MM_CP_TRY_CHANGE_WRITABLE if try_change else 0)
        self.merge()
        return 0
