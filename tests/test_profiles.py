"""The emulator's kernel-version profiles held to what real kernels did.

tests/data/kernels/RELEASE.json holds what one real kernel showed, recorded with this tool:
``probes`` (tests/profile_probe.py: one probe per profile switch) and ``repro`` (the verdict of every
case of ``uffdctl repro all --backend kernel``).  Each file says which kernel and how it was recorded.
The profile named after the kernel's series, with the kernel's soft-dirty configuration, must give the
same observations and the same verdicts.  On a kernel of its own (the host, or a vmtest guest) the live
kernel is compared with its twin the same way.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import profile_probe
from conftest import make_backend
from uffdctl.emu import PROFILES, EmuBackend

DATA = pathlib.Path(__file__).parent / "data" / "kernels"
RECORDED = sorted(DATA.glob("*.json"))


def _load(path):
    with open(path) as f:
        return json.load(f)


def _series(release: str) -> str:
    return ".".join(release.split("-")[0].split("+")[0].split(".")[:2])


def _release_profile(rec: dict) -> str:
    """The profile of a recorded kernel's release ("6.1.192", its sublevel read from /proc/version)."""
    from uffdctl.kernel import parse_version
    return "%d.%d.%d" % parse_version(rec["release"], rec.get("kernel", ""))


def test_recorded_kernels_cover_the_guest_kernels():
    """A recording for each kernel the vmtest matrix boots (6.1, 6.12) and for the host's series."""
    series = {_series(_load(p)["release"]) for p in RECORDED}
    assert {"6.1", "6.12", "6.18"} <= series, series


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_profile_probes_match_the_recorded_kernel(path):
    """Every probe of the profile's twin gives what the real kernel gave."""
    rec = _load(path)
    assert _series(rec["release"]) in PROFILES, f"no emulator profile for {rec['release']} ({rec['kernel']})"
    profile = _release_profile(rec)
    b = EmuBackend(profile=profile, soft_dirty=rec["soft_dirty"])
    try:
        got = profile_probe.run(b)
    finally:
        b.close()
    want = rec["probes"]
    differ = {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)}
    assert not differ, (f"profile {profile} (soft-dirty {rec['soft_dirty']}) vs {rec['kernel']} "
                        f"[{rec['recorded_with']}]: (kernel, emu) " + json.dumps(differ))


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_repro_verdicts_match_the_recorded_kernel(path):
    """``uffdctl repro all --backend emu --profile SERIES`` gives the verdicts the real kernel gave, case for
    case (soft-dirty as that kernel had it)."""
    rec = _load(path)
    profile = _release_profile(rec)
    sd = "on" if rec["soft_dirty"] else "off"
    r = subprocess.run([sys.executable, "-m", "uffdctl", "-j", "repro", "all", "--backend", "emu",
                        "--profile", profile, "--soft-dirty", sd],
                       capture_output=True, text=True, timeout=600, cwd="/")
    assert r.returncode in (0, 1), r.stderr[-2000:]
    doc = json.loads(r.stdout)
    got = {f"{x['scenario']}/{x['case']}": x["verdict"] for x in doc["results"]
           if x["target"]["backend"] == "emu" and x["target"]["profile"] == profile}
    want = rec["repro"]
    # a case whose scenario names the profiles it applies to (the RFC hints: rfc-hints* only) is not run
    from uffdctl.repro import applies, load_all
    from uffdctl.repro.runner import Target
    t = Target("emu", profile, rec["soft_dirty"])
    applicable = {f"{sc.name}/{c.id}" for sc in load_all() for c in sc.cases if applies(c, t)}
    assert applicable <= set(got), f"cases that apply to {profile} and did not run: {sorted(applicable - set(got))}"
    missing = sorted((set(want) & applicable) - set(got))
    assert not missing, f"cases the kernel ran and the emulator did not: {missing}"
    differ = {k: (want[k], got[k]) for k in sorted(set(want) & set(got)) if want[k] != got[k]}
    assert not differ, f"profile {profile} vs {rec['kernel']} [{rec['recorded_with']}]: (kernel, emu) {differ}"
    assert doc["exit"] == 0, doc["failures"]


@pytest.mark.kernel
def test_profile_probes_match_this_kernel():
    """Live: the running kernel and the profile of its release (in a vmtest guest: 6.1.x, 6.12.x: the
    series' profile less the stable backports that release lacks) agree on every probe."""
    from conftest import require_kernel  # noqa: F401  (kernel-marked: skips with its reason without one)
    kb = make_backend("kernel")
    try:
        d = kb.describe()
        profile = d["version"]
        if _series(profile) not in PROFILES:
            pytest.skip(f"no emulator profile for kernel {d['release']} (profiles: {', '.join(PROFILES)})")
        want = profile_probe.run(kb)
        sd = bool(d.get("soft_dirty"))
    finally:
        kb.close()
    eb = EmuBackend(profile=profile, soft_dirty=sd)
    try:
        got = profile_probe.run(eb)
    finally:
        eb.close()
    differ = {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)}
    assert not differ, f"profile {profile} vs the running {d['release']}: (kernel, emu) " + json.dumps(differ)


def test_probe_script_runs_standalone():
    """tests/profile_probe.py is how a recording is made: it runs on its own and prints the JSON."""
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "profile_probe.py"),
                        "--profile", "6.12", "--soft-dirty", "on"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["backend"] == "emu" and doc["release"] == PROFILES["6.12"].release and doc["soft_dirty"] is True
    assert doc["probes"]["features"] == hex(PROFILES["6.12"].features)


# -- choosing the profile and the emulated CONFIG_MEM_SOFT_DIRTY from the shell ------------------------

SOFT_DIRTY_SCRIPT = """\
mmap --size 8K --type anon --name buf
touch buf:0 --write --wait
expect pagemap buf:0 present=1 soft_dirty=1
"""


def _uffdctl(*args, cwd="/"):
    return subprocess.run([sys.executable, "-m", "uffdctl", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.mark.parametrize("profile", ["6.12", "6.1", "6.18"])
def test_run_soft_dirty_switch(tmp_path, profile):
    """``uffdctl run --backend emu --profile P --soft-dirty on|off``: a written page reads soft-dirty only with
    the emulated CONFIG_MEM_SOFT_DIRTY on; off models a host like this one."""
    f = tmp_path / "sd.uffd"
    f.write_text(SOFT_DIRTY_SCRIPT)
    on = _uffdctl("run", "--backend", "emu", "--profile", profile, "--soft-dirty", "on", str(f))
    assert on.returncode == 0, on.stdout + on.stderr
    off = _uffdctl("-j", "run", "--backend", "emu", "--profile", profile, "--soft-dirty", "off", str(f))
    assert off.returncode == 1, off.stdout + off.stderr
    err = json.loads(off.stdout)["error"]
    assert err["line"] == 3 and "soft_dirty: expected 1, actual 0" in err["message"], err


def test_soft_dirty_switch_bad_input(tmp_path):
    """--soft-dirty on the kernel backend, or a value other than on/off: one line, non-zero, nothing run."""
    f = tmp_path / "sd.uffd"
    f.write_text(SOFT_DIRTY_SCRIPT)
    k = _uffdctl("run", "--backend", "kernel", "--soft-dirty", "on", str(f))
    assert k.returncode == 2 and k.stdout == "" and len(k.stderr.strip().splitlines()) == 1, k
    assert "--soft-dirty on is for the emulator" in k.stderr
    bad = _uffdctl("run", "--backend", "emu", "--soft-dirty", "maybe", str(f))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad
    r = _uffdctl("repro", "all", "--backend", "kernel", "--soft-dirty", "off")
    assert r.returncode == 2 and "--soft-dirty is for the emulator" in r.stderr, r
    p = _uffdctl("run", "--backend", "emu", "--profile", "6.13", str(f))
    assert p.returncode == 2 and "6.12" in p.stderr and "Traceback" not in p.stderr, p


def test_session_soft_dirty_switch(tmp_path):
    """``uffdctl session start --backend emu --profile 6.12 --soft-dirty off``: the daemon's backend says so."""
    env = dict(os.environ, UFFDCTL_RUNTIME_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "uffdctl", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=60, cwd="/", env=env)
    r = run("-j", "session", "start", "--name", "sd", "--backend", "emu", "--profile", "6.12", "--soft-dirty", "off")
    assert r.returncode == 0, r.stderr
    try:
        d = run("-j", "session", "status", "sd")
        assert d.returncode == 0, d.stderr
        sel = json.loads(d.stdout)["selection"]
        assert sel["backend"] == "emu" and sel["profile"] == "6.12" and sel["release"] == "6.12.117", sel
        assert sel["soft_dirty"] == 0 and "CONFIG_MEM_SOFT_DIRTY=n" in sel["soft_dirty_reason"], sel
    finally:
        run("session", "stop", "sd")


# -- a release of a series: the series' profile less the stable backports that release lacks -------------

def test_release_profiles_take_back_the_later_backports():
    """STABLE_BACKPORTS agrees with the series' profiles (held to a release that has every backport listed)
    and a release profile has each backport from its sublevel on, the earlier value before it."""
    from uffdctl.emu.profiles import STABLE_BACKPORTS, get_profile, split_release
    for series, backports in STABLE_BACKPORTS.items():
        base = PROFILES[series]
        top = split_release(base.release)[1]
        assert get_profile(base.release).switches() == base.switches()
        for sub, change, sw in backports:
            assert sub <= top, f"{change}: {series}.{sub} is after the release {base.release} the profile models"
            for k, (before, after) in sw.items():
                assert before != after and getattr(base, k) == after, (series, change, k)
                assert getattr(get_profile(f"{series}.{sub}"), k) == after, (series, sub, k)
                assert getattr(get_profile(f"{series}.{sub - 1}"), k) == before, (series, sub - 1, k)


def test_the_6_1_176_release_profile():
    """Debian's 6.1.0-50 (6.1.176) predates the two 6.1.191 backports: mremap() keeps a moved PTE's uffd-wp
    bit and close() leaves uffd-wp PTEs as they are (measured in the 6.1.176 guest: the differential's
    seed 3, now tests/data/differential/mremap-keeps-uffd-wp-before-6.1.191.json)."""
    from uffdctl.emu.profiles import get_profile
    p = get_profile("6.1.176")
    assert (p.name, p.release) == ("6.1.176", "6.1.176")
    base = PROFILES["6.1"].switches()
    assert {k for k, v in p.switches().items() if v != base[k]} == {"mremap_clear_uffd_wp", "release_resets_wp"}
    assert get_profile("6.1.176", per_vma_lock=True).per_vma_lock is True     # switches still apply on top
    assert get_profile("6.1.200").switches() == base     # later than the profile's release: no backport known


@pytest.mark.parametrize("bad", ["6.3.1", "6.1.x", "6.1.", "seven", "rfc-hints.1"])
def test_release_profile_names_that_are_not(bad):
    from uffdctl.emu.profiles import get_profile, is_profile
    assert not is_profile(bad)
    with pytest.raises(ValueError, match="unknown emulator profile"):
        get_profile(bad)


def test_mirror_profile_names_the_release_only_where_it_differs():
    from uffdctl.repro import mirror_profile
    assert mirror_profile("6.1.0-50-amd64", "6.1.176") == "6.1.176"
    assert mirror_profile("6.1.0-57-amd64", "6.1.192") == "6.1"
    assert mirror_profile("6.18.44-fc-v1045", "6.18.44") == "6.18"
    assert mirror_profile("6.18.20", "6.18.20") == "6.18.20"
    assert mirror_profile("5.10.0-30-amd64", "5.10.218") == "6.18"      # a series not modelled: the default


def test_describe_twin_names_what_a_release_lacks():
    from uffdctl.registry import describe_twin
    assert describe_twin("6.1") == "profile 6.1 (6.1.192)"
    d = describe_twin("6.1.176")
    assert d.startswith("profile 6.1.176: the 6.1 profile (6.1.192) less 2 stable backports (")
    assert "0cef0bb836e3" in d and d.count("6.1.191") == 2
    assert describe_twin("6.1.200") == "profile 6.1.200: the 6.1 profile (6.1.192), no later backport recorded"


def test_run_with_a_release_profile_from_the_shell(tmp_path):
    """``--profile 6.1.176`` from the shell: the backend line says which profile ran; a release of a series
    not modelled is a one-line usage error."""
    f = tmp_path / "sd.uffd"
    f.write_text(SOFT_DIRTY_SCRIPT)
    r = _uffdctl("-j", "run", "--backend", "emu", "--profile", "6.1.176", "--soft-dirty", "on", str(f))
    assert r.returncode == 0, r.stderr
    be = json.loads(r.stdout)["backend"]
    assert (be["backend"], be["profile"], be["release"]) == ("emu", "6.1.176", "6.1.176"), be
    r = _uffdctl("run", "--backend", "emu", "--profile", "6.3.1", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "6.3.1" in r.stderr, r.stderr


def _mremap_keeps_uffd_wp(profile: str) -> bool:
    """The 6.1.176 guest's differential seed 3: a COPY_MODE_WP page of a WP-registered private shmem mapping,
    then mremap(MAYMOVE|FIXED) one page longer without EVENT_REMAP; does the moved PTE keep uffd-wp?"""
    from uffdctl import pagemap, uapi
    from uffdctl.backend import MemType
    ps = uapi.PAGE_SIZE
    b = EmuBackend(profile=profile)
    try:
        r = b.mmap(4 * ps, MemType.SHMEM_PRIVATE)
        s = b.mmap(ps, MemType.ANON)
        b.write(s.addr, b"s")
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, uapi.RegisterMode.WP)
        u.copy(r.addr + 2 * ps, s.addr, ps, uapi.CopyMode.WP)
        new = b.mmap(5 * ps, MemType.ANON)
        b.mremap(r.addr, r.len, 5 * ps, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, new.addr)
        e = pagemap.read(b, new.addr + 2 * ps, 1)[0]
        assert e.present
        return bool(e.uffd_wp)
    finally:
        b.close()


def _hugetlb_write_after_close_spins(profile: str) -> bool:
    """The 6.1.176 guest's differential seed 77: a write blocked in a MISSING fault of a hugetlb page that is
    then write-protected (a uffd-wp marker), and the uffd closed: does the released write fault forever?"""
    from uffdctl import uapi
    from uffdctl.backend import MemType
    hp = 2 << 20
    b = EmuBackend(profile=profile)
    try:
        r = b.mmap(2 * hp, MemType.HUGETLB)
        u = b.userfaultfd()
        u.api(0)
        R = uapi.RegisterMode
        u.register(r.addr, r.len, R.MISSING | R.WP | R.MINOR)
        acc = b.thread("t1").access(r.addr + hp, 1, True, fill=0x53)
        assert not acc.wait(0)
        u.writeprotect(r.addr + hp, hp, uapi.WriteprotectMode.WP)
        u.close()
        done = acc.wait(0)
        assert done != bool(acc.spinning)
        return not done
    finally:
        b.close()


@pytest.mark.parametrize("profile,kept,spins", [("6.1.176", True, True), ("6.1", False, False),
                                                ("6.1.191", False, False), ("6.18", False, False)])
def test_the_6_1_191_backports_by_release(profile, kept, spins):
    """What the 6.1.176 guest showed against 6.1.192: before 6.1.191 mremap() keeps the moved PTE's uffd-wp bit
    (0cef0bb836e3 not yet backported) and close() leaves a uffd-wp marker, so a hugetlb write released by the
    close faults forever (hugetlb_wp() never CoWs a uffd-wp page; "mm/userfaultfd: reset ptes when close()
    for wr-protected ones" not yet backported)."""
    assert _mremap_keeps_uffd_wp(profile) is kept
    assert _hugetlb_write_after_close_spins(profile) is spins
