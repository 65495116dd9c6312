"""Reclaim of the folios MADV_PAGEOUT isolated (mm/vmscan.c reclaim_pages() / shrink_folio_list(), with
mm/rmap.c try_to_unmap_one() for the one mapping each such folio has).

What each kind of folio becomes (measured on the 6.18 host, with and without a swap device):

* anon, swap-backed: a swap slot (add_to_swap), then the PTE becomes a swap entry carrying soft-dirty,
  uffd-wp and the exclusive bit; no swap space: nothing changes.  The folio stays in the swap cache.
* anon, MADV_FREE'd (lazyfree): clean -> discarded (PTE none, uffd-wp lost: an anon VMA gets no marker);
  written since -> remapped as it was and swap-backed again (the next pageout swaps it).
* file (shmem page cache, a private mapping's cache pages): the PTE is unmapped (a uffd-wp marker where
  pte_install_uffd_wp_if_needed() wants one); a clean folio leaves the page cache (the next fault gets a new
  page), a dirty one stays (in swap when there is room: shmem_writeout(); in the cache without; a disk
  file's with PG_reclaim set, which fault-around reads as PG_readahead and skips).
"""
from __future__ import annotations

from .mm_types import PAGE_SIZE, PTE_MARKER_UFFD_WP, make_pte_marker, swp_entry_to_pte, userfaultfd_wp


class Vmscan:
    """mm/vmscan.c + mm/rmap.c: reclaim of isolated folios."""

    def reclaim_pages(self, isolated: list) -> None:
        """``isolated``: (vma, address) of each folio the madvise walk isolated (mapped once, in that VMA)."""
        flush = []
        for vma, addr in isolated:
            if isinstance(addr, int):
                self.shrink_folio(vma, addr, flush)
            else:
                self.discard_lazyfree_large_folio(vma, *addr, flush)
        self.tlb.flush_range(flush)

    def discard_lazyfree_large_folio(self, vma, folio, addr: int, flush: list) -> None:
        """A PTE-mapped lazyfree large folio (MADV_FREE'd, mapped whole and only here): shrink_folio_list()
        neither swaps nor splits it (!folio_test_swapbacked(): no add_to_swap()), and try_to_unmap_one() unmaps it
        as one batch (folio_unmap_pte_batch(), 6.16+): get_and_clear_full_ptes() gathers the PTEs' dirty and
        young bits; clean, the whole folio is discarded; any page redirtied, every PTE is set back (set_ptes()
        of the gathered value) and the folio is swap-backed again [measured on 6.18: a THP MADV_FREE'd, its
        PMD split by mprotect, one page rewritten, MADV_PAGEOUT keeps all 512 present; none rewritten: all
        discarded]."""
        ptes = self.ptes
        addrs = [a for a in range(addr, addr + len(folio.pages) * PAGE_SIZE, PAGE_SIZE)
                 if a in ptes and ptes[a].present and ptes[a].page.head is folio]
        first = ptes[addrs[0]]
        if not self.profile.lazyfree_batch_unmap:      # before 6.16: PTE by PTE, up to the first dirty one
            for a in addrs:
                if ptes[a].dirty or folio.dirty or ptes[a].page.dirty:
                    _redirtied(folio)
                    return
                self.set_pte(a, None)
                flush.append(a)
            return
        dirty = folio.dirty or any(ptes[a].dirty or ptes[a].page.dirty for a in addrs)
        if not dirty:
            for a in addrs:
                self.set_pte(a, None)
            flush.extend(addrs)
            return
        young = any(ptes[a].young for a in addrs)
        for a in addrs:
            new = ptes[a].copy()
            new.dirty, new.young, new.write, new.soft_dirty = True, young, first.write, first.soft_dirty
            ptes[a] = new
        _redirtied(folio)

    def shrink_folio(self, vma, addr: int, flush: list) -> None:
        pte = self.ptes[addr]
        folio = pte.page
        sw = self.swap
        written = folio.anon and folio.swap is not None      # in the swap cache already: its slot is written
        if folio.anon and not folio.lazyfree and folio.swap is None:
            if sw.folio_alloc_swap(folio) is None:
                return                               # add_to_swap() failed: activate_locked
        # try_to_unmap_one()
        dirty = pte.dirty or folio.dirty
        if folio.anon and folio.lazyfree:
            if dirty:                                # "the folio was redirtied": remapped, swap-backed again
                folio.lazyfree = False
                return
            self.set_pte(addr, None)                 # discard
            flush.append(addr)
            return
        flush.append(addr)
        if folio.anon:
            folio.dirty = dirty
            new = swp_entry_to_pte(folio.swap, uffd_wp=pte.uffd_wp, soft_dirty=pte.soft_dirty,
                                   exclusive=folio.exclusive)
            # folio_try_share_anon_rmap_pte(): the page is no longer PageAnonExclusive (only the swap entry
            # can say so); do_swap_page() makes it exclusive again only where it may [differential, seed
            # 227488197: a forked child's write after swap-in reused the page its parent's swap entry held]
            folio.exclusive = False
            sw.swap_duplicate(folio.swap)
            self.set_pte(addr, new)
            if written and not dirty and not folio.mapcount:
                # clean since its last write-out (a read swap-in): no pageout(), __remove_mapping() frees it and
                # the next access reads it back, a major fault [differential, seed 297802295; the kernel side
                # waits for swap writeback after MADV_PAGEOUT, else a folio still under writeback is skipped]
                sw.remove_mapping(folio, lambda: self.alloc_folio(folio.size, True, folio.copy_data()))
            else:
                self.swap_out(folio)
            return
        # a file folio: unmapped; pte_install_uffd_wp_if_needed() for a uffd-wp file VMA
        armed = userfaultfd_wp(vma) and pte.uffd_wp
        self.set_pte(addr, make_pte_marker(PTE_MARKER_UFFD_WP) if armed else None)
        if folio.mapcount:
            return
        idx = vma.linear_page_index(addr)
        cache = vma.file.pages
        if cache.get(idx) is not folio:
            return
        if not dirty:
            del cache[idx]                           # __remove_mapping(): a clean folio is freed
            return
        folio.dirty = True
        if not vma.file.shmem:
            # only kswapd writes file folios back: folio_set_reclaim(), activate_locked (kept, dirty)
            folio.reclaim = True
            return
        if getattr(vma.file, "shmem", True) and folio.swap is None and sw.folio_alloc_swap(folio) is not None:
            sw.swap_duplicate(folio.swap)            # shmem_writeout(): the page-cache entry holds the slot
            entry = folio.swap
            self.swap_out(folio)
            cache[idx] = sw.swap_cache_get_folio(entry)

    def swap_out(self, folio) -> None:
        """pageout() -> swap_writepage(): written and clean (folio_clear_dirty_for_io(); the folio stays in the
        swap cache, and the differential's kernel side waits for the writeback to end), or on 6.12+ a
        zero-filled one only marked in the zeromap and freed."""
        if self.profile.swap_zeromap and folio.mapcount == 0 and (folio.data is None or not any(folio.data)):
            self.swap.swap_writepage(folio, lambda: self.alloc_folio(folio.size, folio.anon))
        else:
            folio.dirty = False


def _redirtied(folio) -> None:
    """A lazyfree large folio found redirtied by reclaim: folio_mark_dirty(), folio_set_swapbacked()."""
    folio.dirty, folio.lazyfree = True, False
    for p in folio.pages:
        p.lazyfree = False
