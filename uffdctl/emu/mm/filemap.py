"""Regular files on a disk filesystem (mm/filemap.c, mm/readahead.c, mm/page-writeback.c, mm/msync.c): the page
cache of a file that is not shmem, filemap_fault() with its read-around, writeback and msync().

What differs from shmem (measured on the 6.18 host, ext4):

* a page-cache miss is a major fault, and the mmap read-around brings in ``RA_PAGES`` (128 KiB, the disk's
  read_ahead_kb) centred on it, clamped to the file; the next faults there are minor (and read faults map the
  neighbours by fault-around);
* a shared mapping is write-notified (page_mkwrite): read faults map read-only, the first write faults;
  msync(MS_SYNC) writes dirty pages back and write-protects / cleans their PTEs again (folio_mkclean());
* registration: no MISSING or MINOR, WP only with UFFD_FEATURE_WP_ASYNC (vma_can_userfault()); UFFDIO_COPY,
  ZEROPAGE, CONTINUE and POISON are EINVAL (mfill_atomic(): not anon, not shmem).
"""
from __future__ import annotations

import errno as E

from .mm_types import PAGE_SIZE, VM_FAULT_MAJOR, VM_FAULT_OK, VM_FAULT_RETRY, VM_FAULT_SIGBUS, VM_LOCKED

MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4
RA_PAGES = 32


def _next_ra_size(cur: int, max_pages: int = RA_PAGES) -> int:
    """mm/readahead.c get_next_ra_size()."""
    if cur < max_pages // 16:
        return 4 * cur
    if cur <= max_pages // 2:
        return 2 * cur
    return max_pages


class RegularFile:
    """An inode of a disk filesystem: its size, page cache (index -> Folio) and what was written back."""

    shmem = False
    sysv = False

    def __init__(self, name: str, size: int, page_size: int = PAGE_SIZE):
        self.name = name
        self.size = size
        self.page_size = page_size
        self.pages: dict = {}
        self.disk: dict[int, bytes] = {}      # index -> contents written back (a hole reads zeros)
        self.ra = (0, 0, 0)                   # file_ra_state of the one open file: start, size, async_size
        self.ra_order = 0                     # and its order (6.16+: the folio order readahead asks for)


class Filemap:
    """mm/filemap.c's fault and writeback, mm/msync.c."""

    def filemap_fault(self, vmf) -> tuple[int, object]:
        vma = vmf.vma
        f = vma.file
        idx = vma.linear_page_index(vmf.address)
        if idx * PAGE_SIZE >= f.size:
            return VM_FAULT_SIGBUS, None
        folio = f.pages.get(idx)
        if folio is not None:
            if folio.reclaim:                     # PG_readahead (= PG_reclaim): do_async_mmap_readahead()
                folio.reclaim = False
                self.page_cache_async_ra(f, idx)
                # maybe_unlock_mmap_for_io() drops the lock: VM_FAULT_RETRY, and the retried fault runs
                # fault-around again over what the readahead brought in.  The retry carries FAULT_FLAG_TRIED,
                # which mm_account_fault() counts major; with per-VMA locks the retry under mmap_lock is a plain
                # one: minor [measured: 6.1.192 guest, a disk file's page written after MADV_PAGEOUT: majflt 1]
                return VM_FAULT_RETRY | (0 if self.profile.per_vma_lock else VM_FAULT_MAJOR), folio
            return VM_FAULT_OK, folio
        # do_sync_mmap_readahead(): read-around, ra->start = pgoff - ra_pages / 2, clamped to the file
        start = max(0, idx - RA_PAGES // 2)
        f.ra, f.ra_order = (start, RA_PAGES, RA_PAGES // 4), 0
        self.page_cache_ra(f, start, RA_PAGES, RA_PAGES // 4)
        return VM_FAULT_MAJOR, f.pages[idx]

    def page_cache_ra(self, f, start: int, nr: int, lookahead: int) -> None:
        """page_cache_ra_order(): the missing pages of the window [start, start + nr), clamped to the file's last
        page, are read into the page cache, and the page ``lookahead`` before the window's end gets PG_readahead.
        With large folios on the mapping (ext4 since 6.16: ``profile.filemap_large_folios``) the folios go in
        from ``start`` until a page already cached stops them, the mark placed by the unclamped window (so a
        window the file's end clamps still marks its first page when lookahead = size); the rest of the window,
        and every window without large folios, is do_page_cache_ra()'s: the clamped window, marked only when it
        still holds ``lookahead`` pages [differential, seed 780291293: the async window's first page, marked,
        was not mapped by the retried fault's fault-around on 6.18]."""
        npages = (f.size + PAGE_SIZE - 1) // PAGE_SIZE
        end = min(start + nr, npages)
        i = start
        if self.profile.filemap_large_folios and nr >= 4:
            # the folios of ra_order (ilog2(size) at most), smaller where the index is not aligned to it or the
            # file's end would cut one; a folio over a page already cached is -EEXIST and ends the loop [soak
            # seed 864900119: the async window at index 2 of a 4-page file is one order-1 folio over pages 2-3,
            # page 3 cached: nothing read there, and the fallback's page 2 is not marked, so fault-around maps it]
            new_order = min(f.ra_order, nr.bit_length() - 1)
            mark = start + nr - lookahead
            while i < end:
                order = new_order
                if i & ((1 << order) - 1):
                    order = (i & -i).bit_length() - 1          # __ffs(index)
                while order > 0 and i + (1 << order) > end:
                    order -= 1
                if any(j in f.pages for j in range(i, i + (1 << order))):
                    break
                head_marked = i == mark & ~((1 << order) - 1)  # ra_alloc_folio(): round_down(mark, nr)
                for j in range(i, i + (1 << order)):           # the folio's PG_readahead, on each of its pages
                    self._ra_read(f, j, head_marked)
                i += 1 << order
            if i >= end:
                return
            nr -= i - start                       # fallback: do_page_cache_ra(ra->size - (index - start))
        n = end - i
        mark = i + n - lookahead if 0 < n and lookahead <= n else None
        for j in range(i, end):
            if j not in f.pages:
                self._ra_read(f, j, j == mark)

    def _ra_read(self, f, i: int, mark: bool) -> None:
        data = f.disk.get(i)
        folio = f.pages[i] = self.alloc_folio(PAGE_SIZE, anon=False, data=bytearray(data) if data is not None else None)
        if mark:
            folio.reclaim = True                  # folio_set_readahead() (the same bit as PG_reclaim)

    def page_cache_async_ra(self, f, idx: int) -> None:
        """mm/readahead.c page_cache_async_ra() for a fault on a PG_readahead folio at ``idx`` (mmap: the request
        is ra_pages): the window moves on when the mark is where the state expects it; else ("a marked folio
        without valid readahead state", e.g. PG_reclaim left by MADV_PAGEOUT) it starts at the next page not in
        the cache after ``idx``.  The whole window is async (async_size = size) [measured on 6.18: the write
        fault on a dirty page MADV_PAGEOUT kept brought the next, dropped, page back, and a read of it was then
        minor; differential, soak seed 145651076]."""
        start, size, async_size = f.ra
        if idx == start + size - async_size:
            start, size = start + size, _next_ra_size(size)
        else:
            miss = next((i for i in range(idx + 1, idx + 1 + RA_PAGES) if i not in f.pages), None)
            if miss is None:                      # page_cache_next_miss(): none within ra_pages
                return
            start, size = miss, _next_ra_size(miss - idx + RA_PAGES)
        f.ra, f.ra_order = (start, size, size), f.ra_order + 2
        self.page_cache_ra(f, start, size, size)

    def folio_mkclean(self, f, idx: int, folio, flush: list) -> None:
        """Every PTE of this mm mapping the folio through a shared VMA: write-protected and clean (soft-dirty
        stays)."""
        for vma in self.vmas:
            if vma.file is not f or not vma.shared:
                continue
            a = vma.start + idx * PAGE_SIZE - vma.pgoff
            if vma.start <= a < vma.end:
                pte = self.ptes.get(a)
                if pte is not None and pte.page is folio:
                    if pte.write or pte.dirty:
                        flush.append(a)
                    pte.write = pte.dirty = False

    def folio_dirty(self, f, idx: int, folio) -> bool:
        """The folio is dirty, or a shared PTE mapping it is (dirty bits reach the folio at writeback)."""
        if folio.dirty:
            return True
        for vma in self.vmas:
            if vma.file is f and vma.shared:
                a = vma.start + idx * PAGE_SIZE - vma.pgoff
                pte = self.ptes.get(a) if vma.start <= a < vma.end else None
                if pte is not None and pte.page is folio and pte.dirty:
                    return True
        return False

    def filemap_write_and_wait_range(self, f, first: int, last: int) -> None:
        flush = []
        for idx in sorted(i for i in f.pages if first <= i <= last):
            folio = f.pages[idx]
            if self.folio_dirty(f, idx, folio):
                f.disk[idx] = folio.read(0, PAGE_SIZE)
                folio.dirty = folio.reclaim = False  # folio_end_writeback() clears PG_reclaim
                self.folio_mkclean(f, idx, folio, flush)
        self.tlb.flush_range(flush)

    def msync(self, start: int, length: int, flags: int) -> int:
        """mm/msync.c: argument checks, ENOMEM for a hole (after the walk), EBUSY for MS_INVALIDATE of a locked
        VMA; MS_SYNC of a shared file VMA writes its range back (vfs_fsync_range); MS_ASYNC does nothing."""
        if flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC) or start % PAGE_SIZE or \
                flags & MS_ASYNC and flags & MS_SYNC:
            return -E.EINVAL
        end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if end < start:
            return -E.ENOMEM
        if end == start:
            return 0
        err, pos = 0, start
        for vma in self.vmas_in(start, end):
            if vma.start > pos:
                err = -E.ENOMEM
            if flags & MS_INVALIDATE and vma.flags & VM_LOCKED:
                return -E.EBUSY
            s, e = max(start, vma.start), min(end, vma.end)
            if flags & MS_SYNC and vma.shared and vma.file is not None and not vma.file.shmem:
                self.filemap_write_and_wait_range(vma.file, vma.linear_page_index(s), vma.linear_page_index(e - 1))
            pos = vma.end
        return err if pos >= end else -E.ENOMEM
