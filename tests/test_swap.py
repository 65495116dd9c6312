"""Swap side by side: MADV_PAGEOUT, swap entries in pagemap, uffd-wp on swap entries, swap-in, shmem in swap,
no swap device, swapoff -- the host kernel (with a swapfile of its own, always swapped off and removed) and the
emulator (its own model of a swap device, ``swap_on``), each scenario compared between the two and against the
values the kernel is known to show (mm/madvise.c, mm/vmscan.c, mm/rmap.c try_to_unmap_one(), mm/memory.c
do_swap_page(), fs/proc/task_mmu.c pte_to_pagemap_entry()).

Pages are named by relation (the first PFN seen is p0, the first swap slot s0, ...), never by value.
"""
from __future__ import annotations


import pytest

from conftest import (SWAP_SIZE, active_swaps as other_swaps, assert_steps_agree, drain_events, make_backend,
                      require_kernel, run_closing, zero_pfn)
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType

PS = uapi.PAGE_SIZE
R, F = uapi.RegisterMode, uapi.Feature
P, S, FILE, U, X = uapi.PM_PRESENT, uapi.PM_SWAP, uapi.PM_FILE, uapi.PM_UFFD_WP, uapi.PM_MMAP_EXCLUSIVE
MARKER = 0x420000000000003F           # a uffd-wp PTE marker as pagemap shows it on 6.18


def backend(name: str, with_swap: bool):
    b = make_backend(name)
    if name != "kernel" and with_swap:
        b.swap_on(SWAP_SIZE)
    return b


class View:
    """pagemap entries as relations: flags (P S F U X) and page identity (p0, p1 ... by PFN; s0 ... by slot)."""

    def __init__(self, b, zero_pfn):
        self.b, self.zero = b, zero_pfn
        self.names: dict = {}
        self.count: dict = {}

    def name(self, kind, key):
        k = (kind, key)
        if k not in self.names:
            self.count[kind] = self.count.get(kind, -1) + 1
            self.names[k] = f"{kind}{self.count[kind]}"
        return self.names[k]

    def entry(self, raw: int) -> str:
        bits = "".join(c for c, m in (("P", P), ("S", S), ("F", FILE), ("U", U), ("X", X)) if raw & m)
        if raw & P:
            pfn = raw & uapi.PM_PFRAME_MASK
            return bits + (":zero" if pfn == self.zero else ":" + self.name("p", pfn))
        if raw == MARKER:
            return "marker"
        if raw & S:
            return bits + ":" + self.name("s", raw & uapi.PM_PFRAME_MASK)
        return bits or "none"

    def __call__(self, r, n=None) -> list[str]:
        """The first ``n`` pages of ``r``; a page or slot no longer seen anywhere in ``r`` loses its name (the
        kernel may hand a freed PFN to the next allocation)."""
        raw = self.b.pagemap(r.addr, r.len // PS)
        live = {("p" if x & P else "s", x & uapi.PM_PFRAME_MASK) for x in raw if x & (P | S)}
        self.names = {k: v for k, v in self.names.items() if k in live}
        return [self.entry(x) for x in raw][:n or len(raw)]


def bits(entries: list[str]) -> list[str]:
    return [e.split(":")[0] for e in entries]


def acc(b, addr, write, fill=0x5A, thread="t"):
    a = b.thread(thread).access(addr, 1 if write else 8, write, fill=fill, stride=PS if write else 0,
                                want_data=not write)
    if not a.wait(5):
        return a
    r = a.result()
    return ("fault", r.minflt, r.majflt) if write else ("fault", r.minflt, r.majflt, r.data[:1])


def pageout(b, r) -> None:
    """MADV_PAGEOUT of region ``r`` after lru_add_drain(): the folios are on the LRU, so reclaim_pages() takes them."""
    b.lru_drain()
    b.madvise(r.addr, r.len, uapi.MADV_PAGEOUT)


def wp_registered(b, r, protect: int = PS):
    """A uffd with ``r`` registered WP and its first ``protect`` bytes write-protected."""
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, r.len, int(R.WP))
    if protect:
        u.writeprotect(r.addr, protect, int(uapi.WriteprotectMode.WP))
    return u


def swap_scenario(b, memtype: str) -> list:
    """Write p0 p1, read p2, leave p3 a hole; register WP, protect p0; pageout; protect p1 and unprotect it
    (swp bit only); PAGEMAP_SCAN; read p0 (uffd-wp kept, no message), read p1 then write it (writable after a
    read swap-in on 6.12+), write p0 (WP message), pageout again and touch p3."""
    v = View(b, zero_pfn(b))
    r = b.mmap(4 * PS, MemType(memtype), name="r")
    out = []
    out.append(("w p0", acc(b, r.addr, True, 1)))
    out.append(("w p1", acc(b, r.addr + PS, True, 2)))
    out.append(("r p2", acc(b, r.addr + 2 * PS, False)))
    u = wp_registered(b, r)
    out.append(("before", v(r)))
    pageout(b, r)
    out.append(("pageout", v(r)))
    slot1 = b.pagemap(r.addr + PS, 1)[0]
    u.writeprotect(r.addr + PS, PS, int(uapi.WriteprotectMode.WP))
    out.append(("wp p1", v(r, 2)))
    C = uapi.PageCategory
    res = b.pagemap_scan(r.addr, r.end, return_mask=int(C.PRESENT | C.SWAPPED | C.WRITTEN | C.FILE | C.PFNZERO))
    out.append(("scan", [((s - r.addr) // PS, (e - r.addr) // PS, int(c)) for s, e, c in res.regions]))
    u.writeprotect(r.addr + PS, PS, 0)
    out.append(("unwp p1", v(r, 2)))
    out.append(("r p0", acc(b, r.addr, False), v(r, 1)))
    out.append(("msgs", [m.flags for m in u.read_msgs()]))
    out.append(("r p1", acc(b, r.addr + PS, False), v(r, 2)))
    out.append(("w p1 again", acc(b, r.addr + PS, True, 3)))
    h = b.fault_handler(u, HandlerPolicy(missing="zeropage", wp="unprotect"))
    out.append(("w p0", acc(b, r.addr, True, 4), [(e.msg.flags, (e.msg.address - r.addr) // PS, e.action)
                                                  for e in drain_events(h, 1, keep=lambda e: e.action != "event")]))
    out.append(("after", v(r)))
    pageout(b, r)
    out.append(("pageout 2", v(r)))
    out.append(("p1 kept its slot", b.pagemap(r.addr + PS, 1)[0] == slot1))
    out.append(("r p1 2", acc(b, r.addr + PS, False), v(r)))
    h.stop()
    u.close()
    return out


def side_by_side(scenario, *args, with_swap=True):
    e = _run("emu", scenario, args, with_swap)
    k = _run("kernel", scenario, args, with_swap)
    assert_steps_agree(k, e)
    return dict((x[0], x[1:]) for x in k)


def _run(name, scenario, args, with_swap):
    return run_closing(backend(name, with_swap), scenario, *args)


# -- no swap device ---------------------------------------------------------------------------------------------------
def noswap_scenario(b, memtype):
    v = View(b, zero_pfn(b))
    r = b.mmap(3 * PS, MemType(memtype), name="r")
    out = [("w p0", acc(b, r.addr, True, 1)), ("r p1", acc(b, r.addr + PS, False))]
    u = wp_registered(b, r)
    out.append(("before", v(r)))
    pageout(b, r)
    out.append(("pageout", v(r)))
    out.append(("r p0", acc(b, r.addr, False), "r p1", acc(b, r.addr + PS, False), v(r)))
    u.close()
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("memtype", ["anon", "shmem", "shmem-private"])
def test_pageout_without_swap(memtype):
    """No swap device: anon folios cannot be reclaimed (nothing changes); shmem / page-cache folios are unmapped
    anyway (a uffd-wp marker for the protected one), the written one stays in the page cache (its data on the
    next fault), the clean one is freed."""
    if other_swaps():
        require_kernel(f"a swap device is on ({', '.join(other_swaps())}): this scenario needs none")
    k = side_by_side(noswap_scenario, memtype, with_swap=False)
    if memtype == "anon":
        assert k["pageout"] == k["before"], k
    elif memtype == "shmem":
        assert k["pageout"][0] == ["marker", "none", "none"], k
        assert k["r p0"][0][-1] == b"\x01" and k["r p0"][-1][0].startswith("PFU"), k  # the written page kept
    else:
        assert k["pageout"][0] == ["PUX:p0", "none", "none"], k                       # the COW'd anon page stays


# -- with a swap device ---------------------------------------------------------------------------------------------
@pytest.mark.kernel
@pytest.mark.parametrize("memtype", ["anon", "shmem", "shmem-private"])
def test_swap_side_by_side(host_swap, memtype):
    k = side_by_side(swap_scenario, memtype)
    if memtype == "anon":
        # try_to_unmap_one(): swap entries with the swp uffd-wp bit, no X; the zero page is no normal folio
        assert k["pageout"][0] == ["SU:s0", "S:s1", "P:zero", "none"], k
        assert k["wp p1"][0] == ["SU:s0", "SU:s1"] and k["unwp p1"][0] == ["SU:s0", "S:s1"], k
        # do_swap_page(): a read keeps uffd-wp (no message); the page comes back from the swap cache (minor)
        assert k["r p0"][0][:3] == ("fault", 1, 0) and bits(k["r p0"][1]) == ["PUX"], k
        assert k["msgs"][0] == [], k
        assert k["w p1 again"][0] == ("fault", 0, 0), k      # read swap-in mapped it writable (6.12+)
        assert k["w p0"][1] == [(int(uapi.PagefaultFlag.WRITE | uapi.PagefaultFlag.WP), 0, "unprotect")], k
        assert k["p1 kept its slot"] == (True,), k         # a read swap-in keeps its slot (swap cache)
    elif memtype == "shmem":
        # shmem: PTEs unmapped, the swap entry lives in the page cache: 0 or the uffd-wp marker, never S
        assert k["pageout"][0] == ["marker", "none", "none", "none"], k
        assert bits(k["r p0"][1]) == ["PFUX"] and k["r p0"][0][-1] == b"\x01" and k["msgs"][0] == [], k
    else:
        assert k["pageout"][0][0] == "SU:s0" and k["pageout"][0][1:] == ["S:s1", "none", "none"], k


def profile_scenario(profile):
    """Read swap-in of a plain page, then a write: how many faults the write takes under ``profile``."""
    from uffdctl.emu import EmuBackend
    b = EmuBackend(profile=profile, soft_dirty=False)
    try:
        b.swap_on(SWAP_SIZE)
        r = b.mmap(PS, MemType.ANON)
        b.write(r.addr, b"x")
        b.madvise(r.addr, PS, uapi.MADV_PAGEOUT)
        assert b.pagemap(r.addr, 1)[0] & S
        acc(b, r.addr, False)
        return acc(b, r.addr, True)
    finally:
        b.close()


def test_read_swapin_writable_per_version():
    """do_swap_page(): 6.12+ maps an exclusive page writable on a read swap-in (0 faults on the next write,
    measured on the 6.18 host above); 6.1.192 only on a write fault (1 more fault: maybe_mkwrite)."""
    assert profile_scenario("6.18") == ("fault", 0, 0)
    assert profile_scenario("6.12") == ("fault", 0, 0)
    assert profile_scenario("6.1") == ("fault", 1, 0)


def test_swapin_write_of_uffd_wp_entry_per_version():
    """A write to a uffd-wp swap entry: 6.12+ swap-in then do_wp_page() in the same fault (one WP message);
    6.1 maps it write-protected and returns, the retried write faults again into the message."""
    from uffdctl.emu import EmuBackend
    for profile, faults in (("6.18", 1), ("6.1", 2)):
        b = EmuBackend(profile=profile, soft_dirty=False)
        try:
            b.swap_on(SWAP_SIZE)
            r = b.mmap(PS, MemType.ANON)
            b.write(r.addr, b"x")
            u = wp_registered(b, r)
            b.madvise(r.addr, PS, uapi.MADV_PAGEOUT)
            h = b.fault_handler(u, HandlerPolicy(wp="unprotect"))
            res = acc(b, r.addr, True)
            assert res[1] + res[2] == faults, (profile, res)
            assert [e.msg.flags for e in h.events() if e.action != "event"] == [3], profile
            h.stop()
            u.close()
        finally:
            b.close()


def swapoff_scenario(b, memtype):
    """Two written pages, p0 uffd-wp; pageout onto a device of its own; swapoff."""
    v = View(b, zero_pfn(b))
    r = b.mmap(2 * PS, MemType(memtype), name="r")
    acc(b, r.addr, True, 1)
    acc(b, r.addr + PS, True, 2)
    u = wp_registered(b, r)
    if b.name == "kernel":
        b.swap_on(SWAP_SIZE)
    try:
        pageout(b, r)
        out = [("pageout", v(r))]
    finally:
        b.swap_off()
    out.append(("swapoff", v(r)))
    out.append(("w p1", acc(b, r.addr + PS, True, 3), v(r)))
    u.close()
    return out


@pytest.mark.kernel
def test_swapoff_brings_pages_back():
    """swapoff's try_to_unuse() / unuse_pte(): every swap entry becomes a present, read-only page again with its
    uffd-wp bit; a write to the plain one then takes a fault (the PTE was mapped with vm_page_prot)."""
    if other_swaps():
        require_kernel(f"a swap device is on ({', '.join(other_swaps())}): swapoff must bring back only ours")
    k = side_by_side(swapoff_scenario, "anon", with_swap=True)
    assert k["pageout"][0] == ["SU:s0", "S:s1"], k
    assert k["swapoff"][0] == ["PUX:p0", "PX:p1"], k
    assert k["w p1"][0][:2] == ("fault", 1), k


def test_emulated_swap_is_not_the_hosts():
    """swap on / swap off on the emulator toggle the model's device: /proc/swaps does not change."""
    before = other_swaps()
    b = make_backend("emu")
    try:
        d = b.swap_on(SWAP_SIZE)
        assert d["emulated"] == 1 and other_swaps() == before
        assert b.swap_status()["mine"] == [d["filename"]]
        r = b.mmap(PS, MemType.ANON)
        b.write(r.addr, b"x")
        b.madvise(r.addr, PS, uapi.MADV_PAGEOUT)
        assert b.swap_status()["swaps"][0]["used"] == PS
        b.swap_off()
        assert b.pagemap(r.addr, 1)[0] & P and b.read(r.addr, 1) == b"x"
        with pytest.raises(Exception, match="no swap device"):
            b.swap_off()
    finally:
        b.close()


def test_pageout_of_hugetlb_or_locked_is_einval():
    """can_madv_lru_vma(): VM_HUGETLB (and VM_LOCKED) VMAs refuse MADV_PAGEOUT / MADV_COLD with EINVAL."""
    from uffdctl.errors import UffdError
    b = make_backend("emu")
    try:
        r = b.mmap(2 << 20, MemType.HUGETLB)
        for advice in (uapi.MADV_PAGEOUT, uapi.MADV_COLD):
            with pytest.raises(UffdError) as ei:
                b.madvise(r.addr, r.len, advice)
            assert ei.value.errno == 22
    finally:
        b.close()


def lazyfree_scenario(b):
    """A written, uffd-wp page MADV_FREE'd then paged out (clean: discarded), and one written again after
    MADV_FREE (redirtied: kept, then swapped by a second pageout)."""
    v = View(b, zero_pfn(b))
    r = b.mmap(2 * PS, MemType.ANON, name="r")
    acc(b, r.addr, True, 1)
    acc(b, r.addr + PS, True, 2)
    u = wp_registered(b, r, protect=0)
    b.lru_drain()                                    # on the LRU, or lru_lazyfree_fn() skips it (stays swap-backed)
    b.madvise(r.addr, r.len, uapi.MADV_FREE)
    u.writeprotect(r.addr, PS, int(uapi.WriteprotectMode.WP))
    h = b.fault_handler(u, HandlerPolicy(wp="unprotect"))
    acc(b, r.addr + PS, True, 3)                     # p1 redirtied after MADV_FREE
    pageout(b, r)
    out = [("pageout", v(r))]
    pageout(b, r)
    out.append(("pageout 2", v(r)))
    out.append(("w p0", acc(b, r.addr, True, 4), [e.msg.flags for e in h.events() if e.action != "event"]))
    out.append(("r p1", acc(b, r.addr + PS, False)))
    h.stop()
    u.close()
    return out


@pytest.mark.kernel
def test_lazyfree_then_pageout(host_swap):
    """try_to_unmap_one()'s MADV_FREE check: a clean lazyfree page is discarded (PTE none: the anon VMA keeps no
    uffd-wp marker, so the next write is a plain fault without a message); a redirtied one is remapped and
    swap-backed again, so only the next pageout swaps it (its data kept)."""
    k = side_by_side(lazyfree_scenario)
    assert bits(k["pageout"][0]) == ["none", "PX"], k
    assert bits(k["pageout 2"][0]) == ["none", "S"], k
    assert k["w p0"][0][:2] == ("fault", 1) and k["w p0"][1] == [], k
    assert k["r p1"][0][-1] == b"\x03", k


# -- a swapped-out UFFDIO_COPY source ---------------------------------------------------------------------------------
def copy_source_scenario(b, memtype: str, fill: int) -> list:
    """UFFDIO_COPY into a MISSING-registered page from a source page that was paged out: mfill_atomic_pte_copy()'s
    copy_from_user() runs with page faults disabled and fails, mfill_atomic() drops mmap_lock and copies with
    faults enabled (copy_folio_from_user()): the fault swaps the source in (do_swap_page(); a zero-filled page
    in the zeromap on 6.12+ is a major fault, VM_FAULT_MAJOR, no error) and the copy goes on."""
    v = View(b, zero_pfn(b))
    src = b.mmap(2 * PS, MemType(memtype), name="src")
    dst = b.mmap(2 * PS, MemType.ANON, name="dst")
    out = [("w src", acc(b, src.addr, True, fill), acc(b, src.addr + PS, True, fill + 1))]
    u = b.userfaultfd()
    u.api(0)
    u.register(dst.addr, dst.len, int(R.MISSING))
    pageout(b, src)
    out.append(("pageout", v(src)))
    try:
        out.append(("copy", u.copy(dst.addr, src.addr, dst.len)))
    except Exception as e:
        out.append(("copy", type(e).__name__, getattr(e, "errno", None)))
    out.append(("after", v(src), bits(v(dst))))
    if out[-2][1:] == (dst.len,):                         # the dst is filled: reading it cannot block
        out.append(("data", b.read(dst.addr, 1) + b.read(dst.addr + PS, 1), b.read(src.addr, 1)))
    u.close()
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("memtype", ["anon", "shmem"])
@pytest.mark.parametrize("fill", [0, 0x21], ids=["zero-filled", "written"])
def test_copy_from_a_swapped_out_source(host_swap, memtype, fill):
    """A swapped-out source is swapped in by the copy, which succeeds, whether the swap-in is minor (the swap
    cache still holds the folio: no memory pressure) or major (a zeromap entry, read into a new folio): only the
    VM_FAULT_ERROR bits of handle_mm_fault() make copy_from_user() fail (do_user_addr_fault())."""
    k = side_by_side(copy_source_scenario, memtype, fill)
    assert k["copy"] == (2 * PS,), k
    assert k["data"] == (bytes((fill, fill + 1)), bytes((fill,))), k
    assert bits(k["after"][1]) == ["PX", "PX"], k              # the copies: present, exclusive anon pages
    if memtype == "anon":
        assert bits(k["pageout"][0]) == ["S", "S"], k
        assert all(e.startswith("P") for e in k["after"][0]), k   # the source swapped back in by the copy


def test_swapfile_refused_on_tmpfs():
    """A swapfile on tmpfs/ramfs is refused before anything is created (statfs(2) f_type: TMPFS_MAGIC); a disk
    filesystem's magic is not taken for tmpfs."""
    import os
    from uffdctl import _libc, swap
    from uffdctl.errors import Unsupported
    if os.geteuid() != 0:
        require_kernel("swap on needs root")
    if not _libc.on_tmpfs("/dev/shm"):
        require_kernel("/dev/shm is not tmpfs here")
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(Unsupported, match="on tmpfs, which cannot hold a swapfile"):
        swap.on(SWAP_SIZE, "/dev/shm")
    assert not {f for f in set(os.listdir("/dev/shm")) - before if f.startswith("uffdctl-swap-")}
    assert _libc.statfs_type("/proc") == 0x9FA0 and not _libc.on_tmpfs("/proc")     # PROC_SUPER_MAGIC
    assert _libc.statfs_type("/no/such/dir") == -2                                  # -ENOENT
