"""The emulator's walks cost what is touched, never the size of the range -- counted, not timed.

The cost of an operation is the number of Python lines the package executes for it (``sys.settrace`` line
events inside uffdctl/) and the peak Python memory it allocates (tracemalloc): both are properties of the
code, not of the machine's load.  The same layout of touched pages is run in a region of 1 TiB and of 64 TiB
(and beside a busy mapping of many pages outside the range): a walk that visits every PMD index, every page
or every PTE of the mm, instead of the page tables and PTEs of the range, makes the large run cost more, and
stops with "O(range)" as soon as it has cost more than twice the small run.
"""
from __future__ import annotations

import os
import sys

import pytest

from uffdctl import pagemap, uapi
from uffdctl.backend import MemType
from uffdctl.emu import EmuBackend

PS = uapi.PAGE_SIZE
TiB = 1 << 40
C = uapi.PageCategory
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from bench_emu import OverBudget, peak_bytes, python_cost  # noqa: E402


def lines_run(fn, cap: int | None = None) -> int:
    """Lines of uffdctl/ that ``fn()`` executes; raises OverBudget past ``cap``."""
    return python_cost(fn, cap)[1]


TOUCHED = 48
# what any of these scenarios may cost in a 1 TiB region (the tree of this test: ~43,000 lines for the walks,
# ~3,400 for shmem); an O(range) walk there stops at it instead of running for hours under the tracer
SMALL_CAP = 1_000_000


def scenario(size: int, busy: bool = False):
    """A ``size`` anon region registered MISSING|WP, TOUCHED pages COPYed into it at the same offsets whatever
    the size (a few in one page table, the rest far apart, one at the very end), and an unregistered region
    of the same size with pages written the same way (its holes read WRITTEN under a page table only, so
    its scan splits holes by page table); ``busy``: plus 4,096 written pages in a mapping outside both.
    Returns the backend, the two regions, the uffd, the offsets and the COPY source."""
    b = EmuBackend(profile="6.18", soft_dirty=False)
    r = b.mmap(size, MemType.ANON)
    w = b.mmap(size, MemType.ANON)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"s")
    if busy:
        other = b.mmap(4096 * PS, MemType.ANON)
        b.thread("t").access(other.addr, other.len, True, fill=1, stride=PS).wait(5)
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    offs = [0, PS, 3 * PS, 511 * PS] + [(i << 32) + i * PS for i in range(1, TOUCHED - 5)] + [(1 << 39) + 7 * PS,
                                                                                             size - PS]
    return b, r, w, u, offs, src.addr


def run_ops(b, r, w, u, offs, src):
    """What the model must do in what is touched: a COPY from ``src`` to each offset of ``r``, a write to each
    of ``w``, WRITEPROTECT of all of ``r`` on and off around six scans (every region, a category mask, a
    small vector, a budget, one call, the loop), MADV_DONTNEED, unregister, munmap.  Returns the scans'
    results relative to the regions' starts and how many PTEs were left after MADV_DONTNEED."""
    for off in offs:
        u.copy(r.addr + off, src, PS)
    for off in offs:
        b.write(w.addr + off, b"w")
    u.writeprotect(r.addr, r.len, uapi.WriteprotectMode.WP)
    scans = [pagemap.scan_all(b, r.addr, r.end, return_mask=C.PRESENT | C.WRITTEN),
             pagemap.scan_all(b, r.addr, r.end, category_mask=C.PRESENT, return_mask=C.PRESENT, vec_len=3),
             pagemap.scan_all(b, r.addr, r.end, return_mask=C.PRESENT, max_pages=TOUCHED // 2),
             b.pagemap_scan(r.addr, r.end, return_mask=C.PRESENT | C.WRITTEN, vec_len=7),
             pagemap.scan_all(b, w.addr, w.end, return_mask=C.PRESENT | C.WRITTEN),
             pagemap.scan_all_loop(b, w.addr, w.end, category_anyof_mask=C.WRITTEN, return_mask=C.WRITTEN,
                                   vec_len=5)]
    u.writeprotect(r.addr, r.len, 0)
    b.madvise(r.addr, r.len, uapi.MADV_DONTNEED)
    b.madvise(w.addr, w.len, uapi.MADV_DONTNEED)
    after = len(b.mm.ptes)
    u.unregister(r.addr, r.len)
    b.munmap(r.addr, r.len)
    b.munmap(w.addr, w.len)
    bases = [r.addr] * 4 + [w.addr] * 2
    return [([(s - base, e - base, c) for s, e, c in res.regions], res.walk_end - base)
            for res, base in zip(scans, bases)], after


def cost(size: int, busy: bool = False, cap: int | None = None):
    b, r, w, u, offs, src = scenario(size, busy)
    out = {}
    n = lines_run(lambda: out.setdefault("res", run_ops(b, r, w, u, offs, src)), cap)
    b.close()
    return n, out["res"]


def test_the_walks_cost_what_is_touched_not_the_range():
    small, res_small = cost(1 * TiB, cap=SMALL_CAP)
    assert res_small[0][0][0][-1][1] == TiB           # the first scan's last region ends at the region's end
    try:
        large, res_large = cost(64 * TiB, cap=2 * small)
    except OverBudget:
        pytest.fail(f"a 64 TiB region cost more than twice a 1 TiB one ({small} lines) with the same pages "
                    f"touched: a walk is O(range)")
    assert large <= small * 1.05 + 200, (small, large)
    # the results are the same but for where the range ends
    shape = lambda res: [[(s, e, c) for s, e, c in regs if e < TiB // 2] for regs, _ in res[0]]   # noqa: E731
    assert shape(res_large) == shape(res_small)
    present = sum((e - s) // PS for s, e, c in res_small[0][0][0] if c & C.PRESENT)
    assert present == TOUCHED and res_small[1] == 1      # after MADV_DONTNEED the source page is all that is left


def test_a_busy_mapping_elsewhere_does_not_slow_the_walks():
    """4,096 present pages outside the range: what the walks of the range cost does not grow with them (the
    PTEs of the range are found by bisect over a sorted view of the PTE map, not by filtering every PTE)."""
    quiet, res_quiet = cost(TiB, cap=SMALL_CAP)
    busy, res_busy = cost(TiB, busy=True, cap=2 * quiet)
    assert busy <= quiet * 1.05 + 200, (quiet, busy)
    assert res_busy[0] == res_quiet[0]


def test_memory_follows_what_is_touched():
    """Peak Python memory of the same operations in a 1 TiB and a 64 TiB region: the same within 64 KiB."""
    def mem(size):
        b, r, w, u, offs, src = scenario(size)
        m = peak_bytes(lambda: run_ops(b, r, w, u, offs, src))
        b.close()
        return m
    small, large = mem(TiB), mem(64 * TiB)
    assert large <= small + (64 << 10), (small, large)


R_MISSING_WP = uapi.RegisterMode.MISSING | uapi.RegisterMode.WP
MASKS = [(0, 0, 0, int(C.PRESENT)), (0, int(C.WRITTEN), 0, 0x1FF), (int(C.WRITTEN), int(C.WRITTEN), 0, 0x1FF),
         (0, 0, int(C.PRESENT | C.PFNZERO), int(C.PRESENT | C.WRITTEN | C.PFNZERO | C.FILE))]


def _layout(mt: str, feats: int, mode: int, thp: bool):
    """Pages written, read and COPYed a few PMDs apart (holes with and without page tables), one written
    page write-protected; ``thp``: plus a PMD-mapped THP (MADV_HUGEPAGE, a write fault) in the middle."""
    b = EmuBackend(profile="6.18", soft_dirty=True)
    n = 8 << 9
    if thp:                                   # 2 MiB-aligned (tests/test_differential.py aligned_mmap)
        probe = b.mmap(n * PS + (4 << 20), MemType.ANON)
        b.munmap(probe.addr, probe.len)
        r = b.mmap(n * PS, mt, addr=(probe.addr + (2 << 20)) & ~((2 << 20) - 1))
    else:
        r = b.mmap(n * PS, mt)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"q")
    u = b.userfaultfd()
    u.api(feats & b.profile.features)
    if thp:
        b.madvise(r.addr + (4 << 21), 2 << 20, uapi.MADV_HUGEPAGE)
        b.write(r.addr + (4 << 21) + 5 * PS, b"t")
        assert b.mm.pmds, "no PMD-mapped THP"
    pages = (0, 3, 700, 1500, 1501, 3000, 4095)
    for i, p in enumerate(pages):
        if i % 3 == 0:
            b.write(r.addr + p * PS, b"w")
        elif i % 3 == 1:
            b.read(r.addr + p * PS, 1)
    if mode:
        u.register(r.addr, r.len, mode)
    for p in pages[2::3]:
        if mode:
            u.copy(r.addr + p * PS, src.addr, PS)
        else:
            b.write(r.addr + p * PS, b"l")
    if mode:
        u.writeprotect(r.addr + 1500 * PS, PS, int(uapi.WriteprotectMode.WP))
    return b, r, u


@pytest.mark.parametrize("mt", ["anon", "shmem", "thp"])
def test_the_emulators_scan_all_is_scan_all_loop(mt):
    """EmuBackend.pagemap_scan_all (each call's regions joined in bulk) gives what pagemap.scan_all_loop's
    call-by-call continuation gives -- regions, walk_end, the pagemap and TLB flushes it leaves -- for every
    flag, mask, budget and vector length the walk forks on."""
    from uffdctl.errors import UffdError
    thp = mt == "thp"
    memtype = "anon" if thp else mt
    seen = 0
    for feats, mode in ((0, 0), (0, int(R_MISSING_WP)), (int(uapi.Feature.WP_ASYNC), int(R_MISSING_WP))):
        for flags in (0, int(uapi.PM_SCAN_WP_MATCHING)):
            for vec_len, max_pages in ((512, 0), (3, 0), (1, 0), (512, 5), (2, 700), (0, 0)):
                for inv, mask, anyof, ret in MASKS:
                    outs = []
                    for way in ("bulk", "loop"):
                        b, r, u = _layout(memtype, feats, mode, thp)
                        fn = b.pagemap_scan_all if way == "bulk" else \
                            (lambda *a, **k: pagemap.scan_all_loop(b, *a, **k))
                        try:
                            res = fn(r.addr + PS, r.end, flags=flags, category_inverted=inv, category_mask=mask,
                                     category_anyof_mask=anyof, return_mask=ret, max_pages=max_pages,
                                     vec_len=vec_len)
                            out = ([(s - r.addr, e - r.addr, c) for s, e, c in res.regions], res.walk_end - r.addr)
                        except UffdError as e:
                            out = ("err", e.errno)
                        outs.append((out, b.pagemap(r.addr, r.len // PS), b.tlb_flush_count()))
                        b.close()
                    assert outs[0] == outs[1], (feats, mode, flags, vec_len, max_pages, inv, mask, anyof, ret)
                    seen += isinstance(outs[0][0][0], list) and len(outs[0][0][0]) > 1
    assert seen > 50          # most combinations returned several regions


def test_the_sorted_pte_view_never_misses_a_pte():
    """MM._pte_index (pgtable.pte_index(): the sorted keys pte_keys() bisects) is dropped whenever a key is
    added; a code path that stores a new key into ``mm.ptes`` without dropping it would make the walks miss
    that PTE.  After every op of the differential's generated sequences (every memory type but hugetlb, fork
    included), on the parent and on a forked child, every PTE is in the view or the view is gone."""
    import random
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_differential as D

    def check(mm, where):
        srt = mm._pte_index
        if srt is not None:
            missing = set(mm.ptes) - set(srt)
            assert not missing, f"{where}: {len(missing)} PTEs not in the sorted view, e.g. {min(missing):#x}"

    ops = 0
    for i in range(120):
        seq = D.gen_sequence(random.Random(7000 + i), ["anon", "shmem", "shmem-private", "thp"])
        eb = D.emu_6_18()
        es = D.Side(eb, seq, eb.mm.zero_page.pfn)
        for op in seq["ops"]:
            if D.applicable(es, op):
                D.apply(es, op)
                es.snapshot()                 # pagemap reads and scans: they build the view
                eb.mm.pte_keys(0, 1 << 47, PS)
                check(eb.mm, f"seed {7000 + i} after {op[0]}")
                if es.child is not None:
                    check(es.child.mm, f"seed {7000 + i} (child) after {op[0]}")
                ops += 1
        es.u.close()
        eb.close()
    assert ops > 500


def test_scan_all_costs_the_regions_not_the_regions_times_the_calls():
    """scan_all over 16,384 regions (every other page of 64 MiB written) with a vector of 32 regions (512 calls)
    walks about what one call with a vector for all of them walks: each call starts at its walk_end in the sorted
    PTE view and goes no further than where its vector fills (not a copy or filter of every PTE left)."""
    b = EmuBackend(profile="6.18", soft_dirty=False)
    r = b.mmap(16384 * PS, MemType.ANON)
    b.thread("t").access(r.addr, r.len, True, fill=1, stride=2 * PS).wait(5)
    out = {}
    one = lines_run(lambda: out.setdefault("one", b.pagemap_scan(r.addr, r.end, return_mask=C.PRESENT,
                                                                  vec_len=1 << 20)))
    many = lines_run(lambda: out.setdefault("many", pagemap.scan_all(b, r.addr, r.end, return_mask=C.PRESENT,
                                                                      vec_len=32)), cap=3 * one)
    assert out["many"].regions == out["one"].regions and len(out["one"].regions) == 16384
    assert many <= one * 1.25 + 5000, (one, many)
    b.close()


def shmem_cost(size: int, cap: int | None = None):
    """Writes, a scan, MADV_DONTNEED, writes, MADV_REMOVE and munmap of a ``size`` shmem region (page cache
    and PTEs at the same offsets whatever the size); the lines run and what the scan and the cache saw."""
    b = EmuBackend(profile="6.18", soft_dirty=False)
    r = b.mmap(size, MemType.SHMEM)
    offs = [0, PS, (1 << 32) + 5 * PS, (1 << 38) + 9 * PS, size - PS]
    out = {}

    def run():
        for off in offs:
            b.write(r.addr + off, b"m")
        res = pagemap.scan_all(b, r.addr, r.end, return_mask=C.PRESENT | C.FILE)
        out["scan"] = [(s - r.addr, e - r.addr, c) for s, e, c in res.regions if c]
        b.madvise(r.addr, r.len, uapi.MADV_DONTNEED)
        for off in offs:
            b.write(r.addr + off, b"n")
        out["cached"] = len(b.mm.vmas[0].file.pages) if b.mm.vmas else None
        b.madvise(r.addr, r.len, uapi.MADV_REMOVE)
        out["left"] = len(b.mm.find_vma(r.addr).file.pages)
        b.munmap(r.addr, r.len)
    n = lines_run(run, cap)
    b.close()
    return n, out


def test_a_shmem_region_costs_what_is_touched():
    small, out = shmem_cost(TiB, cap=SMALL_CAP)
    assert [s for s, e, c in out["scan"]] == [0, (1 << 32) + 5 * PS, (1 << 38) + 9 * PS, TiB - PS]
    assert out["left"] == 0
    try:
        large, out_large = shmem_cost(64 * TiB, cap=2 * small)
    except OverBudget:
        pytest.fail(f"a 64 TiB shmem region cost more than twice a 1 TiB one ({small} lines): O(range)")
    assert large <= small * 1.05 + 200, (small, large)
    assert out_large["scan"][:3] == out["scan"][:3] and out_large["left"] == 0
