"""madvise() (mm/madvise.c): DONTNEED, REMOVE, FREE, COLD, PAGEOUT, guard regions, HUGEPAGE / NOHUGEPAGE
(hugepage_madvise()) and COLLAPSE (khugepaged.py).
"""
from __future__ import annotations

import errno as E

from ... import uapi
from .mm_types import (HPAGE_SIZE, PAGE_SIZE, PTE_MARKER_GUARD, PTE_MARKER_POISONED, VM_DONTCOPY, VM_HUGEPAGE,
                       VM_HUGETLB, VM_LOCKED, VM_NOHUGEPAGE, VM_WIPEONFORK, is_swap_entry, make_pte_marker)


# include/uapi/asm-generic/mman-common.h: advice the kernel takes that this model does not carry out.  The
# adapter raises NotModelled for them instead of the model answering EINVAL (which the kernel never would).
MADV_NOT_MODELLED = {0: "MADV_NORMAL", 1: "MADV_RANDOM", 2: "MADV_SEQUENTIAL", 3: "MADV_WILLNEED",
                     12: "MADV_MERGEABLE", 13: "MADV_UNMERGEABLE", 16: "MADV_DONTDUMP", 17: "MADV_DODUMP",
                     22: "MADV_POPULATE_READ", 23: "MADV_POPULATE_WRITE", 24: "MADV_DONTNEED_LOCKED",
                     100: "MADV_HWPOISON", 101: "MADV_SOFT_OFFLINE"}


MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK, MADV_KEEPONFORK = 10, 11, 18, 19
# madvise_vma_behavior(): the fork advices set or clear one VMA flag (splitting the VMA)
_FORK_ADVICE = {MADV_DONTFORK: (VM_DONTCOPY, True), MADV_DOFORK: (VM_DONTCOPY, False),
                MADV_WIPEONFORK: (VM_WIPEONFORK, True), MADV_KEEPONFORK: (VM_WIPEONFORK, False)}


class Madvise:
    """mm/madvise.c."""

    def madvise_fork_flags(self, start: int, end: int, advice: int) -> int:
        """MADV_DONTFORK / DOFORK (VM_DONTCOPY) and MADV_WIPEONFORK / KEEPONFORK (VM_WIPEONFORK; only on
        private anonymous memory: a file or shared VMA is EINVAL)."""
        flag, on = _FORK_ADVICE[advice]
        vma = self.find_vma(start)
        if advice == MADV_WIPEONFORK and (not vma.anon or vma.shared):
            return -E.EINVAL
        for v in self.split(start, end):
            v.flags = v.flags | flag if on else v.flags & ~flag
        self.merge()
        return 0

    def madvise(self, start: int, length: int, advice: int) -> int:
        if start % PAGE_SIZE:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        vmas = self.vmas_in(start, end)
        covered = sum(min(end, v.end) - max(start, v.start) for v in vmas)
        if advice in (uapi.MADV_HUGEPAGE, uapi.MADV_NOHUGEPAGE):
            return self.hugepage_madvise(start, end, advice, covered)
        for vma in vmas:
            s, e = max(start, vma.start), min(end, vma.end)
            if advice == uapi.MADV_DONTNEED:
                if vma.flags & VM_LOCKED:                  # madvise_dontneed_free_valid_vma()
                    return -E.EINVAL
                self.zap_pte_range(vma, s, e)
                if self.profile.pt_reclaim and not vma.hugetlb:
                    self.reclaim_pt_if_empty(s, e)           # huge_memory.py
            elif advice == uapi.MADV_REMOVE:
                if not vma.shared or vma.anon:
                    return -E.EINVAL
                lo, hi, pages = vma.linear_page_index(s), vma.linear_page_index(e - 1), vma.file.pages
                for idx in range(lo, hi + 1) if hi - lo < len(pages) else [i for i in pages if lo <= i <= hi]:
                    pages.pop(idx, None)              # the range or the cached pages, whichever is fewer
                self.zap_pte_range(vma, s, e)
            elif advice == uapi.MADV_FREE:
                if not vma.anon:
                    return -E.EINVAL
                flush = self.madvise_free_huge_pmds(vma, s, e)
                cuts = self.split_large_folios(vma, s, e, free=True)   # huge_memory.py: part of a PTE-mapped THP
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    if cuts and any(c <= a < ce for c, ce in cuts):
                        continue                           # past a shared large folio (before 6.10)
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
                        head = folio.head
                        if head is not None:               # a large folio's flags are the folio's, not a page's
                            head.dirty, head.lazyfree = False, head.anon
                self.tlb.flush_range(flush)
            elif advice in (uapi.MADV_COLD, uapi.MADV_PAGEOUT):
                if vma.flags & (VM_LOCKED | VM_HUGETLB):  # can_madv_lru_vma()
                    return -E.EINVAL
                done = self.madvise_cold_or_pageout_huge_pmds(vma, s, e, advice == uapi.MADV_PAGEOUT)  # huge_memory.py
                for ps, pe in _ranges_without(s, e, done, HPAGE_SIZE):     # the PTE step: not those PMDs
                    cuts = self.split_large_folios(vma, ps, pe, advice == uapi.MADV_PAGEOUT)
                    for cs, ce in _ranges_without_runs(ps, pe, cuts):       # past a shared large folio (< 6.10)
                        self.madvise_cold_or_pageout_pte_range(vma, cs, ce, advice == uapi.MADV_PAGEOUT)
            elif advice == uapi.MADV_GUARD_INSTALL:
                if not self.profile.guard_markers or vma.shared or vma.hugetlb:
                    return -E.EINVAL
                self.anon_vma_prepare(vma)      # so that vma_needs_copy() copies the guard markers on fork
                self.zap_pte_range(vma, s, e, final=True)
                for a in range(s, e, PAGE_SIZE):
                    self.set_pte(a, make_pte_marker(PTE_MARKER_GUARD))
            elif advice == uapi.MADV_GUARD_REMOVE:
                if not self.profile.guard_markers:
                    return -E.EINVAL
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    if not self.ptes[a].present and self.ptes[a].marker & PTE_MARKER_GUARD:
                        del self.ptes[a]
            elif advice == uapi.MADV_COLLAPSE:
                err = self.madvise_collapse(vma, s, e)   # khugepaged.py
                if err:
                    return err
            elif advice in _FORK_ADVICE:
                err = self.madvise_fork_flags(s, e, advice)
                if err:
                    return err
            else:
                return -E.EINVAL
        return 0 if covered == end - start else -E.ENOMEM

    def hugepage_madvise(self, start: int, end: int, advice: int, covered: int) -> int:
        """MADV_HUGEPAGE sets VM_HUGEPAGE and clears VM_NOHUGEPAGE, MADV_NOHUGEPAGE the reverse; only the
        VMAs whose flags change are split (madvise_update_vma())."""
        on, off = (VM_HUGEPAGE, VM_NOHUGEPAGE) if advice == uapi.MADV_HUGEPAGE else (VM_NOHUGEPAGE, VM_HUGEPAGE)
        for vma in self.split(start, end, only=lambda v: (v.flags & ~off) | on != v.flags):
            vma.flags = (vma.flags & ~off) | on
        self.merge()
        return 0 if covered == end - start else -E.ENOMEM

    def madvise_free_huge_pmds(self, vma, s: int, e: int) -> list:
        """madvise_free_huge_pmd(): a whole leaf is made old and clean in place; a leaf covered in part is split
        (the PTE loop then does its part).  Returns the addresses to flush."""
        flush = []
        for haddr in sorted(h for h in self.pmds if h < e and s < h + HPAGE_SIZE) if self.pmds else ():
            pmd = self.pmds[haddr]
            if pmd.special:
                continue                     # "if (is_huge_zero_pmd(orig_pmd)) goto out" [differential, seed 44]
            folio = pmd.page
            # mapped elsewhere (6.1: total_mapcount() != 1; 6.12: folio_likely_mapped_shared()): the leaf is
            # skipped before the split is considered -- a shared THP covered in part stays PMD-mapped, and the
            # PTE loop finds no table under it [differential, soak seed 555073453: fork, then MADV_FREE of part]
            if folio.mapcount != 1 or any(p.mapcount for p in folio.pages):
                continue
            if not (s <= haddr and haddr + HPAGE_SIZE <= e):
                self.split_folio(vma, folio.pages[0], haddr)   # "split_folio(folio)": part of a THP
                continue
            folio.dirty = False                  # folio_clear_dirty()
            if pmd.young or pmd.dirty:
                pmd.young = pmd.dirty = False
                flush.append(haddr)
            folio.lazyfree = True                # folio_mark_lazyfree(): reclaim may discard it whole
        return flush

    def madvise_cold_or_pageout_pte_range(self, vma, start: int, end: int, pageout: bool) -> None:
        """Present PTEs of normal folios mapped only here (folio_mapcount() == 1: "do not interfere with other
        mappings of this folio"; the zero page is no normal folio): COLD clears young, PAGEOUT isolates them for
        reclaim_pages().  Every folio is on the LRU here (the tool drains the per-CPU batches on the kernel)."""
        isolated, flush = [], []
        for a in self.pte_keys(start, end, PAGE_SIZE):
            pte = self.ptes[a]
            if not pte.present or pte.special or pte.page.mapcount != 1:
                continue
            folio = pte.page.head
            # a large folio left unsplit (split_large_folios()): mapped elsewhere too -- another mm's PMD or
            # PTEs (folio_likely_mapped_shared()), or folio_mapcount(folio) != folio_nr_pages(folio) -- is left
            # alone [differential, seed 280: a parent's pageout of a THP its forked child still maps whole]
            if folio is not None and (folio.mapcount or sum(p.mapcount for p in folio.pages) != len(folio.pages)):
                continue
            if pageout and folio is not None and folio.anon and folio.lazyfree:
                if not isolated or isolated[-1][1][0] is not folio:
                    isolated.append((vma, (folio, a)))   # the large folio once: reclaim unmaps it as one batch
            elif pageout:
                isolated.append((vma, a))
            elif pte.young:
                pte.young = False
                flush.append(a)
        self.tlb.flush_range(flush)
        if isolated:
            self.reclaim_pages(isolated)


def _ranges_without_runs(s: int, e: int, runs: list):
    """[s, e) less the (start, end) ``runs`` (sorted, disjoint)."""
    for rs, re_ in runs:
        if s < rs:
            yield s, min(rs, e)
        s = max(s, re_)
    if s < e:
        yield s, e


def _ranges_without(s: int, e: int, holes: list, size: int):
    """[s, e) less the ``size``-long blocks starting at ``holes``, as (start, end) runs."""
    return _ranges_without_runs(s, e, [(h, h + size) for h in sorted(holes)])
