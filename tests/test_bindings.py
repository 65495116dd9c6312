"""The compiled bindings against the spec (§4) and against the build host's headers where they define a name."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from uffdctl import uapi

ffi_lib = pytest.importorskip("uffdctl._uffd", reason="native extension not built (emulator-only install)")
ffi, lib = ffi_lib.ffi, ffi_lib.lib

# spec §4, x86-64: ioctl numbers
SPEC_IOCTLS = {
    "USERFAULTFD_IOC_NEW": 0x0000AA00,
    "UFFDIO_API": 0xC018AA3F,
    "UFFDIO_REGISTER": 0xC020AA00,
    "UFFDIO_UNREGISTER": 0x8010AA01,
    "UFFDIO_WAKE": 0x8010AA02,
    "UFFDIO_COPY": 0xC028AA03,
    "UFFDIO_ZEROPAGE": 0xC020AA04,
    "UFFDIO_MOVE": 0xC028AA05,
    "UFFDIO_WRITEPROTECT": 0xC018AA06,
    "UFFDIO_CONTINUE": 0xC020AA07,
    "UFFDIO_POISON": 0xC020AA08,
    "PAGEMAP_SCAN": 0xC0606610,
}

# spec §4: struct sizes and field offsets
SPEC_LAYOUT = {
    "uffdio_api": (24, {"api": 0, "features": 8, "ioctls": 16}),
    "uffdio_range": (16, {"start": 0, "len": 8}),
    "uffdio_register": (32, {"range": 0, "mode": 16, "ioctls": 24}),
    "uffdio_copy": (40, {"dst": 0, "src": 8, "len": 16, "mode": 24, "copy": 32}),
    "uffdio_zeropage": (32, {"range": 0, "mode": 16, "zeropage": 24}),
    "uffdio_writeprotect": (24, {"range": 0, "mode": 16}),
    "uffdio_continue": (32, {"range": 0, "mode": 16, "mapped": 24}),
    "uffdio_poison": (32, {"range": 0, "mode": 16, "updated": 24}),
    "uffdio_move": (40, {"dst": 0, "src": 8, "len": 16, "mode": 24, "move": 32}),
    "uffd_msg": (32, {"event": 0, "reserved1": 1, "reserved2": 2, "reserved3": 4, "arg": 8}),
    "page_region": (24, {"start": 0, "end": 8, "categories": 16}),
    "pm_scan_arg": (96, {"size": 0, "flags": 8, "start": 16, "end": 24, "walk_end": 32, "vec": 40,
                         "vec_len": 48, "max_pages": 56, "category_inverted": 64, "category_mask": 72,
                         "category_anyof_mask": 80, "return_mask": 88}),
}


@pytest.mark.parametrize("name", sorted(SPEC_IOCTLS))
def test_ioctl_number(name):
    assert getattr(lib, name) == SPEC_IOCTLS[name]
    assert uapi.IOCTL_NUMBERS[name] == SPEC_IOCTLS[name]


def test_ioctl_numbers_exceed_int():
    """Request codes above 2^31 must pass through unsigned long intact."""
    assert lib.UFFDIO_COPY > 2**31 and ffi.typeof(lib.uffdctl_ioctl).args[1].cname == "unsigned long"


@pytest.mark.parametrize("struct", sorted(SPEC_LAYOUT))
def test_struct_layout(struct):
    size, offsets = SPEC_LAYOUT[struct]
    assert ffi.sizeof(f"struct {struct}") == size == uapi.SIZEOF[struct]
    for field, off in offsets.items():
        assert ffi.offsetof(f"struct {struct}", field) == off, field


def test_uffd_msg_packed_union_offsets():
    t = "struct uffd_msg"
    assert ffi.offsetof(t, "arg") + ffi.offsetof("struct uffd_msg", "arg") == 16  # arg at 8
    m = ffi.new("struct uffd_msg *")
    base = int(ffi.cast("uintptr_t", m))
    assert int(ffi.cast("uintptr_t", ffi.addressof(m.arg.pagefault, "flags"))) - base == 8
    assert int(ffi.cast("uintptr_t", ffi.addressof(m.arg.pagefault, "address"))) - base == 16
    assert int(ffi.cast("uintptr_t", ffi.addressof(m.arg.pagefault.feat, "ptid"))) - base == 24
    assert int(ffi.cast("uintptr_t", ffi.addressof(m.arg.remap, "len"))) - base == 24
    assert int(ffi.cast("uintptr_t", ffi.addressof(m.arg.remove, "end"))) - base == 16


CONST_GROUPS = [
    (uapi.Feature, "UFFD_FEATURE_"), (uapi.RegisterMode, "UFFDIO_REGISTER_MODE_"),
    (uapi.CopyMode, "UFFDIO_COPY_MODE_"), (uapi.ZeropageMode, "UFFDIO_ZEROPAGE_MODE_"),
    (uapi.WriteprotectMode, "UFFDIO_WRITEPROTECT_MODE_"), (uapi.ContinueMode, "UFFDIO_CONTINUE_MODE_"),
    (uapi.PoisonMode, "UFFDIO_POISON_MODE_"), (uapi.MoveMode, "UFFDIO_MOVE_MODE_"),
    (uapi.PagefaultFlag, "UFFD_PAGEFAULT_FLAG_"), (uapi.PageCategory, "PAGE_IS_"),
]


def _header_values(names: list[str], header: str) -> dict[str, int]:
    """Compile a probe against the build host's header; names it does not define are left out."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to read the system headers with")
    body = "\n".join(f'#ifdef {n}\nprintf("{n} %llu\\n", (unsigned long long)({n}));\n#endif' for n in names)
    src = f"#include <stdio.h>\n#include <sys/ioctl.h>\n#include <{header}>\nint main(void) {{\n{body}\nreturn 0; }}\n"
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        c, exe = os.path.join(d, "p.c"), os.path.join(d, "p")
        with open(c, "w") as f:
            f.write(src)
        subprocess.run([cc, "-o", exe, c], check=True, capture_output=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def _our_names() -> dict[str, int]:
    ours = {f"{p}{m.name}": m.value for cls, p in CONST_GROUPS for m in cls}
    ours.update({k: v for k, v in uapi.IOCTL_NUMBERS.items() if k != "PAGEMAP_SCAN"})
    ours.update(UFFD_API=uapi.UFFD_API, UFFD_EVENT_PAGEFAULT=0x12, UFFD_EVENT_FORK=0x13, UFFD_EVENT_REMAP=0x14,
                UFFD_EVENT_REMOVE=0x15, UFFD_EVENT_UNMAP=0x16, UFFD_USER_MODE_ONLY=1)
    # Composite masks (UFFD_API_FEATURES, UFFD_API_RANGE_IOCTLS*) grow with each kernel and are
    # compared against the running kernel instead (tests/cases.py register-ioctls).
    return ours


def test_system_userfaultfd_header_agrees():
    """Where the host's (older) <linux/userfaultfd.h> defines a name, its value is ours."""
    ours = _our_names()
    theirs = _header_values(sorted(ours), "linux/userfaultfd.h")
    assert theirs, "the system header defined none of our names?"
    assert len(theirs) >= 40
    for k, v in theirs.items():
        assert ours[k] == v, (k, hex(ours[k]), hex(v))


def test_system_fs_header_agrees():
    names = [f"PAGE_IS_{m.name}" for m in uapi.PageCategory] + ["PAGEMAP_SCAN", "PM_SCAN_WP_MATCHING",
                                                                  "PM_SCAN_CHECK_WPASYNC"]
    theirs = _header_values(names, "linux/fs.h")
    ours = {f"PAGE_IS_{m.name}": m.value for m in uapi.PageCategory}
    ours.update(PAGEMAP_SCAN=uapi.PAGEMAP_SCAN, PM_SCAN_WP_MATCHING=1, PM_SCAN_CHECK_WPASYNC=2)
    for k, v in theirs.items():
        assert ours[k] == v, k


def test_compiled_constants_match_uapi():
    """Every constant the compiled module exports equals uapi.py's (enforced sync, not a comment)."""
    for cls, prefix in CONST_GROUPS:
        for m in cls:
            name = f"{prefix}{m.name}"
            if hasattr(lib, name):
                assert getattr(lib, name) == m.value, name
    for name, v in uapi.IOCTL_NUMBERS.items():
        assert getattr(lib, name) == v


def test_features_mask_names():
    assert uapi.Feature.decode(uapi.FEATURES_6_18) == [f"UFFD_FEATURE_{m.name}" for m in uapi.Feature]
    assert uapi.Ioctl.decode(0x17C) == ["_UFFDIO_WAKE", "_UFFDIO_COPY", "_UFFDIO_ZEROPAGE", "_UFFDIO_MOVE",
                                        "_UFFDIO_WRITEPROTECT", "_UFFDIO_POISON"]
    assert uapi.RegisterMode.parse("missing,wp") == 3
    assert uapi.RegisterMode.parse("UFFDIO_REGISTER_MODE_MINOR|0x1") == 5
    with pytest.raises(ValueError, match="unknown RegisterMode"):
        uapi.RegisterMode.parse("bogus")
