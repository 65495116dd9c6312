"""The emulation backend on its own: interface, profiles, soft-dirty, TLB flush rules, RFC hints, sparseness.

These need no kernel.  What the emulator shares with the kernel is proven by
tests/test_differential.py (random sequences, kernel vs emulator) and
tests/test_emu_table.py (the shared case table); here are the behaviours this
host cannot show: CONFIG_MEM_SOFT_DIRTY=y, kernel versions other than 6.18, and
the never-merged 2022 hint RFC (spec §1.2, §1.4, §6, §7.1).
"""
from __future__ import annotations

import errno
import inspect
import select

import pytest

from uffdctl import backend as B
from uffdctl import pagemap, uapi
from uffdctl import open_backend
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.emu import PROFILES, EmuBackend
from uffdctl.emu import profiles as P
from uffdctl.emu import tlb
from uffdctl.errors import UffdError

PS = uapi.PAGE_SIZE
WP = uapi.WriteprotectMode.WP
SD = uapi.PM_SOFT_DIRTY


def setup(profile="6.18", soft_dirty=True, memtype=MemType.ANON, pages=4, mode=uapi.RegisterMode.WP,
          features=0, **sw):
    b = EmuBackend(profile=profile, soft_dirty=soft_dirty, **sw)
    r = b.mmap(pages * PS, memtype)
    u = b.userfaultfd()
    u.api(features)
    if mode:
        u.register(r.addr, r.len, mode)
    return b, r, u


def write(b, addr, fill=0x5A, thread="main"):
    acc = b.thread(thread).access(addr, 1, True, fill=fill)
    assert acc.done, "access blocked in a userfault"
    return acc.result()


def pm(b, addr):
    return pagemap.entry(b, addr)


# -- the interface ------------------------------------------------------------------------------

def test_implements_every_abstract_method():
    for cls, base in ((EmuBackend, B.Backend),):
        assert not inspect.isabstract(cls), cls.__abstractmethods__
    b, r, u = setup()
    assert not inspect.isabstract(type(u)) and isinstance(u, B.Uffd)
    t = b.thread("x")
    assert isinstance(t, B.Thread) and isinstance(t.access(r.addr, 1, False), B.Access)
    assert isinstance(b.fault_handler(u, HandlerPolicy()), B.Handler)


def test_open_backend_routes_and_describes():
    b = open_backend("emu", profile="5.19", soft_dirty=False)
    d = b.describe()
    assert (d["backend"], d["release"], d["profile"], d["soft_dirty"]) == ("emu", "5.19.0", "5.19", False)
    assert set(PROFILES) >= {"5.19", "6.1", "6.2", "6.18", "7.3", "rfc-hints", "rfc-hints-fixed"}
    assert EmuBackend().describe()["release"] == "6.18.44" and EmuBackend().describe()["soft_dirty"] is True
    with pytest.raises(ValueError, match="unknown emulator profile"):
        EmuBackend(profile="4.4")
    with pytest.raises(ValueError, match="unknown profile switch"):
        EmuBackend(bogus=True)


def test_profiles_are_small_tables_of_switches():
    """Each profile differs from its neighbour by named switches only."""
    a, b = PROFILES["6.18"].switches(), PROFILES["7.3"].switches()
    assert {k for k in a if a[k] != b[k]} == {"install_over_guard", "scan_written_any_vma"}
    assert PROFILES["5.19"].features == P.FEATURES_5_19 and PROFILES["6.18"].features == uapi.FEATURES_6_18


def test_addresses_are_user_addresses_and_hugetlb_aligned():
    b = EmuBackend()
    r = b.mmap(PS, MemType.ANON)
    h = b.mmap(2 << 20, MemType.HUGETLB)
    assert r.addr >= 0x7F0000000000 and r.addr % PS == 0
    assert h.addr % (2 << 20) == 0 and h.page_size == 2 << 20


def test_fd_is_pollable():
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    assert select.select([u.fileno()], [], [], 0)[0] == []
    acc = b.thread("t").access(r.addr, 1, False)
    assert not acc.done and select.select([u.fileno()], [], [], 0)[0] == [u.fileno()]
    (m,) = u.read_msgs()
    assert (m.event, m.flags, m.address) == (uapi.Event.PAGEFAULT, 0, r.addr)
    assert select.select([u.fileno()], [], [], 0)[0] == []
    u.zeropage(r.addr, PS)
    assert acc.done and acc.result().minflt == 1


def test_messages_exact_address_and_thread_id():
    F = uapi.Feature
    b, r, u = setup(mode=uapi.RegisterMode.MISSING, features=F.EXACT_ADDRESS | F.THREAD_ID)
    t = b.thread("worker")
    t.access(r.addr + PS + 0x123, 1, True, fill=1)
    (m,) = u.read_msgs()
    assert m.address == r.addr + PS + 0x123 and m.flags == uapi.PagefaultFlag.WRITE and m.ptid == t.tid


def test_wake_without_resolution_refaults_and_counts_major():
    """A fault woken unresolved faults again (new message); its completion after a second wait is counted
    major (FAULT_FLAG_TRIED), as measured on the host."""
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    acc = b.thread("t").access(r.addr, 1, True, fill=1)
    assert len(u.read_msgs()) == 1
    u.wake(r.addr, PS)
    assert not acc.done and len(u.read_msgs()) == 1
    u.zeropage(r.addr, PS)
    assert acc.done and (acc.result().minflt, acc.result().majflt) == (0, 1)


def test_dontwake_then_wake():
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"hello")
    acc = b.thread("t").access(r.addr, 5, False, want_data=True)
    assert u.copy(r.addr, src.addr, PS, uapi.CopyMode.DONTWAKE) == PS
    assert not acc.done
    u.wake(r.addr, PS)
    assert acc.done and acc.result().data == b"hello"


def test_handler_resolves_by_policy_and_logs():
    b, r, u = setup(mode=uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    src = b.mmap(r.len, MemType.ANON)
    b.write(src.addr + PS, b"\x42" * PS)
    with b.fault_handler(u, HandlerPolicy(missing="copy", base=r.addr, src=src.addr)) as h:
        acc = b.thread("t").access(r.addr + PS, 1, False, want_data=True)
        assert acc.done and acc.result().data == b"\x42"
        (ev,) = h.events()
        assert (ev.action, ev.err, ev.result, ev.msg.address) == ("copy", 0, PS, r.addr + PS)
        assert h.stats()["resolved"] == 1


def test_caller_access_into_missing_page_raises_and_leaves_nothing():
    """backend.write/read from the caller cannot block the emulator: EDEADLK, no message left queued."""
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    with pytest.raises(UffdError) as ei:
        b.write(r.addr, b"x")
    assert ei.value.errno == errno.EDEADLK
    assert u.read_msgs() == [] and not pm(b, r.addr).present
    with b.fault_handler(u, HandlerPolicy(missing="zeropage")):
        assert b.read(r.addr, 4) == bytes(4)      # with a handler running it resolves


def test_poison_sigbus_and_feature_sigbus():
    b, r, u = setup(mode=uapi.RegisterMode.MISSING, features=uapi.Feature.SIGBUS)
    acc = b.thread("t").access(r.addr, 1, False)
    assert acc.done and acc.result().sigbus and acc.result().si_code == 2 and u.read_msgs() == []
    u.poison(r.addr + PS, PS)
    res = b.thread("t").access(r.addr + PS, 1, True, fill=1).result()
    assert res.sigbus and res.fault_addr == r.addr + PS


# -- soft-dirty (CONFIG_MEM_SOFT_DIRTY=y in the emulator; off on this host) ------------------------

def test_copy_marks_soft_dirty_zeropage_does_not():
    """Spec §7.1 A: COPY into a never-written page reads soft-dirty 1; ZEROPAGE reads 0."""
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"s")
    b.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    assert not pm(b, r.addr).soft_dirty and not pm(b, r.addr + PS).soft_dirty
    u.copy(r.addr, src.addr, PS)
    u.zeropage(r.addr + PS, PS)
    assert pm(b, r.addr).soft_dirty and not pm(b, r.addr + PS).soft_dirty
    assert b.smaps_private_dirty(r.addr) == PS     # and dirty, though nobody wrote it


def test_soft_dirty_off_reads_zero_and_clear_refs_is_a_noop():
    b, r, u = setup(soft_dirty=False, mode=0)
    write(b, r.addr)
    assert pm(b, r.addr).raw & SD == 0
    b.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    assert write(b, r.addr).minflt == 0            # PTEs were not write-protected [E O4]
    assert not b.soft_dirty().available and EmuBackend().soft_dirty().available


def test_new_mapping_is_soft_dirty_as_a_whole():
    b = EmuBackend()
    b.clear_refs(4)
    r = b.mmap(2 * PS, MemType.ANON)
    assert pm(b, r.addr).soft_dirty and not pm(b, r.addr).present      # VM_SOFTDIRTY, hole


def test_clear_refs_values():
    b = EmuBackend()
    for v in (1, 2, 3, 4, 5):
        b.clear_refs(v)
    for v in (0, 6, "x"):
        with pytest.raises(UffdError) as ei:
            b.clear_refs(v)
        assert ei.value.errno == errno.EINVAL


# -- the extra write fault after write-unprotect, by kernel version ---------------------------------

def unwp_then_write_faults(profile, memtype, soft_dirty=False, clear_refs=False, mode=0):
    b, r, u = setup(profile=profile, soft_dirty=soft_dirty, memtype=memtype, mode=0)
    write(b, r.addr, 1)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    if clear_refs:
        b.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    u.writeprotect(r.addr, PS, WP)
    u.writeprotect(r.addr, PS, mode)
    return write(b, r.addr, 2).minflt, pm(b, r.addr), b


@pytest.mark.parametrize("profile,memtype,faults", [
    ("5.19", MemType.ANON, 1),          # mwriteprotect_range() without MM_CP_TRY_CHANGE_WRITABLE
    ("6.1", MemType.ANON, 1),
    ("6.2", MemType.ANON, 1),
    ("6.18", MemType.ANON, 0),          # 931298e103c2: exclusive anon is upgraded
    ("7.3", MemType.ANON, 0),
    ("5.19", MemType.SHMEM, 0),         # vm_get_page_prot(VM_SHARED|VM_WRITE) = PAGE_SHARED
    ("6.18", MemType.SHMEM, 1),         # the §2.3.6 quirk, measured on the host
    ("6.18", MemType.SHMEM_PRIVATE, 0),
], ids=lambda x: str(x))
def test_extra_fault_after_unprotect(profile, memtype, faults):
    assert unwp_then_write_faults(profile, memtype)[0] == faults


def test_soft_dirty_tracking_keeps_the_write_fault():
    """Spec §7.1 B.4: with clear_refs 4 before WP/un-WP, 6.18 refuses the upgrade (the PTE is not soft-dirty),
    so the write faults and sets soft-dirty: tracking stays exact."""
    n, e, _ = unwp_then_write_faults("6.18", MemType.ANON, soft_dirty=True, clear_refs=True)
    assert n == 1 and e.soft_dirty


# -- the 2022 RFC hints (never merged) ----------------------------------------------------------------

def test_rfc_lost_write_and_its_fix():
    """rfc-hints: un-protect maps a clean PTE writable although soft-dirty tracking is on: the next write
    takes no fault and leaves soft-dirty 0 — the write is lost to the tracker (the thread's last mail).
    rfc-hints-fixed: no upgrade without WRITE_LIKELY, so the write faults and soft-dirty reads 1; with
    WRITE_LIKELY the upgrade happens and the PTE is marked dirty+soft-dirty at once."""
    n, e, _ = unwp_then_write_faults("rfc-hints", MemType.ANON, soft_dirty=True, clear_refs=True)
    assert (n, e.soft_dirty) == (0, False)
    n, e, _ = unwp_then_write_faults("rfc-hints-fixed", MemType.ANON, soft_dirty=True, clear_refs=True)
    assert (n, e.soft_dirty) == (1, True)
    n, e, _ = unwp_then_write_faults("rfc-hints-fixed", MemType.ANON, soft_dirty=True, clear_refs=True,
                                     mode=P.UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY)
    assert (n, e.soft_dirty) == (0, True)


def test_rfc_copy_is_clean_without_write_likely():
    for profile, mode, dirty in (("rfc-hints", 0, False), ("rfc-hints", P.UFFDIO_COPY_MODE_WRITE_LIKELY, True),
                                 ("6.18", 0, True)):
        b, r, u = setup(profile=profile, mode=uapi.RegisterMode.MISSING)
        src = b.mmap(PS, MemType.ANON)
        b.write(src.addr, b"s")
        b.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
        u.copy(r.addr, src.addr, PS, mode)
        assert pm(b, r.addr).soft_dirty == dirty and (b.smaps_private_dirty(r.addr) == PS) == dirty, profile
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    with pytest.raises(UffdError) as ei:            # the hint bits are EINVAL on a real profile
        u.copy(r.addr, r.addr, PS, P.UFFDIO_COPY_MODE_WRITE_LIKELY)
    assert ei.value.errno == errno.EINVAL


def test_rfc_zeropage_write_likely_allocates():
    b, r, u = setup(profile="rfc-hints", mode=uapi.RegisterMode.MISSING)
    u.zeropage(r.addr, PS, P.UFFDIO_ZEROPAGE_MODE_WRITE_LIKELY)
    u.zeropage(r.addr + PS, PS)
    assert write(b, r.addr).minflt == 0 and write(b, r.addr + PS).minflt == 1   # no COW for the hinted page


# -- TLB flushes (x86 pte_flags_need_flush) --------------------------------------------------------------

@pytest.mark.parametrize("old,new,flush", [
    (tlb._PAGE_PRESENT | tlb._PAGE_RW | tlb._PAGE_DIRTY, tlb._PAGE_PRESENT | tlb._PAGE_SAVED_DIRTY, True),
    (tlb._PAGE_PRESENT | tlb._PAGE_RW, tlb._PAGE_PRESENT, True),                 # clean RW -> RO
    (tlb._PAGE_PRESENT, tlb._PAGE_PRESENT | tlb._PAGE_RW, True),                 # RO -> RW
    (tlb._PAGE_PRESENT | tlb._PAGE_UFFD_WP, tlb._PAGE_PRESENT, False),           # software bit
    (tlb._PAGE_PRESENT | tlb._PAGE_ACCESSED, tlb._PAGE_PRESENT, False),          # A ignored for PTEs
    (0, tlb._PAGE_PRESENT | tlb._PAGE_RW, False),                                # was not present
    (tlb._PAGE_PRESENT | 0x1000, tlb._PAGE_PRESENT | 0x2000, True),              # PFN changed
])
def test_pte_needs_flush_table(old, new, flush):
    assert tlb.pte_needs_flush(old, new) is flush


def test_rfc_clean_wp_rule():
    P_, RW, D = tlb._PAGE_PRESENT, tlb._PAGE_RW, tlb._PAGE_DIRTY
    assert tlb.pte_needs_flush(P_ | RW, P_, clean_wp_noflush=True) is False
    assert tlb.pte_needs_flush(P_ | RW | D, P_ | tlb._PAGE_SAVED_DIRTY, clean_wp_noflush=True) is True


def flushes(b, fn):
    before = b.tlb_flushes
    fn()
    return b.tlb_flushes - before


@pytest.mark.parametrize("sw,expect", [({}, 1), ({"clean_wp_noflush": True}, 0)], ids=["mainline", "rfc-12/14"])
def test_flush_counts_spec_7_1_c(sw, expect):
    """WP of a clean writable anon PTE (after MADV_FREE) flushes once in mainline, never with RFC 12/14;
    un-WP that upgrades anon flushes; un-WP of shmem (no upgrade) does not [spec §6, E t6]."""
    b, r, u = setup(mode=0, **sw)
    write(b, r.addr)
    b.madvise(r.addr, PS, uapi.MADV_FREE)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    assert flushes(b, lambda: u.writeprotect(r.addr, PS, WP)) == expect
    assert flushes(b, lambda: u.writeprotect(r.addr, PS, WP)) == 0            # already protected
    assert flushes(b, lambda: u.writeprotect(r.addr, PS, 0)) == (1 if not sw else 0)
    b, r, u = setup(memtype=MemType.SHMEM, mode=0)
    write(b, r.addr)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    assert flushes(b, lambda: u.writeprotect(r.addr, PS, WP)) == 1
    assert flushes(b, lambda: u.writeprotect(r.addr, PS, 0)) == 0
    assert flushes(b, lambda: u.writeprotect(r.addr + PS, PS, WP)) == 0        # marker on a none PTE
    assert flushes(b, lambda: b.clear_refs(4)) == 1                            # flush_tlb_mm() always


# -- version switches beyond the fault ------------------------------------------------------------------

def test_copy_over_guard_marker_6_18_vs_7_3():
    for profile, ok in (("6.18", True), ("7.3", False)):
        b, r, u = setup(profile=profile, mode=uapi.RegisterMode.MISSING)
        src = b.mmap(PS, MemType.ANON)
        b.madvise(r.addr, PS, uapi.MADV_GUARD_INSTALL)
        assert pm(b, r.addr).guard
        try:
            u.copy(r.addr, src.addr, PS)
            assert ok
        except UffdError as e:
            assert not ok and e.errno == errno.EEXIST


def test_old_profiles_lack_new_ioctls():
    b, r, u = setup(profile="5.19", mode=uapi.RegisterMode.MISSING)
    ioctls = u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    assert not ioctls & uapi.Ioctl.POISON and not ioctls & uapi.Ioctl.MOVE
    for fn in (lambda: u.poison(r.addr, PS), lambda: u.move(r.addr, r.addr + PS, PS)):
        with pytest.raises(UffdError) as ei:
            fn()
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(UffdError):
        b.pagemap_scan(r.addr, r.end)
    with pytest.raises(UffdError):
        u2 = b.userfaultfd()
        u2.api(uapi.Feature.MOVE)


def test_move_dirty_follows_source_since_6_15():
    b, r, u = setup(mode=uapi.RegisterMode.MISSING)
    s = b.mmap(2 * PS, MemType.ANON)
    write(b, s.addr)
    b.madvise(s.addr, PS, uapi.MADV_FREE)         # clean now
    u.move(r.addr, s.addr, PS)
    assert b.smaps_private_dirty(r.addr) == 0 and pm(b, r.addr).soft_dirty


def test_pagemap_scan_written_and_wp_matching():
    F = uapi.Feature
    b, r, u = setup(features=F.WP_ASYNC, mode=uapi.RegisterMode.WP, pages=8)
    C = uapi.PageCategory
    u.writeprotect(r.addr, r.len, WP)             # markers everywhere (WP_ASYNC implies WP_UNPOPULATED)
    write(b, r.addr + 2 * PS)                     # async: resolved without a message
    assert u.read_msgs() == []
    res = pagemap.scan_all(b, r.addr, r.end, category_mask=C.WRITTEN, return_mask=C.WRITTEN,
                           flags=uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC)
    assert res.regions == [(r.addr + 2 * PS, r.addr + 3 * PS, C.WRITTEN)]
    assert pm(b, r.addr + 2 * PS).uffd_wp        # re-protected by WP_MATCHING
    res = b.pagemap_scan(r.addr, r.end, return_mask=C.PRESENT | C.WRITTEN, vec_len=1)
    assert res.walk_end < r.end and len(res.regions) == 1


# -- sparseness --------------------------------------------------------------------------------------

def test_one_tib_region_costs_what_is_touched():
    """What the walks of a 1 TiB region find (their cost, counted: tests/test_emu_sparse.py)."""
    TiB = 1 << 40
    b = EmuBackend()
    r = b.mmap(TiB, MemType.ANON)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"x")
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, TiB, uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    for off in (0, TiB // 2, TiB - PS):
        u.copy(r.addr + off, src.addr, PS)
    u.writeprotect(r.addr, TiB, WP)
    u.writeprotect(r.addr, TiB, 0)
    res = pagemap.scan_all(b, r.addr, r.end, return_mask=uapi.PageCategory.PRESENT)
    b.madvise(r.addr, TiB, uapi.MADV_DONTNEED)
    u.unregister(r.addr, TiB)
    b.munmap(r.addr, TiB)
    assert [(s - r.addr, e - s) for s, e, c in res.regions if c] == [(0, PS), (TiB // 2, PS), (TiB - PS, PS)]
    assert len(b.mm.ptes) <= 1


@pytest.mark.parametrize("advice", [3])   # WILLNEED (HUGEPAGE, COLLAPSE: tests/test_thp.py)
def test_madvise_not_modelled_is_said(advice):
    """Advice the kernel takes but the model does not carry out is refused as not modelled (exit 4), never
    answered with a guess (EINVAL, or silently nothing)."""
    from uffdctl.errors import NotModelled
    b = EmuBackend(profile="6.18", soft_dirty=False)
    r = b.mmap(2 * PS, MemType.ANON)
    b.write(r.addr, b"x")
    before = b.pagemap(r.addr, 2)
    with pytest.raises(NotModelled) as ei:
        b.madvise(r.addr, r.len, advice)
    assert ei.value.exit_code == 4 and "not modelled: madvise MADV_" in str(ei.value)
    assert b.pagemap(r.addr, 2) == before          # and nothing changed
    b.close()


def test_the_fast_constructors_build_what_the_classes_build():
    """mm_types.new_anon_page / new_present_pte (the mfill hot path's) set every slot as Folio(...) / Pte(...) do:
    a slot added to a class and not to its fast constructor fails here (and reads as AttributeError there)."""
    from uffdctl.emu.mm.mm_types import Folio, Pte, new_anon_page, new_present_pte
    data = bytearray(b"abc")
    ref = Folio(0x123, PS, True, data)
    ref.mapcount = 1
    got = new_anon_page(0x123, data)
    assert {s: getattr(got, s) for s in Folio.__slots__} == {s: getattr(ref, s) for s in Folio.__slots__}
    for bits in [(False, False, True, False, False, True), (True, True, True, True, True, False),
                 (False, True, False, True, False, False)]:
        ref, got = Pte(got, *bits), new_present_pte(got, *bits)
        assert {s: getattr(got, s) for s in Pte.__slots__} == {s: getattr(ref, s) for s in Pte.__slots__}


def test_a_ranged_fill_pauses_the_gc_only_for_itself(monkeypatch):
    """A COPY / ZEROPAGE of 256+ pages runs with the cyclic GC paused (mm/userfaultfd.py): on again after it,
    after one that raised, and never turned on when the caller had it off."""
    import gc
    b, r, u = setup(pages=1024, mode=uapi.RegisterMode.MISSING)
    src = b.mmap(512 * PS, MemType.ANON)
    seen = []
    real = b.mm.mfill_atomic_anon

    def spy(*a):
        seen.append(gc.isenabled())
        return real(*a)

    def boom(*a):
        raise RuntimeError("boom")
    monkeypatch.setattr(b.mm, "mfill_atomic_anon", spy)
    assert gc.isenabled()
    assert u.copy(r.addr, src.addr, 256 * PS) == 256 * PS
    assert u.copy(r.addr + 256 * PS, src.addr, PS) == PS          # short: not paused
    assert seen == [False, True] and gc.isenabled()
    monkeypatch.setattr(b.mm, "mfill_atomic_anon", boom)
    with pytest.raises(RuntimeError):
        u.copy(r.addr + 512 * PS, src.addr, 256 * PS)
    assert gc.isenabled()
    monkeypatch.setattr(b.mm, "mfill_atomic_anon", spy)
    gc.disable()
    try:
        assert u.zeropage(r.addr + 768 * PS, 256 * PS) == 256 * PS
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen[-1] is False and len(seen) == 3
    b.close()
