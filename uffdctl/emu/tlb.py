"""x86 TLB-flush rules: ``pte_flags_need_flush()`` / ``pte_needs_flush()`` (arch/x86/include/asm/tlbflush.h).

The model keeps PTEs as fields (``mm.Pte``); :func:`pte_val` renders one the way
x86-64 lays it out (SavedDirty shift included), and :func:`pte_needs_flush`
applies arch/x86/include/asm/tlbflush.h to two such values.
"""
from __future__ import annotations

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_GLOBAL = 1 << 8
_PAGE_SOFTW1 = _PAGE_SPECIAL = 1 << 9
_PAGE_SOFTW2 = _PAGE_UFFD_WP = 1 << 10
_PAGE_SOFTW3 = _PAGE_SOFT_DIRTY = 1 << 11
_PAGE_PAT = 1 << 7
_PAGE_PAT_LARGE = 1 << 12
_PAGE_SOFTW4 = 1 << 57
_PAGE_SAVED_DIRTY = 1 << 58
_PAGE_PKEY_MASK = 0xF << 59
_PAGE_NX = 1 << 63
PTE_PFN_MASK = ((1 << 52) - 1) & ~0xFFF

_PRESENT_USER_NX = _PAGE_PRESENT | _PAGE_USER | _PAGE_NX
_PAGE_RW_DIRTY = _PAGE_RW | _PAGE_DIRTY
_SOFTWARE = _PAGE_SOFTW1 | _PAGE_SOFTW2 | _PAGE_SOFTW3 | _PAGE_SOFTW4 | _PAGE_SAVED_DIRTY
_FLUSH_ON_CLEAR = _PAGE_DIRTY | _PAGE_PRESENT | _PAGE_ACCESSED
_FLUSH_ON_CHANGE = (_PAGE_RW | _PAGE_USER | _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_GLOBAL | _PAGE_PAT
                    | _PAGE_PAT_LARGE | _PAGE_PKEY_MASK | _PAGE_NX)


def pte_val(pte, soft_dirty_config: bool = True) -> int:
    """The x86-64 bits of a model PTE (0 for none and for markers: they are not present)."""
    if pte is None or pte.page is None:     # none, or not present (a marker, a swap entry)
        return 0
    # on every TLB fill: only the bits that are set are or-ed in (each | makes a new int)
    v = _PRESENT_USER_NX | ((pte.page.pfn << 12) & PTE_PFN_MASK)
    if pte.write:
        v |= _PAGE_RW_DIRTY if pte.dirty else _PAGE_RW
    elif pte.dirty:
        v |= _PAGE_SAVED_DIRTY              # a dirty read-only PTE keeps D in SavedDirty (mksaveddirty_shift())
    if pte.young:
        v |= _PAGE_ACCESSED
    if pte.special:
        v |= _PAGE_SPECIAL
    if pte.uffd_wp:
        v |= _PAGE_UFFD_WP
    if pte.soft_dirty and soft_dirty_config:
        v |= _PAGE_SOFT_DIRTY
    return v


def pte_flags_need_flush(oldflags: int, newflags: int, ignore_access: bool = True,
                         clean_wp_noflush: bool = False) -> bool:
    """x86 pte_flags_need_flush(); ``clean_wp_noflush`` = Nadav's unmerged RFC 12/14."""
    if not oldflags & _PAGE_PRESENT:
        return False
    diff = (oldflags ^ newflags) & ~_SOFTWARE
    if ignore_access:
        diff &= ~_PAGE_ACCESSED
    on_change = _FLUSH_ON_CHANGE
    if clean_wp_noflush:
        on_change &= ~_PAGE_RW
        if diff & oldflags & _PAGE_RW and oldflags & _PAGE_DIRTY:
            return True
    return bool((diff & oldflags & _FLUSH_ON_CLEAR) or (diff & on_change))


def pte_needs_flush(oldpte: int, newpte: int, clean_wp_noflush: bool = False) -> bool:
    """x86 pte_needs_flush(): PFN change, or pte_flags_need_flush()."""
    if not oldpte & _PAGE_PRESENT:
        return False
    if (oldpte ^ newpte) & PTE_PFN_MASK:
        return True
    return pte_flags_need_flush(oldpte & ~PTE_PFN_MASK, newpte & ~PTE_PFN_MASK, True, clean_wp_noflush)


class Tlb:
    """Per-page TLB state of the (single) emulated CPU, and the flush counter.

    ``entries`` caches the PTE value an access last used; a flush drops entries.
    An access hits the TLB only if the cached entry allows it (a write needs RW
    and D: a clean entry makes the CPU walk the page table to set D).
    """

    def __init__(self):
        self.entries: dict[int, int] = {}
        self.flushes = 0         # flush operations (tlb_finish_mmu / flush_tlb_* calls that found work)
        self.flushed_pages = 0

    def fill(self, addr: int, val: int) -> None:
        self.entries[addr] = val

    def hit(self, addr: int, write: bool) -> bool:
        v = self.entries.get(addr)
        if v is None:
            return False
        if write:
            return bool(v & _PAGE_RW and v & _PAGE_DIRTY)
        return True

    def flush_range(self, addrs) -> None:
        """One flush covering ``addrs`` (pages whose PTE change needed it)."""
        n = 0
        for a in addrs:
            self.entries.pop(a, None)
            n += 1
        if n:
            self.flushes += 1
            self.flushed_pages += n

    def flush_tlb_range(self, addrs) -> None:
        """flush_tlb_range() after move_page_tables(): one flush, counted even when no page was cached."""
        for a in addrs:
            self.entries.pop(a, None)
        self.flushes += 1

    def flush_mm(self) -> None:
        self.entries.clear()
        self.flushes += 1
