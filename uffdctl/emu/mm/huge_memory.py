"""Transparent huge pages (mm/huge_memory.c, with the THP branches of mm/memory.c): the THP sysfs knobs as
the model's own (:class:`ThpSettings`: never the host's), thp_vma_allowable_order(), the PMD-level fault
(create_huge_pmd -> do_huge_pmd_anonymous_page, wp_huge_pmd -> do_huge_pmd_wp_page / do_huge_zero_wp_pmd,
huge_pmd_set_accessed), __split_huge_pmd(), zap_huge_pmd(), change_huge_pmd(), move_huge_pmd() and
move_pages_huge_pmd() (UFFDIO_MOVE of a whole PMD).

A PMD leaf is ``mm.pmds[haddr]``: a Pte over a large folio (``Folio.pages``) or the huge zero folio
(special).  What the rest of the model does not do at PMD level it does after split_huge_pmds(), as the
kernel's walkers split a PMD a range covers only in part.

Measured on the 6.18 host (tests/test_thp.py holds the model to each): a read fault in a THP-able VMA maps
the huge zero PMD, a write fault a THP (PM_MMAP_EXCLUSIVE on each 4 KiB entry); a write to the huge zero
PMD allocates a THP (do_huge_zero_wp_pmd, 6.13); a MISSING-registered VMA gets its userfault from the PMD
path with no PTE table allocated, and UFFDIO_COPY / ZEROPAGE then install 4 KiB PTEs; a WP-registered VMA
still gets THPs; UFFDIO_WRITEPROTECT of a whole anon PMD keeps it huge (pmd_mkuffd_wp), of part of one
splits it.
"""
from __future__ import annotations

import errno as E

from .mm_types import (Folio, HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_SIZE, PAGE_SIZE, Pte, VM_FAULT_OK,
                       VM_HUGEPAGE, VM_LOCKED, VM_NOHUGEPAGE, VM_UFFD_FLAGS, VM_UFFD_MISSING, VM_UFFD_WP, VM_WRITE, userfaultfd_missing,
                       userfaultfd_wp)

VM_FAULT_FALLBACK = 0x800
HUGE_ZERO_PFN = 0x200000          # the huge zero folio's (fake) PFN, 2 MiB-aligned as the kernel's

# /sys/kernel/mm/transparent_hugepage/<knob>: the choices each takes (the one in [] is the value)
_TOP = {"enabled": ("always", "madvise", "never"),
        "defrag": ("always", "defer", "defer+madvise", "madvise", "never"),
        "shmem_enabled": ("always", "within_size", "advise", "never", "deny", "force"),
        "use_zero_page": None, "khugepaged/max_ptes_none": None, "khugepaged/max_ptes_swap": None,
        "khugepaged/max_ptes_shared": None, "khugepaged/defrag": None}
_NUMERIC = {"use_zero_page": (0, 1), "khugepaged/max_ptes_none": (0, HPAGE_PMD_NR - 1),
            "khugepaged/max_ptes_swap": (0, HPAGE_PMD_NR - 1), "khugepaged/max_ptes_shared": (0, HPAGE_PMD_NR - 1),
            "khugepaged/defrag": (0, 1)}
_SIZE_ANON = ("always", "inherit", "madvise", "never")
_SIZE_SHMEM = ("always", "inherit", "within_size", "advise", "never")


class ThpSettings:
    """The emulated kernel's transparent_hugepage sysfs directory (Debian's defaults: CONFIG_TRANSPARENT_HUGEPAGE_
    MADVISE; the per-size directories of mTHP, 6.8 anon / 6.11 shmem, where the profile has them)."""

    def __init__(self, profile, values: dict | None = None):
        self.values: dict[str, str] = {"enabled": "madvise", "defrag": "madvise", "shmem_enabled": "never",
                                       "use_zero_page": "1", "khugepaged/max_ptes_none": "511",
                                       "khugepaged/max_ptes_swap": "64", "khugepaged/max_ptes_shared": "256",
                                       "khugepaged/defrag": "1"}
        self.choices: dict[str, tuple | None] = dict(_TOP)
        if profile.mthp:              # anon orders 2..9 (16K..2M) on x86-64
            for kb in (16 << i for i in range(8)):
                self.values[f"hugepages-{kb}kB/enabled"] = "inherit" if kb == 2048 else "never"
                self.choices[f"hugepages-{kb}kB/enabled"] = _SIZE_ANON
        if profile.shmem_mthp:        # shmem orders 1..9 (8K..2M)
            for kb in (8 << i for i in range(9)):
                self.values[f"hugepages-{kb}kB/shmem_enabled"] = "inherit" if kb == 2048 else "never"
                self.choices[f"hugepages-{kb}kB/shmem_enabled"] = _SIZE_SHMEM
        self.any_always = False       # some anon knob says always: every anon VMA may take a PMD fault
        self.shmem_any = False        # some shmem knob allows large folios without MADV_HUGEPAGE
        for k, v in (values or {}).items():
            err = self.set(k, v)
            if err:
                raise ValueError(err)

    def set(self, knob: str, value) -> str | None:
        """Write ``value`` to ``knob`` as the sysfs store would; an error text (the kernel's EINVAL) or None."""
        knob = knob.removeprefix("/sys/kernel/mm/transparent_hugepage/")
        value = str(value).strip()
        if knob not in self.choices:
            return f"no THP knob {knob!r} in this kernel (known: {', '.join(sorted(self.choices))})"
        ch = self.choices[knob]
        if ch is None:
            lo, hi = _NUMERIC[knob]
            if not value.isdigit() or not lo <= int(value) <= hi:
                return f"{knob}: {value!r} is not a number in [{lo}, {hi}] (EINVAL)"
        elif value not in ch:
            return f"{knob}: {value!r} is not one of {', '.join(ch)} (EINVAL)"
        self.values[knob] = value
        self.any_always = any(self.anon_size_allowed(16 << i, 0) for i in range(8)) or self.anon_pmd_allowed(0)
        self.shmem_any = any(self.shmem_size_allowed(8 << i, 0, True) for i in range(9))
        return None

    def show(self, knob: str) -> str:
        """The sysfs text: ``always [madvise] never`` (or the number)."""
        ch, v = self.choices[knob], self.values[knob]
        return v if ch is None else " ".join(f"[{c}]" if c == v else c for c in ch)

    def number(self, knob: str) -> int:
        return int(self.values[knob])

    def anon_pmd_allowed(self, vm_flags: int) -> bool:
        """hugepage_vma_check() for anon PMD order: hugepages-2048kB/enabled (inherit: the top level)."""
        v = self.values.get("hugepages-2048kB/enabled", "inherit")
        if v == "inherit":
            v = self.values["enabled"]
        return v == "always" or v == "madvise" and bool(vm_flags & VM_HUGEPAGE)

    def anon_size_allowed(self, kb: int, vm_flags: int) -> bool:
        """hugepages-<kb>kB/enabled: always, madvise (VM_HUGEPAGE), inherit (the top-level knob), never."""
        v = self.values.get(f"hugepages-{kb}kB/enabled", "never")
        if v == "inherit":
            v = self.values["enabled"]
        return v == "always" or v == "madvise" and bool(vm_flags & VM_HUGEPAGE)

    def shmem_size_allowed(self, kb: int, vm_flags: int, fits: bool) -> bool:
        """hugepages-<kb>kB/shmem_enabled (inherit: the top-level shmem_enabled) for a memfd fault
        [measured on 6.18: a memfd with hugepages-16kB/shmem_enabled=always gets 16K folios]."""
        v = self.values.get(f"hugepages-{kb}kB/shmem_enabled", "never" if kb != 2048 else "inherit")
        if v == "inherit":
            v = self.values["shmem_enabled"]
            if v == "force":
                return True
        return v == "always" or v == "within_size" and fits or v == "advise" and bool(vm_flags & VM_HUGEPAGE)

    def collapse_allowed(self, vm_flags: int) -> bool:
        """khugepaged (not MADV_COLLAPSE) obeys the sysfs setting as a fault does."""
        return self.anon_pmd_allowed(vm_flags)


class HugeMemory:
    """mm/huge_memory.c: the PMD-level fault, split, zap, protect and move."""

    # -- the knobs and the eligibility rules -----------------------------------------------------------------
    def vma_thp_disabled(self, vma) -> bool:
        return bool(vma.flags & VM_NOHUGEPAGE) or vma.hugetlb

    def thp_vma_suitable(self, vma, haddr: int) -> bool:
        """thp_vma_suitable_order(PMD_ORDER): the aligned 2 MiB lies in the VMA (file: at a PMD-aligned
        offset too)."""
        if not vma.anon and (vma.start - vma.pgoff) % HPAGE_SIZE:
            return False
        return vma.start <= haddr and haddr + HPAGE_SIZE <= vma.end

    def thp_fault_possible(self, vma) -> bool:
        """Cheap gate of the fault path: could this VMA take a PMD fault at all?"""
        return vma.anon and not self.vma_thp_disabled(vma) and self.thp.anon_pmd_allowed(vma.flags)

    # -- the fault ---------------------------------------------------------------------------------------
    def huge_pmd_fault(self, vmf) -> int:
        """__handle_mm_fault()'s PMD level: create_huge_pmd() on a none PMD, wp_huge_pmd() /
        huge_pmd_set_accessed() on a leaf; VM_FAULT_FALLBACK goes on to the PTE level."""
        haddr = vmf.address & HPAGE_PMD_MASK
        pmd = self.pmds.get(haddr) if self.pmds else None
        if pmd is None:
            if haddr >> 21 in self.pgtables or not self.thp_fault_possible(vmf.vma):
                return VM_FAULT_FALLBACK
            return self.do_huge_pmd_anonymous_page(vmf, haddr)
        if vmf.write and not pmd.write:
            return self.wp_huge_pmd(vmf, haddr, pmd)
        pmd.young = True                                    # huge_pmd_set_accessed()
        if vmf.write:
            self.pte_mkdirty(pmd)
        return VM_FAULT_OK

    def alloc_anon_folio(self, vmf) -> tuple[int, int] | None:
        """alloc_anon_folio()'s order choice for a write fault (mTHP, 6.8): the largest enabled size below PMD
        whose aligned range lies in the VMA with every PTE none; order 0 (None) in a registered VMA
        (userfaultfd_armed()) or when no size is enabled.  Returns (address, size)."""
        vma = vmf.vma
        if not self.profile.mthp or vma.flags & VM_UFFD_FLAGS or self.vma_thp_disabled(vma):
            return None
        for kb in (1024 >> i for i in range(7)):
            if not self.thp.anon_size_allowed(kb, vma.flags):
                continue
            size = kb << 10
            a = vmf.address & ~(size - 1)
            if vma.start <= a and a + size <= vma.end and not self.pte_keys(a, a + size, PAGE_SIZE):
                return a, size
        return None

    def alloc_large_folio(self, vma, size: int, anon: bool = True, data: bytes | None = None) -> Folio:
        """A large folio of ``size`` bytes and its 4 KiB pages (contiguous PFNs)."""
        folio = self.alloc_anon(vma, size) if anon else self.alloc_folio(size, False)
        folio.pages = []
        for i in range(size // PAGE_SIZE):
            p = Folio(folio.pfn + i, PAGE_SIZE, anon,
                      None if data is None else bytearray(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
            p.head = folio
            folio.pages.append(p)
        return folio

    # -- shmem ----------------------------------------------------------------------------------------
    def shmem_alloc_large(self, vmf, idx: int):
        """shmem_alloc_and_add_folio() with shmem_suitable_orders(): the largest allowed size whose aligned index
        range lies in the file and in the VMA (thp_vma_suitable_order()) with no page cached there; its pages go
        into the page cache.  Returns the page at ``idx``, or None (order 0)."""
        vma, f = vmf.vma, vmf.vma.file
        if self.vma_thp_disabled(vma) or (vma.start - vma.pgoff) % PAGE_SIZE:
            return None
        for kb in (2048 >> i for i in range(9)):
            n = kb >> 2
            i0 = idx - idx % n
            size = kb << 10
            fits = (i0 + n) * PAGE_SIZE <= f.size
            if not fits or not self.thp.shmem_size_allowed(kb, vma.flags, fits):
                continue
            a = vma.start + i0 * PAGE_SIZE - vma.pgoff
            if ((vma.start - vma.pgoff) // PAGE_SIZE) % n or a < vma.start or a + size > vma.end:
                continue
            if any(i in f.pages for i in range(i0, i0 + n)):
                continue
            folio = self.alloc_large_folio(vma, size, anon=False)
            for i, p in enumerate(folio.pages):
                f.pages[i0 + i] = p
            return folio.pages[idx - i0]
        return None

    def finish_fault_large(self, vmf, page, write: bool) -> bool:
        """finish_fault() for a page of a large shmem folio in an unarmed shmem VMA: do_set_pmd() for a PMD-sized
        folio over a none PMD, else the whole folio's PTEs when they lie in the VMA and the PTE table and are
        all none.  False: map the one page (the caller does)."""
        vma, folio = vmf.vma, page.head
        if vma.flags & VM_UFFD_FLAGS or vma.hugetlb:
            return False                           # "Using per-page fault to maintain the uffd semantics"
        size = folio.size
        i = folio.pages.index(page)
        a = vmf.address - i * PAGE_SIZE
        writable = True if write else self.vm_page_prot_writable(vma)
        if size == HPAGE_SIZE and self.pmd_none(a) and not self.vma_thp_disabled(vma) and \
                self.thp_vma_suitable(vma, a) and a % HPAGE_SIZE == 0:
            pmd = Pte(folio, write=writable, young=True)
            if write:
                self.pte_mkdirty(pmd)
            self.set_pmd(a, pmd)
            return True
        if a < vma.start or a + size > vma.end or a >> 21 != (a + size - 1) >> 21 or \
                self.pte_keys(a, a + size, PAGE_SIZE) or self.pmd_leaf(a):
            return False
        for k, p in enumerate(folio.pages):
            pte = Pte(p, write=bool(writable), young=True)
            if write:
                self.pte_mkdirty(pte)
            self.set_pte(a + k * PAGE_SIZE, pte)
        return True

    def filemap_map_pmd(self, vmf) -> bool:
        """filemap_map_pages()' first step: the cache page at the fault is part of a PMD-sized folio, the PMD is
        none and the VMA suits it: do_set_pmd() (read-only unless vm_page_prot is writable)."""
        vma = vmf.vma
        page = vma.file.pages.get(vma.linear_page_index(vmf.address))
        if page is None or page.head is None or page.head.size != HPAGE_SIZE:
            return False
        haddr = vmf.address & HPAGE_PMD_MASK
        if not self.pmd_none(haddr) or self.vma_thp_disabled(vma) or not self.thp_vma_suitable(vma, haddr) or \
                page.head.pages[0] is not vma.file.pages.get(vma.linear_page_index(haddr)):
            return False
        self.set_pmd(haddr, Pte(page.head, write=self.vm_page_prot_writable(vma), young=True))
        return True

    def huge_zero_folio(self) -> Folio:
        z = getattr(self, "_huge_zero", None)
        if z is None:
            z = self._huge_zero = Folio(HUGE_ZERO_PFN, HPAGE_SIZE, anon=False, zero=True)
            z.exclusive = False
        return z

    def alloc_thp(self, vma, data: bytes | None = None) -> Folio:
        """vma_alloc_anon_folio_pmd(): a 2 MiB anon folio and its 512 pages (contiguous PFNs)."""
        return self.alloc_large_folio(vma, HPAGE_SIZE, True, data)

    def do_huge_pmd_anonymous_page(self, vmf, haddr: int) -> int:
        vma = vmf.vma
        if not self.thp_vma_suitable(vma, haddr):
            return VM_FAULT_FALLBACK
        self.anon_vma_prepare(vma)                          # vmf_anon_prepare()
        if not vmf.write and self.thp.number("use_zero_page"):
            if userfaultfd_missing(vma):                    # no PTE table is left behind
                return self.handle_userfault(vmf, VM_UFFD_MISSING)
            self.set_pmd(haddr, Pte(self.huge_zero_folio(), special=True, young=True))
            return VM_FAULT_OK
        if userfaultfd_missing(vma):                        # __do_huge_pmd_anonymous_page(): folio dropped
            return self.handle_userfault(vmf, VM_UFFD_MISSING)
        pmd = Pte(self.alloc_thp(vma), write=bool(vma.flags & VM_WRITE), young=True)
        self.pte_mkdirty(pmd)
        self.set_pmd(haddr, pmd)
        return VM_FAULT_OK

    def wp_huge_pmd(self, vmf, haddr: int, pmd: Pte) -> int:
        vma = vmf.vma
        if vma.anon:
            if pmd.uffd_wp and userfaultfd_wp(vma):         # userfaultfd_huge_pmd_wp()
                if not vma.ctx.wp_async:
                    return self.handle_userfault(vmf, VM_UFFD_WP)
            else:
                return self.do_huge_pmd_wp_page(vmf, haddr, pmd)
        self.split_huge_pmd(vma, haddr)                     # COW / write-notify / async WP at PTE level
        return VM_FAULT_FALLBACK

    def do_huge_pmd_wp_page(self, vmf, haddr: int, pmd: Pte) -> int:
        vma = vmf.vma
        if pmd.special:
            if not self.profile.huge_zero_wp_thp:
                self.split_huge_pmd(vma, haddr)
                return VM_FAULT_FALLBACK
            new = Pte(self.alloc_thp(vma), write=bool(vma.flags & VM_WRITE), young=True)   # do_huge_zero_wp_pmd()
            self.pte_mkdirty(new)
            self.set_pmd(haddr, new)
            self.tlb.flush_range([haddr])
            return VM_FAULT_OK
        folio = pmd.page
        if folio.exclusive or folio.mapcount == 1 and all(p.mapcount == 0 for p in folio.pages):
            folio.exclusive = True                          # reuse
            pmd.young, pmd.write = True, bool(vma.flags & VM_WRITE)
            self.pte_mkdirty(pmd)
            return VM_FAULT_OK
        self.split_huge_pmd(vma, haddr)
        return VM_FAULT_FALLBACK

    # -- split --------------------------------------------------------------------------------------
    def split_huge_pmd(self, vma, haddr: int) -> None:
        """__split_huge_pmd_locked(): the leaf becomes a PTE table of 512 PTEs with its bits (zero PMD:
        512 zero-page PTEs keeping uffd-wp); the folio stays (its pages keep PageAnonExclusive)."""
        pmd = self.pmds.get(haddr)
        if pmd is None:
            return
        self.set_pmd(haddr, None)
        self.tlb.flush_range([haddr])
        if pmd.dirty and not pmd.special:
            pmd.page.dirty = True                # "if (pmd_dirty(old_pmd)) folio_set_dirty(folio)"
        if not vma.anon and not pmd.special:
            return                               # a file PMD is only cleared: faults map its pages again
        self.pte_alloc(haddr)
        if pmd.special:
            for i in range(HPAGE_PMD_NR):
                self.set_pte(haddr + i * PAGE_SIZE, Pte(self.zero_page, special=True, young=True,
                                                        uffd_wp=pmd.uffd_wp))
            return
        folio = pmd.page
        for i, p in enumerate(folio.pages):
            p.exclusive = folio.exclusive and folio.anon
            self.set_pte(haddr + i * PAGE_SIZE, Pte(p, write=pmd.write, dirty=pmd.dirty, young=pmd.young,
                                                    soft_dirty=pmd.soft_dirty or pmd.dirty, uffd_wp=pmd.uffd_wp))

    def split_folio(self, vma, page, addr: int) -> None:
        """__folio_split() of the anon large folio ``page`` (mapped at ``addr`` in ``vma``) belongs to: a PMD
        mapping is split first, every page becomes its own folio, and (6.12) a zero-filled page mapped here is
        remapped to the shared zero page (RMP_USE_SHARED_ZEROPAGE; not in a VM_LOCKED VMA), keeping its PTE's
        uffd-wp and soft-dirty bits."""
        folio = page.head
        if folio is None:
            return
        i = folio.pages.index(page)
        base = addr - i * PAGE_SIZE
        if self.pmds and self.pmds.get(base & HPAGE_PMD_MASK) is not None and \
                self.pmds[base & HPAGE_PMD_MASK].page is folio:
            self.split_huge_pmd(vma, base & HPAGE_PMD_MASK)
        remap = folio.anon and self.profile.thp_split_zero_remap and not vma.flags & VM_LOCKED
        # unmap_folio() -> try_to_migrate_one(): "if (pte_dirty(pteval)) folio_mark_dirty(folio)" -- before the
        # split, so every new folio is dirty [measured on 6.18: a lazyfree THP split by DONTNEED of part, one
        # page rewritten, MADV_PAGEOUT keeps its written pages, not only the rewritten one]
        ptes = self.ptes
        if not folio.dirty and any((q := ptes.get(base + k * PAGE_SIZE)) is not None and q.page is p and q.dirty
                                   for k, p in enumerate(folio.pages)):
            folio.dirty = True
        flush = []
        for k, p in enumerate(folio.pages):
            p.head = None
            p.dirty |= folio.dirty         # __split_folio_to_order(): the new folios keep PG_dirty, PG_swapbacked
            p.lazyfree |= folio.lazyfree
            x = base + k * PAGE_SIZE
            pte = self.ptes.get(x) if remap else None
            if pte is not None and pte.page is p and (p.data is None or not any(p.data)):
                self.set_pte(x, Pte(self.zero_page, special=True, young=True, uffd_wp=pte.uffd_wp,
                                    soft_dirty=pte.soft_dirty))
                flush.append(x)
        folio.pages = None
        self.tlb.flush_range(flush)

    def split_large_folios(self, vma, s: int, e: int, pageout: bool = False, free: bool = False) -> list:
        """The PTE step of MADV_COLD / PAGEOUT / FREE over PTE-mapped large folios: one whose batch of PTEs from
        here is shorter than the folio (madvise_folio_pte_batch() < folio_nr_pages(): the range covers it in
        part, or a PTE of it is gone -- a MADV_DONTNEED of part of a THP zaps some after the PMD split), and
        not mapped elsewhere, is split_folio()'d [measured on 6.18: write a THP page, DONTNEED 56 pages of the
        other 511, MADV_FREE the whole THP: its zero-filled pages then read the zero pfn; soak seed
        413289510]; ``pageout``: so is a whole one reclaim splits -- shrink_folio_list() splits an anon large
        folio to swap it out, and when add_to_swap() fails ("Fallback to swap normal pages"; no swap space)
        too; a file one only to swap it out.  Returns the parts of [s, e) the PTE loop does not reach (before
        6.10 only: see split_every_large_folio())."""
        if not self.profile.madvise_folio_pte_batch:
            return self.split_every_large_folio(vma, s, e, free)
        whole_too = pageout and self.swap.nr_swap_pages() > 0
        ptes, skip = self.ptes, s
        for a in self.pte_keys(s, e, PAGE_SIZE):
            if a < skip:
                continue                              # in the batch just walked
            pte = ptes.get(a)
            if pte is None or not pte.present or pte.page.head is None:
                continue
            folio = pte.page.head
            i = folio.pages.index(pte.page)
            nr = self.folio_pte_batch(folio, i, a, pte, e)
            skip = a + nr * PAGE_SIZE
            if any(p.mapcount > 1 for p in folio.pages) or folio.mapcount:
                continue                              # folio_maybe_mapped_shared()
            if nr < len(folio.pages) or (pageout and not (folio.anon and folio.lazyfree) and
                                         (whole_too or folio.anon)):
                # (a lazyfree folio, not swap-backed, is neither swapped nor split by reclaim: no add_to_swap())
                self.split_folio(vma, pte.page, a)
        return []

    def split_every_large_folio(self, vma, s: int, e: int, free: bool) -> list:
        """Before madvise_folio_pte_batch() (6.10), the PTE loops of MADV_COLD / PAGEOUT / FREE split every
        PTE-mapped large folio they meet, whole or in part, when the page at hand is mapped only here
        (madvise_cold_or_pageout_pte_range(): page_mapcount(page) != 1; madvise_free_pte_range():
        folio_estimated_sharers(), its first page's); at one that is mapped elsewhere they "break": the rest
        of that PMD's PTEs are left alone [measured: 6.1.192 guest].  Returns those rests, (start, end) pairs."""
        cuts, ptes = [], self.ptes
        for a in self.pte_keys(s, e, PAGE_SIZE):
            if cuts and a < cuts[-1][1]:
                continue
            pte = ptes.get(a)
            if pte is None or not pte.present or pte.special or pte.page.head is None:
                continue
            folio = pte.page.head
            if (folio.pages[0] if free else pte.page).mapcount + folio.mapcount != 1:
                cuts.append((a, min(e, (a | (HPAGE_SIZE - 1)) + 1)))
                continue
            self.split_folio(vma, pte.page, a)
        return cuts

    def folio_pte_batch(self, folio, i: int, addr: int, pte, end: int) -> int:
        """folio_pte_batch(): how many PTEs from ``addr`` (mapping page ``i`` of ``folio``) map the folio's next
        pages in order with the same bits, dirty, soft-dirty, write and young aside (uffd-wp counts), up to
        ``end`` and the folio's end."""
        ptes, pages = self.ptes, folio.pages
        n = 1
        a = addr + PAGE_SIZE
        while i + n < len(pages) and a < end:
            q = ptes.get(a)
            if q is None or q.page is not pages[i + n] or q.uffd_wp != pte.uffd_wp:
                break
            n += 1
            a += PAGE_SIZE
        return n

    def split_huge_pmds(self, vma, start: int, end: int, keep_whole: bool = False) -> list[int]:
        """Split the leaves [start, end) covers in part (``keep_whole``) or at all; the leaves kept whole."""
        if not self.pmds:
            return []
        whole = []
        for haddr in sorted(h for h in self.pmds if h < end and start < h + HPAGE_SIZE):
            if keep_whole and start <= haddr and haddr + HPAGE_SIZE <= end:
                whole.append(haddr)
            else:
                self.split_huge_pmd(vma, haddr)
        return whole

    # -- zap, protect ---------------------------------------------------------------------------------
    def zap_huge_pmds(self, vma, start: int, end: int) -> None:
        """zap_pmd_range(): a leaf [start, end) covers whole goes (zap_huge_pmd(): the PMD is none after, no
        PTE table), one covered in part is split first."""
        for haddr in self.split_huge_pmds(vma, start, end, keep_whole=True):
            self.set_pmd(haddr, None)
            self.tlb.flush_range([haddr])

    def change_huge_pmds(self, vma, start: int, end: int, newprot_writable: bool, cp_flags: int) -> int:
        """change_pmd_range(): change_huge_pmd() on whole anon leaves; split where the range covers part of
        one, and for uffd-wp on file VMAs (pgtable_split_needed()).  Returns the pages changed."""
        from .mm_types import MM_CP_TRY_CHANGE_WRITABLE, MM_CP_UFFD_WP, MM_CP_UFFD_WP_RESOLVE
        keep = vma.anon or not cp_flags & MM_CP_UFFD_WP
        pages, flush = 0, []
        for haddr in self.split_huge_pmds(vma, start, end, keep_whole=keep):
            pmd = self.pmds[haddr]
            new = pmd.copy()
            new.write = newprot_writable and not pmd.special
            if cp_flags & MM_CP_UFFD_WP:
                new.uffd_wp, new.write = True, False
            elif cp_flags & MM_CP_UFFD_WP_RESOLVE:
                new.uffd_wp = False
            if cp_flags & MM_CP_TRY_CHANGE_WRITABLE and not new.write and not pmd.special and \
                    self.can_change_pmd_writable(vma, new):
                new.write = True
            if self.needs_flush(pmd, new):
                flush.append(haddr)
            self.pmds[haddr] = new
            pages += HPAGE_PMD_NR
        self.tlb.flush_range(flush)
        return pages

    def can_change_pmd_writable(self, vma, pmd: Pte) -> bool:
        if not vma.flags & VM_WRITE or pmd.uffd_wp:
            return False
        if self.vma_soft_dirty_enabled(vma) and not pmd.soft_dirty:
            return False
        if not vma.shared:
            return pmd.page.anon and pmd.page.exclusive
        return pmd.dirty

    def madvise_cold_or_pageout_huge_pmds(self, vma, s: int, e: int, pageout: bool) -> list[int]:
        """madvise_cold_or_pageout_pte_range()'s PMD step: the huge zero PMD is skipped, and so is a THP mapped
        elsewhere too; a leaf covered in part is split (split_folio(): the PTE step goes on); a whole leaf is
        made old in place, and for PAGEOUT an anon THP is isolated for reclaim, whose shrink_folio_list()
        splits it: to swap it out, or, without swap space, because add_to_swap() failed ("Fallback to swap
        normal pages": split_folio_to_list(); on 6.12+ its zero-filled pages then map the shared zero page)
        [measured on 6.18 with the LRU batches drained: AnonHugePages 2048 kB -> 0, pages 1..511 of a THP
        written at page 0 read the zero pfn; the huge zero PMD keeps PAGE_IS_HUGE].  The swap-out is modelled
        as its 4 KiB pages.  Returns the leaves reclaimed here whole (lazyfree), which the PTE step leaves."""
        if not self.pmds:
            return []
        flush, done = [], []
        for haddr in sorted(h for h in self.pmds if h < e and s < h + HPAGE_SIZE):
            pmd = self.pmds[haddr]
            if pmd.special or pmd.page.mapcount != 1 or any(p.mapcount for p in pmd.page.pages):
                continue
            if not (s <= haddr and haddr + HPAGE_SIZE <= e):
                self.split_folio(vma, pmd.page.pages[0], haddr)      # split_folio(): then the PTE step
                continue
            if pmd.young:
                pmd.young = False
                flush.append(haddr)
            if pageout and pmd.page.anon and pmd.page.lazyfree:
                # shrink_folio_list(): a lazyfree folio needs no swap; try_to_unmap(TTU_SPLIT_HUGE_PMD) splits
                # the PMD (split_huge_pmd_locked(): the PTE table stays) and try_to_unmap_one() goes on over the
                # PTEs as for any PTE-mapped lazyfree folio: clean, every page is discarded (its PTE none);
                # redirtied, they are mapped back and the folio is swap-backed again
                # [measured on 6.18: MADV_FREE + PAGEOUT of a whole THP counts thp_split_pmd 1, pglazyfreed
                # 512, every entry none, and the next write maps a 4 KiB page, no THP; soak seeds 639469770,
                # 93986452.  __discard_anon_folio_pmd_locked(), which would clear the PMD whole, is not reached
                # from try_to_unmap_one() there]
                self.split_huge_pmd(vma, haddr)      # every PTE takes the PMD's dirty bit: one verdict for all
                self.discard_lazyfree_large_folio(vma, pmd.page, haddr, flush)    # vmscan.py
                done.append(haddr)               # reclaimed here: the PTE step does not walk it again
                continue
            if pageout and pmd.page.anon:
                self.split_folio(vma, pmd.page.pages[0], haddr)      # shrink_folio_list(): split (to swap out)
        self.tlb.flush_range(flush)
        return done

    def reclaim_pt_if_empty(self, s: int, e: int) -> None:
        """mm/pt_reclaim.c (CONFIG_PT_RECLAIM): after MADV_DONTNEED, a PTE table of a PMD the range covers whole
        is freed when every entry is none (a marker keeps it)."""
        lo, hi = (s + HPAGE_SIZE - 1) >> 21, e >> 21
        for pmd in self._tables_in(lo, hi - 1) if lo < hi else ():      # the tables there, not every index
            if not self.pte_keys(pmd << 21, (pmd + 1) << 21, PAGE_SIZE):
                self.pgtables.discard(pmd)
                self._pgt_sorted = None

    # -- fork ---------------------------------------------------------------------------------------
    def copy_huge_pmds(self, dst_mm, dst_vma, src_vma) -> None:
        """copy_huge_pmd() for every PMD leaf of ``src_vma`` (this mm is the parent): an anon THP loses
        PageAnonExclusive and is write-protected in both, the huge zero PMD is shared; the child's PMD keeps
        uffd-wp only in a uffd-wp VMA; a file (shmem) PMD is not copied: the child faults it in
        ("if (!vma_is_anonymous(dst_vma)) return 0")."""
        if not self.pmds or not dst_vma.anon:
            return
        for haddr in [h for h in self.pmds if src_vma.start <= h < src_vma.end]:
            pmd = self.pmds[haddr]
            new = pmd.copy()
            if not pmd.special:
                pmd.page.exclusive = False
                if pmd.write:
                    pmd.write = False
                    self.tlb.flush_range([haddr])
                new.write = False
            if not userfaultfd_wp(dst_vma):
                new.uffd_wp = False
            dst_mm.set_pmd(haddr, new)

    # -- mremap, UFFDIO_MOVE ----------------------------------------------------------------------------
    def move_huge_pmds(self, vma, old: int, length: int, dst: int, clear_uffd_wp: bool) -> list[int]:
        """move_page_tables()' PMD step: a whole leaf moving to a 2 MiB-aligned destination moves as a leaf
        (move_huge_pmd(), soft-dirty set, uffd-wp cleared by clear_uffd_wp_pmd() where asked); any other
        leaf in the range is split first.  Returns the old addresses moved."""
        if not self.pmds:
            return []
        aligned = (dst - old) % HPAGE_SIZE == 0
        moved = []
        for haddr in self.split_huge_pmds(vma, old, old + length, keep_whole=aligned):
            pmd = self.pmds.pop(haddr)
            if clear_uffd_wp:
                pmd.uffd_wp = False
            pmd.soft_dirty = True
            self.pmds[dst + haddr - old] = pmd
            self.pmd_tables.add((dst + haddr - old) >> 30)
            moved.append(haddr)
        return moved

    def move_pages_huge_pmd(self, dst_vma, src_vma, dst: int, src: int, flush: list) -> int:
        """move_pages_huge_pmd(): the source leaf moves whole to a none destination PMD; the huge zero PMD
        moves as such; a folio mapped elsewhere too is -EBUSY (the caller then splits)."""
        pmd = self.pmds[src]
        if not self.pmd_none(dst):
            return -E.EEXIST
        if not pmd.special:
            folio = pmd.page
            if not folio.anon or not folio.exclusive or folio.mapcount != 1 or any(p.mapcount for p in folio.pages):
                return -E.EBUSY
        self.set_pmd(src, None)
        flush.append(src)
        new = Pte(pmd.page, special=pmd.special, young=True)
        if not pmd.special:
            new.write, new.soft_dirty = True, True
            new.dirty = pmd.dirty if self.profile.move_dirty_from_src else True
        self.set_pmd(dst, new)
        return 0


__all__ = ["ThpSettings", "HugeMemory", "VM_FAULT_FALLBACK", "HUGE_ZERO_PFN"]
