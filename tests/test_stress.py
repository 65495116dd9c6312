"""`uffdctl stress`: the kernel's uffd-stress bounces, served by uffdctl's native handler; the verification
catches a lost update (one is injected).  Correctness only: its speed is measured by `make bench`."""
from __future__ import annotations

import json
import subprocess

import pytest

from test_cli_support import BIN
from uffdctl import stress

pytestmark = pytest.mark.kernel


def _check(res, memtype, bounces):
    assert res.memtype == memtype and len(res.bounces) == bounces
    assert [b.bounces for b in res.bounces] == list(range(bounces - 1, -1, -1))
    # the locking threads touch every page: each page faults MISSING or was copied by the background thread
    assert all(sum(b.missing) <= res.nr_pages for b in res.bounces)
    assert res.userfaults > 0


def test_stress_anon_all_modes(kernel_backend):
    """16 bounces: every mode (rnd, racing, ver, poll/read) once; verification passes."""
    res = stress.run("anon", 4, 16)
    _check(res, "anon", 16)
    assert {" ".join(b.mode) for b in res.bounces} >= {"rnd racing ver poll", "read", "ver poll", "rnd read"}
    assert res.wp  # 6.18 offers uffd-wp on anon: the background threads write-protect half way


def test_stress_shmem(kernel_backend):
    res = stress.run("shmem", 4, 8)
    _check(res, "shmem", 8)


@pytest.mark.parametrize("bounce", [0, 1, 3])
def test_stress_catches_a_lost_update(kernel_backend, bounce):
    """One counter update that never reaches the page (test hook in the locking thread: the first update of
    that bounce; its mode has VERIFY): the run stops with StressFailed naming that page, whether a locking
    thread meets it again or the verification does."""
    with pytest.raises(stress.StressFailed) as ei:
        stress.run("anon", 2, 8, lose_update=(bounce, None))
    lost = ei.value.result.lost_page
    assert lost is not None and ei.value.page == lost
    assert f"page {lost} lost an update" in str(ei.value) and f"bounce {7 - bounce} " in str(ei.value)
    assert ei.value.exit_code == 1


def test_stress_without_the_hook_loses_nothing(kernel_backend):
    res = stress.run("anon", 2, 8)
    assert res.lost_page is None and len(res.bounces) == 8


def test_stress_hugetlb(kernel_backend):
    from uffdctl.kernel import meminfo
    m = meminfo()
    if m.get("HugePages_Free", 0) - m.get("HugePages_Rsvd", 0) < 8:
        pytest.skip("fewer than 8 free unreserved huge pages (the CI reserves 32; other tests may hold them)")
    res = stress.run("hugetlb", 8, 4)
    _check(res, "hugetlb", 4)
    assert res.page_size == 2 << 20


def test_stress_cli(kernel_backend):
    p = subprocess.run([BIN, "stress", "anon", "2", "4"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("nr_pages: 512, nr_pages_per_cpu: ")
    assert lines[1].startswith("bounces: 3, mode: rnd racing poll, userfaults:") or \
        lines[1].startswith("bounces: 3, mode: rnd racing read, userfaults:")
    assert "userfaults/s" in lines[-1]
    j = json.loads(subprocess.run([BIN, "-j", "stress", "anon", "2", "2"], capture_output=True, text=True,
                                  timeout=120, check=True).stdout)
    assert j["backend"] == "kernel" and len(j["bounces"]) == 2 and j["userfaults"] > 0
    for argv in (["stress", "bogus", "1", "1"], ["stress", "anon", "0", "1"], ["stress", "anon", "1"]):
        p = subprocess.run([BIN, *argv], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, (argv, p.stderr)
