"""Soft-dirty and the 2022 thread's version-dependent behaviours, on the running kernel.

Two kinds of tests:

- ``softdirty``-marked tests need CONFIG_MEM_SOFT_DIRTY.  The host (6.18) has it
  off, so there they skip with the round trip's reason ("CONFIG_MEM_SOFT_DIRTY
  off: round trip read 0") and the matrix reports them UNSUPPORTED; ``make
  test-vm`` runs them in a stock 6.1 kernel under QEMU with
  UFFDCTL_REQUIRE_SOFTDIRTY=1, where such a skip is a failure.
- The write-fault tests need no soft-dirty and run everywhere; they assert the
  expectation for the kernel they run on.

Every expectation is keyed by kernel version (``EXPECT``), each row with its
source: the spec (/work/shared/spec/kernel-semantics.md, section given), a
measurement on the host ([E] in the spec), or a measurement made with
scripts/vmtest in Debian's 6.1.192 (``VM-6.1``) or 6.12.117 (``VM-6.12``).
All mmaps of a test happen before ``clear_refs 4``: a new VMA is VM_SOFTDIRTY
and would read soft-dirty as a whole.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

from conftest import feature_reason, make_backend, require_softdirty
from uffdctl import pagemap, uapi
from uffdctl.backend import MemType
from uffdctl.kernel import parse_version, running_version

PS = uapi.PAGE_SIZE
INF = (999,)


@dataclass(frozen=True)
class Expect:
    since: tuple        # first version (inclusive)
    until: tuple        # first version it no longer holds (exclusive)
    value: int
    source: str


def want(name: str) -> Expect:
    """The expectation ``EXPECT[name]`` for the running kernel."""
    return expected(EXPECT[name], running_version())


def expected(rows: list[Expect], version: tuple[int, ...]) -> Expect:
    for r in rows:
        if r.since <= version < r.until:
            return r
    pytest.fail(f"no recorded expectation for kernel {'.'.join(map(str, version))}: add a row (and its source)",
                pytrace=False)


EXPECT = {
    # soft-dirty of a never-written page after the resolving ioctl (clear_refs 4 first)
    "copy_soft_dirty": [
        Expect((5, 16), INF, 1, "spec §2.3.2/§7.1 A: mfill_atomic_install_pte() pte_mkdirty() also sets soft-dirty "
                                "(9ae0f87d009c, 5.16); VM-6.1 and VM-6.12 measured 1 (anon, anon MODE_WP, shmem)"),
    ],
    "zeropage_anon_soft_dirty": [
        Expect((5, 16), INF, 0, "spec §2.3.3: a clean special zero-page PTE; §7.1 A control; VM-6.1 and VM-6.12 "
                                "measured 0"),
    ],
    "zeropage_shmem_soft_dirty": [
        Expect((5, 16), INF, 1, "spec §2.2: shmem ZEROPAGE installs a zeroed page-cache page like COPY; VM-6.1 "
                                "and VM-6.12 measured 1"),
    ],
    "continue_soft_dirty": [
        Expect((5, 16), INF, 1, "spec §2.2/§2.3.2: CONTINUE goes through mfill_atomic_install_pte(); VM-6.1 and "
                                "VM-6.12 measured 1"),
    ],
    "move_soft_dirty": [
        Expect((6, 8), INF, 1, "spec §2.3.5: MOVE marks the destination soft-dirty always (UFFDIO_MOVE is 6.8+); "
                               "VM-6.12 measured 1"),
    ],
    # write faults of the first write after UFFDIO_WRITEPROTECT on -> off, page written before
    "anon_unprotect_write_faults": [
        Expect((5, 19), (6, 3), 1, "spec §1.4/§7.1 B3: mwriteprotect_range without MM_CP_TRY_CHANGE_WRITABLE; "
                                   "VM-6.1 measured 1"),
        Expect((6, 3), INF, 0, "spec §2.3.6 (931298e103c2): exclusive anon upgraded on un-protect; [E] 6.18: 0; "
                               "VM-6.12 measured 0"),
    ],
    "shmem_unprotect_write_faults": [
        Expect((5, 19), (6, 3), 0, "spec §1.4: vm_get_page_prot(VM_SHARED|VM_WRITE) is writable; VM-6.1 measured 0"),
        Expect((6, 3), INF, 1, "spec §2.3.6 shared-memory quirk; [E] 6.18: 1; VM-6.12 measured 1"),
    ],
    # clear_refs 4, WP on -> off, then a write: soft-dirty after the write (1 = tracked)
    "shmem_unprotect_soft_dirty": [
        Expect((5, 19), (6, 3), 0, "issue 6 table: 6.1 un-protect maps the PTE writable, the write escapes "
                                   "soft-dirty; VM-6.1 measured 0"),
        Expect((6, 3), INF, 1, "spec §2.3.6: shmem stays read-only after un-protect, the write faults and "
                               "marks soft-dirty; VM-6.12 measured 1"),
    ],
    "shmem_unprotect_soft_dirty_faults": [
        Expect((5, 19), (6, 3), 0, "as above: no fault, VM-6.1 measured 0"),
        Expect((6, 3), INF, 1, "spec §2.3.6; VM-6.12 measured 1"),
    ],
    "anon_unprotect_soft_dirty": [
        Expect((5, 19), INF, 1, "spec §7.1 B4: can_change_pte_writable() refuses a non-soft-dirty PTE (>= 6.3); "
                                "< 6.3 never upgrades; VM-6.1 and VM-6.12 measured 1"),
    ],
    "anon_unprotect_soft_dirty_faults": [
        Expect((5, 19), INF, 1, "spec §7.1 B4; VM-6.1 and VM-6.12 measured 1"),
    ],
}


# -- fixtures and helpers --------------------------------------------------------------------

WARM = "__warm"


@pytest.fixture
def kb():
    """Kernel backend with the touching thread started (its stack is mmapped before any clear_refs) and a
    scratch page for :func:`write_faults`' warm-up write."""
    b = make_backend("kernel")
    b.thread("main")
    b.mmap(PS, MemType.ANON, name=WARM)
    yield b
    b.close()


@pytest.fixture
def sd(kb):
    """The kernel backend, on a kernel whose soft-dirty round trip works."""
    probe = kb.soft_dirty()
    if not probe.available:
        require_softdirty(probe.reason)
    return kb


def need(b, features: int) -> None:
    """Skip (a property of the kernel, never a failure to reach it) when UFFDIO_API lacks ``features``."""
    reason = feature_reason(b, features)
    if reason:
        pytest.skip(reason)


def soft_dirty(b, addr: int) -> int:
    return int(pagemap.entry(b, addr).soft_dirty)


def touch(b, addr: int):
    acc = b.thread("main").access(addr, 1, True, fill=0x5A)
    assert acc.wait(5), f"write at {addr:#x} blocked (unexpected userfault)"
    r = acc.result()
    assert not r.sigbus, f"SIGBUS writing {addr:#x}"
    return r


def write_faults(b, addr: int) -> int:
    """Minor faults the main thread takes writing one byte at ``addr``.

    A throwaway write first: clear_refs 4 write-protects every PTE of the process, including the touching
    thread's stack and TLS (uffdctl_access writes its sigjmp_buf pointer there between its two getrusage
    calls), and glibc hands a later thread the same cached stack.  Without the warm-up the count includes
    those faults: 3 instead of 1 (measured in VM-6.1), or 1 instead of 0 in a later test.
    """
    touch(b, b.regions[WARM].addr)
    return touch(b, addr).minflt


def clear_soft_dirty(b, *addrs: int) -> None:
    """clear_refs 4, then check it took: every address reads soft-dirty 0."""
    b.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    for a in addrs:
        assert soft_dirty(b, a) == 0, f"bit 55 still set at {a:#x} after clear_refs 4"


def populated(b, memtype: MemType, name: str):
    r = b.mmap(PS, memtype, name=name)
    b.write(r.addr, b"\x11")
    return r


# -- soft-dirty itself -----------------------------------------------------------------------

@pytest.mark.softdirty
def test_roundtrip(sd):
    """clear_refs 4 clears bit 55 of a written page; the next write sets it again."""
    p = sd.soft_dirty()
    assert p.available, p.reason
    assert not p.raw_before & uapi.PM_SOFT_DIRTY and p.raw_after & uapi.PM_SOFT_DIRTY


@pytest.mark.softdirty
def test_roundtrip_leaves_the_caller_alone(kb):
    """The round trip runs in a process of its own, so asking it first in the middle of the work neither
    clears the caller's soft-dirty bits (clear_refs 4 acts on a whole mm) nor makes a hole of the caller's
    newest region soft-dirty (its scratch page merged into that VMA and left it VM_SOFTDIRTY).  In-process,
    it did both: soft-dirty.c test_simple read 1 at iteration 0 on 6.1.192."""
    r = kb.mmap(2 * PS, MemType.ANON, name="mine")
    kb.write(r.addr, b"\x01")
    kb.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    kb.write(r.addr, b"\x02")
    probe = kb.soft_dirty()                      # the backend's first soft-dirty question: the probe runs now
    if not probe.available:
        require_softdirty(probe.reason)
    assert soft_dirty(kb, r.addr) == 1, "the probe cleared the caller's soft-dirty bit"
    assert soft_dirty(kb, r.addr + PS) == 0, "the probe left the caller's VMA VM_SOFTDIRTY"


@pytest.mark.softdirty
def test_the_tools_own_page_leaves_a_region_clean(sd):
    """A page the tool maps for itself next to a region (the zero-PFN probe of a script's first `pagemap`) and
    unmaps again leaves the region's never-touched page soft-clean: it never merges into the region's VMA, so
    the region never takes the new VMA's VM_SOFTDIRTY (mmap_region())."""
    r = sd.mmap(2 * PS, MemType.ANON, name="mine")
    sd.munmap(r.addr, PS)
    sd.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    assert soft_dirty(sd, r.addr + PS) == 0
    t = sd.mmap(PS, MemType.ANON, name="__tool", addr=r.addr)
    sd.munmap(t.addr, PS)
    assert t.addr == r.addr, "the kernel did not honour the address hint: the test cannot place the page"
    assert soft_dirty(sd, r.addr + PS) == 0, "the region took the tool page's VM_SOFTDIRTY"


@pytest.mark.softdirty
def test_clear_refs_write_protects(sd):
    """clear_refs 4 write-protects: the next write takes exactly one fault and marks soft-dirty (spec §5.3)."""
    r = populated(sd, MemType.ANON, "p")
    clear_soft_dirty(sd, r.addr)
    assert write_faults(sd, r.addr) == 1
    assert soft_dirty(sd, r.addr) == 1
    assert write_faults(sd, r.addr) == 0, "second write faulted: clear_refs left the PTE read-only"


@pytest.mark.softdirty
def test_new_vma_is_soft_dirty(sd):
    """A mapping made after clear_refs 4 is VM_SOFTDIRTY: even its holes read bit 55 = 1 (spec §5.2)."""
    old = sd.mmap(PS, MemType.ANON, name="old")
    clear_soft_dirty(sd, old.addr)
    new = sd.mmap(PS, MemType.ANON, name="new")
    assert not pagemap.entry(sd, new.addr).present
    assert soft_dirty(sd, new.addr) == 1
    assert soft_dirty(sd, old.addr) == 0


@pytest.mark.kernel
def test_clear_refs_4_write_faults(kb):
    """Runs on every kernel: with soft-dirty, clear_refs 4 write-protects (1 fault); without it, it is
    accepted and does nothing (0 faults, bit 55 stays 0; spec §5.4 [E] O3, O4)."""
    have = kb.soft_dirty().available
    r = populated(kb, MemType.ANON, "p")
    kb.clear_refs(uapi.CLEAR_REFS_SOFT_DIRTY)
    assert write_faults(kb, r.addr) == (1 if have else 0)
    assert soft_dirty(kb, r.addr) == (1 if have else 0)


# -- what each resolving ioctl does to soft-dirty (spec §5.2, §7.1 A) -------------------------

COPY_CASES = [
    pytest.param(MemType.ANON, 0, id="anon"),
    pytest.param(MemType.ANON, uapi.CopyMode.WP, id="anon-mode_wp"),
    pytest.param(MemType.SHMEM, 0, id="shmem"),
]


@pytest.mark.softdirty
@pytest.mark.parametrize("memtype,mode", COPY_CASES)
def test_copy_marks_soft_dirty(sd, memtype, mode):
    """UFFDIO_COPY installs a dirty PTE and pte_mkdirty() sets soft-dirty: a page the application never
    wrote reads soft-dirty 1 (the thread's "misleading soft-dirty"; spec §7.1 A)."""
    src = populated(sd, MemType.ANON, "src")
    dst = sd.mmap(PS, memtype, name="dst")
    u = sd.userfaultfd()
    u.api(0)
    u.register(dst.addr, PS, uapi.RegisterMode.MISSING | (uapi.RegisterMode.WP if mode else 0))
    clear_soft_dirty(sd, dst.addr)
    w = want("copy_soft_dirty")
    assert u.copy(dst.addr, src.addr, PS, mode) == PS
    e = pagemap.entry(sd, dst.addr)
    assert e.present and e.uffd_wp == bool(mode)
    assert int(e.soft_dirty) == w.value, w.source


@pytest.mark.softdirty
@pytest.mark.parametrize("memtype", [MemType.ANON, MemType.SHMEM], ids=str)
def test_zeropage_soft_dirty(sd, memtype):
    """UFFDIO_ZEROPAGE: anon maps the zero page (clean, soft-dirty 0); shmem installs a new page like COPY
    (soft-dirty 1)."""
    w = want(f"zeropage_{memtype.value}_soft_dirty")
    dst = sd.mmap(PS, memtype, name="dst")
    u = sd.userfaultfd()
    u.api(0)
    u.register(dst.addr, PS, uapi.RegisterMode.MISSING)
    clear_soft_dirty(sd, dst.addr)
    assert u.zeropage(dst.addr, PS) == PS
    assert pagemap.entry(sd, dst.addr).present
    assert soft_dirty(sd, dst.addr) == w.value, w.source


@pytest.mark.softdirty
def test_continue_marks_soft_dirty(sd):
    """UFFDIO_CONTINUE maps an existing page-cache page through mfill_atomic_install_pte: soft-dirty 1."""
    need(sd, uapi.Feature.MINOR_SHMEM)
    r = sd.mmap(PS, MemType.SHMEM, name="dst")
    alias = sd.alias(r)
    sd.write(alias.addr, b"\x22")          # the page cache has the page; r has no PTE
    u = sd.userfaultfd()
    u.api(uapi.Feature.MINOR_SHMEM)
    u.register(r.addr, PS, uapi.RegisterMode.MINOR)
    clear_soft_dirty(sd, r.addr)
    assert not pagemap.entry(sd, r.addr).present
    w = want("continue_soft_dirty")
    assert u.continue_(r.addr, PS) == PS
    assert pagemap.entry(sd, r.addr).present
    assert soft_dirty(sd, r.addr) == w.value, w.source


@pytest.mark.softdirty
def test_move_marks_soft_dirty(sd):
    """UFFDIO_MOVE always marks the destination soft-dirty, even from a clean source (spec §2.3.5)."""
    need(sd, uapi.Feature.MOVE)
    src = populated(sd, MemType.ANON, "src")
    dst = sd.mmap(PS, MemType.ANON, name="dst")
    u = sd.userfaultfd()
    u.api(uapi.Feature.MOVE)
    u.register(dst.addr, PS, uapi.RegisterMode.MISSING)
    clear_soft_dirty(sd, src.addr, dst.addr)
    w = want("move_soft_dirty")
    assert u.move(dst.addr, src.addr, PS) == PS
    assert pagemap.entry(sd, dst.addr).present
    assert soft_dirty(sd, dst.addr) == w.value, w.source


# -- write-unprotect: the extra fault, and the write that escapes soft-dirty ------------------

def _wp_roundtrip(b, r):
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, PS, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, PS, uapi.WriteprotectMode.WP)
    assert pagemap.entry(b, r.addr).uffd_wp
    u.writeprotect(r.addr, PS, 0)
    assert not pagemap.entry(b, r.addr).uffd_wp
    return u


@pytest.mark.kernel
@pytest.mark.parametrize("memtype", [MemType.ANON, MemType.SHMEM], ids=str)
def test_unprotect_write_faults(kb, memtype):
    """Write a page, WP on -> off, write again: faults of that write (no soft-dirty involved).

    5.19-6.2: anon 1 (the extra fault), shmem 0; 6.3+: anon 0, shmem 1."""
    w = want(f"{memtype.value}_unprotect_write_faults")
    r = populated(kb, memtype, "p")
    _wp_roundtrip(kb, r)
    assert write_faults(kb, r.addr) == w.value, w.source


@pytest.mark.softdirty
@pytest.mark.parametrize("memtype", [MemType.ANON, MemType.SHMEM], ids=str)
def test_unprotect_soft_dirty(sd, memtype):
    """clear_refs 4, WP on -> off, write: is the write seen by soft-dirty?

    anon: always (1 fault, bit 55 = 1).  shmem on 5.19-6.2: un-protect maps the PTE writable and the write
    escapes soft-dirty tracking (0 faults, bit 55 stays 0); on 6.3+ it faults and is tracked."""
    want_sd = want(f"{memtype.value}_unprotect_soft_dirty")
    want_faults = want(f"{memtype.value}_unprotect_soft_dirty_faults")
    r = populated(sd, memtype, "p")
    u = sd.userfaultfd()
    u.api(0)
    u.register(r.addr, PS, uapi.RegisterMode.WP)
    clear_soft_dirty(sd, r.addr)
    u.writeprotect(r.addr, PS, uapi.WriteprotectMode.WP)
    u.writeprotect(r.addr, PS, 0)
    faults = write_faults(sd, r.addr)
    assert (faults, soft_dirty(sd, r.addr)) == (want_faults.value, want_sd.value), \
        f"{want_faults.source} / {want_sd.source}"


# -- the emulator's profile for this kernel, held to it ---------------------------------------

DIFF_EXAMPLES = int(os.environ.get("UFFDCTL_DIFF_KERNEL_EXAMPLES", "100"))


def _this_kernels_runner():
    """(runner, label, offered features) for a differential against the running kernel with the emulator
    profile of its release (6.1.176: the 6.1 profile less the stable backports 6.1.176 lacks;
    UFFDCTL_EMU_PROFILE / UFFDCTL_EMU_SWITCHES for a kernel vmtest built with patches: its twin profile and
    the switches the patches turn) and its soft-dirty configuration; skips where no profile models the
    kernel's series."""
    import test_differential as td
    from uffdctl.emu import PROFILES, EmuBackend
    from uffdctl.emu.profiles import is_profile

    series = os.environ.get("UFFDCTL_EMU_PROFILE") or "%d.%d.%d" % running_version()
    switches = {k: bool(int(v)) for k, v in (kv.split("=", 1) for kv in
                                              os.environ.get("UFFDCTL_EMU_SWITCHES", "").split(",") if kv)}
    if not is_profile(series):
        pytest.skip(f"no emulator profile for kernel {series} (profiles: {', '.join(PROFILES)})")
    probe = make_backend("kernel")   # closed before the sequences run: they alone own the process
    try:
        have_sd = probe.soft_dirty().available
        with probe.userfaultfd() as u:
            offered = u.api(0).features
    finally:
        probe.close()
    runner = td.Runner(make_emu=lambda: EmuBackend(profile=series, soft_dirty=have_sd, **switches))
    return runner, f"profile {series}{switches or ''} (soft-dirty {int(have_sd)})", offered


@pytest.mark.kernel
def test_differential_this_kernel():
    """tests/test_differential.py's random sequences, with the emulator profile named after the running kernel
    (6.1 in the 6.1 guest, 6.18 here) and its soft-dirty configuration: zero divergences.

    The generator's UFFDIO_API features are masked to what this kernel offers (6.1 has no WP_UNPOPULATED)."""
    import test_differential as td

    runner, label, offered = _this_kernels_runner()
    seed = int(os.environ.get("UFFDCTL_DIFF_SEED", "1"))
    with td.khugepaged_paused():
        for i in range(DIFF_EXAMPLES):
            seq = td.gen_sequence(random.Random(seed + i), runner.memtypes)
            seq["features"] &= offered
            d = runner.diverges(seq)
            if d is None:
                continue
            pytest.fail(f"{label}, seed {seed + i}: " + runner.report(seq, d), pytrace=False)


@pytest.mark.kernel
def test_found_sequences_this_kernel():
    """The reproducers in tests/data/differential/ (divergences the soak found, each fixed), replayed against
    the running kernel with its own profile: in the 6.1 and 6.12 guests they hold the older profiles to the
    cases the 6.18 soak found.  On the host it replays them without the swap device
    test_differential.py::test_sequences_the_soak_found gives them: the no-swap side of the same cases."""
    import json
    from pathlib import Path

    import test_differential as td

    runner, label, offered = _this_kernels_runner()
    ran, left = 0, []
    with td.khugepaged_paused():
        for path in sorted((Path(__file__).parent / "data" / "differential").glob("*.json")):
            seq = json.loads(path.read_text())
            if any(g["type"] not in runner.memtypes + ["anon"] for g in seq["regions"]):
                left.append(path.stem)        # a memory type this machine lacks (hugetlb without a pool)
                continue
            seq["features"] &= offered
            d = runner.diverges(seq)
            if d is not None:
                pytest.fail(f"{label}, {path.name}: " + runner.report(seq, d), pytrace=False)
            ran += 1
    print(f"{ran} sequences replayed; not here ({', '.join(runner.memtypes)} only): {', '.join(left) or 'none'}")
    assert ran, "no reproducer could run here"


def test_parse_version():
    assert parse_version("6.1.0-56-amd64", "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) "
                         "(gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) "
                         "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)") == (6, 1, 192)
    assert parse_version("6.18.44-fc-v595", "Linux version 6.18.44-fc-v595 (gcc ...)") == (6, 18, 44)
    assert parse_version("6.12.117+deb12-amd64", "... Debian 6.12.117-1~deb12u1 ...") == (6, 12, 117)
    with pytest.raises(ValueError):
        parse_version("unknown")


def test_expectations_cover_the_range():
    """Every behaviour has exactly one row for each version from its first (5.19 for uffd-wp, 5.16 for the
    installs, 6.8 for MOVE) on: no gap, no overlap, every row with its source."""
    for name, rows in EXPECT.items():
        rows = sorted(rows, key=lambda r: r.since)
        assert rows[0].since in ((5, 16), (5, 19), (6, 8)), name
        for a, b in zip(rows, rows[1:]):
            assert a.until == b.since, f"{name}: gap or overlap at {a.until}"
        assert rows[-1].until == INF, name
        assert all(r.source for r in rows), name
