"""mremap() (mm/mremap.c): shrink or grow in place, or move (MREMAP_MAYMOVE / FIXED / DONTUNMAP) with
move_vma() -> copy_vma() + move_page_tables(), and the userfaultfd hooks of fs/userfaultfd.c it calls:
mremap_userfaultfd_prep() (the moved VMA keeps its ctx only with UFFD_FEATURE_EVENT_REMAP, else it is
unregistered), mremap_userfaultfd_complete() (the REMAP message: from, to, the *old* length) and the UNMAP
messages of munmap() for the MREMAP_FIXED destination (before REMAP) and the vacated source (after).
"""
from __future__ import annotations

import errno as E

from ... import uapi
from .mm_types import PAGE_SIZE, PTE_MARKER_UFFD_WP, TASK_SIZE, VM_HUGETLB, VM_UFFD_FLAGS, Vma

MREMAP_FLAGS = uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED | uapi.MREMAP_DONTUNMAP
VM_DONTEXPAND = VM_HUGETLB          # hugetlbfs_file_mmap() sets VM_DONTEXPAND on every hugetlb VMA


def _page_align(n: int, size: int = PAGE_SIZE) -> int:
    return (n + size - 1) & ~(size - 1)


class Mremap:
    """mm/mremap.c."""

    def mremap(self, old: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
        """The new address, or -errno (check_mremap_params(), then the in-place or moving paths)."""
        M = uapi
        if flags & ~MREMAP_FLAGS or old % PAGE_SIZE:
            return -E.EINVAL
        if flags & M.MREMAP_FIXED and not flags & M.MREMAP_MAYMOVE:
            return -E.EINVAL
        if flags & M.MREMAP_DONTUNMAP and (not flags & M.MREMAP_MAYMOVE or old_len != new_len):
            return -E.EINVAL
        old_len, new_len = _page_align(old_len), _page_align(new_len)
        if not new_len:
            return -E.EINVAL
        if flags & M.MREMAP_FIXED and (new_addr % PAGE_SIZE or new_addr < old + old_len and old < new_addr + new_len):
            return -E.EINVAL
        vma = self.find_vma(old)
        if vma is None:
            return -E.EFAULT
        if vma.hugetlb:
            if old % vma.page_size:
                return -E.EINVAL
            old_len, new_len = _page_align(old_len, vma.page_size), _page_align(new_len, vma.page_size)
            if new_len > old_len:       # "Don't allow remap expansion" (hugetlb reservations)
                return -E.EINVAL
        if flags & (M.MREMAP_FIXED | M.MREMAP_DONTUNMAP):
            return self.mremap_to(old, old_len, new_len, flags, new_addr)
        if old_len >= new_len:          # "Always allow a shrinking remap": the tail is unmapped (UNMAP), no REMAP
            if old_len > new_len:
                self.munmap(old + new_len, old_len - new_len)
            return old
        err = self.vma_to_resize(vma, old, old_len, flags)
        if err:
            return err
        if old + old_len == vma.end and not self.vmas_in(vma.end, old + new_len) and \
                old + new_len <= TASK_SIZE:
            self.vma_expand(vma, old + new_len)   # grow in place: no event, same (registered) VMA
            return old
        if not flags & M.MREMAP_MAYMOVE:
            return -E.ENOMEM
        dst = self.get_unmapped_area(new_len, vma.page_size)
        return self.move_vma(vma, old, old_len, new_len, dst, flags)

    def vma_to_resize(self, vma, old: int, old_len: int, flags: int) -> int:
        if vma is None or old + old_len > vma.end:     # the old range must lie in one VMA
            return -E.EFAULT
        if flags & uapi.MREMAP_DONTUNMAP and vma.flags & VM_DONTEXPAND:
            return -E.EINVAL
        return 0

    def mremap_to(self, old, old_len, new_len, flags, new_addr) -> int:
        """MREMAP_FIXED (whatever is mapped at the destination goes first: its UNMAP events first) and
        DONTUNMAP: always a move."""
        move_only = flags & uapi.MREMAP_FIXED and old_len == new_len
        if flags & uapi.MREMAP_FIXED:
            if new_len > TASK_SIZE or new_addr > TASK_SIZE - new_len:
                return -E.EINVAL
            self.munmap(new_addr, new_len)
        if old_len > new_len:
            self.munmap(old + new_len, old_len - new_len)
            old_len = new_len
        vma = self.find_vma(old)
        if move_only and vma is not None and old + old_len > vma.end:
            return self.remap_move(old, old_len, new_addr, flags)
        err = self.vma_to_resize(vma, old, old_len, flags)
        if err:
            return err
        dst = new_addr if flags & uapi.MREMAP_FIXED else self.get_unmapped_area(new_len, vma.page_size)
        return self.move_vma(vma, old, old_len, new_len, dst, flags)

    def remap_move(self, old: int, length: int, new_addr: int, flags: int) -> int:
        """A move-only mremap (MREMAP_FIXED, same length) over several VMAs and the holes between them
        (6.17+, "mm/mremap: permit mremap() move of multiple VMAs"): each VMA goes to the same offset from
        ``new_addr``, holes stay holes; a uffd-registered VMA stops the walk with EFAULT, the VMAs before
        it staying moved [measured on 6.18: anon, shmem; registered first, middle, last]."""
        if not self.profile.mremap_multi_vma:
            return -E.EFAULT
        end = old + length
        for vma in self.vmas_in(old, end):
            if vma.ctx is not None:
                return -E.EFAULT
            s, e = max(old, vma.start), min(end, vma.end)
            self.move_vma(vma, s, e - s, e - s, new_addr + (s - old), flags)
        return new_addr

    def move_vma(self, vma, old: int, old_len: int, new_len: int, dst: int, flags: int) -> int:
        (src,) = self.split(old, old + old_len)
        ctx = src.ctx
        # copy_vma(): the new VMA inherits the old one's flags, VM_SOFTDIRTY included, and its vm_pgoff: pieces of
        # one mapping moved side by side merge once their flags agree [soak seed 127020136: hg / nh / hg pieces
        # moved together, MADV_HUGEPAGE over them, a write: one VMA and a THP on 6.18]
        moved = Vma(dst, dst + new_len, src.flags, src.memtype, src.file, src.pgoff, src.page_size, src.origin)
        moved.anon_vma = src.anon_vma
        keep = ctx is not None and ctx.features & uapi.Feature.EVENT_REMAP
        if keep:
            moved.ctx = ctx
        else:
            moved.flags &= ~VM_UFFD_FLAGS             # userfaultfd_reset_ctx()
        # 0cef0bb836e3 (6.13, 6.12.11, 6.1.191): the old VMA has a ctx without EVENT_REMAP -> uffd-wp cleared
        clear_wp = ctx is not None and not keep and self.profile.mremap_clear_uffd_wp
        self.move_page_tables(src, old, old_len, dst, clear_wp)
        self.insert_vma(moved)
        if keep:
            ctx.mremap_userfaultfd_complete(old, dst, old_len)
        if not flags & uapi.MREMAP_DONTUNMAP:
            self.munmap(old, old_len)                 # the vacated source: UNMAP after REMAP
        return dst

    def move_page_tables(self, src, old: int, old_len: int, dst: int, clear_uffd_wp: bool) -> None:
        """move_ptes(): PTEs (present, swap, markers) move with their page and mapcount and become
        soft-dirty (move_soft_dirty_pte()); with ``clear_uffd_wp`` the uffd-wp bits are cleared and
        uffd-wp markers dropped."""
        moved = self.move_huge_pmds(src, old, old_len, dst, clear_uffd_wp)   # huge_memory.py
        # pte_alloc() at dst for each old PTE table; move_hugetlb_page_tables() allocates a dst table only for a
        # huge PTE that is not none (set_pte() below)
        for a, b, table in () if src.hugetlb else self.table_runs(old, old + old_len):
            if table:
                for pmd in range((dst + a - old) >> 21, ((dst + b - old - 1) >> 21) + 1):
                    self.pte_alloc(pmd << 21)
        for a in self.pte_keys(old, old + old_len, src.page_size):
            pte = self.ptes.pop(a)
            if clear_uffd_wp:
                if not pte.present and pte.marker == PTE_MARKER_UFFD_WP:
                    continue
                pte.uffd_wp = False
                pte.marker &= ~PTE_MARKER_UFFD_WP
            pte.soft_dirty = True
            self.ptes[dst + a - old] = pte
            self._pte_index = None           # a new key (pgtable.pte_index)
            self.pte_alloc(dst + a - old)
            moved.append(a)
        self.tlb.flush_tlb_range(moved)
