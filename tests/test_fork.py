"""fork() side by side (kernel/fork.c dup_mmap, mm/memory.c copy_page_range, fs/userfaultfd.c dup_userfaultfd):
one scenario per memory type and event setting runs on the kernel and on the emulator (profile 6.18, soft-dirty
off, as this host), and what each shows must be the same: the child's pagemap (present, uffd-wp, exclusive,
markers, page identity against the parent's), the parent's after the fork, who faults how often on a write after
it (COW), the FORK message and the child's uffd, what the child's accesses raise, and the parent's pages once
the child is gone.  The emulator's own fork rules that the host cannot show (soft-dirty, other versions) are
asserted on the emulator, each against the kernel source it follows."""
from __future__ import annotations

import os
import tempfile
import errno
import time

import pytest

from conftest import assert_steps_agree, drain_events, hugetlb_reason, make_backend, require_kernel, run_closing
from test_script import run_any  # noqa: F401  (the fixture: one script on the kernel and on the emulator)
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.errors import UffdError

PS = uapi.PAGE_SIZE
HP = 2 << 20
F = uapi.Feature
R = uapi.RegisterMode
SETTLE = 5.0
KEEP = uapi.PM_PRESENT | uapi.PM_SWAP | uapi.PM_FILE | uapi.PM_UFFD_WP | uapi.PM_MMAP_EXCLUSIVE | uapi.PM_GUARD_REGION


def _pm(proc, addr, pages, ps):
    return [e for e in proc.pagemap(addr, pages * ps // PS)[::ps // PS]]


def _bits(e) -> str:
    """A pagemap entry as the kept bits and, for a marker, its swap offset (the marker kind)."""
    if e & uapi.PM_SWAP:
        return f"{e & KEEP:#x}/{(e & uapi.PM_PFRAME_MASK) >> 5:#x}"
    return f"{e & KEEP:#x}"


def _rel(e, parent_e) -> str:
    if not e & uapi.PM_PRESENT:
        return "-"
    if parent_e & uapi.PM_PRESENT and (e & uapi.PM_PFRAME_MASK) == (parent_e & uapi.PM_PFRAME_MASK):
        return "same"
    return "own"


def _acc(acc):
    if not acc.wait(SETTLE):
        return ("blocked",)
    r = acc.result()
    if getattr(r, "sigsegv", False):
        return ("sigsegv",)
    if r.sigbus:
        return ("sigbus",)
    return ("done", r.minflt, r.majflt, r.data)


def fork_scenario(b, memtype: str, event: bool, expect: int = 0) -> list:
    """Register MISSING|WP; p0 COPY+WP (present, uffd-wp), p1 COPY, p2 a uffd-wp marker, p3 poison; fork under
    a fault handler; then what the child has, a write to p1 by the child and by the parent, the child's access
    to p0, p2 and p3, and the parent once the child has been killed and reaped."""
    mt = MemType(memtype)
    ps = HP if mt.hugetlb else PS
    n = 4
    r = b.mmap(n * ps, mt, name="r")
    s = b.mmap(ps, MemType.ANON, name="s")
    b.write(s.addr, b"s" * 8)
    u = b.userfaultfd()
    u.api(int(F.PAGEFAULT_FLAG_WP | F.WP_UNPOPULATED | F.THREAD_ID | (F.EVENT_FORK if event else 0)))
    u.register(r.addr, r.len, int(R.MISSING | R.WP))
    u.copy(r.addr, s.addr, ps, int(uapi.CopyMode.WP))
    u.copy(r.addr + ps, s.addr, ps)
    u.writeprotect(r.addr + 2 * ps, ps, int(uapi.WriteprotectMode.WP))
    u.poison(r.addr + 3 * ps, ps)
    pol = HandlerPolicy(missing="fill", fill=0x5f, wp="unprotect", page_size=ps)   # COPY: overwrites a marker
    h = b.fault_handler(u, pol)
    out = []
    parent_before = _pm(b, r.addr, n, ps)
    acc = b.fork("child", dict(b.regions))
    out.append(("fork returned", acc.wait(SETTLE)))
    child = acc.result()
    ch = cu = None
    try:
        evs = drain_events(h, 1 if event else 0, SETTLE)
        out.append(("events", [e.msg.event_name for e in evs]))
        forks = [e.msg for e in evs if e.msg.event == uapi.Event.FORK]
        if forks:
            cu = b.adopt_uffd(forks[0].ufd)
            ch = b.fault_handler(cu, pol)
        parent = _pm(b, r.addr, n, ps)
        kid = _pm(child, r.addr, n, ps)
        out.append(("parent before", [_bits(e) for e in parent_before]))
        out.append(("parent after", [_bits(e) for e in parent]))
        out.append(("child", [(_bits(e), _rel(e, p)) for e, p in zip(kid, parent)]))
        # COW: the child writes p1, then the parent does
        out.append(("child writes p1", _acc(child.thread("main").access(r.addr + ps, 1, True, fill=0xC1, stride=PS))))
        kid, parent = _pm(child, r.addr, n, ps), _pm(b, r.addr, n, ps)
        out.append(("child p1 after", _bits(kid[1]), _rel(kid[1], parent[1])))
        out.append(("parent writes p1", _acc(b.thread("w").access(r.addr + ps, 1, True, fill=0xA1, stride=PS))))
        kid, parent = _pm(child, r.addr, n, ps), _pm(b, r.addr, n, ps)
        out.append(("parent p1 after", _bits(parent[1]), _rel(kid[1], parent[1])))
        out.append(("child reads p1", _acc(child.thread("main").access(r.addr + ps, 1, False, want_data=True))))
        out.append(("parent reads p1", _acc(b.thread("w").access(r.addr + ps, 1, False, want_data=True))))
        # the child's uffd-wp page, marker and poison
        out.append(("child writes p0", _acc(child.thread("main").access(r.addr, 1, True, fill=0xC0, stride=PS))))
        out.append(("child reads p2", _acc(child.thread("main").access(r.addr + 2 * ps, 8, False, want_data=True))))
        out.append(("child reads p3", _acc(child.thread("main").access(r.addr + 3 * ps, 8, False, want_data=True))))
        out.append(("child events", sorted((e.msg.event_name, e.msg.flags, (e.msg.address - r.addr) // ps, e.action)
                                           for e in (drain_events(ch, expect, SETTLE) if ch is not None else []))))
        out.append(("child end", [_bits(e) for e in _pm(child, r.addr, n, ps)]))
        child.kill(9)
        st = child.wait(SETTLE)
        out.append(("reaped", st and st["signal_name"]))
        out.append(("parent once the child is gone", [_bits(e) for e in _pm(b, r.addr, n, ps)]))
        out.append(("parent events", sorted(e.msg.event_name for e in h.events())))
    finally:
        for x in (ch, h):
            if x is not None:
                x.stop()
        for x in (cu, u):
            if x is not None:
                x.close()
        child.close()
    return out


def _need_hugetlb(kb, pages):
    from uffdctl.kernel import meminfo
    reason = hugetlb_reason(kb)
    mi = meminfo()
    if reason or mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0) < pages:
        require_kernel(reason or f"fewer than {pages} free unreserved huge pages")


def _emu():
    from uffdctl.emu import EmuBackend
    return EmuBackend(profile="6.18", soft_dirty=False)


def _side_by_side(scenario, memtype, *args):
    kb = make_backend("kernel")
    try:
        if MemType(memtype).hugetlb:
            _need_hugetlb(kb, 12)
        e = run_closing(_emu(), scenario, memtype, *args)
        ev = [x[1] for x in e if x[0] == "child events"]
        k = scenario(kb, memtype, *args, len(ev[0]) if ev else 0)
    finally:
        kb.close()
    assert_steps_agree(k, e)
    return e


MEMTYPES = ["anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private"]


@pytest.mark.kernel
@pytest.mark.parametrize("event", [False, True], ids=["no-event", "event-fork"])
@pytest.mark.parametrize("memtype", MEMTYPES)
def test_fork_side_by_side(memtype, event):
    """The scenario on both backends: identical."""
    e = _side_by_side(fork_scenario, memtype, event)
    d = dict((x[0], x[1:]) for x in e)
    # and the rules it shows, stated (so that an agreement on something else would not pass silently)
    child = d["child"][0]
    shared = memtype in ("shmem", "hugetlb")
    if event:
        assert d["events"][0] == ["fork"]
        assert child[0][0].startswith(hex(uapi.PM_PRESENT | uapi.PM_UFFD_WP | (uapi.PM_FILE if shared else 0)))
    else:
        assert d["events"][0] == []
        if shared:                       # vma_needs_copy(): no uffd-wp child VMA, no anon_vma: no PTEs at all
            assert [b for b, _ in child] == ["0x0"] * 4, child
        else:                            # copied, uffd-wp cleared (pte_clear_uffd_wp), marker dropped
            assert not int(child[0][0], 16) & uapi.PM_UFFD_WP and child[2][0] == "0x0", child
    if not shared:                       # COW: both sides lost the exclusive bit of the shared page
        assert not int(d["parent after"][0][1], 16) & uapi.PM_MMAP_EXCLUSIVE
        assert int(d["parent before"][0][1], 16) & uapi.PM_MMAP_EXCLUSIVE
        assert int(d["parent once the child is gone"][0][0], 16) & uapi.PM_MMAP_EXCLUSIVE or \
            memtype.startswith("shmem")   # the parent's COW page (anon) is its own again


def fork_pending_scenario(b, memtype, _unused=None, expect=0) -> list:
    """EVENT_FORK: fork() stays blocked until the FORK message is read, the parent ctx answers EAGAIN to range
    ioctls meanwhile; and close() of the uffd then releases nothing: the child's copy of the fd table (closed by
    the child only once fork() returns) keeps the file open, so a fault on it stays blocked and the fork too."""
    mt = MemType(memtype)
    ps = HP if mt.hugetlb else PS
    r = b.mmap(2 * ps, mt, name="r")
    u = b.userfaultfd()
    u.api(int(F.EVENT_FORK))
    u.register(r.addr, r.len, int(R.MISSING))
    out = []
    acc = b.fork("child", dict(b.regions))
    time.sleep(0.2) if b.name == "kernel" else None
    out.append(("fork returned before the read", acc.done))
    try:
        u.zeropage(r.addr, ps)
        out.append(("zeropage while FORK is pending", "ok"))
    except UffdError as e:
        out.append(("zeropage while FORK is pending", errno.errorcode[e.errno], e.done))
    msgs = u.read_msgs()
    out.append(("read", [(m.event_name, m.ufd > 2) for m in msgs]))
    out.append(("fork returned after the read", acc.wait(SETTLE)))
    child = acc.result()
    cu = b.adopt_uffd(msgs[0].ufd)
    out.append(("zeropage after the read", u.zeropage(r.addr, ps)))
    # a second fork, left unread, then the uffd closed
    acc2 = b.fork("child2", dict(b.regions))
    t = b.thread("t")
    a = t.access(r.addr + ps, 8, False, want_data=True)
    time.sleep(0.2) if b.name == "kernel" else None
    out.append(("fault blocked", not a.done))
    u.close()
    out.append(("after close: fault still blocked", not a.wait(0.3)))
    out.append(("after close: fork still blocked", not acc2.wait(0.3)))
    cu.close()
    child.close()
    return out


@pytest.mark.kernel
def test_fork_waits_for_its_fork_message():
    """Both backends: blocked until read; EAGAIN meanwhile; close() of the fd releases nothing while a fork holds
    the file.  (The kernel side is then left with a thread and a fork blocked for good: the test runs it in a
    child process of its own.)"""
    import json
    import subprocess
    import sys
    eb = _emu()
    try:
        e = json.loads(json.dumps(fork_pending_scenario(eb, "anon")))
    finally:
        eb.close()
    make_backend("kernel").close()           # skips (or fails under REQUIRE_KERNEL) without a kernel backend
    here = os.path.dirname(os.path.abspath(__file__))
    # run outside the checkout: from its root `-c` would import the source tree, which has no native extension
    code = (f"import json, sys; sys.path.insert(0, {here!r}); import test_fork as T; "
            "from uffdctl.registry import open_backend; "
            "print(json.dumps(T.fork_pending_scenario(open_backend('kernel'), 'anon')), flush=True); "
            "import os; os._exit(0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0, p.stderr[-2000:]
    k = json.loads(p.stdout.strip().splitlines()[-1])
    assert k == e
    assert e[0] == ["fork returned before the read", False] and e[1][1] == "EAGAIN"
    assert e[-2:] == [["after close: fault still blocked", True], ["after close: fork still blocked", True]]


# -- the emulator's own rules (soft-dirty: CONFIG_MEM_SOFT_DIRTY is off on this host; other versions) -------------

def test_fork_soft_dirty_is_copied_and_vm_softdirty_inherited():
    """__copy_present_ptes() / copy_nonpresent_pte() leave the soft-dirty bit alone and vm_area_dup() copies
    VM_SOFTDIRTY: the child's pagemap bit 55 is the parent's, page by page (mm/memory.c, kernel/fork.c)."""
    from uffdctl.emu import EmuBackend
    b = EmuBackend(profile="6.18", soft_dirty=True)
    r = b.mmap(4 * PS, MemType.ANON)
    b.write(r.addr, b"a")
    b.write(r.addr + PS, b"b")
    b.clear_refs(4)
    b.write(r.addr + PS, b"c")               # p1 soft-dirty again, p0 clean, p2/p3 none
    before = b.pagemap(r.addr, 4)
    q = b.mmap(2 * PS, MemType.ANON)         # a new mapping: VM_SOFTDIRTY (all of it reads soft-dirty)
    b.write(q.addr, b"q")
    child = b.fork("c", dict(b.regions)).result()
    sd = uapi.PM_SOFT_DIRTY
    assert [e & sd for e in child.pagemap(r.addr, 4)] == [e & sd for e in before] == [0, sd, 0, 0]
    assert [e & sd for e in child.pagemap(q.addr, 2)] == [sd, sd]
    assert [e & sd for e in b.pagemap(r.addr, 4)] == [e & sd for e in before]   # the parent is unchanged
    b.close()


@pytest.mark.parametrize("profile,wp_marker,poison", [("5.19", True, True), ("6.1", False, False),
                                                       ("6.2", False, True), ("6.12", False, True),
                                                       ("6.18", False, True)])
def test_fork_marker_rules_per_version(profile, wp_marker, poison):
    """copy_nonpresent_pte() without EVENT_FORK: a uffd-wp marker reaches the child only on 5.19 (before "mm/uffd:
    fix pte marker when fork() without fork event"); a poison marker always from 6.2 (copy_pte_marker()), on
    6.1.192 only into a uffd-wp child VMA (the whole marker: mm/memory.c:887 of 6.1.192), on 5.19 always.
    (UFFDIO_POISON itself is 6.6+: the marker is planted in the model directly for the older profiles.)"""
    from uffdctl.emu import EmuBackend
    from uffdctl.emu.mm import PTE_MARKER_POISONED, make_pte_marker
    b = EmuBackend(profile=profile, soft_dirty=False)
    r = b.mmap(4 * PS, MemType.SHMEM_PRIVATE)
    b.write(r.addr + 3 * PS, b"x")           # an anon COW page: the VMA gets its anon_vma, so it is copied
    u = b.userfaultfd()
    u.api(int(F.PAGEFAULT_FLAG_WP))
    u.register(r.addr, r.len, int(R.WP))
    u.writeprotect(r.addr, PS, int(uapi.WriteprotectMode.WP))      # none PTE of shmem: a uffd-wp marker
    b.mm.set_pte(r.addr + PS, make_pte_marker(PTE_MARKER_POISONED))
    child = b.fork("c", dict(b.regions)).result()
    e = child.pagemap(r.addr, 2)
    assert bool(e[0] & uapi.PM_SWAP) == wp_marker and bool(e[0] & uapi.PM_UFFD_WP) == wp_marker
    assert bool(e[1] & uapi.PM_SWAP) == poison
    b.close()


def test_fork_hugetlb_and_wipeonfork_with_event_on_the_emulator_follow_the_spec():
    """MADV_WIPEONFORK with EVENT_FORK: the child's VMA is registered and empty, its first access a MISSING fault
    on the child's uffd (spec mm-surface 1.3, measured on 6.18); MADV_DONTFORK: no VMA (SIGSEGV)."""
    from uffdctl.emu import EmuBackend
    b = EmuBackend(profile="6.18", soft_dirty=False)
    w = b.mmap(2 * PS, MemType.ANON)
    b.write(w.addr, b"w")
    b.madvise(w.addr, w.len, 18)
    u = b.userfaultfd()
    u.api(int(F.EVENT_FORK))
    u.register(w.addr, w.len, int(R.MISSING))
    acc = b.fork("c", dict(b.regions))
    (m,) = u.read_msgs()
    child = acc.result()
    cu = b.adopt_uffd(m.ufd)
    assert child.pagemap(w.addr, 2) == [0, 0]
    a = child.thread().access(w.addr, 8, False, want_data=True)
    assert not a.done
    (pf,) = cu.read_msgs()
    assert (pf.event, pf.address, pf.flags) == (uapi.Event.PAGEFAULT, w.addr, 0)
    with pytest.raises(UffdError) as ei:
        b.madvise(b.mmap(PS, MemType.SHMEM).addr, PS, 18)        # WIPEONFORK on a file VMA
    assert ei.value.errno == errno.EINVAL
    b.close()


FORK_ADVICE = """
mmap --size 16K --name a
mmap --size 16K --type shmem --name s
touch a --write --fill 1 --wait
madvise a:0 --advice dontfork
madvise a:0 --advice dofork
madvise a:1 --advice wipeonfork
madvise a:1 --advice keeponfork
madvise a:2 --advice wipeonfork
madvise a:3 --advice dontfork
madvise s --advice wipeonfork
expect errno EINVAL
fork --name c
touch c/a:0 --read --wait
expect result data=01
touch c/a:1 --read --wait
expect result data=01
touch c/a:2 --read --wait
expect result data=00 minflt=1
expect pagemap c/a:2 present=1 zero=1
touch c/a:3 --read --wait
expect result sigsegv=1
expect pagemap a:2 present=1 exclusive=1
expect pagemap a:0 present=1 exclusive=0
kill c
waitpid c
expect pagemap a:0 present=1 exclusive=1
"""


def test_fork_advice_side_by_side(run_any):
    """MADV_DONTFORK / DOFORK / WIPEONFORK / KEEPONFORK (madvise_vma_behavior(): VM_DONTCOPY, VM_WIPEONFORK;
    WIPEONFORK on a file or shared VMA is EINVAL): the same script passes on both backends."""
    r = run_any(FORK_ADVICE)
    assert r["exit"] == 0, r.get("error")


# -- fork of a PMD-mapped THP -------------------------------------------------------------------------------------
FORK_THP = """\
mmap --size 4M --thp --name r
touch r:512 --write --fill 0xdf --wait
expect vma r AnonHugePages=2M
fork --name child
expect pagemap r:512-1023 present=1 exclusive=0
touch child/r:941 --write --fill 0x7a --wait
expect pagemap child/r:941 present=1 exclusive=1
expect pagemap child/r:940 present=1 exclusive=0
expect vma r AnonHugePages=2M
expect pagemap r:{other} exclusive=0
expect pagemap r:941 exclusive={x941}
touch child/r:512 --write --fill 0x7b --wait
expect pagemap child/r:513 exclusive=0
expect pagemap r:512 exclusive=1
expect pagemap r:{rest} exclusive={xrest}
kill child
waitpid child
expect pagemap r:512-1023 present=1 exclusive=1
"""
# 6.15+ (pagemap_pmd_range(): __folio_page_mapped_exclusively() of the head page for every entry) and the rule
# before it (folio_precise_page_mapcount() of page + idx)
FORK_THP_RULES = {"head": {"other": "512-1023", "x941": 0, "rest": "513-1023", "xrest": 1},
                  "per-page": {"other": "512-940", "x941": 1, "rest": "513-940", "xrest": 0}}


@pytest.mark.parametrize("backend,profile", [("kernel", None), ("emu", "6.18"), ("emu", "6.12")])
def test_fork_of_a_pmd_mapped_thp(tmp_path, backend, profile):
    """copy_huge_pmd(): the THP is shared whole (PageAnonExclusive cleared, the child's PMD write-protected); a
    write in the child splits only the child's PMD and copies one page.  The parent's PMD stays, and its
    exclusive bits follow pagemap_pmd_range(): since 6.15 the head page's precise mapcount for all 512 entries
    [measured on 6.18, CONFIG_PAGE_MAPCOUNT=y: X stays 0 everywhere after the child's COW of page 941, and
    turns 1 on all of them once the child has COWed the head page]; 6.12 and before, each page's own."""
    from test_thp import thp_script_on
    from uffdctl.emu import EmuBackend
    rule = "per-page" if profile == "6.12" else "head"
    thp_script_on(backend, tmp_path, FORK_THP.format(**FORK_THP_RULES[rule]),
                  emu=EmuBackend(profile=profile, soft_dirty=False) if backend == "emu" else None)


FORK_SWAPPED = """\
mmap --size 16K --type {memtype} --name r
touch r:0 --write --fill 0x10 --wait
touch r:1 --write --fill 0x11 --wait
madvise r --advice pageout
expect pagemap r:0-1 swap=1
fork --name child
touch child/r:0 --write --fill 0x96 --wait
touch child/r:1 --read --wait
expect result data=11
touch r:0 --read --wait
expect result data=10
expect pagemap r:0 present=1 exclusive=1
touch child/r:0 --read --wait
expect result data=96
touch r:1 --write --fill 0x22 --wait
touch child/r:1 --read --wait
expect result data=11
"""


@pytest.mark.kernel
@pytest.mark.parametrize("memtype", ["anon", "shmem-private"])
@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_fork_shares_swap_entries_and_cow_keeps_them_apart(tmp_path, host_swap, backend, memtype):
    """copy_nonpresent_pte(): a swapped-out page is shared by its swap entry (swap_duplicate()); a write by
    either side after its swap-in copies (wp_can_reuse_anon_folio(): folio_free_swap() fails while the other
    entry holds the slot, and try_to_unmap_one() had cleared PageAnonExclusive), so the other side keeps the old
    data [the differential, seed 227488197: the emulator let the child's write through to the parent]."""
    from uffdctl.script import run_file
    if backend == "kernel":
        b = make_backend("kernel")
    else:
        b = _emu()
        b.swap_on(64 << 20)
    p = tmp_path / "fork-swapped.uffd"
    p.write_text(FORK_SWAPPED.format(memtype=memtype))
    r = run_file(str(p), backend=b)
    assert r["ok"], r.get("error")


CHILD_THREAD_CALLS = """\
mmap --size 16K --name r
touch r:0 --write --wait
fork --name child
madvise child/r:0 --advice dontneed --thread main
wait
expect pagemap child/r:0 present=0
expect pagemap r:0 present=1
uffd open --proc child --name cu
api --uffd child/cu --features event_remove
register child/r --mode missing --uffd child/cu
handler --unread --uffd child/cu
madvise child/r:1 --advice dontneed --thread main
expect result blocked=1
read --uffd child/cu
expect result messages[0].event=remove
wait
expect result blocked=0 op=madvise
madvise child/r:1 --advice dontneed --thread main
expect result blocked=1
kill child
waitpid child
expect result signal_name=SIGKILL
"""


def test_thread_calls_in_a_child(run_any):
    """--thread on a child's system call: its only thread issues it and the session goes on; with the child's
    own uffd unread the madvise sleeps until its REMOVE message is read (userfaultfd_remove()); a SIGKILL
    ends it asleep (userfaultfd_event_wait_completion() gives up on a fatal signal), nothing hangs."""
    r = run_any(CHILD_THREAD_CALLS)
    assert r["exit"] == 0, r.get("error")


CHILD_DATA = """\
mmap --size 16K --name buf
touch buf --write --fill 0x41 --wait
fork --name c
expect data c/buf:0 hex=41
touch c/buf:1 --write --fill 0x42 --wait
expect data c/buf:1 hex=42
expect data buf:1 hex=41
touch c/buf:2 --write --fill 0x43 --wait
touch c/buf:3 --write --wait --thread main
expect data c/buf:2 hex=43
kill c
"""


def test_expect_data_reads_a_child(run_any):
    """expect data c/RANGE reads the child's memory with its one thread (the COW copy: the child's write is
    not the parent's)."""
    r = run_any(CHILD_DATA)
    assert r["exit"] == 0, r.get("error")


FORK_THP_PAGEOUT = """\
mmap --size 4M --thp --name r
touch r:512 --write --fill 0xdf --wait
expect vma r AnonHugePages=2M
fork --name child
touch r:839 --write --fill 0xaf --wait
madvise r:512-1023 --advice pageout
expect pagemap r:512-838 present=1 exclusive=0
expect pagemap r:839 swap=1
expect pagemap r:840-1023 present=1 exclusive=0
expect pagemap child/r:512-1023 present=1 exclusive=0
touch r:839 --read --wait
expect result data=af
"""


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_pageout_leaves_a_thp_a_child_still_maps(tmp_path, host_swap, backend):
    """After fork, the parent's write splits its PMD (the child keeps its own); MADV_PAGEOUT of the range then
    swaps only the parent's own COW copy: madvise_cold_or_pageout_pte_range() leaves a large folio another mm
    still maps (folio_likely_mapped_shared()) [the differential, seed 280]."""
    from test_thp import thp_script_on
    eb = None
    if backend == "emu":
        eb = _emu()
        eb.swap_on(64 << 20)
    thp_script_on(backend, tmp_path, FORK_THP_PAGEOUT, emu=eb)


COPY_INTO_A_CHILD = """\
api --features event_fork
mmap --size 16K --name src
mmap --size 16K --name dst
register dst --mode missing
fork --name child
expect event event=fork child=child ufd_name=child/u0
copy child/dst:0-1 --src src:0-1 --uffd child/u0
expect result copy=8192
expect pagemap src:0-1 present=1 zero=1
expect pagemap child/src:0-1 present=0
expect pagemap child/dst:0-1 present=1 zero=0
"""


def test_copy_into_a_child_reads_the_monitors_source(run_any):
    """UFFDIO_COPY on a forked child's uffd: copy_from_user() reads the source in current->mm, the monitor's --
    a never-touched source page is faulted in there (the zero page), the child's own mapping of that range
    stays empty [the soak, seeds 922208471 and 922213180: the emulator's inline zero-page source read faulted
    it into the child]."""
    r = run_any(COPY_INTO_A_CHILD)
    assert r["exit"] == 0, r.get("error")


def _fork_after_failed_mfill(b, mfill: bool) -> int:
    """A tmpfs file mapped MAP_PRIVATE, its page 4 read in; an UFFDIO_ZEROPAGE on the unregistered range (ENOENT)
    or none; fork: the parent's pagemap bits of page 4 (PM_MMAP_EXCLUSIVE stays only if fork copied no PTE)."""
    r = b.mmap_file(5 * PS, "/dev/shm", False, name="f")
    a = b.thread("t0").access(r.addr + 4 * PS, 1, False)
    assert a.wait(10)
    u = b.userfaultfd()
    u.api(0)
    if mfill:
        with pytest.raises(UffdError) as e:
            u.zeropage(r.addr, 4 * PS, 1)
        assert e.value.errno == errno.ENOENT
    f = b.fork("child", dict(b.regions))
    assert f.wait(10)
    f.result()
    return b.pagemap(r.addr + 4 * PS, 1)[0] >> 56


@pytest.mark.kernel
@pytest.mark.parametrize("mfill", [False, True], ids=["no-mfill", "failed-mfill"])
def test_a_failed_mfill_prepares_the_anon_vma_fork_copies(mfill):
    """uffd_lock_vma() (6.9+, 867a43a34ff8) gives a private VMA an anon_vma before it checks anything, so an
    UFFDIO_ZEROPAGE that fails ENOENT still makes vma_needs_copy() true: fork copies the file PTE (the parent's
    page loses PM_MMAP_EXCLUSIVE).  Host kernel and emulator 6.18 agree; 6.1.192 prepares it only for an mfill
    that passed its checks (the 6.1 guest's differential found it, seed 130)."""
    if not os.path.isdir("/dev/shm"):
        require_kernel("no /dev/shm here")
    kb = make_backend("kernel")
    try:
        k = _fork_after_failed_mfill(kb, mfill)
    finally:
        kb.close()
    e = {}
    for prof in ("6.18", "6.1"):
        eb = make_backend("emu", profile=prof)
        try:
            e[prof] = _fork_after_failed_mfill(eb, mfill)
        finally:
            eb.close()
    assert k == e["6.18"] == (0xA0 if mfill else 0xA1), (hex(k), e)
    assert e["6.1"] == 0xA1, e


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_backend_close_ends_the_processes_it_forked(backend):
    """Backend.close() kills and reaps every process its fork() made and stops their threads (the kernel backend
    left each child's request thread waiting forever when the caller was not a session)."""
    import threading
    b = make_backend(backend)
    f = b.fork("leaky", {})
    assert f.wait(10)
    p = f.result()
    b.close()
    assert not p.alive
    assert not [t.name for t in threading.enumerate() if t.name == "uffdctl-proc-leaky"]


@pytest.mark.parametrize("backend,profile", [("kernel", None), ("emu", "6.18"), ("emu", "6.12")])
def test_cow_of_a_pte_mapped_thp_reuses_it_once_the_child_is_gone(backend, profile):
    """do_wp_page() on a page of a PTE-mapped anon THP that a fork shared: while the child maps the folio the
    write copies the page; once the child has exited, 6.15+ reuse it in place (__wp_can_reuse_large_anon_folio():
    every mapping in this mm) where 6.12 copies it ("if (folio_test_large(folio)) return false") [measured on
    6.18; the soak found it at seed 869787569: the model copied]."""
    from test_thp import Probe, _thp_reason, H
    from uffdctl.emu import EmuBackend
    if backend == "kernel":
        reason = _thp_reason()
        if reason:
            require_kernel(reason)
        b = make_backend("kernel")
    else:
        b = EmuBackend(profile=profile, soft_dirty=False)
    pfn = lambda a: b.pagemap(a, 1)[0] & uapi.PM_PFRAME_MASK   # noqa: E731
    try:
        p = Probe(b)
        r = p.region(HP)
        b.write(r.addr, b"x")
        if not p.scan(r) or not p.scan(r)[0][2] & H:
            pytest.skip(f"the kernel got no THP here: {p.scan(r)}")
        part = (r.addr + 381 * PS, 102 * PS)          # mprotect of part of it splits the PMD, the folio stays large
        b.mprotect(*part, uapi.PROT_READ)
        b.mprotect(*part, uapi.PROT_READ | uapi.PROT_WRITE)
        assert not p.scan(r)[0][2] & H
        acc = b.fork("child", {})
        assert acc.wait(SETTLE)
        child = acc.result()
        first = pfn(r.addr + PS)
        b.write(r.addr + PS, b"c")                   # the child still maps the folio: copied, on every version
        assert pfn(r.addr + PS) != first
        child.close()                                 # SIGKILL and reap: the child's mappings are gone
        head = pfn(r.addr)
        b.write(r.addr, b"y")
        assert (pfn(r.addr) == head) == (profile != "6.12"), "reused" if pfn(r.addr) == head else "copied"
        assert b.read(r.addr, 1) == b"y" and b.read(r.addr + PS, 1) == b"c"
    finally:
        b.close()
