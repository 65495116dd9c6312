"""Regular files and SysV shm side by side: which register modes vma_can_userfault() takes on each backing, what a
disk file's page cache does on faults (major on a miss, read-around, fault-around), write-notify of a shared
file mapping, msync(MS_SYNC) write-protecting again, mprotect's write upgrade, private COW of a file page, and
PM_FILE -- the host kernel and the emulator (6.18) compared, and held to the values the kernel shows.
"""
from __future__ import annotations

import errno
import os
import tempfile

import pytest

from conftest import assert_steps_agree, hugetlb_reason, make_backend, require_kernel, run_closing
from uffdctl import uapi
from uffdctl.backend import MemType
from uffdctl.errors import UffdError

PS = uapi.PAGE_SIZE
R, F = uapi.RegisterMode, uapi.Feature
P, FILE, U, X = uapi.PM_PRESENT, uapi.PM_FILE, uapi.PM_UFFD_WP, uapi.PM_MMAP_EXCLUSIVE
MS_SYNC = 4
DISK = os.environ.get("TMPDIR_DISK", "/var/tmp")
TMPFS = "/dev/shm"


def _fs_reason() -> str | None:
    from uffdctl._libc import on_tmpfs
    if on_tmpfs(DISK):
        return f"{DISK} is tmpfs here: no disk filesystem for a regular file"
    if not os.path.isdir(TMPFS) or not on_tmpfs(TMPFS):
        return f"{TMPFS} is not tmpfs here"
    return None


def _need_fs() -> None:
    reason = _fs_reason()
    if reason:
        require_kernel(reason)


BACKINGS = ["anon", "shmem", "tmpfs-file", "tmpfs-file-private", "disk-file", "disk-file-private", "sysv",
            "sysv-hugetlb"]


def mapping(b, backing: str, pages: int = 4):
    if backing in ("anon", "shmem"):
        return b.mmap(pages * PS, MemType(backing), name="m")
    if backing.startswith("sysv"):
        hp = backing == "sysv-hugetlb"
        return b.mmap_sysv(pages * (2 << 20 if hp else PS), hp, name="m")
    d = TMPFS if backing.startswith("tmpfs") else DISK
    if os.path.isdir(backing):
        d = backing
    return b.mmap_file(pages * PS, d, not backing.endswith("private"), name="m")


def register_modes(b, backing: str) -> list:
    out = []
    for feats, mode in ((0, R.MISSING), (0, R.WP), (0, R.MINOR), (int(F.WP_ASYNC), R.WP)):
        r = mapping(b, backing)
        u = b.userfaultfd()
        u.api(feats)
        try:
            out.append((int(mode), feats, "ok", hex(u.register(r.addr, r.len, int(mode)))))
        except UffdError as e:
            out.append((int(mode), feats, errno.errorcode[e.errno]))
        u.close()
        b.munmap(r.addr, r.len)
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("backing", BACKINGS)
def test_register_modes_by_backing(backing):
    """vma_can_userfault(): anon, shmem and hugetlb take their modes; a disk file and SysV shm (shm_vm_ops is not
    shmem) take none but WP with UFFD_FEATURE_WP_ASYNC; a tmpfs file is shmem (MINOR too, even MAP_PRIVATE)."""
    _need_fs()
    kb = make_backend("kernel")
    try:
        if backing == "sysv-hugetlb" and hugetlb_reason(kb):
            require_kernel(hugetlb_reason(kb))
        k = register_modes(kb, backing)
    finally:
        kb.close()
    e = run_closing(make_backend("emu"), register_modes, backing)
    assert k == e
    if backing in ("disk-file", "disk-file-private", "sysv"):
        assert [x[2] for x in k] == ["EINVAL", "EINVAL", "EINVAL", "ok"], k
        assert k[3][3] == "0x17c", k
    elif backing == "anon":
        assert [x[2] for x in k] == ["ok", "ok", "EINVAL", "ok"], k
    else:
        assert [x[2] for x in k] == ["ok"] * 4, k


@pytest.fixture
def overlay_on_tmpfs(tmp_path):
    """An overlay mount whose upper layer is a tmpfs (the scripts/vmtest guest's / is one), unmounted after."""
    import subprocess
    if os.geteuid() != 0:
        require_kernel("mounting an overlay needs root")
    up, mnt = tmp_path / "upper", tmp_path / "mnt"
    for d in (up, mnt, tmp_path / "lower"):
        d.mkdir()
    mounted = []
    try:
        for argv in (["mount", "-t", "tmpfs", "tmpfs", str(up)],
                     ["mount", "-t", "overlay", "overlay", "-o",
                      f"lowerdir={tmp_path / 'lower'},upperdir={up}/u,workdir={up}/w", str(mnt)]):
            if argv[2] == "overlay":
                (up / "u").mkdir(), (up / "w").mkdir()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if p.returncode:
                require_kernel(f"{' '.join(argv[:4])}: {p.stderr.strip()}")
            mounted.append(argv[-1])
        yield str(mnt)
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", m], capture_output=True, timeout=30)


@pytest.mark.kernel
def test_a_file_on_an_overlay_over_tmpfs_is_shmem(overlay_on_tmpfs):
    """ovl_mmap() maps the upper layer's real file: on a tmpfs upper a file VMA is vma_is_shmem(), so MINOR
    registers (a differential in the scripts/vmtest guest, whose /var/tmp is such an overlay, found the emulator
    treating it as a disk file)."""
    got = {}
    for name in ("kernel", "emu"):
        b = make_backend(name)
        try:
            got[name] = [register_modes(b, overlay_on_tmpfs), _bits(b, _touched(b, overlay_on_tmpfs))]
        finally:
            b.close()
    assert got["kernel"] == got["emu"]
    assert [x[2] for x in got["kernel"][0]] == ["ok"] * 4, got


def _touched(b, d):
    r = b.mmap_file(4 * PS, d, True, name="t")
    _faults(b, r.addr, True)
    return r


def _faults(b, addr, write, fill=0x41):
    a = b.thread("t").access(addr, 1 if write else 8, write, fill=fill, stride=PS if write else 0,
                             want_data=not write)
    assert a.wait(5)
    r = a.result()
    return (r.minflt, r.majflt) + (() if write else (r.data[:1],))


def _bits(b, r, n=4):
    return ["".join(c for c, m in (("P", P), ("F", FILE), ("U", U), ("X", X)) if x & m) or "-"
            for x in b.pagemap(r.addr, n)]


def file_scenario(b, backing: str) -> list:
    """write p0, read p1, read p2, write p1, msync, write p0, mprotect R then RW, write p0, write p2."""
    r = mapping(b, backing)
    out = [("w p0", _faults(b, r.addr, True, 1)), ("r p1", _faults(b, r.addr + PS, False)),
           ("r p2", _faults(b, r.addr + 2 * PS, False)), ("pm", _bits(b, r))]
    out.append(("w p1", _faults(b, r.addr + PS, True, 2)))
    b.msync(r.addr, r.len, MS_SYNC)
    out.append(("msync", _bits(b, r)))
    out.append(("w p0 after msync", _faults(b, r.addr, True, 3)))
    b.mprotect(r.addr, r.len, uapi.PROT_READ)
    b.mprotect(r.addr, r.len, uapi.PROT_READ | uapi.PROT_WRITE)
    out.append(("w p0 after mprotect", _faults(b, r.addr, True, 4)))
    out.append(("w p2 after mprotect", _faults(b, r.addr + 2 * PS, True, 5)))
    out.append(("end", _bits(b, r), b.read(r.addr, 1) + b.read(r.addr + PS, 1)))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("backing", ["disk-file", "disk-file-private", "tmpfs-file", "sysv"])
def test_file_faults_side_by_side(backing):
    """A disk file: the first touch is a major fault and reads the file in around it (later faults minor, read
    faults map their neighbours); shared: write-notified (a read maps read-only, the first write faults), msync
    writes back and write-protects again, mprotect's upgrade needs pte_dirty(); private: every write is a COW
    into an anon page (PM_FILE gone, X set)."""
    _need_fs()
    k, e = (run_closing(make_backend(n), file_scenario, backing) for n in ("kernel", "emu"))
    assert_steps_agree(k, e)
    k = dict((x[0], x[1:]) for x in k)
    if backing == "disk-file":
        assert k["w p0"][0] == (0, 1), k                      # a page-cache miss: major, with read-around
        assert k["r p1"][0] == (1, 0, b"\0") and k["r p2"][0] == (0, 0, b"\0"), k   # then fault-around
        assert k["w p1"][0] == (1, 0), k                      # write-notify: mapped read-only by the read
        assert k["w p0 after msync"][0] == (1, 0), k          # folio_mkclean() write-protected it again
        assert k["w p0 after mprotect"][0] == (0, 0), k       # dirty: can_change_pte_writable() upgrades it
        assert k["w p2 after mprotect"][0] == (1, 0), k       # clean: it does not
    elif backing == "disk-file-private":
        assert k["pm"][0][:2] == ["PX", "PFX"], k             # the written page is an anon COW copy, no F


def test_bad_file_input_on_the_emulator():
    """The emulator refuses what it would have to invent: the contents of an existing host file."""
    from uffdctl.errors import NotModelled
    eb = make_backend("emu")
    try:
        with tempfile.NamedTemporaryFile(dir=DISK) as f:
            f.write(b"x" * PS)
            f.flush()
            with pytest.raises(NotModelled):
                eb.mmap_file(PS, f.name, True)
        with pytest.raises(UffdError) as ei:
            eb.msync(0x1001, PS, MS_SYNC)
        assert ei.value.errno == errno.EINVAL
    finally:
        eb.close()


def copy_from_file_scenario(b, backing: str) -> list:
    """UFFDIO_COPY whose source is a never-touched page of a file mapping: the copy's fault is a page-cache miss
    (filemap_fault(): VM_FAULT_MAJOR on a disk file), not an error; then a write to the source and a second copy."""
    src = mapping(b, backing, 2)
    dst = b.mmap(4 * PS, MemType.ANON, name="dst")
    u = b.userfaultfd()
    u.api(0)
    u.register(dst.addr, dst.len, int(R.MISSING))
    out = []
    try:
        out.append(("copy", u.copy(dst.addr, src.addr, 2 * PS)))
        out.append(("src", _bits(b, src, 2), "dst", _bits(b, dst, 2), b.read(dst.addr, 1)))
        out.append(("w src", _faults(b, src.addr + PS, True, 7)))
        out.append(("copy 2", u.copy(dst.addr + 2 * PS, src.addr, 2 * PS), b.read(dst.addr + 3 * PS, 1)))
    except UffdError as e:
        out.append(("copy", errno.errorcode[e.errno]))
    u.close()
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("backing", ["disk-file", "disk-file-private", "tmpfs-file"])
def test_copy_from_an_uncached_file_page(backing):
    """copy_from_user() of UFFDIO_COPY faults the source in from the file (a major fault is no failure)."""
    _need_fs()
    k, e = (run_closing(make_backend(n), copy_from_file_scenario, backing) for n in ("kernel", "emu"))
    assert_steps_agree(k, e)
    k = dict((x[0], x[1:]) for x in k)
    assert k["copy"] == (2 * PS,) and k["copy 2"] == (2 * PS, b"\x07"), k


def _rewrite_after_pageout(b) -> tuple:
    r = b.mmap_file(3 * PS, DISK, True, name="ra")
    _faults(b, r.addr, True, 0x78)
    b.lru_drain()                 # on the LRU, so reclaim_pages() takes it
    b.madvise(r.addr, 3 * PS, uapi.MADV_PAGEOUT)
    return _faults(b, r.addr, True, 0x0F)


@pytest.mark.kernel
def test_a_pg_readahead_page_retries_the_fault():
    """MADV_PAGEOUT leaves a dirty disk-file page in the cache with PG_reclaim (= PG_readahead); the next fault's
    do_async_mmap_readahead() drops the fault lock and retries: with per-VMA locks (6.4+) the retry is a plain
    minor fault (host kernel and emulator 6.18 agree); on 6.1 the mmap_lock retry carries FAULT_FLAG_TRIED and
    counts major [measured in the 6.1.192 guest's differential]."""
    _need_fs()
    kb = make_backend("kernel")
    try:
        k = _rewrite_after_pageout(kb)
    finally:
        kb.close()
    got = {}
    for prof in ("6.18", "6.1"):
        eb = make_backend("emu", profile=prof)
        try:
            got[prof] = _rewrite_after_pageout(eb)
        finally:
            eb.close()
    assert k == got["6.18"] == (1, 0), (k, got)
    assert got["6.1"] == (0, 1), got


@pytest.mark.kernel
def test_lru_drain_without_move_pages_drains_every_cpu(monkeypatch):
    """A kernel without CONFIG_NUMA has no move_pages(2) (ENOSYS: the tiny kernels `vmtest build` makes, whose
    differential failed on it); lru_drain() then runs MADV_COLD of a page of its own on each CPU it may use
    (madvise_cold() starts with lru_add_drain() of that CPU).  A file page first written on one CPU sits in that
    CPU's lru_add batch; after the drain, MADV_PAGEOUT from another CPU reclaims it: no longer present."""
    _need_fs()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"this process may run on one CPU only ({cpus}): no other CPU's batch to drain")
    import uffdctl._libc as libc
    called = []
    monkeypatch.setattr(libc, "move_pages_here", lambda addr: called.append(addr) or -errno.ENOSYS)
    b = make_backend("kernel")
    mask = os.sched_getaffinity(0)
    try:
        r = b.mmap_file(PS, DISK, True, name="drain")
        os.sched_setaffinity(0, {cpus[1]})
        b.write(r.addr, b"\x11")                    # folio_add_lru() on cpus[1]
        os.sched_setaffinity(0, {cpus[0]})
        b.lru_drain()
        assert called, "move_pages was not tried first"
        b.madvise(r.addr, PS, uapi.MADV_PAGEOUT)    # its own lru_add_drain() is cpus[0]'s only
        assert not b.pagemap(r.addr, 1)[0] & P, "the page written on another CPU was not reclaimed"
        assert b.read(r.addr, 1) == b"\x11"
    finally:
        os.sched_setaffinity(0, mask)
        b.close()
