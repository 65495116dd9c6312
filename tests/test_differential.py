"""Differential test: random op sequences on the real kernel and on the emulator (profile 6.18, soft-dirty
off, as this host), compared after every op (spec §8; issue 3 item 5).

A sequence is data (JSON-able): regions (index 0 is an anon source pool, never
registered), the UFFDIO_API features, and ops named after the kernel calls.
``run(seq, kernel, emu)`` executes every op on both backends and compares, after
each op: the return value or errno and result field, the state of every access
(done, sigbus, minor/major faults, bytes read), pagemap entries of every mapping
(present, swap incl. marker type, file, guard, uffd-wp, exclusive, and page
identity as relations: same page / zero page / another page), and messages
(event, flags, region-relative address, which thread).  Whether an op applies
is decided from the emulator's state (a thread already blocked takes no new
access; a region with a blocked access is not unmapped), identically for both.

On a divergence the sequence is shrunk (ops dropped while it still diverges),
printed as readable lines, and saved as JSON; ``UFFDCTL_DIFF_REPLAY=<file>``
reruns it.  ``UFFDCTL_DIFF_EXAMPLES`` (default 2000; ``make soak``: 20000) sets how
many sequences; ``UFFDCTL_DIFF_SECONDS`` bounds the time; ``UFFDCTL_DIFF_SEED``
fixes the seed; ``UFFDCTL_DIFF_MEMTYPES=thp,anon`` keeps only those memory types.  Accesses that end in SIGBUS are compared without their fault
count (the first signal delivered to a thread faults in its signal frame).
hugetlb is included only when huge pages are reserved.

THP: a ``thp`` region is anon, 2 MiB-aligned, one or two PMDs, MADV_HUGEPAGE (as this host, THP in madvise
mode); ``madvise`` ops give it hugepage / nohugepage / collapse, and its snapshot adds the PMD level: the
PAGE_IS_HUGE runs of PAGEMAP_SCAN (AnonHugePages of smaps before 6.7).  The kernel's THP allocation can fail
under fragmentation: a sequence whose only difference is fewer huge pages on the kernel while
/proc/vmstat counts a THP fallback (or a MADV_COLLAPSE the kernel refused with ENOMEM / EAGAIN, which it
documents as transient) is not compared, and the test prints it with that reason.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (SWAP_SIZE, active_swaps, alone_in_a_gib, assert_steps_agree, drain_events, hugetlb_reason,
                      make_backend, require_kernel, zero_pfn)
from uffdctl import uapi
from uffdctl.backend import HandlerPolicy, MemType
from uffdctl.errors import OutOfMemory, UffdError
from uffdctl.kernel import meminfo

R = uapi.RegisterMode
PS = uapi.PAGE_SIZE
THREADS = ("t0", "t1", "t2")
CHILD = "c"                    # the only thread of the forked child (kernel/fork.c; uffdctl.process)
SRC_PAGES = 8
SETTLE = 5.0
HP = 2 << 20


class ThpShortfall(Exception):
    """The kernel did not get a THP the model has (allocation failure): the sequence is not compared."""


class HugetlbShortfall(ThpShortfall):
    """The host's huge-page pool could not back a hugetlb region's mmap (ENOMEM): other users of the pool (the
    soak's own forked children and files being torn down) took the pages; the sequence is not compared."""


THP_FAIL_COUNTERS = ("thp_fault_fallback", "thp_collapse_alloc_failed", "thp_fault_fallback_charge")


def thp_fail_counts() -> dict:
    try:
        with open("/proc/vmstat") as f:
            st = dict(ln.split() for ln in f)
    except OSError:
        return {}
    return {k: int(st.get(k, 0)) for k in THP_FAIL_COUNTERS}


def _huge_pages(snap) -> int:
    return sum(sum(e - s for s, e in x[2]) if isinstance(x[2], tuple) else x[2] for x in snap)


class Divergence(AssertionError):
    def __init__(self, step: int, what: str, kernel, emu):
        self.step, self.what, self.kernel, self.emu = step, what, kernel, emu
        super().__init__(f"step {step}: {what}: kernel={kernel!r} emu={emu!r}")


# -- generation -----------------------------------------------------------------------------

def gen_sequence(rng: random.Random, memtypes, max_ops: int = 14) -> dict:
    regions = [{"type": "anon", "pages": SRC_PAGES}]
    for _ in range(rng.randint(1, 2)):
        mt = rng.choice(memtypes)
        if mt == "thp":                 # anon, MADV_HUGEPAGE, one or two PMDs
            regions.append({"type": MemType.ANON.value, "pages": rng.choice([512, 1024]), "thp": 1})
            continue
        if _mt(mt).hugetlb:
            if any(_mt(g["type"]).hugetlb for g in regions):
                mt = MemType.ANON.value
            else:   # few huge pages (others may use the pool); the source pool must cover huge copies
                regions[0]["pages"] = SRC_PAGES * 512
        regions.append({"type": mt, "pages": rng.randint(2, 3 if _mt(mt).hugetlb else 6)})
    feats = 0
    for f, p in ((uapi.Feature.WP_UNPOPULATED, 0.3), (uapi.Feature.EXACT_ADDRESS, 0.2), (uapi.Feature.WP_ASYNC, 0.1),
                 (uapi.Feature.THREAD_ID, 0.3), (uapi.Feature.SIGBUS, 0.08)):
        if rng.random() < p:
            feats |= int(f)
    ops = []
    # usually start registered, so that faults happen
    if rng.random() < 0.8:
        r = rng.randint(1, len(regions) - 1)
        ops.append(["register", r, 0, regions[r]["pages"], rng.choice([1, 2, 3, 3, 4, 5, 7])])
    for _ in range(rng.randint(3, max_ops)):
        ops.append(gen_op(rng, regions))
    feats |= gen_fork(random.Random(rng.getrandbits(64)), regions, ops)
    return {"regions": regions, "features": feats, "ops": ops}


def gen_fork(frng: random.Random, regions, ops) -> int:
    """fork and the ops in the child, drawn from their own generator, so that the sequences without a fork are
    the ones the generator made before fork was added: in 30% of them a fork early on, its FORK message read,
    a few ops in the child, maybe a kill of it and a MADV_DONTFORK / WIPEONFORK / DOFORK / KEEPONFORK before
    the fork, and half of those with UFFD_FEATURE_EVENT_FORK.  Returns the UFFDIO_API features it adds."""
    if frng.random() < 0.3:
        at = frng.randint(0, len(ops) // 2)
        burst = [["fork"], ["read_msgs"]]
        for _ in range(frng.randint(2, 6)):
            r = frng.randint(1, len(regions) - 1)
            p0 = frng.randrange(regions[r]["pages"])
            burst.append(gen_child_op(frng, r, p0, frng.randint(1, regions[r]["pages"] - p0)))
        if frng.random() < 0.3:
            burst.append(["kill"])
        ops[at:at] = burst
        if frng.random() < 0.4:
            r = frng.randint(1, len(regions) - 1)
            ops.insert(frng.randint(0, at), ["madvise_fork", r, frng.choice(["dontfork", "wipeonfork", "wipeonfork",
                                                                             "dofork", "keeponfork"])])
        return int(uapi.Feature.EVENT_FORK) if frng.random() < 0.5 else 0     # the features this adds
    return 0


def gen_op(rng: random.Random, regions) -> list:
    r = rng.randint(1, len(regions) - 1)
    npg = regions[r]["pages"]
    p0 = rng.randrange(npg)
    n = rng.randint(1, npg - p0)
    if rng.random() < 0.15:
        n = 1
    if regions[r].get("thp"):
        if rng.random() < 0.5:          # whole PMDs (no split), or part of one (split_huge_pmd())
            p0 = rng.choice(range(0, npg, 512))
            n = rng.choice([512, npg - p0])
        if rng.random() < 0.2:
            return ["madvise", r, p0, n, rng.choice(["hugepage", "nohugepage", "collapse", "collapse"])]
    kind = rng.choices(
        ["touch", "copy", "zeropage", "continue", "writeprotect", "wake", "poison", "move", "register",
         "unregister", "read_msgs", "clear_refs", "dontneed", "cache_write", "munmap", "scan", "mprotect",
         "mremap", "pageout", "free"],
        [22, 8, 5, 4, 9, 3, 2, 3, 4, 2, 8, 2, 3, 3, 1, 4, 3, 3, 4, 1])[0]
    if kind == "touch":
        return ["touch", rng.choice(THREADS), r, p0, rng.random() < 0.5, rng.randrange(1, 256)]
    if kind == "copy":
        return ["copy", r, p0, n, rng.randrange(SRC_PAGES - n + 1) if n <= SRC_PAGES else 0,
                rng.choice([0, 0, 1, 2, 3])]
    if kind == "zeropage":
        return ["zeropage", r, p0, n, rng.choice([0, 0, 1])]
    if kind == "continue":
        return ["continue", r, p0, n, rng.choice([0, 0, 1, 2])]
    if kind == "writeprotect":
        return ["writeprotect", r, p0, n, rng.choice([1, 1, 0, 0, 2, 3])]
    if kind == "wake":
        return ["wake", r, p0, n]
    if kind == "poison":
        return ["poison", r, p0, 1, rng.choice([0, 1])]
    if kind == "move":
        rs = rng.randrange(len(regions))
        spg = regions[rs]["pages"]
        m = min(n, spg)
        return ["move", r, p0, rs, rng.randrange(spg - m + 1), m, rng.choice([0, 0, 1, 2])]
    if kind == "register":
        return ["register", r, p0, n, rng.choice([1, 2, 3, 4, 5, 7])]
    if kind == "unregister":
        return ["unregister", r, p0, n]
    if kind == "read_msgs":
        return ["read_msgs"]
    if kind == "clear_refs":
        return ["clear_refs", rng.choice([1, 2, 3, 4, 5, 6])]
    if kind in ("dontneed", "pageout", "free"):
        return [kind, r, p0, n]
    if kind == "cache_write":
        return ["cache_write", r, p0, rng.randrange(1, 256)]
    if kind == "mprotect":
        return ["mprotect", r, p0, n, rng.choice(["read", "read", "none"])]
    if kind == "mremap":       # moves to a fresh 2 MiB-aligned address (MREMAP_FIXED), or shrinks in place
        return ["mremap", r, rng.choice(["move", "move", "grow", "shrink"])]
    if kind == "scan":
        C = uapi.PageCategory
        return ["scan", r, p0, n, rng.choice([0, 0, 1, 3]), rng.choice([0, 0, int(C.WRITTEN), int(C.PRESENT)]),
                rng.choice([0x1FF, int(C.WRITTEN), int(C.PRESENT | C.WRITTEN | C.PFNZERO | C.FILE)]),
                rng.choice([0, 0, 1, 3]), rng.choice([1, 2, 512, 512, 0])]
    return ["munmap", r]


def gen_child_op(rng: random.Random, r: int, p0: int, n: int) -> list:
    """An op in the forked child: a touch by its thread, an ioctl on its uffd (the FORK message's), a read of
    its messages, a madvise."""
    inner = rng.choices(["touch", "copy", "zeropage", "writeprotect", "read_msgs", "dontneed"], [10, 3, 2, 3, 4, 1])[0]
    if inner == "touch":
        return ["child", ["touch", CHILD, r, p0, rng.random() < 0.6, rng.randrange(1, 256)]]
    if inner == "copy":
        return ["child", ["copy", r, p0, n, rng.randrange(SRC_PAGES - n + 1) if n <= SRC_PAGES else 0,
                          rng.choice([0, 0, 1])]]
    if inner == "zeropage":
        return ["child", ["zeropage", r, p0, n, 0]]
    if inner == "writeprotect":
        return ["child", ["writeprotect", r, p0, n, rng.choice([1, 0, 0])]]
    if inner == "dontneed":
        return ["child", ["dontneed", r, p0, n]]
    return ["child", ["read_msgs"]]


# -- rendering --------------------------------------------------------------------------------

_FORK_ADVICE = {"dontfork": 10, "dofork": 11, "wipeonfork": 18, "keeponfork": 19}


def render(seq: dict) -> str:
    lines = ["# regions: " + ", ".join(f"r{i}={'thp' if g.get('thp') else g['type']}x{g['pages']}"
                                      + (" (src pool)" if i == 0 else "")
                                      for i, g in enumerate(seq["regions"])),
             f"uffd.api(features={'|'.join(uapi.Feature.decode(seq['features'])) or 0})"]
    for op in seq["ops"]:
        prefix = ""
        if op[0] == "child":
            prefix, op = "child: ", op[1]
        k = op[0]
        if k == "fork":
            lines.append("fork()   # the child: ops marked 'child:' (its thread c, its uffd from the FORK message)")
            continue
        if k == "kill":
            lines.append("kill(child, SIGKILL); waitpid(child)")
            continue
        if k == "madvise_fork":
            lines.append(f"madvise(r{op[1]}, MADV_{op[2].upper()})")
            continue
        if prefix:
            one = render({"regions": seq["regions"], "features": 0, "ops": [op]}).splitlines()[-1]
            lines.append(prefix + one.strip().split(None, 1)[1])
            continue
        if k == "touch":
            lines.append(f"{op[1]}.{'write' if op[4] else 'read'}(r{op[2]}[{op[3]}]" +
                         (f", fill={op[5]:#x})" if op[4] else ")"))
        elif k in ("copy",):
            lines.append(f"uffd.copy(dst=r{op[1]}[{op[2]}], src=r0[{op[4]}], len={op[3]} pages, mode={op[5]})")
        elif k == "move":
            lines.append(f"uffd.move(dst=r{op[1]}[{op[2]}], src=r{op[3]}[{op[4]}], len={op[5]} pages, "
                         f"mode={op[6]})")
        elif k == "register":
            lines.append(f"uffd.register(r{op[1]}[{op[2]}:{op[2] + op[3]}], mode="
                         f"{'|'.join(m.name for m in R if op[4] & m)})")
        elif k in ("unregister", "wake", "dontneed", "pageout", "free"):
            name = f"madvise(MADV_{k.upper()}," if k in ("dontneed", "pageout", "free") else f"uffd.{k}("
            lines.append(f"{name} r{op[1]}[{op[2]}:{op[2] + op[3]}])")
        elif k in ("zeropage", "continue", "writeprotect", "poison"):
            lines.append(f"uffd.{k}(r{op[1]}[{op[2]}:{op[2] + op[3]}], mode={op[4]})")
        elif k == "read_msgs":
            lines.append("uffd.read_msgs()")
        elif k == "clear_refs":
            lines.append(f"clear_refs({op[1]})")
        elif k == "cache_write":
            lines.append(f"alias(r{op[1]})[{op[2]}] = {op[3]:#x}   # fills the page cache, not registered")
        elif k == "munmap":
            lines.append(f"munmap(r{op[1]})")
        elif k == "mprotect":
            prot = "PROT_NONE" if op[4:] == ["none"] else "PROT_READ"
            lines.append(f"mprotect(r{op[1]}[{op[2]}:{op[2] + op[3]}], {prot}); mprotect(..., PROT_READ|PROT_WRITE)")
        elif k == "mremap":
            what = {"move": "same length", "grow": "one page longer", "shrink": "half the pages, in place"}[op[2]]
            lines.append(f"mremap(r{op[1]}, {what}" + (", MREMAP_MAYMOVE|MREMAP_FIXED to a fresh address)"
                                                      if op[2] != "shrink" else ")"))
        elif k == "madvise":
            lines.append(f"madvise(r{op[1]}[{op[2]}:{op[2] + op[3]}], MADV_{op[4].upper()})")
        elif k == "scan":
            lines.append(f"pagemap_scan(r{op[1]}[{op[2]}:{op[2] + op[3]}], flags={op[4]}, category_mask={op[5]:#x}, "
                         f"return_mask={op[6]:#x}, max_pages={op[7]}, vec_len={op[8]})")
    return "\n".join(f"{i - 1:3d}  {line}" if i >= 2 else f"     {line}" for i, line in enumerate(lines))


def replay_command(path: str) -> str:
    return f"UFFDCTL_DIFF_REPLAY={path} pytest tests/test_differential.py -k replay"


# -- one backend's side -------------------------------------------------------------------------

class Side:
    def __init__(self, b, seq, zero_pfn):
        self.b = b
        self.zero_pfn = zero_pfn
        self.regions = []
        self.aliases = {}
        for i, g in enumerate(seq["regions"]):
            r = aligned_mmap(b, g["pages"] * (HP if _mt(g["type"]).hugetlb else PS), g["type"], f"r{i}")
            if g.get("thp"):
                b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
            fence(b, r)
            self.regions.append(r)
            if r.fd is not None:
                self.aliases[i] = aligned_alias(b, r, f"r{i}alias")
        # (region index, mapping) also after munmap or mremap, to name addresses: every place a region has been
        # is named after the region, so an address the kernel reuses for a region's later move reads the same
        self.all_regions = list(enumerate(self.regions))
        self.thp = {i for i, g in enumerate(seq["regions"]) if g.get("thp")}
        src = self.regions[0]
        for p in range(SRC_PAGES):
            b.write(src.addr + p * PS, bytes([0x10 + p]) * 8)
        self.u = b.userfaultfd()
        self.u.api(seq["features"])
        self.threads = {n: b.thread(n) for n in THREADS}
        self.acc = {}            # thread -> (access, start vcsw)
        self.acc_at = {}         # thread -> (region, page) of its access
        self.labels = {}
        self.nextlabel = 0
        # fork: the fork(2) in progress, the child (a Process), its uffd (the FORK message's ufd, adopted), the
        # regions and aliases it inherited (the parent's later munmap/mremap are not the child's)
        self.fork_acc = self.child = self.cu = self.child_ufd = None
        # threads whose access was blocked across the fork: once resumed they COW-fault their own stack, which
        # the kernel counts (uffdctl_access.c pre-touches it only before an access starts): no fault counts
        self.nocount: set = set()
        self.child_dead = False
        self.cregions, self.caliases = [], {}

    def task_path(self, name) -> str:
        if name == CHILD:
            return f"/proc/{self.child.pid}"
        return f"/proc/self/task/{self.threads[name].tid}"

    def addr(self, r, p):
        reg = self.regions[r]
        return reg.addr + p * reg.page_size

    def where(self, addr):
        for i, reg in reversed(self.all_regions):     # the newest mapping of an address first
            if reg.addr <= addr < reg.end:
                return f"r{i}+{addr - reg.addr:#x}"
        return hex(addr)

    def vcsw(self, name):
        if self.b.name != "kernel":
            return 0
        with open(f"{self.task_path(name)}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
        return 0

    def snapshot(self) -> list:
        """Pagemap of every mapping as runs: (mapping, first page, pages, kept bits, identity)."""
        out = []
        live = set()
        mappings = [(f"r{i}", r, self.b) for i, r in enumerate(self.regions) if r is not None]
        mappings += [(f"r{i}alias", a, self.b) for i, a in sorted(self.aliases.items()) if a is not None]
        if self.child is not None and not self.child_dead:     # the child's pagemap, its pages named alike
            mappings += [(f"child:r{i}", r, self.child) for i, r in enumerate(self.cregions) if r is not None]
            mappings += [(f"child:r{i}alias", a, self.child) for i, a in sorted(self.caliases.items())]
        keepmask = (uapi.PM_PRESENT | uapi.PM_SWAP | uapi.PM_FILE | uapi.PM_GUARD_REGION | uapi.PM_UFFD_WP
                    | uapi.PM_MMAP_EXCLUSIVE)
        for name, reg, mm in mappings:
            prev = None
            entries = mm.pagemap(reg.addr, reg.len // PS)
            # entries without a kept bit only end a run (prev[0] == i - 1 below fails across them)
            for i in [i for i, raw in enumerate(entries) if raw & keepmask]:
                raw = entries[i]
                keep = raw & keepmask
                pfn = raw & uapi.PM_PFRAME_MASK
                sub = reg.page_size // PS    # the 4 KiB entries of one huge page form one run
                if prev is not None and sub > 1 and i % sub and prev[0] == i - 1 and prev[1] == keep and (
                        not raw & uapi.PM_PRESENT or pfn == prev[2] + 1):
                    out[-1][2] += 1
                    prev = (i, keep, pfn)
                    live.add(pfn)
                    continue
                if raw & uapi.PM_PRESENT:
                    if pfn == self.zero_pfn:
                        ident = "zero"
                    else:
                        live.add(pfn)
                        if pfn not in self.labels:
                            self.labels[pfn] = f"p{self.nextlabel}"
                            self.nextlabel += 1
                        ident = self.labels[pfn]
                elif pfn & 0x1F >= 27:          # a PTE marker (swap type 31 on 6.18, 30 on 6.1): its value
                    ident = f"swp{pfn:#x}"
                else:                           # a swap entry: named by relation (slots are the allocator's)
                    key = ("s", pfn)
                    live.add(key)
                    if key not in self.labels:
                        self.labels[key] = f"s{self.nextlabel}"
                        self.nextlabel += 1
                    ident = self.labels[key]
                out.append([name, i, 1, hex(keep), ident])
                prev = (i, keep, pfn)
        self.labels = {k: v for k, v in self.labels.items() if k in live}
        return [tuple(x) for x in out] + self.huge_snapshot()

    def huge_snapshot(self) -> list:
        """The PMD level of the THP regions: PAGE_IS_HUGE runs (region-relative pages), or before PAGEMAP_SCAN
        (6.7) smaps' AnonHugePages of the region's VMAs."""
        out = []
        for i, reg in enumerate(self.regions):
            if reg is None or i not in self.thp:
                continue
            try:
                res = self.b.pagemap_scan(reg.addr, reg.end, category_mask=int(uapi.PageCategory.HUGE),
                                          return_mask=int(uapi.PageCategory.HUGE))
                runs = tuple(((s - reg.addr) // PS, (e - reg.addr) // PS) for s, e, _ in res.regions)
            except UffdError as e:
                if e.errno != errno.ENOTTY:
                    raise
                runs = sum(v.get("AnonHugePages", 0) for v in self.b.smaps_vmas(reg.addr, reg.end)) // PS
            out.append((f"r{i}", "huge", runs))
        return out


# Regions of a regular file on a disk filesystem (a fresh sparse file each): MAP_SHARED and MAP_PRIVATE.
FILE_TYPES = {"file": True, "file-private": False}
FILE_DIR = "/var/tmp"


def _mt(t: str) -> MemType:
    """The memory type of a region type (a disk file maps like shmem as far as MemType goes)."""
    return {"file": MemType.SHMEM, "file-private": MemType.SHMEM_PRIVATE}.get(t) or MemType(t)


def aligned_mmap(b, length, memtype, name):
    """A 2 MiB-aligned mapping on either backend: read fault-around (64 KiB windows) and the page-table
    boundary then fall on the same pages in both.  Never at the probe's start: the probe may fill a hole
    exactly, and a mapping there would abut (and merge into) a VMA of this process the model does not have,
    taking its anon_vma (6.1's MADV_COLLAPSE then passes hugepage_vma_check() -- the 6.1 guest's seed 76)."""
    if _mt(memtype).hugetlb:
        return b.mmap(length, memtype, name=name, addr=alone_in_a_gib(b, length))
    probe = b.mmap(length + 2 * HP, MemType.ANON, name=name + "-probe")
    addr = (probe.addr + HP) & ~(HP - 1)          # a gap below (>= 4 KiB) and above (>= 2 MiB)
    b.munmap(probe.addr, probe.len)
    if memtype in FILE_TYPES:
        return b.mmap_file(length, FILE_DIR, FILE_TYPES[memtype], name=name, addr=addr)
    return b.mmap(length, memtype, name=name, addr=addr)


def aligned_alias(b, r, name):
    """The region's file mapped again, 2 MiB-aligned as the region (large folios and fault-around then fall alike
    in both backends: shmem_suitable_orders() checks the VMA's alignment)."""
    if r.memtype.hugetlb:
        return b.alias_at(r, name, alone_in_a_gib(b, r.len))
    probe = b.mmap(r.len + 2 * HP, MemType.ANON, name=name + "-probe")
    addr = (probe.addr + HP) & ~(HP - 1)          # never abutting another VMA (see aligned_mmap)
    b.munmap(probe.addr, probe.len)
    return b.alias_at(r, name, addr)


FENCES = iter(range(1 << 62))


def fence(b, r) -> None:
    """The kernel side: a PROT_NONE page right below and right above a private anon region, so that no VMA of
    this process the model does not have can come to abut it and merge.  This process's thread stacks are
    anon, rw and VM_NOHUGEPAGE (glibc madvises them; measured here) like the backend's regions, and the top-down
    allocator puts a new thread's 8 MiB stack at the top of the highest hole that fits -- often the gap
    aligned_mmap() leaves below a region: merged, the region has the stack's anon_vma and fork copies its PTEs
    (vma_needs_copy()), where the model's child has none [CI seed 1644 under load: a zero-page read, a fork, the
    kernel's child had the zero page; a fresh process gets the merge every time].  A fence is a tool page
    ("__": VM_DONTDUMP) of other flags, never merged; a place already taken keeps what is there."""
    if b.name != "kernel" or r.memtype is not MemType.ANON:
        return
    for at in (r.addr - PS, r.end):
        try:
            b.mmap(PS, MemType.ANON, name=f"__fence{next(FENCES)}", prot=uapi.PROT_NONE, addr=at)
        except UffdError:
            pass


def _call(fn):
    try:
        v = fn()
        return ("ok", v if isinstance(v, int) else None)
    except UffdError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno), e.done)


# -- the lock-step run --------------------------------------------------------------------------

class ChildView:
    """What apply() needs of a side, for an op in the child: its mm calls, its uffd, its regions; the threads
    and accesses are the side's (the child's thread is ``c``)."""

    def __init__(self, side: Side):
        self.side, self.b, self.u = side, side.child, side.cu
        self.regions, self.aliases = side.cregions, side.caliases
        self.threads, self.acc, self.nocount, self.acc_at = side.threads, side.acc, side.nocount, side.acc_at

    def addr(self, r, p):
        reg = self.regions[r]
        return reg.addr + p * reg.page_size

    def vcsw(self, name):
        return self.side.vcsw(name)


def apply_fork(side: Side, op) -> tuple:
    b, k = side.b, op[0]
    if k == "fork":
        side.nocount |= {tn for tn, (acc, _) in side.acc.items() if not acc.done}
        side.cregions, side.caliases = list(side.regions), dict(side.aliases)
        side.fork_acc = b.fork("child", dict(b.regions))
        return ("started",)
    if k == "kill":
        side.child.kill(9)
        r = side.child.wait(SETTLE)
        side.child_dead = True
        side.acc.pop(CHILD, None)
        return ("killed", r and r["signal_name"])
    if k == "madvise_fork":
        reg = side.regions[op[1]]
        return _call(lambda: b.madvise(reg.addr, reg.len, _FORK_ADVICE[op[2]]))
    return apply(ChildView(side), op[1])


def adopt_fork(side: Side, msgs) -> None:
    """The FORK message's ufd is the child's uffd (installed in our fd table by read())."""
    for m in msgs:
        if m.event == uapi.Event.FORK:
            side.child_ufd = m.ufd


def register_child(side: Side) -> None:
    side.child = side.fork_acc.result()
    side.threads[CHILD] = side.child.thread("main")
    if side.child_ufd is not None:
        side.cu = side.b.adopt_uffd(side.child_ufd)


def wait_writeback(timeout: float = SETTLE) -> bool:
    """Wait (bounded) until no page is under writeback (/proc/vmstat nr_writeback 0).  Swap writeback after
    MADV_PAGEOUT is asynchronous, and until it completes reclaim skips the folio (PG_writeback in
    shrink_folio_list()); the model is the settled kernel, so the kernel side waits
    [differential, seed 297802295: a second pageout of a clean swap-cache folio freed it once the first
    write-out had completed, and a run that came sooner kept it]."""
    end = time.monotonic() + timeout
    while True:
        with open("/proc/vmstat") as f:
            n = next((int(ln.split()[1]) for ln in f if ln.startswith("nr_writeback ")), 0)
        if n == 0 or time.monotonic() > end:
            return n == 0
        time.sleep(0.0005)


def apply(side: Side, op) -> tuple:
    if op[0] in ("fork", "kill", "madvise_fork", "child"):
        return apply_fork(side, op)
    b, u, k = side.b, side.u, op[0]
    A = side.addr
    if k == "touch":
        _, tn, r, p, write, fill = op
        t = side.threads[tn]
        side.nocount.discard(tn)
        side.acc_at[tn] = (r, p)
        base = side.vcsw(tn)
        if write:
            acc = t.access(A(r, p), 1, True, fill=fill, stride=PS)
        else:
            acc = t.access(A(r, p), 8, False, want_data=True)
        side.acc[tn] = (acc, base)
        return ("started",)
    if k == "copy":
        _, r, p, n, sp, mode = op
        ps = side.regions[r].page_size
        return _call(lambda: u.copy(A(r, p), side.regions[0].addr + sp * ps, n * ps, mode))
    if k == "zeropage":
        return _call(lambda: u.zeropage(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, op[4]))
    if k == "continue":
        return _call(lambda: u.continue_(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, op[4]))
    if k == "writeprotect":
        return _call(lambda: u.writeprotect(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, op[4]))
    if k == "poison":
        return _call(lambda: u.poison(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, op[4]))
    if k == "wake":
        return _call(lambda: u.wake(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size))
    if k == "move":
        _, r, p, rs, sp, n, mode = op
        return _call(lambda: u.move(A(r, p), A(rs, sp), n * side.regions[r].page_size, mode))
    if k == "register":
        return _call(lambda: u.register(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, op[4]))
    if k == "unregister":
        return _call(lambda: u.unregister(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size))
    if k == "read_msgs":
        msgs = u.read_msgs()
        return ("msgs", msgs)
    if k == "clear_refs":
        return _call(lambda: b.clear_refs(op[1]))
    if k == "madvise":
        advice = {"hugepage": uapi.MADV_HUGEPAGE, "nohugepage": uapi.MADV_NOHUGEPAGE,
                  "collapse": uapi.MADV_COLLAPSE}[op[4]]
        return _call(lambda: b.madvise(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, advice))
    if k in ("dontneed", "pageout", "free"):
        advice = {"dontneed": uapi.MADV_DONTNEED, "pageout": uapi.MADV_PAGEOUT, "free": uapi.MADV_FREE}[k]
        if k in ("pageout", "free"):
            b.lru_drain()            # a folio still in another CPU's LRU batch is skipped by MADV_PAGEOUT, and
            #                          by lru_lazyfree_fn() after MADV_FREE (it then stays swap-backed)
        r = _call(lambda: b.madvise(A(op[1], op[2]), op[3] * side.regions[op[1]].page_size, advice))
        if k == "pageout" and b.name == "kernel":
            wait_writeback()
        return r
    if k == "cache_write":
        a = side.aliases[op[1]]
        return _call(lambda: b.write(a.addr + op[2] * a.page_size, bytes([op[3]])))
    if k == "mprotect":                 # read-only (or none) and back: never leaves a region a write would SIGSEGV in
        ln = op[3] * side.regions[op[1]].page_size
        prot = uapi.PROT_NONE if op[4:] == ["none"] else uapi.PROT_READ
        return (_call(lambda: b.mprotect(A(op[1], op[2]), ln, prot)),
                _call(lambda: b.mprotect(A(op[1], op[2]), ln, uapi.PROT_READ | uapi.PROT_WRITE)))
    if k == "scan":
        _, r, p, n, flags, mask, ret, maxp, vlen = op
        base = side.regions[r].addr
        ps = side.regions[r].page_size

        def scan():
            res = b.pagemap_scan(A(r, p), A(r, p) + n * ps, flags=flags, category_mask=mask, return_mask=ret,
                                 max_pages=maxp, vec_len=vlen)
            return ("scan", [(s - base, e - base, c) for s, e, c in res.regions], res.walk_end - base)
        try:
            return scan()
        except UffdError as e:
            return ("err", errno.errorcode.get(e.errno, e.errno))
    if k == "mremap":
        r = side.regions[op[1]]
        ps = r.page_size
        if op[2] == "shrink":
            res = _call(lambda: b.mremap(r.addr, r.len, max(ps, r.len // ps // 2 * ps), 0))
        else:
            new_len = r.len + (ps if op[2] == "grow" else 0)
            used = [(x.addr, x.end) for _, x in side.all_regions]
            target = alone_in_a_gib(b, new_len, used) if r.memtype.hugetlb else _free_aligned(b, new_len, used)
            res = _call(lambda: b.mremap(r.addr, r.len, new_len,
                                         uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, target))
        if res[0] == "ok":
            new = b.regions[r.name]        # the backend's bookkeeping followed the mapping
            if new.addr != r.addr:
                fence(b, new)
            side.regions[op[1]] = new
            side.all_regions.append((op[1], new))
            res = ("ok", "moved" if new.addr != r.addr else "in place", new.len // ps)
        return res
    if k == "munmap":
        r = side.regions[op[1]]
        res = _call(lambda: b.munmap(r.addr, r.len))
        side.regions[op[1]] = None
        if op[1] in side.aliases:
            a = side.aliases.pop(op[1])
            b.munmap(a.addr, a.len)
        return res
    raise ValueError(f"unknown op {k!r}")


def applicable_fork(emu: Side, op) -> bool:
    k = op[0]
    if k == "fork":
        return emu.fork_acc is None
    if k == "madvise_fork":
        return emu.regions[op[1]] is not None
    live = emu.child is not None and not emu.child_dead
    if k == "kill":
        return live
    if not live:
        return False
    inner = op[1]
    if inner[0] in ("copy", "zeropage", "writeprotect", "read_msgs") and emu.cu is None:
        return False
    view = ChildView(emu)
    if inner[0] == "read_msgs":
        return True
    r = inner[2] if inner[0] == "touch" else inner[1]
    if view.regions[r] is None:
        return False
    if inner[0] == "touch":
        if CHILD in emu.acc and not emu.acc[CHILD][0].done or inner[3] >= view.regions[r].pages:
            return False
        a = view.addr(r, inner[3])
        ps = view.regions[r].page_size
        return not any(not acc.done and acc.waiter is not None and acc.waiter.msg.address // ps == a // ps
                       for acc, _ in emu.acc.values())
    if inner[0] == "dontneed" and CHILD in emu.acc and not emu.acc[CHILD][0].done:
        return False               # the child's only thread is blocked in a fault: it makes no system call
    return inner[2] + inner[3] <= view.regions[r].pages


def applicable(emu: Side, op) -> bool:
    """Decided on the emulator's state, applied to both."""
    k = op[0]
    if k in ("fork", "kill", "madvise_fork", "child"):
        return applicable_fork(emu, op)
    regs = [] if k in ("read_msgs", "clear_refs") else [op[2]] if k == "touch" else [op[1]]
    if k == "move":
        regs.append(op[3])
    if any(emu.regions[r] is None for r in regs):
        return False
    # a region shrunk by mremap: ranges past its end would reach addresses that are no longer the test's
    if k in ("copy", "zeropage", "continue", "writeprotect", "wake", "poison", "register", "unregister", "dontneed",
             "mprotect", "scan", "pageout", "free", "madvise") and op[2] + op[3] > emu.regions[op[1]].pages:
        return False
    if k == "touch" and op[3] >= emu.regions[op[2]].pages:
        return False
    if k == "move" and (op[2] + op[5] > emu.regions[op[1]].pages or op[4] + op[5] > emu.regions[op[3]].pages):
        return False
    if k == "mremap":
        return not any(not a.done for a, _ in emu.acc.values())  # never move pages under a blocked fault
    if k == "touch":
        tn = op[1]
        if tn in emu.acc and not emu.acc[tn][0].done:
            return False
        # two threads released by one wake race on the kernel: one blocked access per page
        a = emu.addr(op[2], op[3])
        ps = emu.regions[op[2]].page_size
        for acc, _ in emu.acc.values():
            if not acc.done and acc.waiter is not None and acc.waiter.msg.address // ps == a // ps:
                return False
        return emu.b.mm.find_vma(a) is not None
    if k == "cache_write":
        return op[1] in emu.aliases
    if k == "munmap":
        return not any(not a.done for a, _ in emu.acc.values())  # no access may be left blocked on it
    if k == "register" and not op[4] & R.WP and emu.regions[op[1]].memtype.hugetlb:
        # dropping WP from a hugetlb VMA strands uffd-wp bits: a later write livelocks the kernel thread
        # (mm.VM_FAULT_LIVELOCK), which the test could then neither stop nor unmap under
        v = emu.b.mm.vmas_in(emu.addr(op[1], op[2]), emu.addr(op[1], op[2] + op[3]))
        return not any(x.flags & 0x1000 for x in v)
    return True


def _wchan(path) -> str:
    try:
        with open(f"{path}/wchan") as f:
            return f.read()
    except OSError:
        return ""


# A kernel without CONFIG_KALLSYMS (the tiny kernels scripts/vmtest builds) has no /proc/kallsyms and names no
# wchan (proc_pid_wchan() prints "0"); there a task that sleeps (S, or D: TASK_KILLABLE) in a page fault (its
# syscall file says -1) or in fork(2) stands in for handle_userfault / userfaultfd_event_wait_completion.
_KALLSYMS = os.path.exists("/proc/kallsyms")
_FORK_SYSCALLS = ("56", "57", "58", "435")      # x86-64 clone, fork, vfork, clone3


def _sleeps_in(path, symbol: str, syscalls=None) -> bool:
    if _KALLSYMS:
        return _wchan(path) == symbol
    try:
        with open(f"{path}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{path}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return state in ("S", "D") and (nr == "-1" if syscalls is None else nr in syscalls)


def settle(ks: Side, es: Side, step: int):
    """Wait for the kernel's threads to reach the state the emulator is in, then compare accesses."""
    for tn, (eacc, _) in es.acc.items():
        kacc, base = ks.acc[tn]
        if eacc.done:
            if not kacc.wait(SETTLE):
                raise Divergence(step, f"{tn} access finished", False, True)
        else:
            deadline = time.monotonic() + SETTLE
            while time.monotonic() < deadline and not kacc.done:
                if _sleeps_in(ks.task_path(tn), "handle_userfault") and ks.vcsw(tn) - base >= eacc.blocks:
                    break
                time.sleep(0.0005)
            if kacc.done:
                raise Divergence(step, f"{tn} access finished", True, False)
        kres = _acc_view(ks, kacc)
        eres = _acc_view(es, eacc)
        if tn in es.nocount and kres[0] == eres[0] == "done":
            kres, eres = ("done", kres[3]), ("done", eres[3])
        if kres != eres:
            raise Divergence(step, f"{tn} access result", kres, eres)


def _acc_view(side, acc):
    if not acc.done:
        return ("blocked",)
    r = acc.result()
    if getattr(r, "sigsegv", False):          # the child's command loop reports it (a MADV_DONTFORK region)
        return ("sigsegv", side.where(r.fault_addr))
    if r.sigbus:
        return ("sigbus", side.where(r.fault_addr))
    return ("done", r.minflt, r.majflt, r.data)


def settle_fork(ks: Side, es: Side, step: int) -> None:
    """fork() returns once its FORK messages are read: when the emulator's has, the kernel's must (then both
    children are registered, their uffds adopted); while the emulator's has not, neither may the kernel's."""
    if es.fork_acc is None or es.child is not None:
        return
    if not es.fork_acc.done and not ks.fork_acc.done:
        # the kernel's fork(2) runs on a job thread: wait until it sleeps for its FORK message to be read
        from uffdctl.process import job_thread
        tid = job_thread(ks.b, "__fork")._t.native_id
        deadline = time.monotonic() + SETTLE
        while (not _sleeps_in(f"/proc/self/task/{tid}", "userfaultfd_event_wait_completion", _FORK_SYSCALLS)
               and not ks.fork_acc.done):
            if time.monotonic() > deadline:
                raise Divergence(step, "fork blocked until its FORK message is read", "not blocked", "blocked")
            time.sleep(0.0005)
    if es.fork_acc.done:
        if not ks.fork_acc.wait(SETTLE):
            raise Divergence(step, "fork returned", False, True)
        register_child(ks)
        register_child(es)
    elif ks.fork_acc.done:
        raise Divergence(step, "fork returned", True, False)


def _msgs_view(side, msgs):
    tids = {t.tid: n for n, t in side.threads.items()}
    # sorted: faults racing after one wake queue in scheduler order on the kernel
    return sorted((m.event_name, m.flags, side.where(m.address), tids.get(m.ptid, m.ptid)) for m in msgs)


class Clock:
    """Seconds spent on each side of the lock-step run (``emu``: the emulator's ops, snapshots and setup;
    ``kernel``: the same on the kernel plus waiting for its threads to settle)."""

    def __init__(self):
        self.emu = self.kernel = 0.0
        self._t = time.perf_counter()

    def lap(self, side: str) -> None:
        now = time.perf_counter()
        setattr(self, side, getattr(self, side) + now - self._t)
        self._t = now


CLOCK = Clock()


def run(seq: dict, kb, eb, zero_pfn: int, clock: Clock = CLOCK) -> int:
    """Run ``seq`` on both backends; raise Divergence on the first difference; returns ops applied."""
    clock.lap("kernel")
    ks = Side(kb, seq, zero_pfn)
    clock.lap("kernel")
    es = Side(eb, seq, eb.mm.zero_page.pfn)
    clock.lap("emu")
    applied = 0
    fails0 = thp_fail_counts() if ks.thp else {}
    try:
        for step, op in enumerate(seq["ops"], 1):   # numbered as render() numbers them
            try:
                applied += _step(ks, es, step, op, clock)
            except Divergence as d:
                if ks.thp:
                    _thp_excuse(ks, es, op, d, fails0)
                raise
    finally:
        clock.lap("kernel")
        for side in (es, ks):
            # a FORK message still unread must be read first: until fork() returns, the child's copy of our fd
            # table keeps the uffd open, so close() would release nothing (and leave every fault blocked)
            deadline = time.monotonic() + SETTLE
            while side.fork_acc is not None and not side.fork_acc.done and time.monotonic() < deadline:
                adopt_fork(side, side.u.read_msgs())
                side.fork_acc.wait(0.001)
            side.u.close()
            if side.cu is not None:
                side.cu.close()
            elif side.child_ufd is not None and side.b.name == "kernel":
                os.close(side.child_ufd)
            if side.fork_acc is not None and side.fork_acc.wait(SETTLE):
                try:
                    side.fork_acc.result().close()     # kill and reap the child
                except Exception:                      # the fork itself failed: nothing to reap
                    pass
            clock.lap("emu" if side is es else "kernel")
        # close() released every fault: the kernel's accesses must finish before the regions go away -- but for
        # one the model says faults forever after the release (a hugetlb write on a uffd-wp PTE the release
        # left behind, before 6.1.191), which must be seen spinning and is then un-protected to end it
        spin = {tn for tn, (eacc, _) in es.acc.items() if tn != CHILD and getattr(eacc, "spinning", False)}
        states = {tn: _released_or_spinning(ks, tn, kacc) for tn, (kacc, _) in ks.acc.items() if tn != CHILD}
        clock.lap("kernel")
        stuck = [tn for tn, st in states.items() if st != "released" and tn not in spin]
        if stuck:
            kb.stuck = True
            raise Divergence(-1, f"kernel access of {stuck} still running 10 s after the uffd was closed",
                             states[stuck[0]], "released")
        wrong = [tn for tn in spin if states.get(tn) != "spinning"]
        if wrong:
            raise Divergence(-1, f"access of {wrong} after the uffd was closed", states.get(wrong[0]), "spinning")
        for tn in sorted(spin):
            if not _unprotect_spinning(ks, tn):
                kb.stuck = True
                raise Divergence(-1, f"kernel access of {tn} spinning after the uffd was closed goes on after "
                                 "un-protecting its page", "spinning", "released")
    return applied


def _released_or_spinning(ks: Side, tn: str, acc, bound: float = 10) -> str:
    """A kernel access after the uffd's release: "released" once it finishes; "spinning" once its thread has
    taken 1,000 faults more without finishing (faulting forever: the livelock the model predicts); else
    "running" when ``bound`` seconds pass with neither (blocked)."""
    t = ks.threads[tn]
    before = t.faults()[0]
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if acc.wait(0.05):
            return "released"
        if t.faults()[0] - before > 1000:
            return "released" if acc.done else "spinning"
    return "released" if acc.done else "running"


def _unprotect_spinning(ks: Side, tn: str, bound: float = 10) -> bool:
    """End a kernel access that faults forever on a uffd-wp PTE of a VMA the closed uffd left: a fresh uffd
    registers WP over its page and un-protects it (test_hugetlb_stale_uffd_wp_livelock's recipe, WAKE for a
    message the spinning writer may queue on its way into handle_userfault()).  True once it finished."""
    r, p = ks.acc_at[tn]
    reg = ks.regions[r]
    page = ks.addr(r, p)
    acc = ks.acc[tn][0]
    u = ks.b.userfaultfd()
    try:
        u.api(0)
        u.register(reg.addr, reg.len, R.WP)
        u.writeprotect(page, reg.page_size, 0)
        deadline = time.monotonic() + bound
        while not acc.wait(0.05) and time.monotonic() < deadline:
            if u.read_msgs():
                u.wake(page, reg.page_size)
        return acc.done
    finally:
        u.close()


def _step(ks: Side, es: Side, step: int, op, clock: Clock = CLOCK) -> int:
    """One op on both sides and the comparison after it; 0 if it does not apply."""
    if not applicable(es, op):
        return 0
    blocked = {tn for tn, (acc, _) in es.acc.items() if not acc.done}
    er = apply(es, op)
    clock.lap("emu")
    _racing_thp_faults(es, blocked)
    inner = op[1] if op[0] == "child" else op
    if inner[0] == "touch":
        # A fault decides on folio reference counts that a folio in some CPU's LRU batch raises (lru_add after
        # a fault or swap-in, lru_move_tail once a swap writeback completes): wp_can_reuse_anon_folio() copies
        # when folio_ref_count() > 1 + swapcache, and lru_add_drain()s only the faulting CPU; do_swap_page()
        # maps writable only at refcount 1.  The model has no batches, so the kernel side drains every CPU's
        # first, as before reclaim advice [seed 657391420: fork, kill, pageout, a read swap-in by t0, and t1's
        # write copied the page; with the batches drained it is reused, as the model says].
        ks.b.lru_drain()
    kr = apply(ks, op)
    try:
        return _compare(ks, es, step, op, inner, kr, er, clock)
    except Divergence as d:
        _hugetlb_pool_excuse(ks, d)
        _merged_region_excuse(ks, d)
        raise


def _merged_region_excuse(ks: Side, d: Divergence) -> None:
    """A region whose VMA reaches past it merged with another anon VMA of this process (vma_merge(): same flags,
    and an anon_vma on at most one side) -- one the model does not have, whose anon_vma the region then shares:
    fork copies its PTEs (vma_needs_copy()) where the model's child gets none.  aligned_mmap() leaves a gap on
    both sides, but a later mapping of this process may fill one [CI seed 1644 under load, once in ten runs: a
    zero-page read, then fork, and the kernel's child had the zero page]."""
    for i, r in ks.all_regions:
        if r is None or ks.b.regions.get(r.name) is not r:
            continue                                      # unmapped, or moved on since
        lo, hi = ks.b.vma_bounds(r.addr) or (r.addr, r.end), ks.b.vma_bounds(r.end - 1) or (r.addr, r.end)
        if lo[0] < r.addr or hi[1] > r.end:
            raise ThpShortfall(f"step {d.step}: {d.what}: r{i}'s VMAs reach {lo[0]:#x}-{hi[1]:#x}, past the "
                               f"region {r.addr:#x}-{r.end:#x}: merged with a mapping of this process the model "
                               "does not have") from None


def _hugetlb_pool_excuse(ks: Side, d: Divergence) -> None:
    """A page no mapping reserved (a private mapping's child: its COW and COPY pages; the owner's pages are
    reserved at mmap) comes from the pool's unreserved free pages, and a COPY whose source is not faulted in holds
    a temporary folio besides it (hugetlb_mfill_atomic_pte() -> alloc_hugetlb_folio_vma()): short of two, the
    kernel's COPY stops (ENOMEM, or the ioctl's EAGAIN with the pages done) or the fault is SIGBUS, where the
    model's pool never runs dry [a soak whose children held 21 pages beyond leaked reservations: a child's 3-page
    COPY gave EAGAIN after 1; that sequence with nr_hugepages=8 (6 reserved) gives EAGAIN after 1, with 7 ENOMEM]."""
    if not any(r.memtype.hugetlb for _, r in ks.all_regions):
        return
    mi = meminfo()
    free, rsvd = mi.get("HugePages_Free", 0), mi.get("HugePages_Rsvd", 0)
    if free - rsvd < 2 and any(w in str(d.kernel) for w in ("EAGAIN", "ENOMEM", "sigbus")):
        raise HugetlbShortfall(f"step {d.step}: {d.what}: the kernel's {d.kernel} with {free - rsvd} unreserved "
                               f"huge pages left (HugePages_Free {free}, Rsvd {rsvd})") from None


def _compare(ks: Side, es: Side, step: int, op, inner, kr, er, clock: Clock) -> int:
    """The comparison after ``op`` ran on both sides (``kr``, ``er``: its results)."""
    settle(ks, es, step)
    if inner[0] == "read_msgs":
        ku = ks.cu if op[0] == "child" else ks.u
        kmsgs = kr[1]
        deadline = time.monotonic() + SETTLE
        while len(kmsgs) < len(er[1]) and time.monotonic() < deadline:
            time.sleep(0.001)
            kmsgs += ku.read_msgs()
        adopt_fork(ks, kmsgs)
        adopt_fork(es, er[1])
        kr, er = _msgs_view(ks, kmsgs), _msgs_view(es, er[1])
    settle_fork(ks, es, step)
    if kr != er:
        raise Divergence(step, f"{op[0]} result", kr, er)
    ksnap = ks.snapshot()
    clock.lap("kernel")
    esnap = es.snapshot()
    clock.lap("emu")
    if ksnap != esnap:
        kd = [x for x in ksnap if x not in esnap]
        ed = [x for x in esnap if x not in ksnap]
        raise Divergence(step, "pagemap", kd[:8], ed[:8])
    return 1


def _racing_thp_faults(es: Side, blocked: set) -> None:
    """Accesses one op releases together (UNREGISTER, a WAKE of a range) retry at once on the kernel; two of them
    in one PMD of a THP region race in the huge-page fault: a read may map the huge zero PMD while a write
    allocates a THP, finds the PMD taken, and faults again (2 minor faults, or 1, by the scheduler [soak seed
    719996764: 3 of 9 replays]).  The model runs them in order, so their fault counts are not compared."""
    woke = [tn for tn in blocked if tn in es.acc and es.acc[tn][0].done and es.acc_at.get(tn, (None,))[0] in es.thp]
    pmds: dict = {}
    for tn in woke:
        r, p = es.acc_at[tn]
        pmds.setdefault((r, p // (HP // PS)), []).append(tn)
    for group in pmds.values():
        if len(group) > 1:
            es.nocount.update(group)


def _thp_excuse(ks: Side, es: Side, op, d: Divergence, fails0: dict) -> None:
    """Raise ThpShortfall when ``d`` is the kernel's THP allocation failing, with the run-time evidence."""
    if op[0] == "madvise" and op[4] == "collapse" and d.what == "madvise result" and d.emu == ("ok", None) \
            and d.kernel[:2] in (("err", "ENOMEM"), ("err", "EAGAIN")):
        raise ThpShortfall(f"step {d.step}: the kernel's MADV_COLLAPSE gave {d.kernel[1]} (no huge page / a "
                           f"page busy: transient) where the model collapsed") from None
    fails = {k: v - fails0.get(k, 0) for k, v in thp_fail_counts().items() if v != fails0.get(k, 0)}
    kh, eh = _huge_pages(ks.huge_snapshot()), _huge_pages(es.huge_snapshot())
    if fails and kh < eh:
        raise ThpShortfall(f"step {d.step}: the kernel has {kh} huge pages where the model has {eh}, and "
                           f"/proc/vmstat counted {fails} during the sequence (THP allocation failed)") from None


def shrink(seq: dict, check) -> dict:
    """Greedy delta debugging: drop ops (and then regions' spare pages) while ``check(seq)`` still fails."""
    ops = list(seq["ops"])
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(ops))):
            trial = {**seq, "ops": ops[:i] + ops[i + 1:]}
            if check(trial):
                ops = trial["ops"]
                changed = True
    out = {**seq, "ops": ops}
    if out["features"]:
        for f in uapi.Feature:
            if out["features"] & f:
                trial = {**out, "features": out["features"] & ~int(f)}
                if check(trial):
                    out = trial
    return out


def save(seq: dict, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"diff-repro-{os.getpid()}-{int(time.time() * 1000)}.json")
    with open(path, "w") as f:
        json.dump(seq, f)
    return path


# -- the tests ------------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("UFFDCTL_DIFF_EXAMPLES", "2000"))
SECONDS = float(os.environ.get("UFFDCTL_DIFF_SECONDS", str(max(240, EXAMPLES * 0.15))))
REPRO_DIR = os.environ.get("UFFDCTL_DIFF_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "uffdctl-diff"))


def thp_reason(kb) -> str | None:
    """Why THP regions are left out: the kernel's own knobs (anon PMD THP with MADV_HUGEPAGE)."""
    text = kb.thp_knob("enabled")
    if text is None:
        return "no /sys/kernel/mm/transparent_hugepage (CONFIG_TRANSPARENT_HUGEPAGE=n)"
    per = kb.thp_knob("hugepages-2048kB/enabled") or "[inherit]"
    if "[never]" in per or "[inherit]" in per and "[never]" in text:
        return f"anon PMD THP is off here: enabled is {text!r}, hugepages-2048kB/enabled {per!r}"
    return None


def mirror_thp_knobs(kb, eb) -> dict:
    """Set the emulator's own THP knobs to the host kernel's current values (read from the kernel backend, never
    by the emulator); returns the kernel's texts, to see whether they changed during a run."""
    import re
    knobs = {}
    for k in sorted(eb.mm.thp.choices):
        text = kb.thp_knob(k)
        if text is None:
            continue
        knobs[k] = text
        m = re.search(r"\[([\w+-]+)\]", text)
        eb.set_thp_knob(k, m.group(1) if m else text)
    return knobs


def emu_6_18():
    from uffdctl.emu import EmuBackend
    return EmuBackend(profile="6.18", soft_dirty=False)


def shmem_thp_knobs_on() -> list[str]:
    """The host's shmem THP knobs that would give a shmem fault a large folio (the model's shmem has 4 KiB
    pages): another test's thp_pushed() sets one to 'always' for the length of one script."""
    base = "/sys/kernel/mm/transparent_hugepage"
    on = []
    for path in [f"{base}/shmem_enabled"] + sorted(glob.glob(f"{base}/hugepages-*/shmem_enabled")):
        try:
            mode = open(path).read().split("[")[1].split("]")[0]
        except (OSError, IndexError):
            continue
        if mode in ("always", "within_size"):
            on.append(f"{path}={mode}")
    return on


THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage")


def thp_knobs() -> dict:
    """The host's THP settings (enabled / shmem_enabled, top level and per size), as sysfs shows them."""
    out = {}
    for f in sorted(THP_SYSFS.glob("**/*enabled")):
        try:
            out[str(f.relative_to(THP_SYSFS))] = f.read_text().strip()
        except OSError:
            pass
    return out


def wait_for_thp_knobs(want: dict, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while thp_knobs() != want and time.monotonic() < deadline:
        time.sleep(0.2)


KHUGEPAGED_SLEEP = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"


@contextlib.contextmanager
def khugepaged_paused():
    """khugepaged collapses a MADV_HUGEPAGE region with a single page present (max_ptes_none=511) whenever its
    scan reaches it, every scan_sleep_millisecs (10 s by default); the model has no khugepaged thread, so a
    sequence that ran past a wakeup diverged: in a slow guest column (make test-kernels' backport and rfc columns,
    seed 31) 512 new PFNs appeared after a one-page MADV_PAGEOUT.  The run sets a day's sleep first (the write
    wakes khugepaged for one pass, before any sequence's region exists) and restores the value after.  The
    generator's MADV_COLLAPSE is synchronous and unaffected.

    khugepaged also wakes, whatever its sleep, when an mm joins its empty list (__khugepaged_enter()): this
    process's first THP fault or MADV_HUGEPAGE of a VMA with an anon_vma, which is a sequence's -- in a fresh
    process (a replay, or CI's first THP sequence) it then scanned that region and collapsed a PMD that a COPY had
    just filled (soak seed 316255611's reproducer: a read fault in the other PMD, thp_collapse_alloc +1 during a
    0.75 s replay, every time).  So this process joins the list first, with
    a throwaway MADV_HUGEPAGE mapping (an mm stays on it until it exits), and the pause waits for the pass its
    own write starts (full_scans changes, bounded)."""
    try:
        _join_khugepaged()
        scans = _full_scans()
        _pausers(+1)
    except OSError:            # no THP, or not root: nothing to pause
        yield
        return
    deadline = time.monotonic() + SETTLE
    while _full_scans() == scans and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        yield
    finally:
        _pausers(-1)


PAUSE_STATE = "/run/uffdctl-khugepaged-pause.json"


def _pausers(delta: int) -> None:
    """Join (+1) or leave (-1) the processes pausing khugepaged, under a lock: the first saves the sleep and
    sets a day's, the last out puts the saved one back.  Two test runs at once (make test beside a soak, or
    test_softdirty's pause beside test_differential's) each saved and restored the value they found, and
    the one that ended last left khugepaged paused for good; a pauser that died is dropped at the next
    change (its pid gone)."""
    import fcntl
    with open(PAUSE_STATE + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(PAUSE_STATE) as f:
                st = json.load(f)
        except (OSError, ValueError):
            st = None
        with open(KHUGEPAGED_SLEEP) as f:
            now = f.read().strip()
        pids = [p for p in (st or {}).get("pids", []) if os.path.exists(f"/proc/{p}")]
        orig = st["orig"] if st and (pids or now == PAUSED) else now
        if delta > 0:
            pids.append(os.getpid())
        elif os.getpid() in pids:
            pids.remove(os.getpid())
        if pids:
            with open(KHUGEPAGED_SLEEP, "w") as f:
                f.write(PAUSED)
            with open(PAUSE_STATE, "w") as f:
                json.dump({"orig": orig, "pids": pids}, f)
        else:
            with open(KHUGEPAGED_SLEEP, "w") as f:
                f.write(orig if orig != PAUSED else "10000")
            with contextlib.suppress(OSError):
                os.unlink(PAUSE_STATE)


PAUSED = "86400000"


def _full_scans() -> int:
    with open(os.path.join(os.path.dirname(KHUGEPAGED_SLEEP), "full_scans")) as f:
        return int(f.read())


def _join_khugepaged() -> None:
    """Put this process's mm on khugepaged's list (MMF_VM_HUGEPAGE): khugepaged_enter_vma() takes it only from a VMA
    thp_vma_allowable_order() allows, which needs an aligned 2 MiB in it and an anon_vma (a touched page; a VMA
    without one allows no order outside a fault) -- then MADV_HUGEPAGE, and unmapped."""
    import mmap
    m = mmap.mmap(-1, 2 * HP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m[0] = 1
        m.madvise(mmap.MADV_HUGEPAGE)
    finally:
        m.close()


@pytest.fixture(autouse=True, scope="module")
def _khugepaged_paused():
    with khugepaged_paused():
        yield


class Runner:
    """Fresh backends per sequence; the kernel's zero-page PFN probed once."""

    def __init__(self, make_emu=emu_6_18):
        self.make_emu = make_emu
        self.thp = thp_knobs()     # the host's THP settings the model is held to (THP only where madvised)
        self.not_compared: list[str] = []      # ThpShortfall reasons
        kb = make_backend("kernel")
        try:
            self.zero_pfn = zero_pfn(kb)
            self.memtypes = [MemType.ANON.value, MemType.SHMEM.value, MemType.SHMEM_PRIVATE.value, "file",
                             "file-private"]
            mi = meminfo()    # free and not reserved by another process's mapping
            if hugetlb_reason(kb) is None and mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0) >= 16:
                self.memtypes += [MemType.HUGETLB.value, MemType.HUGETLB_PRIVATE.value]
            if thp_reason(kb) is None:
                self.memtypes.append("thp")
        finally:
            kb.close()

    def run(self, seq) -> int:
        CLOCK.lap("kernel")
        kb = make_backend("kernel")
        CLOCK.lap("kernel")
        eb = self.make_emu()
        if active_swaps():                        # the emulated machine mirrors the host: a swap device or none
            eb.swap_on(SWAP_SIZE)
        CLOCK.lap("emu")
        try:
            knobs = mirror_thp_knobs(kb, eb)
            try:
                return run(seq, kb, eb, self.zero_pfn)
            except OutOfMemory as e:
                if not any(_mt(g["type"]).hugetlb for g in seq["regions"]):
                    raise
                pool = {k: meminfo().get(k) for k in ("HugePages_Free", "HugePages_Rsvd")}
                raise HugetlbShortfall(f"a hugetlb region could not be mapped: {e} ({pool})") from None
            finally:
                now = {k: kb.thp_knob(k) for k in knobs}
                if now != knobs:     # a concurrent test pushed a THP size: this run compared two kernels
                    changed = {k: (knobs[k], now[k]) for k in knobs if now[k] != knobs[k]}
                    raise ThpShortfall(f"the host's THP knobs changed during the sequence: {changed}")
        finally:
            if not getattr(kb, "stuck", False):   # never unmap under a thread still touching the memory
                kb.close()
            CLOCK.lap("kernel")
            eb.close()
            CLOCK.lap("emu")

    def diverges(self, seq) -> Divergence | None:
        last = None
        for _ in range(3):
            before = thp_knobs()
            try:
                self.run(seq)
            except Divergence as d:
                if before == thp_knobs() == self.thp:
                    return d
                last = d
                wait_for_thp_knobs(self.thp)
                continue
            except ThpShortfall as e:
                self.not_compared.append(str(e))
            return None
        return last

    def minimal(self, seq) -> dict:
        return shrink(seq, lambda s: self.diverges(s) is not None)

    def report(self, seq, d: Divergence, small: dict | None = None) -> str:
        small = small or self.minimal(seq)
        d2 = self.diverges(small) or d
        path = save(small, REPRO_DIR)
        return (f"emulator and kernel diverge at op {d2.step} ({d2.what}):\n  kernel: {d2.kernel!r}\n"
                f"  emu:    {d2.emu!r}\nminimal reproducer ({len(small['ops'])} ops):\n{render(small)}\n"
                f"rerun: {replay_command(path)}")


@pytest.mark.kernel
def test_differential(host_swap_module):
    """EXAMPLES random sequences, kernel vs emulator, zero divergences; with a swap device on both (MADV_PAGEOUT
    makes swap entries)."""
    seed = int(os.environ.get("UFFDCTL_DIFF_SEED", str(random.randrange(1 << 30))))
    runner = Runner()
    only = [m for m in os.environ.get("UFFDCTL_DIFF_MEMTYPES", "").split(",") if m]
    if only:            # e.g. UFFDCTL_DIFF_MEMTYPES=thp: only those memory types (the ones this host has)
        runner.memtypes = [m for m in runner.memtypes if m in only]
        assert runner.memtypes, f"UFFDCTL_DIFF_MEMTYPES={','.join(only)}: none of them here ({Runner().memtypes})"
    knobs = shmem_thp_knobs_on()
    if knobs:   # another process's test switched a shmem THP size on: shmem faults there get large folios
        runner.memtypes = [m for m in runner.memtypes if m == "thp" or not _mt(m).file_backed]
        print(f"differential: shmem memory types left out: {', '.join(knobs)} on this host now", flush=True)
    print(f"differential: seed {seed}, {EXAMPLES} sequences, memory types {runner.memtypes}", flush=True)
    deadline = time.monotonic() + SECONDS
    done = ops = 0
    unconfirmed, knob_busy = [], []
    CLOCK.__init__()
    t0 = time.perf_counter()
    pool = HugetlbPoolKeeper()
    try:
        for i in range(EXAMPLES):
            if time.monotonic() > deadline:
                break
            seq = gen_sequence(random.Random(seed + i), runner.memtypes)
            if any(_mt(g["type"]).hugetlb for g in seq["regions"]):
                pool.top_up()
            done, ops = _compare_one(runner, seq, seed + i, unconfirmed, knob_busy, done, ops)
    finally:
        pool.restore()
    _report_run(runner, seed, done, ops, unconfirmed, knob_busy, t0, pool)


class HugetlbPoolKeeper:
    """A long run drains the huge-page pool: reservations no live sequence holds pile up in this process (a
    hugetlb-only soak here: HugePages_Rsvd 46 of 64 after 4 minutes, back to 0 once the process exited; no fd or
    mapping of the harness was left over in a 150-sequence check; the kernel's mremap of part of a private
    hugetlb mapping is one known leak, scripts/kernel-repro/hugetlb-mremap-resv-leak.c), and then 2,960
    sequences could not map their regions.  As root, the run grows vm.nr_hugepages back to 16 usable pages
    before each hugetlb sequence (at most ``cap`` pages in all) and restores the old value after."""

    NR = "/proc/sys/vm/nr_hugepages"

    def __init__(self, need: int = 16, cap: int = 512):
        self.need, self.cap, self.added, self.orig = need, cap, 0, None

    def top_up(self) -> None:
        mi = meminfo()
        short = self.need - (mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0))
        if short <= 0 or self.added + short > self.cap:
            return
        try:
            with open(self.NR) as f:
                nr = int(f.read())
            with open(self.NR, "w") as f:
                f.write(str(nr + short))
        except OSError:
            return
        if self.orig is None:
            self.orig = nr
        self.added += short

    def restore(self) -> None:
        if self.orig is not None:
            with contextlib.suppress(OSError), open(self.NR, "w") as f:
                f.write(str(self.orig))


def _compare_one(runner, seq, seed: int, unconfirmed: list, knob_busy: list, done: int, ops: int):
    d = runner.diverges(seq)
    if d is not None:
        # the kernel side is concurrent: a divergence counts once it repeats on a rerun
        if runner.diverges(seq) is None and runner.diverges(seq) is None:
            unconfirmed.append((seed, str(d)))
        elif shmem_thp_knobs_on() and any(_mt(g["type"]).file_backed for g in seq["regions"]):
            # another process switched a shmem THP size on for a while: this host is not the model now
            print(f"differential: seed {seed} not compared: {', '.join(shmem_thp_knobs_on())}")
            knob_busy.append(seed)
        else:
            pytest.fail(f"seed {seed} (UFFDCTL_DIFF_SEED={seed} UFFDCTL_DIFF_EXAMPLES=1): "
                        + runner.report(seq, d), pytrace=False)
    return done + 1, ops + len(seq["ops"])


def _report_run(runner, seed: int, done: int, ops: int, unconfirmed: list, knob_busy: list, t0: float,
                pool: HugetlbPoolKeeper) -> None:
    wall = time.perf_counter() - t0
    if pool.added:
        print(f"differential: the huge-page pool was grown by {pool.added} pages over the run (leaked "
              "reservations), and restored")
    print(f"differential: {done} sequences ({ops} ops), seed {seed}, zero divergences; "
          f"{len(unconfirmed)} that did not repeat on two reruns: {unconfirmed}; "
          f"{len(knob_busy)} not compared while a host shmem THP knob was on: {knob_busy}")
    if runner.not_compared:
        print(f"differential: {len(runner.not_compared)} runs not compared (the kernel's THP allocation failed, "
              "its huge-page pool ran short, or the host's THP knobs changed under the run):")
        for why in runner.not_compared:
            print(f"  {why}")
    assert len(runner.not_compared) <= max(3, done // 20), \
        f"too many runs not compared: {len(runner.not_compared)} of {done}; the first: {runner.not_compared[:5]}"
    print(f"differential: {done / wall * 60:.0f} sequences/min; per sequence {wall / max(done, 1) * 1e3:.1f} ms: "
          f"emulator {CLOCK.emu / max(done, 1) * 1e3:.1f} ms, kernel {CLOCK.kernel / max(done, 1) * 1e3:.1f} ms "
          "(the kernel's includes waiting for its threads to settle)")
    assert len(knob_busy) <= done // 10, f"a host shmem THP knob was on for most of the run: {knob_busy}"
    assert len(unconfirmed) <= max(1, done // 500), f"too many non-repeating divergences: {unconfirmed}"
    assert done >= EXAMPLES, (f"only {done} of {EXAMPLES} sequences ran within {SECONDS:.0f} s "
                              "(raise UFFDCTL_DIFF_SECONDS or lower UFFDCTL_DIFF_EXAMPLES)")


@pytest.mark.kernel
@pytest.mark.skipif(not os.environ.get("UFFDCTL_DIFF_REPLAY"), reason="set UFFDCTL_DIFF_REPLAY=<file.json>")
def test_replay(host_swap_module):
    """Rerun a saved reproducer (with the swap device the differential has: MADV_PAGEOUT makes swap entries)."""
    with open(os.environ["UFFDCTL_DIFF_REPLAY"]) as f:
        seq = json.load(f)
    print(render(seq))
    Runner().run(seq)


FOUND = sorted((Path(__file__).parent / "data" / "differential").glob("*.json"))


@pytest.mark.kernel
@pytest.mark.parametrize("path", FOUND, ids=[p.stem for p in FOUND])
def test_sequences_the_soak_found(path, host_swap_module):
    """The minimal reproducers of divergences that fresh seeds found (make soak, local runs), each fixed in
    the model or the harness, replayed on both sides every run, with the differential's swap device: a fixed
    seed would not meet them again."""
    seq = json.loads(path.read_text())
    print(render(seq))
    pool = HugetlbPoolKeeper()
    try:
        if any(_mt(g["type"]).hugetlb for g in seq["regions"]):
            pool.top_up()        # a fresh machine reserves none: as root, reserve what the replay maps
            kb = make_backend("kernel")
            try:
                reason = hugetlb_reason(kb)
            finally:
                kb.close()
            if reason is not None:
                require_kernel(f"a hugetlb region: {reason}")
        Runner().run(seq)
    finally:
        pool.restore()


# A hand-written sequence the shmem un-protect rule decides (spec §2.3.6): write, WP, un-WP, write.
SHMEM_UNWP = {"regions": [{"type": "anon", "pages": SRC_PAGES}, {"type": "shmem", "pages": 2}], "features": 0,
              "ops": [["touch", "t0", 1, 0, True, 1], ["register", 1, 0, 2, 2],
                      ["writeprotect", 1, 0, 1, 1], ["writeprotect", 1, 0, 1, 0],
                      ["touch", "t0", 1, 0, True, 2]]}


def generator_catches(runner, memtypes, tries: int, what: str, *, op=None, leave_out=(), short=False, undo=None,
                      real=None, repeat=1) -> dict:
    """The random generator catches a broken model: of ``tries`` sequences over ``memtypes`` (from
    UFFDCTL_DIFF_SEED; only those with ``op`` and none of ``leave_out``), one diverges under ``runner``; its shrunk
    reproducer keeps ``op`` (``short``: reads as a report of at most 8 ops), and -- after ``undo()`` -- the
    unbroken model (``real()``, else ``runner``) agrees with the kernel on it (``repeat``: a divergence counts once
    it repeats that often).  Returns the reproducer."""
    rng_seed = int(os.environ.get("UFFDCTL_DIFF_SEED", "1"))
    for i in range(tries):
        seq = gen_sequence(random.Random(rng_seed + i), memtypes)
        if op is not None and not any(o[0] == op for o in seq["ops"]) or any(o[0] in leave_out for o in seq["ops"]):
            continue
        d = runner.diverges(seq)
        if d is None:
            continue
        small = runner.minimal(seq)
        text = runner.report(seq, d, small) if short else render(small)
        assert not short or "minimal reproducer" in text and len(small["ops"]) <= 8, text
        assert op is None or any(o[0] == op for o in small["ops"]), text
        if undo is not None:
            undo()
        check = real() if real is not None else runner
        assert any(check.diverges(small) is None for _ in range(repeat)), text
        return small
    pytest.fail(f"{tries} random sequences did not catch {what}")


def _broken_upgrade(self, vma):
    """A deliberately wrong rule: shmem MAP_SHARED un-protect makes the PTE writable (as 5.19-6.2 did)."""
    return bool(vma.flags & 0x2)


@pytest.mark.kernel
def test_differential_catches_a_broken_rule(monkeypatch):
    """The differential test can fail: break one rule of the model and it is caught, with a reproducer."""
    runner = Runner()
    assert runner.diverges(SHMEM_UNWP) is None           # the real rule agrees with the kernel
    from uffdctl.emu import mm
    monkeypatch.setattr(mm.MM, "vma_wants_manual_pte_write_upgrade", _broken_upgrade)
    d = runner.diverges(SHMEM_UNWP)
    assert d is not None and d.what == "t0 access result", d
    assert d.kernel[:2] == ("done", 1) and d.emu[:2] == ("done", 0)
    # and the random generator finds it too, then shrinks it to a readable reproducer about the broken rule
    generator_catches(runner, [MemType.SHMEM.value], 1500, "the broken un-protect rule", short=True,
                      undo=monkeypatch.undo)


@pytest.mark.kernel
@pytest.mark.parametrize("backend_name", ["kernel", "emu"])
def test_hugetlb_stale_uffd_wp_livelock(backend_name):
    """Found by the differential test: re-registering a hugetlb VMA without WP keeps the uffd-wp bit of its
    PTEs; a write then faults forever (hugetlb_wp() refuses CoW on a uffd-wp PTE and returns 0), with no
    message.  Re-registering WP and un-protecting releases it.  Both backends agree."""
    from conftest import require_kernel
    b = make_backend("kernel") if backend_name == "kernel" else emu_6_18()
    try:
        reason = hugetlb_reason(b)
        if reason:
            require_kernel(reason)
        r = b.mmap(2 * HP, MemType.HUGETLB)
        s = b.mmap(HP, MemType.ANON)
        b.write(s.addr, b"x")
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, R.MISSING | R.WP)
        u.copy(r.addr, s.addr, HP, uapi.CopyMode.WP)
        u.register(r.addr, r.len, R.MINOR)
        t = b.thread("t")
        acc = t.access(r.addr, 1, True, fill=1, stride=HP)
        before = t.faults()[0]
        assert not acc.wait(0.3) and u.read_msgs() == []
        if backend_name == "kernel":
            assert t.faults()[0] - before > 1000          # spinning, not sleeping
        u.register(r.addr, r.len, R.WP)
        u.writeprotect(r.addr, HP, 0)
        # The spinning writer may have seen the uffd-wp bit just before the un-protect and be on its way into
        # handle_userfault(): it queues a WP message after the un-protect's wake and sleeps, since
        # userfaultfd_huge_must_wait() waits on a PTE that is not writable, uffd-wp or not (a message was
        # pending and the writer asleep in 8 of 40 runs here; the old assert failed 2 in 16 differential runs).
        # A handler answers such a message with UFFDIO_WAKE; so does this test, within the same bound.
        deadline = time.monotonic() + 5
        while not acc.wait(0.1) and time.monotonic() < deadline:
            msgs = u.read_msgs()
            assert all(m.event == uapi.Event.PAGEFAULT and m.flags & uapi.PagefaultFlag.WP and
                       m.address == r.addr for m in msgs), msgs
            if msgs:
                u.wake(r.addr, HP)
        assert acc.wait(0) and not acc.result().sigbus
        u.close()
    finally:
        b.close()


# -- mremap side by side (mm/mremap.c): events, registration and uffd-wp of moved PTEs ----------------------

F = uapi.Feature
MREMAP_OPS = ("move", "part", "grow", "dontunmap", "shrink")
MREMAP_FEATURES = {"none": 0, "remap": int(F.EVENT_REMAP), "unmap": int(F.EVENT_UNMAP),
                   "remap+unmap": int(F.EVENT_REMAP | F.EVENT_UNMAP)}


def _free_aligned(b, length, avoid=()):
    """A free 2 MiB-aligned range of ``length`` that overlaps none of ``avoid`` (ranges once used: the kernel
    would hand a region's old place to the next mapping, the emulator never does)."""
    probes = []
    try:
        for i in range(16):
            probe = b.mmap(length + 2 * HP, MemType.ANON, name=f"mremap-probe{i}")
            probes.append(probe)
            # never at the probe's start: there it could abut, and merge into, a VMA of this process the model
            # lacks (see aligned_mmap; the likely cause of a divergence on the correct model seen once in
            # test_differential_catches_an_old_fork_marker_rule: two moves to fresh addresses, a read, a fork)
            addr = (probe.addr + HP) & ~(HP - 1)
            if not any(a < addr + length and addr < e for a, e in avoid):
                return addr
        raise AssertionError("no free range away from the regions' old places")
    finally:
        for probe in probes:
            b.munmap(probe.addr, probe.len)


def mremap_scenario(b, memtype: str, feats: int, op: str, expect=(0, 0)) -> list:
    """Register MISSING|WP, populate (p0 COPY+WP, p1 COPY, p2 a uffd-wp marker where the kernel makes one),
    mremap under a running fault handler, then write the moved p0 and read the old p0: what each backend shows."""
    mt = MemType(memtype)
    ps = HP if mt.hugetlb else PS
    n = 4
    r = aligned_mmap(b, n * ps, memtype, "r")
    s = b.mmap(ps, MemType.ANON, name="s")
    b.write(s.addr, b"s" * 8)
    # (hugetlb-private "part" leaks hugetlb reservations on 6.18: the kernel's mremap of part of a private
    # hugetlb mapping, copy_vma_and_data() -> clear_vma_resv_huge_pages(); scripts/kernel-repro/
    # hugetlb-mremap-resv-leak.c shows it without uffd: one reservation per untouched page left behind, so the
    # "part" case populates p3 below.)
    # the target is held by a PROT_NONE placeholder until MREMAP_FIXED replaces it (as the selftests reserve
    # theirs): a hole free when we looked is where the handler's thread stack (or a malloc arena) goes next,
    # and MREMAP_FIXED over that stack was the SIGSEGV in handler stop (test_fixed_target_never_takes_...)
    t_addr = _free_aligned(b, (n + 2) * ps)
    b.mmap((n + 2) * ps, MemType.ANON, name="t", prot=uapi.PROT_NONE, addr=t_addr)
    u = b.userfaultfd()
    u.api(feats | int(F.WP_UNPOPULATED))
    u.register(r.addr, r.len, int(R.MISSING | R.WP))
    u.copy(r.addr, s.addr, ps, int(uapi.CopyMode.WP))
    u.copy(r.addr + ps, s.addr, ps)
    u.writeprotect(r.addr + 2 * ps, ps, int(uapi.WriteprotectMode.WP))
    if mt is MemType.HUGETLB_PRIVATE and op == "part":
        # p3 populated too: moving p1-p2 away would leak p3's reservation on the kernel for good (the leak
        # noted above, one HugePages_Rsvd per run that no process owns); both backends run the same steps
        u.copy(r.addr + 3 * ps, s.addr, ps)
    h = b.fault_handler(u, HandlerPolicy(missing="zeropage", wp="unprotect", page_size=ps))
    out = []

    def rel(a):
        for name, base, ln in (("r", r.addr, n * ps), ("t", t_addr, (n + 2) * ps)):
            if base <= a <= base + ln:
                return f"{name}+{(a - base) // ps}"
        return "elsewhere"

    def view(evs):
        res = []
        for e in evs:
            m = e.msg
            if e.action == "event":
                res.append((m.event_name, rel(m.start), rel(m.end), rel(m.from_), rel(m.to), m.len // ps))
            else:
                res.append((e.action, m.flags, rel(m.address), e.err))
        return sorted(res)

    def pm(addr, pages):
        keep = uapi.PM_PRESENT | uapi.PM_SWAP | uapi.PM_FILE | uapi.PM_UFFD_WP | uapi.PM_MMAP_EXCLUSIVE
        return [hex(e & keep) for e in b.pagemap(addr, pages * ps // PS)[::ps // PS]]

    M_ = uapi
    try:
        if op == "move":
            ret = b.mremap(r.addr, n * ps, n * ps, M_.MREMAP_MAYMOVE | M_.MREMAP_FIXED, t_addr)
        elif op == "part":
            ret = b.mremap(r.addr + ps, 2 * ps, 2 * ps, M_.MREMAP_MAYMOVE | M_.MREMAP_FIXED, t_addr)
        elif op == "grow":
            ret = b.mremap(r.addr, n * ps, (n + 2) * ps, M_.MREMAP_MAYMOVE | M_.MREMAP_FIXED, t_addr)
        elif op == "dontunmap":
            ret = b.mremap(r.addr, n * ps, n * ps, M_.MREMAP_MAYMOVE | M_.MREMAP_FIXED | M_.MREMAP_DONTUNMAP,
                           t_addr)
        else:
            ret = b.mremap(r.addr, n * ps, 2 * ps, 0)
        out.append(("mremap", rel(ret)))
    except UffdError as e:
        out.append(("mremap", errno.errorcode.get(e.errno, e.errno)))
        ret = None
    out.append(("events", view(drain_events(h, expect[0], SETTLE))))
    out.append(("old", pm(r.addr, n)))
    if ret is not None and ret != r.addr:
        out.append(("new", pm(ret, n)))
        acc = b.thread("w").access(ret, 1, True, fill=0x77, stride=PS)
        out.append(("write new p0", acc.wait(SETTLE), _acc_short(acc)))
        out.append(("new after", pm(ret, 1)))
    if op == "dontunmap":
        acc = b.thread("rd").access(r.addr, 8, False, want_data=True)
        out.append(("read old p0", acc.wait(SETTLE), _acc_short(acc)))
    out.append(("events after", view(drain_events(h, expect[1], SETTLE))))
    h.stop()
    u.close()
    # what is still ours and no longer a region (the backend forgets what a move took from a region), and
    # what is left of the placeholder
    b.munmap(t_addr, (n + 2) * ps)
    if ret == t_addr and op == "part":
        b.munmap(r.addr + 3 * ps, ps)
    return out


def _acc_short(acc):
    if not acc.done:
        return "blocked"
    r = acc.result()
    return ("sigbus",) if r.sigbus else ("done", r.data)


@pytest.mark.kernel
@pytest.mark.parametrize("op", MREMAP_OPS)
@pytest.mark.parametrize("feats", list(MREMAP_FEATURES))
@pytest.mark.parametrize("memtype", ["anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private"])
def test_mremap_side_by_side(memtype, feats, op):
    """mremap of a registered, partly uffd-wp range under a fault handler: the result, the UNMAP/REMAP events,
    pagemap of the old and the new range, what a write to the moved page and a read of a DONTUNMAP source do
    -- the emulator (6.18) shows what the kernel shows."""
    kb = make_backend("kernel")
    try:
        if MemType(memtype).hugetlb:
            reason = hugetlb_reason(kb)
            mi = meminfo()
            if reason or mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0) < 8:
                from conftest import require_kernel
                require_kernel(reason or "fewer than 8 free unreserved huge pages")
        eb = emu_6_18()
        try:
            e = mremap_scenario(eb, memtype, MREMAP_FEATURES[feats], op)
        finally:
            eb.close()
        counts = [len(x[1]) for x in e if x[0] in ("events", "events after")]
        k = mremap_scenario(kb, memtype, MREMAP_FEATURES[feats], op, counts)
    finally:
        kb.close()
    assert_steps_agree(k, e)


@pytest.mark.kernel
def test_mremap_catches_a_broken_rule():
    """The side-by-side mremap check can fail: the pre-0cef0bb836e3 rule (uffd-wp bits and markers carried into
    the unregistered moved VMA) is caught on anon, and the 6.18 rule agrees."""
    from uffdctl.emu import EmuBackend
    kb = make_backend("kernel")
    try:
        runs = {}
        for name, make in (("right", emu_6_18),
                           ("broken", lambda: EmuBackend(profile="6.18", soft_dirty=False,
                                                         mremap_clear_uffd_wp=False))):
            eb = make()
            try:
                runs[name] = mremap_scenario(eb, "anon", 0, "move")
            finally:
                eb.close()
        k = mremap_scenario(kb, "anon", 0, "move")
    finally:
        kb.close()
    assert k == runs["right"]
    assert k != runs["broken"]
    new = dict((x[0], x[1:]) for x in runs["broken"])["new"][0]
    assert new[0] == hex(uapi.PM_PRESENT | uapi.PM_UFFD_WP | uapi.PM_MMAP_EXCLUSIVE), new   # the stale bit


@pytest.mark.kernel
@pytest.mark.parametrize("switch", ["mremap_clear_uffd_wp", "mremap_multi_vma"])
def test_differential_catches_a_broken_mremap_rule(switch):
    """The random generator's mremap op can fail: with one of 6.18's mremap rules switched back to its old
    behaviour (uffd-wp kept on moved PTEs; no move across several VMAs) some random anon/shmem sequence
    diverges, and its shrunk reproducer has an mremap in it."""
    from uffdctl.emu import EmuBackend
    runner = Runner(lambda: EmuBackend(profile="6.18", soft_dirty=False, **{switch: False}))
    # ~1 in 5 has an mremap; only those run.  The 6.18 rules agree with the kernel on the reproducer.
    generator_catches(runner, [MemType.ANON.value, MemType.SHMEM.value], 3000, f"the broken {switch} rule",
                      op="mremap", real=Runner)


# -- fork (kernel/fork.c dup_mmap, mm/memory.c copy_page_range): the child's pagemap, its uffd, COW ------------------

FORK_COW = {"regions": [{"type": "anon", "pages": SRC_PAGES}, {"type": "anon", "pages": 2}], "features": 0,
            "ops": [["touch", "t0", 1, 0, True, 1], ["fork"], ["touch", "t0", 1, 0, True, 2],
                    ["child", ["touch", CHILD, 1, 0, False, 0]]]}


@pytest.mark.kernel
def test_differential_catches_a_broken_fork_rule(monkeypatch):
    """The differential's fork op can fail: with copy_present_pte() no longer write-protecting a COW mapping's
    PTEs (parent and child share a writable anon page), the parent's write after fork takes no fault and the
    child reads the parent's data -- caught on a hand-written sequence, and by the random generator, whose
    shrunk reproducer has a fork in it; the real rule agrees with the kernel on both."""
    runner = Runner()
    assert runner.diverges(FORK_COW) is None
    from uffdctl.emu.kernel import fork
    monkeypatch.setattr(fork, "is_cow_mapping", lambda flags: False)
    d = runner.diverges(FORK_COW)
    assert d is not None, "the broken COW rule went unnoticed"
    generator_catches(runner, [MemType.ANON.value, MemType.SHMEM_PRIVATE.value], 3000, "the broken COW rule",
                      op="fork", undo=monkeypatch.undo)


@pytest.mark.kernel
@pytest.mark.parametrize("switch,value", [("fork_wp_marker_without_event", True),
                                          ("fork_poison_marker_without_event", False)])
def test_differential_catches_an_old_fork_marker_rule(switch, value):
    """The version rules of copy_pte_marker() are observable: 6.18 with 5.19's rule (a uffd-wp marker reaches a
    child without EVENT_FORK) or 6.1.192's (a poison marker only into a uffd-wp child VMA) diverges from this
    kernel on some random sequence, whose reproducer forks."""
    from uffdctl.emu import EmuBackend
    runner = Runner(lambda: EmuBackend(profile="6.18", soft_dirty=False, **{switch: value}))
    generator_catches(runner, [MemType.ANON.value, MemType.SHMEM.value], 4000, f"{switch}={value}", op="fork",
                      real=Runner)


# -- swap and mprotect rules: each area's broken rule is caught ---------------------------------------------------

def _drop_swp_uffd_wp(self, vma, addr, flush):
    """A deliberately wrong try_to_unmap_one(): the swap entry loses the PTE's uffd-wp bit."""
    pte = self.ptes[addr]
    was = pte.uffd_wp
    pte.uffd_wp = False
    try:
        return _real_shrink(self, vma, addr, flush)
    finally:
        if pte.present:
            pte.uffd_wp = was


def _real_shrink(self, vma, addr, flush):
    from uffdctl.emu.mm.vmscan import Vmscan
    return Vmscan.shrink_folio(self, vma, addr, flush)


BROKEN_RULES = {
    # do_swap_page(): a read swap-in maps an exclusive page writable on 6.12+ (6.1's rule: only on a write)
    "swapin_read_writable": ({"swapin_read_writable": False}, None, "pageout"),
    # try_to_unmap_one(): pte_swp_mkuffd_wp() carries uffd-wp into the swap entry
    "swp_uffd_wp": ({}, _drop_swp_uffd_wp, "pageout"),
    # mprotect(): MM_CP_TRY_CHANGE_WRITABLE upgrades exclusive anon PTEs (64fe24a3e05e, 6.0)
    "mprotect_try_change_writable": ({"mprotect_try_change_writable": False}, None, "mprotect"),
    # a disk file: filemap_fault()'s read-around (a model reading only the faulting page)
    "file_readaround": ({}, "RA_PAGES", "touch"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("rule", list(BROKEN_RULES))
def test_differential_catches_a_broken_swap_or_mprotect_rule(host_swap_module, rule, monkeypatch):
    """The generator's pageout, mprotect and file-region ops can fail: with one rule of the model broken (a 6.1
    rule in the 6.18 profile, the swap entry losing its uffd-wp bit, a disk file read without read-around), some
    random sequence diverges from this kernel; its shrunk reproducer has the op in it, and the unbroken model
    agrees with the kernel on it."""
    from uffdctl.emu import EmuBackend, mm
    switches, patch, op = BROKEN_RULES[rule]
    runner = Runner(lambda: EmuBackend(profile="6.18", soft_dirty=False, **switches))
    types = [MemType.ANON.value]
    if patch == "RA_PAGES":
        from uffdctl.emu.mm import filemap
        monkeypatch.setattr(filemap, "RA_PAGES", 1)
        types = ["file", "file-private"]
    elif patch is not None:
        monkeypatch.setattr(mm.MM, "shrink_folio", patch)
    # a fork makes the swapped pages shared (not exclusive): the swap-in rules under test no longer apply.
    # MADV_FREE then PAGEOUT is left out too: whether the kernel discards or swaps the lazyfree page depends on
    # whether the folio was on the LRU when lru_lazyfree_fn() ran (the kernel side now drains the LRU batches
    # before MADV_FREE; seen both ways on this host before it did).  The real rules agree with the kernel (the
    # kernel side is concurrent: as the main test, a divergence counts once it repeats).
    generator_catches(runner, types, 4000, f"the broken {rule} rule", op=op, leave_out=("fork", "free"),
                      undo=monkeypatch.undo, real=Runner, repeat=2)


# A hand-written THP sequence userfaultfd_armed() decides: a THP split by a DONTNEED of one page, then the
# whole PMD registered MISSING and collapsed (a none PTE in an armed VMA: EBUSY on the kernel).
THP_ARMED_COLLAPSE = {"regions": [{"type": "anon", "pages": SRC_PAGES}, {"type": "anon", "pages": 512, "thp": 1}],
                      "features": 0,
                      "ops": [["touch", "t0", 1, 0, True, 1], ["dontneed", 1, 1, 1], ["register", 1, 0, 512, 1],
                              ["madvise", 1, 0, 512, "collapse"]]}


@pytest.mark.kernel
def test_differential_catches_a_broken_thp_rule(monkeypatch):
    """Break one THP rule of the model (MADV_COLLAPSE ignores userfaultfd_armed()) and the differential catches
    it: the hand-written sequence, and the random generator over THP regions, with a short reproducer."""
    runner = Runner()
    if "thp" not in runner.memtypes:
        from conftest import require_kernel
        require_kernel("THP regions are left out here: " + str(thp_reason(make_backend("kernel"))))
    assert runner.diverges(THP_ARMED_COLLAPSE) is None            # the real rule agrees with the kernel
    from uffdctl.emu.mm import khugepaged
    monkeypatch.setattr(khugepaged, "VM_UFFD_FLAGS", 0)             # "armed" is never true
    d = runner.diverges(THP_ARMED_COLLAPSE)
    if d is None and runner.not_compared:
        pytest.skip(f"the kernel could not give a THP here: {runner.not_compared[-1]}")
    assert d is not None and d.what == "madvise result" and d.kernel[:2] == ("err", "EBUSY") \
        and d.emu == ("ok", None), d
    generator_catches(runner, ["thp"], 1500, "the broken MADV_COLLAPSE rule", short=True, undo=monkeypatch.undo)


def test_khugepaged_is_paused_while_sequences_run():
    """The module's pause holds; a pause nested in it, or one in another process overlapping it, ends without
    un-pausing; the last one out restores the sleep the first one found."""
    if not os.access(KHUGEPAGED_SLEEP, os.W_OK):
        pytest.skip(f"{KHUGEPAGED_SLEEP} is not writable here (no THP, or not root): nothing to pause")

    def sleep():
        with open(KHUGEPAGED_SLEEP) as f:
            return f.read().strip()
    assert sleep() == PAUSED                           # the module's fixture
    with khugepaged_paused():
        assert sleep() == PAUSED
    assert sleep() == PAUSED                           # the module's pause still holds
    with open(PAUSE_STATE) as f:
        orig = json.load(f)["orig"]
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                              "import test_differential as t\nwith t.khugepaged_paused():\n"
                              "    print('in', flush=True); sys.stdin.readline()", os.path.dirname(__file__)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "in\n"
        _pausers(-1)                                   # the module's pause ends first ...
        assert sleep() == PAUSED                       # ... and the other process's holds
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(60) == 0
        assert sleep() == orig                         # the last one out restored it
    finally:
        if other.poll() is None:
            other.kill()
        _pausers(+1)                                   # the module's pause again, for the tests after
    assert sleep() == PAUSED


@pytest.mark.kernel
def test_a_region_merged_with_a_neighbour_is_not_compared():
    """A sequence's regions are fenced: the threads it starts put their stacks elsewhere.  Should an anon mapping
    of this process (same flags, its page written: an anon_vma) still come right below a region, it merges, and
    fork then copies the region's zero-page PTE, which the model's child does not have: such a divergence is
    reported as not compared, naming the merge; without the neighbour the same divergence stands."""
    kb = make_backend("kernel")
    try:
        seq = {"regions": [{"type": "anon", "pages": 8}, {"type": "anon", "pages": 2}], "features": 0, "ops": []}
        ks = Side(kb, seq, zero_pfn(kb))                  # its threads' stacks made: none abuts a region
        r1 = ks.regions[1]
        for r in ks.regions:
            assert kb.vma_bounds(r.addr) == (r.addr, r.end), "a region merged with a VMA of this process"
        d = Divergence(2, "pagemap", ["child:r1 zero"], [])
        _merged_region_excuse(ks, d)                      # nothing merged: no excuse
        kb.munmap(r1.addr - PS, PS)                       # the fence below
        nb = kb.mmap(PS, MemType.ANON, name="neighbour", addr=r1.addr - PS)
        assert nb.addr == r1.addr - PS, "the kernel did not honour the address hint: the test cannot place the page"
        kb.write(nb.addr, b"\1")
        lo, hi = kb.vma_bounds(r1.addr)                  # with the neighbour (and a stack below it, if one is)
        assert lo <= nb.addr and hi == r1.end, "no merge: the test shows nothing"
        with pytest.raises(ThpShortfall, match="merged with a mapping of this process"):
            _merged_region_excuse(ks, d)
        ks.u.close()
    finally:
        kb.close()
