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
                       VM_UFFD_FLAGS, VM_WRITE, make_pte_marker, userfaultfd_missing, userfaultfd_wp)

# enum scan_result (the ones the model reaches)
SCAN_FAIL, SCAN_SUCCEED, SCAN_PMD_NONE, SCAN_PMD_MAPPED, SCAN_EXCEED_NONE_PTE, SCAN_PTE_NON_PRESENT, \
    SCAN_PTE_UFFD_WP, SCAN_PAGE_RO, SCAN_PAGE_ANON, SCAN_PTE_MAPPED_HUGEPAGE, SCAN_VMA_CHECK, \
    SCAN_TRUNCATED = range(12)

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
        if not vma.anon and not vma.shared:
            raise NotModelledCollapse("MADV_COLLAPSE of a private file mapping")
        if not vma.anon and self.thp.values["shmem_enabled"] == "deny":
            return -E.EINVAL                          # shmem_allowable_huge_orders(): 'deny' forces it off
        if not self.thp_vma_suitable(vma, (vma.end - HPAGE_SIZE) & HPAGE_PMD_MASK):
            # __thp_vma_allowable_orders(!in_pf): "filtering out the unsuitable orders": a VMA with no aligned
            # 2 MiB in it is EINVAL, whatever the range [found by the differential, seed 334]
            return -E.EINVAL
        if vma.anon and vma.anon_vma is None:
            # __thp_vma_allowable_orders(): "if (!vma->anon_vma) return (smaps || in_pf) ? orders : 0" [measured
            # on 6.18: a never-faulted THP region gives EINVAL even for a range with no whole PMD in it]
            return -E.EINVAL
        hstart, hend = (start + HPAGE_SIZE - 1) & HPAGE_PMD_MASK, end & HPAGE_PMD_MASK
        thps, last_fail = 0, SCAN_FAIL
        for haddr in range(hstart, hend, HPAGE_SIZE):
            if not vma.anon:
                r = self.hpage_collapse_scan_file(vma, haddr)
                if r == SCAN_PTE_MAPPED_HUGEPAGE:
                    r = self.collapse_pte_mapped_thp(vma, haddr)
            else:
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
        if any(p.marker for p in unmapped):
            # __collapse_huge_page_swapin(): do_swap_page() on a poison or guard marker fails (HWPOISON / SIGSEGV)
            return SCAN_FAIL
        return self.collapse_huge_page_swapin(vma, haddr) if unmapped else SCAN_SUCCEED

    def collapse_huge_page_swapin(self, vma, haddr: int) -> int:
        """__collapse_huge_page_swapin(): every swap entry of the PMD is faulted in (do_swap_page(), a read
        fault from the kernel); VM_FAULT_ERROR is SCAN_FAIL -- a read from the swap device is VM_FAULT_MAJOR,
        which is no failure [soak seed 316255611: PAGEOUT of part of a WP-registered THP region, then
        MADV_COLLAPSE: the kernel collapsed, the model said EINVAL]."""
        from .mm_types import VM_FAULT_ERROR, VM_FAULT_RETRY
        for i in range(HPAGE_PMD_NR):
            a = haddr + i * PAGE_SIZE
            pte = self.ptes.get(a)
            if pte is not None and not pte.present and getattr(pte, "swp", None) is not None:
                if self.handle_mm_fault(vma, a, False, None) & (VM_FAULT_ERROR | VM_FAULT_RETRY):
                    return SCAN_FAIL
        return SCAN_SUCCEED

    # -- shmem: collapse_file() -------------------------------------------------------------------------
    def _file_vmas(self, f, i0: int, n: int):
        """The VMAs mapping indices [i0, i0 + n) of ``f``, with the address of i0 in each (i_mmap)."""
        for v in self.vmas:
            if v.file is f and not v.hugetlb:
                a = v.start + i0 * PAGE_SIZE - v.pgoff
                if a < v.end and v.start < a + n * PAGE_SIZE:
                    yield v, a

    def hpage_collapse_scan_file(self, vma, haddr: int) -> int:
        """hpage_collapse_scan_file() + collapse_file(): the 512 cache pages (holes zero-filled) become one
        2 MiB folio; the old pages are unmapped everywhere (a uffd-wp PTE leaves a marker in a uffd-wp VMA)
        and retract_page_tables() drops the emptied PTE tables of VMAs without an anon_vma and without
        uffd-wp.  A hole aborts it if any VMA mapping the range is MISSING-registered."""
        f = vma.file
        i0 = vma.linear_page_index(haddr)
        if (i0 + HPAGE_PMD_NR) * PAGE_SIZE > f.size:
            return SCAN_TRUNCATED
        old = [f.pages.get(i0 + i) for i in range(HPAGE_PMD_NR)]
        head = old[0].head if old[0] is not None else None
        if head is not None and head.size == HPAGE_SIZE and all(p is not None and p.head is head for p in old):
            return SCAN_PTE_MAPPED_HUGEPAGE                   # already one THP in the page cache
        olds = {id(p) for p in old if p is not None}
        flush = []
        for v, a in self._file_vmas(f, i0, HPAGE_PMD_NR):
            if self.pmd_leaf(a):
                self.split_huge_pmd(v, a & HPAGE_PMD_MASK)
            for x in self.pte_keys(max(a, v.start), min(a + HPAGE_SIZE, v.end), PAGE_SIZE):
                pte = self.ptes[x]
                if pte.present and id(pte.page) in olds:     # try_to_unmap()
                    keep = pte.uffd_wp and userfaultfd_wp(v)
                    self.set_pte(x, make_pte_marker(PTE_MARKER_UFFD_WP) if keep else None)
                    flush.append(x)
        self.tlb.flush_range(flush)
        # after the pages were isolated and unmapped: the rollback puts them back in the cache, unmapped
        # [measured on 6.18: the MISSING-registered VMA's written page is no longer present after the EBUSY]
        if any(p is None for p in old) and any(userfaultfd_missing(v) for v, _ in self._file_vmas(f, i0, HPAGE_PMD_NR)):
            return SCAN_EXCEED_NONE_PTE   # "userspace observed a missing page in a VMA with a MODE_MISSING uffd"
        data = bytearray(HPAGE_SIZE)
        for i, p in enumerate(old):
            if p is not None:
                data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = p.read(0, PAGE_SIZE)
        new = self.alloc_large_folio(vma, HPAGE_SIZE, anon=False, data=bytes(data))
        for i, p in enumerate(new.pages):
            f.pages[i0 + i] = p
        for v, a in self._file_vmas(f, i0, HPAGE_PMD_NR):     # retract_page_tables()
            if v.anon_vma is None and not userfaultfd_wp(v) and a % HPAGE_SIZE == 0 and \
                    v.start <= a and a + HPAGE_SIZE <= v.end and not self.pte_keys(a, a + HPAGE_SIZE, PAGE_SIZE):
                if a >> 21 in self.pgtables:
                    self.pgtables.discard(a >> 21)
                    self._pgt_sorted = None
        return SCAN_PTE_MAPPED_HUGEPAGE

    def collapse_pte_mapped_thp(self, vma, haddr: int) -> int:
        """collapse_pte_mapped_thp(install_pmd): the calling VMA maps the cache THP by a PMD when its PMD is none
        or its PTEs map only that THP's pages (in place); never in a uffd-wp VMA ("Keep pmd pgtable for
        uffd-wp")."""
        if self.pmd_leaf(haddr):
            return SCAN_PMD_MAPPED
        if self.vma_thp_disabled(vma):
            return SCAN_VMA_CHECK
        if userfaultfd_wp(vma):
            return SCAN_PTE_UFFD_WP
        folio = vma.file.pages[vma.linear_page_index(haddr)].head
        keys = self.pte_keys(haddr, haddr + HPAGE_SIZE, PAGE_SIZE)
        for k, a in enumerate(keys):
            pte = self.ptes[a]
            if not pte.present or pte.page is not folio.pages[(a - haddr) // PAGE_SIZE]:
                return SCAN_FAIL
        for a in keys:
            self.set_pte(a, None)
        self.tlb.flush_range(keys)
        self.pgtables.discard(haddr >> 21)
        self._pgt_sorted = None
        self.set_pmd(haddr, Pte(folio, write=self.vm_page_prot_writable(vma), young=True))   # set_huge_pmd()
        return SCAN_SUCCEED

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
