"""mremap() (mm/mremap.c): grow or shrink in place, or move (MREMAP_MAYMOVE / FIXED / DONTUNMAP) with
move_vma() -> copy_vma() + move_page_tables(), and the REMAP event of mremap_userfaultfd_prep()
(fs/userfaultfd.c) for the VMAs whose ctx has UFFD_FEATURE_EVENT_REMAP.
"""
from __future__ import annotations

import errno as E

from ... import uapi
from .mm_types import PAGE_SIZE, PTE_MARKER_UFFD_WP, VM_SOFTDIRTY, VM_UFFD_FLAGS, Vma


class Mremap:
    """mm/mremap.c."""

    def mremap(self, old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
        """The new address, or -errno."""
        vma = self.find_vma(old)
        if vma is None or old % PAGE_SIZE or old + old_len > vma.end:
            return -E.EFAULT if vma is None else -E.EINVAL
        if new_len < old_len and not flags & uapi.MREMAP_FIXED:
            self.munmap(old + new_len, old_len - new_len)
            return old
        if not flags & uapi.MREMAP_FIXED and not self.vmas_in(old + old_len, old + new_len):
            if vma.end == old + old_len:
                self.vma_expand(vma, max(vma.end, old + new_len))
            if vma.end >= old + new_len:
                return old
        if not flags & uapi.MREMAP_MAYMOVE:
            return -E.ENOMEM
        dst = new_addr if flags & uapi.MREMAP_FIXED else self.get_unmapped_area(new_len, vma.page_size)
        if flags & uapi.MREMAP_FIXED:
            self.munmap(dst, new_len)
        (src,) = self.split(old, old + old_len)
        ctx = src.ctx
        moved = Vma(dst, dst + new_len, src.flags | (VM_SOFTDIRTY if self.soft_dirty_config else 0),
                    src.memtype, src.file, src.pgoff, src.page_size, None)
        if ctx is not None and ctx.features & uapi.Feature.EVENT_REMAP:
            moved.ctx = ctx
            ctx.mremap_userfaultfd_complete(old, dst, old_len)
        else:
            moved.flags &= ~VM_UFFD_FLAGS
        self.move_page_tables(src, old, old_len, moved, dst)
        self.insert_vma(moved)
        if not flags & uapi.MREMAP_DONTUNMAP:
            self.remove_vma(src)                        # with DONTUNMAP the old VMA stays, now empty
        return dst

    def move_page_tables(self, src, old: int, old_len: int, moved, dst: int) -> None:
        """move_ptes(): PTEs keep their page (and mapcount); uffd-wp survives only into a VMA that keeps the ctx."""
        flushed = []
        for a in self.pte_keys(old, old + old_len, src.page_size):
            pte = self.ptes.pop(a)
            if pte.present and pte.uffd_wp and moved.ctx is None:
                pte.uffd_wp = False
            if not pte.present and pte.marker == PTE_MARKER_UFFD_WP and moved.ctx is None:
                continue
            pte.soft_dirty = True                      # move_soft_dirty_pte()
            self.ptes[dst + a - old] = pte
            self.pte_alloc(dst + a - old)
            flushed.append(a)
        self.tlb.flush_tlb_range(flushed)
