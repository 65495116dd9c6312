#!/usr/bin/env python3
"""uffdctl's ioctl paths against a C reference, run side by side (make bench).

For each workload the C reference (scripts/bench_ref.c, compiled here against the
project's own uapi header) and uffdctl's paths run interleaved, best of REPEAT, and
the table prints ns per ioctl (per page for batched COPY) and the ratio to C:

  wake      UFFDIO_WAKE on a registered page: pure per-call cost (the ioctl does nothing)
              uffdctl Uffd.wake()          the public Python path (struct fill, call, checks)
              API-mode wrapper             lib.uffdctl_ioctl(fd, req, struct) reused, from Python
              ABI-mode variadic ioctl      ffi.dlopen(libc).ioctl, the path the project does not use
  copy      one UFFDIO_COPY per page (4096 pages)    Uffd.copy() per page | C loop in uffdctl._uffd
  copy1     one batched UFFDIO_COPY of 4096 pages    Uffd.copy()
  wp        UFFDIO_WRITEPROTECT on+off per page      Uffd.writeprotect() | C loop in uffdctl._uffd
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
N_WAKE = 200_000
PAGES = 4096
ROUNDS = 5


def build_ref(tmp: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench: no C compiler for the reference")
    exe = os.path.join(tmp, "bench_ref")
    subprocess.run([cc, "-O2", "-I", os.path.join(ROOT, "cdefs"), "-o", exe, os.path.join(HERE, "bench_ref.c")],
                   check=True)
    return exe


def c_ref(exe: str, *args) -> float:
    return float(subprocess.run([exe, *map(str, args)], check=True, capture_output=True, text=True).stdout)


def main() -> int:
    from uffdctl import uapi
    from uffdctl.kernel import KernelBackend

    b = KernelBackend()
    ffi, lib = b._ffi, b._lib
    P = uapi.PAGE_SIZE
    dst = b.mmap(PAGES * P, "anon")
    src = b.mmap(PAGES * P, "anon")
    b.write(src.addr, b"\1" * src.len)
    u = b.userfaultfd()
    u.api(0)
    u.register(dst.addr, dst.len, uapi.RegisterMode.MISSING)
    wpr = b.mmap(PAGES * P, "anon")  # WP-only: its pages are written by plain stores before each round
    u.register(wpr.addr, wpr.len, uapi.RegisterMode.WP)

    def per_call(fn, n):
        t0 = time.perf_counter_ns()
        fn(n)
        return (time.perf_counter_ns() - t0) / n

    def py_wake(n):
        a, w = dst.addr, u.wake
        for _ in range(n):
            w(a, P)

    rng = ffi.new("struct uffdio_range *", {"start": dst.addr, "len": P})
    req = lib.UFFDIO_WAKE

    def api_wake(n):
        f, fd = lib.uffdctl_ioctl, u.fd
        for _ in range(n):
            f(fd, req, rng)

    from cffi import FFI
    abi = FFI()
    abi.cdef("int ioctl(int, unsigned long, ...);")
    libc = abi.dlopen(None)
    abi_arg = abi.cast("void *", int(ffi.cast("uintptr_t", rng)))
    abi_fd, abi_req = abi.cast("int", u.fd), abi.cast("unsigned long", req)

    def abi_wake(n):
        f = libc.ioctl
        for _ in range(n):
            f(abi_fd, abi_req, abi_arg)

    def rounds(body, region=dst):
        best = []
        for _ in range(ROUNDS):
            if region is wpr:
                b.write(wpr.addr, b"\2" * wpr.len)
            t0 = time.perf_counter_ns()
            nops = body()
            best.append((time.perf_counter_ns() - t0) / nops)
            b.madvise(region.addr, region.len, uapi.MADV_DONTNEED)
        return min(best)

    def py_copy():
        c, d, s = u.copy, dst.addr, src.addr
        for i in range(PAGES):
            c(d + i * P, s + i * P, P)
        return PAGES

    def loop_copy():
        assert lib.uffdctl_loop_copy(u.fd, dst.addr, src.addr, dst.len, P, 0) == PAGES
        return PAGES

    def py_copy1():
        u.copy(dst.addr, src.addr, dst.len)
        return PAGES

    def py_wp():
        w, d = u.writeprotect, wpr.addr
        for mode in (1, 0):
            for i in range(PAGES):
                w(d + i * P, P, mode)
        return 2 * PAGES

    def loop_wp():
        for mode in (1, 0):
            assert lib.uffdctl_loop_writeprotect(u.fd, wpr.addr, wpr.len, P, mode) == PAGES
        return 2 * PAGES

    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_ref(tmp)
        for _ in range(REPEAT):  # interleaved: C and Python see the same machine state
            rows.setdefault("wake: C reference", []).append(c_ref(exe, "wake", N_WAKE))
            rows.setdefault("wake: uffdctl Uffd.wake()", []).append(per_call(py_wake, N_WAKE // 4))
            rows.setdefault("wake: API-mode wrapper (uffdctl_ioctl)", []).append(per_call(api_wake, N_WAKE))
            rows.setdefault("wake: ABI-mode variadic ioctl", []).append(per_call(abi_wake, N_WAKE))
            rows.setdefault("copy/page: C reference", []).append(c_ref(exe, "copy", PAGES, ROUNDS))
            rows.setdefault("copy/page: uffdctl Uffd.copy()", []).append(rounds(py_copy))
            rows.setdefault("copy/page: C loop in uffdctl._uffd", []).append(rounds(loop_copy))
            rows.setdefault("copy batched, per page: C reference", []).append(c_ref(exe, "copy1", PAGES, ROUNDS))
            rows.setdefault("copy batched, per page: uffdctl Uffd.copy()", []).append(rounds(py_copy1))
            rows.setdefault("wp/page: C reference", []).append(c_ref(exe, "wp", PAGES, ROUNDS))
            rows.setdefault("wp/page: uffdctl Uffd.writeprotect()", []).append(rounds(py_wp, wpr))
            rows.setdefault("wp/page: C loop in uffdctl._uffd", []).append(rounds(loop_wp, wpr))
    b.close()

    print(f"{'workload':48} {'ns/op':>9} {'vs C':>7} {'over C (ns)':>12}")
    ref = None
    for name, vals in rows.items():
        v = min(vals)
        if name.endswith("C reference"):
            ref = v
        print(f"{name:48} {v:9.1f} {v / ref:6.2f}x {v - ref:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
