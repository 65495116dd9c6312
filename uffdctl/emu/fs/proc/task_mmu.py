"""/proc/PID/pagemap, clear_refs, smaps and PAGEMAP_SCAN (fs/proc/task_mmu.c): walks over an
:class:`~uffdctl.emu.mm.MM`, costing the VMAs and PTEs that exist, never the size of the range.

pagemap_pte() is pte_to_pagemap_entry() (with the hugetlb and marker cases of pagemap_hugetlb_range()),
clear_refs_write() the clear_refs file, pagemap_scan_category() pagemap_page_category() with the
6.18 rules, do_pagemap_scan() the ioctl with its WP_MATCHING write-protection.
"""
from __future__ import annotations

import errno as E
from types import SimpleNamespace

from .... import uapi
from ....types import PteBits, ScanResult, join_scan_regions, scan_continuation
from ....errors import uffd_error
from ...mm import (HPAGE_PMD_NR, HPAGE_SIZE, PAGE_SIZE, PTE_MARKER_GUARD, PTE_MARKER_UFFD_WP, VM_SOFTDIRTY, Pte, make_pte_marker,
                   userfaultfd_wp)
from ...mm.mprotect import pte_prot_change_needs_flush


# PAGE_IS_* and the scan flags as plain ints: IntFlag arithmetic was most of a scan's time
_C = SimpleNamespace(**{c.name: int(c) for c in uapi.PageCategory})
_WP_MATCHING, _CHECK_WPASYNC = int(uapi.PM_SCAN_WP_MATCHING), int(uapi.PM_SCAN_CHECK_WPASYNC)


def pagemap_read(mm, addr: int, npages: int) -> list[int]:
    """read() of /proc/PID/pagemap: one 64-bit entry per 4 KiB page from ``addr``.

    Walked per VMA: a page without a PTE reads 0 or, in a VM_SOFTDIRTY VMA, PM_SOFT_DIRTY; only the PTEs
    that exist (pte_keys: the range or the PTEs, whichever is fewer) are decoded one by one."""
    base = addr & ~(uapi.PAGE_SIZE - 1)
    end = base + npages * PAGE_SIZE
    out = [0] * npages
    for vma in mm.vmas_in(base, end):
        lo, hi = max(vma.start, base), min(vma.end, end)
        i0, i1 = (lo - base) // PAGE_SIZE, (hi - base) // PAGE_SIZE
        if mm.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
            out[i0:i1] = [uapi.PM_SOFT_DIRTY] * (i1 - i0)
        if mm.pmds and not vma.hugetlb:
            for haddr in [h for h in mm.pmds if h < hi and lo < h + HPAGE_SIZE]:   # pagemap_pmd_range()
                for x in range(max(haddr, lo), min(haddr + HPAGE_SIZE, hi), PAGE_SIZE):
                    out[(x - base) // PAGE_SIZE] = pagemap_pmd(mm, vma, mm.pmds[haddr], x)
        if vma.page_size == PAGE_SIZE:
            for a in mm.pte_keys(lo, hi, PAGE_SIZE):
                out[(a - base) // PAGE_SIZE] = pagemap_pte(mm, a, vma)
            continue
        for a in mm.pte_keys(mm.page_base(vma, lo), hi, vma.page_size):
            first = max(a, lo)
            v = pagemap_pte(mm, first, vma)
            step = 1 if v & uapi.PM_PRESENT else 0    # the 4 KiB entries of a huge page: PFN + index
            j0 = (first - base) // PAGE_SIZE
            for k in range((min(a + vma.page_size, hi) - first) // PAGE_SIZE):
                out[j0 + k] = v + k * step
    return out


def pagemap_pte(mm, addr: int, vma=None) -> int:
    """pte_to_pagemap_entry() of the page at ``addr`` (``vma``: its VMA when the caller has it)."""
    if vma is None:
        vma = mm.find_vma(addr)
    if vma is None:
        return 0
    flags = 0
    if mm.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
        flags |= uapi.PM_SOFT_DIRTY
    base = mm.page_base(vma, addr)
    pte = mm.ptes.get(base)
    if pte is None and mm.pmd_leaf(addr) and not vma.hugetlb:
        return pagemap_pmd(mm, vma, mm.pmd_leaf(addr), addr)
    if pte is None:
        return flags
    if not pte.present and vma.hugetlb:       # pagemap_hugetlb_range(): no PM_SWAP for markers
        return flags | (uapi.PM_UFFD_WP if pte.marker & PTE_MARKER_UFFD_WP else 0)
    if pte.swp is not None:                   # a swap entry: type | offset << 5, swp uffd-wp / soft-dirty, no X
        flags |= uapi.PM_SWAP | pte.swp
        if pte.uffd_wp:
            flags |= uapi.PM_UFFD_WP
        if mm.soft_dirty_config and pte.soft_dirty:
            flags |= uapi.PM_SOFT_DIRTY
        return flags
    if not pte.present:
        flags |= uapi.PM_SWAP | mm.profile.pte_marker_swp_type | (pte.marker << 5)
        if pte.marker & PTE_MARKER_UFFD_WP or pte.uffd_wp:
            flags |= uapi.PM_UFFD_WP
        if pte.marker & PTE_MARKER_GUARD and mm.profile.pagemap_guard_bit:
            flags |= uapi.PM_GUARD_REGION
        return flags
    page = pte.page
    flags |= uapi.PM_PRESENT | (page.pfn + (addr - base) // PAGE_SIZE)
    if mm.soft_dirty_config and pte.soft_dirty:
        flags |= uapi.PM_SOFT_DIRTY
    if pte.uffd_wp:
        flags |= uapi.PM_UFFD_WP
    if not pte.special:
        if not page.anon:
            flags |= uapi.PM_FILE
        if page.precise_mapcount() == 1:
            flags |= uapi.PM_MMAP_EXCLUSIVE
    return flags

def pagemap_pmd(mm, vma, pmd: Pte, addr: int) -> int:
    """pagemap_pmd_range() for one 4 KiB page of a PMD leaf: the folio's PFN + index, PM_FILE for a non-anon
    folio (the huge zero folio included), PM_MMAP_EXCLUSIVE where that page (6.15+: the head page) is mapped
    once [measured on 6.18: THP 0x102 << 55, huge zero PMD 0x140 << 55]."""
    flags = uapi.PM_PRESENT
    if mm.soft_dirty_config and (vma.flags & VM_SOFTDIRTY or pmd.soft_dirty):
        flags |= uapi.PM_SOFT_DIRTY
    if pmd.uffd_wp:
        flags |= uapi.PM_UFFD_WP
    folio, i = pmd.page, (addr & (HPAGE_SIZE - 1)) // PAGE_SIZE
    if not folio.anon:
        flags |= uapi.PM_FILE
    # 6.15+: the head page's mapcount speaks for every page of the PMD (profile.pagemap_pmd_head_mapcount)
    if folio.pages is not None and \
            folio.pages[0 if mm.profile.pagemap_pmd_head_mapcount else i].precise_mapcount() == 1:
        flags |= uapi.PM_MMAP_EXCLUSIVE
    return flags | (folio.pfn + i)


def clear_refs_write(mm, value: int) -> int:
    if value not in (1, 2, 3, 4, 5):
        return -E.EINVAL
    if value == uapi.CLEAR_REFS_MM_HIWATER_RSS:
        return 0
    if value == uapi.CLEAR_REFS_SOFT_DIRTY:
        if mm.soft_dirty_config:
            for vma in mm.vmas:
                vma.flags &= ~VM_SOFTDIRTY
                if vma.hugetlb:
                    # clear_refs_walk_ops has no .hugetlb_entry: the page walk skips hugetlb VMAs, so their
                    # PTEs stay writable and soft-dirty (6.1.192 and 6.12.117 guests: a write after
                    # clear_refs 4 takes no fault; the differential found it at seed 166)
                    continue
                for a in mm.pte_keys(vma.start, vma.end, vma.page_size):
                    pte = mm.ptes[a]
                    if pte.present:
                        pte.write = False          # pte_wrprotect() + pte_clear_soft_dirty()
                        pte.soft_dirty = False
                    elif pte.swp is not None:
                        pte.soft_dirty = False     # pte_swp_clear_soft_dirty()
                for pmd in _leaves(mm, vma):       # clear_soft_dirty_pmd()
                    pmd.write = pmd.soft_dirty = False
        mm.tlb.flush_mm()
        return 0
    for vma in mm.vmas:
        if value == uapi.CLEAR_REFS_ANON and not vma.anon or value == uapi.CLEAR_REFS_MAPPED and vma.anon:
            continue
        for a in mm.pte_keys(vma.start, vma.end, vma.page_size):
            if mm.ptes[a].present:
                mm.ptes[a].young = False         # no flush: the TLB may keep A
        for pmd in _leaves(mm, vma):
            pmd.young = False
    return 0


def _leaves(mm, vma) -> list:
    """The PMD leaves of a VMA."""
    if not mm.pmds or vma.hugetlb:
        return []
    return [p for h, p in mm.pmds.items() if vma.start <= h < vma.end]

def pagemap_scan_category(mm, vma, pte: Pte | None, has_table: bool = True) -> int:
    """Categories of one page (6.18 rules: pagemap_page_category()).  A none PTE under an existing page table reads
    WRITTEN on any VMA [measured]; a hole without a page table only in a uffd-wp VMA."""
    C = _C
    cat = 0
    if mm.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
        cat |= C.SOFT_DIRTY
    written_ok = mm.profile.scan_written_any_vma or userfaultfd_wp(vma)
    if pte is None:
        if vma.hugetlb:
            # walk_hugetlb_range(): a none huge PTE under a PMD table goes to .hugetlb_entry, only HUGE
            # (pagemap_hugetlb_category()); with no table (hugetlb_walk() NULL) to .pte_hole, which reports the
            # VMA's categories alone, not WRITTEN even in a uffd-wp VMA [measured on 6.18]
            return cat | C.HUGE if has_table else cat
        return cat | (C.WRITTEN if userfaultfd_wp(vma) or has_table and written_ok else 0)
    if pte.present:
        cat |= C.PRESENT
        if written_ok and not pte.uffd_wp:
            cat |= C.WRITTEN
        if not pte.special and not pte.page.anon:
            cat |= C.FILE
        if pte.special:
            cat |= C.PFNZERO
        if mm.soft_dirty_config and pte.soft_dirty:
            cat |= C.SOFT_DIRTY
        if vma.hugetlb:
            cat |= C.HUGE
        return int(cat)
    cat |= C.SWAPPED | (C.HUGE if vma.hugetlb else 0)
    if written_ok and not pte.marker & PTE_MARKER_UFFD_WP and not pte.uffd_wp:
        cat |= C.WRITTEN
    if pte.marker & PTE_MARKER_GUARD and mm.profile.pagemap_guard_bit:
        cat |= C.GUARD
    if pte.swp is not None and mm.soft_dirty_config and pte.soft_dirty:   # pte_swp_soft_dirty()
        cat |= C.SOFT_DIRTY
    return int(cat)


# show_smap_vma_flags(): the two-letter codes of the VM_* flags the model carries, in the kernel's order
_VMFLAG_CODES = (("rd", 0x1), ("wr", 0x2), ("ex", 0x4), ("sh", 0x8), ("mr", 0x10), ("mw", 0x20), ("me", 0x40),
                 ("ms", 0x80), ("ht", 0x400000), ("sd", VM_SOFTDIRTY), ("hg", 0x20000000), ("nh", 0x40000000),
                 ("um", 0x200), ("uw", 0x1000), ("ui", 1 << 38))


def smaps_vmas(mm, start: int, end: int) -> list[dict]:
    """/proc/PID/smaps entries of the VMAs overlapping [start, end), in uffdctl.kernel_mm.parse_smaps()'s shape:
    start, end, perms, path, flags (VmFlags codes) and the fields the model knows, in bytes: Size, Rss,
    Anonymous, AnonHugePages, ShmemPmdMapped, Private_Dirty, Swap, Locked, KernelPageSize, MMUPageSize
    (smaps_pte_entry() /
    smaps_pmd_entry(): the zero pages are not counted)."""
    out = []
    for vma in mm.vmas_in(start, end):
        f = vma.flags
        rss = anon = swap = 0
        for a in mm.pte_keys(vma.start, vma.end, vma.page_size):
            pte = mm.ptes[a]
            if pte.present and not pte.special:
                rss += vma.page_size
                anon += vma.page_size if pte.page.anon else 0
            elif not pte.present and getattr(pte, "swp", None) is not None:
                swap += vma.page_size
        thp = shmem_pmd = 0
        for pmd in _leaves(mm, vma):
            if not pmd.special:
                rss += HPAGE_SIZE
                if pmd.page.anon:
                    anon += HPAGE_SIZE
                    thp += HPAGE_SIZE
                else:
                    shmem_pmd += HPAGE_SIZE
        perms = "".join(c if f & b else "-" for c, b in (("r", 0x1), ("w", 0x2), ("x", 0x4))) + \
            ("s" if f & 0x80 else "p")
        flags = [c for c, b in _VMFLAG_CODES if f & b and (c != "sd" or mm.soft_dirty_config)]
        out.append({"start": vma.start, "end": vma.end, "perms": perms,
                    "path": "" if vma.anon else f"/memfd:{vma.file.name} (deleted)", "flags": flags,
                    "Size": vma.end - vma.start, "Rss": rss, "Anonymous": anon, "AnonHugePages": thp,
                    "ShmemPmdMapped": shmem_pmd, "Private_Dirty": smaps_private_dirty(mm, vma), "Swap": swap,
                    "Locked": 0,
                    # vma_kernel_pagesize() / vma_mmu_pagesize(): the hstate's size for hugetlb (x86: the same)
                    "KernelPageSize": vma.page_size, "MMUPageSize": vma.page_size})
    return out


def _leaf_starts(mm, vma, s: int, e: int) -> dict:
    """{first address in [s, e): its PMD leaf's address} for the leaves [s, e) reaches."""
    if not mm.pmds or vma.hugetlb:
        return {}
    return {max(h, s): h for h in mm.pmds if h < e and s < h + HPAGE_SIZE}


def pagemap_thp_category(mm, vma, pmd: Pte) -> int:
    """pagemap_thp_category(): PRESENT, HUGE, WRITTEN unless uffd-wp, FILE (not anon), PFNZERO (the huge zero
    folio), SOFT_DIRTY [measured on 6.18: THP 0x4a, huge zero PMD 0x6a]."""
    C = _C
    cat = C.PRESENT | C.HUGE
    if mm.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
        cat |= C.SOFT_DIRTY
    if (mm.profile.scan_written_any_vma or userfaultfd_wp(vma)) and not pmd.uffd_wp:
        cat |= C.WRITTEN
    if pmd.special:
        cat |= C.PFNZERO
    elif not pmd.page.anon:
        cat |= C.FILE
    if mm.soft_dirty_config and pmd.soft_dirty:
        cat |= C.SOFT_DIRTY
    return int(cat)


def smaps_private_dirty(mm, vma) -> int:
    """smaps ``Private_Dirty`` of one VMA (smaps_pte_entry(): dirty pages mapped once)."""
    total = 0
    for a in mm.pte_keys(vma.start, vma.end, vma.page_size):
        pte = mm.ptes[a]
        if pte.present and not pte.special and pte.dirty and pte.page.precise_mapcount() == 1:
            total += vma.page_size
    for pmd in _leaves(mm, vma):
        if not pmd.special and pmd.dirty:
            total += sum(PAGE_SIZE for p in pmd.page.pages if p.precise_mapcount() == 1)
    return total


def _make_uffd_wp_pte(pte, addr, flush, clean_wp_noflush) -> None:
    """make_uffd_wp_pte() of a present PTE, in place: uffd-wp and read-only; ``addr`` joins ``flush`` when the
    old value needs a TLB flush (pte_needs_flush(), as :func:`pte_prot_change_needs_flush` reduces it)."""
    old_write = pte.write
    old_d = old_write and pte.dirty
    pte.uffd_wp, pte.write = True, False
    if pte_prot_change_needs_flush(old_write, old_d, False, False, clean_wp_noflush):
        flush.append(addr)


def _make_uffd_wp_pmd(mm, haddr, pmd, flush) -> None:
    """make_uffd_wp_pmd(): the PMD leaf at ``haddr`` uffd-wp and read-only (a new entry, flushed if it has to)."""
    new = pmd.copy()
    new.uffd_wp, new.write = True, False
    if mm.needs_flush(pmd, new):
        flush.append(haddr)
    mm.pmds[haddr] = new


def _exclusive_wp(mm, vma, s, e, vcat, match, flush) -> None:
    """pagemap_scan_pmd_entry()'s fast path ("exclusive WP": WP_MATCHING without an output vector): every PTE
    under an existing page table is write-protected whatever its categories (none -> a uffd-wp marker, swap
    and markers get the swp uffd-wp bit); a hole without a page table goes through pagemap_scan_pte_hole()
    as in the walk [measured on 6.18: a none PTE next to a written page, category_mask=PRESENT].  A PMD leaf
    goes through pagemap_scan_thp_entry() first: write-protected whole, or split where the range covers part."""
    leaves = set()
    for k, h in _leaf_starts(mm, vma, s, e).items():
        pmd = mm.pmds[h]
        cat = pagemap_thp_category(mm, vma, pmd) | vcat
        if match(cat) and cat & _C.WRITTEN:
            if k == h and h + HPAGE_SIZE <= e:
                _make_uffd_wp_pmd(mm, h, pmd, flush)
            else:
                mm.split_huge_pmd(vma, h)
                continue
        leaves.add(h >> 21)
    for a, b, table in mm.table_runs(s, e):
        if not table and a >> 21 in leaves:
            continue
        if not table:
            cat = pagemap_scan_category(mm, vma, None, False) | vcat
            if match(cat) and cat & _C.WRITTEN:
                for x in range(a, b, PAGE_SIZE):
                    mm.set_pte(x, make_pte_marker(PTE_MARKER_UFFD_WP))
            continue
        for x in range(a, b, PAGE_SIZE):
            pte = mm.ptes.get(x)
            if pte is None:
                mm.set_pte(x, make_pte_marker(PTE_MARKER_UFFD_WP))
            elif pte.present:
                if not pte.uffd_wp:
                    _make_uffd_wp_pte(pte, x, flush, mm.profile.clean_wp_noflush)
            elif not (pte.uffd_wp or pte.marker & PTE_MARKER_UFFD_WP):
                pte.uffd_wp = True


def do_pagemap_scan(mm, start, end, flags, inverted, mask, anyof, return_mask, max_pages, vec_len, null_vec=False):
    """PAGEMAP_SCAN (fs/proc/task_mmu.c do_pagemap_scan), extent-wise over holes."""
    p = mm.profile
    if not p.pagemap_scan:
        raise uffd_error(E.ENOTTY, "PAGEMAP_SCAN", start, end - start, message="no PAGEMAP_SCAN before 6.7")
    allcat = uapi.PM_SCAN_CATEGORIES_6_18 if p.pagemap_guard_bit else uapi.PM_SCAN_CATEGORIES_6_18 & ~(1 << 8)
    if flags & ~int(uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC) \
            or (inverted | mask | anyof | return_mask) & ~int(allcat) or start % uapi.PAGE_SIZE or end < start:
        raise uffd_error(E.EINVAL, "PAGEMAP_SCAN", start, end - start)
    if null_vec and vec_len:     # pagemap_scan_get_args(): "if (!arg->vec && arg->vec_len) return -EINVAL"
        raise uffd_error(E.EINVAL, "PAGEMAP_SCAN", start, end - start)
    end = (end + uapi.PAGE_SIZE - 1) & ~(uapi.PAGE_SIZE - 1)
    flags, inverted, mask, anyof, return_mask = int(flags), int(inverted), int(mask), int(anyof), int(return_mask)
    budget = max_pages or (1 << 64)
    # The regions: the closed ones as tuples in ``regions``, the last one open in (o_s, o_e, o_c) so that a
    # run that extends it costs an add; ``nreg`` counts both.
    regions: list[tuple[int, int, int]] = []
    o_s = o_e = o_c = -1
    nreg = 0
    wp_flush = []

    def emit(a, n, cat) -> int:
        """Record n pages at a; returns how many fit (0: stop here).  The walk below inlines the common case
        (a vector, n within the budget) of this."""
        nonlocal budget, o_s, o_e, o_c, nreg
        if not vec_len:
            # no output vector: pagemap_scan_output() returns before counting (max_pages is not applied),
            # the walk covers the whole range and WP_MATCHING still protects [measured on 6.18]
            return n
        if n > budget:
            n = budget
            if n <= 0:
                return 0
        out = cat & return_mask
        if o_e == a and o_c == out:
            o_e += n * PAGE_SIZE
        else:
            if nreg >= vec_len:
                return 0
            if nreg:
                regions.append((o_s, o_e, o_c))
            o_s, o_e, o_c = a, a + n * PAGE_SIZE, out
            nreg += 1
        budget -= n
        return n

    def result(walk_end) -> ScanResult:
        mm.tlb.flush_range(wp_flush)
        if nreg:
            regions.append((o_s, o_e, o_c))
        return ScanResult(regions, walk_end)

    def match(cat) -> bool:
        c = cat ^ inverted
        return (c & mask) == mask and (not anyof or c & anyof)

    partial_at = None
    for vma in mm.vmas_in(start, end):
        s, e = max(start, vma.start), min(end, vma.end)
        wp_allowed = bool(vma.ctx and vma.ctx.wp_async and mm.userfaultfd_wp_use_markers(vma))
        if not wp_allowed:
            if flags & _CHECK_WPASYNC:
                raise uffd_error(E.EPERM, "PAGEMAP_SCAN", start, end - start)
            if flags & _WP_MATCHING:
                continue
        vcat = _C.WPALLOWED if wp_allowed else 0
        if flags & _WP_MATCHING and not vec_len and not vma.hugetlb:
            _exclusive_wp(mm, vma, s, e, vcat, match, wp_flush)
            continue
        pos = s
        leaves = _leaf_starts(mm, vma, s, e)
        # a hugetlb range may start or end inside a huge page: pagemap_scan_hugetlb_entry() gets the huge PTE
        # with start/end clipped to the range (walk_hugetlb_range()), and reports just that part of it
        # keys[i + 1:i_end] are the PTE (and PMD leaf) addresses to visit, ascending, then ``e``.  Without leaves
        # they are the sorted PTE view itself, not a copy (a scan_all's calls each walk only up to where their
        # vector fills), and may hold a key removed since it was built: the walk skips what ``ptes`` lacks
        if leaves:
            keys = sorted(mm.pte_keys(s - s % vma.page_size, e, vma.page_size) + list(leaves))
            i, i_end = -1, len(keys)
        else:
            keys, i, i_end = mm.pte_keys_view(s - s % vma.page_size, e, vma.page_size)
            i -= 1
        # A hole's categories depend on the VMA and on whether a page table is under it, nothing else: when
        # both kinds read the same, a hole is one run whatever the tables (emit() would merge the pieces).
        hole_table = pagemap_scan_category(mm, vma, None, True) | vcat
        hole_none = pagemap_scan_category(mm, vma, None, False) | vcat
        by_table = hole_table != hole_none
        hole_match = match(hole_table)
        hole_wp = flags & _WP_MATCHING and hole_table & _C.WRITTEN
        hole_out = hole_table & return_mask
        ptes, psz, hugetlb = mm.ptes, vma.page_size, vma.hugetlb
        npages = psz // PAGE_SIZE
        wp_matching = flags & _WP_MATCHING
        # pagemap_scan_category() of a present PTE of this VMA: the VMA's part once, the PTE's bits per page
        sdc = mm.soft_dirty_config
        p_base = vcat | _C.PRESENT | (_C.SOFT_DIRTY if sdc and vma.flags & VM_SOFTDIRTY else 0) | \
            (_C.HUGE if hugetlb else 0)
        p_written = _C.WRITTEN if p.scan_written_any_vma or userfaultfd_wp(vma) else 0
        p_sd, p_zero, p_file = _C.SOFT_DIRTY if sdc else 0, _C.PFNZERO, _C.FILE
        while i < i_end:
            i += 1
            k = keys[i] if i < i_end else e
            if k <= pos:
                pass
            elif by_table:                   # pagemap_scan_pte_hole() over the hole runs [pos, k)
                for pos, hend, table in (mm.pmd_table_runs if hugetlb else mm.table_runs)(pos, k):
                    cat = hole_table if table else hole_none
                    if hugetlb and wp_matching and not table and match(cat):
                        # pagemap_scan_pte_hole() write-protects what it reported, WRITTEN or not: a marker, so
                        # a PMD table; hugetlb_walk() runs per huge page, so the rest of the GiB is
                        # .hugetlb_entry's (HUGE, never WRITTEN when none: not write-protected) [measured]
                        first = min(hend, mm.page_base(vma, pos) + psz)
                        n = (first - pos) // PAGE_SIZE
                        got = emit(pos, n, cat)
                        if got:
                            mm.set_pte(mm.page_base(vma, pos), make_pte_marker(PTE_MARKER_UFFD_WP))
                        if got < n:
                            return result(pos + got * PAGE_SIZE)
                        pos, cat = first, hole_table
                        if pos == hend:
                            continue
                    if match(cat):
                        n = (hend - pos) // PAGE_SIZE
                        got = emit(pos, n, cat)
                        if flags & _WP_MATCHING and cat & _C.WRITTEN:
                            for a in range(pos, pos + got * PAGE_SIZE, psz):
                                mm.set_pte(a, make_pte_marker(PTE_MARKER_UFFD_WP))
                        if got < n:
                            return result(pos + got * PAGE_SIZE)
                pos = k
            elif hole_match:                 # the hole [pos, k) is one run: emit() inline
                n = (k - pos) // PAGE_SIZE
                if not vec_len:
                    got = n
                elif n > budget:
                    got = emit(pos, n, hole_table)
                elif o_e == pos and o_c == hole_out:
                    o_e += n * PAGE_SIZE
                    budget -= n
                    got = n
                elif nreg < vec_len:
                    if nreg:
                        regions.append((o_s, o_e, o_c))
                    o_s, o_e, o_c = pos, pos + n * PAGE_SIZE, hole_out
                    nreg += 1
                    budget -= n
                    got = n
                else:
                    got = 0
                if hole_wp:
                    for a in range(pos, pos + got * PAGE_SIZE, psz):
                        mm.set_pte(a, make_pte_marker(PTE_MARKER_UFFD_WP))
                if got < n:
                    return result(pos + got * PAGE_SIZE)
                pos = k
            else:
                pos = k
            if k >= e:
                break
            if leaves and k in leaves:       # pagemap_scan_thp_entry()
                h = leaves[k]
                pmd = mm.pmds[h]
                cat = pagemap_thp_category(mm, vma, pmd) | vcat
                kend = min(h + HPAGE_SIZE, e)
                n = (kend - k) // PAGE_SIZE
                if match(cat):
                    wp = flags & _WP_MATCHING and cat & _C.WRITTEN
                    if wp and (n < HPAGE_PMD_NR or vec_len and budget < n):
                        # "Break huge page into small pages if the WP operation needs to be performed on a
                        # portion of the huge page": split, and walk it as PTEs
                        mm.split_huge_pmd(vma, h)
                        del leaves[k]            # no leaf there now: its pages are PTEs
                        pages = list(range(k, kend, PAGE_SIZE))
                        keys[i:i + 1] = pages
                        i_end += len(pages) - 1
                        i -= 1
                        continue
                    got = emit(k, n, cat)
                    if got < n:
                        return result(k + got * PAGE_SIZE)
                    if wp:
                        _make_uffd_wp_pmd(mm, h, pmd, wp_flush)
                pos = kend
                continue
            pte = ptes.get(k)
            if pte is None:                  # removed since the sorted view was built: part of the hole
                continue
            page = pte.page
            if page is not None:
                cat = p_base | (0 if pte.uffd_wp else p_written) | (p_sd if pte.soft_dirty else 0) | \
                    (p_zero if pte.special else 0 if page.anon else p_file)
            else:
                cat = pagemap_scan_category(mm, vma, pte) | vcat
            cs = k
            if hugetlb and (k < s or k + psz > e):       # the part of the huge page in the range
                cs, ce = max(k, s), min(k + psz, e)
                n = (ce - cs) // PAGE_SIZE
            else:
                n = npages
            c = cat ^ inverted
            if (c & mask) == mask and (not anyof or c & anyof):      # match(cat)
                if hugetlb and wp_matching and cat & _C.WRITTEN and vec_len and (budget < n or n < npages):
                    # "Partial HugeTLB page WP isn't possible": backed out, walk_end = its start, and the
                    # walk goes on (returns 0): walk_end ends at the last such page [measured on 6.18]
                    partial_at = cs
                    pos = k + psz
                    continue
                if vec_len and n <= budget:                         # emit(cs, n, cat) inline
                    out = cat & return_mask
                    if o_e == cs and o_c == out:
                        o_e += n * PAGE_SIZE
                    elif nreg < vec_len:
                        if nreg:
                            regions.append((o_s, o_e, o_c))
                        o_s, o_e, o_c = cs, cs + n * PAGE_SIZE, out
                        nreg += 1
                    else:
                        return result(cs)
                    budget -= n
                else:
                    got = emit(cs, n, cat)
                    if got < n:
                        return result(cs + got * PAGE_SIZE)
                if wp_matching and cat & _C.WRITTEN:
                    if page is not None:
                        _make_uffd_wp_pte(pte, k, wp_flush, mm.profile.clean_wp_noflush)
                    else:                                 # make_uffd_wp_pte(): pte_swp_mkuffd_wp()
                        pte.uffd_wp = True
            pos = k + psz
    return result(end if partial_at is None else partial_at)


def _join_in_bulk(regions: list, got, covered: int, count: bool) -> tuple[int, int]:
    """types.join_scan_regions() for regions that come ascending, disjoint, merged and at or above
    ``covered`` (do_pagemap_scan()'s): one merge where they meet what is held, the rest appended at once."""
    if not got or got[0][0] < covered:
        return join_scan_regions(regions, got, covered, count)
    s0, e0, c0 = got[0]
    if regions and regions[-1][1] == s0 and regions[-1][2] == c0:
        regions[-1] = (regions[-1][0], e0, c0)
        regions += got[1:]
    else:
        regions += got
    return got[-1][1], sum(e - s for s, e, _ in got) // PAGE_SIZE if count else 0


class TaskMmuFiles:
    """What a task shows of its mm through /proc/PID (clear_refs, PAGEMAP_SCAN, smaps) and the PTE queries of
    uffdctl.backend, for an object with an ``mm``: the emulated process (EmuBackend) and each of its children
    (EmuProcess) answer through the same code.  ``_task_label`` names the task in an error (None: the caller's
    own process)."""

    _task_label: str | None = None

    def clear_refs(self, value) -> None:
        try:
            v = int(str(value).strip())           # clear_refs_write(): kstrtoint(strstrip(buffer))
        except ValueError:
            v = -1
        r = clear_refs_write(self.mm, v)
        if r < 0:
            who = f"{self._task_label}: " if self._task_label else ""
            raise uffd_error(-r, "clear_refs", message=f"{who}value {value!r}")

    def pagemap_scan(self, start, end, *, flags=0, category_inverted=0, category_mask=0, category_anyof_mask=0,
                     return_mask=uapi.PM_SCAN_CATEGORIES_6_18, max_pages=0, vec_len=512,
                     null_vec=False) -> ScanResult:
        return do_pagemap_scan(self.mm, start, end, flags, category_inverted, category_mask, category_anyof_mask,
                               return_mask, max_pages, vec_len, null_vec)

    def pagemap_scan_all(self, start, end, *, flags=0, category_inverted=0, category_mask=0,
                         category_anyof_mask=0, return_mask=uapi.PM_SCAN_CATEGORIES_6_18, max_pages=0,
                         vec_len=512) -> ScanResult:
        """uffdctl.pagemap.scan_all(): the calls of uffdctl.pagemap.scan_all_loop(), continuing from walk_end,
        with the same result.  A call of do_pagemap_scan() returns its regions ascending, disjoint and
        merged (emit() extends a run of the same categories) and from at or above where it started, so
        each call's regions join the list in bulk, merged with the last one held where they meet; a call
        that returned something below what is held goes region by region, as scan_all_loop() does."""
        return scan_continuation(
            lambda pos, left: self.pagemap_scan(pos, end, flags=flags, category_inverted=category_inverted,
                                                category_mask=category_mask, category_anyof_mask=category_anyof_mask,
                                                return_mask=return_mask, max_pages=left, vec_len=vec_len),
            start, end, max_pages, _join_in_bulk)

    def smaps_private_dirty(self, addr) -> int:
        vma = self.mm.find_vma(addr)
        if vma is None:
            of = f" of {self._task_label}" if self._task_label else ""
            raise uffd_error(E.ENOENT, "smaps", addr, message=f"no mapping{of} contains this address")
        return smaps_private_dirty(self.mm, vma)

    def pte_bits(self, addr: int) -> PteBits:
        pte = self.mm.ptes.get(addr)
        if pte is None or not pte.present:
            return PteBits(0, 0)
        return PteBits(int(pte.write), int(pte.dirty))

    def vma_bounds(self, addr: int) -> tuple[int, int] | None:
        v = self.mm.find_vma(addr)
        return (v.start, v.end) if v is not None else None
