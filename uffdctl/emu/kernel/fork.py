"""fork() of an emulated mm: dup_mmap() (kernel/fork.c; mm/mmap.c since 6.15) and the page-table copy it
calls, copy_page_range() (mm/memory.c: copy_pte_range -> copy_present_pte / copy_nonpresent_pte, and
copy_hugetlb_page_range of mm/hugetlb.c), with the userfaultfd hooks of fs/userfaultfd.c (dup_userfaultfd(),
dup_userfaultfd_complete() -> dup_fctx(): the FORK message) -- in the kernel's order:

* per VMA: ``VM_DONTCOPY`` (MADV_DONTFORK) VMAs are not duplicated; vm_area_dup() copies the flags
  (``VM_UFFD_*``, ``VM_SOFTDIRTY``) and the ctx; dup_userfaultfd() then either drops the registration
  (the ctx lacks UFFD_FEATURE_EVENT_FORK: ctx NULL, ``VM_UFFD_*`` cleared) or points the child VMA at the
  child ctx made for that parent ctx (one per parent ctx: the ``fcs`` list); a ``VM_WIPEONFORK`` VMA gets
  no anon_vma and no page tables; the others copy their page tables when vma_needs_copy() says so;
* flush_tlb_mm() of the parent (its COW PTEs were write-protected);
* after both mm locks are dropped, dup_userfaultfd_complete(): a FORK message per child ctx on its parent
  ctx, and fork() does not return until each has been read (userfaultfd_event_wait_completion()).

The rules that changed across versions are profile switches (``fork_wp_marker_without_event``,
``fork_poison_marker_without_event``, ``vma_needs_copy``).  GUP pins are not modelled, so the early-COW path
of copy_present_page() (a maybe-pinned anon page) is never taken: the wp-fork-pin selftests need gup_test.

A child mm allocates PFNs from a range of its own, shares its family's anon_vma and mapping identities and
zero page, and reads a
UFFDIO_COPY source from the monitor's mm (copy_from_user() reads ``current->mm``: the session's, whatever
mm the ctx is on).
"""
from __future__ import annotations

import itertools

from ...uapi import Feature
from ..mm import MM
from ..mm.mm_types import (FIRST_PFN, PTE_MARKER_GUARD, PTE_MARKER_POISONED, PTE_MARKER_UFFD_WP, VM_DONTCOPY,
                           VM_MAYWRITE, VM_SHARED, VM_UFFD_FLAGS, VM_WIPEONFORK, Vma, make_pte_marker,
                           userfaultfd_wp)


def is_cow_mapping(flags: int) -> bool:
    return flags & (VM_SHARED | VM_MAYWRITE) == VM_MAYWRITE


def mm_alloc_child(oldmm: MM) -> MM:
    """The child's mm_struct: empty, the parent's profile and CONFIG_MEM_SOFT_DIRTY, and the family's
    allocators (PFNs, anon_vma and mapping identities are unique machine-wide, not per mm)."""
    mm = MM(oldmm.profile, oldmm.soft_dirty_config, swap=oldmm.swap)   # the machine's swap devices
    # PFNs are machine-wide: each mm of the family allocates from its own 2^40-page range
    ids = oldmm.__dict__.setdefault("_mm_ids", itertools.count(1))
    mm._mm_ids = ids
    mm._next_pfn = FIRST_PFN + (next(ids) << 40)
    # current->mm: the monitor's (see the module docstring); every reader of a UFFDIO_COPY source is bound here
    mm.copy_from_user, mm.copy_page_from_user = oldmm.copy_from_user, oldmm.copy_page_from_user
    mm.uaccess_mm = oldmm.uaccess_mm
    mm._origins, mm._anon_vmas = oldmm._origins, oldmm._anon_vmas
    mm.zero_page = oldmm.zero_page
    mm.next_addr, mm.low_addr = oldmm.next_addr, oldmm.low_addr
    return mm


def vm_area_dup(vma: Vma) -> Vma:
    new = Vma(vma.start, vma.end, vma.flags, vma.memtype, vma.file, vma.pgoff, vma.page_size, vma.origin)
    new.ctx = vma.ctx
    return new


def dup_userfaultfd(vma: Vma, mm: MM, fcs: dict) -> None:
    """fs/userfaultfd.c dup_userfaultfd(): without EVENT_FORK the child VMA is unregistered
    (userfaultfd_reset_ctx()); with it, it keeps VM_UFFD_* and points at the child ctx of its parent ctx."""
    octx = vma.ctx
    if octx is None:
        return
    if not octx.features & Feature.EVENT_FORK:
        vma.ctx = None
        vma.flags &= ~VM_UFFD_FLAGS
        return
    ctx = fcs.get(id(octx))
    if ctx is None:
        ctx = fcs[id(octx)] = (octx, octx.dup(mm))
    vma.ctx = ctx[1]


def vma_needs_copy(dst_vma: Vma, src_vma: Vma) -> bool:
    """mm/memory.c vma_needs_copy(): page tables reach the child only where a fault could not refill them:
    a uffd-wp child VMA (the protection lives in the PTEs), or a source with an anon_vma (anon pages, COW
    copies; a guard region prepared one).  6.18.37+ asks the dst VMA's VM_COPY_ON_FORK flags (VM_UFFD_WP,
    VM_MAYBE_GUARD) instead, which the model reads the same way: a guard install prepares an anon_vma."""
    if userfaultfd_wp(dst_vma):
        return True
    return src_vma.anon_vma is not None


def copy_pte_marker(profile, marker: int, dst_vma: Vma) -> int:
    """The marker a child gets for a parent's PTE marker (0: none).  6.2+ copy_pte_marker(): poison and guard
    always, uffd-wp only into a uffd-wp VMA; 6.1.192: the whole marker only into a uffd-wp VMA; 5.19: always
    the whole marker (before "mm/uffd: fix pte marker when fork() without fork event")."""
    if profile.fork_wp_marker_without_event:
        return marker
    if not profile.fork_poison_marker_without_event:
        return marker if userfaultfd_wp(dst_vma) else 0
    dstm = marker & (PTE_MARKER_POISONED | PTE_MARKER_GUARD)
    if marker & PTE_MARKER_UFFD_WP and userfaultfd_wp(dst_vma):
        dstm |= PTE_MARKER_UFFD_WP
    return dstm


def copy_present_pte(dst_mm, dst_vma, src_vma, addr: int, pte) -> None:
    """copy_present_ptes() + __copy_present_ptes(): an anon page loses PageAnonExclusive (it is mapped by
    both now: pagemap's exclusive bit 56 clears on both sides through the mapcount); a COW mapping's writable
    PTE is write-protected in both; a shared mapping's child PTE is clean; the child PTE is old and keeps
    uffd-wp only in a uffd-wp VMA.  Dirty and soft-dirty are copied as they are."""
    new = pte.copy()
    if not pte.special and pte.page.anon:
        pte.page.exclusive = False          # folio_try_dup_anon_rmap_ptes() (never maybe-pinned here)
    if is_cow_mapping(src_vma.flags) and pte.write:
        pte.write = new.write = False       # wrprotect_ptes() on the parent, pte_wrprotect() for the child
    if src_vma.shared:
        new.dirty = False                   # pte_mkclean()
    new.young = False                       # pte_mkold()
    if not userfaultfd_wp(dst_vma):
        new.uffd_wp = False                 # pte_clear_uffd_wp()
    dst_mm.set_pte(addr, new)


def copy_huge_pmd(dst_mm, dst_vma, src_vma, haddr: int, pmd) -> None:
    """mm/huge_memory.c copy_huge_pmd(): a PMD-mapped THP is shared by both (the folio loses PageAnonExclusive;
    the entire mapcount makes pagemap's exclusive bit clear on both sides), write-protected in both for a COW
    mapping, old in the child; uffd-wp only into a uffd-wp child VMA.  The huge zero folio is copied as is."""
    new = pmd.copy()
    folio = pmd.page
    if folio is not None and folio.anon and not pmd.special:
        folio.exclusive = False
    if is_cow_mapping(src_vma.flags) and pmd.write:
        pmd.write = new.write = False
    new.young = False
    if not userfaultfd_wp(dst_vma):
        new.uffd_wp = False
    dst_mm.set_pmd(haddr, new)


def copy_nonpresent_pte(dst_mm, dst_vma, addr: int, pte) -> None:
    """copy_nonpresent_pte(): a PTE marker goes through copy_pte_marker(); a swap entry is duplicated
    (swap_duplicate(): one more holder of the slot) and marked shared on both sides (the parent's entry loses
    pte_swp_exclusive()), its uffd-wp bit cleared in the child unless the child VMA is uffd-wp
    (pte_swp_clear_uffd_wp()); its soft-dirty bit is copied."""
    if pte.marker:
        m = copy_pte_marker(dst_mm.profile, pte.marker, dst_vma)
        if m:
            dst_mm.set_pte(addr, make_pte_marker(m))
        return
    if pte.swp is not None:
        dst_mm.swap.swap_duplicate(pte.swp)
        pte.exclusive = False
    new = pte.copy()
    if not userfaultfd_wp(dst_vma):
        new.uffd_wp = False
    dst_mm.set_pte(addr, new)


def copy_hugetlb_page_range(dst_mm, dst_vma, src_mm, src_vma) -> None:
    """mm/hugetlb.c copy_hugetlb_page_range(): markers through copy_pte_marker(); a present huge page of a
    COW mapping is write-protected in both (huge_ptep_set_wrprotect), an anon one loses PageAnonExclusive
    (hugetlb_try_dup_anon_rmap); uffd-wp is kept only in a uffd-wp child VMA (6.4+: profile
    fork_hugetlb_clears_uffd_wp; before, a present huge PTE kept it).  No mkold / mkclean here."""
    cow = is_cow_mapping(src_vma.flags)
    for pud in src_mm._puds_in(src_vma.start, src_vma.end):   # huge_pte_alloc() in the child wherever
        dst_mm.huge_pte_alloc(max(pud << 30, src_vma.start))     # hugetlb_walk() finds a table
    for a in src_mm.pte_keys(src_vma.start, src_vma.end, src_vma.page_size):
        pte = src_mm.ptes[a]
        if not pte.present:
            m = copy_pte_marker(dst_mm.profile, pte.marker, dst_vma) if pte.marker else 0
            if m:
                dst_mm.set_pte(a, make_pte_marker(m))
            continue
        new = pte.copy()
        if pte.page.anon:
            pte.page.exclusive = False
        if cow:
            pte.write = new.write = False
        if not userfaultfd_wp(dst_vma) and dst_mm.profile.fork_hugetlb_clears_uffd_wp:
            new.uffd_wp = False             # huge_pte_clear_uffd_wp() (6.4+; before, the child kept it)
        dst_mm.set_pte(a, new)


def copy_page_range(dst_mm, dst_vma, src_mm, src_vma) -> None:
    """mm/memory.c copy_page_range(): nothing unless vma_needs_copy(); then every PTE table of the source
    range is allocated in the child (copy_pte_range(): pte_alloc_map_lock() even for a table of none PTEs)
    and every entry copied."""
    if not vma_needs_copy(dst_vma, src_vma):
        return
    if src_vma.hugetlb:
        copy_hugetlb_page_range(dst_mm, dst_vma, src_mm, src_vma)
        return
    for haddr in sorted(a for a in src_mm.pmds if src_vma.start <= a < src_vma.end) if src_mm.pmds else ():
        copy_huge_pmd(dst_mm, dst_vma, src_vma, haddr, src_mm.pmds[haddr])
    for pmd in src_mm._tables_in(src_vma.start >> 21, (src_vma.end - 1) >> 21):
        dst_mm.pte_alloc(max(pmd << 21, src_vma.start))
    for a in src_mm.pte_keys(src_vma.start, src_vma.end, src_vma.page_size):
        pte = src_mm.ptes[a]
        if pte.present:
            copy_present_pte(dst_mm, dst_vma, src_vma, a, pte)
        else:
            copy_nonpresent_pte(dst_mm, dst_vma, a, pte)


def dup_mmap(oldmm: MM) -> tuple[MM, list]:
    """The child's mm and the (parent ctx, child ctx) pairs whose FORK messages dup_userfaultfd_complete()
    sends.  The caller queues the messages (fork() waits for each to be read)."""
    mm = mm_alloc_child(oldmm)
    fcs: dict = {}
    for mpnt in oldmm.vmas:
        if mpnt.flags & VM_DONTCOPY:
            continue
        tmp = vm_area_dup(mpnt)
        dup_userfaultfd(tmp, mm, fcs)
        if tmp.flags & VM_WIPEONFORK:
            tmp.anon_vma = None             # "VM_WIPEONFORK gets a clean slate in the child"
        elif mpnt.anon_vma is not None:
            tmp.anon_vma = next(mm._anon_vmas)   # anon_vma_fork(): the child's own anon_vma
        mm.insert_vma(tmp)
        if not tmp.flags & VM_WIPEONFORK:
            copy_page_range(mm, tmp, oldmm, mpnt)
    oldmm.tlb.flush_mm()
    return mm, list(fcs.values())


def exit_mmap(mm: MM) -> None:
    """exit_mmap(): the mm of a task that exited loses every mapping (mapcounts drop: a page the parent
    still maps is exclusive to it again in pagemap); a ctx left on it answers ESRCH / ENOMEM."""
    for vma in list(mm.vmas):
        mm.zap_pte_range(vma, vma.start, vma.end, final=True)
        mm.remove_vma(vma)
    mm.pgtables.clear()
    mm.pmd_tables.clear()
    mm._pgt_sorted = None
    mm.exited = True
    if mm in mm.swap.mms:
        mm.swap.mms.remove(mm)          # swapoff's try_to_unuse() walks live mms only


__all__ = ["dup_mmap", "exit_mmap", "dup_userfaultfd", "copy_page_range", "copy_pte_marker", "vma_needs_copy",
           "is_cow_mapping"]
