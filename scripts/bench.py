#!/usr/bin/env python3
"""uffdctl against a C reference, side by side (make bench; --json for numbers to compare over time).

Every row runs its C reference and uffdctl's path in the same round, ROUNDS rounds interleaved
(uffdctl first in every other round), and prints the medians and the ratio uffdctl / C (for rates,
C / uffdctl: above 1.00x uffdctl is slower either way).  The references: for the fault round trip
the selftests' handler loop and for per-page ioctls the same loop, both in C in uffdctl's own
process on the same memory, run in alternating blocks; for the rest scripts/bench_ref.c (built here
against the project's own uapi header) or the kernel's own uffd-stress (built from Debian's
linux-source-6.12).  docs/performance.md says how each row is timed.  Placements are pinned and printed:
thread placement decides a userfault round trip for C as much as for uffdctl (one vCPU ~9 us, two
~50 us here).  The load average is printed before and after: on a machine shared with other jobs the
numbers are noisy, the ratios less so.

  python scripts/bench.py [--rounds N] [--json] [--only SUBSTRING] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(ROOT, "build", "bench")
P = 4096


# -- the C references -------------------------------------------------------------------------
def build_ref(tmp: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench: no C compiler for the reference")
    exe = os.path.join(tmp, "bench_ref")
    subprocess.run([cc, "-O2", "-I", os.path.join(ROOT, "cdefs"), "-o", exe, os.path.join(HERE, "bench_ref.c"),
                    "-lpthread"], check=True)
    return exe


def c_ref(exe: str, *args, cpus: str | None = None) -> float:
    cmd = [exe, *map(str, args)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


SELFTEST_FILES = ("tools/testing/selftests/mm/", "tools/testing/selftests/kselftest", "include/uapi/linux/userfaultfd.h",
                  "include/uapi/linux/fs.h")


def build_uffd_stress() -> str | None:
    """The kernel's own stress program, from Debian's linux-source-6.12 (apt-installed when missing, as root)."""
    exe = os.path.join(CACHE, "uffd-stress")
    if os.path.exists(exe):
        return exe
    tarball = "/usr/src/linux-source-6.12.tar.xz"
    if not os.path.exists(tarball) and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: apt-get install linux-source-6.12 (the kernel's uffd-stress source)", file=sys.stderr)
        install = ["apt-get", "install", "-y", "-q", "linux-source-6.12"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet (measured: "Unable to locate package")
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
    if not os.path.exists(tarball):
        print("bench: no /usr/src/linux-source-6.12.tar.xz: the stress rows are skipped", file=sys.stderr)
        return None
    src = os.path.join(CACHE, "src")
    os.makedirs(src, exist_ok=True)
    with tarfile.open(tarball) as t:
        members = [m for m in t.getmembers() if any(f in m.name for f in SELFTEST_FILES)]
        t.extractall(src, members=members, filter="data") if sys.version_info >= (3, 12) else \
            t.extractall(src, members=members)
    top = os.path.join(src, "linux-source-6.12")
    inc = os.path.join(CACHE, "include", "linux")
    os.makedirs(inc, exist_ok=True)
    for h in ("userfaultfd.h", "fs.h"):  # the build host's headers are 6.1: the 6.12 uapi, as headers_install would
        shutil.copy(os.path.join(top, "include/uapi/linux", h), inc)
    mm = os.path.join(top, "tools/testing/selftests/mm")
    subprocess.run(["cc", "-O2", "-I", os.path.dirname(inc), "-D__packed=__attribute__((packed))", "-o", exe,
                    "uffd-stress.c", "uffd-common.c", "vm_util.c", "thp_settings.c", "-lpthread", "-lm"],
                   cwd=mm, check=True, capture_output=True)
    return exe


def run_uffd_stress(exe: str, memtype: str, mib: int, bounces: int) -> float:
    """userfaults/s of the kernel's uffd-stress: the faults it prints over the time from its first
    bounce line (flushed as the first bounce starts) to its exit."""
    p = subprocess.Popen([exe, memtype, str(mib), str(bounces)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf, t_first = b"", None
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if t_first is None and b"bounces:" in buf + chunk:
            t_first = time.monotonic_ns()
        buf += chunk
    p.wait()
    t_end = time.monotonic_ns()
    if p.returncode != 0:
        raise RuntimeError(f"uffd-stress {memtype} {mib} {bounces}: exit {p.returncode}: {p.stderr.read()[-300:]}")
    faults = 0
    for line in buf.decode().splitlines():
        words = line.split()
        for i, w in enumerate(words):
            if w in ("missing", "wp", "minor") and i and words[i - 1].isdigit():
                faults += int(words[i - 1])
    return faults / ((t_end - t_first) / 1e9)


# -- uffdctl's paths ----------------------------------------------------------------------------
class Bench:
    def __init__(self):
        from uffdctl import uapi
        from uffdctl import open_backend
        self.uapi = uapi
        self.b = open_backend("kernel")
        self.ffi, self.lib = self.b._ffi, self.b._lib
        self.all_cpus = os.sched_getaffinity(0)

    # -- the userfault round trip: one handler against the C reference, in blocks -------------
    def _faults(self, kind: str, n: int, hcpu: int, fcpu: int) -> list[int]:
        """Latencies (ns) of n MISSING faults taken by a native faulting thread pinned to fcpu and
        served by ``kind`` on hcpu: "c", the C reference (uffdctl_bench_refhandler: the selftests'
        poll + read + UFFDIO_COPY loop); "native", uffdctl's native handler (fill policy: a copy
        from one page, as the reference does); "wait", a Python policy with Uffd.wait_msgs() +
        Uffd.copy(); "poll", select.poll + Uffd.read_msgs() + Uffd.copy().  A fresh region and
        uffd per block; only the faults are timed (by the faulter, around each touch)."""
        import select
        from uffdctl.types import HandlerPolicy
        b, uapi, ffi, lib = self.b, self.uapi, self.ffi, self.lib
        r = b.mmap(n * P, "anon")
        src = b.mmap(P, "anon")
        b.write(src.addr, b"\7" * P)
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, uapi.RegisterMode.MISSING)
        lat = ffi.new("uint64_t[]", n)
        os.sched_setaffinity(0, {hcpu})  # this thread serves the Python policies; a native handler inherits it
        try:
            if kind in ("c", "c-read-first"):
                h = lib.uffdctl_bench_refhandler_start(u.fd, src.addr, P, n, hcpu, kind == "c-read-first")
                f = lib.uffdctl_bench_faulter_start(r.addr, n, P, fcpu, lat)
                lib.uffdctl_bench_faulter_join(f)
                err = lib.uffdctl_bench_refhandler_join(h)
                if err:
                    raise OSError(-err, "the C reference handler failed")
            elif kind == "native":
                h = b.fault_handler(u, HandlerPolicy(missing="fill", fill=7, page_size=P))
                f = lib.uffdctl_bench_faulter_start(r.addr, n, P, fcpu, lat)
                lib.uffdctl_bench_faulter_join(f)
                h.stop()
            else:
                f = lib.uffdctl_bench_faulter_start(r.addr, n, P, fcpu, lat)
                served, copy, s, mask = 0, u.copy, src.addr, ~(P - 1)
                if kind == "wait":     # the README's policy
                    wait = u.wait_msgs
                    while served < n:
                        for m in wait(5.0):
                            copy(m.address & mask, s, P)
                            served += 1
                else:
                    poll, read = select.poll(), u.read_msgs
                    poll.register(u.fd, select.POLLIN)
                    while served < n:
                        poll.poll(5000)
                        for m in read():
                            copy(m.address & mask, s, P)
                            served += 1
                lib.uffdctl_bench_faulter_join(f)
        finally:
            os.sched_setaffinity(0, self.all_cpus)
            self._free(u, r, src)
        return list(lat)

    def faults_pair(self, kind: str, n: int, blocks: int, hcpu: int, fcpu: int, flip: bool,
                    ref: str = "c") -> tuple[float, float]:
        """(C p50, uffdctl p50) of one round: ``blocks`` blocks of n/blocks faults each side, alternating
        C and uffdctl (flip: uffdctl first), so that both see the same moments of a shared machine."""
        c, us = [], []
        per = max(1, n // blocks)
        for k in range(blocks):
            for side in (("ours", "c") if (k % 2 == 0) == flip else ("c", "ours")):
                (c if side == "c" else us).extend(self._faults(ref if side == "c" else kind, per, hcpu, fcpu))
        return statistics.median(c), statistics.median(us)

    # -- per-page ioctls: the same loop in C (uffdctl_loop_*) and in Python, same pages ----------
    def per_page_pair(self, op: str, u, region, src, blocks: int, flip: bool) -> tuple[float, float]:
        """(C ns, uffdctl ns) per ioctl, median of ``blocks`` alternating blocks over the whole region."""
        b, lib, uapi = self.b, self.lib, self.uapi
        d, L = region.addr, region.len
        nops = (2 if op == "wp" else 1) * (L // P)

        def py():
            if op == "copy":
                copy, s = u.copy, src.addr
                for off in range(0, L, P):
                    copy(d + off, s + off, P)
            elif op == "zeropage":
                zp = u.zeropage
                for a in range(d, d + L, P):
                    zp(a, P)
            else:
                wp = u.writeprotect
                for mode in (1, 0):
                    for a in range(d, d + L, P):
                        wp(a, P, mode)

        def c():
            if op == "copy":
                r = lib.uffdctl_loop_copy(u.fd, d, src.addr, L, P, 0)
            elif op == "zeropage":
                r = lib.uffdctl_loop_zeropage(u.fd, d, L, P)
            else:
                r = lib.uffdctl_loop_writeprotect(u.fd, d, L, P, 1)
                r = r if r < 0 else lib.uffdctl_loop_writeprotect(u.fd, d, L, P, 0)
            if r < 0:
                raise OSError(-r, f"uffdctl_loop_{op}")

        cs, us = [], []
        for k in range(blocks):
            for side in ((py, c) if (k % 2 == 0) == flip else (c, py)):
                if op == "wp":
                    b.thread("bench").access(d, L, True, fill=2, stride=P).wait()   # present, writable
                t = cpu_timed(side)
                (cs if side is c else us).append(t / nops)
                if op != "wp":
                    b.madvise(d, L, uapi.MADV_DONTNEED)
        return statistics.median(cs), statistics.median(us)

    def _free(self, u, *regions):
        u.close()
        for r in regions:
            self.b.munmap(r.addr, r.len)

    def pagemap_area(self, mib: int):
        r = self.b.mmap(mib << 20, "anon")
        self.b.thread("bench").access(r.addr, r.len, True, fill=1, stride=2 * P).wait()
        return r

    def scan_area(self, mib: int):
        uapi = self.uapi
        r = self.b.mmap(mib << 20, "anon")
        u = self.b.userfaultfd()
        u.api(uapi.Feature.WP_ASYNC | uapi.Feature.WP_UNPOPULATED)
        u.register(r.addr, r.len, uapi.RegisterMode.WP)
        u.writeprotect(r.addr, r.len, uapi.WriteprotectMode.WP)
        self.b.thread("bench").access(r.addr, r.len, True, fill=1, stride=2 * P).wait()
        return r, u


def cpu_timed(fn) -> float:
    """CPU time of this thread running fn (a loop that never blocks: its wall time less the moments
    other jobs of a shared machine had the CPU)."""
    t0 = time.thread_time_ns()
    fn()
    return time.thread_time_ns() - t0


def timed(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def help_ns(cmd: list[str], runs: int = 3, cpu: bool = False) -> float:
    """A start-up: the best of ``runs``, in wall time, or (cpu) in the child's CPU time (user + system;
    tick-granular on this host's kernel, so the table does not use it: `perf stat -r 20` does better).
    The rows run both sides in turn, so the two see the same load."""
    import resource
    best = None
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter_ns()
        subprocess.run(cmd, check=True, capture_output=True)
        t = time.perf_counter_ns() - t0
        if cpu:
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1e9
        best = t if best is None else min(best, t)
    return best


# -- the targets (issue 14's "Done when") -----------------------------------------------------
# (substring of the row name, target text, check(ratio, diff) -> bool); rows without one are context.
TARGETS = [
    ("native fault handler (fill policy), MISSING", "ratio <= 1.05", lambda r, d: r <= 1.05),
    ("Python policy (Uffd.wait_msgs", "ratio <= 1.20", lambda r, d: r <= 1.20),
    ("Python policy (select.poll", "ratio <= 1.20", lambda r, d: r <= 1.20),
    ("-> PagemapView", "ratio <= 1.50", lambda r, d: r <= 1.50),
    ("+ counts() of", "ratio <= 1.50", lambda r, d: r <= 1.50),
    ("pagemap.scan_all", "ratio <= 1.50", lambda r, d: r <= 1.50),
    ("per-page Uffd.copy()", "diff <= +500 ns", lambda r, d: d <= 500),
    ("per-page Uffd.zeropage()", "diff <= +500 ns", lambda r, d: d <= 500),
    ("per-page Uffd.writeprotect()", "diff <= +500 ns", lambda r, d: d <= 500),
    ("`uffdctl --help`", "ratio <= 1.30", lambda r, d: r <= 1.30),
    ("stress ", "uffdctl >= 0.95x C (ratio <= 1.053)", lambda r, d: r <= 1 / 0.95),
]


def target_of(name: str):
    for sub, text, check in TARGETS:
        if sub in name:
            return text, check
    return None, None


# -- the table --------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "7")))
    ap.add_argument("--json", action="store_true", help="one JSON document (rows, placements, load)")
    ap.add_argument("--only", default=None, help="rows whose name contains this")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not for the record)")
    a = ap.parse_args()

    from uffdctl import pagemap, uapi
    bench = Bench()
    b = bench.b
    ncpu = os.cpu_count() or 1
    split = (0, 1) if ncpu > 1 else (0, 0)
    mib = 64 if a.quick else 1024
    nfault, fblocks = (1000, 4) if a.quick else (4000, 8)
    smib, sbounces = (16, 8) if a.quick else (32, 16)
    py = sys.executable
    uffdctl_bin = os.path.join(os.path.dirname(py), "uffdctl")
    load0 = os.getloadavg()

    # fixtures made once (outside the timed parts)
    pm = bench.pagemap_area(mib)
    sc, scu = bench.scan_area(mib)
    npages = pm.len // P
    pp = 4096   # pages of the per-page rows
    dst = b.mmap(pp * P, "anon")
    zpr = b.mmap(pp * P, "anon")
    src = b.mmap(pp * P, "anon")
    b.write(src.addr, b"\1" * src.len)
    u = b.userfaultfd()
    u.api(0)
    u.register(dst.addr, dst.len, uapi.RegisterMode.MISSING)
    u.register(zpr.addr, zpr.len, uapi.RegisterMode.MISSING)
    wpr = b.mmap(pp * P, "anon")
    u.register(wpr.addr, wpr.len, uapi.RegisterMode.WP)
    one = b.mmap(P, "anon")
    th = b.thread("bench-access")
    zero = 0

    def access_one(n=2000):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            acc = th.access(one.addr, 1, True, fill=1)
            acc.wait()
            acc.result()
        return (time.perf_counter_ns() - t0) / n

    def access_batch(n=2000):
        specs = [{"addr": one.addr, "len": 1, "write": True, "fill": 1}] * n
        t0 = time.perf_counter_ns()
        accs = th.access_many(specs)
        accs[-1].wait()
        return (time.perf_counter_ns() - t0) / n

    def cli_pagemap(area=None):
        v = pagemap.read(b, (area or pm).addr, npages)
        v.counts()
        v.runs()
        v.symbols(zero)

    # the same size in 512 runs (every other 2 MiB written): what a run-length summary is for
    chunky = b.mmap(mib << 20, "anon")
    th_setup = b.thread("bench-setup")
    th_setup.access_many([{"addr": chunky.addr + off, "len": 2 << 20, "write": True, "fill": 1}
                          for off in range(0, chunky.len, 4 << 20)])[-1].wait()

    def per_entry():
        for e in pagemap.read(b, pm.addr, npages):
            e.flags()
            e.pfn

    def bulk_decode():
        pagemap.read(b, pm.addr, npages).counts()

    C = uapi.PageCategory
    h, f = split
    one_vcpu = f"handler and faulter pinned to vCPU {h}"
    two_vcpu = f"handler pinned to vCPU {h}, faulter to vCPU {f}"
    inproc = "in-process, interleaved blocks"

    def sub(ref, ours):
        """A row whose reference is a separate C program (scripts/bench_ref.c, uffd-stress): (C, uffdctl),
        run in the round's order."""
        def pair(exe, flip):
            if flip:
                us = ours()
                return ref(exe), us
            c = ref(exe)
            return c, ours()
        return pair

    def faults(kind, hc, fc, n=nfault, ref="c"):
        return lambda exe, flip: bench.faults_pair(kind, n, fblocks, hc, fc, flip, ref)

    per_round: dict = {}   # C references shared by the rows of one round (cleared every round)

    def pagemap_ref(exe):
        """One `bench_ref pagemap` run a round serves the five pagemap rows (each maps and touches 1 GiB)."""
        if "pagemap" not in per_round:
            per_round["pagemap"] = c_ref(exe, "pagemap", mib)
        return per_round["pagemap"]

    def per_page(op, region):
        return lambda exe, flip: bench.per_page_pair(op, u, region, src, 4, flip)

    # name, unit, placement, kind ("time": lower is better; "rate": higher), pair(exe, flip) -> (C, uffdctl)
    rows = [
        ("native fault handler (fill policy), MISSING round trip p50", "ns", f"{one_vcpu}; {inproc}", "time",
         faults("native", h, h)),
        ("Python policy (Uffd.wait_msgs + copy), MISSING round trip p50", "ns", f"{one_vcpu}; {inproc}", "time",
         faults("wait", h, h)),
        ("Python policy (select.poll + read_msgs + copy), MISSING round trip p50", "ns", f"{one_vcpu}; {inproc}",
         "time", faults("poll", h, h)),
        ("native fault handler vs a C loop that also reads before it polls, round trip p50", "ns",
         f"{one_vcpu}; {inproc}", "time", faults("native", h, h, nfault // 2, "c-read-first")),
        ("native fault handler, round trip p50, on two vCPUs", "ns", f"{two_vcpu}; {inproc}", "time",
         faults("native", h, f, nfault // 4)),
        (f"pagemap.read() of {mib} MiB ({npages} entries) -> PagemapView", "ns", "unpinned", "time",
         sub(pagemap_ref, lambda: timed(lambda: pagemap.read(b, pm.addr, npages)))),
        (f"pagemap.read() + counts() of {mib} MiB (flags decoded in bulk)", "ns", "unpinned", "time",
         sub(pagemap_ref, lambda: timed(bulk_decode))),
        (f"pagemap.read() + per entry flags() + pfn, {mib} MiB", "ns", "unpinned", "time",
         sub(pagemap_ref, lambda: timed(per_entry))),
        (f"what `uffdctl pagemap` does for {mib} MiB (counts, runs, --map symbols; 1 run a page)", "ns",
         "unpinned", "time", sub(pagemap_ref, lambda: timed(cli_pagemap))),
        (f"what `uffdctl pagemap` does for {mib} MiB written in 2 MiB chunks ({mib // 2} runs)", "ns", "unpinned",
         "time", sub(pagemap_ref, lambda: timed(lambda: cli_pagemap(chunky)))),
        (f"pagemap.scan_all (PAGEMAP_SCAN, {mib} MiB, WRITTEN every other page)", "ns", "unpinned", "time",
         sub(lambda exe: c_ref(exe, "scan", mib, 512),
             lambda: timed(lambda: pagemap.scan_all(b, sc.addr, sc.end, category_mask=C.WRITTEN,
                                                    return_mask=C.WRITTEN)))),
        (f"per-page Uffd.copy() ({pp} pages)", "ns/page", f"unpinned; {inproc}; thread CPU time", "time",
         per_page("copy", dst)),
        (f"per-page Uffd.zeropage() ({pp} pages)", "ns/page", f"unpinned; {inproc}; thread CPU time", "time",
         per_page("zeropage", zpr)),
        (f"per-page Uffd.writeprotect() on+off ({pp} pages)", "ns/op", f"unpinned; {inproc}; thread CPU time", "time",
         per_page("wp", wpr)),
        ("thread(...).access() of one page, handed over and waited for", "ns", "unpinned", "time",
         sub(lambda exe: c_ref(exe, "handoff", 2000), access_one)),
        ("thread(...).access_many() of 2000 one-page accesses, per access", "ns", "unpinned", "time",
         sub(lambda exe: c_ref(exe, "handoff", 2000), access_batch)),
        ("`uffdctl --help` vs `python -c 'import click'`, wall time (best of 3 in turn)", "ns", "unpinned",
         "time", sub(lambda exe: help_ns([py, "-c", "import click"]), lambda: help_ns([uffdctl_bin, "--help"]))),
    ]
    stress_exe = build_uffd_stress() if not a.only or "stress" in a.only else None
    if stress_exe:
        from uffdctl import stress as ustress
        for mt in ("anon", "shmem"):
            rows.append((f"stress {mt} {smib} MiB {sbounces} bounces (vs the kernel's uffd-stress)", "userfaults/s",
                         f"unpinned, {ncpu} threads of each kind", "rate",
                         sub(lambda exe, mt=mt: run_uffd_stress(stress_exe, mt, smib, sbounces),
                             lambda mt=mt: (lambda r: r.userfaults / (r.ns / 1e9))(ustress.run(mt, smib, sbounces)))))
    if a.only:
        rows = [r for r in rows if a.only in r[0]]

    vals: dict[str, tuple[list[float], list[float]]] = {r[0]: ([], []) for r in rows}
    secs = {r[0]: 0.0 for r in rows}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_ref(tmp)
        for k in range(a.rounds):  # interleaved: C and uffdctl see the same machine state, row by row
            per_round.clear()
            for name, _unit, _pl, _kind, pair in rows:
                t_row = time.monotonic()
                try:
                    c, us = pair(exe, k % 2 == 1)   # every other round uffdctl goes first
                    vals[name][0].append(c)
                    vals[name][1].append(us)
                finally:
                    os.sched_setaffinity(0, bench.all_cpus)
                    secs[name] += time.monotonic() - t_row
    load1 = os.getloadavg()
    elapsed = time.monotonic() - t_start

    out = []
    for name, unit, placement, kind, _p in rows:
        cs, uss = vals[name]
        c, us = statistics.median(cs), statistics.median(uss)
        # the verdict's ratio and diff are medians of the rounds' own ratios and diffs: a round's C and uffdctl
        # ran back to back on the same machine state, and pairing them is what the interleaving is for (the
        # median C and the median uffdctl may come from different rounds: a ratio of medians mixes moments)
        ratio = statistics.median([(u / x) if kind == "time" else (x / u) for x, u in zip(cs, uss)])
        diff = statistics.median([u - x for x, u in zip(cs, uss)])
        ttext, tcheck = target_of(name)
        verdict = None if tcheck is None else ("PASS" if tcheck(ratio, diff) else "MISS")
        out.append({"row": name, "unit": unit, "placement": placement, "c": round(c, 1), "uffdctl": round(us, 1),
                    "ratio": round(ratio, 3), "diff": round(diff, 1) if kind == "time" else None, "kind": kind,
                    "target": ttext, "verdict": verdict,
                    "rounds": len(vals[name][0]), "seconds": round(secs[name], 1),
                    "c_all": [round(v, 1) for v in vals[name][0]], "uffdctl_all": [round(v, 1) for v in vals[name][1]]})
    doc = {"kernel": os.uname().release, "cpus": ncpu, "rounds": a.rounds, "loadavg_before": load0,
           "loadavg_after": load1, "seconds": round(elapsed, 1), "rows": out,
           "note": "c, uffdctl: medians of interleaved rounds; ratio, diff: medians of each round's own ratio and diff; "
                   "ratio = uffdctl/C for times, C/uffdctl for rates (>1: uffdctl slower)"}
    emu = os.path.join(HERE, "bench_emu.py")
    run_emu = os.path.exists(emu) and not a.only
    if a.json:
        if run_emu:
            r = subprocess.run([py, emu, "--json"], capture_output=True, text=True)
            doc["emulator"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.strip()[-300:]}
        print(json.dumps(doc, indent=1))
    else:
        print(f"kernel {doc['kernel']}, {ncpu} vCPUs, {a.rounds} rounds interleaved (uffdctl first every other "
              f"round), medians (ratio, diff: of the rounds' own); load average {load0[0]:.1f} before, "
              f"{load1[0]:.1f} after; {elapsed:.0f} s")
        print(f"{'row':74} {'C':>11} {'uffdctl':>11} {'ratio':>7} {'diff':>9}  {'verdict':7} {'target':17} "
              "unit; placement")
        for r in out:
            diff = f"{r['diff']:+9.1f}" if r["diff"] is not None else " " * 9
            print(f"{r['row'][:74]:74} {r['c']:11.1f} {r['uffdctl']:11.1f} {r['ratio']:6.2f}x {diff}  "
                  f"{r['verdict'] or '-':7} {r['target'] or '(context)':17} {r['unit']}; {r['placement']}")
        hit = [r for r in out if r["verdict"]]
        print(f"targets: {sum(r['verdict'] == 'PASS' for r in hit)} PASS, {sum(r['verdict'] == 'MISS' for r in hit)} "
              f"MISS of {len(hit)} (issue 14's Done-when is for a quiet machine: load average "
              f"{load0[0]:.1f} -> {load1[0]:.1f} here)")
        print("ratio: uffdctl/C for times, C/uffdctl for rates (1.00x = as fast as C; above: slower); "
              "diff: uffdctl - C; both are medians of each round's own (C and uffdctl ran back to back)")
        print("C references: in-process rows run the selftests' handler loop (poll, read, UFFDIO_COPY) and "
              "uffdctl_loop_* in C on the same memory; the rest run scripts/bench_ref.c or the kernel's uffd-stress")
        if run_emu:
            print("\nemulator (scripts/bench_emu.py; no C reference: the kernel is the reference):", flush=True)
            subprocess.run([py, emu])
    th.stop()
    th_setup.stop()
    b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
