"""The page-table side of userfaultfd (mm/userfaultfd.c): mfill_atomic() and its per-page
installers (COPY, ZEROPAGE, CONTINUE, POISON), uffd_wp_range() / mwriteprotect_range(), and
UFFDIO_MOVE's move_pages().  The ctx and the ioctls' argument checks are fs/userfaultfd.c
(``uffdctl.emu.fs.userfaultfd``).
"""
from __future__ import annotations

import errno as E
import gc

from ... import uapi
from ..profiles import (UFFDIO_COPY_MODE_ACCESS_LIKELY, UFFDIO_COPY_MODE_WRITE_LIKELY)
from ..tlb import pte_val
from .memory import _SLOW
from .mm_types import (MFILL_ATOMIC_CONTINUE, MFILL_ATOMIC_COPY, MFILL_ATOMIC_POISON, MFILL_ATOMIC_ZEROPAGE,
                       Folio, HPAGE_SIZE, MM_CP_TRY_CHANGE_WRITABLE, MM_CP_UFFD_WP, MM_CP_UFFD_WP_RESOLVE, PAGE_SIZE,
                       PTE_MARKER_GUARD, PTE_MARKER_POISONED, Pte, VM_EXEC, VM_HUGETLB, VM_READ, VM_SHARED,
                       VM_WRITE, ZERO_PFN, make_pte_marker, new_anon_page, new_present_pte, userfaultfd_wp,
                       vma_is_shmem)


_GC_PAUSE_BYTES = 256 * PAGE_SIZE   # a ranged COPY / ZEROPAGE this long runs with the cyclic GC paused
# the TLB entry a read of a never-touched anon page leaves: the zero page, mapped special and young
_ZERO_READ_TLB = pte_val(Pte(Folio(ZERO_PFN, PAGE_SIZE, anon=False, zero=True), special=True, young=True))


class Userfaultfd:
    """mm/userfaultfd.c: mfill, write-protect and move."""

    def mfill_atomic(self, ctx, kind: str, dst_start: int, src_start: int, length: int, wp: bool,
                     hints: int = 0) -> int:
        vma = self.find_vma(dst_start)
        early = self.profile.uffd_lock_vma_prepares_anon
        if vma is not None and early and vma.anon_vma is None:
            self.anon_vma_prepare(vma)         # uffd_lock_vma(): "we know we're going to need anon_vma"
        if vma is None or dst_start + length > vma.end or vma.ctx is None:
            return -E.ENOENT
        if ctx.event_q or ctx.changing > 0:              # mmap_changing
            return -E.EAGAIN
        if wp and not userfaultfd_wp(vma):
            return -E.EINVAL
        flags = vma.flags
        hugetlb, anon = flags & VM_HUGETLB, vma.file is None
        if hugetlb:
            if dst_start % vma.page_size or length % vma.page_size or kind == MFILL_ATOMIC_ZEROPAGE:
                return -E.EINVAL
        elif not anon and not vma_is_shmem(vma):     # a regular file, SysV shm
            return -E.EINVAL
        elif kind == MFILL_ATOMIC_CONTINUE and anon:
            return -E.EINVAL
        if not early and not flags & VM_SHARED:
            self.anon_vma_prepare(vma)         # before 6.9: once the checks passed ("this page would get a
        #                                        NULL anon_vma when moved in the dst_vma")
        if not hugetlb and (kind == MFILL_ATOMIC_COPY or kind == MFILL_ATOMIC_ZEROPAGE) \
                and (anon or not flags & VM_SHARED):
            if length < _GC_PAUSE_BYTES or not gc.isenabled():
                return self.mfill_atomic_anon(vma, kind, dst_start, src_start, length, wp, hints)
            # Every object a ranged fill makes (a Folio and a Pte per page, a Pte per zero-page source
            # page) stays reachable; the cyclic GC's collections that this many allocations trigger would
            # traverse the whole heap to free nothing (~40% of a 64 MiB COPY).  Paused for the one call.
            gc.disable()
            try:
                return self.mfill_atomic_anon(vma, kind, dst_start, src_start, length, wp, hints)
            finally:
                gc.enable()
        copied, err = 0, 0
        step = vma.page_size
        while copied < length:
            if not vma.hugetlb:
                if self.pmd_leaf(dst_start + copied):
                    err = -E.EEXIST                   # "If the dst_pmd is THP don't override it"
                    break
                self.pte_alloc(dst_start + copied)    # the dst PTE table is allocated first
            err = self.mfill_atomic_pte(vma, kind, dst_start + copied, src_start + copied, wp, hints)
            if err:
                break
            copied += step
        return copied if copied else err

    def mfill_atomic_anon(self, vma, kind, dst_start: int, src_start: int, length: int, wp: bool,
                          hints: int) -> int:
        """mfill_atomic() of COPY / ZEROPAGE into a VMA whose pages are anon (private), with the per-VMA
        decisions of mfill_atomic_pte() and mfill_atomic_install_pte() taken once for the range; per page
        the same steps in the same order (PTE table, source read, PFN allocation, the pte_none_mostly()
        check, the install) as the general loop."""
        p = self.profile
        # mfill_atomic_install_pte(): writable, pte_mkdirty() (RFC: only with WRITE_LIKELY), young, uffd-wp
        if p.hints:
            dirty = bool(hints & UFFDIO_COPY_MODE_WRITE_LIKELY)
            young = dirty or bool(hints & UFFDIO_COPY_MODE_ACCESS_LIKELY)
            zero = kind == MFILL_ATOMIC_ZEROPAGE and not dirty    # RFC: a WRITE_LIKELY ZEROPAGE allocates
        else:
            dirty = young = True
            zero = kind == MFILL_ATOMIC_ZEROPAGE
        write = not wp and bool(vma.flags & VM_WRITE)
        copy = kind == MFILL_ATOMIC_COPY
        ptes, pgtables, pmds, tlb = self.ptes, self.pgtables, self.pmds, self.tlb.entries
        zero_page = self.zero_page
        end = dst = dst_start
        end += length
        err = 0
        svma = None                                   # the source VMA (faults on the source keep VMAs as they are)
        src_zero = False                              # its read fault of a none PTE maps the zero page (below)
        src_tlb = False                               # its TLB hits are read from the PTE's page (below)
        # alloc_folio()'s next PFN and the zero page's new mappings are kept here, and stored back before
        # anything else can look at them (a fault on the source, below) and at the end
        pfn, zmap = self._next_pfn, 0
        while dst < end and not err:
            pmd = dst >> 21                           # one PMD's worth of pages at a time
            if pmds and pmd << 21 in pmds:
                err = -E.EEXIST                       # "If the dst_pmd is THP don't override it"
                break
            if pmd not in pgtables:                   # the dst PTE table is allocated first
                pgtables.add(pmd)
                self.pmd_tables.add(pmd >> 9)
                self._pgt_sorted = None
            chunk_end = (pmd + 1) << 21
            if chunk_end > end:
                chunk_end = end
            if zero:
                while dst < chunk_end:
                    if dst in ptes:                   # !pte_none(): any marker too
                        err = -E.EEXIST
                        break
                    ptes[dst] = new_present_pte(zero_page, False, False, True, False, False, True)  # special, young
                    zmap += 1
                    dst += PAGE_SIZE
                continue
            while dst < chunk_end:
                if copy:
                    src = src_start + dst - dst_start
                    if svma is None or not svma.start <= src < svma.end:
                        # the source is read in current->mm: the monitor's, also for a forked child's uffd
                        svma = self.uaccess_mm.find_vma(src)
                        own = svma is not None and self.uaccess_mm is self
                        src_zero = own and self.read_fault_maps_zero_page(svma)
                        src_tlb = own and not svma.flags & VM_HUGETLB
                    if src_zero and src not in ptes and src not in tlb and not pmds and not src & 0xFFF:
                        # copy_from_user() of a never-touched anon source page: the read fault that
                        # handle_mm_fault() -> do_anonymous_page() takes (PTE table, the zero page mapped
                        # special and young), then the walk that fills the TLB; its contents are zeros
                        if src >> 21 not in pgtables:
                            pgtables.add(src >> 21)
                            self.pmd_tables.add(src >> 30)
                            self._pgt_sorted = None
                        ptes[src] = new_present_pte(zero_page, False, False, True, False, False, True)
                        zmap += 1
                        tlb[src] = _ZERO_READ_TLB
                        data = None if zero_page.data is None else bytearray(zero_page.data)
                    elif src_tlb and not pmds and src in tlb and not src & 0xFFF and \
                            (page := ptes[src].page).size == PAGE_SIZE:
                        # copy_page_from_user()'s common case inline: a TLB hit on a 4 KiB source page
                        # (access_ok() true, no fault), read from the page page_at() would return
                        data = None if page.data is None else bytearray(page.data)
                    else:
                        self._next_pfn = pfn
                        zero_page.mapcount += zmap
                        zmap = 0
                        self._pte_index = None        # the keys stored so far (a fault below may walk)
                        data = self.copy_page_from_user(src, PAGE_SIZE, svma)
                        if data is _SLOW:
                            data = self.copy_from_user(src, PAGE_SIZE)
                            if not isinstance(data, int):
                                data = bytearray(data)
                        pfn = self._next_pfn
                        if isinstance(data, int):
                            err = data
                            break
                else:
                    data = None
                old = ptes.get(dst)                   # after alloc_folio(): a PFN is used up either way
                if old is not None and not self.pte_none_mostly(old):
                    pfn += 1
                    err = -E.EEXIST
                    break
                ptes[dst] = new_present_pte(new_anon_page(pfn, data), write, dirty, young, dirty, wp, False)
                pfn += 1                              # soft_dirty = dirty: x86's pte_mkdirty() sets both
                dst += PAGE_SIZE
        self._next_pfn = pfn
        zero_page.mapcount += zmap
        self._pte_index = None                        # new keys stored directly (pgtable.pte_index)
        copied = dst - dst_start
        return copied if copied else err

    def mfill_atomic_pte(self, vma, kind, dst, src, wp, hints) -> int:
        if vma.hugetlb:
            return self.hugetlb_mfill_atomic_pte(vma, kind, dst, src, wp)
        if kind == MFILL_ATOMIC_POISON:
            pte = self.ptes.get(dst)
            if pte is not None:
                return -E.EEXIST
            self.set_pte(dst, make_pte_marker(PTE_MARKER_POISONED))
            return 0
        if kind == MFILL_ATOMIC_CONTINUE:
            folio = vma.file.pages.get(vma.linear_page_index(dst))
            if folio is None:
                return -E.EFAULT
            self.shmem_swapin_folio(folio)              # shmem_get_folio(SGP_NOALLOC) swaps it in
            return self.mfill_atomic_install_pte(vma, dst, folio, True, wp, hints)
        shared_file = vma.shared and not vma.anon
        if kind == MFILL_ATOMIC_ZEROPAGE and not shared_file and not (
                vma.hugetlb or self.profile.hints and hints & UFFDIO_COPY_MODE_WRITE_LIKELY):
            return self.mfill_atomic_pte_zeropage(vma, dst)
        if kind == MFILL_ATOMIC_COPY:
            data = self.copy_from_user(src, vma.page_size)
            if isinstance(data, int):
                return data
            folio = self.alloc_folio(vma.page_size, anon=not shared_file, data=bytearray(data))
        else:
            folio = self.alloc_folio(vma.page_size, anon=not shared_file)
        if shared_file:                               # shmem_mfill_atomic_pte()
            idx = vma.linear_page_index(dst)
            if idx * vma.page_size >= vma.file.size:
                return -E.EFAULT
            if idx in vma.file.pages:
                return -E.EEXIST
            err = self.mfill_atomic_install_pte(vma, dst, folio, False, wp, hints, check_only=True)
            if err:
                return err
            vma.file.pages[idx] = folio
            return self.mfill_atomic_install_pte(vma, dst, folio, False, wp, hints, in_cache=True)
        return self.mfill_atomic_install_pte(vma, dst, folio, False, wp, hints)

    def mfill_atomic_pte_zeropage(self, vma, dst) -> int:
        if dst in self.ptes:            # !pte_none(): any marker too
            return -E.EEXIST
        self.set_pte(dst, Pte(self.zero_page, special=True, young=True))
        return 0

    def pte_none_mostly(self, pte: Pte | None) -> bool:
        """6.18: none or any marker may be overwritten; 7.3: none, uffd-wp or poison marker."""
        if pte is None:
            return True
        if pte.present or pte.swp is not None:
            return False
        return self.profile.install_over_guard or not pte.marker & PTE_MARKER_GUARD

    def mfill_atomic_install_pte(self, vma, dst, folio, page_in_cache, wp, hints=0, *, in_cache=None,
                                 check_only=False) -> int:
        in_cache = page_in_cache if in_cache is None else in_cache
        if in_cache and vma.linear_page_index(dst) * vma.page_size >= vma.file.size:
            return -E.EFAULT
        if not self.pte_none_mostly(self.ptes.get(dst)):
            return -E.EEXIST
        if check_only:
            return 0
        writable = bool(vma.flags & VM_WRITE)
        if page_in_cache and not vma.shared:
            writable = False
        pte = Pte(folio, write=writable, young=True)
        if self.profile.hints:                     # RFC: dirty only with WRITE_LIKELY, young with a hint
            if hints & UFFDIO_COPY_MODE_WRITE_LIKELY:
                self.pte_mkdirty(pte)
            pte.young = bool(hints & (UFFDIO_COPY_MODE_ACCESS_LIKELY | UFFDIO_COPY_MODE_WRITE_LIKELY))
        else:
            self.pte_mkdirty(pte)
        if wp:
            pte.uffd_wp, pte.write = True, False
        self.set_pte(dst, pte)
        return 0

    def userfaultfd_wp_use_markers(self, vma) -> bool:
        if not userfaultfd_wp(vma):
            return False
        return not vma.anon or bool(vma.ctx and vma.ctx.wp_unpopulated)

    def uffd_wp_range(self, vma, start: int, end: int, enable_wp: bool, hints: int = 0) -> int:
        p = self.profile
        if p.uffd_wp_range_vm_page_prot:           # 931298e103c2 (6.3+)
            newprot_w = self.vm_page_prot_writable(vma)
            try_change = not enable_wp and self.vma_wants_manual_pte_write_upgrade(vma)
        else:                                      # vm_get_page_prot(vm_flags [& ~VM_WRITE])
            newprot_w = bool(vma.shared and vma.flags & VM_WRITE and not enable_wp)
            try_change = bool(not enable_wp and p.hints and vma.flags & VM_WRITE and not vma.shared)
        flags = (MM_CP_UFFD_WP if enable_wp else MM_CP_UFFD_WP_RESOLVE)
        if try_change:
            flags |= MM_CP_TRY_CHANGE_WRITABLE
        return self.change_pte_range(vma, start, end, newprot_w, flags, hints)

    def mwriteprotect_range(self, ctx, start: int, length: int, enable_wp: bool, hints: int = 0) -> int:
        if ctx.mmap_changing:
            return -E.EAGAIN
        end = start + length
        vmas = self.vmas_in(start, end)
        if not vmas:
            return -E.ENOENT
        if not self.profile.wp_multi_vma and (len(vmas) > 1 or vmas[0].start > start or vmas[0].end < end):
            return -E.ENOENT                 # find_dst_vma(): the whole range in one VMA (before 6.5)
        for vma in vmas:
            if not userfaultfd_wp(vma):
                return -E.ENOENT
            if vma.hugetlb and (start % vma.page_size or length % vma.page_size):
                return -E.EINVAL
            self.uffd_wp_range(vma, max(start, vma.start), min(end, vma.end), enable_wp, hints)
        return 0

    def move_pages(self, ctx, dst_start: int, src_start: int, length: int, mode: int) -> int:
        if ctx.mmap_changing:
            return -E.EAGAIN
        dst_vma = self.find_vma(dst_start)
        if dst_vma is not None:
            self.anon_vma_prepare(dst_vma)     # find_vma_and_prepare_anon()
        src_vma = self.find_vma(src_start)
        if dst_vma is None or src_vma is None:
            return -E.ENOENT
        if src_vma.shared or dst_vma.shared:
            return -E.EINVAL
        if src_start + length > src_vma.end or dst_start + length > dst_vma.end:
            return -E.EINVAL
        # validate_move_areas()
        if (src_vma.flags ^ dst_vma.flags) & (VM_READ | VM_WRITE | VM_EXEC) or not src_vma.flags & VM_WRITE:
            return -E.EINVAL
        if src_vma.hugetlb or dst_vma.hugetlb or not src_vma.anon or not dst_vma.anon:
            return -E.EINVAL
        if dst_vma.ctx is not ctx:
            return -E.EINVAL
        moved, err = 0, 0
        flush = []
        while moved < length:
            s, d = src_start + moved, dst_start + moved
            if self.pmd_leaf(d):         # "If the dst_pmd is mapped as THP don't override it": before the src
                err = -E.EEXIST          # PMD is looked at (a move onto itself splits nothing) [soak, seed 291519181]
                break
            if self.pmd_leaf(s):                          # huge_memory.py: a PMD leaf under src
                if s % HPAGE_SIZE or d % HPAGE_SIZE or length - moved < HPAGE_SIZE or not self.pmd_none(d):
                    if not self.pmds[s & ~(HPAGE_SIZE - 1)].special and \
                            not self.pmds[s & ~(HPAGE_SIZE - 1)].page.exclusive:
                        err = -E.EBUSY
                        break
                    self.split_huge_pmd(src_vma, s & ~(HPAGE_SIZE - 1))   # the pages move one by one
                else:
                    err = self.move_pages_huge_pmd(dst_vma, src_vma, d, s, flush)
                    if err:
                        break
                    moved += HPAGE_SIZE
                    continue
            if self.pmd_leaf(d):
                err = -E.EEXIST
                break
            if self.pmd_none(src_start + moved):          # no page table under src at all
                if not mode & uapi.MoveMode.ALLOW_SRC_HOLES:
                    err = -E.ENOENT
                    break
                self.pte_alloc(src_start + moved)
            self.pte_alloc(dst_start + moved)
            err = self.move_pages_pte(dst_vma, src_vma, dst_start + moved, src_start + moved, mode, flush)
            if err:
                break
            moved += PAGE_SIZE
        self.tlb.flush_range(flush)
        return moved if moved else err

    def move_pages_pte(self, dst_vma, src_vma, dst, src, mode, flush) -> int:
        if dst in self.ptes:
            return -E.EEXIST
        spte = self.ptes.get(src)
        if spte is None:
            return 0 if mode & uapi.MoveMode.ALLOW_SRC_HOLES else -E.ENOENT
        if spte.swp is not None:                          # move_swap_pte(): the entry itself moves
            if not spte.exclusive:
                return -E.EBUSY
            new = spte.copy()
            new.soft_dirty = True                         # pte_swp_mksoft_dirty()
            self.set_pte(src, None)
            self.set_pte(dst, new)
            return 0
        if not spte.present:
            return -E.EFAULT
        if spte.page.head is not None:                    # a large folio: split_folio(), then retry
            self.split_folio(src_vma, spte.page, src)     # huge_memory.py (zero-filled pages -> zero page)
            spte = self.ptes[src]
        if spte.special:                                  # move_zeropage_pte()
            new = Pte(self.zero_page, special=True, young=True)
        else:
            page = spte.page
            if not page.anon or not page.exclusive or page.mapcount != 1:
                return -E.EBUSY
            new = Pte(page, write=True, young=True, soft_dirty=True,
                      dirty=spte.dirty if self.profile.move_dirty_from_src else True)
        self.set_pte(src, None)
        flush.append(src)
        self.set_pte(dst, new)
        return 0
