"""THP (emu/mm/huge_memory.py, khugepaged.py) held to the host kernel, side by side: each case runs on the
kernel and on the emulator (profile 6.18, soft-dirty off) and the observations must be equal, and each
case also states on the emulator what it shows (so a model that does nothing fails too).

Observations are region-relative: PAGEMAP_SCAN runs (first page, end page, PRESENT|HUGE|PFNZERO|WRITTEN),
pagemap PFN offsets and the exclusive / uffd-wp bits, errnos, fault message offsets.  The kernel's THP
allocation can fail (fragmentation): a case whose kernel side got no PMD where the model has one is skipped
with the kernel's own thp_fault_fallback / thp_collapse_alloc_failed counts, never silently.
"""
from __future__ import annotations

import errno

import pytest

from conftest import make_backend, require_kernel
from uffdctl import uapi
from uffdctl.errors import UffdError
from uffdctl.registry import open_backend

M2 = 2 << 20
C = uapi.PageCategory
RET = int(C.HUGE | C.PRESENT | C.PFNZERO | C.WRITTEN)


def vmstat() -> dict:
    with open("/proc/vmstat") as f:
        return {k: int(v) for k, v in (ln.split() for ln in f)}


COLLAPSE_TRIES = 5


class Probe:
    def __init__(self, b):
        self.b = b

    def region(self, size=2 * M2, hp=True, memtype="anon"):
        b = self.b
        tmp = b.mmap(size + M2, memtype)
        a = (tmp.addr + M2 - 1) & ~(M2 - 1)
        b.munmap(tmp.addr, tmp.len)
        r = b.mmap(size, memtype, addr=a)
        if hp:
            b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
        return r

    def scan(self, r):
        s = self.b.pagemap_scan(r.addr, r.addr + r.len, category_anyof_mask=int(C.PRESENT | C.SWAPPED),
                                return_mask=RET)
        return [((x - r.addr) >> 12, (y - r.addr) >> 12, int(c)) for x, y, c in s.regions]

    def pm(self, r, i, n=1):
        v = self.b.pagemap(r.addr + i * 4096, n)
        pfn0 = v[0] & ((1 << 55) - 1)
        return [(e >> 63 & 1, e >> 61 & 1, e >> 57 & 1, e >> 56 & 1, (e & ((1 << 55) - 1)) - pfn0) for e in v]

    def madvise(self, r, advice, n=M2):
        for _ in range(COLLAPSE_TRIES):
            try:
                self.b.madvise(r.addr, n, advice)
                return "ok"
            except UffdError as e:
                # madvise(2): MADV_COLLAPSE's EAGAIN is "a kernel resource was temporarily unavailable" (a
                # page still in a per-CPU LRU batch or briefly referenced: once in a loaded make test, the
                # full-missing case): retried, as a caller would; an EAGAIN every time is still the answer
                if not (advice == uapi.MADV_COLLAPSE and e.errno == errno.EAGAIN):
                    return errno.errorcode.get(e.errno)
        return errno.errorcode.get(errno.EAGAIN)


# -- the cases: (probe) -> observation ------------------------------------------------------------------------
def read_fault(p):
    r = p.region(); p.b.read(r.addr, 1)
    return p.scan(r), p.pm(r, 0, 2)


def write_fault(p):
    r = p.region(); p.b.write(r.addr + 4096, b"x")
    return p.scan(r), p.pm(r, 0, 3)


def read_then_write(p):          # do_huge_zero_wp_pmd() (6.13): the huge zero PMD becomes a THP
    r = p.region(); p.b.read(r.addr, 1); p.b.write(r.addr + 8192, b"x")
    return p.scan(r), p.pm(r, 0, 2)


def nohugepage(p):
    r = p.region(hp=False); p.b.write(r.addr, b"x")
    return p.scan(r)


def missing_write(p):            # the PMD path's userfault: no PTE table; COPY then maps 4 KiB
    b = p.b
    r = p.region(); u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    acc = b.thread("t").access(r.addr + 4096 * 3, 1, True)
    m = u.wait_msgs(5); src = b.mmap(4096, "anon"); b.write(src.addr, b"y")
    u.copy(m[0].address & ~4095, src.addr, 4096); acc.wait(5)
    out = [(x.address - r.addr, x.flags) for x in m], p.scan(r)
    u.close()
    return out


def missing_read_zeropage(p):
    b = p.b
    r = p.region(); u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    acc = b.thread("t").access(r.addr + 4096 * 3, 1, False)
    m = u.wait_msgs(5); u.zeropage(r.addr, M2); acc.wait(5)
    out = [(x.address - r.addr, x.flags) for x in m], p.scan(r)
    u.close()
    return out


def wp_registered_fault(p):      # a WP registration does not stop THPs
    r = p.region(); u = p.b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    p.b.write(r.addr, b"x"); out = p.scan(r); u.close()
    return out


def wp_whole_pmd(p):             # pmd_mkuffd_wp(): stays huge; the WP fault, unprotect, still huge
    b = p.b
    r = p.region(); b.write(r.addr, b"x"); u = b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP); s1 = p.scan(r); wp = p.pm(r, 0, 2)
    acc = b.thread("t").access(r.addr + 4096 * 5, 1, True); m = u.wait_msgs(5)
    u.writeprotect(r.addr, M2, 0); acc.wait(5); s2 = p.scan(r)
    u.close()
    return s1, wp, [(x.address - r.addr, x.flags) for x in m], s2


def wp_part_of_pmd(p):           # split_huge_pmd()
    r = p.region(); p.b.write(r.addr, b"x"); u = p.b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, 4096 * 4, uapi.WriteprotectMode.WP); out = p.scan(r), p.pm(r, 3, 2); u.close()
    return out


def wp_huge_zero(p):
    r = p.region(); p.b.read(r.addr, 1); u = p.b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP); s1 = p.scan(r); wp = p.pm(r, 0, 2)
    u.writeprotect(r.addr, M2, 0); s2 = p.scan(r); u.close()
    return s1, wp, s2


def collapse_cases(p):
    b, out = p.b, {}
    r = p.region(); out["empty"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r)
    r = p.region(hp=False); b.write(r.addr, b"x"); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    out["one"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r), p.pm(r, 0, 2)
    r = p.region(hp=False); b.write(r.addr, b"x"); out["nohugepage"] = p.madvise(r, uapi.MADV_COLLAPSE)
    for mode in (uapi.RegisterMode.MISSING, uapi.RegisterMode.WP):
        r = p.region(hp=False); b.write(r.addr, b"x"); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
        u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, mode)
        out[f"armed-{mode}"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r); u.close()
    r = p.region(hp=False); b.write(r.addr, b"x" * M2); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    out["full-missing"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r); u.close()
    r = p.region(hp=False); b.write(r.addr, b"x" * M2); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr + 4096, 4096, uapi.WriteprotectMode.WP)
    out["uffd-wp-pte"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r); u.close()
    r = p.region(hp=False); b.read(r.addr, 4096 * 3); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    out["zero-ptes"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r)
    r = p.region(); b.read(r.addr, 1); out["huge-zero"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r)
    r = p.region(hp=False); b.write(r.addr, b"x"); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    out["short"] = p.madvise(r, uapi.MADV_COLLAPSE, 4096), p.scan(r)
    return out


def zap_protect_cases(p):
    b, out = p.b, {}
    r = p.region(); b.write(r.addr, b"x"); b.madvise(r.addr, 4096 * 8, uapi.MADV_DONTNEED)
    out["dontneed-part"] = p.scan(r), [x[:4] for x in p.pm(r, 7, 3)]
    r = p.region(); b.write(r.addr, b"x"); b.madvise(r.addr, M2, uapi.MADV_DONTNEED)
    out["dontneed-all"] = p.scan(r), b.pagemap_scan(r.addr, r.addr + M2, category_mask=int(C.WRITTEN),
                                                    return_mask=int(C.WRITTEN)).regions
    r = p.region(); b.write(r.addr, b"x"); b.mprotect(r.addr, 4096, uapi.PROT_READ); out["mprotect-part"] = p.scan(r)
    r = p.region(); b.write(r.addr, b"x"); b.mprotect(r.addr, M2, uapi.PROT_READ); s = p.scan(r)
    b.mprotect(r.addr, M2, uapi.PROT_READ | uapi.PROT_WRITE); b.write(r.addr, b"y"); out["mprotect-all"] = s, p.scan(r)
    r = p.region(); b.write(r.addr, b"x"); b.madvise(r.addr, M2, uapi.MADV_FREE); out["free-all"] = p.scan(r)
    r = p.region(); b.read(r.addr, 1); b.madvise(r.addr, 4096, uapi.MADV_DONTNEED); out["zero-part"] = p.scan(r)
    return out


def copy_into_pmd(p):           # mfill over a PMD leaf: EEXIST; over a split one: the PTE path (EEXIST too)
    b = p.b
    r = p.region(); b.write(r.addr, b"x"); u = b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    src = b.mmap(4096, "anon"); b.write(src.addr, b"y")
    out = []
    for dst in (r.addr + 4096, r.addr + M2 + 4096):
        try:
            out.append(u.copy(dst, src.addr, 4096))
        except UffdError as e:
            out.append((errno.errorcode.get(e.errno), e.done))
    out.append(p.scan(r)); u.close()
    return out


def huge_zero_split_keeps_uffd_wp(p):   # "propagate uffd-wp bit when PTE-mapping the huge zeropage"
    r = p.region(); p.b.read(r.addr, 1); u = p.b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP)
    p.b.madvise(r.addr, 4096, uapi.MADV_DONTNEED)
    out = p.scan(r), [x[2] for x in p.pm(r, 1, 3)]; u.close()
    return out


def collapse_after_close(p):     # the armed rule goes with the registration
    b = p.b
    r = p.region(hp=False); b.write(r.addr, b"x"); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    first = p.madvise(r, uapi.MADV_COLLAPSE); u.close()
    return first, p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r)


def collapse_full_wp_registered(p):
    b = p.b
    r = p.region(hp=False); b.write(r.addr, b"x" * M2); b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    out = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r), p.b.read(r.addr + 4096, 2); u.close()
    return out


def move_whole_pmd(p):           # move_pages_huge_pmd(): aligned, 2 MiB, dst PMD none
    b = p.b
    src = p.region(); b.write(src.addr, b"s" * M2)
    dst = p.region(); u = b.userfaultfd(); u.api(int(uapi.Feature.MOVE))
    u.register(dst.addr, dst.len, uapi.RegisterMode.MISSING)
    moved = u.move(dst.addr, src.addr, M2)
    out = moved, p.scan(dst), p.scan(src), b.read(dst.addr + M2 - 2, 2), p.pm(dst, 0, 2); u.close()
    return out


def move_pmd_unaligned(p):       # the src PMD is split and moved per PTE
    b = p.b
    src = p.region(); b.write(src.addr, b"s" * M2)
    dst = p.region(); u = b.userfaultfd(); u.api(int(uapi.Feature.MOVE))
    u.register(dst.addr, dst.len, uapi.RegisterMode.MISSING)
    moved = u.move(dst.addr + 4096, src.addr, M2)
    out = moved, p.scan(dst), p.scan(src), b.read(dst.addr + 4096, 2); u.close()
    return out


def mremap_wp_pmd_without_remap(p):   # move_huge_pmd() + clear_uffd_wp_pmd() (0cef0bb836e3)
    b = p.b
    r = p.region(M2); b.write(r.addr, b"x"); u = b.userfaultfd(); u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP)
    t = p.region(M2, hp=False); b.munmap(t.addr, t.len)
    new = b.mremap(r.addr, M2, M2, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, t.addr)
    moved = b.regions[r.name]
    out = new == t.addr, p.scan(moved), [x[2] for x in p.pm(moved, 0, 2)]; u.close()
    return out


def wp_async_pmd(p):             # wp_huge_pmd(): async WP at PTE level, after a split
    b = p.b
    r = p.region(); b.write(r.addr, b"x"); u = b.userfaultfd(); u.api(int(uapi.Feature.WP_ASYNC))
    u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP); s1 = p.scan(r)
    b.write(r.addr + 4096 * 5, b"y"); out = s1, p.scan(r), [x[2] for x in p.pm(r, 4, 3)], u.read_msgs(); u.close()
    return out


def shmem_collapse_cases(p):     # collapse_file(), retract_page_tables(), collapse_pte_mapped_thp()
    b, out = p.b, {}
    shm = "shmem"
    r = p.region(M2, hp=False, memtype=shm); b.write(r.addr, b"x")
    out["one"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r), b.smaps_vmas(r.addr, r.end)[0]["ShmemPmdMapped"]
    for mode in (uapi.RegisterMode.MISSING, uapi.RegisterMode.WP, uapi.RegisterMode.MINOR):
        r = p.region(M2, hp=False, memtype=shm); b.write(r.addr, b"x")
        u = b.userfaultfd(); u.api(int(uapi.Feature.MISSING_SHMEM | uapi.Feature.MINOR_SHMEM))
        u.register(r.addr, r.len, mode)
        out[f"hole-{mode}"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r); u.close()
    r = p.region(M2, hp=False, memtype=shm); b.write(r.addr, b"y" * M2)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    out["full-wp"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r), b.read(r.addr + 4096, 2); u.close()
    r = p.region(M2, hp=False, memtype=shm); b.write(r.addr, b"z" * M2)
    t = p.region(M2, hp=False); b.munmap(t.addr, t.len); a = b.alias_at(r, None, t.addr)   # a 2 MiB-aligned alias
    out["alias"] = p.madvise(r, uapi.MADV_COLLAPSE), p.scan(r), b.read(a.addr + 8192, 1), p.scan(a)
    return out


CASES = [read_fault, write_fault, read_then_write, nohugepage, missing_write, missing_read_zeropage,
         wp_registered_fault, wp_whole_pmd, wp_part_of_pmd, wp_huge_zero, collapse_cases, zap_protect_cases,
         copy_into_pmd, huge_zero_split_keeps_uffd_wp, collapse_after_close, collapse_full_wp_registered,
         move_whole_pmd, move_pmd_unaligned, mremap_wp_pmd_without_remap, wp_async_pmd, shmem_collapse_cases]

# What the emulator must show by itself (so that agreeing on "nothing happened" cannot pass).
H, Z, P, W = int(C.HUGE), int(C.PFNZERO), int(C.PRESENT), int(C.WRITTEN)
EMU_EXPECT = {
    "read_fault": lambda o: o[0] == [(0, 512, H | Z | P | W)],
    "write_fault": lambda o: o[0] == [(0, 512, H | P | W)] and o[1][2][3] == 1,
    "read_then_write": lambda o: o[0] == [(0, 512, H | P | W)],
    "nohugepage": lambda o: o == [(0, 1, P | W)],
    "missing_write": lambda o: o == ([(0x3000, 1)], [(3, 4, P | W)]),
    "wp_whole_pmd": lambda o: o[0] == [(0, 512, H | P)] and o[1][0][2] == 1 and o[2] == [(0x5000, 3)],
    "wp_part_of_pmd": lambda o: o[0] == [(0, 4, P), (4, 512, P | W)],
    "copy_into_pmd": lambda o: o[0] == ("EEXIST", -17) and o[1] == 4096,
    "huge_zero_split_keeps_uffd_wp": lambda o: o[0] == [(1, 512, Z | P)] and o[1] == [1, 1, 1],
    "collapse_after_close": lambda o: o[:2] == ("EBUSY", "ok") and o[2] == [(0, 512, H | P | W)],
    "collapse_full_wp_registered": lambda o: o[0] == "ok" and o[1] == [(0, 512, H | P | W)] and o[2] == b"xx",
    "move_whole_pmd": lambda o: o[0] == M2 and o[1] == [(0, 512, H | P | W)] and o[2] == [] and o[3] == b"ss",
    "move_pmd_unaligned": lambda o: o[0] == M2 and o[1] == [(1, 513, P | W)] and o[2] == [],
    "mremap_wp_pmd_without_remap": lambda o: o[0] and o[1] == [(0, 512, H | P | W)] and o[2] == [0, 0],
    "wp_async_pmd": lambda o: o[0] == [(0, 512, H | P)] and all(not x[2] & H for x in o[1]) and o[3] == [],
    "collapse_cases": lambda o: (o["empty"][0], o["one"][0], o["armed-1"][0], o["armed-2"][0],
                                 o["uffd-wp-pte"][0], o["zero-ptes"][0]) == ("EINVAL", "ok", "EBUSY", "EBUSY",
                                                                            "EINVAL", "EINVAL"),
}


def _huge_pages(obs) -> int:
    """Pages the observation's scan runs show HUGE."""
    if isinstance(obs, dict):
        return sum(_huge_pages(v) for v in obs.values())
    if isinstance(obs, (list, tuple)):
        if len(obs) == 3 and all(isinstance(x, int) for x in obs):
            return obs[1] - obs[0] if obs[2] & H else 0
        return sum(_huge_pages(v) for v in obs)
    return 0


def _open_kernel():
    try:
        return open_backend("kernel")
    except Exception as e:                      # BackendUnavailable and friends: a property of this host
        from uffdctl.errors import UffdctlError
        if isinstance(e, UffdctlError):
            return e
        raise


def _thp_reason():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return "THP is disabled on this host: transparent_hugepage/enabled is [never]"
    except OSError:
        return "no /sys/kernel/mm/transparent_hugepage (CONFIG_TRANSPARENT_HUGEPAGE=n)"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_thp_side_by_side(case):
    e = open_backend("emu", profile="6.18", soft_dirty=False)
    try:
        emu = case(Probe(e))
    finally:
        e.close()
    check = EMU_EXPECT.get(case.__name__)
    assert check is None or check(emu), f"{case.__name__} on the emulator: {emu!r}"
    reason = _thp_reason()
    k = _open_kernel()
    if reason or not hasattr(k, "mmap"):
        require_kernel(reason or f"no kernel backend: {k}")
    before = vmstat()
    try:
        kern = case(Probe(k))
    finally:
        k.close()
    after = vmstat()
    if kern != emu and _huge_pages(kern) < _huge_pages(emu):
        fails = {c: after.get(c, 0) - before.get(c, 0) for c in ("thp_fault_fallback", "thp_collapse_alloc_failed")}
        if any(fails.values()):
            pytest.skip(f"the kernel got no PMD where the model has one: THP allocation failed here ({fails})")
    assert kern == emu, f"{case.__name__}: kernel {kern!r}\n  emulator {emu!r}"


def test_broken_rule_is_caught():
    """A model without do_huge_zero_wp_pmd() (the 6.12 rule, switched on in a 6.18 model) splits the huge zero
    PMD on a write: the side-by-side sees 4 KiB pages where the 6.18 kernel has a THP."""
    good = open_backend("emu", profile="6.18", soft_dirty=False)
    bad = open_backend("emu", profile="6.18", soft_dirty=False, switches={"huge_zero_wp_thp": False})
    try:
        g, w = read_then_write(Probe(good)), read_then_write(Probe(bad))
    finally:
        good.close(), bad.close()
    assert g[0] == [(0, 512, H | P | W)] and w[0] == [(0, 2, Z | P | W), (2, 3, P | W), (3, 512, Z | P | W)]


def test_knobs_are_the_models_own():
    b = open_backend("emu", profile="6.18")
    try:
        assert b.thp_knob("enabled") == "always [madvise] never"
        assert b.thp_knob("hugepages-2048kB/enabled") == "always [inherit] madvise never"
        b.set_thp_knob("enabled", "never")
        p = Probe(b)
        assert write_fault(p)[0] == [(1, 2, P | W)]                                 # no THP with [never]
        b.set_thp_knob("hugepages-16kB/enabled", "always")
        r = p.region(hp=False)
        b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
        b.write(r.addr + 4096, b"x")                                                # a 16K mTHP
        assert p.scan(r) == [(0, 4, P | W)]
        with pytest.raises(UffdError, match="EINVAL|not one of"):
            b.set_thp_knob("enabled", "sometimes")
        assert b.thp_knob("no_such_knob") is None
    finally:
        b.close()
    old = open_backend("emu", profile="6.1")
    try:
        assert old.thp_knob("hugepages-16kB/enabled") is None    # no mTHP before 6.8
    finally:
        old.close()


THP_SCRIPT = """\
mmap --size 4M --thp --name huge
expect addr huge:0 aligned=2M
expect vma huge flags=hg,!nh
touch huge:0 --write --wait
expect vma huge AnonHugePages=2M
expect scan huge --category-mask huge --return-mask huge regions=1 r0.start=huge:0 r0.end=huge:512
expect scan huge --category-mask present,huge regions=1 r0.categories=present|huge|written
mmap --size 2M --align 2M --name small
touch small:0 --write --wait
expect vma small flags=nh AnonHugePages=0
madvise small --advice hugepage
expect vma small flags=hg,!nh
madvise small --advice collapse
expect vma small AnonHugePages=2M
expect pagemap small:0-511 present=1
"""


def thp_script_on(backend_name, tmp_path, text, *, emu=None, needle="AnonHugePages"):
    """The script ``text`` passes on the kernel (THP on here, else the kernel skip) or on the model (``emu``, by
    default the host's: profile 6.18, soft-dirty off).  A kernel run that fails at ``needle`` -- the kernel got
    no THP (a fallback or a failed collapse, under memory fragmentation) -- skips with the vmstat counters."""
    from uffdctl.script import run_file
    if backend_name == "kernel":
        reason = _thp_reason()
        if reason:
            require_kernel(reason)
        b = make_backend("kernel")
    else:
        b = emu if emu is not None else open_backend("emu", profile="6.18", soft_dirty=False)
    f = tmp_path / "thp.uffd"
    f.write_text(text)
    res = run_file(str(f), backend=b)
    if not res["ok"] and backend_name == "kernel" and needle in str(res.get("error")):
        st = vmstat()
        pytest.skip(f"the kernel got no THP here (thp_fault_fallback={st.get('thp_fault_fallback')}, "
                    f"thp_collapse_alloc_failed={st.get('thp_collapse_alloc_failed')}): {res['error']}")
    assert res["ok"], res.get("error")


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_thp_script_on_both(backend_name, tmp_path):
    """The mmops THP script (smaps VmFlags hg/nh, AnonHugePages, PAGE_IS_HUGE, MADV_COLLAPSE) passes on the
    kernel and on the host model (profile 6.18, soft-dirty off)."""
    thp_script_on(backend_name, tmp_path, THP_SCRIPT)


# -- rows the host cannot show without writing its sysfs (shmem THP, mTHP) or without CONFIG_MEM_SOFT_DIRTY:
# the model's own knobs are set instead; the kernel side of the shmem/mTHP rows is the selftests' thp-shared /
# thp-private columns (tests/test_selftests.py pushes the size into the host's knob for the kernel column).
def _emu():
    return open_backend("emu", profile="6.18", soft_dirty=False)


def test_mthp_order_0_when_armed():
    """alloc_anon_folio(): an mTHP size enabled, an unregistered VMA takes a 64K folio, an armed one (any mode)
    order 0."""
    for mode, expect in ((None, [(0, 16, P | W)]), (uapi.RegisterMode.WP, [(1, 2, P | W)]),
                         (uapi.RegisterMode.MISSING, None)):
        b = _emu()
        b.set_thp_knob("hugepages-64kB/enabled", "always")
        b.set_thp_knob("hugepages-2048kB/enabled", "never")
        p = Probe(b)
        r = p.region()          # MADV_HUGEPAGE: the backends' anon regions are MADV_NOHUGEPAGE otherwise
        if mode is not None:
            u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, mode)
        if mode == uapi.RegisterMode.MISSING:
            acc = b.thread("t").access(r.addr + 4096, 1, True)
            src = b.mmap(4096, "anon"); b.write(src.addr, b"z")
            u.copy(r.addr + 4096, src.addr, 4096); assert acc.wait(1)
            expect = [(1, 2, P | W)]
        else:
            b.write(r.addr + 4096, b"x")
        assert p.scan(r) == expect, (mode, p.scan(r))
        b.close()


def test_mthp_wp_is_per_pte():
    b = _emu()
    b.set_thp_knob("hugepages-64kB/enabled", "always")
    b.set_thp_knob("hugepages-2048kB/enabled", "never")
    p = Probe(b)
    r = p.region(); b.write(r.addr, b"x")
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr + 4096, 8192, uapi.WriteprotectMode.WP)
    assert [x[2] for x in p.pm(r, 0, 4)] == [0, 1, 1, 0] and [x[4] for x in p.pm(r, 0, 4)] == [0, 1, 2, 3]
    b.close()


def test_shmem_thp_rows():
    """shmem_enabled=advise + MADV_HUGEPAGE: a PMD-mapped shmem THP (ShmemPmdMapped); WP of it zaps the PMD and
    puts markers on all 512 PTEs (Rss 0); a read then faults one 4 KiB PTE of the same folio, no message; MISSING:
    a hole faults MISSING and COPY adds one 4 KiB page; MINOR: a MINOR fault per 4 KiB, CONTINUE maps one PTE."""
    b = _emu()
    b.set_thp_knob("shmem_enabled", "advise")
    p = Probe(b)
    r = p.region(M2, memtype="shmem"); b.write(r.addr, b"x")
    (v,) = b.smaps_vmas(r.addr, r.end)
    assert v["ShmemPmdMapped"] == M2 and p.scan(r) == [(0, 512, H | P | W)]
    pfn0 = b.pagemap(r.addr, 1)[0] & ((1 << 55) - 1)
    u = b.userfaultfd(); u.api(0); u.register(r.addr, r.len, uapi.RegisterMode.WP)
    u.writeprotect(r.addr, M2, uapi.WriteprotectMode.WP)
    (v,) = b.smaps_vmas(r.addr, r.end)
    assert v["ShmemPmdMapped"] == 0 and v["Rss"] == 0
    assert all(e >> 57 & 1 and e >> 62 & 1 for e in b.pagemap(r.addr, 512))        # uffd-wp markers
    assert b.read(r.addr + 3 * 4096, 1) == b"\0" and u.read_msgs() == []
    e3 = b.pagemap(r.addr + 3 * 4096, 1)[0]
    assert e3 >> 63 & 1 and e3 >> 57 & 1 and (e3 & ((1 << 55) - 1)) == pfn0 + 3
    acc = b.thread("t").access(r.addr + 3 * 4096, 1, True)
    assert [m.flags for m in u.read_msgs()] == [int(uapi.PagefaultFlag.WRITE | uapi.PagefaultFlag.WP)]
    u.writeprotect(r.addr + 3 * 4096, 4096, 0); assert acc.wait(1)
    u.close()
    # MISSING on a hole
    r = p.region(M2, memtype="shmem")
    u = b.userfaultfd(); u.api(int(uapi.Feature.MISSING_SHMEM)); u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    acc = b.thread("m").access(r.addr + 4096, 1, False)
    assert [m.flags for m in u.read_msgs()] == [0]
    src = b.mmap(4096, "anon"); b.write(src.addr, b"c")
    u.copy(r.addr + 4096, src.addr, 4096); assert acc.wait(1)
    assert p.scan(r) == [(1, 2, P | W)] and b.smaps_vmas(r.addr, r.end)[0]["ShmemPmdMapped"] == 0
    u.close()
    # MINOR: the cache holds a THP (faulted in, then zapped: the page cache keeps it), the registered mapping
    # faults per 4 KiB
    r = p.region(M2, memtype="shmem")
    b.write(r.addr, b"a")
    b.madvise(r.addr, r.len, uapi.MADV_DONTNEED)
    u = b.userfaultfd(); u.api(int(uapi.Feature.MINOR_SHMEM)); u.register(r.addr, r.len, uapi.RegisterMode.MINOR)
    acc = b.thread("n").access(r.addr + 5 * 4096, 1, False)
    assert [m.flags for m in u.read_msgs()] == [int(uapi.PagefaultFlag.MINOR)]
    u.continue_(r.addr + 5 * 4096, 4096); assert acc.wait(1)
    assert p.scan(r) == [(5, 6, P | W)] and b.smaps_vmas(r.addr, r.end)[0]["ShmemPmdMapped"] == 0
    u.close()
    b.close()


def test_soft_dirty_of_a_pmd():
    """pmd_mkdirty() sets soft-dirty; clear_refs 4 clears it and write-protects the PMD without splitting it
    (clear_soft_dirty_pmd); the next write sets it again (soft-dirty.c test_hugepage).  CONFIG_MEM_SOFT_DIRTY is
    off on this host: the model with soft-dirty on."""
    b = open_backend("emu", profile="6.18", soft_dirty=True)
    p = Probe(b)
    r = p.region(M2)
    b.write(r.addr, b"x")
    b.clear_refs(4)
    assert not any(e >> 55 & 1 for e in b.pagemap(r.addr, 512)) and p.scan(r)[0][2] & H
    t = b.thread("t")
    acc = t.access(r.addr + 4096, 1, True); assert acc.wait(1)
    assert acc.result().minflt == 1 and all(e >> 55 & 1 for e in b.pagemap(r.addr, 512)) and p.scan(r)[0][2] & H
    b.close()


def test_copy_huge_pmd_for_fork():
    """copy_huge_pmd() (the hook emu/kernel/fork.py calls): both PMDs write-protected, PageAnonExclusive
    cleared (X=0 for all 512 pages), the child's uffd-wp only in a uffd-wp VMA; the parent's next write
    splits the PMD and COWs 4 KiB (mm-surface: "parent write to a PMD THP after fork")."""
    from uffdctl.emu import mm as M
    b = open_backend("emu", profile="6.18", soft_dirty=False)
    p = Probe(b)
    r = p.region(M2); b.write(r.addr, b"x")
    parent = b.mm
    vma = parent.find_vma(r.addr)
    child = M.MM(parent.profile, parent.soft_dirty_config)
    cv = vma.split_copy(vma.start, vma.end)
    cv.ctx = None
    child.insert_vma(cv)
    parent.copy_huge_pmds(child, cv, vma)
    assert not parent.pmds[r.addr].write and not child.pmds[r.addr].write
    assert not any(e >> 56 & 1 for e in b.pagemap(r.addr, 512))          # mapped twice: not exclusive
    pfn0 = b.pagemap(r.addr, 1)[0] & ((1 << 55) - 1)
    acc = b.thread("t").access(r.addr + 4096, 1, True); assert acc.wait(1) and acc.result().minflt == 1
    assert p.scan(r) == [(0, 512, P | W)]                                  # split
    e = b.pagemap(r.addr, 3)
    assert (e[1] & ((1 << 55) - 1)) != pfn0 + 1 and (e[2] & ((1 << 55) - 1)) == pfn0 + 2    # COW of 4 KiB
    assert b.read(r.addr, 1) == b"x" and child.pmds[r.addr].page.pages[0].read(0, 1) == b"x"
    b.close()


LAZYFREE_THP_SCRIPT = """\
mmap --size 4M --thp --name huge
touch huge:0 --write --fill 0xd8 --wait
touch huge:512 --write --fill 0xd9 --wait
expect vma huge AnonHugePages=4M
madvise huge --advice free
touch huge:600 --write --fill 2 --wait
madvise huge --advice pageout
expect pagemap huge:0-511 present=0 swap=0
expect pagemap huge:512-1023 present=1 exclusive=1
expect vma huge AnonHugePages=0
touch huge:600 --read --wait
expect result data=02
touch huge:0 --read --wait
expect result data=00
expect scan huge --category-mask huge regions=0
expect pagemap huge:0 present=1 zero=1
"""


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_lazyfree_thp_pageout_on_both(backend_name, tmp_path):
    """MADV_FREE of whole THPs (madvise_free_huge_pmd(): folio_mark_lazyfree(), the PMD made clean and old) then
    MADV_PAGEOUT: try_to_unmap(TTU_SPLIT_HUGE_PMD) splits the PMD and try_to_unmap_one() discards each clean page
    (nothing swapped; the PTE table stays, so the next read maps the 4 KiB zero page, not the huge zero PMD); a
    redirtied one is swap-backed again at its first PTE, split, its data kept [measured on 6.18: thp_split_pmd 1
    and pglazyfreed 512 for the clean THP; the soak found it at seeds 639469770 and 93986452]."""
    thp_script_on(backend_name, tmp_path, LAZYFREE_THP_SCRIPT, needle="AnonHugePages=4M")


LAZYFREE_PTE_MAPPED_THP_SCRIPT = """\
mmap --size 2M --thp --name whole
touch whole:0 --write --fill 0xd8 --wait
expect vma whole AnonHugePages=2M
madvise whole --advice free
mprotect whole:100 --prot read
mprotect whole:100 --prot read,write
expect scan whole --category-mask huge regions=0
touch whole:300 --write --fill 3 --wait
madvise whole --advice pageout
expect pagemap whole:0-511 present=1
mmap --size 2M --thp --name clean
touch clean:0 --write --fill 0xd8 --wait
expect vma clean AnonHugePages=2M
madvise clean --advice free
mprotect clean:100 --prot read
mprotect clean:100 --prot read,write
madvise clean --advice pageout
expect pagemap clean:0-511 present=0 swap=0
mmap --size 2M --thp --name part
touch part:0 --write --fill 0xd8 --wait
expect vma part AnonHugePages=2M
madvise part --advice free
madvise part:100-149 --advice dontneed
touch part:300 --write --fill 3 --wait
madvise part --advice pageout
expect pagemap part:0 present=1 zero=0
expect pagemap part:1-99 present=1 zero=1
expect pagemap part:300 present=1 zero=0
touch part:0 --read --wait
expect result data=d8
"""


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_lazyfree_pte_mapped_thp_pageout_on_both(backend_name, tmp_path):
    """A lazyfree THP mapped by PTEs (its PMD split by mprotect, the folio whole) is reclaimed as one batch
    (try_to_unmap_one(), folio_unmap_pte_batch()): one page rewritten keeps all 512 mapped, none rewritten
    discards them all -- it is never split, having no swap to go to.  Split by a DONTNEED of part, the
    split's unmap (try_to_migrate_one(): folio_mark_dirty() of a dirty PTE) makes every new folio dirty, so
    the written page 0 stays too, and the zero-filled ones map the zero page [measured on 6.18]."""
    thp_script_on(backend_name, tmp_path, LAZYFREE_PTE_MAPPED_THP_SCRIPT, needle="AnonHugePages=2M")


# MADV_FREE of a whole PTE-mapped THP, a rewrite of one page, PAGEOUT; then PAGEOUT of a PMD whose first pages
# are a THP a child also maps (after the fork, the parent's own pages 504-511, lazyfree).
_PTE_MAPPED_THP_FREE_SETUP = """\
mmap --size 2M --thp --name whole
touch whole:0 --write --fill 0xd8 --wait
expect vma whole AnonHugePages=2M
mprotect whole:100 --prot read
mprotect whole:100 --prot read,write
madvise whole --advice free
touch whole:300 --write --fill 3 --wait
madvise whole --advice pageout
expect pagemap whole:300 present=1
mmap --size 2M --thp --name shared
touch shared:0 --write --fill 0xd8 --wait
expect vma shared AnonHugePages=2M
madvise shared:504-511 --advice dontneed
fork --name child
touch shared:504-511 --write --fill 5 --wait
madvise shared:504-511 --advice free
madvise shared --advice pageout
"""
PTE_MAPPED_THP_FREE_SCRIPT = {
    # 6.16+ (folio_unmap_pte_batch()): the folio is whole in the range, so MADV_FREE leaves it whole (6.10's
    # madvise_folio_pte_batch()) and reclaim keeps all of it for the one rewritten page; the shared THP is
    # stepped over and the pages after it are reclaimed
    "6.18": _PTE_MAPPED_THP_FREE_SETUP + """\
expect pagemap whole:0-511 present=1
expect pagemap shared:0-503 present=1
expect pagemap shared:504-511 present=0 swap=0
""",
    # 6.10-6.15: MADV_FREE leaves it whole too, but try_to_unmap_one() goes PTE by PTE and stops at the first
    # dirty one: the pages before it are discarded
    "6.12": _PTE_MAPPED_THP_FREE_SETUP + """\
expect pagemap whole:0-299 present=0 swap=0
expect pagemap whole:300-511 present=1
expect pagemap shared:0-503 present=1
expect pagemap shared:504-511 present=0 swap=0
""",
    # before 6.10: MADV_FREE splits it, each page is lazyfree on its own and only the rewritten one stays; at
    # the shared THP the PTE loop stops ("break"), so nothing after it in that PMD is reclaimed
    "6.1": _PTE_MAPPED_THP_FREE_SETUP + """\
expect pagemap whole:0-299 present=0 swap=0
expect pagemap whole:301-511 present=0 swap=0
expect pagemap shared:0-511 present=1
""",
}


@pytest.mark.parametrize("backend_name", ["kernel", "emu-6.18", "emu-6.12", "emu-6.1"])
def test_madvise_of_a_pte_mapped_thp_by_version(backend_name, tmp_path):
    """MADV_FREE / PAGEOUT over a PTE-mapped THP, three kernel eras: since madvise_folio_pte_batch() (6.10) a
    folio the range covers whole is left whole and one mapped elsewhere is stepped over; before,
    madvise_free_pte_range() and madvise_cold_or_pageout_pte_range() split every one mapped only here and stop
    the PMD's loop at one mapped elsewhere; reclaim unmaps a lazyfree large folio as one batch since 6.16
    [measured: 6.18 here, the 6.12.117 and 6.1.192 guests]."""
    from test_softdirty import running_version
    if backend_name == "kernel":
        v = running_version()
        era = "6.18" if v >= (6, 16, 0) else "6.12" if v >= (6, 10, 0) else "6.1"
        thp_script_on("kernel", tmp_path, PTE_MAPPED_THP_FREE_SCRIPT[era], needle="AnonHugePages=2M")
    else:
        profile = backend_name.split("-")[1]
        thp_script_on("emu", tmp_path, PTE_MAPPED_THP_FREE_SCRIPT[profile],
                      emu=open_backend("emu", profile=profile, soft_dirty=False))


MOVED_PIECES_MERGE_SCRIPT = """\
mmap --size 2M --thp --name huge
madvise huge:474-507 --advice nohugepage
expect vma huge count=3
mmap --size 2M --thp --name dst
mremap huge --size 2M --maymove --fixed --to dst:0
expect vma huge count=3
madvise huge --advice hugepage
expect vma huge count=1 flags=hg
touch huge:0 --write --fill 0x83 --wait
expect vma huge AnonHugePages=2M
"""


def _kernel_moves_multiple_vmas() -> bool:
    """Whether this kernel's move-only mremap() crosses VMAs: three pages, the middle one read-only, moved whole."""
    from uffdctl.types import MemType
    b = make_backend("kernel")
    try:
        src, dst = b.mmap(3 * 4096, MemType.ANON), b.mmap(3 * 4096, MemType.ANON)
        b.mprotect(src.addr + 4096, 4096, uapi.PROT_READ)
        try:
            b.mremap(src.addr, src.len, src.len, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, dst.addr)
        except UffdError as e:
            if e.errno == errno.EFAULT:
                return False
            raise
        return True
    finally:
        b.close()


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_pieces_of_a_mapping_moved_together_merge(backend_name, tmp_path):
    """mremap() of several VMAs of one mapping (6.17+) keeps each piece's vm_pgoff (copy_vma()), so once
    MADV_HUGEPAGE makes their flags agree they merge into one VMA, and a write faults in a THP [the soak, seed
    127020136: the model kept the pieces apart and mapped a 4 KiB page]."""
    if backend_name == "emu" or _kernel_moves_multiple_vmas():
        thp_script_on(backend_name, tmp_path, MOVED_PIECES_MERGE_SCRIPT, needle="AnonHugePages=2M")
    else:      # before 6.17 the move over three VMAs is refused, as the older profiles say (mremap_multi_vma)
        thp_script_on(backend_name, tmp_path, MOVED_PIECES_MERGE_SCRIPT.split("expect vma huge count=3\nmadvise")[0]
                      .replace("--to dst:0\n", "--to dst:0\nexpect error errno=EFAULT\n"))


FREE_PART_OF_A_SHARED_THP_SCRIPT = """\
mmap --size 2M --thp --name huge
touch huge:490 --write --fill 0xaa --wait
expect vma huge AnonHugePages=2M
fork --name child
madvise huge:219-255 --advice free
expect vma huge AnonHugePages=2M
expect scan huge --category-mask huge regions=1 r0.start=huge:0 r0.end=huge:512
expect pagemap huge:0-7 present=1 zero=0
mmap --size 2M --thp --name solo
touch solo:490 --write --fill 0xaa --wait
expect vma solo AnonHugePages=2M
madvise solo:219-255 --advice free
expect vma solo AnonHugePages=0
"""


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_free_of_part_of_a_shared_thp_leaves_it_whole(backend_name, tmp_path):
    """madvise_free_huge_pmd() skips a THP mapped elsewhere (6.1 total_mapcount() != 1, 6.12
    folio_likely_mapped_shared()) before it considers splitting one covered in part: after fork the parent's
    MADV_FREE of pages 219-255 leaves the PMD whole, where the same advice on a THP of its own splits it
    [the soak found it at seed 555073453: the model split first, and remapped the untouched pages to the zero page]."""
    thp_script_on(backend_name, tmp_path, FREE_PART_OF_A_SHARED_THP_SCRIPT, needle="AnonHugePages=2M")


MOVE_ONTO_ITSELF_SCRIPT = """\
api --features move
mmap --size 2M --thp --name huge
register huge --mode wp
touch huge:365 --read --wait
expect scan huge --category-mask huge regions=1 r0.start=huge:0 r0.end=huge:512
move huge --src huge --allow-src-holes
expect error errno=EEXIST ioctl=UFFDIO_MOVE
expect scan huge --category-mask huge regions=1 r0.start=huge:0 r0.end=huge:512
"""


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_move_onto_a_huge_pmd_is_eexist_before_any_split(backend_name, tmp_path):
    """move_pages(): "If the dst_pmd is mapped as THP don't override it": EEXIST before the source PMD is looked
    at, so a MOVE onto itself of the huge zero PMD splits nothing [the soak, seed 291519181]."""
    thp_script_on(backend_name, tmp_path, MOVE_ONTO_ITSELF_SCRIPT, needle="category-mask huge")


COLLAPSE_AFTER_A_MISSING_WRITE_SCRIPT = """\
mmap --size 2M --thp --name huge
register huge --mode missing
madvise huge:148-170 --advice nohugepage
handler --policy queue
touch huge:0 --write
expect result blocked=1
madvise huge --advice hugepage
madvise huge --advice collapse
expect error errno=EBUSY
"""


@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_a_missing_write_prepares_the_anon_vma(backend_name, tmp_path):
    """do_anonymous_page(): a write fault runs vmf_anon_prepare() before the userfaultfd_missing() check, so a
    VMA whose only fault is a blocked MISSING write has an anon_vma and MADV_COLLAPSE scans it (EBUSY: none
    PTEs in a registered VMA), not EINVAL (no anon_vma) [the differential, seed 5081]."""
    thp_script_on(backend_name, tmp_path, COLLAPSE_AFTER_A_MISSING_WRITE_SCRIPT)
