"""scripts/vmtest on kernels that are not Debian packages: --kernel-image, --kernel-dir, `vmtest build`,
the config fragment and doctor, the patches in patches/, and the built-kernel columns of the matrix.

Pure parts run everywhere.  Booting a stock vmlinux as --kernel-image / as a --kernel-dir tree needs QEMU
and a cached Debian kernel (``scripts/vmtest fetch``); it skips with that reason otherwise and fails under
UFFDCTL_REQUIRE_VM=1, like tests/test_vmtest.py.  Applying the patches needs the unpacked
linux-source-6.1 that ``vmtest build`` leaves in the cache; it skips with that reason otherwise.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
VMTEST = os.path.join(SCRIPTS, "vmtest")
sys.path.insert(0, SCRIPTS)

from vmtest_lib import build, kernelpkg, localkernel, matrix  # noqa: E402

PATCHES = os.path.join(REPO, "patches", "6.1")

# What the backport of 931298e103c2 does on the real 6.1.192 (stock build -> + backport), measured.  The issue
# expected the last row unchanged; the kernel wins: with the backport, vma_wants_writenotify(vma,
# vma->vm_page_prot) is 0 for a uffd-wp shmem VMA (its vm_page_prot is already read-only), so un-protect
# leaves the PTE read-only and the next write faults, as on 6.3+ and the 6.18 host.
BACKPORT_FLIPS = {"softdirty-lost-wp-shmem/wp-onoff": ("REPRODUCED", "NOT REPRODUCED"),
                  "softdirty-lost-wp-shmem/unregister": ("REPRODUCED", "NOT REPRODUCED"),
                  "unprotect-extra-fault/anon": ("REPRODUCED", "NOT REPRODUCED"),
                  "unprotect-extra-fault/shmem": ("NOT REPRODUCED", "REPRODUCED")}


def run_vmtest(*args, cache=None, timeout=120):
    env = dict(os.environ)
    if cache:
        env["UFFDCTL_VMTEST_CACHE"] = str(cache)
    return subprocess.run([sys.executable, VMTEST, "--no-install", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# -- the fragment and doctor ----------------------------------------------------------------------

def test_fragment_sections():
    opts = {o.name: o for o in build.parse_fragment(build.fragment_text())}
    for need in ("CONFIG_USERFAULTFD", "CONFIG_MEM_SOFT_DIRTY", "CONFIG_CHECKPOINT_RESTORE", "CONFIG_PTE_MARKER_UFFD_WP",
                 "CONFIG_PVH", "CONFIG_9P_FS", "CONFIG_OVERLAY_FS", "CONFIG_VIRTIO_CONSOLE"):
        assert opts[need].need and opts[need].value == "y", need
    assert not opts["CONFIG_TRANSPARENT_HUGEPAGE_MADVISE"].need          # prefer: the host's default only
    assert not opts["CONFIG_DRM"].need and opts["CONFIG_DRM"].value == "n"  # saves: off to build faster
    assert opts["CONFIG_MEM_SOFT_DIRTY"].why                              # every option says why


def test_check_config_names_every_missing_and_wrong_option():
    good = {o.name: o.value for o in build.parse_fragment(build.fragment_text()) if o.need}
    assert build.check_config(good) == []
    bad = dict(good)
    del bad["CONFIG_USERFAULTFD"]
    bad["CONFIG_MEM_SOFT_DIRTY"] = "n"
    bad["CONFIG_9P_FS"] = "m"
    problems = build.check_config(bad)
    assert [p.split(":")[0] for p in problems] == ["CONFIG_USERFAULTFD", "CONFIG_MEM_SOFT_DIRTY", "CONFIG_9P_FS"]
    assert problems[0].startswith("CONFIG_USERFAULTFD: missing, want =y")
    assert problems[1].startswith("CONFIG_MEM_SOFT_DIRTY: =n, want =y -- MEM_SOFT_DIRTY depends on CHECKPOINT_RESTORE")
    # a stock kernel whose guest drivers are modules is fine: vmtest loads them from the initramfs
    assert [p.split(":")[0] for p in build.check_config(bad, modules_ok=True)] == ["CONFIG_USERFAULTFD",
                                                                                 "CONFIG_MEM_SOFT_DIRTY"]


def test_vmtest_config_prints_the_fragment():
    r = run_vmtest("config")
    assert r.returncode == 0 and r.stdout == build.fragment_text()


def test_key_follows_options_and_patches_not_comments(tmp_path):
    frag = build.fragment_text()
    p = build.Patch.read(os.path.join(PATCHES, "931298e103c2-backport.patch"))
    k = build.build_key("linux-source-6.1", "6.1.192-3", frag, [p])
    assert build.build_key("linux-source-6.1", "6.1.192-3", frag, [p], base="defconfig") != k
    assert build.build_key("linux-source-6.1", "6.1.192-3", "# a comment\n" + frag, [p]) == k
    assert build.build_key("linux-source-6.1", "6.1.192-3", frag + "CONFIG_KVM=y\n", [p]) != k
    assert build.build_key("linux-source-6.1", "6.1.192-4", frag, [p]) != k
    assert build.build_key("linux-source-6.1", "6.1.192-3", frag, []) != k
    changed = tmp_path / "931298e103c2-backport.patch"
    changed.write_text(open(p.path).read().replace("cp_flags |= MM_CP_TRY", "cp_flags |=  MM_CP_TRY"))
    assert build.build_key("linux-source-6.1", "6.1.192-3", frag, [build.Patch.read(str(changed))]) != k
    # the description and the Vmtest-*/Emulator-* headers are metadata: correcting them rebuilds nothing
    header = tmp_path / "header" / "931298e103c2-backport.patch"
    header.parent.mkdir()
    header.write_text(open(p.path).read().replace("Vmtest-Label:", "A new sentence.\n\nVmtest-Flips: x/y=REPRODUCED\n"
                                                  "Vmtest-Label:"))
    hp = build.Patch.read(str(header))
    assert build.build_key("linux-source-6.1", "6.1.192-3", frag, [hp]) == k and hp.sha256 != p.sha256
    assert dict(hp.flips)["x/y"] == "REPRODUCED"


def test_a_cached_build_takes_the_patch_headers_of_now(tmp_path):
    p = build.Patch.read(os.path.join(PATCHES, "931298e103c2-backport.patch"))
    b = build.Build("6.1+backport-931298e103c2", "k", "linux-source-6.1", "6.1.192-3", dir=str(tmp_path),
                    flips={"softdirty-lost-wp-shmem/wp-onoff": "NOT REPRODUCED"})
    b.take_metadata([p], save=True)
    assert b.flips == dict(p.flips) and b.profile == "6.1" and b.switches == {"uffd_wp_range_vm_page_prot": "1"}
    assert json.load(open(tmp_path / "build.json"))["flips"] == dict(p.flips)


# -- the patches ----------------------------------------------------------------------------------

def test_patch_headers():
    bp = build.Patch.read(os.path.join(PATCHES, "931298e103c2-backport.patch"))
    assert (bp.label, bp.profile, dict(bp.switches)) == ("backport-931298e103c2", "6.1",
                                                        {"uffd_wp_range_vm_page_prot": "1"})
    assert dict(bp.flips) == {row: after for row, (_before, after) in BACKPORT_FLIPS.items()}
    rfc = build.Patch.read(os.path.join(PATCHES, "rfc-hints.patch"))
    fix = build.Patch.read(os.path.join(PATCHES, "rfc-hints-fix.patch"))
    assert (rfc.profile, fix.profile) == ("rfc-hints", "rfc-hints-fixed")
    assert dict(rfc.flips)["clean-writable-escapes-softdirty/anon"] == "REPRODUCED"
    assert dict(fix.flips)["clean-writable-escapes-softdirty/anon"] == "NOT REPRODUCED"   # the fix undoes it
    b = build.Build("6.1+rfc-hints+rfc-hints-fix", "k", "linux-source-6.1", "6.1.192-3").take_metadata([rfc, fix])
    assert b.flips["clean-writable-escapes-softdirty/anon"] == "NOT REPRODUCED" and b.profile == "rfc-hints-fixed"
    assert build.build_name("6.1", [rfc, fix]) == "6.1+rfc-hints+rfc-hints-fix"
    for p in (rfc, fix):   # labelled a reconstruction, values uffdctl's
        text = open(p.path).read()
        assert "RECONSTRUCTION" in text.split("\n---\n")[0]
    text = open(rfc.path).read()
    assert "VALUES ARE" in text and "UFFDCTL'S OWN" in text and "never merged" in text



def test_the_rfc_twins_stand_on_6_1():
    """The RFC reconstruction is applied to Debian's 6.1.192, so the twin of each rfc column (the rfc-hints
    profiles, whose own base is 5.19, plus the patches' switches) is the 6.1 profile but for the RFC's two
    rules; without the switches the cold-cache recording's rfc differentials diverged at a mremap."""
    from uffdctl.emu.profiles import PROFILES
    rfc = build.Patch.read(os.path.join(PATCHES, "rfc-hints.patch"))
    fix = build.Patch.read(os.path.join(PATCHES, "rfc-hints-fix.patch"))
    b = build.Build("6.1+rfc-hints+rfc-hints-fix", "k", "linux-source-6.1", "6.1.192-3").take_metadata([rfc, fix])
    for profile, switches in (("rfc-hints", dict(rfc.switches)), (b.profile, b.switches)):
        twin = PROFILES[profile].with_(**{k: bool(int(v)) for k, v in switches.items()}).switches()
        base = PROFILES["6.1"].switches()
        assert {k for k in base if base[k] != twin[k]} == {"hints", "can_change_writable_needs_dirty"}, profile

def test_emulator_values_are_the_patch_values():
    """The reconstruction uses the emulator's (uffdctl-private) mode values, so one uffdctl drives both."""
    from uffdctl.emu import profiles
    text = open(os.path.join(PATCHES, "rfc-hints.patch")).read()
    assert "#define UFFDIO_MODE_ACCESS_LIKELY\t((__u64)1 << 2)" in text
    assert "#define UFFDIO_MODE_WRITE_LIKELY\t((__u64)1 << 3)" in text
    for ioctl in ("COPY", "ZEROPAGE", "WRITEPROTECT"):
        assert getattr(profiles, f"UFFDIO_{ioctl}_MODE_ACCESS_LIKELY") == 1 << 2
        assert getattr(profiles, f"UFFDIO_{ioctl}_MODE_WRITE_LIKELY") == 1 << 3


def linux_source_61() -> str:
    root = os.path.join(kernelpkg.default_cache(), "src")
    trees = sorted(d for d in os.listdir(root) if d.startswith("linux-source-6.1_")) if os.path.isdir(root) else []
    if not trees:
        pytest.skip(f"no unpacked linux-source-6.1 in {root} (scripts/vmtest build --source 6.1 unpacks it)")
    return os.path.join(root, trees[-1])


@pytest.mark.parametrize("series", [["931298e103c2-backport.patch"], ["rfc-hints.patch", "rfc-hints-fix.patch"]],
                         ids=["backport", "rfc-hints+fix"])
def test_patches_apply_to_linux_source_61(tmp_path, series):
    src = linux_source_61()
    with open(tmp_path / "log", "wb") as log_f:
        build.prepare_tree(src, str(tmp_path / "tree"), [build.Patch.read(os.path.join(PATCHES, p)) for p in series],
                           log_f)
    changed = "mm/userfaultfd.c"
    assert os.stat(os.path.join(src, changed)).st_ino != os.stat(tmp_path / "tree" / changed).st_ino
    with open(os.path.join(src, changed)) as f:
        assert "uffd_wants_manual_pte_write_upgrade" not in f.read()   # the pristine tree is untouched


def test_bad_build_input_is_one_line():
    for args, what in ((["build", "--source", "5.4"], "--source '5.4'"),
                       (["build", "--source", "6.1", "--patch", "/nonexistent.patch"], "--patch /nonexistent.patch"),
                       (["build", "--source", "6.1", "--patch", os.path.join(REPO, "README.md")], "not a unified diff")):
        r = run_vmtest(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert what in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_kernel_options_are_one_line(tmp_path):
    for args, what in ((["--modules", str(tmp_path), "run", "--", "true"], "--modules goes with --kernel-image"),
                       (["--kernel", "built:", "run", "--", "true"], "built:NAME: no NAME"),
                       (["--kernel-dir", str(tmp_path), "run", "--", "true"], "no .config"),
                       (["--kernel-image", str(tmp_path / "nope"), "run", "--", "true"], "no such file"),
                       (["--kernel", "six", "fetch"], "expected MAJOR.MINOR")):
        # The same refusal with QEMU missing: what the user typed is checked before the tools are.
        for qemu in ([], ["--qemu", str(tmp_path / "no-qemu")]):
            r = run_vmtest(*qemu, *args, cache=tmp_path / "cache")
            assert r.returncode == 2, (args, r.stderr)
            assert what in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_vmtest("--kernel", "built:nothing", "run", "--", "true", cache=tmp_path / "cache")
    assert r.returncode == 4 and "no built kernel 'nothing'" in r.stderr


# -- images -----------------------------------------------------------------------------------------

def elf_with_notes(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    """An ELF64 header, one PT_NOTE program header and the notes."""
    body = b""
    for name, ntype, desc in notes:
        n = name + b"\0"
        body += struct.pack("<III", len(n), len(desc), ntype) + n + b"\0" * (-len(n) % 4) + desc + \
            b"\0" * (-len(desc) % 4)
    hdr = bytearray(64)
    hdr[:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", localkernel.PT_NOTE, 4, 120, 0, 0, len(body), len(body), 4)
    return bytes(hdr) + ph + body


def test_pvh_note():
    assert localkernel.has_pvh_note(elf_with_notes([(b"GNU", 3, b"abcd"), (b"Xen", 18, b"\x00\x10\x00\x01")]))
    assert not localkernel.has_pvh_note(elf_with_notes([(b"Xen", 17, b"\0" * 4), (b"Linux", 18, b"\0" * 4)]))
    assert not localkernel.has_pvh_note(b"MZ" + b"\0" * 100)


def test_image_release_and_embedded_config():
    bz = bytearray(0x400)
    bz[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", bz, 0x20E, 0x100)
    bz[0x300:0x340] = b"6.1.192-uffdctl-x (root@b) #1 SMP\0".ljust(0x40, b"\0")
    assert localkernel.image_release(bytes(bz)) == "6.1.192-uffdctl-x"
    assert localkernel.image_release(b"..Linux version 6.12.117+deb12-amd64 (debian@...) #1..") == \
        "6.12.117+deb12-amd64"
    blob = b"xx" + localkernel.IKCFG_ST + gzip.compress(b"CONFIG_MEM_SOFT_DIRTY=y\n# CONFIG_X is not set\n") + \
        localkernel.IKCFG_ED
    assert localkernel.embedded_config(blob) == {"CONFIG_MEM_SOFT_DIRTY": "y"}


def test_a_vmlinux_without_pvh_is_refused_with_the_cure(tmp_path):
    img = tmp_path / "vmlinux"
    img.write_bytes(elf_with_notes([(b"GNU", 3, b"abcd")]))
    for qemu in ([], ["--qemu", str(tmp_path / "no-qemu")]):
        r = run_vmtest(*qemu, "--kernel-image", str(img), "run", "--", "true", cache=tmp_path / "cache")
        assert r.returncode == 4 and "no PVH entry note" in r.stderr and "bzImage" in r.stderr, r.stderr


# -- built-kernel columns of the matrix -------------------------------------------------------------------

def repro_doc(rows):
    out = []
    for name, who, verdict, match in rows:
        sc, case = name.split("/")
        t = {"backend": "kernel"} if who == "kernel" else {"backend": "emu", "profile": "p", "mirror": True}
        out.append({"scenario": sc, "case": case, "target": t, "verdict": verdict, "match": match,
                    "expected": {"verdict": "REPRODUCED", "source": "release 5.19-6.2"}})
    return {"results": out}


def test_flips_and_twin_judge_a_patched_kernel():
    doc = repro_doc([("a/x", "kernel", "NOT REPRODUCED", False), ("a/x", "emu", "REPRODUCED", True),
                     ("b/y", "kernel", "NOT REPRODUCED", False), ("b/y", "emu", "NOT REPRODUCED", False),
                     ("c/z", "kernel", "REPRODUCED", True), ("d/w", "kernel", "NOT REPRODUCED", False)])
    stock = matrix.repro_verdicts(doc)
    assert stock["repro: a/x [kernel]"].bad and stock["repro: d/w [kernel]"].bad
    v = matrix.repro_verdicts(doc, flips={"a/x": "NOT REPRODUCED", "c/z": "NOT REPRODUCED"}, twin=True)
    assert v["repro: a/x [kernel]"] == matrix.Verdict("NOT REPRODUCED (patched)")            # declared flip
    assert v["repro: c/z [kernel]"].bad and "expected NOT REPRODUCED" in v["repro: c/z [kernel]"].verdict
    assert not v["repro: b/y [kernel]"].bad        # the release disagrees, the patched kernel's twin agrees
    assert v["repro: d/w [kernel]"].bad            # nothing declares it and no twin agrees
    assert not matrix.repro_verdicts(doc, flips={"a/x": "NOT REPRODUCED"})["repro: a/x [kernel]"].bad


def test_plan_script_for_a_patched_kernel(tmp_path):
    plan = matrix.Plan(str(tmp_path), ["tests/test_softdirty.py"], repro=True, profiles=("6.1", "rfc-hints"))
    body, env = plan.script(str(tmp_path), soft_dirty=True, guest=True, profile="rfc-hints")
    assert env["UFFDCTL_EMU_PROFILE"] == "rfc-hints" and env["UFFDCTL_KERNEL_HINTS"] == "rfc"
    assert '[ "$p" = rfc-hints ] && PROFILE=$p' in body
    body, env = plan.script(str(tmp_path), soft_dirty=True, profile="6.1", switches={"uffd_wp_range_vm_page_prot": "1"})
    assert env["UFFDCTL_EMU_SWITCHES"] == "uffd_wp_range_vm_page_prot=1" and "UFFDCTL_KERNEL_HINTS" not in env
    body, env = plan.script(str(tmp_path), soft_dirty=True)
    assert "UFFDCTL_EMU_PROFILE" not in env and '[ "$p" = "$SERIES" ]' in body


def test_built_column_keeps_its_label(tmp_path):
    (tmp_path / "release").write_text("6.1.192-vmtest-1234\n")
    (tmp_path / "proc_version").write_text("Linux version 6.1.192-vmtest-1234 (uffdctl@vmtest) #1 SMP\n")
    col = matrix.Column("built:6.1+backport-931298e103c2", "vm", share=str(tmp_path), fixed_label=True)
    matrix.collect(col)
    assert col.label == "built:6.1+backport-931298e103c2"


# -- end to end: a stock vmlinux as --kernel-image and as a --kernel-dir tree ----------------------------

from test_vmtest import stock_kernels, vm_kernel  # noqa: E402,F401  (the fixture: QEMU and a cached kernel)


@pytest.fixture
def stock_kernel(vm_kernel):  # noqa: F811
    return next(k for k in stock_kernels() if k.pvh)


def test_kernel_image_boots_a_stock_vmlinux(stock_kernel, tmp_path):
    k = stock_kernel
    r = run_vmtest("--kernel-image", k.image_path, "--modules", os.path.join(k.dir, "modules"), "run", "--", "sh",
                   "-c", "uname -r; grep -c '^9p ' /proc/modules", cache=tmp_path / "cache", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [k.release, "1"]
    # without --modules, vmtest says what is missing instead of booting a guest that cannot reach the host
    r = run_vmtest("--kernel-image", k.image_path, "run", "--", "true", cache=tmp_path / "cache")
    assert r.returncode == 4 and "pass --modules DIR" in r.stderr


def test_kernel_dir_boots_a_build_tree(stock_kernel, tmp_path):
    """An O= tree: vmlinux, .config, include/config/kernel.release, modules.order (here the stock kernel's)."""
    k = stock_kernel
    tree = tmp_path / "obj"
    (tree / "include/config").mkdir(parents=True)
    (tree / "fs/mods").mkdir(parents=True)
    os.link(k.image_path, tree / "vmlinux") if os.stat(k.image_path).st_dev == os.stat(tmp_path).st_dev else \
        shutil.copy(k.image_path, tree / "vmlinux")
    shutil.copy(os.path.join(k.dir, "config"), tree / ".config")
    (tree / "include/config/kernel.release").write_text(k.release + "\n")
    order = []
    for m in k.modules:
        shutil.copy(os.path.join(k.dir, "modules", m), tree / "fs/mods" / m)
        order.append(f"fs/mods/{m[:-3]}.o")      # 6.2+ lists .o; 6.1 lists .ko: both are read
    (tree / "modules.order").write_text("\n".join(order) + "\n")
    r = run_vmtest("--kernel-dir", str(tree), "doctor", cache=tmp_path / "cache")
    assert "every option uffdctl's tests need is set" in r.stdout, r.stdout + r.stderr
    r = run_vmtest("--kernel-dir", str(tree), "run", "--", "uname", "-r", cache=tmp_path / "cache", timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == k.release, r.stderr
    cfg = (tree / ".config").read_text().replace("CONFIG_USERFAULTFD=y", "# CONFIG_USERFAULTFD is not set")
    (tree / ".config").write_text(cfg)
    r = run_vmtest("--kernel-dir", str(tree), "doctor", cache=tmp_path / "cache")
    assert "CONFIG_USERFAULTFD: missing, want =y -- USERFAULTFD has no default" in r.stdout and r.returncode == 4, \
        r.stdout


# -- the kernels vmtest build made ------------------------------------------------------------------------

def test_built_kernels_recorded():
    """build.json of every cached build names its source, patches and build time."""
    builds = build.all_builds(kernelpkg.default_cache())
    if not builds:
        pytest.skip("no kernel built yet (scripts/vmtest build --source 6.1)")
    for b in builds:
        with open(os.path.join(b.dir, "build.json")) as f:
            d = json.load(f)
        assert d["seconds"] > 0 and d["release"].startswith(d["version"].split("-")[0])
        assert build.check_config(kernelpkg.read_config(os.path.join(b.obj, ".config"))) == []


def test_kernel_dir_boots_the_tree_vmtest_build_left():
    """`vmtest build` leaves build/KEY/obj (vmlinux, .config, kernel.release): --kernel-dir boots it."""
    from test_vmtest import vm_ready
    builds = build.all_builds(kernelpkg.default_cache())
    if vm_ready() or not builds:
        pytest.skip(vm_ready() or "no kernel built yet here (scripts/vmtest build --source 6.1; CI builds none)")
    b = next((x for x in builds if not x.patches), builds[0])
    r = run_vmtest("--kernel-dir", b.obj, "run", "--", "uname", "-r", timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == b.release, r.stderr


# -- make test-kernels: the recorded run and the table in docs/vmtest.md ----------------------------------

def recorded():
    from vmtest_lib import kernels
    if not os.path.exists(kernels.RECORD):
        pytest.skip(f"{os.path.relpath(kernels.RECORD, REPO)} not recorded yet (make test-kernels ARGS=--record)")
    with open(kernels.RECORD) as f:
        return kernels, json.load(f)


def test_recorded_assertions_hold():
    """The issue's assertions, recomputed from the recorded columns (not copied from the record)."""
    kernels, rec = recorded()
    cols = {c["role"]: c for c in rec["columns"]}
    bp = build.Patch.read(os.path.join(PATCHES, "931298e103c2-backport.patch"))
    again = kernels.assertions(cols, dict(bp.flips))
    assert again == rec["assertions"]
    assert [a["name"] for a in again if not a["ok"]] == []
    assert {c["role"] for c in rec["columns"]} == {"debian", "built", "backport", "rfc", "rfc-fixed"}
    assert all(b["seconds"] > 0 for b in rec["builds"])


def test_recorded_table_is_what_the_kernels_did():
    """The rows themselves, stated here (not taken from the patch header or the record's own assertions): the
    backport flips exactly BACKPORT_FLIPS; the unpatched build gives every reproduction verdict Debian's
    6.1.192 gives; the RFC reconstruction reproduces the escape and its fix does not; every column ran
    to its end and the differential held each kernel's emulator twin to it."""
    kernels, rec = recorded()
    cols = {c["role"]: c for c in rec["columns"]}
    assert all(not c["problem"] for c in rec["columns"]), [(c["role"], c["problem"]) for c in rec["columns"]]
    rows = {r: kernels.repro_kernel_rows(c) for r, c in cols.items()}
    changed = {k[len("repro: "):-len(" [kernel]")]: (rows["built"][k], rows["backport"].get(k))
               for k in rows["built"] if rows["built"][k] != rows["backport"].get(k)}
    assert changed == BACKPORT_FLIPS
    assert rows["debian"] == rows["built"]
    esc = "repro: clean-writable-escapes-softdirty/anon [kernel]"
    assert (rows["built"][esc], rows["rfc"][esc], rows["rfc-fixed"][esc]) == ("NOT REPRODUCED", "REPRODUCED",
                                                                              "NOT REPRODUCED")
    for role in cols:
        assert cols[role]["verdicts"][kernels.DIFF_TEST]["verdict"] == "PASS", role


def test_docs_table_is_the_record():
    kernels, rec = recorded()
    with open(kernels.DOC) as f:
        text = f.read()
    block = text[text.index(kernels.BEGIN) + len(kernels.BEGIN):text.index(kernels.END)]
    assert block.strip("\n") == kernels.render(rec)


def test_a_built_backport_still_flips(tmp_path):
    """Where `make test-kernels` left its kernels, boot the backport and the unpatched build again and run the
    two reproductions the backport flips: the verdicts must be the recorded ones."""
    kernels, rec = recorded()
    from test_vmtest import vm_ready
    names = {b["role"]: b["name"] for b in rec["builds"]}
    have = {b.name for b in build.all_builds(kernelpkg.default_cache())}
    if vm_ready() or not {names["built"], names["backport"]} <= have:
        pytest.skip("the built kernels of make test-kernels are not in the cache here (or no QEMU)")
    cols = {c["role"]: c for c in rec["columns"]}
    venv_bin = os.path.dirname(sys.executable)
    for role in ("built", "backport"):
        r = run_vmtest("--kernel", f"built:{names[role]}", "run", "--", os.path.join(venv_bin, "uffdctl"), "-j",
                       "repro", "all", "--backend", "kernel", timeout=600)
        assert r.returncode in (0, 1), r.stderr
        got = {f"repro: {x['scenario']}/{x['case']} [kernel]": x["verdict"].upper()
               for x in json.loads(r.stdout)["results"]
               if x["scenario"] in ("softdirty-lost-wp-shmem", "unprotect-extra-fault")}
        assert got
        for row, verdict in got.items():
            assert kernels.base(cols[role]["verdicts"][row]["verdict"]) == verdict, (role, row)
