"""The model's data structures and constants, as include/linux/mm_types.h, mm.h, swapops.h and
userfaultfd_k.h name them: :class:`Folio` (a page or huge page), :class:`Pte` (present, a PTE marker
or a swap entry: swp_entry() / swp_entry_to_pte()), :class:`Vma` (vm_area_struct), :class:`VmFault` (struct vm_fault), the VM_* flags,
PTE markers, vm_fault_t codes, MFILL_ATOMIC_* kinds and change_protection() cp_flags.

A leaf of the model: it imports nothing of the emulator but the uffd uapi constants and the makers of
the per-fault objects (``..slots``: the C twins of :func:`_new_anon_page`, :func:`_new_present_pte` and
``VmFault(...)``).
"""
from __future__ import annotations

from ... import uapi
from ..slots import slot_maker

PAGE_SIZE = uapi.PAGE_SIZE
HPAGE_SIZE = 2 << 20
HPAGE_PMD_MASK = ~(HPAGE_SIZE - 1)
HPAGE_PMD_NR = HPAGE_SIZE // PAGE_SIZE
PUD_SIZE = 1 << 30
# hugetlb_add_hstate() on x86-64: the PMD size (the default hstate) and, with X86_FEATURE_GBPAGES, the PUD size
HSTATES = (HPAGE_SIZE, PUD_SIZE)
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
VM_LOCKED = 0x2000
VM_DONTCOPY = 0x20000          # MADV_DONTFORK
VM_HUGETLB = 0x400000
VM_WIPEONFORK = 0x2000000      # MADV_WIPEONFORK
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
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
VM_FAULT_MAJOR = 0x4
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
    """A page (or a huge page): identity (PFN), contents, mapcount.

    A THP (huge_memory.py) is a large folio whose ``pages`` are its 4 KiB pages (``head`` points back):
    a PMD leaf maps the large folio (its ``mapcount`` is the entire mapcount), a PTE maps one of its pages
    (whose own ``mapcount`` counts PTE mappings); the data lives in the pages.  hugetlb folios are one
    piece (``pages`` None)."""

    __slots__ = ("pfn", "size", "data", "anon", "exclusive", "mapcount", "zero", "swap", "dirty", "lazyfree",
                 "reclaim", "pages", "head")

    def __init__(self, pfn: int, size: int, anon: bool, data: bytearray | None = None, zero: bool = False):
        self.pfn = pfn
        self.size = size
        # None: all zeros; else the page's first len(data) bytes, the rest zeros (a page written in its first
        # bytes holds only those: a 4 KiB bytearray per page is a fresh host page, and a host page fault)
        self.data = data
        self.anon = anon
        self.exclusive = anon     # PageAnonExclusive
        self.mapcount = 0
        self.zero = zero
        self.swap = None          # folio->swap: its swap entry while in the swap cache (folio_test_swapcache)
        self.dirty = False        # folio_test_dirty(): a dirty PTE was unmapped from it (file folios: not written back)
        self.lazyfree = False     # MADV_FREE'd anon folio (!folio_test_swapbacked): reclaim may discard it
        self.reclaim = False      # PG_reclaim (= PG_readahead): a dirty file folio reclaim left for writeback
        self.pages = None         # a THP: its 4 KiB pages (the data is theirs)
        self.head = None          # a page of a THP: the large folio

    def precise_mapcount(self) -> int:
        """folio_precise_page_mapcount() of a 4 KiB page: its PTE mappings plus its THP's PMD mappings."""
        return self.mapcount + (self.head.mapcount if self.head is not None else 0)

    def read(self, off: int, n: int) -> bytes:
        if self.pages is not None:
            out = bytearray()
            for i in _page_steps(off, n):
                a = off + i
                out += self.pages[a >> 12].read(a & 0xFFF, min(n - i, 0x1000 - (a & 0xFFF)))
            return bytes(out)
        d = self.data
        if d is None:
            return bytes(n)
        b = d[off:off + n]
        return bytes(b) if len(b) == n else bytes(b) + bytes(n - len(b))   # past the prefix: zeros

    def write(self, off: int, buf: bytes) -> None:
        if self.pages is not None:
            for i in _page_steps(off, len(buf)):
                a = off + i
                self.pages[a >> 12].write(a & 0xFFF, buf[i:i + min(len(buf) - i, 0x1000 - (a & 0xFFF))])
            return
        d, end = self.data, off + len(buf)
        if d is None:
            self.data = d = bytearray(end)   # only up to the last byte written: the rest reads as zeros
        elif len(d) < end:
            d += bytes(end - len(d))
        d[off:end] = buf

    def copy_data(self) -> bytearray | None:
        if self.pages is not None:
            if all(p.data is None for p in self.pages):
                return None
            return bytearray(self.read(0, self.size))
        return None if self.data is None else bytearray(self.data)


def _page_steps(off: int, n: int):
    """Offsets into an n-byte run from ``off`` where a new 4 KiB page begins (0 first)."""
    i = 0
    while i < n:
        yield i
        i += 0x1000 - ((off + i) & 0xFFF)


MAX_SWAPFILES_SHIFT = 5


def swp_entry(type_: int, offset: int) -> int:
    """swp_entry(): a swap entry as pagemap shows it (bits 0-4 the device's type, 5-54 the slot offset)."""
    return type_ | offset << MAX_SWAPFILES_SHIFT


def swp_type(entry: int) -> int:
    return entry & ((1 << MAX_SWAPFILES_SHIFT) - 1)


def swp_offset(entry: int) -> int:
    return entry >> MAX_SWAPFILES_SHIFT


class Pte:
    """A PTE: present (``page``) with its bits, a PTE marker (``marker`` bits) or a swap entry (``swp``:
    the entry, with ``uffd_wp`` / ``soft_dirty`` the swp bits pte_swp_uffd_wp() / pte_swp_soft_dirty()),
    never two of them."""

    __slots__ = ("page", "write", "dirty", "young", "soft_dirty", "uffd_wp", "special", "marker", "swp", "exclusive")

    # Positional or keyword: the hot paths (mfill, faults) pass the bits by position, because a class
    # called with keywords builds a kwargs dict (Pte(p, special=True, young=True) ~2x the positional call).
    def __init__(self, page: Folio | None = None, write=False, dirty=False, young=True, soft_dirty=False,
                 uffd_wp=False, special=False, marker=0, swp=None, exclusive=False):
        self.page = page
        self.write = write
        self.dirty = dirty          # pte_dirty(): D or SavedDirty
        self.young = young
        self.soft_dirty = soft_dirty
        self.uffd_wp = uffd_wp      # present: _PAGE_UFFD_WP; marker: the swap entry's uffd-wp bit
        self.special = special
        self.marker = marker
        self.swp = swp              # a swap entry (swp_entry()), or None
        self.exclusive = exclusive  # swap entry: pte_swp_exclusive() (PageAnonExclusive at unmap time)

    @property
    def present(self) -> bool:
        return self.page is not None

    def copy(self) -> "Pte":
        return Pte(self.page, write=self.write, dirty=self.dirty, young=self.young, soft_dirty=self.soft_dirty,
                   uffd_wp=self.uffd_wp, special=self.special, marker=self.marker, swp=self.swp,
                   exclusive=self.exclusive)

    def __repr__(self):
        if self.swp is not None:
            return (f"Pte(swp type={swp_type(self.swp)} off={swp_offset(self.swp):#x}"
                    f"{' U' if self.uffd_wp else ''}{' S' if self.soft_dirty else ''})")
        if not self.present:
            return f"Pte(marker={self.marker:#x})"
        bits = "".join(c for c, on in (("W", self.write), ("D", self.dirty), ("A", self.young),
                                         ("S", self.soft_dirty), ("U", self.uffd_wp), ("Z", self.special)) if on)
        return f"Pte(pfn={self.page.pfn:#x} {bits})"


_new = object.__new__


def _new_anon_page(pfn: int, data: bytearray | None) -> Folio:
    """Folio(pfn, PAGE_SIZE, True, data) with mapcount 1: a fresh exclusive anon page, mapped once.  The same
    object as the class call builds, without its __init__ dispatch (on 3.11 a class call costs about twice
    the stores), for the per-page hot paths (mfill); tests/test_emu.py holds it equal to the class
    call slot by slot, so a new slot cannot be forgotten here.  :data:`new_anon_page` is its C twin where
    uffdctl._slots is built (``slots.slot_maker``)."""
    f = _new(Folio)
    f.pfn = pfn
    f.size = PAGE_SIZE
    f.data = data
    f.anon = f.exclusive = True
    f.mapcount = 1
    f.zero = f.dirty = f.lazyfree = f.reclaim = False
    f.swap = f.pages = f.head = None
    return f


def _new_present_pte(page: Folio, write, dirty, young, soft_dirty, uffd_wp, special) -> Pte:
    """Pte(page, write, dirty, young, soft_dirty, uffd_wp, special), built as :func:`_new_anon_page` builds
    its folio (held equal to the class call slot by slot); :data:`new_present_pte` is its C twin."""
    p = _new(Pte)
    p.page = page
    p.write = write
    p.dirty = dirty
    p.young = young
    p.soft_dirty = soft_dirty
    p.uffd_wp = uffd_wp
    p.special = special
    p.marker = 0
    p.swp = None
    p.exclusive = False
    return p


new_anon_page = slot_maker(Folio, ("pfn", "data"), _new_anon_page, size=PAGE_SIZE, anon=True, exclusive=True,
                           mapcount=1, zero=False, swap=None, dirty=False, lazyfree=False, reclaim=False,
                           pages=None, head=None)
new_present_pte = slot_maker(Pte, ("page", "write", "dirty", "young", "soft_dirty", "uffd_wp", "special"),
                             _new_present_pte, marker=0, swp=None, exclusive=False)


def make_pte_marker(bits: int) -> Pte:
    return Pte(None, young=False, marker=bits)


def is_swap_entry(pte: Pte | None) -> bool:
    """A real swap entry (not none, not present, not a PTE marker): is_swap_pte() && !non_swap_entry()."""
    return pte is not None and pte.swp is not None


def swp_entry_to_pte(entry: int, *, uffd_wp=False, soft_dirty=False, exclusive=False) -> Pte:
    """swp_entry_to_pte() with the swp bits try_to_unmap_one() carries over (pte_swp_mkuffd_wp(),
    pte_swp_mksoft_dirty(), pte_swp_mkexclusive())."""
    return Pte(None, young=False, uffd_wp=uffd_wp, soft_dirty=soft_dirty, swp=entry, exclusive=exclusive)


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


def vma_is_shmem(vma) -> bool:
    """vm_ops == &shmem_vm_ops or &shmem_anon_vm_ops: memfd, tmpfs, MAP_SHARED|MAP_ANONYMOUS; not SysV shm."""
    f = vma.file
    return f is not None and f.shmem and not f.sysv and not vma.hugetlb


def vma_can_userfault(vma, vm_flags: int, wp_async: bool) -> bool:
    """include/linux/userfaultfd_k.h: MINOR only on shmem / hugetlb; WP alone with UFFD_FEATURE_WP_ASYNC on any
    VMA (6.7+: the feature is offered only there); else anon, hugetlb or shmem (a regular file or SysV shm is
    none of them: EINVAL)."""
    vm_flags &= VM_UFFD_FLAGS
    if vm_flags & VM_UFFD_MINOR and not (vma.hugetlb or vma_is_shmem(vma)):
        return False
    if wp_async and vm_flags == VM_UFFD_WP:
        return True
    return vma.anon or vma.hugetlb or vma_is_shmem(vma)


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


new_vmf = slot_maker(VmFault, VmFault.__slots__, VmFault)     # VmFault(...) on the fault path, by slot


__all__ = ["PAGE_SIZE", "HPAGE_SIZE", "PUD_SIZE", "HSTATES", "HPAGE_PMD_MASK", "HPAGE_PMD_NR", "TASK_SIZE", "MMAP_BASE", "VM_READ", "VM_WRITE", "VM_EXEC", "VM_SHARED",
           "VM_MAYREAD", "VM_MAYWRITE", "VM_MAYEXEC", "VM_MAYSHARE", "VM_UFFD_MISSING", "VM_UFFD_WP", "VM_LOCKED",
           "VM_HUGETLB", "VM_HUGEPAGE", "VM_NOHUGEPAGE", "VM_DONTCOPY", "VM_WIPEONFORK", "VM_SOFTDIRTY",
           "VM_UFFD_MINOR", "VM_UFFD_FLAGS", "PTE_MARKER_UFFD_WP", "PTE_MARKER_POISONED", "PTE_MARKER_GUARD",
           "VM_FAULT_OK", "VM_FAULT_SIGBUS", "VM_FAULT_MAJOR", "VM_FAULT_HWPOISON",
           "VM_FAULT_SIGSEGV", "VM_FAULT_RETRY", "VM_FAULT_LIVELOCK", "VM_FAULT_ERROR", "MFILL_ATOMIC_COPY",
           "MFILL_ATOMIC_ZEROPAGE", "MFILL_ATOMIC_CONTINUE", "MFILL_ATOMIC_POISON",
           "MM_CP_TRY_CHANGE_WRITABLE", "MM_CP_UFFD_WP", "MM_CP_UFFD_WP_RESOLVE", "ZERO_PFN", "FIRST_PFN",
           "Folio", "Pte", "new_anon_page", "new_present_pte", "make_pte_marker",
           "MAX_SWAPFILES_SHIFT", "swp_entry", "swp_type", "swp_offset", "is_swap_entry", "swp_entry_to_pte",
           "Vma", "vma_is_shmem", "vma_can_userfault", "userfaultfd_missing", "userfaultfd_wp",
           "userfaultfd_minor", "VmFault", "new_vmf"]
