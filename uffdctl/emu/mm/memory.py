"""The fault path (mm/memory.c): handle_mm_fault() and its branches (do_anonymous_page, do_fault
with fault-around, do_wp_page, the PTE-marker handler), zap_pte_range(), the kernel's own
copy_from_user() of UFFDIO_COPY's source, and page allocation (anon_vma_prepare() of mm/rmap.c).
"""
from __future__ import annotations

import errno as E

from .. import tlb as _tlb
from .huge_memory import VM_FAULT_FALLBACK
from .mm_types import (Folio, HPAGE_PMD_MASK, HPAGE_SIZE, PAGE_SIZE, PTE_MARKER_GUARD, PTE_MARKER_POISONED,
                       PTE_MARKER_UFFD_WP, Pte, VM_FAULT_HWPOISON, VM_FAULT_LIVELOCK, VM_FAULT_MAJOR, VM_FAULT_OK,
                       VM_FAULT_RETRY,
                       VM_FAULT_ERROR, VM_FAULT_SIGSEGV, VM_HUGEPAGE, VM_HUGETLB, VM_LOCKED, VM_READ, VM_UFFD_MINOR, VM_UFFD_MISSING,
                       VM_UFFD_WP, VM_WRITE, VmFault, make_pte_marker, new_vmf, userfaultfd_missing, userfaultfd_wp)

_SLOW = object()     # copy_page_from_user(): not the one-page case
_PAGE_MASK = ~(PAGE_SIZE - 1)
_PAGE_RW, _PAGE_DIRTY = _tlb._PAGE_RW, _tlb._PAGE_DIRTY
_pte_val = _tlb.pte_val
_VM_READ_WRITE = VM_READ | VM_WRITE


class Memory:
    """mm/memory.c: faults and zaps."""

    def access_ok(self, vma, addr: int, write: bool) -> bool:
        """The CPU's view: TLB hit, or a page walk that finds a PTE allowing the access (sets A, D)."""
        pmds = self.pmds
        if vma.flags & VM_HUGETLB:
            base, leaf = self.page_base(vma, addr), False
        elif pmds and addr & HPAGE_PMD_MASK in pmds:
            base, leaf = addr & HPAGE_PMD_MASK, True    # a PMD leaf: one TLB entry for its 2 MiB
        else:
            base, leaf = addr & _PAGE_MASK, False
        entries = self.tlb.entries
        v = entries.get(base)                       # Tlb.hit(), inline
        if v is not None and (not write or v & _PAGE_RW and v & _PAGE_DIRTY):
            return True
        pte = pmds[base] if leaf else self.ptes.get(base)
        if pte is None or pte.page is None or (write and not pte.write):
            return False
        pte.young = True
        if write:
            pte.dirty = True           # hardware D; soft-dirty is only set by pte_mkdirty() in software
        entries[base] = _pte_val(pte, self.soft_dirty_config)    # Tlb.fill()
        return True

    def handle_mm_fault(self, vma, real_address: int, write: bool, task) -> int:
        flags = vma.flags
        if write and not flags & VM_WRITE or not flags & _VM_READ_WRITE:
            return VM_FAULT_SIGSEGV     # access_error()
        addr = real_address & _PAGE_MASK if not flags & VM_HUGETLB else self.page_base(vma, real_address)
        pte = self.ptes.get(addr)
        if pte is not None and pte.page is not None and (not write or pte.write):
            pte.young = True           # spurious fault: the TLB was stale (the last case below, without a vmf)
            if write:
                pte.dirty = pte.soft_dirty = True     # pte_mkdirty(), inline
            return VM_FAULT_OK
        vmf = new_vmf(vma, real_address, addr, write, pte, task)
        if pte is None:
            if flags & VM_HUGETLB:
                return self.do_pte_missing(vmf)
            if self.pmds or flags & VM_HUGEPAGE or self.thp.any_always:
                r = self.huge_pmd_fault(vmf)                 # huge_memory.py: the PMD level
                if r != VM_FAULT_FALLBACK:
                    return r
                vmf.orig_pte = pte = self.ptes.get(addr)     # split: the PTE level sees the new PTE
                if pte is None:
                    return self.do_pte_missing(vmf)
            else:                                            # do_pte_missing(), inline
                return self.do_anonymous_page(vmf) if vma.file is None else self.do_fault(vmf)
        if pte.swp is not None:
            return self.do_swap_page(vmf)
        if pte.page is None:            # !pte_present(): a marker
            return self.handle_pte_marker(vmf)
        if write and not pte.write:
            return self.do_wp_page(vmf)
        pte.young = True               # spurious fault: the TLB was stale
        if write:
            self.pte_mkdirty(pte)
        return VM_FAULT_OK

    def handle_pte_marker(self, vmf) -> int:
        m = vmf.orig_pte.marker
        if m & PTE_MARKER_POISONED:
            return VM_FAULT_HWPOISON
        if m & PTE_MARKER_GUARD:
            return VM_FAULT_SIGSEGV
        if vmf.vma.hugetlb:          # hugetlb_fault(): the marker's uffd-wp carries over, VMA flags or not
            return self.hugetlb_fault(vmf)
        # pte_marker_handle_uffd_wp(): a stale marker on a VMA no longer uffd-wp is cleared (pte_marker_clear),
        # the fault returns and the CPU faults again
        if not userfaultfd_wp(vmf.vma):
            self.set_pte(vmf.address, None)
            return VM_FAULT_OK
        return self.do_pte_missing(vmf)

    def do_swap_page(self, vmf) -> int:
        """do_swap_page(): the folio comes from the swap cache (always there: no memory pressure, a minor
        fault), mapped with the swp soft-dirty and uffd-wp bits.  Reused (exclusive) it is mapped writable on
        6.12+ whenever VM_WRITE and neither uffd-wp nor soft-dirty tracking wants the write fault; on 6.1 only
        on a write fault (maybe_mkwrite), and a uffd-wp entry is write-protected after, so the write faults
        again.  A write fault that stays a write fault goes on to do_wp_page() (the uffd-wp message)."""
        vma, orig = vmf.vma, vmf.orig_pte
        sw = self.swap
        folio = sw.swap_cache_get_folio(orig.swp)
        major = VM_FAULT_MAJOR if sw.swap_read_folio(orig.swp) else 0
        write = vmf.write
        sw.swap_free(orig.swp)
        # should_try_to_free_swap(): VM_LOCKED, or a write fault by the folio's only user
        if folio.swap is not None and (vma.flags & VM_LOCKED or write and not folio.mapcount):
            if not sw.swap_count(folio.swap):
                sw.delete_from_swap_cache(folio)
        pte = Pte(folio, young=True, soft_dirty=orig.soft_dirty, uffd_wp=orig.uffd_wp)
        if orig.exclusive or folio.swap is None and not folio.mapcount:
            if self.profile.swapin_read_writable:
                if vma.flags & VM_WRITE and not (pte.uffd_wp and userfaultfd_wp(vma)) and \
                        not (self.vma_soft_dirty_enabled(vma) and not pte.soft_dirty):
                    pte.write = True
                    if write:
                        self.pte_mkdirty(pte)
                        write = False
            elif write:
                pte.write = bool(vma.flags & VM_WRITE)     # maybe_mkwrite(pte_mkdirty())
                self.pte_mkdirty(pte)
                write = False
                if pte.uffd_wp:
                    pte.write = False
            folio.exclusive = True
        self.set_pte(vmf.address, pte)
        if write:
            vmf.orig_pte = pte
            r = self.do_wp_page(vmf)
            return r if r & ~VM_FAULT_MAJOR else r | major     # a RETRY (userfault) is never accounted
        return major

    def do_pte_missing(self, vmf) -> int:
        return self.do_anonymous_page(vmf) if vmf.vma.file is None else self.do_fault(vmf)   # vma_is_anonymous()

    def pte_mkdirty(self, pte: Pte) -> None:
        pte.dirty = True
        pte.soft_dirty = True          # x86: pte_mkdirty() sets _PAGE_SOFT_DIRTY too

    def handle_userfault(self, vmf, reason: int) -> int:
        ctx = vmf.vma.ctx
        return ctx.handle_userfault(vmf, reason)

    def do_anonymous_page(self, vmf) -> int:
        vma = vmf.vma
        if vma.flags & VM_HUGETLB:
            return self.hugetlb_fault(vmf)
        pmd = vmf.address >> 21               # pte_alloc(), inline: it precedes the userfault check
        if pmd not in self.pgtables:
            self.pte_alloc(vmf.address)
        if vmf.write and vma.anon_vma is None:   # vmf_anon_prepare() too, on a write [differential, seed 5081:
            self.anon_vma_prepare(vma)        # a MISSING write makes the VMA collapsible: EBUSY, not EINVAL]
        if vma.flags & VM_UFFD_MISSING:       # userfaultfd_missing(): handle_userfault() of the VMA's ctx
            return vma.ctx.handle_userfault(vmf, VM_UFFD_MISSING)
        uffd_wp = vmf.orig_pte_uffd_wp
        if not vmf.write:
            pte = Pte(self.zero_page, False, False, True, False, uffd_wp, True)   # young, special
        elif self.profile.mthp and (m := self.alloc_anon_folio(vmf)) is not None:   # huge_memory.py: mTHP
            a, size = m
            for i, p in enumerate(self.alloc_large_folio(vma, size).pages):
                new = Pte(p, write=True, young=True)
                self.pte_mkdirty(new)
                self.set_pte(a + i * PAGE_SIZE, new)
            return VM_FAULT_OK
        else:
            pte = Pte(self.alloc_anon(vma, PAGE_SIZE), True, True, True, True)   # write, young, pte_mkdirty()
            if uffd_wp:
                pte.uffd_wp, pte.write = True, False   # pte_mkuffd_wp() write-protects
        self.set_pte(vmf.address, pte)
        return VM_FAULT_OK

    def do_fault_around(self, vmf) -> None:
        """filemap_map_pages() over the 16-page window around a read fault (not for uffd-wp/minor VMAs)."""
        vma = vmf.vma
        if vma.flags & (VM_UFFD_WP | VM_UFFD_MINOR) or vma.hugetlb:
            return
        if self.filemap_map_pmd(vmf):          # huge_memory.py: a PMD-sized cache folio over a none PMD
            return
        nr = 16 * PAGE_SIZE
        lo = max(vmf.address & ~(nr - 1), vma.start, vmf.address & ~(HPAGE_SIZE - 1))
        hi = min(lo + nr, vma.end, (vmf.address & ~(HPAGE_SIZE - 1)) + HPAGE_SIZE)
        prot_w = self.vm_page_prot_writable(vma)
        for a in range(lo, hi, PAGE_SIZE):
            if a in self.ptes:
                continue
            folio = vma.file.pages.get(vma.linear_page_index(a))
            # next_uptodate_folio(): not a swap entry in the cache, not PG_readahead (= PG_reclaim)
            if folio is not None and folio.swap is None and not folio.reclaim:
                self.set_pte(a, Pte(folio, write=prot_w, young=True))

    def do_fault(self, vmf) -> int:
        vma = vmf.vma
        if vma.hugetlb:
            return self.hugetlb_fault(vmf)
        if not vmf.write:
            self.do_fault_around(vmf)
            if vmf.address in self.ptes and self.ptes[vmf.address].present or self.pmds and self.pmd_leaf(vmf.address):
                return VM_FAULT_OK   # mapped by fault-around (VM_FAULT_NOPAGE)
        if vmf.write and not vma.shared and vma.anon_vma is None:
            # do_cow_fault() prepares the anon_vma before __do_fault(), so a write that then waits in a MISSING
            # userfault leaves one, and fork copies the VMA's page tables (vma_needs_copy()) [differential,
            # seed 651397666: a shmem-private read-mapped page-cache page reached the child]
            self.anon_vma_prepare(vma)
        ret, folio = self.shmem_get_folio(vmf)
        dropped = folio is not None and ret & VM_FAULT_RETRY     # filemap_fault() dropped the lock for readahead
        major, ret = ret & VM_FAULT_MAJOR, ret & ~(VM_FAULT_MAJOR | (VM_FAULT_RETRY if dropped else 0))
        if ret:
            return ret
        if (major or dropped) and not vmf.write:
            # filemap_fault() dropped the lock to read (VM_FAULT_RETRY): the retried read fault maps the
            # read-around by fault-around first [measured on 6.18: a read miss maps its neighbours]
            self.do_fault_around(vmf)
            p = self.ptes.get(vmf.address)
            if p is not None and p.page is not None:
                return major
        uffd_wp = vmf.orig_pte_uffd_wp
        if folio.head is not None and not (vmf.write and not vma.shared) and not uffd_wp and \
                self.finish_fault_large(vmf, folio, vmf.write):       # huge_memory.py: the whole large folio
            return VM_FAULT_OK
        if vmf.write and not vma.shared:          # do_cow_fault()
            pte = Pte(self.alloc_anon(vma, PAGE_SIZE, folio.copy_data()), write=True, young=True)
            self.pte_mkdirty(pte)
        elif vmf.write:                           # do_shared_fault()
            pte = Pte(folio, write=True, young=True)
            self.pte_mkdirty(pte)
        else:                                     # do_read_fault()
            pte = Pte(folio, write=self.vm_page_prot_writable(vma), young=True)
        if uffd_wp:
            pte.uffd_wp, pte.write = True, False
        self.set_pte(vmf.address, pte)
        return major

    def do_wp_page(self, vmf) -> int:
        vma, pte = vmf.vma, vmf.orig_pte
        if pte.uffd_wp and userfaultfd_wp(vma):     # userfaultfd_pte_wp()
            if not vma.ctx.wp_async:
                return self.handle_userfault(vmf, VM_UFFD_WP)
            pte.uffd_wp = False                      # async: resolved in the kernel, no message
        elif pte.uffd_wp and vma.hugetlb:
            # hugetlb_wp(): "Never handle CoW for uffd-wp protected pages" returns 0 even when the VMA lost
            # VM_UFFD_WP (re-registered without WP): the write faults again forever [measured on 6.18]
            return VM_FAULT_LIVELOCK
        page = pte.page
        if not vma.shared and page.anon and not page.exclusive and not pte.special:
            head = getattr(page, "head", None)
            if head is None and page.mapcount == 1:
                # wp_can_reuse_anon_folio(): the other mapper is gone; a folio in the swap cache is freed from
                # it first (folio_free_swap()), which fails while a swap entry still holds its slot (one a fork
                # shared): that reference blocks the reuse, the write copies [differential, seed 227488197]
                if page.swap is not None and not self.swap.swap_count(page.swap):
                    self.swap.delete_from_swap_cache(page)
                if page.swap is None:
                    page.exclusive = True
            elif head is not None and self.profile.wp_reuse_large_anon and self.wp_can_reuse_large_anon_folio(head):
                page.exclusive = True                # SetPageAnonExclusive(vmf->page), then wp_page_reuse()
        if vma.shared or (page.anon and page.exclusive and not pte.special):
            new = pte.copy()                         # wp_page_reuse() / wp_page_shared()
            new.young, new.write = True, True
            self.pte_mkdirty(new)
            self.ptes[vmf.address] = new
            return VM_FAULT_OK
        # wp_page_copy(): zero page or a page-cache page in a private mapping
        data = None if pte.special else page.copy_data()
        new = Pte(self.alloc_anon(vma, vma.page_size, data), write=True, young=True)
        self.pte_mkdirty(new)
        self.set_pte(vmf.address, new)
        self.tlb.flush_range([vmf.address])          # ptep_clear_flush()
        return VM_FAULT_OK

    def wp_can_reuse_large_anon_folio(self, folio) -> bool:
        """__wp_can_reuse_large_anon_folio() (6.15, "mm: Copy-on-Write (COW) reuse support for PTE-mapped THP";
        before, wp_can_reuse_anon_folio() said no to any large folio): a page of a PTE-mapped anon THP is
        reused when the folio has more than one mapping and every one of them is in this mm (the folio's mm_id
        slots: FOLIO_MM_IDS_SHARED_BITNUM clear) -- e.g. once the child a fork shared it with has exited
        [measured on 6.18 by the differential: make soak, seed 869787569].  Modelled exactly (this mm's PTEs and
        PMD mappings of the folio are all of its mappings), where the kernel's two mm_id slots can keep the
        shared bit after both slot holders unmap while a third mm still maps it.  This path only (a write to a
        page a fork shared) walks the mm's page tables.  A large folio is never in the swap cache here
        (reclaim splits it first)."""
        total = folio.mapcount + sum(p.mapcount for p in folio.pages)     # folio_large_mapcount()
        if total <= 1:
            return False                     # "just free up a large folio if only a single page is mapped"
        here = sum(1 for p in self.pmds.values() if p.page is folio) + \
            sum(1 for p in self.ptes.values() if p.page is not None and p.page.head is folio)
        return here == total

    def copy_from_user(self, addr: int, length: int) -> bytes | int:
        """Read ``length`` bytes the way the kernel's copy_from_user does: faulting pages in
        from the ioctl caller's context.  A fault that would wait in a userfault cannot block
        the emulator's caller: it fails with -EFAULT (documented)."""
        data = self.copy_page_from_user(addr, length)
        if data is not _SLOW:
            return data if isinstance(data, int) else bytes(length) if data is None else bytes(data).ljust(length, b"\0")
        out = bytearray()
        pos, end = addr, addr + length
        while pos < end:
            vma = self.find_vma(pos)
            if vma is None:
                return -E.EFAULT
            base = self.page_base(vma, pos)
            n = min(end, base + vma.page_size) - pos
            if not self.fault_in_user_page(vma, pos):
                return -E.EFAULT
            _, page, off = self.page_at(vma, pos)
            n = min(n, page.size - off)
            out += page.read(off, n)
            pos += n
        return bytes(out)

    def fault_in_user_page(self, vma, addr: int) -> bool:
        """A kernel read of user memory that misses (mfill_atomic()'s copy_folio_from_user() retry outside
        mmap_lock, faults enabled): the page fault of the uaccess, do_user_addr_fault().  Only the
        VM_FAULT_ERROR bits fail it (kernelmode_fixup_or_oops(): -EFAULT); VM_FAULT_MAJOR is an accounting bit
        (a swap-in that read, a page-cache miss), after which the access is tried again.  A read never
        livelocks (only a write to a uffd-wp hugetlb page does)."""
        for _ in range(4):
            if self.access_ok(vma, addr, False):
                return True
            if self.handle_mm_fault(vma, addr, False, None) & VM_FAULT_ERROR:
                return False
        return False

    def read_fault_maps_zero_page(self, vma) -> bool:
        """Whether a read fault on a none PTE of ``vma`` by the kernel itself (copy_from_user(): no task)
        is handle_mm_fault() -> do_anonymous_page() mapping the zero page and nothing else: a readable
        private anon VMA with no MISSING registration, no hugetlb, and no PMD level to try first."""
        return (vma.file is None and vma.flags & (VM_READ | VM_WRITE) and
                not vma.flags & (VM_HUGETLB | VM_UFFD_MISSING | VM_HUGEPAGE) and
                not self.pmds and not self.thp.any_always)

    def copy_page_from_user(self, addr: int, length: int, vma=None):
        """copy_from_user() of one whole 4 KiB source page, as a new bytearray (Folio.data's form: the page's
        first bytes, the rest zeros), None for a page of zeros (Folio.data's "not allocated"), or -EFAULT; ``_SLOW`` when the source is anything else (unaligned,
        another length, a huge page): then copy_from_user() walks it.  One build of the data, not three.
        ``vma``: the VMA the caller found for an earlier page of the same source (used if it holds ``addr``)."""
        if length != PAGE_SIZE or addr & (PAGE_SIZE - 1):
            return _SLOW
        if vma is None or not vma.start <= addr < vma.end:
            vma = self.find_vma(addr)
        if vma is None:
            return -E.EFAULT
        if vma.flags & VM_HUGETLB:
            return _SLOW
        if not self.fault_in_user_page(vma, addr):
            return -E.EFAULT
        _, page, off = self.page_at(vma, addr)          # a PTE, or a page of a PMD leaf
        if page.size != PAGE_SIZE:
            return bytearray(page.read(off, PAGE_SIZE))
        return None if page.data is None else bytearray(page.data)

    def zap_pte_range(self, vma, start: int, end: int, final: bool = False) -> None:
        """zap_pte_range(): drop PTEs; file VMAs keep uffd-wp (as markers) unless unmapping;
        guard markers survive everything but unmap."""
        # pte_install_uffd_wp_if_needed(): shmem only in a uffd-wp VMA; __unmap_hugepage_range(): always
        arm_wp = not final and (vma.hugetlb or not vma.anon and userfaultfd_wp(vma))
        keep_markers = not vma.anon and not final      # only an unmap drops a file VMA's uffd-wp markers
        if self.pmds:
            self.zap_huge_pmds(vma, start, end)
        flush = []
        for a in self.pte_keys(start, end, vma.page_size):
            pte = self.ptes[a]
            if pte.swp is not None:
                self.swap.free_swap_and_cache(pte.swp)
            if pte.present:
                if pte.dirty and not pte.page.anon:
                    pte.page.dirty = True                   # folio_mark_dirty()
                flush.append(a)
                self.set_pte(a, make_pte_marker(PTE_MARKER_UFFD_WP) if arm_wp and pte.uffd_wp else None)
            elif pte.marker & PTE_MARKER_GUARD:
                if final:
                    del self.ptes[a]
            elif pte.marker & PTE_MARKER_UFFD_WP and keep_markers:
                continue
            elif pte.uffd_wp and arm_wp:                    # a zapped swap entry keeps its uffd-wp
                self.ptes[a] = make_pte_marker(PTE_MARKER_UFFD_WP)
            else:
                del self.ptes[a]
        self.tlb.flush_range(flush)

    def anon_vma_prepare(self, vma) -> None:
        """Give a private VMA its anon_vma (first anon folio, or mfill/MOVE, which prepare it up front)."""
        if vma.anon_vma is None and not vma.shared:
            vma.anon_vma = next(self._anon_vmas)

    def alloc_anon(self, vma, size: int, data: bytearray | None = None) -> Folio:
        self.anon_vma_prepare(vma)
        return self.alloc_folio(size, True, data)

    def alloc_folio(self, size: int, anon: bool, data: bytearray | None = None) -> Folio:
        pfn, self._next_pfn = self._next_pfn, self._next_pfn + size // PAGE_SIZE
        return Folio(pfn, size, anon, data)
