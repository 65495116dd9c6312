#!/usr/bin/env python3
"""Emulator throughput: page-ops per second for ranged COPY / ZEROPAGE / WRITEPROTECT / faults, and the cost of
a 1 TiB sparse region (memory and time must follow what is touched, not the range).

    python scripts/bench_emu.py [--pages N] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc

from uffdctl import pagemap, uapi
from uffdctl.backend import MemType
from uffdctl.emu import EmuBackend

PS = uapi.PAGE_SIZE
TiB = 1 << 40


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ranged(pages: int) -> dict:
    b = EmuBackend(profile="6.18", soft_dirty=True)
    r = b.mmap(pages * PS, MemType.ANON)
    src = b.mmap(pages * PS, MemType.ANON)
    b.write(src.addr, b"x" * PS)
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, r.len, uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    out = {}
    out["copy"] = pages / timed(lambda: u.copy(r.addr, src.addr, r.len))
    out["writeprotect"] = pages / timed(lambda: u.writeprotect(r.addr, r.len, uapi.WriteprotectMode.WP))
    out["unprotect"] = pages / timed(lambda: u.writeprotect(r.addr, r.len, 0))
    z = b.mmap(pages * PS, MemType.SHMEM)
    u.register(z.addr, z.len, uapi.RegisterMode.MISSING)
    out["zeropage_shmem"] = pages / timed(lambda: u.zeropage(z.addr, z.len))
    f = b.mmap(pages * PS, MemType.ANON)
    t = b.thread("t")
    out["write_faults"] = pages / timed(lambda: t.access(f.addr, f.len, True, fill=1, stride=PS))
    out["tlb_flushes"] = b.tlb_flushes
    return out


def sparse_tib() -> dict:
    tracemalloc.start()
    b = EmuBackend()
    t0 = time.perf_counter()
    r = b.mmap(TiB, MemType.ANON)
    src = b.mmap(PS, MemType.ANON)
    b.write(src.addr, b"s")
    u = b.userfaultfd()
    u.api(0)
    u.register(r.addr, TiB, uapi.RegisterMode.MISSING | uapi.RegisterMode.WP)
    touched = 1024
    step = TiB // touched
    for i in range(touched):
        u.copy(r.addr + i * step, src.addr, PS)
    t_setup = time.perf_counter() - t0
    t_wp = timed(lambda: u.writeprotect(r.addr, TiB, uapi.WriteprotectMode.WP))
    t_scan = timed(lambda: pagemap.scan_all(b, r.addr, r.end, return_mask=uapi.PageCategory.PRESENT))
    t_zap = timed(lambda: b.madvise(r.addr, TiB, uapi.MADV_DONTNEED))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"range": TiB, "pages_touched": touched, "setup_s": t_setup, "writeprotect_1TiB_s": t_wp,
            "pagemap_scan_1TiB_s": t_scan, "dontneed_1TiB_s": t_zap, "peak_bytes": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=16384, help="pages per ranged op (default 16384 = 64 MiB)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = {"ranged": ranged(a.pages), "sparse_1TiB": sparse_tib()}
    if a.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    print(f"emulator page-ops per second ({a.pages} pages per ioctl):")
    for k, v in res["ranged"].items():
        print(f"  {k:16s} {v:12,.0f}" if k != "tlb_flushes" else f"  {k:16s} {v:12d}")
    s = res["sparse_1TiB"]
    print(f"1 TiB sparse anon region, {s['pages_touched']} pages touched:")
    print(f"  register + {s['pages_touched']} COPYs   {s['setup_s'] * 1e3:8.1f} ms")
    print(f"  WRITEPROTECT 1 TiB        {s['writeprotect_1TiB_s'] * 1e3:8.1f} ms")
    print(f"  PAGEMAP_SCAN 1 TiB        {s['pagemap_scan_1TiB_s'] * 1e3:8.1f} ms")
    print(f"  MADV_DONTNEED 1 TiB       {s['dontneed_1TiB_s'] * 1e3:8.1f} ms")
    print(f"  peak Python memory        {s['peak_bytes'] / 1024:8.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
