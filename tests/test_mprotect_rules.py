"""mprotect()'s write upgrade, can_change_pte_writable() (mm/mprotect.c), side by side and per version: a clean
exclusive anon page (after MADV_FREE) is upgraded on R->RW since 6.2 (no fault on the next write; 6.1.192 wants
pte_dirty(): one fault); a uffd-wp PTE never is (the write raises WRITE|WP); a shmem page never is (shared: no
write-notify, so no MM_CP_TRY_CHANGE_WRITABLE); a swap entry keeps its uffd-wp bit through PROT_NONE and back."""
from __future__ import annotations

import pytest

from conftest import make_backend, run_closing
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType

PS = uapi.PAGE_SIZE
R = uapi.RegisterMode


def _w(b, addr, fill):
    a = b.thread("t").access(addr, 1, True, fill=fill, stride=PS)
    assert a.wait(5)
    r = a.result()
    return r.minflt + r.majflt


def mprotect_scenario(b, memtype: str) -> list:
    r = b.mmap(3 * PS, MemType(memtype), name="r")
    for p in range(3):
        _w(b, r.addr + p * PS, p + 1)
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, r.len, int(R.WP))
    if memtype == "anon":
        b.madvise(r.addr, PS, uapi.MADV_FREE)            # p0 clean, still exclusive
    u.writeprotect(r.addr + PS, PS, int(uapi.WriteprotectMode.WP))    # p1 uffd-wp
    h = b.fault_handler(u, HandlerPolicy(wp="unprotect"))
    out = []
    for prot in (uapi.PROT_READ, uapi.PROT_NONE):
        b.mprotect(r.addr, r.len, prot)
        b.mprotect(r.addr, r.len, uapi.PROT_READ | uapi.PROT_WRITE)
        out.append(("uffd-wp kept", bool(b.pagemap(r.addr + PS, 1)[0] & uapi.PM_UFFD_WP)))
    out.append(("w p0", _w(b, r.addr, 9), "w p2", _w(b, r.addr + 2 * PS, 9)))
    out.append(("w p1", _w(b, r.addr + PS, 9), [e.msg.flags for e in h.events() if e.action != "event"]))
    h.stop()
    u.close()
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("memtype", ["anon", "shmem", "shmem-private"])
def test_mprotect_upgrade_side_by_side(memtype):
    e, k = (run_closing(make_backend(n), mprotect_scenario, memtype) for n in ("emu", "kernel"))
    assert k == e, f"kernel {k}\nemu    {e}"
    assert k[0] == ("uffd-wp kept", True) and k[1] == ("uffd-wp kept", True), k
    assert k[3][1] >= 1 and k[3][2] == [int(uapi.PagefaultFlag.WRITE | uapi.PagefaultFlag.WP)], k
    if memtype == "anon":
        assert k[2] == ("w p0", 0, "w p2", 0), k          # exclusive anon, clean or dirty: upgraded
    elif memtype == "shmem":
        assert k[2] == ("w p0", 1, "w p2", 1), k          # shared shmem: never upgraded


def test_can_change_pte_writable_per_version():
    """6.1.192's can_change_pte_writable() returns false for a clean PTE (!pte_dirty), 6.2+ upgrades any
    exclusive anon page; 5.19 never tries (no MM_CP_TRY_CHANGE_WRITABLE from mprotect)."""
    from uffdctl.emu import EmuBackend
    got = {}
    for profile in ("5.19", "6.1", "6.12", "6.18"):
        b = EmuBackend(profile=profile, soft_dirty=False)
        try:
            r = b.mmap(2 * PS, MemType.ANON)
            b.write(r.addr, b"x" * PS)
            b.write(r.addr + PS, b"y")
            b.madvise(r.addr, PS, uapi.MADV_FREE)
            b.mprotect(r.addr, r.len, uapi.PROT_READ)
            b.mprotect(r.addr, r.len, uapi.PROT_READ | uapi.PROT_WRITE)
            got[profile] = (_w(b, r.addr, 1), _w(b, r.addr + PS, 1))
        finally:
            b.close()
    assert got == {"5.19": (1, 1), "6.1": (1, 0), "6.12": (0, 0), "6.18": (0, 0)}, got
