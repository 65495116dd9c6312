"""The memory-management model, named as the kernel names it (spec §2, §5, §6, §8).

One :class:`MM` is one address space: a sorted list of :class:`Vma`, a sparse
page table ``ptes`` (page address -> :class:`Pte`, absent = pte_none), shmem
files with their page cache, and the TLB (``tlb.Tlb``).  Cost is proportional
to the PTEs and VMAs that exist, never to the size of a range.

Functions keep the kernel's names (mm/memory.c, mm/userfaultfd.c,
mm/mprotect.c, fs/proc/task_mmu.c): ``handle_mm_fault``, ``do_anonymous_page``,
``do_fault``, ``do_wp_page``, ``mfill_atomic`` / ``mfill_atomic_install_pte``,
``uffd_wp_range`` / ``mwriteprotect_range`` / ``change_pte_range`` /
``can_change_pte_writable``, ``move_pages``, ``zap_pte_range``,
``pagemap_pte``, ``clear_refs``, ``pagemap_scan_category``.  Errors are returned
as ``-errno`` like the kernel does; the ioctl layer (``userfaultfd.py``) turns
them into exceptions.
"""
from __future__ import annotations

import bisect
import errno as E
import itertools

from .. import uapi
from ..types import MemType
from . import tlb as _tlb
from .profiles import (UFFDIO_COPY_MODE_ACCESS_LIKELY, UFFDIO_COPY_MODE_WRITE_LIKELY, Profile)

PAGE_SIZE = uapi.PAGE_SIZE
HPAGE_SIZE = 2 << 20
TASK_SIZE = (1 << 47) - PAGE_SIZE
MMAP_BASE = 0x7F0000000000

# include/linux/mm.h
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_MAYSHARE = 0x80
VM_UFFD_MISSING = 0x200
VM_UFFD_WP = 0x1000
VM_HUGETLB = 0x400000
VM_SOFTDIRTY = 0x8000000
VM_UFFD_MINOR = 1 << 38
VM_UFFD_FLAGS = VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR

# include/linux/swapops.h
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2

# vm_fault_t
VM_FAULT_OK = 0
VM_FAULT_SIGBUS = 0x2
VM_FAULT_HWPOISON = 0x10
VM_FAULT_SIGSEGV = 0x40
VM_FAULT_RETRY = 0x400
VM_FAULT_LIVELOCK = 1 << 20   # not a kernel code: the fault returns 0 without changing anything, forever
VM_FAULT_ERROR = VM_FAULT_SIGBUS | VM_FAULT_HWPOISON | VM_FAULT_SIGSEGV

# MFILL_ATOMIC_* (include/linux/userfaultfd_k.h, 6.4+)
MFILL_ATOMIC_COPY = "copy"
MFILL_ATOMIC_ZEROPAGE = "zeropage"
MFILL_ATOMIC_CONTINUE = "continue"
MFILL_ATOMIC_POISON = "poison"

# change_protection() cp_flags (mm/mprotect.c)
MM_CP_TRY_CHANGE_WRITABLE = 1 << 0
MM_CP_UFFD_WP = 1 << 2
MM_CP_UFFD_WP_RESOLVE = 1 << 3

ZERO_PFN = 0x1000         # the shared zero page's (fake) PFN
FIRST_PFN = 0x100000


class Folio:
    """A page (or a huge page): identity (PFN), contents, mapcount."""

    __slots__ = ("pfn", "size", "data", "anon", "exclusive", "mapcount", "zero")

    def __init__(self, pfn: int, size: int, anon: bool, data: bytearray | None = None, zero: bool = False):
        self.pfn = pfn
        self.size = size
        self.data = data          # None: all zeros (allocated on first write)
        self.anon = anon
        self.exclusive = anon     # PageAnonExclusive
        self.mapcount = 0
        self.zero = zero

    def read(self, off: int, n: int) -> bytes:
        if self.data is None:
            return bytes(n)
        return bytes(self.data[off:off + n])

    def write(self, off: int, buf: bytes) -> None:
        if self.data is None:
            self.data = bytearray(self.size)
        self.data[off:off + len(buf)] = buf

    def copy_data(self) -> bytearray | None:
        return None if self.data is None else bytearray(self.data)


class Pte:
    """A PTE: present (``page``) with its bits, or a marker (``marker`` bits), never both."""

    __slots__ = ("page", "write", "dirty", "young", "soft_dirty", "uffd_wp", "special", "marker")

    def __init__(self, page: Folio | None = None, *, write=False, dirty=False, young=True, soft_dirty=False,
                 uffd_wp=False, special=False, marker=0):
        self.page = page
        self.write = write
        self.dirty = dirty          # pte_dirty(): D or SavedDirty
        self.young = young
        self.soft_dirty = soft_dirty
        self.uffd_wp = uffd_wp      # present: _PAGE_UFFD_WP; marker: the swap entry's uffd-wp bit
        self.special = special
        self.marker = marker

    @property
    def present(self) -> bool:
        return self.page is not None

    def copy(self) -> "Pte":
        return Pte(self.page, write=self.write, dirty=self.dirty, young=self.young, soft_dirty=self.soft_dirty,
                   uffd_wp=self.uffd_wp, special=self.special, marker=self.marker)

    def __repr__(self):
        if not self.present:
            return f"Pte(marker={self.marker:#x})"
        bits = "".join(c for c, on in (("W", self.write), ("D", self.dirty), ("A", self.young),
                                         ("S", self.soft_dirty), ("U", self.uffd_wp), ("Z", self.special)) if on)
        return f"Pte(pfn={self.page.pfn:#x} {bits})"


def make_pte_marker(bits: int) -> Pte:
    return Pte(None, young=False, marker=bits)


class ShmemFile:
    """A memfd: size and page cache (index -> Folio)."""

    def __init__(self, name: str, size: int, page_size: int):
        self.name = name
        self.size = size
        self.page_size = page_size
        self.pages: dict[int, Folio] = {}


class Vma:
    __slots__ = ("start", "end", "flags", "memtype", "file", "pgoff", "ctx", "page_size", "origin", "anon_vma")

    def __init__(self, start, end, flags, memtype, file, pgoff, page_size, origin):
        self.start, self.end, self.flags = start, end, flags
        self.memtype = memtype
        self.file = file            # ShmemFile or None (anon)
        self.pgoff = pgoff          # byte offset into the file of vm_start
        self.ctx = None             # vm_userfaultfd_ctx.ctx
        self.page_size = page_size
        self.origin = origin        # which mmap() made it: only pieces of one mapping merge
        self.anon_vma = None        # identity of vma->anon_vma (anon_vma_prepare); None until needed

    def __repr__(self):
        return f"Vma({self.start:#x}-{self.end:#x} {self.memtype} flags={self.flags:#x})"

    @property
    def anon(self) -> bool:
        return self.file is None

    @property
    def shared(self) -> bool:
        return bool(self.flags & VM_SHARED)

    @property
    def hugetlb(self) -> bool:
        return bool(self.flags & VM_HUGETLB)

    def linear_page_index(self, addr: int) -> int:
        return (self.pgoff + addr - self.start) // self.page_size

    def split_copy(self, start: int, end: int) -> "Vma":
        v = Vma(start, end, self.flags, self.memtype, self.file, self.pgoff + (start - self.start),
                self.page_size, self.origin)
        v.ctx = self.ctx
        v.anon_vma = self.anon_vma   # both halves of a split share the anon_vma
        return v


def userfaultfd_missing(vma) -> bool:
    return bool(vma.flags & VM_UFFD_MISSING)


def userfaultfd_wp(vma) -> bool:
    return bool(vma.flags & VM_UFFD_WP)


def userfaultfd_minor(vma) -> bool:
    return bool(vma.flags & VM_UFFD_MINOR)


class VmFault:
    """struct vm_fault: the faulting VMA, address (real and page-aligned), write flag, orig_pte, task."""

    __slots__ = ("vma", "real_address", "address", "write", "orig_pte", "task")

    def __init__(self, vma, real_address, address, write, orig_pte, task):
        self.vma, self.real_address, self.address = vma, real_address, address
        self.write, self.orig_pte, self.task = write, orig_pte, task

    @property
    def orig_pte_uffd_wp(self) -> bool:
        """vmf_orig_pte_uffd_wp(): the PTE we faulted on was a uffd-wp marker."""
        p = self.orig_pte
        return p is not None and not p.present and bool(p.marker & PTE_MARKER_UFFD_WP)


class MM:
    """One emulated address space."""

    def __init__(self, profile: Profile, soft_dirty: bool = True):
        self.profile = profile
        self.soft_dirty_config = soft_dirty          # CONFIG_MEM_SOFT_DIRTY
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.ptes: dict[int, Pte] = {}
        self.tlb = _tlb.Tlb()
        self._next_pfn = FIRST_PFN
        self._origins = itertools.count(1)
        self._anon_vmas = itertools.count(1)
        self.zero_page = Folio(ZERO_PFN, PAGE_SIZE, anon=False, zero=True)
        self.zero_page.exclusive = False
        self.next_addr = MMAP_BASE
        self.low_addr = MMAP_BASE - HPAGE_SIZE
        self.pgtables: set[int] = set()   # PMD indices (addr >> 21) that have a PTE table
        self.exited = False
        self.events = None  # hook: userfaultfd event sink (set by the backend)

    # -- VMAs -------------------------------------------------------------------
    def _reindex(self):
        self.vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self.vmas]

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA containing ``addr`` (vma_lookup)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
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
                    left, right = v.split_copy(v.start, cut), v.split_copy(cut, v.end)
                    self.vmas.remove(v)
                    self.vmas += [left, right]
                    changed = True
                    v = right if cut == start else left
        if changed:
            self._reindex()
        return [v for v in self.vmas_in(start, end)]

    def merge(self) -> None:
        """vma_merge(): join neighbours of one mapping with equal flags and uffd ctx (VM_SOFTDIRTY ignored)."""
        out: list[Vma] = []
        for v in self.vmas:
            p = out[-1] if out else None
            if (p is not None and p.end == v.start and p.origin == v.origin and p.ctx is v.ctx
                    and not p.hugetlb                      # hugetlb_vm_ops has ->close: never merged
                    and (p.flags ^ v.flags) & ~VM_SOFTDIRTY == 0
                    # is_mergeable_anon_vma(): two different anon_vmas never merge
                    and (p.anon_vma is None or v.anon_vma is None or p.anon_vma == v.anon_vma)
                    and (p.file is None or p.pgoff + (p.end - p.start) == v.pgoff)):
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

    # -- page tables: a PMD entry exists once any PTE under it was populated, until munmap frees it --
    def pmd_none(self, addr: int) -> bool:
        return addr >> 21 not in self.pgtables

    def table_runs(self, start: int, end: int):
        """Split [start, end) into (start, end, has_page_table) runs; O(page tables), not O(range)."""
        lo, hi = start >> 21, (end - 1) >> 21
        if hi - lo + 1 <= len(self.pgtables):
            tables = [p for p in range(lo, hi + 1) if p in self.pgtables]
        else:
            tables = sorted(p for p in self.pgtables if lo <= p <= hi)
        pos = start
        for p in tables:
            a, b = max(start, p << 21), min(end, (p + 1) << 21)
            if a > pos:
                yield pos, a, False
            yield a, b, True
            pos = b
        if pos < end:
            yield pos, end, False

    def free_pgtables(self, start: int, end: int) -> None:
        for pmd in range(start >> 21, ((end - 1) >> 21) + 1):
            if pmd in self.pgtables and not self.vmas_in(pmd << 21, (pmd + 1) << 21):
                self.pgtables.discard(pmd)

    def mmap(self, length: int, memtype: MemType, prot: int, addr: int | None = None,
             file: ShmemFile | None = None, pgoff: int = 0, shared: bool | None = None) -> Vma:
        page_size = HPAGE_SIZE if memtype.hugetlb else PAGE_SIZE
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

    # -- soft-dirty / write-notify -------------------------------------------------
    def vma_soft_dirty_enabled(self, vma) -> bool:
        """Soft-dirty tracking is active for this VMA (clear_refs 4 cleared VM_SOFTDIRTY)."""
        return self.soft_dirty_config and not vma.flags & VM_SOFTDIRTY

    def vma_wants_writenotify(self, vma) -> bool:
        if not (vma.shared and vma.flags & VM_WRITE):
            return False
        if self.profile.writenotify_uffd_wp and userfaultfd_wp(vma):
            return True
        return self.vma_soft_dirty_enabled(vma)

    def vm_page_prot_writable(self, vma) -> bool:
        """Is vma->vm_page_prot writable?  Private: never (COW).  Shared: unless write-notify."""
        return bool(vma.shared and vma.flags & VM_WRITE and not self.vma_wants_writenotify(vma))

    def vma_wants_manual_pte_write_upgrade(self, vma) -> bool:
        """Private: VM_WRITE.  Shared: vma_wants_writenotify(vma, vm_page_prot), which is false
        whenever vm_page_prot was write-protected for write-notify (the §2.3.6 quirk) and
        false anyway for shmem otherwise: so never for shmem."""
        return bool(vma.flags & VM_WRITE) and not vma.shared and not vma.hugetlb  # hugetlb: never

    # -- page allocation -----------------------------------------------------------
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

    def page_base(self, vma, addr: int) -> int:
        return addr - (addr - vma.start) % vma.page_size if vma.hugetlb else addr & ~(PAGE_SIZE - 1)

    def set_pte(self, addr: int, pte: Pte | None) -> None:
        old = self.ptes.get(addr)
        if old is not None and old.present and (pte is None or pte.page is not old.page):
            old.page.mapcount -= 1
        if pte is None:
            self.ptes.pop(addr, None)
            return
        if pte.present and (old is None or not old.present or old.page is not pte.page):
            pte.page.mapcount += 1
        self.ptes[addr] = pte
        self.pgtables.add(addr >> 21)

    def pte_val(self, pte) -> int:
        return _tlb.pte_val(pte, self.soft_dirty_config)

    def needs_flush(self, old: Pte | None, new: Pte | None) -> bool:
        return _tlb.pte_needs_flush(self.pte_val(old), self.pte_val(new), self.profile.clean_wp_noflush)

    # -- the fault path (mm/memory.c) ---------------------------------------------
    def access_ok(self, vma, addr: int, write: bool) -> bool:
        """The CPU's view: TLB hit, or a page walk that finds a PTE allowing the access (sets A, D)."""
        base = self.page_base(vma, addr)
        if self.tlb.hit(base, write):
            return True
        pte = self.ptes.get(base)
        if pte is None or not pte.present or (write and not pte.write):
            return False
        pte.young = True
        if write:
            pte.dirty = True           # hardware D; soft-dirty is only set by pte_mkdirty() in software
        self.tlb.fill(base, self.pte_val(pte))
        return True

    def handle_mm_fault(self, vma, real_address: int, write: bool, task) -> int:
        if write and not vma.flags & VM_WRITE or not vma.flags & (VM_READ | VM_WRITE):
            return VM_FAULT_SIGSEGV     # access_error()
        addr = self.page_base(vma, real_address)
        pte = self.ptes.get(addr)
        vmf = VmFault(vma, real_address, addr, write, pte, task)
        if pte is None:
            return self.do_pte_missing(vmf)
        if not pte.present:
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

    def do_pte_missing(self, vmf) -> int:
        return self.do_anonymous_page(vmf) if vmf.vma.anon else self.do_fault(vmf)

    def pte_mkdirty(self, pte: Pte) -> None:
        pte.dirty = True
        pte.soft_dirty = True          # x86: pte_mkdirty() sets _PAGE_SOFT_DIRTY too

    def handle_userfault(self, vmf, reason: int) -> int:
        ctx = vmf.vma.ctx
        return ctx.handle_userfault(vmf, reason)

    def do_anonymous_page(self, vmf) -> int:
        vma = vmf.vma
        if vma.hugetlb:
            return self.hugetlb_fault(vmf)
        uffd_wp = vmf.orig_pte_uffd_wp
        self.pgtables.add(vmf.address >> 21)           # pte_alloc() precedes the userfault check
        if userfaultfd_missing(vma):
            return self.handle_userfault(vmf, VM_UFFD_MISSING)
        if not vmf.write:
            pte = Pte(self.zero_page, special=True, young=True, uffd_wp=uffd_wp)
        else:
            pte = Pte(self.alloc_anon(vma, PAGE_SIZE), write=True, young=True)
            self.pte_mkdirty(pte)
            if uffd_wp:
                pte.uffd_wp, pte.write = True, False   # pte_mkuffd_wp() write-protects
        self.set_pte(vmf.address, pte)
        return VM_FAULT_OK

    def shmem_get_folio(self, vmf) -> tuple[int, Folio | None]:
        """shmem_get_folio_gfp() with a vmf: MINOR / MISSING userfaults, else the (new) cache page."""
        vma = vmf.vma
        idx = vma.linear_page_index(vmf.address)
        folio = vma.file.pages.get(idx)
        if folio is not None:
            if userfaultfd_minor(vma):
                return self.handle_userfault(vmf, VM_UFFD_MINOR), None
            return VM_FAULT_OK, folio
        if idx * vma.page_size >= vma.file.size:
            return VM_FAULT_SIGBUS, None
        if userfaultfd_missing(vma):
            return self.handle_userfault(vmf, VM_UFFD_MISSING), None
        folio = vma.file.pages[idx] = self.alloc_folio(vma.page_size, anon=False)
        return VM_FAULT_OK, folio

    def do_fault_around(self, vmf) -> None:
        """filemap_map_pages() over the 16-page window around a read fault (not for uffd-wp/minor VMAs)."""
        vma = vmf.vma
        if vma.flags & (VM_UFFD_WP | VM_UFFD_MINOR) or vma.hugetlb:
            return
        nr = 16 * PAGE_SIZE
        lo = max(vmf.address & ~(nr - 1), vma.start, vmf.address & ~(HPAGE_SIZE - 1))
        hi = min(lo + nr, vma.end, (vmf.address & ~(HPAGE_SIZE - 1)) + HPAGE_SIZE)
        prot_w = self.vm_page_prot_writable(vma)
        for a in range(lo, hi, PAGE_SIZE):
            if a in self.ptes:
                continue
            folio = vma.file.pages.get(vma.linear_page_index(a))
            if folio is not None:
                self.set_pte(a, Pte(folio, write=prot_w, young=True))

    def do_fault(self, vmf) -> int:
        vma = vmf.vma
        if vma.hugetlb:
            return self.hugetlb_fault(vmf)
        if not vmf.write:
            self.do_fault_around(vmf)
            if vmf.address in self.ptes and self.ptes[vmf.address].present:
                return VM_FAULT_OK   # mapped by fault-around (VM_FAULT_NOPAGE)
        ret, folio = self.shmem_get_folio(vmf)
        if ret:
            return ret
        uffd_wp = vmf.orig_pte_uffd_wp
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
        return VM_FAULT_OK

    def hugetlb_fault(self, vmf) -> int:
        """hugetlb_no_page(): shared -> page cache; private -> the cache page if there is one (COW on
        write), else a new anon page; a private write fault does the COW at once (hugetlb_wp)."""
        vma = vmf.vma
        idx = vma.linear_page_index(vmf.address)
        folio = vma.file.pages.get(idx)
        if folio is not None and userfaultfd_minor(vma):
            return self.handle_userfault(vmf, VM_UFFD_MINOR)
        if folio is None:
            if idx * vma.page_size >= vma.file.size:
                return VM_FAULT_SIGBUS
            if userfaultfd_missing(vma):
                return self.handle_userfault(vmf, VM_UFFD_MISSING)
            if vma.shared:
                folio = self.alloc_folio(vma.page_size, anon=False)
            else:
                folio = self.alloc_anon(vma, vma.page_size)
            if vma.shared:
                vma.file.pages[idx] = folio
        uffd_wp = vmf.orig_pte_uffd_wp
        # make_huge_pte(vma, folio, VM_SHARED): shared is mapped writable+dirty even on a read; a private write
        # does the CoW at once (hugetlb_wp), unless the PTE carries uffd-wp: "never CoW a uffd-wp page"
        cow = vmf.write and not vma.shared and not uffd_wp
        if cow and not folio.anon:
            folio = self.alloc_anon(vma, vma.page_size, folio.copy_data())
        pte = Pte(folio, write=bool(vma.flags & VM_WRITE and (vma.shared or cow)), young=True)
        if pte.write:
            self.pte_mkdirty(pte)
        if uffd_wp:
            pte.uffd_wp, pte.write = True, False
        self.set_pte(vmf.address, pte)
        return VM_FAULT_OK

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

    # -- kernel-side accesses (copy_from_user of UFFDIO_COPY's src) ---------------------
    def copy_from_user(self, addr: int, length: int) -> bytes | int:
        """Read ``length`` bytes the way the kernel's copy_from_user does: faulting pages in
        from the ioctl caller's context.  A fault that would wait in a userfault cannot block
        the emulator's caller: it fails with -EFAULT (documented)."""
        out = bytearray()
        pos, end = addr, addr + length
        while pos < end:
            vma = self.find_vma(pos)
            if vma is None:
                return -E.EFAULT
            base = self.page_base(vma, pos)
            n = min(end, base + vma.page_size) - pos
            for _ in range(4):
                if self.access_ok(vma, pos, False):
                    break
                if self.handle_mm_fault(vma, pos, False, None) != VM_FAULT_OK:
                    return -E.EFAULT
            else:
                return -E.EFAULT
            out += self.ptes[base].page.read(pos - base, n)
            pos += n
        return bytes(out)

    # -- mfill_atomic (mm/userfaultfd.c) -------------------------------------------
    def mfill_atomic(self, ctx, kind: str, dst_start: int, src_start: int, length: int, wp: bool,
                     hints: int = 0) -> int:
        vma = self.find_vma(dst_start)
        if vma is not None:
            self.anon_vma_prepare(vma)         # uffd_lock_vma(): "we know we're going to need anon_vma"
        if vma is None or dst_start + length > vma.end or vma.ctx is None:
            return -E.ENOENT
        if ctx.mmap_changing:
            return -E.EAGAIN
        if wp and not userfaultfd_wp(vma):
            return -E.EINVAL
        if vma.hugetlb:
            if dst_start % vma.page_size or length % vma.page_size or kind == MFILL_ATOMIC_ZEROPAGE:
                return -E.EINVAL
        elif kind == MFILL_ATOMIC_CONTINUE and vma.anon:
            return -E.EINVAL
        copied, err = 0, 0
        step = vma.page_size
        while copied < length:
            if not vma.hugetlb:
                self.pgtables.add((dst_start + copied) >> 21)    # the dst PTE table is allocated first
            err = self.mfill_atomic_pte(vma, kind, dst_start + copied, src_start + copied, wp, hints)
            if err:
                break
            copied += step
        return copied if copied else err

    def hugetlb_mfill_atomic_pte(self, vma, kind, dst, src, wp) -> int:
        """mfill_atomic_hugetlb() + hugetlb_mfill_atomic_pte(): the PTE is checked before the copy."""
        pte = self.ptes.get(dst)
        if kind == MFILL_ATOMIC_POISON:
            if pte is not None:
                return -E.EEXIST
            self.set_pte(dst, make_pte_marker(PTE_MARKER_POISONED))
            return 0
        if kind != MFILL_ATOMIC_CONTINUE and not self.pte_none_mostly(pte):
            return -E.EEXIST
        idx = vma.linear_page_index(dst)
        if kind == MFILL_ATOMIC_CONTINUE:
            folio = vma.file.pages.get(idx)
            if folio is None:
                return -E.EFAULT
        else:
            if vma.shared and idx in vma.file.pages:
                return -E.EEXIST
            data = self.copy_from_user(src, vma.page_size)
            if isinstance(data, int):
                return data
            folio = self.alloc_folio(vma.page_size, anon=not vma.shared, data=bytearray(data))
        if idx * vma.page_size >= vma.file.size:
            return -E.EFAULT
        if not self.pte_none_mostly(self.ptes.get(dst)):
            return -E.EEXIST
        if vma.shared and kind != MFILL_ATOMIC_CONTINUE:
            vma.file.pages[idx] = folio
        writable = bool(vma.flags & VM_WRITE) and not wp and not (kind == MFILL_ATOMIC_CONTINUE and not vma.shared)
        pte = Pte(folio, write=writable, young=True, uffd_wp=wp)
        self.pte_mkdirty(pte)
        self.set_pte(dst, pte)
        return 0

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
        if pte.present:
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

    # -- write protection (mm/userfaultfd.c, mm/mprotect.c) ------------------------------
    def userfaultfd_wp_use_markers(self, vma) -> bool:
        if not userfaultfd_wp(vma):
            return False
        return not vma.anon or bool(vma.ctx and vma.ctx.wp_unpopulated)

    def can_change_pte_writable(self, vma, pte: Pte, write_likely: bool = False) -> bool:
        if not vma.flags & VM_WRITE:
            return False
        if self.vma_soft_dirty_enabled(vma) and not pte.soft_dirty:   # pte_needs_soft_dirty_wp()
            if not (self.profile.hints == "rfc" or self.profile.hints == "rfc-fixed" and write_likely):
                return False
        if pte.uffd_wp:
            return False
        if not vma.shared:
            page = pte.page
            if pte.special or not page.anon or not page.exclusive:
                return False
            return pte.dirty if self.profile.can_change_writable_needs_dirty else True
        return pte.dirty

    def pte_keys(self, start: int, end: int, step: int):
        """Addresses of existing PTEs in [start, end), ascending: O(range) or O(ptes), whichever is less."""
        n = (end - start) // step
        if n <= len(self.ptes):
            return [a for a in range(start, end, step) if a in self.ptes]
        return sorted(a for a in self.ptes if start <= a < end)

    def change_pte_range(self, vma, start: int, end: int, newprot_writable: bool, cp_flags: int,
                         hints: int = 0) -> int:
        uffd_wp = cp_flags & MM_CP_UFFD_WP
        uffd_wp_resolve = cp_flags & MM_CP_UFFD_WP_RESOLVE
        write_likely = bool(hints & UFFDIO_COPY_MODE_WRITE_LIKELY)
        flush, pages = [], 0
        step = vma.page_size
        if uffd_wp and self.userfaultfd_wp_use_markers(vma):
            for a in range(start, end, step):
                if a not in self.ptes:
                    self.set_pte(a, make_pte_marker(PTE_MARKER_UFFD_WP))
                    pages += 1
        for a in self.pte_keys(start, end, step):
            pte = self.ptes[a]
            if not pte.present:
                if uffd_wp_resolve and pte.marker & PTE_MARKER_UFFD_WP and not pte.marker & ~PTE_MARKER_UFFD_WP:
                    del self.ptes[a]
                    pages += 1
                continue
            new = pte.copy()
            new.write = newprot_writable and not pte.special     # pte_modify(oldpte, newprot)
            if uffd_wp:
                new.uffd_wp, new.write = True, False
            elif uffd_wp_resolve:
                new.uffd_wp = False
            if hints and self.profile.hints:
                new.young = True
            if cp_flags & MM_CP_TRY_CHANGE_WRITABLE and not new.write and \
                    self.can_change_pte_writable(vma, new, write_likely):
                new.write = True
                if write_likely and self.profile.hints:
                    self.pte_mkdirty(new)
            if self.needs_flush(pte, new):
                flush.append(a)
            self.ptes[a] = new
            pages += 1
        self.tlb.flush_range(flush)
        return pages

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

    # -- UFFDIO_MOVE (mm/userfaultfd.c move_pages) -----------------------------------------
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
            if self.pmd_none(src_start + moved):          # no page table under src at all
                if not mode & uapi.MoveMode.ALLOW_SRC_HOLES:
                    err = -E.ENOENT
                    break
                self.pgtables.add((src_start + moved) >> 21)
            self.pgtables.add((dst_start + moved) >> 21)
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
        if not spte.present:
            return -E.EFAULT
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

    # -- zap / unmap / madvise -------------------------------------------------------------
    def zap_pte_range(self, vma, start: int, end: int, final: bool = False) -> None:
        """zap_pte_range(): drop PTEs; file VMAs keep uffd-wp (as markers) unless unmapping;
        guard markers survive everything but unmap."""
        # pte_install_uffd_wp_if_needed(): shmem only in a uffd-wp VMA; __unmap_hugepage_range(): always
        arm_wp = not final and (vma.hugetlb or not vma.anon and userfaultfd_wp(vma))
        keep_markers = not vma.anon and not final      # only an unmap drops a file VMA's uffd-wp markers
        flush = []
        for a in self.pte_keys(start, end, vma.page_size):
            pte = self.ptes[a]
            if pte.present:
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

    def munmap(self, start: int, length: int) -> int:
        if start % PAGE_SIZE or length <= 0:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        for vma in self.split(start, end):
            self.zap_pte_range(vma, vma.start, vma.end, final=True)
            self.vmas.remove(vma)
        self._reindex()
        self.free_pgtables(start, end)
        return 0

    def madvise(self, start: int, length: int, advice: int) -> int:
        if start % PAGE_SIZE:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        vmas = self.vmas_in(start, end)
        covered = sum(min(end, v.end) - max(start, v.start) for v in vmas)
        for vma in vmas:
            s, e = max(start, vma.start), min(end, vma.end)
            if advice == uapi.MADV_DONTNEED:
                self.zap_pte_range(vma, s, e)
            elif advice == uapi.MADV_REMOVE:
                if not vma.shared or vma.anon:
                    return -E.EINVAL
                for idx in range(vma.linear_page_index(s), vma.linear_page_index(e - 1) + 1):
                    vma.file.pages.pop(idx, None)
                self.zap_pte_range(vma, s, e)
            elif advice == uapi.MADV_FREE:
                if not vma.anon:
                    return -E.EINVAL
                flush = []
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    pte = self.ptes[a]
                    if pte.present and not pte.special:
                        new = pte.copy()
                        new.dirty = new.young = False
                        if self.needs_flush(pte, new):
                            flush.append(a)
                        self.ptes[a] = new
                self.tlb.flush_range(flush)
            elif advice == uapi.MADV_GUARD_INSTALL:
                if not self.profile.guard_markers or vma.shared or vma.hugetlb:
                    return -E.EINVAL
                self.zap_pte_range(vma, s, e, final=True)
                for a in range(s, e, PAGE_SIZE):
                    self.set_pte(a, make_pte_marker(PTE_MARKER_GUARD))
            elif advice == uapi.MADV_GUARD_REMOVE:
                if not self.profile.guard_markers:
                    return -E.EINVAL
                for a in self.pte_keys(s, e, PAGE_SIZE):
                    if not self.ptes[a].present and self.ptes[a].marker & PTE_MARKER_GUARD:
                        del self.ptes[a]
            elif advice == uapi.MADV_NOHUGEPAGE:
                pass
            else:
                return -E.EINVAL
        return 0 if covered == end - start else -E.ENOMEM

    def mprotect(self, start: int, length: int, prot: int) -> int:
        if start % PAGE_SIZE:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        vmas = self.vmas_in(start, end)
        if sum(min(end, v.end) - max(start, v.start) for v in vmas) != end - start:
            return -E.ENOMEM
        if prot & uapi.PROT_WRITE and any(not v.flags & VM_MAYWRITE for v in vmas):
            return -E.EACCES
        for vma in self.split(start, end):
            vma.flags = (vma.flags & ~(VM_READ | VM_WRITE)) | (VM_READ if prot & uapi.PROT_READ else 0) \
                | (VM_WRITE if prot & uapi.PROT_WRITE else 0)
            try_change = self.profile.mprotect_try_change_writable and self.vma_wants_manual_pte_write_upgrade(vma)
            self.change_pte_range(vma, vma.start, vma.end, self.vm_page_prot_writable(vma),
                                  MM_CP_TRY_CHANGE_WRITABLE if try_change else 0)
        self.merge()
        return 0

    # -- /proc/PID/pagemap, clear_refs, PAGEMAP_SCAN (fs/proc/task_mmu.c) ----------------------
    def pagemap_pte(self, addr: int) -> int:
        vma = self.find_vma(addr)
        if vma is None:
            return 0
        flags = 0
        if self.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
            flags |= uapi.PM_SOFT_DIRTY
        base = self.page_base(vma, addr)
        pte = self.ptes.get(base)
        if pte is None:
            return flags
        if not pte.present and vma.hugetlb:       # pagemap_hugetlb_range(): no PM_SWAP for markers
            return flags | (uapi.PM_UFFD_WP if pte.marker & PTE_MARKER_UFFD_WP else 0)
        if not pte.present:
            flags |= uapi.PM_SWAP | self.profile.pte_marker_swp_type | (pte.marker << 5)
            if pte.marker & PTE_MARKER_UFFD_WP or pte.uffd_wp:
                flags |= uapi.PM_UFFD_WP
            if pte.marker & PTE_MARKER_GUARD and self.profile.pagemap_guard_bit:
                flags |= uapi.PM_GUARD_REGION
            return flags
        page = pte.page
        flags |= uapi.PM_PRESENT | (page.pfn + (addr - base) // PAGE_SIZE)
        if self.soft_dirty_config and pte.soft_dirty:
            flags |= uapi.PM_SOFT_DIRTY
        if pte.uffd_wp:
            flags |= uapi.PM_UFFD_WP
        if not pte.special:
            if not page.anon:
                flags |= uapi.PM_FILE
            if page.mapcount == 1:
                flags |= uapi.PM_MMAP_EXCLUSIVE
        return flags

    def clear_refs(self, value: int) -> int:
        if value not in (1, 2, 3, 4, 5):
            return -E.EINVAL
        if value == uapi.CLEAR_REFS_MM_HIWATER_RSS:
            return 0
        if value == uapi.CLEAR_REFS_SOFT_DIRTY:
            if self.soft_dirty_config:
                for vma in self.vmas:
                    vma.flags &= ~VM_SOFTDIRTY
                    for a in self.pte_keys(vma.start, vma.end, vma.page_size):
                        pte = self.ptes[a]
                        if pte.present:
                            pte.write = False          # pte_wrprotect() + pte_clear_soft_dirty()
                            pte.soft_dirty = False
            self.tlb.flush_mm()
            return 0
        for vma in self.vmas:
            if value == uapi.CLEAR_REFS_ANON and not vma.anon or value == uapi.CLEAR_REFS_MAPPED and vma.anon:
                continue
            for a in self.pte_keys(vma.start, vma.end, vma.page_size):
                if self.ptes[a].present:
                    self.ptes[a].young = False         # no flush: the TLB may keep A
        return 0

    def pagemap_scan_category(self, vma, pte: Pte | None, has_table: bool = True) -> int:
        """Categories of one page (6.18 rules, spec §4.1).  A none PTE under an existing page table reads
        WRITTEN on any VMA [measured]; a hole without a page table only in a uffd-wp VMA."""
        C = uapi.PageCategory
        cat = 0
        if self.soft_dirty_config and vma.flags & VM_SOFTDIRTY:
            cat |= C.SOFT_DIRTY
        written_ok = self.profile.scan_written_any_vma or userfaultfd_wp(vma)
        if pte is None:
            if vma.hugetlb:       # the hugetlb walker: a none huge PTE is only HUGE
                return cat | C.HUGE
            return cat | (C.WRITTEN if userfaultfd_wp(vma) or has_table and written_ok else 0)
        if pte.present:
            cat |= C.PRESENT
            if written_ok and not pte.uffd_wp:
                cat |= C.WRITTEN
            if not pte.special and not pte.page.anon:
                cat |= C.FILE
            if pte.special:
                cat |= C.PFNZERO
            if self.soft_dirty_config and pte.soft_dirty:
                cat |= C.SOFT_DIRTY
            if vma.hugetlb:
                cat |= C.HUGE
            return int(cat)
        cat |= C.SWAPPED | (C.HUGE if vma.hugetlb else 0)
        if written_ok and not pte.marker & PTE_MARKER_UFFD_WP and not pte.uffd_wp:
            cat |= C.WRITTEN
        if pte.marker & PTE_MARKER_GUARD and self.profile.pagemap_guard_bit:
            cat |= C.GUARD
        return int(cat)
