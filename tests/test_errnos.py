"""One test per documented error of each ioctl (spec §3.1, §3.2), table-driven.

Each row: an id, the memory type, the register mode, a function that issues the
failing call, the errno, and the result field the kernel leaves (None = not
written: argument validation failed before the copy-out).
"""
from __future__ import annotations

import errno
import os

import pytest

from cases import Ctx, UffdCase
from conftest import TABLE_BACKENDS, make_backend, registered, require_kernel
from uffdctl import uapi
from uffdctl.backend import MemType
from uffdctl.errors import UffdError

M = uapi.RegisterMode
P = uapi.PAGE_SIZE
HUGE_ADDR = 1 << 47  # beyond TASK_SIZE


def _other_uffd(c):
    """A second uffd that registers the range first (-> EBUSY for ours)."""
    u2 = c.b.userfaultfd()
    u2.api(0)
    c.u.unregister(c.r.addr, c.r.len)
    u2.register(c.r.addr, c.r.len, M.MISSING)
    c._keep = u2
    return c.u.register(c.r.addr, c.r.len, M.MISSING)


def _populate_then(c, fn):
    """Map page 0 first: by COPY where MISSING is registered (a plain write would block), else by a write."""
    if c.case.register_mode & M.MISSING:
        c.u.copy(c.r.addr, c.src.addr, P)
    else:
        c.populate(0)
    return fn()


def _hole(c) -> int:
    """An address with no VMA: map a page and unmap it."""
    r = c.b.mmap(P, "anon")
    c.b.munmap(r.addr, P)
    return r.addr


# (id, memtype, register mode, call, errno, done)
ROWS = [
    # UFFDIO_REGISTER
    ("register-mode-0", "anon", 0, lambda c: c.u.register(c.r.addr, c.r.len, 0), errno.EINVAL, None),
    ("register-mode-unknown", "anon", 0, lambda c: c.u.register(c.r.addr, c.r.len, 1 << 3), errno.EINVAL, None),
    ("register-unaligned-start", "anon", 0, lambda c: c.u.register(c.r.addr + 1, P, M.MISSING), errno.EINVAL, None),
    ("register-len-0", "anon", 0, lambda c: c.u.register(c.r.addr, 0, M.MISSING), errno.EINVAL, None),
    ("register-unaligned-len", "anon", 0, lambda c: c.u.register(c.r.addr, 100, M.MISSING), errno.EINVAL, None),
    ("register-beyond-task-size", "anon", 0, lambda c: c.u.register(HUGE_ADDR, P, M.MISSING), errno.EINVAL, None),
    ("register-no-vma", "anon", 0, lambda c: c.u.register(_hole(c), P, M.MISSING), errno.EINVAL, None),
    ("register-minor-anon", "anon", 0, lambda c: c.u.register(c.r.addr, c.r.len, M.MINOR), errno.EINVAL, None),
    ("register-other-ctx", "anon", M.MISSING, _other_uffd, errno.EBUSY, None),
    # UFFDIO_UNREGISTER
    ("unregister-unaligned", "anon", M.MISSING, lambda c: c.u.unregister(c.r.addr + 8, P), errno.EINVAL, None),
    ("unregister-no-vma", "anon", M.MISSING, lambda c: c.u.unregister(_hole(c), P), errno.EINVAL, None),
    # UFFDIO_WAKE
    ("wake-len-0", "anon", M.MISSING, lambda c: c.u.wake(c.r.addr, 0), errno.EINVAL, None),
    ("wake-unaligned", "anon", M.MISSING, lambda c: c.u.wake(c.r.addr + 1, P), errno.EINVAL, None),
    # UFFDIO_COPY
    ("copy-unaligned-dst", "anon", M.MISSING, lambda c: c.u.copy(c.r.addr + 1, c.src.addr, P), errno.EINVAL, None),
    ("copy-len-0", "anon", M.MISSING, lambda c: c.u.copy(c.r.addr, c.src.addr, 0), errno.EINVAL, None),
    ("copy-bad-mode", "anon", M.MISSING, lambda c: c.u.copy(c.r.addr, c.src.addr, P, 1 << 2), errno.EINVAL, None),
    ("copy-not-registered", "anon", 0, lambda c: c.u.copy(c.r.addr, c.src.addr, P), errno.ENOENT, -errno.ENOENT),
    ("copy-past-vma", "anon", M.MISSING, lambda c: c.u.copy(c.r.end - P, c.src.addr, 2 * P), errno.ENOENT,
     -errno.ENOENT),
    ("copy-exists", "anon", M.MISSING, lambda c: _populate_then(c, lambda: c.u.copy(c.r.addr, c.src.addr, P)),
     errno.EEXIST, -errno.EEXIST),
    ("copy-bad-src", "anon", M.MISSING, lambda c: c.u.copy(c.r.addr, _hole(c), P), errno.EFAULT,
     -errno.EFAULT),
    ("copy-wp-without-wp", "anon", M.MISSING, lambda c: c.u.copy(c.r.addr, c.src.addr, P, uapi.CopyMode.WP),
     errno.EINVAL, -errno.EINVAL),
    # UFFDIO_ZEROPAGE
    ("zeropage-bad-mode", "anon", M.MISSING, lambda c: c.u.zeropage(c.r.addr, P, 1 << 1), errno.EINVAL, None),
    ("zeropage-unaligned", "anon", M.MISSING, lambda c: c.u.zeropage(c.r.addr + 8, P), errno.EINVAL, None),
    ("zeropage-exists", "anon", M.MISSING, lambda c: _populate_then(c, lambda: c.u.zeropage(c.r.addr, P)),
     errno.EEXIST, -errno.EEXIST),
    ("zeropage-not-registered", "anon", 0, lambda c: c.u.zeropage(c.r.addr, P), errno.ENOENT, -errno.ENOENT),
    # UFFDIO_CONTINUE
    ("continue-anon", "anon", M.MISSING, lambda c: c.u.continue_(c.r.addr, P), errno.EINVAL, -errno.EINVAL),
    ("continue-bad-mode", "shmem", M.MINOR, lambda c: c.u.continue_(c.r.addr, P, 1 << 2), errno.EINVAL, None),
    ("continue-no-page", "shmem", M.MINOR, lambda c: c.u.continue_(c.r.addr, P), errno.EFAULT, -errno.EFAULT),
    ("continue-mapped", "shmem", M.MINOR, lambda c: _populate_then(c, lambda: c.u.continue_(c.r.addr, P)),
     errno.EEXIST, -errno.EEXIST),
    # UFFDIO_POISON
    ("poison-bad-mode", "anon", M.MISSING, lambda c: c.u.poison(c.r.addr, P, 1 << 1), errno.EINVAL, None),
    ("poison-exists", "anon", M.MISSING, lambda c: _populate_then(c, lambda: c.u.poison(c.r.addr, P)),
     errno.EEXIST, -errno.EEXIST),
    ("poison-not-registered", "anon", 0, lambda c: c.u.poison(c.r.addr, P), errno.ENOENT, -errno.ENOENT),
    # UFFDIO_MOVE
    ("move-bad-mode", "anon", M.MISSING, lambda c: c.u.move(c.r.addr, c.src.addr, P, 1 << 2), errno.EINVAL, None),
    ("move-unaligned-src", "anon", M.MISSING, lambda c: c.u.move(c.r.addr, c.src.addr + 1, P), errno.EINVAL, None),
    ("move-dst-exists", "anon", M.MISSING, lambda c: _populate_then(c, lambda: c.u.move(c.r.addr, c.src.addr, P)),
     errno.EEXIST, -errno.EEXIST),
    ("move-src-hole", "anon", M.MISSING, lambda c: c.u.move(c.r.addr, c.b.mmap(P, "anon").addr, P),
     errno.ENOENT, -errno.ENOENT),
    ("move-dst-unregistered", "anon", 0, lambda c: c.u.move(c.r.addr, c.src.addr, P), errno.EINVAL, -errno.EINVAL),
    ("move-shmem", "shmem", M.MISSING, lambda c: c.u.move(c.r.addr, c.src.addr, P), errno.EINVAL, -errno.EINVAL),
    # UFFDIO_WRITEPROTECT
    ("writeprotect-wp-dontwake", "anon", M.WP, lambda c: c.u.writeprotect(c.r.addr, P, 3), errno.EINVAL, None),
    ("writeprotect-bad-mode", "anon", M.WP, lambda c: c.u.writeprotect(c.r.addr, P, 1 << 2), errno.EINVAL, None),
    ("writeprotect-not-wp", "anon", M.MISSING, lambda c: c.u.writeprotect(c.r.addr, P, 1), errno.ENOENT, None),
    ("writeprotect-no-vma", "anon", M.WP, lambda c: c.u.writeprotect(_hole(c), P, 1), errno.ENOENT, None),
    ("writeprotect-unaligned", "anon", M.WP, lambda c: c.u.writeprotect(c.r.addr + 1, P, 1), errno.EINVAL, None),
]


@pytest.mark.parametrize("backend_name", TABLE_BACKENDS)
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_errno(row, backend_name):
    name, mt, mode, call, err, done = row
    b = make_backend(backend_name)
    try:
        c = Ctx(b, MemType(mt), UffdCase(name, None, frozenset(), register_mode=mode, pages=4))
        with pytest.raises(UffdError) as ei:
            call(c)
        e = ei.value
        assert e.errno == err, f"{e} (expected {errno.errorcode[err]})"
        assert e.done == done, f"{e}: done={e.done!r}, expected {done!r}"
    finally:
        b.close()


def test_register_holes_allowed_and_reregister(any_backend):
    """Holes inside a REGISTER range are allowed; re-registering replaces the mode (spec §3.2, [E B2,B10])."""
    r, u = registered(any_backend, mode=M.MISSING)
    any_backend.munmap(r.addr + P, P)
    assert u.register(r.addr, 4 * P, M.MISSING) == 0x13C
    assert u.register(r.addr, 4 * P, M.MISSING | M.WP) == 0x17C
    u.unregister(r.addr, 4 * P)
    u.unregister(r.addr, 4 * P)  # unregistering an unregistered range is fine


def test_ioctl_before_api(any_backend):
    r = any_backend.mmap(P, "anon")
    u = any_backend.userfaultfd()
    with pytest.raises(UffdError) as ei:
        u.register(r.addr, P, M.MISSING)
    assert ei.value.errno == errno.EINVAL
    u.api(0)
    assert u.register(r.addr, P, M.MISSING)


# -- the UFFDIO_API contract (selftests' test_uffd_api), both open paths -----------------------

@pytest.mark.parametrize("backend_name", TABLE_BACKENDS)
@pytest.mark.parametrize("via", ["syscall", "dev"])
def test_api_contract(backend_name, via):
    b = make_backend(backend_name)
    try:
        u = b.userfaultfd(via=via)
        with pytest.raises(UffdError) as ei:
            u.api(0, api=0xAB)  # wrong api
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(UffdError) as ei:
            u.api(1 << 63)      # unknown feature
        assert ei.value.errno == errno.EINVAL
        got = u.api(0)          # a failed API does not consume the once-per-fd call
        assert got.api == uapi.UFFD_API
        assert got.features == b.describe()["features"]  # all available features, whatever was asked
        assert got.ioctls == int(uapi.UFFD_API_IOCTLS)
        with pytest.raises(UffdError) as ei:
            u.api(0)            # second successful call: EINVAL
        assert ei.value.errno == errno.EINVAL
        u.close()
    finally:
        b.close()


def test_api_failure_zeroes_struct(kernel_backend):
    """On a failed UFFDIO_API the kernel zeroes the whole struct, api included (spec §3.2 [E A1])."""
    from uffdctl._uffd import ffi, lib
    u = kernel_backend.userfaultfd()
    s = ffi.new("struct uffdio_api *", {"api": 0xAB, "features": 5, "ioctls": 7})
    assert lib.uffdctl_ioctl(u.fd, lib.UFFDIO_API, s) == -errno.EINVAL
    assert (s.api, s.features, s.ioctls) == (0, 0, 0)
    s = ffi.new("struct uffdio_api *", {"api": 0xAA, "features": 0})
    assert lib.uffdctl_ioctl(u.fd, lib.UFFDIO_API, s) == 0
    assert s.features == uapi.FEATURES_6_18


def test_wp_async_implies_unpopulated(kernel_backend):
    """Asking for WP_ASYNC adds WP_UNPOPULATED to the context (fdinfo 'API:\taa:8000a000:...', [E A5])."""
    u = kernel_backend.userfaultfd()
    u.api(uapi.Feature.WP_ASYNC)
    with open(f"/proc/self/fdinfo/{u.fd}") as f:
        api_line = [l for l in f if l.startswith("API:")][0]
    assert api_line.split()[1].split(":")[1] == "8000a000", api_line


def test_unknown_ioctl_and_short_read(kernel_backend):
    u = kernel_backend.userfaultfd()
    u.api(0)
    r, _ = u.ioctl_raw(0xC010AA3E, bytes(16))
    assert r == -errno.EINVAL
    assert u.read_raw(31) == -errno.EINVAL
    assert u.read_raw(32) == -errno.EAGAIN   # nothing pending, O_NONBLOCK


def test_userfaultfd_bad_flags(kernel_backend):
    with pytest.raises(UffdError) as ei:
        kernel_backend.userfaultfd(flags=0x10, via="syscall")
    assert ei.value.errno == errno.EINVAL


NOBODY_SCRIPT = r"""
import errno, json, sys
from uffdctl.kernel import KernelBackend
from uffdctl import uapi
b = KernelBackend(probe=False)
out = {}
for via, flags in (("syscall", uapi.O_CLOEXEC), ("dev", uapi.O_CLOEXEC), ("syscall", uapi.O_CLOEXEC | 1)):
    try:
        u = b.userfaultfd(flags=flags, via=via)
        try:
            u.api(uapi.Feature.EVENT_FORK)
            out[f"{via}-{flags}"] = "ok"
        except OSError as e:
            out[f"{via}-{flags}"] = "api:" + errno.errorcode[e.errno]
    except OSError as e:
        out[f"{via}-{flags}"] = errno.errorcode[e.errno] + "|" + str(e)
print(json.dumps(out))
"""


def test_open_paths_unprivileged(kernel_backend, tmp_path):
    """As an unprivileged uid: userfaultfd(2) EPERM (with the cure in the message), /dev/userfaultfd EACCES,
    UFFD_USER_MODE_ONLY opens, and EVENT_FORK without CAP_SYS_PTRACE is EPERM (spec §3.8, §3.2)."""
    import json
    import shutil
    import subprocess
    import sys
    setpriv = shutil.which("setpriv")
    if not setpriv or os.geteuid() != 0:
        require_kernel("needs root and setpriv to switch to an unprivileged uid")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            pytest.skip("vm.unprivileged_userfaultfd=1 on this machine: EPERM cannot be shown")
    site = os.path.dirname(os.path.dirname(uapi.__file__))
    env = {"PYTHONPATH": site, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
                        NOBODY_SCRIPT], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    if p.returncode != 0 and "Permission denied" in p.stderr and "python" in p.stderr.lower():
        require_kernel(f"the interpreter is not executable by uid 65534: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out[f"syscall-{uapi.O_CLOEXEC}"].startswith("EPERM|"), out
    assert "vm.unprivileged_userfaultfd" in out[f"syscall-{uapi.O_CLOEXEC}"]
    assert out[f"dev-{uapi.O_CLOEXEC}"].startswith("EACCES|"), out
    assert out[f"syscall-{uapi.O_CLOEXEC | 1}"] == "api:EPERM", out
