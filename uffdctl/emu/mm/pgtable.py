"""The page tables (include/linux/pgtable.h, mm/pgtable-generic.c, mm/pagewalk.c): the sparse PTE
map ``mm.ptes`` (page address -> :class:`~.mm_types.Pte`; absent = pte_none), the set of PMDs that
have a PTE table (``mm.pgtables``: pte_alloc() adds one, free_pgtables() drops it), the set of PUDs that have
a PMD table (``mm.pmd_tables``: what a hugetlb walk finds or not, see huge_pte_alloc()) and the PMD leaves
(``mm.pmds``: 2 MiB-aligned address -> a Pte whose page is a THP or the huge zero folio: pmd_trans_huge;
huge_memory.py makes and splits them).  A PMD is none, a leaf or a table, never two of them.  Walks
cost what exists, never the size of a range.

A PTE value is one of: present (``pte.page``), a PTE marker (``pte.marker``: uffd-wp, poison, guard) or a
swap entry (``pte.swp``, :func:`~.mm_types.swp_entry`, the swp uffd-wp / soft-dirty bits in ``uffd_wp`` /
``soft_dirty``; the slot and the swap cache are ``swapfile``'s).  Only set_pte() keeps mapcounts, and only
for present PTEs.
"""
from __future__ import annotations

import bisect

from .. import tlb as _tlb
from .mm_types import HPAGE_PMD_MASK, PAGE_SIZE, VM_HUGETLB, Pte

_PAGE_MASK = ~(PAGE_SIZE - 1)


class PageTables:
    """The page-table half of the mm: PTE install with mapcounts, table allocation, sparse walks."""

    def pte_alloc(self, addr: int) -> None:
        """pte_alloc(): the PMD over ``addr`` gets a PTE table (kept until munmap frees it)."""
        p = addr >> 21
        if p not in self.pgtables:
            self.pgtables.add(p)
            self.pmd_tables.add(p >> 9)
            self._pgt_sorted = None

    def huge_pte_alloc(self, addr: int) -> None:
        """huge_pte_alloc(): the PUD over ``addr`` gets a PMD table, where a 2 MiB hugetlb PTE lives.  hugetlb_fault()
        and mfill_atomic_hugetlb() call it first, before anything can fail or go to userfault; a PTE table or a
        PMD leaf has one under it too.  Whether one exists decides a hugetlb walk: hugetlb_walk() returns NULL
        without it and walk_hugetlb_range() calls .pte_hole instead of .hugetlb_entry [measured: PAGEMAP_SCAN
        of a never-touched hugetlb VMA alone in its GiB reads 0, not PAGE_IS_HUGE, until a fault there]."""
        self.pmd_tables.add(addr >> 30)

    def pmd_table_runs(self, start: int, end: int):
        """Split [start, end) into (start, end, has_pmd_table) runs, a PUD (1 GiB) at a time."""
        return _runs(start, end, 30, self._puds_in(start, end))

    def _puds_in(self, start: int, end: int) -> list[int]:
        """PUD indices with a PMD table over [start, end), ascending: O(tables), not O(range)."""
        lo, hi = start >> 30, (end - 1) >> 30
        if hi - lo < 8:
            return [p for p in range(lo, hi + 1) if p in self.pmd_tables]
        return sorted(p for p in self.pmd_tables if lo <= p <= hi)

    def _tables_in(self, lo: int, hi: int) -> list[int]:
        """PMD indices in [lo, hi] that have a table, ascending: bisect over a sorted copy kept until the
        set changes (O(log T + found), never O(hi - lo))."""
        srt = self._pgt_sorted
        if srt is None:
            srt = self._pgt_sorted = sorted(self.pgtables)
        return srt[bisect.bisect_left(srt, lo):bisect.bisect_right(srt, hi)]

    def pmd_none(self, addr: int) -> bool:
        return addr >> 21 not in self.pgtables and not (self.pmds and addr & HPAGE_PMD_MASK in self.pmds)

    def pmd_leaf(self, addr: int) -> Pte | None:
        """The PMD leaf (pmd_trans_huge) over ``addr``, or None."""
        return self.pmds.get(addr & HPAGE_PMD_MASK) if self.pmds else None

    def set_pmd(self, haddr: int, pmd: Pte | None) -> None:
        """set_pmd_at() / pmdp_huge_clear(): install or clear the leaf at ``haddr``, keeping the entire
        mapcount of the large folio it maps."""
        old = self.pmds.get(haddr)
        if old is not None and old.present and (pmd is None or pmd.page is not old.page):
            old.page.mapcount -= 1
        if pmd is None:
            self.pmds.pop(haddr, None)
            return
        if pmd.present and (old is None or not old.present or old.page is not pmd.page):
            pmd.page.mapcount += 1
        self.pmds[haddr] = pmd
        self.pmd_tables.add(haddr >> 30)

    def page_at(self, vma, addr: int):
        """(PTE or PMD leaf, 4 KiB page or hugetlb folio, offset into it) of a present mapping of ``addr``."""
        if self.pmds and not vma.hugetlb:
            pmd = self.pmds.get(addr & HPAGE_PMD_MASK)
            if pmd is not None:
                off = addr & ~HPAGE_PMD_MASK
                folio = pmd.page
                if folio.pages is None:          # the huge zero folio
                    return pmd, folio, off
                return pmd, folio.pages[off >> 12], off & (PAGE_SIZE - 1)
        base = addr & _PAGE_MASK if not vma.flags & VM_HUGETLB else self.page_base(vma, addr)
        pte = self.ptes[base]
        return pte, pte.page, addr - base

    def table_runs(self, start: int, end: int):
        """Split [start, end) into (start, end, has_page_table) runs; O(page tables), not O(range)."""
        lo, hi = start >> 21, (end - 1) >> 21
        if hi - lo < 8:
            tables = [p for p in range(lo, hi + 1) if p in self.pgtables]
        else:
            tables = self._tables_in(lo, hi)
        return _runs(start, end, 21, tables)

    def free_pgtables(self, start: int, end: int) -> None:
        """free_pgtables() after an unmap of [start, end): a table goes when no VMA is left in the range it maps
        (free_pmd_range() / free_pud_range(): floor and ceiling are the neighbouring VMAs)."""
        for pmd in self._tables_in(start >> 21, (end - 1) >> 21):
            if not self.vmas_in(pmd << 21, (pmd + 1) << 21):
                self.pgtables.discard(pmd)
                self._pgt_sorted = None
        for pud in self._puds_in(start, end):
            if not self.vmas_in(pud << 30, (pud + 1) << 30):
                self.pmd_tables.discard(pud)

    def page_base(self, vma, addr: int) -> int:
        if vma.flags & VM_HUGETLB:
            return addr - (addr - vma.start) % vma.page_size
        return addr & _PAGE_MASK

    def set_pte(self, addr: int, pte: Pte | None) -> None:
        old = self.ptes.get(addr)
        if old is not None and old.present and (pte is None or pte.page is not old.page):
            old.page.mapcount -= 1
        if pte is None:
            self.ptes.pop(addr, None)
            return
        if pte.present and (old is None or not old.present or old.page is not pte.page):
            pte.page.mapcount += 1
        if old is None:
            self._pte_index = None        # a new key: the sorted view is rebuilt on next use
        self.ptes[addr] = pte
        self.pte_alloc(addr)

    def pte_val(self, pte) -> int:
        return _tlb.pte_val(pte, self.soft_dirty_config)

    def needs_flush(self, old: Pte | None, new: Pte | None) -> bool:
        return _tlb.pte_needs_flush(self.pte_val(old), self.pte_val(new), self.profile.clean_wp_noflush)

    def pte_keys(self, start: int, end: int, step: int):
        """Addresses of existing PTEs in [start, end), ascending: O(log P + the keys in the range) by bisect over
        the sorted view of the PTE map; O(range) probes when the range is tiny, or smaller than the PTE map
        while that view would have to be rebuilt."""
        ptes = self.ptes
        n = (end - start) // step
        if n <= 8 or n <= len(ptes) and self._pte_index is None:
            return [a for a in range(start, end, step) if a in ptes]
        srt = self.pte_index()
        return [a for a in srt[bisect.bisect_left(srt, start):bisect.bisect_left(srt, end)] if a in ptes]

    def pte_keys_view(self, start: int, end: int, step: int) -> tuple[list[int], int, int]:
        """(keys, i0, i1): keys[i0:i1] are what pte_keys() gives, ascending, without a copy of the sorted view
        (so it may also hold keys removed since it was built: a reader skips what ``ptes`` lacks); for a
        tiny range, the probed list."""
        ptes = self.ptes
        n = (end - start) // step
        if n <= 8 or n <= len(ptes) and self._pte_index is None:
            keys = [a for a in range(start, end, step) if a in ptes]
            return keys, 0, len(keys)
        srt = self.pte_index()
        return srt, bisect.bisect_left(srt, start), bisect.bisect_left(srt, end)

    def pte_index(self) -> list[int]:
        """The PTE map's keys, ascending, kept until a key is added (set_pte(), or a ``_pte_index = None`` where
        a hot path stores into ``ptes`` directly).  A key removed since stays in it until the next rebuild:
        readers skip what ``ptes`` no longer has, and many such keys make the next use rebuild it."""
        srt = self._pte_index
        if srt is None or len(srt) > 2 * len(self.ptes) + 64:
            srt = self._pte_index = sorted(self.ptes)
        return srt


def _runs(start: int, end: int, shift: int, tables):
    """[start, end) as (start, end, has_table) runs, given the ascending indices (addr >> shift) with a table."""
    pos = start
    for p in tables:
        a, b = max(start, p << shift), min(end, (p + 1) << shift)
        if a > pos:
            yield pos, a, False
        yield a, b, True
        pos = b
    if pos < end:
        yield pos, end, False
