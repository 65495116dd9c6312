"""The fault handler, the GIL hazard, shutdown and fd hygiene — each proven with a timeout, not hope.

Scenarios that could hang run in a subprocess with a timeout, so the suite itself never does.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import make_backend, registered
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy
from uffdctl.errors import uffd_error
from uffdctl.handler import NativeHandler

pytestmark = pytest.mark.kernel
P = uapi.PAGE_SIZE

PRELUDE = """
import sys, threading, time
from uffdctl.kernel import KernelBackend
from uffdctl._uffd import ffi, lib
b = KernelBackend()
r = b.mmap(16 * 4096, "anon")
u = b.userfaultfd()
u.api(0)
u.register(r.addr, r.len, 1)
"""

PY_HANDLER = """
def py_handler():
    # a handler written in Python: needs the GIL for every step
    while True:
        for m in u.read_msgs():
            u.zeropage(m.address, 4096)
        time.sleep(0.001)
threading.Thread(target=py_handler, daemon=True).start()
"""


def run_py(body: str, timeout: float) -> subprocess.CompletedProcess | None:
    """Run a script with the installed uffdctl; None if it had to be killed at the timeout."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE + body)], capture_output=True,
                              text=True, timeout=timeout, cwd="/")  # not the checkout: the installed package
    except subprocess.TimeoutExpired:
        return None


def test_gil_released_access_with_python_handler(kernel_backend):
    """Touching registered memory through uffdctl's C calls releases the GIL: a Python handler serves it."""
    p = run_py(PY_HANDLER + """
print(b.read(r.addr + 5 * 4096, 16).hex())
b.thread("t").access(r.addr, 4096, True, fill=3).wait(5) or sys.exit(3)
print("ok")
""", timeout=30)
    assert p is not None, "deadlocked: an access that should release the GIL held it"
    assert p.returncode == 0 and p.stdout.split() == ["00" * 16, "ok"], p.stderr


def test_gil_held_access_deadlocks_python_handler(kernel_backend):
    """The hazard itself: ffi.buffer on registered memory faults *with the GIL held*; a Python handler can
    never run, and the process hangs (killed here after 5 s)."""
    p = run_py(PY_HANDLER + """
data = bytes(ffi.buffer(ffi.cast("char *", r.addr), 16))   # holds the GIL in the fault
print("unexpectedly returned")
""", timeout=5)
    assert p is None, f"expected a deadlock, got rc={p.returncode} out={p.stdout!r} err={p.stderr[-300:]!r}"


def test_gil_held_access_served_by_native_handler(kernel_backend):
    """Same GIL-holding access, native handler: it never needs the GIL, so the access completes."""
    p = run_py("""
from uffdctl.backend import HandlerPolicy
h = b.fault_handler(u, HandlerPolicy(missing="fill", fill=0x7e))
h.start()
data = bytes(ffi.buffer(ffi.cast("char *", r.addr), 16))   # holds the GIL in the fault
h.stop()
print(data.hex(), [e.action for e in h.events()])
""", timeout=30)
    assert p is not None, "native handler did not serve a GIL-holding fault"
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "7e" * 16 + " ['fill']"


def test_handler_batches_and_logs(kernel_backend):
    """Many threads fault at once: one handler resolves all, logs each message once, with timestamps."""
    b = kernel_backend
    r, u = registered(b, 64, features=uapi.Feature.THREAD_ID)
    with b.fault_handler(u, HandlerPolicy(missing="zeropage")) as h:
        accs = [b.thread(f"t{i % 8}").access(r.addr + i * P, 1, True, fill=1) for i in range(64)]
        assert all(a.wait(5) for a in accs)
    evs = h.events()  # after stop: entries are logged after their ioctl
    st = h.stats()
    assert sorted(e.msg.address for e in evs) == [r.addr + i * P for i in range(64)]
    assert all(e.action == "zeropage" and e.err == 0 and e.result == P for e in evs)
    assert {e.msg.ptid for e in evs} == {b.thread(f"t{i}").tid for i in range(8)}
    ts = [e.msg.ts_ns for e in evs]
    assert ts == sorted(ts) and ts[0] > 0
    assert st["msgs"] == 64 and st["resolved"] == 64 and st["errors"] == 0 and st["dropped"] == 0
    assert st["reads"] <= 64


@pytest.mark.parametrize("kind", ["missing", "wp", "minor"])
def test_handler_stop_releases_queued_faults(kernel_backend, kind):
    """A queued (manual) fault is not left blocked when the handler stops."""
    b = kernel_backend
    mt = "shmem" if kind == "minor" else "anon"
    r = b.mmap(4 * P, mt)
    u = b.userfaultfd()
    u.api(0)
    mode = {"missing": 1, "wp": 2, "minor": 4}[kind]
    u.register(r.addr, r.len, mode)
    if kind == "wp":
        b.write(r.addr, b"x")
        u.writeprotect(r.addr, P, uapi.WriteprotectMode.WP)
    if kind == "minor":
        b.write(b.alias(r).addr, b"m")
    h = b.fault_handler(u, HandlerPolicy(missing="queue", wp="queue", minor="queue"))
    h.start()
    acc = b.thread("t").access(r.addr, 1, True, fill=9)
    assert not acc.wait(0.3)
    time.sleep(0.1)
    h.stop()
    assert acc.wait(5), "handler stopped with a thread still blocked in its fault"
    assert [e.action for e in h.events()] == ["queue"]
    assert b.read(r.addr, 1) == b"\x09"


def test_handler_stop_after_manual_resolution(kernel_backend):
    """Faults the user already resolved are only woken at stop (EEXIST -> wake), never overwritten."""
    b = kernel_backend
    r, u = registered(b)
    src = b.mmap(P, "anon")
    b.write(src.addr, b"S" * P)
    h = b.fault_handler(u, HandlerPolicy(missing="queue"))
    h.start()
    acc = b.thread("t").access(r.addr, 1, False)
    assert not acc.wait(0.3)
    u.copy(r.addr, src.addr, P, uapi.CopyMode.DONTWAKE)
    h.stop()
    assert acc.wait(5)
    assert b.read(r.addr, 4) == b"SSSS"


def test_close_releases_blocked_thread(kernel_backend):
    b = kernel_backend
    r, u = registered(b)
    acc = b.thread("t").access(r.addr + P, 8, False, want_data=True)
    assert not acc.wait(0.3)
    u.close()
    assert acc.wait(5)
    assert acc.result().data == bytes(8)


def test_exit_with_blocked_fault_does_not_hang(kernel_backend):
    """A process whose thread is blocked in a fault exits promptly (daemon threads; the mm goes away)."""
    t0 = time.monotonic()
    p = run_py("""
acc = b.thread("t").access(r.addr, 1, True, fill=1)
print("blocked" if not acc.wait(0.3) else "not blocked")
""", timeout=20)
    assert p is not None, "interpreter exit hung with a thread blocked in a userfault"
    assert p.returncode == 0 and p.stdout.strip() == "blocked", p.stderr
    assert time.monotonic() - t0 < 20


def test_fd_leak(kernel_backend):
    """Open, API and close 1,000 uffds: the fd table is unchanged; O_CLOEXEC is set on each."""
    import fcntl
    before = sorted(os.listdir("/proc/self/fd"))
    for i in range(1000):
        u = kernel_backend.userfaultfd(via="dev" if i % 2 else "syscall")
        if i == 0:
            assert fcntl.fcntl(u.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        u.api(0)
        u.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_handlers_threads_gone_after_close():
    """Backend.close() stops handlers and toucher threads: nothing of ours keeps running."""
    b = make_backend("kernel")
    r, u = registered(b)
    h = b.fault_handler(u, HandlerPolicy(missing="queue"))
    h.start()
    acc = b.thread("t").access(r.addr, 1, True)
    assert not acc.wait(0.2)
    b.close()
    assert acc.wait(5)
    assert not h.running
    assert not [t for t in threading.enumerate() if t.name.startswith("uffdctl-")]


# -- the fast paths of the Python fault path and the native handler's read-first loop -------------
def _raw_msg(event: int, arg: bytes) -> bytes:
    import struct
    return struct.pack("<BBHI", event, 0, 0, 0) + arg.ljust(24, b"\0")


def _raw_msgs():
    import struct
    E = uapi.Event
    return [
        _raw_msg(E.PAGEFAULT, struct.pack("<QQI", uapi.PagefaultFlag.WRITE, 0x7F0000001234, 4242)),
        _raw_msg(E.PAGEFAULT, struct.pack("<QQI", uapi.PagefaultFlag.WP | uapi.PagefaultFlag.WRITE, 0x1000, 7)),
        _raw_msg(E.FORK, struct.pack("<I", 17)),
        _raw_msg(E.REMAP, struct.pack("<QQQ", 0x10000, 0x20000, 0x3000)),
        _raw_msg(E.REMOVE, struct.pack("<QQ", 0x40000, 0x42000)),
        _raw_msg(E.UNMAP, struct.pack("<QQ", 0x50000, 0x51000)),
    ]


def _pipe_uffd(b):
    """A KernelUffd over a pipe: its reads see exactly the bytes written into the pipe."""
    from uffdctl.kernel import KernelUffd
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return KernelUffd(b, rfd, "pipe", os.O_NONBLOCK), wfd


def _same(got, raws):
    from uffdctl.types import decode_msg
    want = [decode_msg(raw) for raw in raws]
    for g, w in zip(got, want):
        w.ts_ns = g.ts_ns   # the read time is not part of the message
    return got == want and all(g.ts_ns > 0 for g in got)


@pytest.fixture(params=["fastpath", "cffi"])
def uffd_path(request, monkeypatch):
    """KernelUffd's per-call methods through the C fast path (uffdctl._fastpath) or the cffi wrappers."""
    from uffdctl import kernel
    if request.param == "cffi":
        monkeypatch.setenv("UFFDCTL_NO_FASTPATH", "1")
    else:
        monkeypatch.delenv("UFFDCTL_NO_FASTPATH", raising=False)
        assert kernel._FastUffd is not None, "uffdctl._fastpath was not built next to uffdctl._uffd"
    return request.param


def test_fast_path_is_the_one_in_use(kernel_backend, uffd_path):
    """The fast path's methods replace the Python ones on the instance exactly when it is enabled."""
    from uffdctl import kernel
    r, u = registered(kernel_backend)
    fast = uffd_path == "fastpath"
    assert kernel.fastpath_enabled() is fast
    for name in ("copy", "zeropage", "writeprotect", "read_msgs", "wait_msgs"):
        assert (type(getattr(u, name)).__name__ == "builtin_function_or_method") is fast, name


def test_per_page_calls_agree_on_both_paths(kernel_backend, uffd_path):
    """copy/zeropage/writeprotect by position and by keyword, their results, and their errors (class,
    errno, done: the partial progress, None where the kernel did not write it; the closed message)."""
    from uffdctl.errors import UffdError
    b = kernel_backend
    r, u = registered(b, pages=8, mode=uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    src = b.mmap(8 * P, "anon")
    b.write(src.addr, b"\5" * src.len)
    assert u.copy(r.addr, src.addr, P) == P
    assert u.copy(dst=r.addr + P, src=src.addr, len=P, mode=0) == P
    assert u.copy(r.addr + 2 * P, src.addr, P, uapi.CopyMode.WP) == P
    assert u.zeropage(r.addr + 3 * P, P) == P
    assert u.zeropage(start=r.addr + 4 * P, len=P) == P
    assert u.writeprotect(r.addr, 2 * P, uapi.WriteprotectMode.WP) is None
    assert u.writeprotect(r.addr, len=2 * P, mode=0) is None
    assert b.read(r.addr, 2) == b"\5\5" and b.read(r.addr + 3 * P, 1) == b"\0"

    def err(fn):
        with pytest.raises(UffdError) as ei:
            fn()
        e = ei.value
        return type(e).__name__, e.errno, e.done, str(e)
    # a page that exists after 2 of 3: EAGAIN, and the partial progress is the result field
    assert u.copy(r.addr + 7 * P, src.addr, P) == P
    assert err(lambda: u.copy(r.addr + 5 * P, src.addr, 3 * P)) == \
        ("RetryLater", errno.EAGAIN, 2 * P, str(uffd_error(errno.EAGAIN, "UFFDIO_COPY", r.addr + 5 * P, 3 * P, 2 * P)))
    assert err(lambda: u.zeropage(r.addr, P))[1:3] == (errno.EEXIST, -errno.EEXIST)
    assert err(lambda: u.copy(r.addr + 1, src.addr, P))[1:3] == (errno.EINVAL, None)   # not written
    assert err(lambda: u.writeprotect(r.addr, P, 3))[1:3] == (errno.EINVAL, None)
    with pytest.raises(TypeError):
        u.copy(r.addr, src.addr)
    with pytest.raises(TypeError):
        u.zeropage(r.addr, P, bogus=1)
    with pytest.raises(OverflowError):
        u.copy(-1, src.addr, P)
    u.close()
    for fn, name in ((lambda: u.copy(r.addr, src.addr, P), "UFFDIO_COPY"), (lambda: u.zeropage(r.addr, P), "UFFDIO_ZEROPAGE"),
                     (lambda: u.writeprotect(r.addr, P), "UFFDIO_WRITEPROTECT"), (lambda: u.read_msgs(), "read")):
        cls, eno, done, text = err(fn)
        assert eno == errno.EBADF and done is None and text.startswith(name) and text.endswith("uffd is closed"), text


def test_msg_fast_paths_decode_like_decode_msg(kernel_backend, uffd_path):
    """wait_msgs (one message: decoded inline; several: the batch decoder) and read_msgs give, for every
    event kind, exactly what the slow path decode_msg() makes of the same 32 bytes."""
    raws = _raw_msgs()
    pu, wfd = _pipe_uffd(kernel_backend)
    try:
        for raw in raws:                           # one at a time: the inline case
            os.write(wfd, raw)
            assert _same(pu.wait_msgs(1.0), [raw]), raw.hex()
        os.write(wfd, b"".join(raws))              # all at once: the batch decoder
        assert _same(pu.wait_msgs(1.0), raws)
        os.write(wfd, b"".join(raws))
        assert _same(pu.read_msgs(max=2) + pu.read_msgs(max=100), raws)   # a smaller and a larger buffer
        assert pu.read_msgs() == [] and pu.wait_msgs(0) == []
    finally:
        os.close(wfd)
        pu.close()


def test_msg_buffers_are_not_shared_between_threads(kernel_backend, uffd_path):
    """Concurrent readers of one uffd each decode their own read: every message comes out exactly once."""
    import struct
    pu, wfd = _pipe_uffd(kernel_backend)
    os.set_blocking(wfd, True)   # the feeder waits for the readers (writes of 3200 bytes stay atomic)
    n = 3000
    raws = [_raw_msg(uapi.Event.PAGEFAULT, struct.pack("<QQI", 0, (i + 1) * P, i)) for i in range(n)]
    seen: list[list[int]] = [[] for _ in range(4)]

    def reader(k):
        idle = 0
        while idle < 50:
            ms = pu.read_msgs(max=1 + k)
            idle = 0 if ms else idle + 1
            seen[k].extend(m.address for m in ms)
            if not ms:
                time.sleep(0.001)

    try:
        ts = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for i in range(0, n, 100):                 # fed while the readers run
            os.write(wfd, b"".join(raws[i:i + 100]))
        for t in ts:
            t.join(30)
        assert not any(t.is_alive() for t in ts)
        got = sorted(a for s in seen for a in s)
        assert got == [(i + 1) * P for i in range(n)]
    finally:
        os.close(wfd)
        pu.close()


def test_native_handler_on_a_blocking_uffd(kernel_backend):
    """A uffd without O_NONBLOCK: poll(2) on it says EPOLLERR (userfaultfd_poll()), so the handler serves it
    in read mode (blocking read(2), cancelled by stop) rather than exiting at its first poll."""
    b = kernel_backend
    r = b.mmap(32 * P, "anon")
    u = b.userfaultfd(flags=uapi.O_CLOEXEC)
    u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
    h = b.fault_handler(u, HandlerPolicy(missing="fill", fill=5))
    acc = b.thread("t").access(r.addr, r.len, False, stride=P)
    assert acc.wait(10)
    h.stop()
    assert h.stop_result == 0 and not h.stuck
    assert h.stats()["resolved"] == 32 and b.read(r.addr + 31 * P, 1) == b"\x05"


def test_native_handler_stops_while_messages_keep_coming(kernel_backend, monkeypatch):
    """The read-first loop checks for stop before every read.  A feeder keeps a pipe full of PAGEFAULT
    messages (the handler, slowed to 200 us a read, never finds it empty, so it never polls); stop() still
    ends the thread: a handler that saw stop only in poll(2) would have to be unstuck (or left behind)."""
    import struct
    monkeypatch.setenv("UFFDCTL_TEST_HANDLER_DELAY_US", "200")
    pu, wfd = _pipe_uffd(kernel_backend)
    os.set_blocking(wfd, True)
    chunk = b"".join(_raw_msg(uapi.Event.PAGEFAULT, struct.pack("<QQI", 0, (i + 1) * P, 1)) for i in range(128))
    fed = [0]

    def feeder():
        try:
            while True:
                os.write(wfd, chunk)
                fed[0] += 128
        except OSError:       # EPIPE: the read end is closed (below)
            pass

    h = NativeHandler(pu, HandlerPolicy(missing="queue"))
    t = threading.Thread(target=feeder, daemon=True)
    t.start()
    h.start()
    deadline = time.monotonic() + 10
    while h.stats()["msgs"] < 500 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert h.stats()["msgs"] >= 500
    h.stop(release=False)
    assert h.stop_result == 0 and not h.stuck, "stop() had to give up on a handler busy reading"
    # the policy only queues: a resolved message means stop() had to unstick the thread (it reads what is
    # unread from the caller's thread until the handler finds the pipe empty and polls)
    assert h.stats()["resolved"] == 0, "the handler did not see stop while reading"
    pu.close()
    t.join(10)
    os.close(wfd)
    assert not t.is_alive() and h.stats()["msgs"] < fed[0]


FIXED_OVER_STACK = """
from uffdctl.types import HandlerPolicy
from uffdctl.errors import UsageError
def maps():
    with open("/proc/self/maps") as f:
        return {tuple(int(x, 16) for x in l.split()[0].split("-")) for l in f}
src = b.mmap(2 << 20, "anon", name="src")      # the mapping an mremap would move (not registered)
before = maps()
h = b.fault_handler(u, HandlerPolicy(missing="zeropage"))
lo, hi = h.stack()
# the stack is a mapping the caller never made, and it appeared when the handler started
assert any(a < hi and lo < e for a, e in maps() - before), (hex(lo), hex(hi))
target = (hi - (2 << 20)) & ~4095          # 2 MiB ending at the top of the stack: the frames in use
"""


def test_fixed_target_never_takes_the_handler_stack(kernel_backend):
    """The hugetlb mremap side by side's SIGSEGV in handler stop: the test had picked a free hole for
    MREMAP_FIXED, the fault handler's thread stack was then mmapped into that hole, and the mremap replaced
    the stack; the thread returned from poll() into the moved region.  The backend now refuses a FIXED
    target over one of its own threads' stacks, with a one-line reason, and everything stops cleanly --
    while the same mremap done raw still kills the process (the failure it prevents)."""
    p = run_py(FIXED_OVER_STACK + """
for call in (lambda: b.mremap(src.addr, src.len, src.len, 3, target),
             lambda: b.mmap(4096, "anon", addr=lo, fixed=True)):
    try:
        call()
    except UsageError as e:
        assert "would replace" in str(e) and "\\n" not in str(e), e
        print("refused")
w = b.thread("w").stack()
try:
    b.mremap(src.addr, src.len, src.len, 3, w[0])
except UsageError as e:
    assert "access thread w" in str(e), e
    print("refused")
h.stop()
b.close()
print("stopped")
""", timeout=60)
    assert p is not None, "hung"
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["refused"] * 3 + ["stopped"], (p.stdout, p.stderr)
    raw = run_py(FIXED_OVER_STACK + """
print("moving", flush=True)
r = lib.uffdctl_mremap(src.addr, src.len, src.len, 3, target)   # bypassing the check, as before the fix
assert r == target, r
h.stop()
print("survived")
""", timeout=60)
    assert raw is not None, "hung"
    assert raw.stdout.split() == ["moving"] and raw.returncode == -11, (raw.returncode, raw.stdout, raw.stderr)
