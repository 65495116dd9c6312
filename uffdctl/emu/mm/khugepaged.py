"""Collapse (mm/khugepaged.c): MADV_COLLAPSE's madvise_collapse() over hpage_collapse_scan_pmd() and
collapse_huge_page(), with the userfaultfd rules (userfaultfd_armed(): no none or zero PTE may be filled in
a registered VMA; a uffd-wp PTE or swap entry is never collapsed).  khugepaged itself is a kernel thread
on a timer: the model never runs it (a test cannot wait for it on the kernel either).

Measured on the 6.18 host (tests/test_thp.py, and the differential found the last three): an aligned
2 MiB with one written page collapses into a THP; none PTEs in any registered VMA (MISSING or WP) give
EBUSY; a uffd-wp PTE gives EINVAL; a PMD with no PTE table gives EINVAL; an already PMD-mapped range (THP
or the huge zero PMD) succeeds; VM_NOHUGEPAGE gives EINVAL, and so do a VMA without an anon_vma
(zero-page reads only, whatever the range) and a VMA with no aligned 2 MiB in it; 512 zero-page PTEs (a
split huge zero PMD) collapse: no SCAN_PAGE_RO ("no writable PTE") on this kernel; a range holding no
aligned PMD of a suitable VMA does nothing and succeeds.
"""
from __future__ import annotations

import errno as E

from .mm_types import (HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_SIZE, PAGE_SIZE, PTE_MARKER_UFFD_WP, Pte,
                       VM_UFFD_FLAGS, VM_WRITE)

# enum scan_result (the ones the model reaches)
SCAN_FAIL, SCAN_SUCCEED, SCAN_PMD_NONE, SCAN_PMD_MAPPED, SCAN_EXCEED_NONE_PTE, SCAN_PTE_NON_PRESENT, \
    SCAN_PTE_UFFD_WP, SCAN_PAGE_RO, SCAN_PAGE_ANON = range(9)

# madvise_collapse(): results after which the next PMD is still tried
_CONTINUE = {SCAN_PTE_NON_PRESENT, SCAN_PTE_UFFD_WP}


def madvise_collapse_errno(r: int) -> int:
    return -E.EBUSY if r == SCAN_EXCEED_NONE_PTE else -E.EINVAL


class NotModelledCollapse(Exception):
    """A collapse the model does not carry out (the adapter says "not modelled")."""


class Khugepaged:
    """mm/khugepaged.c: MADV_COLLAPSE."""

    def madvise_collapse(self, vma, start: int, end: int) -> int:
        if vma.hugetlb or self.vma_thp_disabled(vma) or not self.profile.madv_collapse:
            return -E.EINVAL                          # thp_vma_allowable_order(TVA_FORCED_COLLAPSE)
        if not vma.anon:
            raise NotModelledCollapse("MADV_COLLAPSE of shmem")
        if not self.thp_vma_suitable(vma, (vma.end - HPAGE_SIZE) & HPAGE_PMD_MASK):
            # __thp_vma_allowable_orders(!in_pf): "filtering out the unsuitable orders": a VMA with no aligned
            # 2 MiB in it is EINVAL, whatever the range [found by the differential, seed 334]
            return -E.EINVAL
        if vma.anon_vma is None:
            # __thp_vma_allowable_orders(): "if (!vma->anon_vma) return (smaps || in_pf) ? orders : 0" [measured
            # on 6.18: a never-faulted THP region gives EINVAL even for a range with no whole PMD in it]
            return -E.EINVAL
        hstart, hend = (start + HPAGE_SIZE - 1) & HPAGE_PMD_MASK, end & HPAGE_PMD_MASK
        thps, last_fail = 0, SCAN_FAIL
        for haddr in range(hstart, hend, HPAGE_SIZE):
            r = self.hpage_collapse_scan_pmd(vma, haddr)
            if r == SCAN_SUCCEED:
                r = self.collapse_huge_page(vma, haddr)
            if r in (SCAN_SUCCEED, SCAN_PMD_MAPPED):
                thps += 1
                continue
            last_fail = r
            if r not in _CONTINUE:
                break
        return 0 if thps == (hend - hstart) // HPAGE_SIZE else madvise_collapse_errno(last_fail)

    def hpage_collapse_scan_pmd(self, vma, haddr: int) -> int:
        if self.pmd_leaf(haddr):
            return SCAN_PMD_MAPPED
        if haddr >> 21 not in self.pgtables:          # find_pmd_or_thp_or_none()
            return SCAN_PMD_NONE
        armed = bool(vma.flags & VM_UFFD_FLAGS)      # userfaultfd_armed()
        unmapped = []
        for i in range(HPAGE_PMD_NR):
            pte = self.ptes.get(haddr + i * PAGE_SIZE)
            if pte is not None and not pte.present:   # is_swap_pte(): a swap entry or a marker
                if pte.uffd_wp or pte.marker & PTE_MARKER_UFFD_WP:
                    return SCAN_PTE_UFFD_WP          # "Always be strict with uffd-wp enabled swap entries"
                unmapped.append(pte)                  # swapped in by collapse_huge_page() (MADV_COLLAPSE: no limit)
                continue
            if pte is None or pte.special:
                if armed:
                    return SCAN_EXCEED_NONE_PTE
                continue
            if pte.uffd_wp:
                return SCAN_PTE_UFFD_WP
            if not pte.page.anon:
                return SCAN_PAGE_ANON
        # no SCAN_PAGE_RO on 6.18: 512 zero-page PTEs (a split huge zero PMD) collapse [measured]
        if any(not p.marker for p in unmapped):
            raise NotModelledCollapse("MADV_COLLAPSE over swap entries (swap-in)")
        # __collapse_huge_page_swapin(): do_swap_page() on a poison or guard marker fails (HWPOISON / SIGSEGV)
        return SCAN_FAIL if unmapped else SCAN_SUCCEED

    def collapse_huge_page(self, vma, haddr: int) -> int:
        """A new THP with the PTEs' data (none and zero PTEs read zero), mapped by a PMD leaf: writable if
        the VMA is, dirty, young (pmd_mkdirty + maybe_pmd_mkwrite); the PTE table and its PTEs go."""
        data = bytearray(HPAGE_SIZE)
        for i in range(HPAGE_PMD_NR):
            pte = self.ptes.get(haddr + i * PAGE_SIZE)
            if pte is not None and pte.present and not pte.special:
                data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = pte.page.read(0, PAGE_SIZE)
        flush = []
        for a in self.pte_keys(haddr, haddr + HPAGE_SIZE, PAGE_SIZE):
            flush.append(a)
            self.set_pte(a, None)
        self.tlb.flush_range(flush)
        self.pgtables.discard(haddr >> 21)
        self._pgt_sorted = None
        pmd = Pte(self.alloc_thp(vma, bytes(data)), write=bool(vma.flags & VM_WRITE), young=True)
        self.pte_mkdirty(pmd)
        self.set_pmd(haddr, pmd)
        return SCAN_SUCCEED


__all__ = ["Khugepaged", "NotModelledCollapse", "madvise_collapse_errno"]
