"""pagemap decoding (on injected entries), clear_refs, soft-dirty detection and PAGEMAP_SCAN (live)."""
from __future__ import annotations

import errno

import pytest

from conftest import TABLE_BACKENDS, alone_in_a_gib, make_backend
from uffdctl import pagemap, uapi
from uffdctl.backend import Backend, ScanResult
from uffdctl.errors import UffdError
from uffdctl.pagemap import PagemapEntry

P = uapi.PAGE_SIZE
C = uapi.PageCategory

# Observed host entries (spec §5.1 [E]) and what they decode to.
OBSERVED = [
    (0x810000000011F0FB, ["present", "exclusive"], 0x11F0FB),            # COPY'd anon page
    (0x830000000011F0FB, ["present", "uffd_wp", "exclusive"], 0x11F0FB),  # COPY MODE_WP
    (0x8000000000003B32, ["present"], 0x3B32),                            # anon zero page
    (0xA100000000000123, ["present", "file", "exclusive"], 0x123),       # shmem page
    (0xA000000000000123, ["present", "file"], 0x123),                    # page mapped twice (CONTINUE)
    (0x420000000000003F, ["swap", "uffd_wp"], 0x3F),                     # uffd-wp marker
    (0x400000000000005F, ["swap"], 0x5F),                                # poison marker
    (0x440000000000009F, ["swap", "guard"], 0x9F),                       # guard marker (6.15+)
    (0x0080000000000000, ["soft_dirty"], 0),                             # hole in a VM_SOFTDIRTY VMA
    (0, [], 0),
]


@pytest.mark.parametrize("raw,flags,pfn", OBSERVED, ids=[hex(o[0]) for o in OBSERVED])
def test_decode(raw, flags, pfn):
    e = PagemapEntry(0x1000, raw)
    assert e.flags() == flags
    assert e.pfn == pfn
    assert e.to_dict()["raw"] == raw
    assert e.marker == ("swap" in flags and "present" not in flags)


def test_symbols():
    assert PagemapEntry(0, 0x8000000000003B32).symbol(zero_pfn=0x3B32) == "Z"
    assert PagemapEntry(0, 0x830000000011F0FB).symbol() == "W"
    assert PagemapEntry(0, 0x420000000000003F).symbol() == "M"
    assert PagemapEntry(0, 0x400000000000005F).symbol() == "X"
    assert PagemapEntry(0, 0x440000000000009F).symbol() == "G"
    assert PagemapEntry(0, 0).symbol() == "."
    assert PagemapEntry(0, uapi.PM_PRESENT | uapi.PM_SOFT_DIRTY).symbol() == "D"


class FakeScan(Backend):
    """A backend whose PAGEMAP_SCAN returns at most ``vec_len`` regions, like the kernel (for scan_all)."""

    name = "fake"

    def __init__(self, pages: dict[int, int]):
        self.pages = pages
        self.calls: list[tuple[int, int, int]] = []

    def pagemap_scan(self, start, end, *, vec_len=512, max_pages=0, return_mask=0x1FF, **kw):
        self.calls.append((start, end, vec_len))
        out: list[list[int]] = []
        pos, taken = start, 0
        while pos < end:
            cat = self.pages.get(pos, 0) & return_mask
            if cat:
                if out and out[-1][1] == pos and out[-1][2] == cat:
                    out[-1][1] += P
                elif len(out) == vec_len:
                    break  # the vector is full: walk_end stops here
                else:
                    out.append([pos, pos + P, cat])
                taken += 1
            pos += P
            if max_pages and taken == max_pages:
                break
        return ScanResult([tuple(x) for x in out], pos)

    # the rest of the interface is not used here
    describe = mmap = alias = munmap = madvise = mprotect = mremap = userfaultfd = fault_handler = None
    thread = read = write = pagemap = clear_refs = soft_dirty = smaps_private_dirty = None


FakeScan.__abstractmethods__ = frozenset()


def test_scan_all_continues_from_walk_end():
    """With a vector of 2 regions and 5 alternating runs, scan_all must resume at walk_end (not at the end
    of the last region) and must not lose or duplicate a page."""
    base = 0x10000000
    pages = {}
    for i in range(20):
        pages[base + i * P] = (C.PRESENT | C.WRITTEN) if (i // 4) % 2 == 0 else C.PRESENT
    fake = FakeScan(pages)
    res = pagemap.scan_all(fake, base, base + 20 * P, vec_len=2)
    assert res.walk_end == base + 20 * P
    assert res.regions == [(base + 4 * k * P, base + 4 * (k + 1) * P, pages[base + 4 * k * P]) for k in range(5)]
    assert len(fake.calls) == 3 and fake.calls[1][0] == base + 8 * P


def test_scan_all_merges_split_regions():
    base = 0x20000000
    pages = {base + i * P: C.PRESENT for i in range(10)}
    fake = FakeScan(pages)
    res = pagemap.scan_all(fake, base, base + 10 * P, vec_len=1, max_pages=3)
    assert res.regions == [(base, base + 3 * P, C.PRESENT)]


class ShortWalkEnd(FakeScan):
    """FakeScan with the walk_end 6.18 reports: after more than 512 regions in one call that did not fill
    the vector, walk_end comes back 4 MiB short of where the walk really ended (every region was returned)."""

    def pagemap_scan(self, start, end, **kw):
        res = super().pagemap_scan(start, end, **kw)
        if len(res.regions) > 512 and len(res.regions) < kw.get("vec_len", 512):
            res.walk_end = max(start + P, res.walk_end - (4 << 20))
        return res


@pytest.mark.parametrize("vec_len", [1, 2, 511, 512, 513, 1000, 1024, 1025, 4096])
def test_scan_all_never_yields_a_region_twice(vec_len):
    base = 0x40000000
    n = 4096  # 16 MiB, every other page written: 2,048 single-page regions
    pages = {base + i * P: C.WRITTEN for i in range(0, n, 2)}
    res = pagemap.scan_all(ShortWalkEnd(pages), base, base + n * P, vec_len=vec_len, return_mask=C.WRITTEN)
    assert res.regions == [(base + i * P, base + (i + 1) * P, C.WRITTEN) for i in range(0, n, 2)]
    assert res.walk_end == base + n * P
    budget = pagemap.scan_all(ShortWalkEnd(pages), base, base + n * P, vec_len=vec_len, return_mask=C.WRITTEN,
                              max_pages=1500)
    assert budget.regions == res.regions[:1500]  # repeats do not eat the max_pages budget


def test_view_bulk_decodes_equal_per_entry():
    """counts/runs/symbols over a view (C when built) equal the per-entry decode, on every OBSERVED entry."""
    from array import array
    raws = [o[0] for o in OBSERVED] * 3 + [0] * 5 + [OBSERVED[0][0]]
    v = pagemap.PagemapView(0x10000, array("Q", raws))
    ents = list(v)
    assert [e.raw for e in ents] == raws and ents[3] == v[3] and v[-1].addr == 0x10000 + (len(raws) - 1) * P
    assert v.counts() == {n: sum(1 for e in ents if getattr(e, n)) for n, _ in pagemap.FLAG_BITS}
    assert v.symbols(0x3B32) == "".join(e.symbol(0x3B32) for e in ents)
    want, prev = [], None
    for i, e in enumerate(ents):
        bits = e.raw & pagemap.FLAG_MASK
        if bits != prev:
            want.append([i, 0, bits])
            prev = bits
        want[-1][1] += 1
    assert v.runs() == [tuple(w) for w in want]
    sl = v[2:6]
    assert isinstance(sl, pagemap.PagemapView) and sl.addr == 0x10000 + 2 * P and list(sl.raw) == raws[2:6]


# -- live -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", TABLE_BACKENDS)
def test_clear_refs_values(backend_name):
    b = make_backend(backend_name)
    try:
        for v in (1, 2, 3, 5):
            b.clear_refs(v)
        for bad in (0, 6, "x"):
            with pytest.raises(UffdError) as ei:
                b.clear_refs(bad)
            assert ei.value.errno == errno.EINVAL
    finally:
        b.close()


def test_soft_dirty_roundtrip_here(kernel_backend):
    """This host has CONFIG_MEM_SOFT_DIRTY off: clear_refs 4 succeeds, and the round trip reads 0."""
    sd = kernel_backend.soft_dirty()
    with open("/proc/config.gz", "rb") as f:
        import gzip
        config = gzip.decompress(f.read()).decode()
    configured = "CONFIG_MEM_SOFT_DIRTY=y" in config
    assert sd.available == configured, sd
    if not configured:
        assert sd.reason == "CONFIG_MEM_SOFT_DIRTY off: round trip read 0"
        assert not sd.raw_after & uapi.PM_SOFT_DIRTY


def test_pagemap_live_bits(kernel_backend):
    b = kernel_backend
    r = b.mmap(4 * P, "anon")
    b.write(r.addr, b"x")
    e0, e1 = pagemap.read(b, r.addr, 2)
    assert e0.present and e0.exclusive and not e0.file and e0.pfn != 0  # root: real PFNs
    assert e1.raw == 0
    b.madvise(r.addr + 2 * P, P, uapi.MADV_GUARD_INSTALL)
    g = pagemap.entry(b, r.addr + 2 * P)
    assert g.guard and g.swap and not g.present


def wp_async_tracking(b, r):
    """Async uffd-wp as a dirty tracker (the selftests' pagemap_ioctl wp_init()): WP_ASYNC|WP_UNPOPULATED,
    ``r`` registered WP and write-protected whole, so PAGE_IS_WRITTEN names the pages written since."""
    u = b.userfaultfd()
    u.api(uapi.Feature.WP_ASYNC | uapi.Feature.WP_UNPOPULATED)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, r.len, uapi.WriteprotectMode.WP)
    return u


def test_pagemap_scan_written_and_continuation(kernel_backend):
    """PAGEMAP_SCAN on a WP_ASYNC range: the vector fills, walk_end says where to resume, and
    scan_all's result equals one big-vector call."""
    b = kernel_backend
    n = 32
    r = b.mmap(n * P, "anon")
    u = wp_async_tracking(b, r)
    for i in range(0, n, 3):  # written pages every third page: many small regions
        b.write(r.addr + i * P, b"w")
    one = b.pagemap_scan(r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN, vec_len=64)
    assert one.walk_end == r.end
    assert [s for s, _, _ in one.regions] == [r.addr + i * P for i in range(0, n, 3)]
    short = b.pagemap_scan(r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN, vec_len=2)
    assert len(short.regions) == 2 and r.addr < short.walk_end < r.end
    assert pagemap.scan_all(b, r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN,
                            vec_len=2).regions == one.regions
    # WP_MATCHING write-protects what it reports: a second scan finds nothing written
    b.pagemap_scan(r.addr, r.end, flags=uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC,
                   category_mask=C.WRITTEN, return_mask=C.WRITTEN)
    assert b.pagemap_scan(r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN).regions == []


def test_pagemap_scan_errors(kernel_backend):
    b = kernel_backend
    r = b.mmap(4 * P, "anon")
    for kw, err in [(dict(start=r.addr + 1), errno.EINVAL),
                    (dict(flags=1 << 5), errno.EINVAL),
                    (dict(category_mask=1 << 20), errno.EINVAL),
                    (dict(flags=uapi.PM_SCAN_CHECK_WPASYNC), errno.EPERM)]:  # not a WP_ASYNC VMA
        args = dict(start=r.addr, end=r.end)
        args.update(kw)
        with pytest.raises(UffdError) as ei:
            b.pagemap_scan(args.pop("start"), args.pop("end"), **args)
        assert ei.value.errno == err, (kw, ei.value)


def test_scan_category_probe(kernel_backend):
    """The categories this kernel accepts: all nine on 6.18 (GUARD since 6.15); SOFT_DIRTY is accepted
    even without CONFIG_MEM_SOFT_DIRTY (it simply never matches)."""
    r = kernel_backend.mmap(P, "anon")
    got = pagemap.probe_scan_categories(kernel_backend, r.addr)
    assert got == {c.name: True for c in C}


def test_kpageflags(kernel_backend):
    """The PFN pagemap gives (as root) leads to /proc/kpageflags: a written anon page is ANON|MMAP, the
    zero page ZERO_PAGE."""
    b = kernel_backend
    r = b.mmap(2 * P, "anon")
    b.write(r.addr, b"x")
    e = pagemap.entry(b, r.addr)
    flags = pagemap.kpageflags(e.pfn)
    assert {"ANON", "MMAP", "UPTODATE"} <= set(flags), flags
    b.read(r.addr + P, 1)  # a read fault on anon maps the zero page
    z = pagemap.entry(b, r.addr + P)
    assert "ZERO_PAGE" in pagemap.kpageflags(z.pfn)


def test_pagemap_view_equals_the_slow_path(kernel_backend):
    """The bulk read (C pread into an array) gives the same entries as a plain pread + struct decode."""
    import os
    import struct
    b = kernel_backend
    r = b.mmap(300 * P, "anon")
    for i in (0, 1, 7, 64, 299):
        b.write(r.addr + i * P, b"x")
    b.madvise(r.addr + 10 * P, P, uapi.MADV_GUARD_INSTALL)
    v = pagemap.read(b, r.addr, 300)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        slow = struct.unpack("<300Q", os.pread(fd, 300 * 8, r.addr // P * 8))
    finally:
        os.close(fd)
    assert list(v.raw) == list(slow) and b.pagemap(r.addr, 300) == list(slow)
    assert [e.addr for e in v] == [r.addr + i * P for i in range(300)]
    assert [i for i, e in enumerate(v) if e.present] == [0, 1, 7, 64, 299] and v[10].guard
    assert v.counts()["present"] == 5 and v.counts()["guard"] == 1


@pytest.mark.parametrize("vec_len", [2, 512, 513, 1000, 1024, 1025, 2048, 4096])
def test_scan_all_live_no_duplicates(kernel_backend, vec_len):
    """8 MiB written every other page (1,024 regions): scan_all returns each region once at every vec_len,
    including the ones where one call returns more than 512 regions without filling the vector."""
    b = kernel_backend
    n = 2048
    r = b.mmap(n * P, "anon")
    u = wp_async_tracking(b, r)
    b.thread("w").access(r.addr, r.len, True, fill=1, stride=2 * P).wait(30)
    want = [(r.addr + i * P, r.addr + (i + 1) * P, C.WRITTEN) for i in range(0, n, 2)]
    res = pagemap.scan_all(b, r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN, vec_len=vec_len)
    assert res.regions == want and list(res.regions) == want and res.walk_end == r.end  # the C loop
    loop = pagemap.scan_all_loop(b, r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN, vec_len=vec_len)
    assert loop.regions == want and loop.walk_end == r.end  # the Python loop over single calls
    for budget in (1, 600, 1000):
        got = pagemap.scan_all(b, r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN, vec_len=vec_len,
                               max_pages=budget)
        assert got.regions == want[:budget] and got.regions[-1] == want[budget - 1]


def test_scan_all_regions_outlive_the_call(kernel_backend):
    """The kernel backend's scan_all hands back the C loop's own buffer (no copy): it must stay valid, and hold
    the same regions, after the call, the ScanResult and a collection are gone and the allocator reused memory."""
    import gc
    b = kernel_backend
    r = b.mmap(512 * P, "anon")
    b.thread("w").access(r.addr, r.len, True, fill=1, stride=2 * P).wait(30)
    regions = pagemap.scan_all(b, r.addr, r.end, category_mask=C.PRESENT, return_mask=C.PRESENT).regions
    gc.collect()
    churn = [bytes(24 * 256) for _ in range(256)]     # the size of the result, many times: a freed buffer is reused
    want = [(r.addr + i * P, r.addr + (i + 1) * P, C.PRESENT) for i in range(0, 512, 2)]
    assert len(churn) == 256 and list(regions) == want and regions[-1] == want[-1] and regions == want
    empty = pagemap.scan_all(b, r.addr + P, r.addr + 2 * P, category_mask=C.PRESENT).regions
    assert len(empty) == 0 and list(empty) == [] and empty == []


def test_the_tools_own_pages_never_merge_into_a_region(kernel_backend):
    """A page the tool maps for itself ("__" names: the zero-PFN probe, scratch, the LRU drain page) right next
    to a session region stays a VMA of its own (VM_DONTDUMP).  Merged, the region took the new VMA's
    VM_SOFTDIRTY and kept it after the tool's page was unmapped: soft-dirty.c test_simple read 1 at iteration 0
    on 6.1.192."""
    b = kernel_backend
    # a two-page hole right below what is left of the region: the region may have been placed right above
    # another mapping (top-down mmap packs them), so the hole is made, never assumed [fresh machine: EEXIST]
    r = b.mmap(5 * P, "anon", name="mine")
    b.munmap(r.addr, 2 * P)
    b.munmap(r.addr + 4 * P, P)                      # and a page above, for a user page that merges
    mine = (r.addr + 2 * P, r.addr + 4 * P)
    assert b.vma_bounds(mine[0]) == mine
    t = b.mmap(P, "anon", name="__tool", addr=r.addr + P)   # a hint: the kernel puts it in the hole
    try:
        assert t.addr == r.addr + P, "the kernel did not honour the address hint: the test cannot place the page"
        assert b.vma_bounds(mine[0]) == mine, "the tool's page merged into the region's VMA"
        assert b.vma_bounds(t.addr) == (t.addr, t.addr + P)
        u2 = b.mmap(P, "anon", name="user2", addr=r.addr)
        assert b.vma_bounds(u2.addr) == (u2.addr, u2.addr + P), "a user page merged into the tool's page"
        u3 = b.mmap(P, "anon", name="user3", addr=mine[1])
        assert b.vma_bounds(u3.addr) == (mine[0], u3.end), "users' pages do merge: the test shows nothing"
    finally:
        b.munmap(t.addr, P)


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
@pytest.mark.parametrize("memtype", ["hugetlb", "hugetlb-private"])
def test_scan_of_a_hugetlb_hole_depends_on_the_pmd_table(backend_name, memtype):
    """walk_hugetlb_range(): a none huge PTE is reported by .hugetlb_entry (PAGE_IS_HUGE) only where a PMD table
    covers it; with none in its GiB hugetlb_walk() returns NULL and .pte_hole reports the VMA's categories alone
    (not WRITTEN even in a uffd-wp VMA, unlike a hole in any other VMA) -- and, under PM_SCAN_WP_MATCHING,
    write-protects it all the same.  The first fault allocates the table (huge_pte_alloc()), munmap of the last
    VMA in the GiB frees it.  Measured on 6.18; the model keeps ``mm.pmd_tables``."""
    from conftest import hugetlb_reason, require_kernel
    HP = 2 << 20
    b = make_backend(backend_name)
    reason = hugetlb_reason(b)
    if reason:
        require_kernel(reason)
    allc = uapi.PM_SCAN_CATEGORIES_6_18

    def scan(r, **kw):
        res = b.pagemap_scan(r.addr, r.end, return_mask=allc, **kw)
        return [(s - r.addr, e - r.addr, int(c)) for s, e, c in res.regions]

    try:
        addr = alone_in_a_gib(b, 3 * HP)
        r = b.mmap(3 * HP, memtype, name="h", addr=addr)
        assert scan(r) == [(0, 3 * HP, 0)]                  # no table: .pte_hole
        b.write(r.addr, b"x")                                # huge_pte_alloc(), then the page
        file = C.FILE if memtype == "hugetlb" else 0
        assert scan(r) == [(0, HP, int(C.PRESENT | C.WRITTEN | C.HUGE | file)), (HP, 3 * HP, int(C.HUGE))]
        b.munmap(r.addr, r.len)                              # the last VMA in the GiB: free_pgtables()
        r = b.mmap(3 * HP, memtype, name="h2", addr=addr)
        assert scan(r) == [(0, 3 * HP, 0)]
        u = b.userfaultfd()
        u.api(uapi.Feature.WP_ASYNC | uapi.Feature.WP_HUGETLBFS_SHMEM)
        u.register(r.addr, r.len, uapi.RegisterMode.WP)
        W = int(C.WPALLOWED)
        assert scan(r) == [(0, 3 * HP, W)]                   # registering allocates nothing
        # PM_SCAN_WP_MATCHING over the hole: the first huge page is reported by .pte_hole, which write-protects
        # it (uffd_wp_range(): a marker, so a table); hugetlb_walk() runs per huge page, so the next ones are
        # .hugetlb_entry's: HUGE, not WRITTEN, and left alone
        H = W | int(C.HUGE)
        assert scan(r, flags=uapi.PM_SCAN_WP_MATCHING, category_anyof_mask=allc) == [(0, HP, W), (HP, 3 * HP, H)]
        assert scan(r) == [(0, HP, H | int(C.SWAPPED)), (HP, 3 * HP, H)]     # a uffd-wp marker: not WRITTEN
        u.close()
    finally:
        b.close()
