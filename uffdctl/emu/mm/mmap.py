"""The VMA tree (mm/mmap.c, mm/vma.c): lookup, split, merge, mmap, munmap, the unmapped-area
search, and the write-notify rules of vma_wants_writenotify().  The list of VMAs and its index are
private to this room: the others change VMAs only through :meth:`Mmap.split`, :meth:`Mmap.merge`,
:meth:`Mmap.insert_vma` and :meth:`Mmap.remove_vma`.
"""
from __future__ import annotations

import bisect
import errno as E
from bisect import bisect_right

from ... import uapi
from .mm_types import (HPAGE_SIZE, PAGE_SIZE, TASK_SIZE, VM_HUGETLB, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE,
                       VM_MAYWRITE, VM_READ, VM_SHARED, VM_SOFTDIRTY, VM_WRITE, Vma, userfaultfd_wp)


class Mmap:
    """VMAs: vma_lookup, split, merge, mmap, munmap."""

    def _reindex(self):
        self.vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self.vmas]

    def insert_vma(self, vma) -> None:
        """vma_link(): add a VMA built elsewhere (mremap's copy_vma()); a fresh mapping identity unless
        it has one."""
        if vma.origin is None:
            vma.origin = next(self._origins)
        self.vmas.append(vma)
        self._reindex()

    def remove_vma(self, vma) -> None:
        """Drop a VMA from the tree (its PTEs are the caller's business: zap or move them first)."""
        self.vmas.remove(vma)
        self._reindex()

    def vma_expand(self, vma, end: int) -> None:
        """vma_expand() upwards: the caller checked that [vma.end, end) is free."""
        vma.end = end

    def vma_ctxs(self, start: int, end: int) -> list:
        """The distinct userfaultfd contexts of the VMAs intersecting [start, end), in address order."""
        return list({id(v.ctx): v.ctx for v in self.vmas_in(start, end) if v.ctx is not None}.values())

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA containing ``addr`` (vma_lookup)."""
        i = bisect_right(self._starts, addr) - 1    # _starts[i] = vmas[i].start <= addr
        if i >= 0:
            v = self.vmas[i]
            if addr < v.end:
                return v
        return None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """VMAs intersecting [start, end) in address order (for_each_vma_range)."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for v in self.vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def split(self, start: int, end: int, only=None) -> list[Vma]:
        """Split VMAs at start/end; return those inside [start, end).  ``only(vma)``: split just the VMAs
        it accepts (the others are returned whole, as the kernel skips them without vma_modify())."""
        changed = False
        for v in list(self.vmas_in(start, end)):
            if only is not None and not only(v):
                continue
            for cut in (start, end):
                if v.start < cut < v.end:
                    if self.pmds and cut % HPAGE_SIZE:
                        self.split_huge_pmd(v, cut & ~(HPAGE_SIZE - 1))   # vma_adjust_trans_huge()
                    left, right = v.split_copy(v.start, cut), v.split_copy(cut, v.end)
                    self.vmas.remove(v)
                    self.vmas += [left, right]
                    changed = True
                    v = right if cut == start else left
        if changed:
            self._reindex()
        return [v for v in self.vmas_in(start, end)]

    def merge(self) -> None:
        """vma_merge(): join neighbours of one mapping, its pages in order (vm_pgoff), with equal flags and uffd ctx
        (VM_SOFTDIRTY ignored)."""
        out: list[Vma] = []
        for v in self.vmas:
            p = out[-1] if out else None
            if (p is not None and p.end == v.start and p.origin == v.origin and p.ctx is v.ctx
                    and not p.hugetlb                      # hugetlb_vm_ops has ->close: never merged
                    and (p.flags ^ v.flags) & ~VM_SOFTDIRTY == 0
                    # is_mergeable_anon_vma(): two different anon_vmas never merge
                    and (p.anon_vma is None or v.anon_vma is None or p.anon_vma == v.anon_vma)
                    and p.pgoff + (p.end - p.start) == v.pgoff):      # anon too: vm_pgoff in order
                p.end = v.end
                p.flags |= v.flags & VM_SOFTDIRTY
                p.anon_vma = p.anon_vma or v.anon_vma
            else:
                out.append(v)
        self.vmas = out
        self._reindex()

    def get_unmapped_area(self, length: int, align: int) -> int:
        """Upwards from 0x7f0000000000 with a one-page gap (emulated mappings never merge); what does
        not fit below TASK_SIZE goes downwards from there."""
        addr = (self.next_addr + align - 1) & ~(align - 1)
        if addr + length <= TASK_SIZE:
            self.next_addr = addr + length + PAGE_SIZE
            return addr
        addr = (self.low_addr - length) & ~(max(align, HPAGE_SIZE) - 1)
        self.low_addr = addr - PAGE_SIZE
        return addr

    def mmap(self, length: int, memtype, prot: int, addr: int | None = None,
             file=None, pgoff: int = 0, shared: bool | None = None, page_size: int | None = None) -> Vma:
        """``page_size``: a hugetlb mapping's hstate (hstate_file(); default the default hstate's, 2 MiB)."""
        page_size = (page_size or HPAGE_SIZE) if memtype.hugetlb else PAGE_SIZE
        if length <= 0 or length % page_size:
            return -E.EINVAL
        if addr:
            if addr % page_size or addr + length > TASK_SIZE:
                return -E.EINVAL
            if self.vmas_in(addr, addr + length):
                return -E.EEXIST   # MAP_FIXED_NOREPLACE
        else:
            addr = self.get_unmapped_area(length, page_size)
        shared = memtype.shared if shared is None else shared
        flags = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        flags |= VM_READ if prot & uapi.PROT_READ else 0
        flags |= VM_WRITE if prot & uapi.PROT_WRITE else 0
        flags |= (VM_SHARED | VM_MAYSHARE) if shared else 0
        flags |= VM_HUGETLB if memtype.hugetlb else 0
        if self.soft_dirty_config:
            flags |= VM_SOFTDIRTY      # every new mapping is soft-dirty as a whole
        v = Vma(addr, addr + length, flags, memtype, file, pgoff, page_size, next(self._origins))
        self.vmas.append(v)
        self._reindex()
        return v

    def munmap(self, start: int, length: int) -> int:
        if start % PAGE_SIZE or length <= 0:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        for ctx in self.vma_ctxs(start, end):       # userfaultfd_unmap_prep(): UNMAP with EVENT_UNMAP
            ctx.userfaultfd_unmap_prep(start, end)
        for vma in self.split(start, end):
            self.zap_pte_range(vma, vma.start, vma.end, final=True)
            self.vmas.remove(vma)
        self._reindex()
        self.free_pgtables(start, end)
        return 0

    def vma_soft_dirty_enabled(self, vma) -> bool:
        """Soft-dirty tracking is active for this VMA (clear_refs 4 cleared VM_SOFTDIRTY)."""
        return self.soft_dirty_config and not vma.flags & VM_SOFTDIRTY

    def vma_wants_writenotify(self, vma) -> bool:
        if not (vma.shared and vma.flags & VM_WRITE):
            return False
        if vma.file is not None and not vma.file.shmem:
            return True                    # a disk filesystem's vm_ops->page_mkwrite
        if self.profile.writenotify_uffd_wp and userfaultfd_wp(vma):
            return True
        return self.vma_soft_dirty_enabled(vma)

    def vm_page_prot_writable(self, vma) -> bool:
        """Is vma->vm_page_prot writable?  Private: never (COW).  Shared: unless write-notify."""
        return bool(vma.shared and vma.flags & VM_WRITE and not self.vma_wants_writenotify(vma))
