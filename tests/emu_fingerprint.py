#!/usr/bin/env python3
"""A fingerprint of the emulator's observable behaviour, to prove that a speed-up changed nothing.

Runs the differential's generated sequences (tests/test_differential.py, seed 1 by default) on the emulator
alone, on several profiles and both CONFIG_MEM_SOFT_DIRTY settings, plus fault-handler and ranged-ioctl
scenarios, and hashes what a user can observe after every op: the op's result or errno and done field, every
thread's access state and fault counts, the messages, the raw pagemap of every mapping (PFNs included),
PAGEMAP_SCAN results, smaps Private_Dirty, and the TLB flush counters.  Nothing of the model's internal
representation enters the hash.

    python tests/emu_fingerprint.py [--sequences N] [--seed S] [--json]
    PYTHONPATH=/path/to/other/checkout python tests/emu_fingerprint.py   # the same hashes for another tree

Two trees behave the same on these scenarios exactly when every line printed is the same.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_differential as D  # noqa: E402  (the generator and the per-op driver)
from uffdctl import uapi  # noqa: E402
from uffdctl.backend import HandlerPolicy, MemType  # noqa: E402
from uffdctl.errors import UffdError  # noqa: E402

PS = uapi.PAGE_SIZE
ALL_MEMTYPES = [m.value for m in (MemType.ANON, MemType.SHMEM, MemType.SHMEM_PRIVATE, MemType.HUGETLB,
                                  MemType.HUGETLB_PRIVATE)]
# (profile, soft_dirty): the host model first, then the versions whose switches fork the hot paths
CONFIGS = [("6.18", False), ("6.18", True), ("6.12", False), ("6.1", True), ("5.19", True), ("7.3", False),
           ("rfc-hints", True), ("rfc-hints-fixed", True)]


def _emu(profile: str, soft_dirty: bool):
    from uffdctl.emu import EmuBackend
    return EmuBackend(profile=profile, soft_dirty=soft_dirty)


def _observe(side, h) -> None:
    b = side.b
    for name, reg in [(f"r{i}", r) for i, r in enumerate(side.regions) if r is not None] + \
            [(f"a{i}", a) for i, a in sorted(side.aliases.items()) if a is not None]:
        h.update(repr((name, b.pagemap(reg.addr, reg.len // PS))).encode())
        try:
            h.update(repr(b.smaps_private_dirty(reg.addr)).encode())
        except UffdError as e:
            h.update(repr(("smaps", e.errno)).encode())
    for tn in D.THREADS:
        if tn in side.acc:
            acc = side.acc[tn][0]
            h.update(repr((tn, D._acc_view(side, acc), acc.blocks, side.threads[tn].faults())).encode())
    h.update(repr((b.tlb_flush_count(), b.mm.tlb.flushed_pages)).encode())


def sequence_digest(seq: dict, profile: str, soft_dirty: bool) -> str:
    eb = _emu(profile, soft_dirty)
    h = hashlib.sha256()
    try:
        seq = {**seq, "features": seq["features"] & eb.profile.features}
        es = D.Side(eb, seq, eb.mm.zero_page.pfn)
        try:
            for op in seq["ops"]:
                if not D.applicable(es, op):
                    h.update(b"skip")
                    continue
                r = D.apply(es, op)
                if op[0] == "read_msgs":
                    r = D._msgs_view(es, r[1])
                h.update(repr((op, r)).encode())
                _observe(es, h)
        finally:
            es.u.close()
        _observe(es, h)
    finally:
        eb.close()
    return h.hexdigest()


def differential(profile: str, soft_dirty: bool, seed: int, n: int) -> str:
    h = hashlib.sha256()
    for i in range(n):
        seq = D.gen_sequence(random.Random(seed + i), ALL_MEMTYPES)
        h.update(sequence_digest(seq, profile, soft_dirty).encode())
    return h.hexdigest()


def handler_scenarios(profile: str, soft_dirty: bool) -> str:
    """fault_handler round trips (MISSING copy/zeropage, WP unprotect, MINOR continue) and ranged ioctls over
    runs that are partly populated, with the handler's log and stats in the hash."""
    h = hashlib.sha256()
    b = _emu(profile, soft_dirty)
    try:
        for mt in ("anon", "shmem", "shmem-private"):
            n = 96
            r = b.mmap(n * PS, mt)
            src = b.mmap(n * PS, MemType.ANON)
            for p in range(0, n, 3):
                b.write(src.addr + p * PS, bytes([p + 1]) * 16)
            u = b.userfaultfd()
            feats = uapi.Feature.THREAD_ID & b.profile.features
            u.api(int(feats))
            modes = uapi.RegisterMode.MISSING | uapi.RegisterMode.WP
            u.register(r.addr, r.len, int(modes))
            res = []
            for call in (lambda: u.copy(r.addr + 8 * PS, src.addr, 24 * PS),
                         lambda: u.copy(r.addr + 20 * PS, src.addr, 8 * PS),          # EEXIST part-way
                         lambda: u.zeropage(r.addr + 40 * PS, 16 * PS),
                         lambda: u.writeprotect(r.addr, 64 * PS, int(uapi.WriteprotectMode.WP)),
                         lambda: u.writeprotect(r.addr + 4 * PS, 20 * PS, 0),
                         lambda: u.copy(r.addr + 70 * PS, src.addr, 4 * PS, int(uapi.CopyMode.WP))):
                try:
                    res.append(call())
                except UffdError as e:
                    res.append(("err", e.errno, e.done))
            h.update(repr((mt, res, b.pagemap(r.addr, n), b.tlb_flush_count())).encode())
            pol = HandlerPolicy(missing="copy", wp="unprotect", src=src.addr, base=r.addr, page_size=PS)
            hd = b.fault_handler(u, pol)
            t = b.thread("w" + mt)
            acc = t.access(r.addr, r.len, True, fill=7, stride=PS)
            acc.wait(1)
            rd = b.thread("r" + mt).access(r.addr, r.len, False, want_data=True)
            rd.wait(1)
            ev = [(e.action, e.msg.flags, e.msg.address - r.addr, e.err, e.result) for e in hd.events()]
            h.update(repr((ev, hd.stats(), acc.result(), t.faults(), rd.result().data[::509],
                           b.pagemap(r.addr, n), b.tlb_flush_count())).encode())
            hd.stop()
            u.close()
            h.update(repr(b.pagemap(r.addr, n)).encode())
            b.munmap(r.addr, r.len)
            b.munmap(src.addr, src.len)
    finally:
        b.close()
    return h.hexdigest()


def scan_scenarios(profile: str, soft_dirty: bool) -> str:
    """PAGEMAP_SCAN over sparse regions (pages a few PMDs apart, holes with and without page tables), with
    every flag / mask / budget / vector-length combination the walk forks on, then the pagemap it left."""
    h = hashlib.sha256()
    C = uapi.PageCategory
    masks = [(0, 0, 0, int(C.PRESENT)), (0, int(C.WRITTEN), 0, 0x1FF), (int(C.WRITTEN), int(C.WRITTEN), 0, 0x1FF),
             (0, 0, int(C.PRESENT | C.PFNZERO), int(C.PRESENT | C.WRITTEN | C.PFNZERO | C.FILE)),
             (0, int(C.WPALLOWED), 0, 0x1FF)]
    for mt in ("anon", "shmem", "shmem-private"):
        for feats, mode in ((0, 0), (0, int(R_MISSING_WP)), (int(uapi.Feature.WP_ASYNC), int(R_MISSING_WP)),
                            (int(uapi.Feature.WP_UNPOPULATED), int(R_MISSING_WP))):
            for flags in (0, int(uapi.PM_SCAN_WP_MATCHING), int(uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC)):
                for vec_len, max_pages in ((512, 0), (3, 0), (0, 0), (512, 5), (1, 1)):
                    for inv, mask, anyof, ret in masks:
                        b = _emu(profile, soft_dirty)
                        try:
                            feats_ok = feats & b.profile.features
                            n = 8 << 9                        # 8 PMDs of 4 KiB pages
                            r = b.mmap(n * PS, mt)
                            src = b.mmap(PS, MemType.ANON)
                            b.write(src.addr, b"q")
                            u = b.userfaultfd()
                            u.api(feats_ok)
                            pages = (0, 3, 700, 1500, 1501, 3000, 4095)
                            for i, p in enumerate(pages):       # written, read (zero page / cache), later
                                if i % 3 == 0:
                                    b.write(r.addr + p * PS, b"w")
                                elif i % 3 == 1:
                                    b.read(r.addr + p * PS, 1)
                            if mode:
                                u.register(r.addr, r.len, mode)
                            for p in pages[2::3]:
                                if mode:
                                    u.copy(r.addr + p * PS, src.addr, PS)
                                else:
                                    b.write(r.addr + p * PS, b"l")
                            if mode:
                                u.writeprotect(r.addr + 1500 * PS, PS, int(uapi.WriteprotectMode.WP))
                            try:
                                res = b.pagemap_scan(r.addr + PS, r.end, flags=flags, category_inverted=inv,
                                                     category_mask=mask, category_anyof_mask=anyof,
                                                     return_mask=ret, max_pages=max_pages, vec_len=vec_len)
                                out = ([(s - r.addr, e - r.addr, c) for s, e, c in res.regions],
                                       res.walk_end - r.addr)
                            except UffdError as e:
                                out = ("err", e.errno)
                            h.update(repr((mt, feats, mode, flags, vec_len, max_pages, inv, mask, anyof, ret, out,
                                           b.pagemap(r.addr, n), b.tlb_flush_count())).encode())
                            u.close()
                        finally:
                            b.close()
    return h.hexdigest()


R_MISSING_WP = uapi.RegisterMode.MISSING | uapi.RegisterMode.WP


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=2000, help="differential sequences per configuration")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="how many of the configurations to run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out = {}
    t0 = time.perf_counter()
    import uffdctl
    if not a.json:
        print(f"emulator of {os.path.dirname(os.path.abspath(uffdctl.__file__))}", flush=True)
    for profile, sd in CONFIGS[:a.configs]:
        key = f"{profile} soft_dirty={'on' if sd else 'off'}"
        out[f"differential {key}"] = differential(profile, sd, a.seed, a.sequences)
        out[f"handler {key}"] = handler_scenarios(profile, sd)
        out[f"scan {key}"] = scan_scenarios(profile, sd)
        if not a.json:
            print(f"{out[f'differential {key}'][:16]}  {out[f'handler {key}'][:16]}  {out[f'scan {key}'][:16]}  "
                  f"{key}", flush=True)
    total = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    if a.json:
        json.dump({"seed": a.seed, "sequences": a.sequences, "parts": out, "total": total}, sys.stdout, indent=2)
        print()
    else:
        print(f"{total[:32]}  total ({a.sequences} sequences x {a.configs} configurations, seed {a.seed}, "
              f"{time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
