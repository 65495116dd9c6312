"""Measure, on a backend, the behaviours the emulator's kernel-version profiles encode.

One probe per profile switch (or group of switches), each a short sequence of uffdctl calls whose
result the switch decides.  Run on a real kernel the output is the measurement a profile is derived
from; run on the emulator it is what the profile predicts.  tests/test_profiles.py compares the two
for every kernel recorded under tests/data/kernels/:

    scripts/vmtest --kernel 6.12 run -- python tests/profile_probe.py         # the guest kernel
    python tests/profile_probe.py --profile 6.12 --soft-dirty on              # its emulator twin

Prints one JSON object: {probe name: observation}.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from uffdctl import uapi
from uffdctl.backend import MemType
from uffdctl.registry import open_backend
from uffdctl.errors import UffdError

R = uapi.RegisterMode
F = uapi.Feature
PS = uapi.PAGE_SIZE
WAIT = 10.0


def _err(fn):
    try:
        r = fn()
        return ["ok", r if isinstance(r, int) else None]
    except UffdError as e:
        return ["err", errno.errorcode.get(e.errno, e.errno)]


def _flags(raw: int) -> str:
    """The pagemap bits above the PFN field, and the swap type/offset of a non-present entry."""
    keep = raw & ~uapi.PM_PFRAME_MASK
    if raw & uapi.PM_PRESENT:
        return hex(keep)
    return hex(raw)


def _write(b, t, addr):
    acc = t.access(addr, 1, True, fill=0x5a, stride=PS)
    if not acc.wait(WAIT):
        raise RuntimeError(f"write to {addr:#x} did not finish in {WAIT} s")
    return acc.result()


def probe_features(b, out):
    with b.userfaultfd() as u:
        out["features"] = hex(u.api(0).features)
    for mt in (MemType.ANON, MemType.SHMEM):
        r = b.mmap(4 * PS, mt)
        with b.userfaultfd() as u:
            u.api(0)
            out[f"register_ioctls.{mt}.missing|wp"] = hex(u.register(r.addr, r.len, R.MISSING | R.WP))
        b.munmap(r.addr, r.len)


def probe_per_vma_lock(b, out):
    """A MISSING round trip: the retry after the wake is minor (per-VMA locks, 6.4+) or major (FAULT_FLAG_TRIED)."""
    r = b.mmap(2 * PS, MemType.ANON)
    s = b.mmap(PS, MemType.ANON)
    b.write(s.addr, b"s" * 8)
    with b.userfaultfd() as u:
        u.api(0)
        u.register(r.addr, r.len, R.MISSING)
        t = b.thread("vmalock")
        _write(b, t, s.addr)                       # the thread's own first faults, outside the count
        acc = t.access(r.addr, 1, True, fill=1, stride=PS)
        msgs = []
        import time
        deadline = time.monotonic() + WAIT
        while not msgs and time.monotonic() < deadline:
            msgs = u.read_msgs()
            if not msgs:
                time.sleep(0.005)
        u.copy(r.addr, s.addr, PS, 0)
        if not acc.wait(WAIT):
            raise RuntimeError("MISSING fault not released by COPY")
        res = acc.result()
        out["missing_round_trip.minflt,majflt"] = [res.minflt, res.majflt]
    b.munmap(r.addr, r.len)
    b.munmap(s.addr, s.len)


def probe_wp_multi_vma(b, out):
    """UFFDIO_WRITEPROTECT over [a WP-registered VMA, an unregistered one]."""
    r = b.mmap(4 * PS, MemType.ANON)
    for p in range(4):
        b.write(r.addr + p * PS, b"w")
    with b.userfaultfd() as u:
        u.api(0)
        u.register(r.addr, 2 * PS, R.WP)
        out["writeprotect_two_vmas"] = _err(lambda: u.writeprotect(r.addr, 4 * PS, 1))
        out["writeprotect_two_vmas.first_vma_uffd_wp"] = bool(b.pagemap(r.addr, 1)[0] & uapi.PM_UFFD_WP)
    b.munmap(r.addr, r.len)


def probe_markers(b, out, feats):
    """pagemap of a uffd-wp marker (swap type of PTE markers) and of a poison marker."""
    r = b.mmap(2 * PS, MemType.SHMEM)
    with b.userfaultfd() as u:
        u.api(0)
        u.register(r.addr, r.len, R.WP)
        u.writeprotect(r.addr, PS, 1)
        out["pagemap.shmem_uffd_wp_marker"] = _flags(b.pagemap(r.addr, 1)[0])
    b.munmap(r.addr, r.len)
    if feats & F.POISON:
        r = b.mmap(2 * PS, MemType.ANON)
        with b.userfaultfd() as u:
            u.api(int(F.POISON))
            u.register(r.addr, r.len, R.MISSING)
            out["poison"] = _err(lambda: u.poison(r.addr, PS, 0))
            out["pagemap.poison_marker"] = _flags(b.pagemap(r.addr, 1)[0])
        b.munmap(r.addr, r.len)


def probe_guard(b, out):
    r = b.mmap(2 * PS, MemType.ANON)
    res = _err(lambda: b.madvise(r.addr, PS, uapi.MADV_GUARD_INSTALL))
    out["madvise_guard_install"] = res
    if res[0] == "ok":
        out["pagemap.guard_marker"] = _flags(b.pagemap(r.addr, 1)[0])
    b.munmap(r.addr, r.len)


def probe_pagemap_scan(b, out):
    """PAGEMAP_SCAN categories of a written and an untouched page, unregistered and in a uffd-wp VMA."""
    mask = 0xFF   # WPALLOWED..SOFT_DIRTY (PAGE_IS_GUARD is 6.15+)
    for reg in (False, True):
        r = b.mmap(4 * PS, MemType.ANON)
        b.write(r.addr, b"z")
        u = b.userfaultfd()
        try:
            u.api(0)
            if reg:
                u.register(r.addr, r.len, R.WP)
            try:
                res = b.pagemap_scan(r.addr, r.end, category_mask=0, return_mask=mask)
                got = [[s - r.addr, e - r.addr, hex(c)] for s, e, c in res.regions]
            except UffdError as e:
                got = ["err", errno.errorcode.get(e.errno, e.errno)]
            out[f"pagemap_scan.{'uffd_wp_vma' if reg else 'unregistered'}"] = got
        finally:
            u.close()
            b.munmap(r.addr, r.len)


def probe_write_upgrades(b, out):
    """Faults of a write after (a) mprotect R -> RW of a clean exclusive anon page (MADV_FREE) and of a
    dirty shmem page, (b) UFFDIO_WRITEPROTECT on -> off of a written page."""
    for mt in (MemType.ANON, MemType.SHMEM):
        r = b.mmap(2 * PS, mt)
        t = b.thread(f"mprotect-{mt}")
        _write(b, t, r.addr)
        if mt is MemType.ANON:
            b.madvise(r.addr, PS, uapi.MADV_FREE)
        b.mprotect(r.addr, r.len, uapi.PROT_READ)
        b.mprotect(r.addr, r.len, uapi.PROT_READ | uapi.PROT_WRITE)
        _write(b, t, r.addr + PS)                  # warm the thread, outside the count
        out[f"mprotect_rw.{mt}.write_minflt"] = _write(b, t, r.addr).minflt
        b.munmap(r.addr, r.len)
    for mt in (MemType.ANON, MemType.SHMEM):
        r = b.mmap(2 * PS, mt)
        with b.userfaultfd() as u:
            u.api(0)
            u.register(r.addr, r.len, R.WP)
            t = b.thread(f"unwp-{mt}")
            _write(b, t, r.addr)
            u.writeprotect(r.addr, PS, 1)
            u.writeprotect(r.addr, PS, 0)
            _write(b, t, r.addr + PS)
            out[f"writeprotect_on_off.{mt}.write_minflt"] = _write(b, t, r.addr).minflt
        b.munmap(r.addr, r.len)


def probe_continue_wp(b, out):
    r = b.mmap(2 * PS, MemType.SHMEM)
    a = b.alias(r)
    b.write(a.addr, b"c")
    with b.userfaultfd() as u:
        u.api(0)
        u.register(r.addr, r.len, R.MINOR | R.WP)
        out["continue_mode_wp"] = _err(lambda: u.continue_(r.addr, PS, int(uapi.ContinueMode.WP)))
        if out["continue_mode_wp"][0] == "ok":
            out["continue_mode_wp.pagemap"] = _flags(b.pagemap(r.addr, 1)[0])
    b.munmap(a.addr, a.len)
    b.munmap(r.addr, r.len)


def probe_move(b, out, feats):
    """UFFDIO_MOVE of a clean source page (MADV_FREE): is the destination dirty (smaps Private_Dirty)?"""
    if not feats & F.MOVE:
        return
    d = b.mmap(2 * PS, MemType.ANON)
    s = b.mmap(2 * PS, MemType.ANON)
    b.write(s.addr, b"m")
    b.madvise(s.addr, PS, uapi.MADV_FREE)
    with b.userfaultfd() as u:
        u.api(int(F.MOVE))
        u.register(d.addr, d.len, R.MISSING)
        out["move"] = _err(lambda: u.move(d.addr, s.addr, PS, 0))
        out["move.clean_src.dst_private_dirty"] = b.smaps_private_dirty(d.addr)
        out["move.pagemap"] = _flags(b.pagemap(d.addr, 1)[0])
    b.munmap(d.addr, d.len)
    b.munmap(s.addr, s.len)


def probe_mremap(b, out):
    """mremap(MAYMOVE|FIXED) of a WP-registered range without EVENT_REMAP: are the moved PTEs' uffd-wp bits
    and the uffd-wp markers kept (stale, in a VMA that is no longer registered) or cleared (0cef0bb836e3)?"""
    for mt in (MemType.ANON, MemType.SHMEM):
        probe = b.mmap(16 * PS, MemType.ANON)
        b.munmap(probe.addr, probe.len)
        r = b.mmap(4 * PS, mt)
        new = probe.addr + 8 * PS                  # a free hole, away from r
        with b.userfaultfd() as u:
            u.api(0)
            u.register(r.addr, r.len, R.WP)
            b.write(r.addr, b"a")
            b.write(r.addr + PS, b"b")
            u.writeprotect(r.addr, PS, 1)          # a present uffd-wp PTE
            if mt is MemType.SHMEM:
                u.writeprotect(r.addr + 2 * PS, PS, 1)   # a uffd-wp marker on a none PTE
            got = _err(lambda: b.mremap(r.addr, r.len, r.len, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, new))
            key = f"mremap_without_event_remap.{mt}"
            out[key] = got if got[0] != "ok" else ["ok", got[1] - new]
            if got[0] == "ok":
                out[key + ".pagemap"] = [_flags(x) for x in b.pagemap(new, 3)]
                out[key + ".new_vma_registered"] = _err(lambda: u.writeprotect(new + PS, PS, 1))[0] == "ok"
                t = b.thread(f"mremap-{mt}")
                res = _write(b, t, new)
                out[key + ".write.minflt"] = res.minflt
                out[key + ".msgs"] = len(u.read_msgs())
                b.munmap(new, r.len)
            else:
                b.munmap(r.addr, r.len)


def probe_early_eagain(b, out):
    """UFFDIO_COPY while a REMOVE event is unread (mmap_changing): EAGAIN, and is -EAGAIN written into the
    ``copy`` field (95567729173e) or is it left unwritten?  On the kernel the MADV_DONTNEED that raises the
    event blocks until it is read, so it runs in a thread of its own."""
    import select
    import threading
    r = b.mmap(4 * PS, MemType.ANON)
    s = b.mmap(PS, MemType.ANON)
    b.write(s.addr, b"e" * 8)
    b.write(r.addr, b"r")
    u = b.userfaultfd()
    try:
        u.api(int(F.EVENT_REMOVE))
        u.register(r.addr, r.len, R.MISSING)
        res: list = []
        th = threading.Thread(target=lambda: res.append(_err(lambda: b.madvise(r.addr, PS, uapi.MADV_DONTNEED))),
                              daemon=True)
        th.start()
        if b.name != "kernel":
            th.join(WAIT)                          # the emulator's madvise returns at once (event queued)
        if not select.select([u.fileno()], [], [], WAIT)[0]:
            raise RuntimeError("no REMOVE event within the time limit")
        try:
            u.copy(r.addr + PS, s.addr, PS, 0)
            out["copy_while_event_unread"] = ["ok", None]
        except UffdError as e:
            out["copy_while_event_unread"] = ["err", errno.errorcode.get(e.errno, e.errno), e.done]
        out["copy_while_event_unread.msgs"] = [m.event_name for m in u.read_msgs()]
        th.join(WAIT)
        out["copy_while_event_unread.madvise"] = res[0] if res else "still blocked"
    finally:
        u.close()
        b.munmap(r.addr, r.len)
        b.munmap(s.addr, s.len)


def run(b) -> dict:
    out: dict = {}
    probe_features(b, out)
    feats = int(out["features"], 16)
    probe_per_vma_lock(b, out)
    probe_wp_multi_vma(b, out)
    probe_markers(b, out, feats)
    probe_guard(b, out)
    probe_pagemap_scan(b, out)
    probe_write_upgrades(b, out)
    probe_continue_wp(b, out)
    probe_move(b, out, feats)
    probe_mremap(b, out)
    probe_early_eagain(b, out)
    return out


def repro_verdicts() -> dict:
    """``scenario/case`` -> verdict of ``uffdctl repro all --backend kernel`` on the running kernel."""
    import subprocess
    r = subprocess.run([sys.executable, "-m", "uffdctl", "-j", "repro", "all", "--backend", "kernel"],
                       capture_output=True, text=True, timeout=900, cwd="/")
    doc = json.loads(r.stdout)
    return {f"{x['scenario']}/{x['case']}": x["verdict"] for x in doc["results"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="probe the emulator with this profile (default: the running kernel)")
    ap.add_argument("--soft-dirty", choices=("on", "off"), default="on")
    ap.add_argument("--record", action="store_true",
                    help="the running kernel's recording for tests/data/kernels/: probes and repro verdicts")
    ns = ap.parse_args(argv)
    b = (open_backend("emu", profile=ns.profile, soft_dirty=ns.soft_dirty == "on") if ns.profile
         else open_backend("kernel"))
    try:
        d = b.describe()
        doc = {"backend": b.name, "release": d.get("release"), "soft_dirty": bool(d.get("soft_dirty")),
               "probes": run(b)}
    finally:
        b.close()
    if ns.record:
        import datetime
        import platform
        with open("/proc/version") as f:
            version = f.read().strip()
        doc.update(kernel=version, recorded_with="python tests/profile_probe.py --record" + (
            " (in a scripts/vmtest guest)" if os.environ.get("UFFDCTL_IN_VM") else " (on the host)"),
            date=datetime.date.today().isoformat(), machine=platform.machine(), repro=repro_verdicts())
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
