"""The wider mm surface in scripts: variables, repeat, the new expectations, mremap/mprotect/msync/mlock,
mmap --align/--addr/--fixed/--thp, file and SysV memory, data, swap and pageout.

Each script runs on the kernel and, where the emulator models the operation, on the emulator; where it
does not, the emulator must say so (exit 4, "not modelled: X (emulator)") instead of guessing.
"""
from __future__ import annotations

import os
import textwrap
import zlib

import pytest

from test_cli_support import need_kernel  # noqa: F401
from conftest import require_kernel
from uffdctl.script import run_file


from test_script import _runner, run, run_any  # noqa: E402,F401  (one script runner, its fixtures)


@pytest.fixture
def run_emu(tmp_path):
    return _runner(tmp_path, "emu")


def ok(res):
    assert res["ok"], (res.get("error") or {}).get("message")
    return res


def failed(res, exit_code, *needles):
    assert not res["ok"], "the script passed"
    assert res["exit"] == exit_code, res["error"]
    for n in needles:
        assert n in res["error"]["message"], res["error"]["message"]
    return res["error"]


def not_modelled(res, what):
    return failed(res, 4, f"not modelled: {what} (emulator)")


# -- variables, arithmetic, repeat, comments ---------------------------------------------------------
def test_variables_arithmetic_and_result_fields(run_any):
    ok(run_any("""
        set PAGES=4
        mmap --size $((${PAGES} * 4))K --name buf
        expect result len=0x4000 len=16K
        set START=${result.start}
        expect addr buf:0 == ${START}
        expect addr buf:${PAGES} == $((${START} + 4 * 4096))
        expect addr buf:2+0x10 == buf:3-0xff0
    """))


def test_var_option_and_undefined_variable(run_any):
    ok(run_any("mmap --size ${SIZE} --name buf\nexpect result len=${SIZE}\n", variables={"SIZE": "8K"}))
    err = failed(run_any("mmap --size 4K --name buf\nmmap --size ${NOPE}\n"), 2, "undefined variable ${NOPE}")
    assert err["line"] == 2


def test_repeat_counts_iterations_and_names_the_failing_one(run_any):
    res = ok(run_any("""
        mmap --size 64K --name buf
        repeat 16 --var I
          touch buf:${I} --write --wait
          expect pagemap buf:${I} present=1
        end
        expect pagemap buf present=1
    """))
    assert any(e.get("iterations") == 16 for e in res["lines"])
    # only the first iteration is logged
    assert sum(1 for e in res["lines"] if e.get("text", "").startswith("touch")) == 1
    err = failed(run_any("""
        mmap --size 64K --name buf
        repeat 10 --var I
          touch buf:${I} --write --wait
          expect pagemap buf:$((${I} + 1)) present=0
          expect addr buf:${I} < buf:3
        end
    """), 1, "repeat iteration 3", "expected buf:3 < buf:3")
    assert err["iteration"] == [3] and err["line"] == 6


def test_malformed_structure_runs_nothing(run_any):
    res = failed(run_any("mmap --size 4K --name buf\nrepeat 3\ntouch buf --write\n"), 2, "repeat without end")
    assert res["line"] == 2
    failed(run_any("mmap --size 4K\nend\n"), 2, "end without repeat")
    failed(run_any("repeat 2000000\nend\n"), 2, "out of range")


def test_hash_digit_is_a_message_number_not_a_comment(run_any):
    ok(run_any("""
        mmap --size 16K --name buf   # a comment
        register buf --mode missing
        touch buf:1 --write
        # a whole-line comment
        expect event #1 event=pagefault address=buf:1 flags=WRITE   # and a trailing one
        copy buf:1 --fill 0x41
        wait
    """))


# -- expect error / event / events -------------------------------------------------------------------
def test_expect_error_fields(run_any):
    ok(run_any("""
        mmap --size 16K --name buf
        register buf --mode missing
        zeropage buf:2
        zeropage buf:2
        expect error errno=EEXIST done=-17 ioctl=UFFDIO_ZEROPAGE start=buf:2 len=4K type=PageExists
        zeropage buf:2-3
        expect error errno=17 errno_name=EEXIST done=-17
    """))
    failed(run_any("""
        mmap --size 16K --name buf
        register buf --mode missing
        zeropage buf:2
        zeropage buf:2
        expect error errno=EEXIST done=0
    """), 1, "done: expected 0, actual -17")
    failed(run_any("mmap --size 16K --name buf\nexpect error errno=EEXIST\n"), 1, "actual: success")


def test_expect_event_number_symbolic_flags_and_counts(run_any):
    ok(run_any("""
        mmap --size 16K --name buf
        register buf --mode missing,wp
        touch buf:1 --read
        copy buf:1 --fill 0x41 --wp
        wait
        touch buf:1 --write
        expect event event=pagefault flags=WRITE|WP address=buf:1 region=buf page=1
        writeprotect buf:1 --off
        wait
        touch buf:2 --write
        zeropage buf:2
        wait
        expect event #1 flags=0 address=buf:1
        expect event #2 flags=UFFD_PAGEFAULT_FLAG_WRITE|UFFD_PAGEFAULT_FLAG_WP
        expect event #3 flags=WRITE address=buf:2
        expect events count=3
        expect events count=3 event=pagefault
        expect events count=1 flags=WRITE|WP
        expect events count=2 since=#1
        expect events count=0 event=remove
    """))
    err = failed(run_any("""
        mmap --size 16K --name buf
        register buf --mode missing
        touch buf:1 --write
        expect event flags=WRITE|WP
    """), 1, "flags: expected WRITE|WP, actual 0x1")
    assert "WRITE" in err["message"]
    failed(run_any("mmap --size 4K --name buf\nregister buf --mode missing\ntouch buf --read\n"
                   "expect event #7 event=pagefault\n"), 1, "expected message #7")


def test_remove_and_unmap_events_region_relative(run_emu):
    # A move of a registered VMA sends REMAP, then UNMAP of the old range (measured on 6.18 with this script;
    # the emulator agrees).  On the kernel the expectations right after the command need the handler barrier
    # (blocking events in the log when the command returns: proc's part of issue 10); until it lands the
    # kernel variant would race, so it runs on the emulator only.
    ok(run_emu("""
        api --features thread_id,event_remove,event_unmap,event_remap
        mmap --size 16K --name buf
        register buf --mode missing
        zeropage buf
        madvise buf:1-2 --advice dontneed
        expect event event=remove start=buf:1 end=buf:3
        munmap buf:3
        expect event event=unmap start=buf:3 end=buf:4
        expect result regions.0=buf
        mmap --size 16K --name dst
        mremap buf --size 12K --maymove --fixed --to dst:0
        expect result region=buf moved=1
        expect addr buf:0 == dst.3:0-12K
        expect event #3 event=remap from=buf:0 to=buf:0 len=12K
        expect event #4 event=unmap start=buf:0 end=buf:3
        expect events count=2 event=unmap
    """))


# -- mremap / munmap / mmap --addr: the bookkeeping follows -------------------------------------------
def test_mremap_move_grow_shrink(run_any):
    ok(run_any("""
        mmap --size 16K --name buf
        copy buf:0 --fill 0x41
        expect errno ENOENT
        mmap --size 16K --name dst
        touch buf:0-3 --write --wait --fill 0x41
        set OLD=${result.start}
        mremap buf --size 32K --maymove
        expect result moved=1 old_size=16K new_size=32K region=buf
        expect addr buf:0 != ${OLD}
        expect data buf:0-3 hex=41
        expect pagemap buf:0-3 present=1
        expect pagemap buf:4-7 present=0
        mremap buf --size 8K
        expect result moved=0 region=buf
        expect addr buf:2 == buf:0+8K
        mremap dst:1-2 --size 8K --maymove --fixed --to buf:0 --name moved
        expect addr moved:0 == ${result.new_address}
        expect addr dst.3:0 == dst:0+12K
        expect data moved zero
    """))
    failed(run_any("mmap --size 16K --name buf\nmremap buf:1 --size 4K --maymove\n"), 2, "--name")
    failed(run_any("mmap --size 16K --name buf\nmremap buf --size 5000\n"), 2, "multiple of")


def test_mremap_without_maymove_cannot_grow_into_a_neighbour(run):
    ok(run("""
        mmap --size 32K --name buf
        munmap buf:4-7
        mmap --size 4K --addr buf:4 --name next
        mremap buf --size 32K
        expect error errno=ENOMEM ioctl=mremap
        mremap buf --size 16K --fixed --to next:0
        expect errno EINVAL
    """))


def test_munmap_range_carves_regions(run_any):
    res = ok(run_any("""
        mmap --size 32K --name buf
        munmap buf:2-3
        expect result regions.0=buf
        expect addr buf:2 == buf.4:0-8K
        touch buf.4:0-3 --write --wait
        expect pagemap buf.4 present=1
        munmap buf:0
        expect addr buf.1:0 == buf.4:0-12K
        regions
    """))
    names = [r["name"] for r in res["lines"][-1]["result"]["regions"]]
    assert names == ["buf.4", "buf.1"] or sorted(names) == ["buf.1", "buf.4"]


def test_mmap_addr_noreplace_and_fixed(run_any):
    """MAP_FIXED_NOREPLACE over a region is EEXIST; MAP_FIXED replaces it: mmap_region() unmaps the old range
    first (the UNMAP message of an EVENT_UNMAP ctx there) and the new VMA is not registered."""
    ok(run_any("""
        api --features thread_id,event_unmap
        mmap --size 32K --name buf
        register buf --mode missing
        mmap --size 8K --addr buf:2 --name over
        expect error errno=EEXIST ioctl=mmap
        mmap --size 8K --addr buf:2 --fixed --name over
        expect addr over:0 == buf:2
        expect vma over flags=!um
        expect vma buf flags=um count=1
        expect addr buf:2 == over:0
        expect vma buf.4 flags=um count=1
        touch over --write --wait
        expect pagemap over present=1
        expect scan buf:1+12K --category-mask present regions=1 r0.start=over:0 r0.end=over:2
        expect events count=1 event=unmap start=buf:2 end=buf:4
        mmap --size 32K --addr buf:0 --fixed --name all
        regions
        expect result regions.0.name=all
        expect events count=2 event=unmap      # one per ctx for the whole range (has_unmap_ctx())
    """))


def test_mmap_fixed_refuses_memory_not_the_sessions(run):
    daemon = int(open("/proc/self/maps").readline().split("-")[0], 16)   # run is in-process: our own memory
    failed(run(f"mmap --size 8K --addr {daemon:#x} --fixed --name x\n"), 2, "not one of the session's regions")


def test_scan_raw_ranges_flags_and_masks(run_any):
    """pagemap_ioctl.c's sanity checks: raw flags, max_pages=-1, a zero-length walk, a walk of unmapped
    memory; and mask matches (every bit of the mask set)."""
    ok(run_any("""
        mmap --size 16K --name buf
        register buf --mode missing,wp
        expect result ioctls&=0x1c ioctls&=_UFFDIO_COPY|_UFFDIO_ZEROPAGE
        scan buf --flags 0xff
        expect error errno=EINVAL ioctl=PAGEMAP_SCAN
        scan buf --max-pages -1
        expect result walk_end=buf:4
        scan buf:1+0
        expect result walk_end=buf:1 n=0
        scan 0x10000000+0x40000
        expect result n=0
    """))
    failed(run_any("mmap --size 16K --name buf\nregister buf --mode missing\nexpect result ioctls&=0x2\n"), 1,
           "ioctls&: expected 0x2")


def test_alias_align(run):
    ok(run("""
        mmap --size 2M --type shmem --name sh
        alias sh --align 2M --name al
        expect addr al:0 aligned=2M
        expect result alias_of=sh
    """))


def test_mmap_align(run_any):
    ok(run_any("""
        mmap --size 64K --align 2M --name a
        expect addr a:0 aligned=2M
        mmap --size 8K --align 64K --name b
        expect addr b:0 aligned=64K
    """))
    failed(run_any("mmap --size 8K --align 3K\n"), 2, "power of two")


# -- mprotect, mlock, msync ---------------------------------------------------------------------------
def test_mprotect_prot_none(run):
    ok(run("""
        mmap --size 16K --name buf
        touch buf --write --wait
        mprotect buf:1 --prot none
        expect vma buf:1 flags=!rd,!wr count=1
        expect vma buf:0 flags=rd,wr
        expect vma buf count=3
        expect pagemap buf:1 present=1
        mprotect buf:2 --prot read
        touch buf:2 --read --wait
        mprotect buf --prot read,write
        expect vma buf count=1
    """))
    failed(run("mmap --size 16K --name buf\nmprotect buf:1 --prot none\ntouch buf:1 --read\n"), 2, "SIGSEGV")
    failed(run("mmap --size 16K --name buf\nmprotect buf --prot read\ntouch buf:0 --write\n"), 2, "PROT_READ")
    failed(run("mmap --size 16K --name buf\nmprotect buf --prot rw\n"), 2, "bad --prot")


def test_mprotect_emulated(run_emu):
    ok(run_emu("mmap --size 16K --name buf\nmprotect buf:1 --prot none\nexpect result prot=0\n"))


def test_mlock_msync(run):
    ok(run("""
        mmap --size 16K --name buf
        mlock buf:0-1
        expect vma buf:0 flags=lo Locked=8K
        expect pagemap buf:0-1 present=1
        munlock buf
        expect vma buf flags=!lo count=1
        mmap --size 16K --name lazy
        mlock lazy --onfault
        expect pagemap lazy present=0
        expect vma lazy flags=lo,lf
        munlock lazy
        mmap --size 16K --type shmem --name sh
        touch sh --write --wait
        msync sh
        msync sh --async --invalidate
        msync sh --async --sync
        expect errno EINVAL
    """))
    failed(run("mmap --size 16K --name buf\nregister buf --mode missing\nmlock buf\n"), 2,
           "would block in a userfault", "buf:0 is missing")


def test_mm_ops_not_modelled_on_emulator(run_emu):
    for line, what in (("madvise buf --advice populate_write", "madvise populate_write"),):
        not_modelled(run_emu(f"mmap --size 16K --name buf\n{line}\n"), what)
    ok(run_emu("mmap --size 16K --name buf\nexpect vma buf count=1 flags=rd,wr,nh,!hg\n"))   # smaps: modelled


# -- THP ----------------------------------------------------------------------------------------------
# The anon THP script (smaps VmFlags hg/nh, AnonHugePages, PAGE_IS_HUGE, MADV_COLLAPSE) runs on both backends in
# tests/test_thp.py::test_thp_script_on_both.
def _shmem_thp_knobs_allow() -> str | None:
    """None if the host's knobs let a memfd take THPs (MADV_HUGEPAGE), else the top-level value."""
    import glob
    text = open("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read()
    cur = text.split("[")[1].split("]")[0]
    if cur == "deny":
        return cur
    per = [open(p).read() for p in glob.glob("/sys/kernel/mm/transparent_hugepage/hugepages-*kB/shmem_enabled")]
    if cur == "never" and not any(x in t for t in per for x in ("[always]", "[within_size]", "[advise]")):
        return cur
    return None


def test_shmem_thp_follows_the_sysfs_knob(run):
    text = open("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read()
    cur = _shmem_thp_knobs_allow()
    res = run("mmap --size 4M --type shmem --thp --name s\n")
    if cur is not None:
        failed(res, 4, f"shmem_enabled is [{cur}]")
    else:
        ok(res)
    assert open("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read() == text


def test_shmem_thp_follows_the_emulators_own_knob(tmp_path):
    """The emulator answers from its own knobs (never the host's): [never] refuses, a per-size knob allows."""
    from uffdctl.registry import open_backend
    from uffdctl.script import run_file
    f = tmp_path / "s.uffd"
    f.write_text("mmap --size 4M --type shmem --thp --name s\ntouch s:1 --write --wait\nexpect pagemap s:0-3 present=1\n")
    b = open_backend("emu", profile="6.18", soft_dirty=False)
    failed(run_file(str(f), backend=b), 4, "shmem_enabled is [never]")
    b = open_backend("emu", profile="6.18", soft_dirty=False)
    b.set_thp_knob("hugepages-16kB/shmem_enabled", "always")
    ok(run_file(str(f), backend=b))


# -- data ---------------------------------------------------------------------------------------------
def test_data_touch_read_and_expect_data(run_any, tmp_path):
    pattern = bytes(range(256)) * 48
    (tmp_path / "pat.bin").write_bytes(pattern)
    ok(run_any(f"""
        mmap --size 16K --name buf
        register buf --mode missing
        copy buf:0-1 --from-file {tmp_path}/pat.bin
        expect data buf:0 crc32=0x{zlib.crc32(pattern[:4096]):08x}
        expect data buf:0-1 crc32={zlib.crc32(pattern[:8192]):08x} hex=000102030405
        copy buf:2 --from-file {tmp_path}/pat.bin --offset 4097
        expect data buf:2 hex=01020304
        copy buf:3 --fill 0x41
        touch buf:0-3 --read --wait
        expect result data=00000141
        expect data buf:3 byte=0x41
    """))
    failed(run_any("mmap --size 16K --name buf\nzeropage buf:0\nexpect data buf:0 byte=0x41\n"
                   .replace("zeropage buf:0\n", "touch buf:0 --read --wait\n")), 1,
           "4096 byte(s) differ from 0x41", "buf:0")
    failed(run_any("mmap --size 16K --name buf\nregister buf --mode missing\nexpect data buf:1 zero\n"), 1,
           "would block in a userfault", "buf:1 is missing")
    failed(run_any(f"mmap --size 16K --name buf\nregister buf --mode missing\n"
                   f"copy buf --from-file {tmp_path}/pat.bin\n"), 2, "the destination needs 16384")


# -- PAGEMAP_SCAN -------------------------------------------------------------------------------------
def test_expect_scan_regions_vec_len_walk_end(run_any):
    ok(run_any("""
        mmap --size 64K --name buf
        touch buf:0 --write --wait
        touch buf:2-3 --write --wait
        expect scan buf --category-mask present regions=2 walk_end=buf:16 r0.start=buf:0 r0.end=buf:1 r1.start=buf:2 r1.end=buf:4
        expect scan buf --category-mask present --return-mask present r0.categories=present
        expect scan buf --category-mask present --vec-len 1 --once regions=1 n=1 walk_end=buf:2
        scan buf --category-mask present --max-pages 2
        expect result regions.0.end=buf:1 regions.1.end=buf:3 walk_end=buf:3
    """))
    failed(run_any("mmap --size 64K --name buf\ntouch buf:0 --write --wait\n"
                   "expect scan buf --category-mask present regions=2\n"), 1, "regions: expected 2, actual 1")


# -- files and SysV -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["/dev/shm", "/var/tmp"])
def test_file_mappings_shared_and_private(run, where):
    if not os.path.isdir(where):
        require_kernel(f"no {where} here")
    shmem = f" {where} tmpfs " in open("/proc/mounts").read()
    ok(run(f"""
        mmap --size 16K --type file --path {where} --name f
        expect result type=file
        touch f:0 --write --wait --fill 0x5a
        msync f
        alias f --name f2
        expect data f2:0 hex=5a
        mmap --size 16K --type file-private --path {where} --name p
        touch p:0 --write --wait
        expect pagemap p:0 present=1 file=0
        expect vma f flags=sh count=1
        expect vma p flags=!sh count=1
    """))
    reg = run(f"mmap --size 16K --type file --path {where} --name f\nregister f --mode missing\n")
    if shmem:
        ok(reg)
    else:   # vma_can_userfault(): MISSING only on anon, shmem and hugetlb
        failed(reg, 1, "EINVAL")
    assert not [n for n in os.listdir(where) if n.startswith("uffdctl-f-") or n.startswith("uffdctl-p-")]


def test_file_path_created_and_removed(run, tmp_path):
    path = tmp_path / "mapped.bin"
    ok(run(f"mmap --size 8K --type file --path {path} --name f\ntouch f --write --wait\n"))
    assert not path.exists()
    path.write_bytes(b"\x11" * 8192)
    ok(run(f"mmap --size 8K --type file --path {path} --name f\nexpect data f:1 byte=0x11\n"))
    assert path.read_bytes() == b"\x11" * 8192   # a file we did not create stays


def test_sysv_shm(run):
    # SysV shm VMAs have shm_vm_ops, not shmem's: vma_is_shmem() is false, so vma_can_userfault() allows only
    # the wp-only mode with UFFD_FEATURE_WP_ASYNC (what pagemap_ioctl.c's sysv cases use)
    ok(run("""
        api --features thread_id,wp_async
        mmap --size 16K --type sysv --name s
        expect result type=sysv
        expect vma s flags=sh
        register s --mode missing
        expect error errno=EINVAL ioctl=UFFDIO_REGISTER
        register s --mode wp
        writeprotect s --on
        expect scan s --category-mask written regions=0
        touch s:1 --write --wait --fill 0x7e
        expect scan s --category-mask written regions=1 r0.start=s:1 r0.end=s:2
        expect data s:1 hex=7e
        munmap s
    """))


def test_sysv_hugetlb_says_why_without_huge_pages(run):
    from uffdctl.kernel import hugepages_total, meminfo
    m = meminfo()
    if hugepages_total() and m.get("HugePages_Free", 0) - m.get("HugePages_Rsvd", 0) < 1:
        pytest.skip(f"HugePages_Free={m.get('HugePages_Free')} HugePages_Rsvd={m.get('HugePages_Rsvd')}: the "
                    f"reserved huge pages are in use (another run holds them)")
    res = run("mmap --size 2M --type sysv-hugetlb --name h\ntouch h:0 --write --wait\nexpect pagemap h:0 present=1\n")
    if hugepages_total() == 0:
        failed(res, 4, "HugePages_Total=0")
    else:
        ok(res)


# -- swap -------------------------------------------------------------------------------------------
def _uffdctl_swaps(pid=None):
    """This process's uffdctl swapfiles (other checkouts' test runs on the machine swap theirs on and off);
    pid="": everybody's."""
    pid = os.getpid() if pid is None else pid
    return [ln for ln in open("/proc/swaps").read().splitlines() if f"uffdctl-swap-{pid}" in ln]


def test_swap_pageout_and_cleanup(run):
    if os.geteuid() != 0:
        require_kernel("swap needs root")
    before = _uffdctl_swaps()
    try:
        ok(run("""
            swap on --size 64M
            swap
            expect result mine.0~=x
            mmap --size 256K --name buf
            touch buf --write --wait --fill 0x33
            madvise buf --advice pageout
            expect pagemap buf swap=1 present=0
            expect scan buf --category-mask swapped regions=1 r0.start=buf:0 r0.end=buf:64
            expect data buf:7 hex=33
            expect pagemap buf:7 swap=0 present=1
            mmap --size 64K --type shmem --name sh
            touch sh --write --wait
            madvise sh --advice pageout
            expect pagemap sh present=0
            swap off
            swap on --size 64M
        """.replace("            expect result mine.0~=x\n", "")))
        # the run ended with swap on: the tool swapped it off and removed the file
        assert _uffdctl_swaps() == before
        assert not [n for n in os.listdir("/var/tmp") if n.startswith(f"uffdctl-swap-{os.getpid()}-")]
    finally:
        for ln in _uffdctl_swaps():
            if ln not in before:
                path = ln.split()[0]
                os.system(f"swapoff {path}; rm -f {path}")


def test_pageout_without_swap_keeps_anon_pages(run):
    if _uffdctl_swaps() or [ln for ln in open("/proc/swaps").read().splitlines()[1:]]:
        pytest.skip("a swap device is on (another test or user): this test needs none")
    ok(run("""
        mmap --size 64K --name buf
        touch buf --write --wait
        madvise buf --advice pageout
        expect pagemap buf present=1 swap=0
    """))


def test_swap_bad_input(run):
    failed(run("swap on --size 1K\n"), 2, "multiple of 4K")
    failed(run("swap sideways\n"), 2, "say on, off or status")
    failed(run("swap off --size 64M\n"), 2, "go with swap on")
    if os.geteuid() == 0:
        failed(run("swap off\n"), 1, "no swapfile of this session")


# -- the CLI: -j keys, --help examples, bad input --------------------------------------------------
from test_cli_support import cli, session  # noqa: E402,F401  (fixtures)

NEW_COMMANDS = ("mremap", "mprotect", "msync", "mlock", "munlock", "swap")


@pytest.mark.parametrize("name", NEW_COMMANDS + ("mmap", "madvise", "munmap", "scan", "copy"))
def test_help_has_an_example(cli, name):
    p = cli(name, "--help", check=0)
    assert "Example:" in p.stdout and f"uffdctl {name}" in p.stdout


def test_session_json_keys_and_swap_cleanup(session):
    c = session
    r = c.j("mremap", "buf", "--size", "128K", "--maymove")
    assert set(r) == {"old_address", "old_size", "new_size", "flags", "new_address", "region", "moved"}
    assert r["new_size"] == 128 << 10 and r["flags"] == 1 and r["region"] == "buf"
    r = c.j("mprotect", "buf:0", "--prot", "read")
    assert set(r) == {"start", "len", "prot", "prot_decoded"} and r["prot"] == 1
    assert set(c.j("mlock", "buf:1")) == {"start", "len", "flags"}
    assert set(c.j("munlock", "buf:1")) == {"start", "len"}
    assert set(c.j("msync", "buf:1")) == {"start", "len", "flags"}
    r = c.j("mmap", "--size", "4M", "--align", "2M", "--name", "al")
    assert r["start"] % (2 << 20) == 0
    r = c.j("munmap", "al:1-2")
    assert r["regions"] == ["al"]
    names = {x["name"] for x in c.j("regions")["regions"]}
    assert {"buf", "al", "al.3"} <= names
    c.j("touch", "buf:2", "--read", "--wait")
    ev = c.j("touches")["touches"][-1]
    assert ev["data"] == "00" and "crc32" in ev
    if os.geteuid() != 0:
        return
    before = _uffdctl_swaps(pid="")
    try:
        r = c.j("swap", "on", "--size", "64M")
        assert set(r) == {"filename", "size", "active"} and r["active"]["size"] == (64 << 20) - 4096
        assert os.path.basename(r["filename"]).startswith("uffdctl-swap-")
        assert set(c.j("swap")) == {"swaps", "mine"}
        c("session", "stop", "t", check=0)
        assert r["filename"] not in open("/proc/swaps").read() and not os.path.exists(r["filename"])
    finally:
        for ln in _uffdctl_swaps(pid=""):
            if ln not in before:
                os.system(f"swapoff {ln.split()[0]}; rm -f {ln.split()[0]}")
        c("session", "start", "--name", "t", "--backend", "kernel")   # for the fixture's stop


BAD_INPUT = [
    (["mremap", "buf", "--size", "x"], "bad --size"),
    (["mremap", "buf", "--size", "16K", "--fixed"], "--fixed needs --to"),
    (["mremap", "buf", "--size", "16K", "--maymove", "--fixed", "--to", "nope:0"], "unknown region 'nope'"),
    (["mprotect", "buf", "--prot", "bogus"], "bad --prot"),
    (["mmap", "--size", "16K", "--align", "3K"], "power of two"),
    (["mmap", "--size", "16K", "--type", "file"], "needs --path"),
    (["mmap", "--size", "16K", "--path", "/tmp"], "--path goes with"),
    (["mmap", "--size", "16K", "--fixed"], "--fixed needs --addr"),
    (["swap", "on", "--size", "1K"], "multiple of 4K"),
    (["madvise", "buf", "--advice", "bogus"], "bogus"),
    (["scan", "buf", "--vec-len", "-1"], "bad --vec-len"),
    (["copy", "buf:0", "--from-file", "/nonexistent"], "--from-file"),
]


def test_bad_input_is_one_line_exit_2(session):
    for args, needle in BAD_INPUT:
        p = session(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        r = session.j("regions")
        assert [x["name"] for x in r["regions"]] == ["buf"], args     # nothing changed


def test_soft_dirty_c_test_simple_10000_iterations(tmp_path):
    """soft-dirty.c's test_simple as written in the language, on the emulator (soft-dirty on); the
    kernel here has CONFIG_MEM_SOFT_DIRTY off (tests/test_softdirty.py covers the kernel in the VM)."""
    f = tmp_path / "sd.uffd"
    f.write_text(textwrap.dedent("""
        mmap --size 4K --name map
        clear-refs 4
        repeat ${N}
          expect pagemap map:0 soft_dirty=0
          clear-refs 4
          touch map:0 --write --wait
          expect pagemap map:0 soft_dirty=1
          clear-refs 4
        end
    """))
    res = ok(run_file(str(f), backend="emu", variables={"N": "10000"}))
    assert any(e.get("iterations") == 10000 for e in res["lines"])
    assert len(res["lines"]) < 20      # the loop is logged once, not 50,000 times


# -- your own file, side by side -------------------------------------------------------------------
SIDE = """\
api --features thread_id
mmap --size 16K --name buf
register buf --mode missing
touch buf:1 --write
expect event #1 address=buf:1 flags=WRITE
copy buf:1 --fill 0x41
wait
zeropage buf:1
expect error errno=EEXIST done=-17
expect pagemap buf:1 present=1
"""


def test_repro_file_side_by_side(cli, tmp_path):
    need_kernel()
    f = tmp_path / "mine.uffd"
    f.write_text(SIDE + "mprotect buf:0 --prot none\nmadvise buf:1 --advice willneed\n")
    p = cli("repro", str(f), "--watch", "buf:1", check=0)
    assert "kernel" in p.stdout and "(twin)" in p.stdout            # the backend of every column is named
    assert "EEXIST [P]" in p.stdout
    assert "PASS" in p.stdout and "UNSUPPORTED: line 12: not modelled: madvise willneed (emulator)" in p.stdout
    r = cli.j("repro", str(f), "--profile", "6.1")
    assert [x["target"]["label"] for x in r["runs"]][0] == "kernel" and len(r["runs"]) == 3
    assert r["runs"][0]["verdict"] == "PASS" and r["differing"] == [12]
    steps = {s["line"]: s for s in r["runs"][0]["steps"]}
    assert steps[4]["cell"] == "blocked" and steps[8]["cell"] == "EEXIST"
    # a failing expectation: FAIL, exit 1, the line named
    f.write_text(SIDE + "expect pagemap buf:2 present=1\n")
    p = cli("repro", str(f), check=1)
    assert "FAIL: line 11: page 2" in p.stdout
    p = cli("run", str(f), "--backend", "both", check=1)
    assert "FAIL: line 11" in p.stdout
    f.write_text("repeat 2\nmmap --size 4K\n")
    p = cli("repro", str(f), check=2)
    assert "repeat without end" in p.stderr


# -- issue 10's last gaps: shared-anon, --page-size 1G, --thread on every blocking mm call, list indices ------
SHARED_ANON = """
    mmap --size 16K --type shared-anon --name buf
    expect result type=shared-anon page_size=4K
    mmap --size 16K --name priv
    register priv --mode minor
    expect errno EINVAL                 # anon: vma_can_userfault() has no MINOR for it
    register buf --mode missing,minor,wp
    expect result mode=MISSING|WP|MINOR ioctls&=CONTINUE
    touch buf:1 --write
    expect result blocked=1
    expect event event=pagefault address=buf:1 flags=WRITE
    zeropage buf:1
    wait
    expect pagemap buf:1 present=1 file=1   # a shmem page: PM_FILE (not PageAnon)
    expect pagemap buf:2 present=0
"""


def test_shared_anon_is_shmem(run_any):
    """MAP_SHARED|MAP_ANONYMOUS is shmem to the kernel (shmem_zero_setup()): MINOR registration works where
    private anon says EINVAL, and its pages are PM_FILE -- on the kernel and in the model alike; it has no fd
    to alias (one line, exit 2)."""
    ok(run_any(SHARED_ANON))
    failed(run_any(SHARED_ANON + "    alias buf\n"), 2, "shared-anon", "no fd to alias")


def test_shared_anon_is_shared_with_a_child(run):
    """A child of the session sees the parent's writes to a shared-anon region (one shmem file), not a copy."""
    ok(run("""
        mmap --size 8K --type shared-anon --name buf
        fork --name child
        touch buf:0 --write --fill 0x5a --wait
        touch child/buf:0 --read --wait
        expect result data=5a
        touch child/buf:1 --write --fill 0x77 --wait
        touch buf:1 --read --wait
        expect result data=77
        kill child
        waitpid child
    """))


@pytest.mark.parametrize("line,needle", [
    ("mmap --size 4M --type hugetlb --page-size 3M", "power of two"),
    ("mmap --size 4M --type anon --page-size 2M", "--page-size is for --type hugetlb"),
    ("mmap --size 4M --type hugetlb --page-size 64K", "no hugetlb page size 64K"),
    ("mmap --size 4M --type hugetlb --page-size x1", "bad --page-size"),
    ("mmap --size 2M --type hugetlb-private --page-size 1G", "not a multiple of the hugetlb-private page size"),
    ("mmap --size 4K --type sysv --page-size 4K", "--page-size is for --type hugetlb"),
])
def test_page_size_bad_input(run, line, needle):
    err = failed(run(line), 2, needle)
    assert "\n" not in err["message"]


def test_hugetlb_1g_pages(run, run_emu):
    """mmap --type hugetlb --page-size 1G maps 1 GiB pages (MFD_HUGE_1GB): one write fault maps the whole GiB
    (one present, huge region; smaps KernelPageSize 1G); the emulator models the PUD-sized hstate too."""
    d = "/sys/kernel/mm/hugepages/hugepages-1048576kB"
    if not os.path.isdir(d):
        require_kernel(f"no {d}: this kernel has no 1 GiB hstate")
    script = """
        mmap --size 1G --type hugetlb-private --page-size 1G --name mem
        expect result page_size=1G len=1G
        expect pagemap mem present=0
        touch mem:0 --write --wait --timeout 60
        expect scan mem --category-mask present,huge regions=1 r0.start=mem:0 r0.end=mem:1
        expect vma mem KernelPageSize=1G
    """
    ok(run_emu(script))
    nr = os.path.join(d, "nr_hugepages")
    free = int(open(os.path.join(d, "free_hugepages")).read()) - int(open(os.path.join(d, "resv_hugepages")).read())
    added = 0
    if free < 1 and os.geteuid() == 0:
        old = int(open(nr).read())
        with open(nr, "w") as f:
            f.write(str(old + 1 - free))
        added = int(open(nr).read()) - old        # what the kernel could allocate
    try:
        free = int(open(os.path.join(d, "free_hugepages")).read()) - int(open(os.path.join(d, "resv_hugepages")).read())
        if free < 1:
            require_kernel(f"no free 1 GiB huge page ({d}: free-resv={free}; the kernel found no contiguous 1 GiB)")
        ok(run(script))
    finally:
        if added > 0:       # give back what this test added (other runs may add and give back theirs meanwhile)
            now = int(open(nr).read())
            with open(nr, "w") as f:
                f.write(str(max(now - added, 0)))


THREADED_MM = """
    api --features event_unmap,event_remap,thread_id
    mmap --size 16K --name buf
    mmap --size 16K --name dst
    register buf --mode missing
    handler --unread
    munmap buf:3 --thread t1
    expect result blocked=1 op=munmap
    read --timeout 5
    wait
    expect result blocked=0 op=munmap regions[0]=buf
    expect event event=unmap start=buf:3 action=read
    mremap buf:0-2 --size 12K --maymove --fixed --to dst:0 --name moved --thread t1
    expect result blocked=1 op=mremap
    read --timeout 5
    expect result messages[0].event=remap
    read --timeout 5
    expect result messages[-1].event=unmap    # the source, unmapped after the REMAP was read
    wait
    expect result blocked=0 new_address=moved:0 region=moved moved=1
    expect event #2 event=remap from=buf:0 to=dst:0 len=12K action=read
    mmap --size 4K --addr moved:0 --fixed --name over --thread t2
    expect result blocked=1 op=mmap
    read --timeout 5
    wait
    expect result name=over
    regions
    expect result regions[-1].name=over regions[-1].start=moved.1:0-4K regions[1].name=moved.1
    handler --read
    mlock moved.1:0 --thread t3
    expect result op=mlock
    wait --timeout 1
    expect result blocked=1              # in a MISSING fault nobody resolves (the handler queues it)
    handler --policy zeropage
    wait
    expect result blocked=0 op=mlock
    expect events count=1 event=pagefault address=moved.1:0   # queued then released, or zeropage'd
    expect pagemap moved.1:0 present=1
"""


def test_thread_on_every_blocking_mm_call(run, run_emu):
    """munmap, mremap, mmap --fixed and mlock with --thread: issued from a session thread, they stay blocked
    while their UNMAP/REMAP message is unread (handler --unread) and the session goes on (read, wait); the
    regions are carved and moved once the call has returned.  mlock blocks in a fault nobody resolves until
    the handler's policy resolves it.  The emulator runs each as a call that sleeps where the kernel's does
    (sched.SyscallTask): the same results, message by message."""
    ok(run(THREADED_MM))
    ok(run_emu(THREADED_MM))


def test_thread_bookkeeping_waits_for_the_call(run):
    """Until a --thread munmap returns, the region is still the session's (nothing is carved early); the
    next command after it returned finds it carved."""
    ok(run("""
        api --features event_unmap,thread_id
        mmap --size 16K --name buf
        register buf --mode missing
        handler --unread
        munmap buf:2-3 --thread t1
        expect result blocked=1
        regions
        expect result regions[0].len=16K
        read --timeout 5
        wait
        regions
        expect result regions[0].len=8K
    """))


@pytest.mark.parametrize("line,needle", [
    ("regions[5].name=x", "regions has 1 item(s): no [5]"),
    ("regions.x=1", "regions is a list of 1: index it as regions[N]"),
    ("regions[0].nope=1", "regions[0] has no field 'nope'"),
    ("regions[0].name.x=1", "regions[0].name is 'b', not a list or an object"),
])
def test_expect_result_list_index_errors(run_emu, line, needle):
    err = failed(run_emu(f"mmap --size 4K --name b\nregions\nexpect result {line}\n"), 1, needle)
    assert "\n" not in err["message"]


def test_expect_result_indexes_lists(run_any):
    """expect result reaches into lists: regions[1].start, regions[-1] (the last), the old dotted form too;
    a wrong value fails with the actual one."""
    ok(run_any("""
        mmap --size 16K --name a
        mmap --size 8K --name b
        regions
        expect result regions[0].name=a regions[1].start=b:0 regions[-1].len=8K regions.1.name=b
        expect result regions[1].vmas[0].last_page=1
    """))
    failed(run_any("mmap --size 16K --name a\nregions\nexpect result regions[0].len=4K\n"), 1,
           "regions[0].len: expected 4K, actual")


@pytest.mark.parametrize("line,needle", [
    ("read --timeout nan", "bad --timeout"),
    ("read --timeout -1", "bad --timeout"),
    ("scan buf --null-vec", "--null-vec goes with --once"),
    ("munmap buf:1 --thread 'a b'", "bad thread name"),
])
def test_new_options_bad_input(run, line, needle):
    err = failed(run(f"mmap --size 8K --name buf\n{line}\n"), 2, needle)
    assert "\n" not in err["message"]


@pytest.mark.parametrize("backend", ["kernel", "emu"])
def test_scan_inside_a_huge_page(backend, tmp_path):
    """PAGEMAP_SCAN of two 4 KiB pages inside a hugetlb page reports just them (pagemap_scan_hugetlb_entry()
    gets the huge PTE clipped to the range), and WP_MATCHING over a part of a huge page backs out
    ("Partial HugeTLB page WP isn't possible"): walk_end is the part's start; vec NULL with vec_len > 0 is
    EINVAL (pagemap_scan_get_args())."""
    if backend == "kernel":
        need_kernel()
        from uffdctl.kernel import meminfo
        mi = meminfo()
        avail = mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0)
        if avail < 2:
            require_kernel(f"HugePages_Free={mi.get('HugePages_Free', 0)} HugePages_Rsvd="
                           f"{mi.get('HugePages_Rsvd', 0)}: {avail} free and unreserved, the script maps 2")
    ok(_runner(tmp_path, backend)("""
        api --features wp_unpopulated,wp_async,wp_hugetlbfs_shmem
        mmap --size 4M --type hugetlb --name mem
        register mem --mode wp
        writeprotect mem --on
        scan mem --once --vec-len 0 --wp-matching --check-wpasync --category-mask written --return-mask written
        touch mem --write --wait --timeout 10
        expect scan mem:0+0xff000+8K --once --vec-len 1 --category-mask written --return-mask written,huge regions=1 r0.start=mem:0+0xff000 r0.end=mem:0+0x101000 r0.categories=written,huge walk_end=mem:0+0x101000
        expect scan mem:0+0xff000+8K --once --vec-len 4 --wp-matching --check-wpasync --category-mask written --return-mask written regions=0 walk_end=mem:0+0xff000
        expect scan mem:0+0xff000+0x200000 --once --vec-len 4 --wp-matching --check-wpasync --category-mask written --return-mask written regions=0 walk_end=mem:1
        expect scan mem --once --vec-len 4 --category-mask written --return-mask written regions=1 r0.start=mem:0 r0.end=mem:2
        scan mem --once --vec-len 4 --null-vec --category-mask written
        expect errno EINVAL
    """))
