"""madvise() (mm/madvise.c): DONTNEED, REMOVE, FREE, COLD, PAGEOUT, guard regions.
"""
from __future__ import annotations

import errno as E

from ... import uapi
from .mm_types import (PAGE_SIZE, PTE_MARKER_GUARD, PTE_MARKER_POISONED, VM_HUGETLB, VM_LOCKED, is_swap_entry,
                       make_pte_marker)


# include/uapi/asm-generic/mman-common.h: advice the kernel takes that this model does not carry out.  The
# adapter raises NotModelled for them instead of the model answering EINVAL (which the kernel never would).
MADV_NOT_MODELLED = {0: "MADV_NORMAL", 1: "MADV_RANDOM", 2: "MADV_SEQUENTIAL", 3: "MADV_WILLNEED",
                     10: "MADV_DONTFORK", 11: "MADV_DOFORK", 12: "MADV_MERGEABLE", 13: "MADV_UNMERGEABLE",
                     14: "MADV_HUGEPAGE", 16: "MADV_DONTDUMP", 17: "MADV_DODUMP", 18: "MADV_WIPEONFORK",
                     19: "MADV_KEEPONFORK", 22: "MADV_POPULATE_READ",
                     23: "MADV_POPULATE_WRITE", 24: "MADV_DONTNEED_LOCKED", 25: "MADV_COLLAPSE",
                     100: "MADV_HWPOISON", 101: "MADV_SOFT_OFFLINE"}


class Madvise:
    """mm/madvise.c."""

    def madvise(self, start: int, length: int, advice: int) -> int:
        if start % PAGE_SIZE:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        vmas = self.vmas_in(start, end)
        covered = sum(min(end, v.end) - max(start, v.start) for v in vmas)
        for vma in vmas:
            s, e = max(start, vma.start), min(end, vma.end)
            if advice == uapi.MADV_DONTNEED:
                if vma.flags & VM_LOCKED:                  # madvise_dontneed_free_valid_vma()
                    return -E.EINVAL
                self.zap_pte_range(vma, s, e)
            elif advice == uapi.MADV_REMOVE:
                if not vma.shared or vma.anon:
                    return -E.EINVAL
                for idx in range(vma.linear_page_index(s), vma.linear_page_index(e - 1) + 1):
                    vma.file.pages.pop(idx, None)
                self.zap_pte_range(vma, s, e)
            elif advice == uapi.MADV_FREE:
                if not vma.anon:
                    return -E.EINVAL
                flush = []
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    pte = self.ptes[a]
                    if is_swap_entry(pte):                 # madvise_free_pte_range(): the swap copy is dropped
                        self.swap.free_swap_and_cache(pte.swp)
                        del self.ptes[a]
                    elif not pte.present and pte.marker & PTE_MARKER_POISONED:
                        del self.ptes[a]                   # is_poisoned_swp_entry(): cleared too [differential]
                    elif pte.present and not pte.special:
                        folio = pte.page
                        if folio.swap is not None or folio.dirty:
                            if folio.mapcount != 1:
                                continue
                            if folio.swap is not None:     # folio_free_swap()
                                self.swap.delete_from_swap_cache(folio)
                            folio.dirty = False
                        new = pte.copy()
                        new.dirty = new.young = False
                        if self.needs_flush(pte, new):
                            flush.append(a)
                        self.ptes[a] = new
                        folio.lazyfree = folio.anon        # folio_mark_lazyfree()
                self.tlb.flush_range(flush)
            elif advice in (uapi.MADV_COLD, uapi.MADV_PAGEOUT):
                if vma.flags & (VM_LOCKED | VM_HUGETLB):  # can_madv_lru_vma()
                    return -E.EINVAL
                self.madvise_cold_or_pageout_pte_range(vma, s, e, advice == uapi.MADV_PAGEOUT)
            elif advice == uapi.MADV_GUARD_INSTALL:
                if not self.profile.guard_markers or vma.shared or vma.hugetlb:
                    return -E.EINVAL
                self.zap_pte_range(vma, s, e, final=True)
                for a in range(s, e, PAGE_SIZE):
                    self.set_pte(a, make_pte_marker(PTE_MARKER_GUARD))
            elif advice == uapi.MADV_GUARD_REMOVE:
                if not self.profile.guard_markers:
                    return -E.EINVAL
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    if not self.ptes[a].present and self.ptes[a].marker & PTE_MARKER_GUARD:
                        del self.ptes[a]
            elif advice == uapi.MADV_NOHUGEPAGE:
                pass
            else:
                return -E.EINVAL
        return 0 if covered == end - start else -E.ENOMEM

    def madvise_cold_or_pageout_pte_range(self, vma, start: int, end: int, pageout: bool) -> None:
        """Present PTEs of normal folios mapped only here (folio_mapcount() == 1: "do not interfere with other
        mappings of this folio"; the zero page is no normal folio): COLD clears young, PAGEOUT isolates them for
        reclaim_pages().  Every folio is on the LRU here (the tool drains the per-CPU batches on the kernel)."""
        isolated, flush = [], []
        for a in self.pte_keys(start, end, PAGE_SIZE):
            pte = self.ptes[a]
            if not pte.present or pte.special or pte.page.mapcount != 1:
                continue
            if pageout:
                isolated.append((vma, a))
            elif pte.young:
                pte.young = False
                flush.append(a)
        self.tlb.flush_range(flush)
        if isolated:
            self.reclaim_pages(isolated)
