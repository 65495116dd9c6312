"""Swap devices and the swap cache (mm/swapfile.c, mm/swap_state.c): swapon / swapoff of the model's own
devices (never the host's), slot allocation (folio_alloc_swap), the swap map (swap_duplicate / swap_free /
free_swap_and_cache), and try_to_unuse() with unuse_pte() at swapoff.

The devices are the system's, not one address space's: :class:`SwapSystem` is shared by every MM of one
emulated machine (a fork child's MM gets its parent's).  A folio written to swap stays in the swap cache
(``folio.swap`` set, ``cache[entry]``): with no memory pressure the kernel never frees it (measured on 6.18
after MADV_PAGEOUT: swap-in is a minor fault and maps the same PFN), so swap-in never reads a device here.
"""
from __future__ import annotations

import errno as E

from .mm_types import PAGE_SIZE, Pte, is_swap_entry, swp_entry, swp_offset, swp_type

MAX_SWAPFILES = 32 - 4 - 1        # MAX_SWAPFILES: 5 bits minus the device-private/migration/hwpoison/marker types


class SwapInfo:
    """struct swap_info_struct: one device, ``max`` slots (slot 0 is the header), a per-slot count of the
    PTEs (and shmem page-cache entries) that hold it, and the allocation cursor (the kernel's per-CPU
    cluster allocator hands out ascending offsets; measured: a fresh swapfile gives 1, 2, 3, ...)."""

    def __init__(self, type_: int, size: int, name: str):
        self.type = type_
        self.name = name
        self.max = size // PAGE_SIZE
        self.swap_map: dict[int, int] = {}      # offset -> references (absent: free)
        self.cursor = 1

    @property
    def inuse_pages(self) -> int:
        return len(self.swap_map)

    def scan_swap_map(self) -> int | None:
        """The next free offset from the cursor, wrapping once; None when full."""
        if len(self.swap_map) >= self.max - 1:
            return None
        off = self.cursor
        while off in self.swap_map:
            off = off + 1 if off + 1 < self.max else 1
        self.cursor = off + 1 if off + 1 < self.max else 1
        return off


class SwapSystem:
    """The swap devices of one emulated machine (swap_info[]) and the swap cache (swapper_spaces)."""

    def __init__(self):
        self.devices: list[SwapInfo | None] = []
        self.cache: dict[int, object] = {}      # swap entry -> Folio (add_to_swap_cache)
        # entries whose folio was freed after swap-out (zero-filled: the zeromap; clean and written: reclaim's
        # __remove_mapping()); the cache then holds the page the next swap-in reads (a new one: a major fault)
        self.freed: set[int] = set()
        self.mms: list = []                     # the address spaces try_to_unuse() walks

    def swapon(self, size: int, name: str) -> SwapInfo | int:
        """sys_swapon(): the lowest free type; EINVAL if the device holds no slot past the header."""
        if size // PAGE_SIZE < 2:
            return -E.EINVAL
        for t, d in enumerate(self.devices):
            if d is None:
                break
        else:
            t = len(self.devices)
            if t >= MAX_SWAPFILES:
                return -E.EPERM
            self.devices.append(None)
        si = self.devices[t] = SwapInfo(t, size, name)
        return si

    def nr_swap_pages(self) -> int:
        return sum(d.max - 1 - d.inuse_pages for d in self.devices if d is not None)

    def folio_alloc_swap(self, folio) -> int | None:
        """folio_alloc_swap() + add_to_swap_cache(): a slot on the device with room (highest priority =
        first enabled), the folio into the swap cache.  None: no swap space (the folio stays put)."""
        for d in self.devices:
            if d is None:
                continue
            off = d.scan_swap_map()
            if off is not None:
                d.swap_map[off] = 0
                entry = swp_entry(d.type, off)
                folio.swap = entry
                self.cache[entry] = folio
                return entry
        return None

    def _si(self, entry: int) -> SwapInfo | None:
        t = swp_type(entry)
        return self.devices[t] if t < len(self.devices) else None

    def swap_duplicate(self, entry: int) -> None:
        """One more PTE (or page-cache entry) holds the slot (try_to_unmap_one(), copy_nonpresent_pte())."""
        si = self._si(entry)
        si.swap_map[swp_offset(entry)] += 1

    def swap_count(self, entry: int) -> int:
        si = self._si(entry)
        return si.swap_map.get(swp_offset(entry), 0) if si is not None else 0

    def swap_cache_get_folio(self, entry: int):
        return self.cache.get(entry)

    def swap_writepage(self, folio, alloc_folio) -> None:
        """swap_writepage() of a zero-filled folio (6.12+): only the zeromap bit is set, no writeback, so reclaim
        frees the folio; the swap cache is left holding the page a later swap-in reads, ``alloc_folio()``."""
        self._freed(folio, alloc_folio)

    def remove_mapping(self, folio, alloc_folio) -> None:
        """__remove_mapping() of a clean folio already in the swap cache (its slot holds what it holds: no
        pageout()): the folio is freed, and a later swap-in reads ``alloc_folio()`` from the slot."""
        self._freed(folio, alloc_folio)

    def _freed(self, folio, alloc_folio) -> None:
        entry = folio.swap
        fresh = alloc_folio()
        folio.swap = None
        fresh.swap = entry
        self.cache[entry] = fresh
        self.freed.add(entry)

    def swap_read_folio(self, entry: int) -> bool:
        """True when the swap-in had to read (a major fault): the entry's folio had been freed."""
        if entry in self.freed:
            self.freed.discard(entry)
            return True
        return False

    def delete_from_swap_cache(self, folio) -> None:
        """The folio leaves the swap cache; its slot is freed when no entry holds it any more."""
        entry, folio.swap = folio.swap, None
        self.cache.pop(entry, None)
        self.freed.discard(entry)
        self._maybe_free(entry)

    def _maybe_free(self, entry: int) -> None:
        si = self._si(entry)
        off = swp_offset(entry)
        if si is not None and si.swap_map.get(off) == 0 and entry not in self.cache:
            del si.swap_map[off]

    def swap_free(self, entry: int) -> None:
        """One holder fewer (do_swap_page() after mapping the folio, zap of the swap PTE)."""
        si = self._si(entry)
        off = swp_offset(entry)
        if si is None or off not in si.swap_map:
            return
        si.swap_map[off] = max(0, si.swap_map[off] - 1)
        self._maybe_free(entry)

    def free_swap_and_cache(self, entry: int) -> None:
        """zap_nonpresent_ptes(): drop the PTE's reference; an unmapped folio left only in the swap cache
        goes with the last one (__try_to_reclaim_swap())."""
        self.swap_free(entry)
        si = self._si(entry)
        folio = self.cache.get(entry)
        if si is not None and folio is not None and not si.swap_map.get(swp_offset(entry)) and not folio.mapcount:
            self.delete_from_swap_cache(folio)


class Swapfile:
    """mm/swapfile.c's per-mm part: swap-in at swapoff (try_to_unuse(), unuse_pte())."""

    def unuse_vma(self, type_: int) -> None:
        """unuse_pte_range() over every VMA: each swap PTE of device ``type_`` becomes present again:
        mk_pte(page, vm_page_prot), old, with the swp soft-dirty and uffd-wp bits (unuse_pte())."""
        sw = self.swap
        for vma in self.vmas:
            for a in self.pte_keys(vma.start, vma.end, vma.page_size):
                pte = self.ptes[a]
                if not is_swap_entry(pte) or swp_type(pte.swp) != type_:
                    continue
                folio = sw.cache[pte.swp]
                new = Pte(folio, write=False, young=False, soft_dirty=pte.soft_dirty, uffd_wp=pte.uffd_wp)
                if pte.exclusive:
                    folio.exclusive = True
                sw.swap_free(pte.swp)
                self.set_pte(a, new)


def try_to_unuse(sw: SwapSystem, type_: int) -> None:
    """swapoff's try_to_unuse(): every address space's swap PTEs of the device, then shmem's page-cache
    entries (shmem_unuse(): the folio is simply no longer in swap), then the swap cache."""
    for mm in sw.mms:
        mm.unuse_vma(type_)
    for entry, folio in list(sw.cache.items()):
        if swp_type(entry) == type_:
            if not folio.anon:
                sw.swap_free(entry)            # the page-cache entry's reference
            sw.delete_from_swap_cache(folio)


def swapoff(sw: SwapSystem, si: SwapInfo) -> int:
    try_to_unuse(sw, si.type)
    sw.devices[si.type] = None
    while sw.devices and sw.devices[-1] is None:
        sw.devices.pop()
    return 0
