"""mlock() on registered memory, side by side (mm/mlock.c, mm/gup.c populate_vma_page_range()): the population
write-faults private writable memory (FOLL_WRITE), so uffd-wp pages raise WRITE|WP messages and holes WRITE
MISSING ones, and the call returns once they are resolved; MLOCK_ONFAULT populates nothing; a locked VMA refuses
MADV_PAGEOUT and MADV_DONTNEED (EINVAL); munlock lifts it.  The host kernel and the emulator compared, and held
to the messages the kernel sends."""
from __future__ import annotations

import errno
import time

import pytest

from conftest import assert_steps_agree, make_backend, run_closing
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.errors import UffdError

PS = uapi.PAGE_SIZE
R = uapi.RegisterMode
WRITE, WP = int(uapi.PagefaultFlag.WRITE), int(uapi.PagefaultFlag.WP)


def _call(fn):
    try:
        fn()
        return "ok"
    except UffdError as e:
        return errno.errorcode[e.errno]


def mlock_scenario(b, memtype: str, onfault: bool) -> list:
    r = b.mmap(4 * PS, MemType(memtype), name="r")
    s = b.mmap(PS, MemType.ANON, name="s")
    b.write(s.addr, b"s")
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, r.len, int(R.MISSING | R.WP))
    u.copy(r.addr, s.addr, PS, int(uapi.CopyMode.WP))
    u.copy(r.addr + PS, s.addr, PS, int(uapi.CopyMode.WP))
    h = b.fault_handler(u, HandlerPolicy(missing="zeropage", wp="unprotect"))
    out = [("mlock", _call(lambda: b.mlock(r.addr, r.len, 1 if onfault else 0)))]
    got, deadline = [], time.monotonic() + 5
    while len(got) < (0 if onfault else 4 if memtype == "anon" else 2) and time.monotonic() < deadline:
        got += [(e.msg.flags, (e.msg.address - r.addr) // PS) for e in h.events() if e.action != "event"]
        time.sleep(0.002)
    out.append(("msgs", sorted(got)))
    out.append(("pagemap", [hex(x & (uapi.PM_PRESENT | uapi.PM_UFFD_WP)) for x in b.pagemap(r.addr, 4)]))
    out.append(("pageout", _call(lambda: b.madvise(r.addr, r.len, uapi.MADV_PAGEOUT))))
    out.append(("dontneed", _call(lambda: b.madvise(r.addr, PS, uapi.MADV_DONTNEED))))
    out.append(("munlock", _call(lambda: b.munlock(r.addr, r.len))))
    out.append(("pageout after", _call(lambda: b.madvise(r.addr, r.len, uapi.MADV_PAGEOUT))))
    out.append(("bad flags", _call(lambda: b.mlock(r.addr, PS, 2))))
    h.stop()
    u.close()
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("onfault", [False, True])
@pytest.mark.parametrize("memtype", ["anon", "shmem"])
def test_mlock_side_by_side(memtype, onfault):
    e, k = (run_closing(make_backend(n), mlock_scenario, memtype, onfault) for n in ("emu", "kernel"))
    assert_steps_agree(k, e)
    k = dict((x[0], x[1:]) for x in k)
    assert k["mlock"] == ("ok",) and k["pageout"] == ("EINVAL",) and k["dontneed"] == ("EINVAL",), k
    assert k["munlock"] == ("ok",) and k["pageout after"] == ("ok",) and k["bad flags"] == ("EINVAL",), k
    if onfault:
        assert k["msgs"] == ([],), k
    elif memtype == "anon":     # FOLL_WRITE: WRITE|WP on the protected pages, WRITE MISSING on the holes
        assert k["msgs"] == ([(WRITE, 2), (WRITE, 3), (WRITE | WP, 0), (WRITE | WP, 1)],), k
    else:                       # shared: read faults only (MISSING on the holes, nothing on the WP pages)
        assert k["msgs"] == ([(0, 2), (0, 3)],), k
