"""scripts/vmtest's own machinery, on the host.

Pure parts run everywhere: the cpio writer, ELF .modinfo reading, module
dependency order, package choice, vmlinux extraction, KVM detection, the
verdict table.  Process hygiene runs everywhere too, with stand-in processes:
a timeout, Ctrl-C or SIGKILL of vmtest leaves nothing behind.  The end-to-end
tests boot a real guest; they need qemu-system-x86_64 and a kernel in the
vmtest cache (``scripts/vmtest fetch``), skip with that reason otherwise, and
fail instead when UFFDCTL_REQUIRE_VM=1 (CI sets it after ``make test-vm``).
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
VMTEST = os.path.join(SCRIPTS, "vmtest")
sys.path.insert(0, SCRIPTS)

from vmtest_lib import Unavailable, elf, host, initramfs, kernelpkg, matrix, qemu  # noqa: E402
from vmtest_lib.cli import Prefixed  # noqa: E402


# -- synthetic inputs ---------------------------------------------------------------------------

def make_elf(sections: dict[str, bytes], interp: bool = False) -> bytes:
    """A minimal little-endian ELF64 with the given sections (and a PT_INTERP program header if asked)."""
    names = list(sections) + [".shstrtab"]
    shstr = b"\0"
    offs = {}
    for n in names:
        offs[n] = len(shstr)
        shstr += n.encode() + b"\0"
    blobs = {**sections, ".shstrtab": shstr}
    phnum = 1 if interp else 0
    pos = 64 + 56 * phnum
    data, where = b"", {}
    for n in names:
        where[n] = pos + len(data)
        data += blobs[n]
    shoff = pos + len(data)
    hdr = bytearray(64)
    hdr[:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 2, 62, 1, 0, 64 if phnum else 0, shoff, 0, 64, 56, phnum, 64,
                     len(names) + 1, len(names))
    ph = struct.pack("<IIQQQQQQ", elf.PT_INTERP, 4, 0, 0, 0, 0, 0, 1) if interp else b""
    sh = b"\0" * 64
    for n in names:
        sh += struct.pack("<IIQQQQIIQQ", offs[n], 1, 0, 0, where[n], len(blobs[n]), 0, 0, 1, 0)
    return bytes(hdr) + ph + data + sh


def module(name: str, depends: str = "") -> bytes:
    return make_elf({".text": b"\x90" * 16, ".modinfo": f"license=GPL\0depends={depends}\0name={name}\0".encode()})


def read_newc(blob: bytes) -> list[tuple[str, int, bytes]]:
    """Parse a newc archive (to check the writer against the format, not against itself)."""
    out, i = [], 0
    while True:
        assert blob[i:i + 6] == b"070701", f"bad magic at {i}"
        f = [int(blob[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = blob[i + 110:i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        data = blob[i:i + size]
        i = (i + size + 3) & ~3
        if name == "TRAILER!!!":
            assert i == len(blob)
            return out
        out.append((name, mode, data))


# -- pure parts ---------------------------------------------------------------------------------

def test_cpio_roundtrip():
    entries = [("bin", 0o040755, b""), ("bin/busybox", 0o100755, b"x" * 4097), ("init", 0o100755, b"#!/bin/sh\n"),
               ("modules/a.ko", 0o100644, b"abc")]
    assert read_newc(initramfs.cpio(entries)) == entries


def test_init_script_contract():
    """/init and the QEMU command line agree on the names they share."""
    for word in ("hostroot", "vmtest_share", "vmtest.share=", "port out", "port status", "guest.sh", "reboot -f",
                 "vmtest.scratch=", "/dev/vda", "mount -t ext4"):
        assert word in initramfs.INIT, word


def test_initramfs_of_another_checkout_is_left_alone(tmp_path, monkeypatch):
    """Two checkouts with a different /init share the cache: each build keeps the other's initramfs (it may
    be booting now; deleting it failed that QEMU's -initrd), and only one unused for a day is removed."""
    bb = tmp_path / "busybox"
    bb.write_bytes(b"bb")
    k = _kernel(tmp_path)
    a = initramfs.build(k, str(bb))
    monkeypatch.setattr(initramfs, "INIT", initramfs.INIT + "# another checkout\n")
    b = initramfs.build(k, str(bb))
    assert a != b and os.path.exists(a) and os.path.exists(b)
    old = time.time() - initramfs.STALE_S - 60
    os.utime(a, (old, old))
    monkeypatch.setattr(initramfs, "INIT", initramfs.INIT + "# a third\n")
    c = initramfs.build(k, str(bb))
    assert not os.path.exists(a) and os.path.exists(b) and os.path.exists(c)


def _kernel(tmp_path, modules=(), config=""):
    d = tmp_path / "k"
    d.mkdir(exist_ok=True)
    (d / "config").write_text(config)
    return kernelpkg.Kernel("linux-image-x", "6.1.1-1", "6.1.0-1-amd64", str(d), "vmlinux", list(modules))


def test_scratch_disk_only_for_a_kernel_that_can_mount_it(tmp_path):
    """A virtio-blk disk and vmtest.scratch= on the command line when the kernel has virtio_blk and ext4 (built
    in or shipped as modules); none for a tiny build without ext4, which then keeps /var/tmp on the overlay."""
    debian = _kernel(tmp_path, ["virtio_blk.ko", "jbd2.ko", "ext4.ko"], "CONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n")
    assert debian.scratch_disk
    assert _kernel(tmp_path, [], "CONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\n").scratch_disk
    assert not _kernel(tmp_path, [], "CONFIG_VIRTIO_BLK=y\n").scratch_disk            # vmtest build's tiny config
    assert not _kernel(tmp_path, ["ext4.ko"], "CONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n").scratch_disk  # not shipped
    vm = qemu.VM("qemu", debian, "initrd")
    assert vm.scratch_size == qemu.SCRATCH_SIZE
    argv = vm.argv(str(tmp_path), "/share", "/run/scratch.img")
    assert "virtio-blk-pci,drive=scratch" in argv
    assert any(a.startswith("file=/run/scratch.img,") for a in argv)
    assert f"vmtest.scratch={qemu.SCRATCH_MOUNT}" in argv[argv.index("-append") + 1]
    plain = vm.argv(str(tmp_path), "/share")
    assert "virtio-blk-pci,drive=scratch" not in plain and "vmtest.scratch" not in " ".join(plain)


def test_a_guest_that_should_have_the_scratch_disk_never_boots_without_it(tmp_path, monkeypatch):
    """A Debian kernel (virtio_blk and ext4 as modules) whose cache entry lost ext4.ko, or a host without
    mkfs.ext4, is an error naming why -- not a guest whose swap cases turn UNSUPPORTED unseen.  A kernel whose
    config cannot mount the disk boots without it, and the guest's UFFDCTL_VM_NO_SCRATCH says why."""
    from vmtest_lib import cli, guest
    lost = _kernel(tmp_path, ["virtio_blk.ko"], "CONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n")
    assert lost.scratch_expected and not lost.scratch_disk
    assert lost.scratch_reason == f"CONFIG_EXT4_FS=m but no ext4.ko in {lost.dir}"
    with pytest.raises(Unavailable, match="the guest would have no scratch disk .*no ext4.ko in"):
        cli.check_scratch(lost)
    lost.title = "image:6.1"                       # --kernel-image without the modules: boots, without the disk
    cli.check_scratch(lost)
    tiny = _kernel(tmp_path, [], "CONFIG_VIRTIO_BLK=y\n")
    assert not tiny.scratch_expected and tiny.scratch_reason == "CONFIG_EXT4_FS is not set"
    cli.check_scratch(tiny)                                           # boots, without the disk
    env = guest.guest_env(qemu.VM("qemu", tiny, "initrd"))
    assert "UFFDCTL_SWAP_DIR" not in env and "UFFDCTL_VM_SCRATCH" not in env
    assert env["UFFDCTL_VM_NO_SCRATCH"] == ("kernel 6.1.0-1-amd64 cannot mount vmtest's ext4 scratch disk: "
                                            "CONFIG_EXT4_FS is not set")
    debian = _kernel(tmp_path, ["virtio_blk.ko", "jbd2.ko", "ext4.ko"], "CONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n")
    env = guest.guest_env(qemu.VM("qemu", debian, "initrd"))
    assert env["UFFDCTL_SWAP_DIR"] == env["UFFDCTL_VM_SCRATCH"] == qemu.SCRATCH_MOUNT
    assert "UFFDCTL_VM_NO_SCRATCH" not in env
    monkeypatch.setattr(qemu, "find_mkfs", lambda: None)
    with pytest.raises(Unavailable, match="no mkfs.ext4 .*e2fsprogs"):
        cli.check_scratch(debian)
    with pytest.raises(Unavailable, match="no mkfs.ext4"):
        qemu.make_scratch(str(tmp_path), 1 << 20)
    assert not (tmp_path / "scratch.img").exists()


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") or os.path.exists("/usr/sbin/mkfs.ext4")),
                    reason="no mkfs.ext4 (e2fsprogs)")
def test_make_scratch_is_a_sparse_ext4_image(tmp_path):
    path = qemu.make_scratch(str(tmp_path), 256 << 20)
    with open(path, "rb") as f:
        f.seek(1024 + 0x38)
        assert f.read(2) == b"\x53\xef"                   # the ext2/3/4 superblock magic 0xEF53
    st = os.stat(path)
    assert st.st_size == 256 << 20 and st.st_blocks * 512 < 64 << 20     # sparse: only the metadata written


def test_modinfo_and_static():
    m = module("9p", "netfs,9pnet")
    assert elf.modinfo(m) == {"license": "GPL", "depends": "netfs,9pnet", "name": "9p"}
    assert elf.section(m, ".nothere") is None
    with pytest.raises(ValueError):
        elf.modinfo(b"not an elf at all" * 8)


def test_is_static(tmp_path):
    s, d = tmp_path / "s", tmp_path / "d"
    s.write_bytes(make_elf({".text": b"\x90"}))
    d.write_bytes(make_elf({".text": b"\x90"}, interp=True))
    assert elf.is_static(str(s)) and not elf.is_static(str(d))
    assert not elf.is_static(str(tmp_path / "missing"))


def _index(tmp_path, mods: dict[str, str], compress=None) -> dict[str, str]:
    idx = {}
    for name, deps in mods.items():
        data = module(name, deps)
        path = tmp_path / f"{name}.ko"
        if compress == "xz":
            path, data = tmp_path / f"{name}.ko.xz", lzma.compress(data)
        elif compress == "gz":
            path, data = tmp_path / f"{name}.ko.gz", gzip.compress(data)
        path.write_bytes(data)
        idx[kernelpkg.module_name(path.name)] = str(path)
    return idx


@pytest.mark.parametrize("compress", [None, "xz", "gz"])
def test_module_closure_orders_dependencies_first(tmp_path, compress):
    mods = {"virtio_ring": "", "virtio": "", "virtio_pci": "virtio_ring,virtio", "virtio_console": "virtio_ring,virtio",
            "netfs": "", "9pnet": "", "9pnet_virtio": "9pnet,virtio_ring,virtio", "9p": "netfs,9pnet",
            "overlay": "", "unused": ""}
    order = kernelpkg.module_closure(_index(tmp_path, mods, compress), builtin={"virtio"})
    assert "unused" not in order and "virtio" not in order
    for name in order:
        for dep in filter(None, mods[name].split(",")):
            assert dep == "virtio" or order.index(dep) < order.index(name), (dep, name)
    assert set(order) >= set(kernelpkg.ROOT_MODULES)


def test_module_closure_missing_and_cycle(tmp_path):
    with pytest.raises(Unavailable, match="9pnet_virtio is neither built in nor shipped"):
        kernelpkg.module_closure(_index(tmp_path, {"virtio_pci": ""}), set(), roots=("virtio_pci", "9pnet_virtio"))
    with pytest.raises(Unavailable, match="cycle"):
        kernelpkg.module_closure(_index(tmp_path, {"a": "b", "b": "a"}), set(), roots=("a",))


NAMES = ["linux-image-amd64", "linux-image-6.12-amd64", "linux-image-6.1.0-9-amd64", "linux-image-6.1.0-56-amd64",
         "linux-image-6.1.0-56-cloud-amd64", "linux-image-6.1.0-57-rt-amd64", "linux-image-6.1.0-56-amd64-dbg",
         "linux-image-6.12.115+deb12-amd64", "linux-image-6.12.117+deb12-amd64",
         "linux-image-6.12.117+deb12-cloud-amd64"]


def test_pick_package():
    assert kernelpkg.pick_package(NAMES, "6.1") == "linux-image-6.1.0-56-amd64"
    assert kernelpkg.pick_package(NAMES, "6.12") == "linux-image-6.12.117+deb12-amd64"
    assert kernelpkg.pick_package(NAMES, "newest") == "linux-image-6.12.117+deb12-amd64"
    assert kernelpkg.pick_package(NAMES, "5.10") is None
    with pytest.raises(ValueError):
        kernelpkg.pick_package(NAMES, "six")


@pytest.mark.parametrize("codec", ["xz", "gzip"])
def test_extract_vmlinux(codec):
    payload = make_elf({".text": b"\x90" * 1000})
    comp = lzma.compress(payload, format=lzma.FORMAT_XZ) if codec == "xz" else gzip.compress(payload)
    # a stray magic before the real payload must not confuse it
    bz = b"MZ" + b"\0" * 500 + kernelpkg.XZ_MAGIC + b"junk" + kernelpkg.GZIP_MAGIC + b"junk" + comp + b"\0" * 64
    assert kernelpkg.extract_vmlinux(bz) == payload
    assert kernelpkg.extract_vmlinux(b"MZ" + b"\0" * 1000) is None


def test_kvm_usable(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    sysfs = tmp_path / "module"
    (sysfs / "kvm").mkdir(parents=True)
    assert kvm_usable(sysfs, tmp_path / "nokvm", {"vmx"}) == (False, f"{tmp_path / 'nokvm'} does not exist")
    (sysfs / "kvm_pvm").mkdir()
    ok, why = kvm_usable(sysfs, dev, {"vmx"})
    assert not ok and "kvm_pvm" in why
    (sysfs / "kvm_pvm").rmdir()
    ok, why = kvm_usable(sysfs, dev, set())
    assert not ok and "vmx/svm" in why
    (sysfs / "kvm_intel").mkdir()
    assert kvm_usable(sysfs, dev, {"vmx"})[0]


def kvm_usable(sysfs, dev, flags):
    return host.kvm_usable(str(sysfs), str(dev), flags)


def test_this_host_uses_tcg():
    """The development host is a PVM guest: auto must not pick KVM here (issue 6: stock guests crawl)."""
    if not os.path.isdir("/sys/module/kvm_pvm"):
        pytest.skip("not a PVM guest (no /sys/module/kvm_pvm)")
    assert host.choose_accel("auto")[0] == "tcg"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_softdirty" name="test_roundtrip" time="0.1"/>
<testcase classname="tests.test_softdirty" name="test_move_marks_soft_dirty" time="0.0">
  <skipped type="pytest.skip" message="feature missing: UFFD_FEATURE_MOVE">...</skipped></testcase>
<testcase classname="tests.test_softdirty" name="test_copy[anon]" time="0.0">
  <failure message="AssertionError: assert 0 == 1&#10;more">trace</failure></testcase>
<testcase classname="tests.test_x.TestCls" name="test_e" time="0.0"><error message="fixture broke"/></testcase>
</testsuite></testsuites>"""


def test_junit_verdicts(tmp_path):
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    v = matrix.junit_verdicts(str(p))
    assert v == {
        "test_softdirty.py::test_roundtrip": matrix.Verdict("PASS"),
        "test_softdirty.py::test_move_marks_soft_dirty": matrix.Verdict("UNSUPPORTED",
                                                                        "feature missing: UFFD_FEATURE_MOVE"),
        "test_softdirty.py::test_copy[anon]": matrix.Verdict("FAIL", "AssertionError: assert 0 == 1 / more", True),
        "test_x.py::TestCls::test_e": matrix.Verdict("ERROR", "fixture broke", True),
    }


def test_repro_and_check_verdicts():
    kern = {"backend": "kernel", "profile": None, "label": "kernel", "mirror": False}
    twin = {"backend": "emu", "profile": "6.1", "label": "emu 6.1", "mirror": True}
    other = {"backend": "emu", "profile": "5.19", "label": "emu 5.19", "mirror": False}
    exp = {"verdict": "REPRODUCED", "source": "spec §7.1 A"}
    doc = {"release": "6.1.0-56-amd64", "results": [
        {"scenario": "copy-dirties", "case": "copy", "target": kern, "verdict": "REPRODUCED", "match": True,
         "reason": "via soft_dirty", "expected": exp},
        {"scenario": "copy-dirties", "case": "copy", "target": twin, "verdict": "NOT REPRODUCED", "match": False,
         "expected": exp},
        {"scenario": "copy-dirties", "case": "copy", "target": other, "verdict": "REPRODUCED", "match": True},
        {"scenario": "copy-dirties", "case": "move", "target": kern, "verdict": "UNSUPPORTED", "match": None,
         "reason": "feature missing: UFFD_FEATURE_MOVE"},
        {"scenario": "unprotect-extra-fault", "case": "anon", "target": twin, "verdict": "REPRODUCED",
         "match": True}],
        "divergences": [{"scenario": "unprotect-extra-fault/anon", "kernel": "REPRODUCED", "emulator": "REPRODUCED",
                         "profile": "6.1", "steps": [{"line": 3}, {"line": 5}]}]}
    v = matrix.repro_verdicts(doc)
    assert v == {
        "repro: copy-dirties/copy [kernel]": matrix.Verdict("REPRODUCED"),
        "repro: copy-dirties/copy [emu]": matrix.Verdict("NOT REPRODUCED (expected REPRODUCED)",
                                                         "expected REPRODUCED: spec §7.1 A", True),
        "repro: copy-dirties/move [kernel]": matrix.Verdict("UNSUPPORTED", "feature missing: UFFD_FEATURE_MOVE"),
        "repro: unprotect-extra-fault/anon [emu]": matrix.Verdict("REPRODUCED, 2 steps differ"),
    }
    col = matrix.Column("6.1.192", "vm", verdicts=v)
    assert not col.ok, "a reproduction that contradicts its expectation fails the column"
    chk = {"verdicts": [{"check": "soft-dirty", "status": "unsupported", "message": "off"},
                        {"check": "open", "status": "ok", "message": "fine"},
                        {"check": "register", "status": "broken", "message": "EINVAL"}]}
    assert matrix.check_verdicts(chk) == {"check: soft-dirty": matrix.Verdict("UNSUPPORTED", "off"),
                                          "check: open": matrix.Verdict("OK"),
                                          "check: register": matrix.Verdict("BROKEN", "EINVAL", True)}


def test_kernel_label():
    pv = ("Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) "
          "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)")
    assert matrix.kernel_label("6.1.0-56-amd64", pv) == "6.1.192"
    assert matrix.kernel_label("6.18.44-fc-v595", "Linux version 6.18.44-fc-v595 (gcc 12)") == "6.18.44"


def test_render_and_status():
    host_col = matrix.Column("host 6.18.44", "host", verdicts={
        "t::a": matrix.Verdict("UNSUPPORTED", "CONFIG_MEM_SOFT_DIRTY off: round trip read 0"),
        "t::b": matrix.Verdict("PASS")})
    vm_col = matrix.Column("6.1.192", "vm", verdicts={"t::a": matrix.Verdict("PASS"),
                                                     "t::b": matrix.Verdict.of("FAIL", "assert 1 == 0")})
    text = matrix.render([host_col, vm_col])
    lines = text.splitlines()
    assert lines[0].split() == ["test", "/", "scenario", "host", "6.18.44", "6.1.192", "(VM)"]
    assert lines[2].split() == ["t::a", "UNSUPPORTED", "[1]", "PASS"]
    assert lines[3].split() == ["t::b", "PASS", "FAIL", "[2]"]
    assert "[1] CONFIG_MEM_SOFT_DIRTY off: round trip read 0" in lines
    assert host_col.ok and not vm_col.ok
    assert not matrix.Column("x", "vm", problem="timeout").ok


def test_plan_script(tmp_path):
    plan = matrix.Plan("/v", ["tests/test_softdirty.py"], repro=True, profiles=("6.1", "6.18"))
    body, env = plan.script(str(tmp_path), soft_dirty=True)
    assert env["UFFDCTL_REQUIRE_SOFTDIRTY"] == "1" and env["UFFDCTL_REQUIRE_KERNEL"] == "1"
    assert "--junitxml" in body and "tests/test_softdirty.py" in body and "repro all" in body
    assert "nr_hugepages" not in body, "the host column must not touch the host's sysctls"
    _, env = plan.script(str(tmp_path), soft_dirty=False)
    assert "UFFDCTL_REQUIRE_SOFTDIRTY" not in env
    assert "echo 32 > /proc/sys/vm/nr_hugepages" in plan.script(str(tmp_path), soft_dirty=True, guest=True)[0]
    # the script itself: run it here with a fake venv whose tools record how they were called
    share, venv = tmp_path / "share", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    share.mkdir()
    for tool in ("pytest", "uffdctl"):
        (venv / "bin" / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {share}/calls\n[ {tool} = pytest ] && exit 1\n'
                                         'echo "{}"\n')
        (venv / "bin" / tool).chmod(0o755)
    series = re.match(r"\d+\.\d+", os.uname().release).group(0)
    body, env = matrix.Plan(str(venv), ["tests/test_softdirty.py"], repro=True,
                            profiles=("5.19", series)).script(str(share), False)
    r = subprocess.run(["sh", "-c", body], env={**os.environ, **env}, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr          # the script's status is pytest's
    calls = (share / "calls").read_text().splitlines()
    assert calls[0] == "uffdctl -j check"
    assert calls[1].startswith("pytest -p no:cacheprovider") and calls[1].endswith("tests/test_softdirty.py")
    assert calls[2] == f"uffdctl -j repro all --backend both --profile {series}"
    assert {p.name for p in share.iterdir()} >= {"release", "proc_version", "check.rc", "pytest.rc", "repro.rc",
                                                  "check.json", "repro.json"}


def test_every_column_runs_with_the_hosts_test_knobs_and_the_selection(tmp_path, monkeypatch):
    """A guest's environment starts empty: UFFDCTL_SELFTEST_ITERATIONS=10 on the host ran soft-dirty.c's
    10,000 iterations in the guests (minutes under TCG: the 6.12 guest's "hang" in soft-dirty-test_hugepage).
    The host's test knobs, --env K=V and -k EXPR reach every column."""
    from vmtest_lib import cli
    assert matrix.forwarded_env({"UFFDCTL_SELFTEST_ITERATIONS": "10", "UFFDCTL_DIFF_SEED": "7", "HOME": "/x",
                                 "UFFDCTL_RUNTIME_DIR": "/run/x"}) == {"UFFDCTL_SELFTEST_ITERATIONS": "10",
                                                                       "UFFDCTL_DIFF_SEED": "7"}
    plan = matrix.Plan("/v", ["tests/test_selftests.py"], env={"UFFDCTL_SELFTEST_ITERATIONS": "10",
                                                                "VMTEST_OUT": "/elsewhere"},
                       select="soft-dirty and kernel")
    body, env = plan.script(str(tmp_path), soft_dirty=True, guest=True)
    assert env["UFFDCTL_SELFTEST_ITERATIONS"] == "10"
    assert env["VMTEST_OUT"] == str(tmp_path)                  # the share is vmtest's, whatever --env says
    assert "tests/test_selftests.py -k 'soft-dirty and kernel'" in body
    assert " -k " not in matrix.Plan("/v", ["t.py"]).script(str(tmp_path), soft_dirty=False)[0]
    args = cli.parser().parse_args(["matrix", "-k", "hugepage", "-e", "A=1", "-e", "B=x=y", "--tests", "t.py"])
    assert (args.select, args.env, args.tests) == ("hugepage", ["A=1", "B=x=y"], ["t.py"])
    assert cli.parse_env(args.env, "matrix") == {"A": "1", "B": "x=y"}
    for bad in ("A", "=1", "1A=2"):
        with pytest.raises(ValueError, match="expected K=V"):
            cli.parse_env([bad], "matrix")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("pytest", "python"):            # a venv whose python knows no emulator profiles
        (venv / "bin" / tool).write_text("#!/bin/sh\nexit 1\n")
        (venv / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("UFFDCTL_SELFTEST_ITERATIONS", "10")
    args = cli.parser().parse_args(["--venv", str(venv), "matrix", "-e", "UFFDCTL_DIFF_SEED=3", "-k", "x"])
    plan = cli.make_plan(args)
    assert plan.env == {"UFFDCTL_SELFTEST_ITERATIONS": "10", "UFFDCTL_DIFF_SEED": "3"} and plan.select == "x"


def test_the_default_cap_fits_the_selection():
    """600 s of guest time stopped the default selection's 6.1 column at 40 % (the ported selftests need
    about 2,000 s in 6.12): a matrix whose selection has tests/test_selftests.py gets SELFTEST_CAP unless
    --timeout says otherwise; a narrow one and `run` keep 600 s."""
    from vmtest_lib import cli
    p = cli.parser()
    assert cli.cap(p.parse_args(["matrix"])) == cli.SELFTEST_CAP
    assert cli.cap(p.parse_args(["--kernel", "6.1,6.12", "matrix"])) == cli.SELFTEST_CAP
    assert cli.cap(p.parse_args(["matrix", "--tests", "tests/test_selftests.py::test_x"])) == cli.SELFTEST_CAP
    assert cli.cap(p.parse_args(["matrix", "--tests", "tests/test_softdirty.py"])) == 600
    assert cli.cap(p.parse_args(["--timeout", "1500", "matrix"])) == 1500
    assert cli.cap(p.parse_args(["run", "--", "true"])) == 600


def test_prefixed_stream():
    class Sink:
        def __init__(self):
            self.data = b""

        def write(self, b):
            self.data += b

        def flush(self):
            pass

    sink, tee = Sink(), Sink()
    p = Prefixed(sink, "[k] ", tee)
    for chunk in (b"ab", b"c\nde", b"f\n", b"\n", b"g"):
        p.write(chunk)
    assert sink.data == b"[k] abc\n[k] def\n[k] \n"     # whole lines only: two columns never mix in one
    assert tee.data == b"abc\ndef\n\ng"
    p.flush()
    assert sink.data == b"[k] abc\n[k] def\n[k] \n"     # flush() (after every read of out.log) keeps "g" back
    p.finish()
    assert sink.data == b"[k] abc\n[k] def\n[k] \n[k] g\n"


def test_prefixed_streams_of_two_threads_never_mix_within_a_line():
    import threading

    class Sink:
        def __init__(self):
            self.parts = []

        def write(self, b):
            self.parts.append(b)

        def flush(self):
            pass

    sink = Sink()

    def column(name):
        p = Prefixed(sink, f"[{name}] ")
        for i in range(2000):
            p.write(f"{name}-{i}".encode())      # a line in two writes, as QEMU's output arrives
            p.write(b" end\n")

    ts = [threading.Thread(target=column, args=(n,)) for n in ("a", "b")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lines = b"".join(sink.parts).decode().splitlines()
    assert len(lines) == 4000
    bad = [x for x in lines if not re.fullmatch(r"\[(a|b)\] \1-\d+ end", x)]
    assert not bad, bad[:3]


@pytest.mark.parametrize("parallel", [1, 2])
def test_run_columns_at_most_parallel_at_once_in_order(monkeypatch, tmp_path, parallel):
    import argparse
    import threading
    from vmtest_lib import cli
    live, peak, lock = [0], [0], threading.Lock()

    def fake(args, plan, vm, criu):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.3)
        with lock:
            live[0] -= 1
        return vm

    monkeypatch.setattr(cli, "run_column", fake)
    args = argparse.Namespace(parallel=parallel, out=str(tmp_path))
    cols, _ = cli.run_columns(args, None, ["a", "b", "c", "d"], host=False)
    assert cols == ["a", "b", "c", "d"] and peak[0] == parallel


def test_run_columns_refuses_more_than_two_at_once(tmp_path):
    import argparse
    from vmtest_lib import cli
    r = subprocess.run([sys.executable, VMTEST, "--no-install", "--parallel", "3", "matrix", "--no-host"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "--parallel 3: expected 1 or 2" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ValueError):
        cli.run_columns(argparse.Namespace(parallel=0, out=str(tmp_path)), None, [], host=False)


def test_cap_does_not_charge_the_time_waiting_for_a_cpu():
    """A process that waits for a CPU behind another on the same core is charged only what it ran."""
    clock = qemu.Clock()
    clock.wall, clock.waited = 100.0, 70.0
    assert clock.charged == 30.0 and not clock.over(40.0) and clock.over(29.0) and not clock.backstop_hit
    clock.wall, clock.waited = qemu.BACKSTOP * 40.0 + 1, qemu.BACKSTOP * 40.0   # almost all of it waiting
    assert clock.over(40.0) and clock.backstop_hit


def test_group_wait_reads_the_run_queue_delay(tmp_path):
    """Two busy processes pinned to one CPU: each waits for the other, and group_wait sees it."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    code = "import os,time\nos.sched_setaffinity(0,{%d})\nt=time.monotonic()\nwhile time.monotonic()-t<30: pass" % cpu
    hog = subprocess.Popen([sys.executable, "-c", code])
    log = str(tmp_path / "out.log")
    p = qemu.spawn([sys.executable, "-c", code], log)
    try:
        deadline = time.monotonic() + 20
        while qemu.group_wait(p.pid) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemu.group_wait(p.pid) >= 1.0
        assert qemu.group_cpu(p.pid) > 0.0     # it ran too: waited and used are told apart
    finally:
        qemu.kill_group(p.pid, proc=p)
        hog.kill()
        hog.wait()


# -- process hygiene with stand-ins -------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, secs: float = 5.0) -> bool:
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def wait_file(path, secs: float = 10.0) -> str:
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


STANDIN = "sleep 300 & echo $! > {pidfile}; echo started; wait"


def test_timeout_kills_the_whole_group(tmp_path):
    log = str(tmp_path / "out.log")
    p = qemu.spawn(["sh", "-c", STANDIN.format(pidfile=tmp_path / "child")], log)
    t0 = time.monotonic()
    rc, timed_out = qemu.supervise(p, log, timeout=1.0, stream=open(os.devnull, "wb"))
    assert timed_out and rc is None and time.monotonic() - t0 < 10
    child = int(wait_file(tmp_path / "child"))
    assert not alive(p.pid) and wait_gone(child), "a process of the group survived the timeout"
    assert p.pid not in qemu._live


# As scripts/vmtest's main() does: a shell starts background jobs with SIGINT ignored, and Python keeps an
# inherited SIG_IGN (a `make test` started from such a job failed the SIGINT case every time).
SUPERVISOR = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {scripts!r})
    from vmtest_lib import qemu
    p = qemu.spawn(["sh", "-c", {cmd!r}], {log!r})
    open({ready!r}, "w").write(str(p.pid))
    qemu.supervise(p, {log!r}, 120)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_supervisor_death_leaves_nothing(tmp_path, sig):
    """Ctrl-C: the finally-clause kills the group.  SIGKILL: PR_SET_PDEATHSIG kills the direct child (QEMU is
    the direct child).  SIGTERM needs the CLI's handler: test_vm_sigint_and_sigterm."""
    cmd = "exec sleep 300" if sig == signal.SIGKILL else STANDIN.format(pidfile=tmp_path / "child")
    code = SUPERVISOR.format(scripts=SCRIPTS, cmd=cmd, log=str(tmp_path / "out.log"), ready=str(tmp_path / "ready"))
    sup = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        pid = int(wait_file(tmp_path / "ready"))
        child = int(wait_file(tmp_path / "child")) if sig != signal.SIGKILL else pid
        sup.send_signal(sig)
        sup.wait(10)
        assert wait_gone(pid) and wait_gone(child), f"{sig.name}: something survived"
    finally:
        if sup.poll() is None:
            sup.kill()


# -- end to end (real QEMU, cached kernel) ------------------------------------------------------

def vm_ready() -> str | None:
    if not host.find_qemu():
        return "qemu-system-x86_64 is not installed (scripts/vmtest installs it: apt-get install qemu-system-x86)"
    if not host.find_static_busybox():
        return "no static busybox (apt-get install busybox-static)"
    if not kernelpkg.cached_kernels(kernelpkg.default_cache()):
        return f"no kernel in the vmtest cache {kernelpkg.default_cache()} (scripts/vmtest fetch)"
    return None


@pytest.fixture
def vm_kernel():
    reason = vm_ready()
    if reason:
        if os.environ.get("UFFDCTL_REQUIRE_VM") == "1":
            pytest.fail(f"UFFDCTL_REQUIRE_VM=1 but: {reason}", pytrace=False)
        pytest.skip(reason)
    # a stock Debian kernel: the cache also holds vmtest's own builds (tiny configs: no sysrq, no modules)
    stock = stock_kernels()
    if not stock:
        reason = "no stock Debian kernel in the vmtest cache (make test-vm fetches one)"
        if os.environ.get("UFFDCTL_REQUIRE_VM") == "1":
            pytest.fail(f"UFFDCTL_REQUIRE_VM=1 but: {reason}", pytrace=False)
        pytest.skip(reason)
    return stock[0]


def stock_kernels() -> list:
    return [k for k in kernelpkg.cached_kernels(kernelpkg.default_cache())
            if k.package.startswith("linux-image-")]


def vmtest(kernel, *args) -> list[str]:
    return [sys.executable, VMTEST, "--no-install", "--kernel-pkg", kernel.package, *args]


def qemu_children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                comm = st[st.index("(") + 1:st.rindex(")")]
                ppid = int(st.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid and comm.startswith("qemu-system"):
                out.append(int(d))
    return out


def test_vm_runs_a_command(vm_kernel):
    """Boot, run in the checkout with the venv on PATH, stream the output, return the exit status."""
    r = subprocess.run(vmtest(vm_kernel, "run", "--", "sh", "-c", "pwd; uname -r; echo out-$((6*7)); exit 3"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines()[:3] == [REPO, vm_kernel.release, "out-42"]


def test_vm_scratch_disk_holds_a_swapfile(vm_kernel):
    """The guest's swap directory is the ext4 scratch disk, not the overlay, so `swap on` works (on the overlay
    swapon(2) is EINVAL) and the swapfile is gone after `swap off`."""
    code = ("import os; from uffdctl import swap; print(swap.fs_type(swap.swap_dir()) == 0xEF53, swap.cannot_hold_swapfile());"
            "d = swap.on(64 << 20); print(bool(swap._entry(d['filename']))); swap.off(d['filename']);"
            "print(os.path.exists(d['filename']), swap.cannot_hold_swapfile('/')); print(swap.swap_dir())")
    r = subprocess.run(vmtest(vm_kernel, "run", "--", "python3", "-c", code), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["True None", "True"], r.stdout
    assert lines[2].startswith("False / is on overlayfs, which cannot hold a swapfile"), r.stdout
    assert lines[3] == qemu.SCRATCH_MOUNT, r.stdout


def test_vm_output_of_one_big_write_arrives_whole(vm_kernel):
    """The out port takes at most 32 KiB per write(2); Python's unbuffered stdout (PYTHONUNBUFFERED, set in the
    guest) does not retry a short write, so `uffdctl -j repro all` lost all but its first 32 KiB."""
    code = "import sys; sys.stdout.write('x' * 100000 + '\\n'); print('end'); sys.exit(3)"
    r = subprocess.run(vmtest(vm_kernel, "run", "--", "python3", "-c", code), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "x" * 100000 + "\nend\n"


def test_vm_guest_reset_is_reported(vm_kernel):
    """A guest that dies before reporting (here: sysrq reset) gives 125 and the console's last lines."""
    r = subprocess.run(vmtest(vm_kernel, "run", "--", "sh", "-c", "echo b > /proc/sysrq-trigger; sleep 30"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == qemu.STATUS_NO_REPORT
    assert "reported no exit status" in r.stderr and "sysrq: Resetting" in r.stderr


def test_vm_timeout_leaves_no_qemu(vm_kernel):
    p = subprocess.Popen(vmtest(vm_kernel, "--timeout", "5", "run", "--", "sleep", "600"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while p.poll() is None:
        seen.update(qemu_children(p.pid))
        time.sleep(0.1)
    assert p.returncode == qemu.STATUS_TIMEOUT, p.stderr.read()
    assert seen, "never saw the QEMU child"
    assert all(wait_gone(q) for q in seen), "QEMU survived the timeout"


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["SIGINT", "SIGTERM"])
def test_vm_sigint_and_sigterm(vm_kernel, sig, status):
    """SIGINT is delivered with SIGINT inherited as ignored, as a shell starts background jobs: vmtest must
    still stop (Python would otherwise keep it ignored)."""
    ignore_int = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    p = subprocess.Popen(vmtest(vm_kernel, "run", "--", "sleep", "600"), preexec_fn=ignore_int,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        kids: list[int] = []
        while not kids and time.monotonic() < end and p.poll() is None:
            kids = qemu_children(p.pid)
            time.sleep(0.1)
        assert kids, "QEMU never started"
        p.send_signal(sig)
        assert p.wait(30) == status
        assert "no QEMU left running" in p.stderr.read()
        assert all(wait_gone(q) for q in kids)
    finally:
        if p.poll() is None:
            p.kill()


def test_unavailable_is_one_line_exit_4(tmp_path):
    """Where QEMU is missing (and may not be installed) or the package does not exist: one line, exit 4."""
    r = subprocess.run([sys.executable, VMTEST, "--no-install", "--qemu", str(tmp_path / "no-qemu"), "run", "--",
                        "true"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (4, "")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"]: cannot run here: --qemu {tmp_path / 'no-qemu'}: "
                                                 "not an executable"), lines
    r = subprocess.run([sys.executable, VMTEST, "--kernel", "six", "fetch"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    if shutil.which("apt-cache") and host.find_qemu() and host.find_static_busybox():
        r = subprocess.run([sys.executable, VMTEST, "--no-install", "--cache", str(tmp_path), "--kernel", "2.6",
                            "fetch"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 4 and "no linux-image-2.6-amd64 package" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
