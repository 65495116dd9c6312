"""``uffdctl check``: the probes, the verdicts, the exit code."""
from __future__ import annotations

import json

import pytest

from test_cli_support import cli, need_kernel  # noqa: F401  (fixtures)
from uffdctl import uapi


@pytest.fixture(scope="module")
def res():
    need_kernel()
    from uffdctl.check import run_checks
    return run_checks()


def _verdict(res, name):
    return next(v for v in res["verdicts"] if v["check"] == name)


def test_features_are_the_kernels(res):
    from uffdctl.kernel import KernelBackend
    b = KernelBackend()
    try:
        want = b.probe_features()
    finally:
        b.close()
    assert res["api"]["features"] == want
    names = uapi.Feature.decode(want)
    v = _verdict(res, "features")
    assert v["status"] == "ok" and f"({len(names)}/17)" in v["message"]
    assert all(n.replace("UFFD_FEATURE_", "") in v["message"] for n in names)


def test_register_matrix(res):
    rows = {(r["memtype"], r["mode"]): r for r in res["register"]}
    assert len(rows) == 5 * 7
    anon_minor = rows[("anon", "minor")]
    assert anon_minor["status"] == "n/a" and anon_minor["errno"] == "EINVAL"
    assert anon_minor["reason"] == "vma_can_userfault: MINOR needs shmem/hugetlb"
    assert rows[("anon", "missing")]["ioctls"] == 0x13c            # spec 3.3 [E B1]
    assert rows[("anon", "missing,wp")]["ioctls"] == 0x17c
    assert rows[("shmem", "missing,wp,minor")]["ioctls"] == 0x1fc
    hp = rows[("hugetlb", "missing")]
    if res["hugetlb"]["HugePages_Total"] == 0:
        assert hp["status"] == "unsupported" and "HugePages_Total=0" in hp["reason"]
    elif res["hugetlb"]["usable"] == 0:      # every free page held by a reservation: the 2 MiB mmap is refused
        assert hp["status"] == "unsupported" and hp["errno"] == "ENOMEM"
    else:
        assert hp["status"] == "ok" and hp["ioctls"] & ~0x1cc == 0   # UFFD_API_RANGE_IOCTLS_BASIC


def test_soft_dirty_and_hugetlb_verdicts(res):
    sd = _verdict(res, "soft-dirty")
    if res["soft_dirty"]["available"]:
        assert sd["status"] == "ok"
    else:
        assert sd["status"] == "unsupported"
        assert sd["message"] == "not available (CONFIG_MEM_SOFT_DIRTY off: round trip read 0)"
    hp = _verdict(res, "hugetlb")
    h = res["hugetlb"]
    assert h["usable"] == max(0, h["HugePages_Free"] - h["HugePages_Rsvd"])
    if h["HugePages_Total"] == 0:
        assert hp["status"] == "unsupported" and hp["message"].startswith("0 pages reserved")
    elif h["usable"] == 0:
        assert hp["status"] == "unsupported" and "none usable" in hp["message"]
    else:
        assert hp["status"] == "ok" and hp["message"].startswith(f"{h['HugePages_Total']} pages reserved")


def test_exit_code_follows_the_verdicts(res):
    statuses = {v["status"] for v in res["verdicts"]}
    want = 1 if "broken" in statuses else 4 if "unsupported" in statuses else 0
    assert res["exit"] == want
    assert "broken" not in statuses, res["verdicts"]


def test_scan_and_sysctl(res):
    cats = res["pagemap_scan"]["categories"]
    assert set(cats) == {c.name for c in uapi.PageCategory} and cats["PRESENT"]
    assert res["sysctl"]["vm.unprivileged_userfaultfd"] in (0, 1)
    assert [o["via"] for o in res["open"]] == ["syscall", "user-mode-only", "/dev/userfaultfd"]


def test_open_as_another_uid(res):
    """As root, check also opens as uid 65534: USER_MODE_ONLY always works; the plain syscall follows the
    sysctl (spec 3.8: EPERM without CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd=1)."""
    import os
    if os.getuid() != 0:
        assert res["open_unprivileged"] is None
        return
    rows = {o["via"]: o for o in res["open_unprivileged"]}
    assert rows["user-mode-only"]["ok"] == 1
    if res["sysctl"]["vm.unprivileged_userfaultfd"] == 0:
        assert rows["syscall"]["errno"] == "EPERM" and "vm.unprivileged_userfaultfd" in rows["syscall"]["hint"]
    else:
        assert rows["syscall"]["ok"] == 1
    mode = res["sysctl"]["dev_userfaultfd_mode"]
    if mode is not None and int(mode, 8) & 0o006 == 0:
        assert rows["/dev/userfaultfd"]["errno"] == "EACCES"


def test_check_cli(cli, res):
    p = cli("check")
    assert p.returncode == res["exit"]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("kernel: ") and lines[-1].startswith(("Looks good", "Something is broken"))
    assert any(ln.startswith("soft-dirty: ") for ln in lines)
    r = json.loads(cli("-p", "check").stdout)
    assert set(r) == {"kernel", "verdicts", "open", "open_unprivileged", "api", "register", "soft_dirty",
                      "pagemap_scan", "hugetlb", "sysctl", "exit"}
    assert r["exit"] == res["exit"]
    p = cli("check", "-j")                        # the spelling: flags after the command
    assert p.returncode == res["exit"] and json.loads(p.stdout)["exit"] == res["exit"]


def test_check_names_the_version_and_the_emulator_twin(cli, res):
    """The kernel line carries the upstream version (Debian's sublevel from /proc/version) and the next line the
    emulator profile that is this kernel's twin, the one `uffdctl repro` runs beside it."""
    from uffdctl.kernel import running_version
    from uffdctl.registry import describe_twin, twin_profile
    from uffdctl.repro import kernel_facts, mirror_profile
    k = res["kernel"]
    assert k["version"] == "%d.%d.%d" % running_version()
    facts = kernel_facts()
    assert k["emulator_twin"] == twin_profile(k["release"], k["version"]) == \
        mirror_profile(facts["release"], facts["version"])
    assert k["emulator_twin_description"] == describe_twin(k["emulator_twin"])
    lines = cli("check").stdout.splitlines()
    assert lines[0].endswith(f"({k['version']})")
    assert lines[1] == "emulator twin: " + k["emulator_twin_description"]


def test_check_without_the_native_module(monkeypatch):
    import uffdctl._native as native
    from uffdctl.check import run_checks
    monkeypatch.setattr(native, "available", lambda: (False, "native extension uffdctl._uffd is not built"))
    r = run_checks()
    assert r["exit"] == 4 and r["verdicts"][0]["check"] == "native"


def test_no_huge_pages_reserved_is_unsupported_here(monkeypatch):
    """What `uffdctl check` says on a host with HugePages_Total=0 (this host, unless a test reserved some)."""
    need_kernel()
    import uffdctl.kernel as k
    from uffdctl.check import render, run_checks
    import uffdctl.kernel_mm as km
    real = km.meminfo
    fake = lambda: dict(real(), HugePages_Total=0, HugePages_Free=0)  # noqa: E731
    monkeypatch.setattr(k, "meminfo", fake)
    monkeypatch.setattr(km, "meminfo", fake)      # hugepages_total() lives in kernel_mm and reads it there
    r = run_checks()
    hp = _verdict(r, "hugetlb")
    assert hp["status"] == "unsupported" and hp["message"].startswith("0 pages reserved")
    rows = [x for x in r["register"] if x["memtype"].startswith("hugetlb")]
    assert rows and all(x["status"] == "unsupported" and "HugePages_Total=0" in x["reason"] for x in rows)
    assert r["exit"] == 4
    text = render(r)
    assert "hugetlb: UNSUPPORTED: 0 pages reserved" in text and text.endswith("unsupported here (exit 4).")


def test_huge_pages_all_held_by_reservations_are_not_usable(monkeypatch):
    """HugePages_Total > 0 is not enough: free pages that reservations hold cannot back a new mapping (this host
    kept 104 of them reserved with no hugetlb mapping left in any process); check says so and names the cure."""
    need_kernel()
    from uffdctl.check import run_checks
    import uffdctl.kernel as k
    real = k.meminfo
    monkeypatch.setattr(k, "meminfo",
                        lambda: dict(real(), HugePages_Total=104, HugePages_Free=104, HugePages_Rsvd=104))
    r = run_checks()
    hp = _verdict(r, "hugetlb")
    assert hp["status"] == "unsupported" and hp["message"].startswith("104 pages reserved, none usable")
    assert "HugePages_Rsvd=104" in hp["message"] and "vm.nr_hugepages=105" in hp["message"]
    assert r["hugetlb"]["usable"] == 0 and r["exit"] == 4
