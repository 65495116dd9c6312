"""Session commands for the rest of the mm surface: mremap, mprotect, msync, mlock/munlock, swap,
plus the helpers the script language needs to look at memory (addresses, data, VMAs).

Registered into the one command table (:data:`uffdctl.session.commands.COMMANDS`) with the same
``@command`` decorator; imported at the end of ``commands``.  Region bookkeeping follows the kernel:
what an mm operation unmaps is carved out of the session's regions (a piece that no longer starts at
its region's start is named ``NAME.K``, K its first page in the old region, so page numbers never
shift under a name), what it maps becomes a region.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .. import uapi
from ..backend import Region
from .commands import (PAGE, RANGE, Param, Span, _NAME_OK, _span_dict, command, parse_int, parse_range,
                       parse_size)
from .state import SessionState, UsageError

# -- addresses ---------------------------------------------------------------------------------
_TERM = re.compile(r"\s*([+-])?\s*([A-Za-z_][\w.-]*(?::\d+)?|0x[0-9a-fA-F]+|\d+[KMGkmg]?)\s*")


def parse_addr(st: SessionState, text) -> int:
    """An address: ``buf:3`` (page 3 of buf; ``buf:N`` with N = its page count is its end), ``buf`` (its
    start), ``0x7f..``, with ``+``/``-`` offsets (``buf:2+0x10``, ``dst:0-4K``)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if not s:
        raise UsageError("missing address")
    pos, total, first = 0, 0, True
    while pos < len(s):
        m = _TERM.match(s, pos)
        if not m or m.end() == pos:
            raise UsageError(f"bad address {text!r}: expected REGION:PAGE, 0xADDR, with +/- offsets")
        sign, term = m.group(1), m.group(2)
        if first and sign == "-" or not first and sign is None:
            raise UsageError(f"bad address {text!r}: expected REGION:PAGE, 0xADDR, with +/- offsets")
        if re.match(r"^[A-Za-z_]", term):
            if not first:
                raise UsageError(f"bad address {text!r}: a region may only come first")
            name, _, page = term.partition(":")
            reg = st.regions.get(name)
            if reg is None:
                raise UsageError(f"unknown region {name!r} in address {text!r} "
                                 f"(regions: {', '.join(st.regions) or 'none'})")
            n = int(page) if page else 0
            if n > reg.pages:
                raise UsageError(f"address {text!r}: page {n} is beyond region {name} (pages 0-{reg.pages - 1}, "
                                 f"{reg.pages} = its end)")
            v = reg.addr + n * reg.page_size
        else:
            v = parse_size(term, "address")
        total = total - v if sign == "-" else total + v
        first = False
        pos = m.end()
    return total


def locate(st: SessionState, addr: int, end: bool = False) -> str | None:
    """``buf:3`` (or ``buf:3+0x10``) for an address inside a region; ``end``: an exclusive end, so the
    end of a region is ``buf:N`` rather than page 0 of the region after it."""
    regs = sorted(st.regions.values(), key=lambda r: r.len)    # the innermost (an overlay) first
    if end:
        for r in regs:
            if r.addr < addr <= r.end:
                off = addr - r.addr
                return f"{r.name}:{off // r.page_size}" + (f"+{off % r.page_size:#x}" if off % r.page_size else "")
    for r in regs:
        if r.addr <= addr < r.end:
            off = addr - r.addr
            return f"{r.name}:{off // r.page_size}" + (f"+{off % r.page_size:#x}" if off % r.page_size else "")
    return None


EVENT_ADDR_FIELDS = ("address", "start", "end", "from", "to")


def locate_event(st: SessionState, d: dict) -> dict:
    """``{"start": "buf:1", "end": "buf:4", ...}`` for a logged message, against the regions as they are
    now (called when the message enters the log)."""
    out = {}
    for k in EVENT_ADDR_FIELDS:
        v = d.get(k)
        if isinstance(v, int) and v:
            loc = locate(st, v, end=(k == "end"))
            if loc:
                out[k] = loc
    return out


# -- region bookkeeping --------------------------------------------------------------------------
def _backend_regions(st: SessionState) -> dict:
    return getattr(st.backend, "_regions", {})


def add_region(st: SessionState, r: Region) -> Region:
    st.regions[r.name] = r
    _backend_regions(st)[r.name] = r
    return r


def piece_name(st: SessionState, base: str, first_page: int) -> str:
    name = f"{base}.{first_page}"
    n = 1
    while name in st.regions or name in _backend_regions(st):
        name = f"{base}.{first_page}_{n}"
        n += 1
    return name


def carve(st: SessionState, start: int, end: int) -> list[str]:
    """Take [start, end) out of every region (the kernel unmapped or replaced it); returns what changed."""
    changed = []
    breg = _backend_regions(st)
    for r in sorted(st.regions.values(), key=lambda r: r.addr):
        if r.end <= start or end <= r.addr:
            continue
        changed.append(r.name)
        tail = None
        if end < r.end:
            first = (end - r.addr) // r.page_size
            tail = Region(piece_name(st, r.name, first), end, r.end - end, r.memtype, r.page_size,
                          st.backend.dup_fd(r.fd), r.prot, r.kind, r.path)
        if r.addr < start:
            r.len = start - r.addr          # the head keeps the name
        else:
            del st.regions[r.name]
            if breg.get(r.name) is r:
                del breg[r.name]
                st.backend.close_fd(r.fd)
        if tail is not None:
            add_region(st, tail)
    forget_range(st, start, end)
    return changed


def _cut(items, start, end):
    """Interval records (s, e, value) with [start, end) taken out."""
    out = []
    for s, e, v in items:
        if e <= start or end <= s:
            out.append((s, e, v))
            continue
        if s < start:
            out.append((s, start, v))
        if end < e:
            out.append((end, e, v))
    return out


def forget_range(st: SessionState, start: int, end: int) -> None:
    """What the session remembers of [start, end) — registrations, mprotects — is gone with the mapping."""
    regs = _cut([(s, s + n, m) for (s, n), m in st.registrations.items()], start, end)
    st.registrations.clear()
    st.registrations.update({(s, e - s): m for s, e, m in regs})
    if getattr(st, "mprotects", None):
        st.mprotects = _cut(st.mprotects, start, end)


def _blocked_in(st: SessionState, start: int, end: int, what: str) -> None:
    for t in st.touches.values():
        if not t.access.done and t.start < end and start < t.start + t.len:
            raise UsageError(f"touch #{t.id} (thread {t.thread}) is blocked in 0x{start:x}-0x{end:x}: "
                             f"resolve it before {what}")


def _covered_by_regions(st: SessionState, start: int, end: int) -> bool:
    pos = start
    for r in sorted(st.regions.values(), key=lambda r: r.addr):
        if r.addr <= pos < r.end:
            pos = r.end
    return pos >= end


def _check_replace(st: SessionState, start: int, end: int, what: str) -> None:
    """MAP_FIXED / MREMAP_FIXED replace whatever is at the target: allow only the session's own regions
    or free address space (anything else could be the daemon's own memory)."""
    if _covered_by_regions(st, start, end) or st.backend.name != "kernel":
        return
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if lo < end and start < hi and not _covered_by_regions(st, max(lo, start), min(hi, end)):
                raise UsageError(f"{what}: 0x{start:x}-0x{end:x} overlaps memory that is not one of the session's "
                                 f"regions ({line.split(None, 5)[-1].strip() or 'anonymous'} at {lo:#x}-{hi:#x})")


# -- access checks: what would SIGSEGV the daemon, what would block forever ------------------------
def prot_at(st: SessionState, addr: int) -> int:
    for s, e, p in getattr(st, "mprotects", ()):
        if s <= addr < e:
            return p
    reg = st.region_at(addr)
    return reg.prot if reg is not None else 0


def check_access(st: SessionState, span: Span, write: bool, what: str) -> None:
    """A write to a non-writable page (or any access to a PROT_NONE page) would be a SIGSEGV of the
    whole session: refuse it."""
    need = uapi.PROT_WRITE if write else uapi.PROT_READ
    for a in range(span.start, span.end, PAGE):
        p = prot_at(st, a)
        if not p & need:
            loc = locate(st, a)
            raise UsageError(f"{what} {loc}: the page is {_prot_str(p)} (mprotect): the access would be a SIGSEGV "
                             f"of the session")


def _prot_str(p: int) -> str:
    return "PROT_NONE" if not p else "|".join(n for n, b in (("PROT_READ", 1), ("PROT_WRITE", 2),
                                                              ("PROT_EXEC", 4)) if p & b)


def would_block(st: SessionState, span: Span, write: bool) -> str | None:
    """Why an access by the kernel on our behalf (populate, mlock, a data read) would wait forever in a
    userfault that the handler queues and nobody can resolve while the command runs, or None."""
    from ..pagemap import read as pm_read
    pol = st.policy
    regs = [(s, s + n, m) for (s, n), m in st.registrations.items() if s < span.end and span.start < s + n]
    if not regs:
        return None
    entries = pm_read(st.backend, span.start, span.len // PAGE)
    for e in entries:
        mode = 0
        for s, x, m in regs:
            if s <= e.addr < x:
                mode |= m
        if not mode:
            continue
        loc = locate(st, e.addr)
        if not e.present and not e.swap and not e.marker:
            if mode & uapi.RegisterMode.MISSING and pol.missing == "queue":
                return f"{loc} is missing and registered MISSING with the handler queueing"
            if mode & uapi.RegisterMode.MINOR and pol.minor == "queue":
                return f"{loc} is not mapped and registered MINOR with the handler queueing"
        if write and mode & uapi.RegisterMode.WP and pol.wp == "queue" and (e.uffd_wp or (e.marker and
                                                                                              not e.present)):
            return f"{loc} is write-protected (uffd-wp) with the handler queueing wp faults"
    return None


def refuse_blocking(st: SessionState, span: Span, write: bool, what: str) -> None:
    why = would_block(st, span, write)
    if why:
        raise UsageError(f"{what} would block in a userfault: {why}; resolve it first (copy/zeropage/continue/"
                         f"writeprotect --off) or set a handler policy (handler --policy zeropage)")


# -- reading memory ------------------------------------------------------------------------------
def read_span(st: SessionState, span: Span, timeout: float) -> bytes:
    """The bytes of a range, read by a session thread in C (GIL-free; never the caller's thread)."""
    check_access(st, span, False, "reading")
    refuse_blocking(st, span, False, f"reading {locate(st, span.start)}")
    n = getattr(st, "_data_reader", 0)
    th = st.backend.thread(f"__data{n}")
    acc = th.access(span.start, span.len, False, want_data=True)
    if not acc.wait(timeout):
        st._data_reader = n + 1   # that thread stays blocked until the session ends
        raise UsageError(f"reading {locate(st, span.start)} is still blocked in a userfault after {timeout:g} s")
    r = acc.result()
    if r.sigbus:
        raise UsageError(f"reading {locate(st, span.start)}: SIGBUS at 0x{r.fault_addr:x} (si_code {r.si_code})")
    return r.data or b""


def per_page(data: bytes | None, length: int) -> bytes | None:
    """The byte a strided touch read from each page (the kernel hands back the whole buffer, the
    emulator the bytes it read)."""
    if data is None:
        return None
    if len(data) == length:
        return bytes(data[::PAGE])
    return bytes(data)


def vmas_of(st: SessionState, span: Span) -> list[dict]:
    return st.backend.vmas(span.start, span.end)


# -- commands ------------------------------------------------------------------------------------
_PROTS = {"none": 0, "read": uapi.PROT_READ, "write": uapi.PROT_WRITE, "exec": uapi.PROT_EXEC}


def parse_prot(text) -> int:
    prot = 0
    for t in str(text).replace("|", ",").split(","):
        t = t.strip().lower().removeprefix("prot_")
        if not t:
            continue
        if t not in _PROTS:
            raise UsageError(f"bad --prot {text!r}: none, or read,write,exec (comma separated)")
        prot |= _PROTS[t]
    return prot


@command("mprotect", "mprotect(2) a range: --prot none, or read,write,exec.", "uffdctl mprotect buf:0-3 --prot none",
         RANGE, Param("--prot", "none | read,write,exec (comma separated)", required=True), kernel_name="mprotect")
def cmd_mprotect(st, a):
    span = parse_range(st, a["range"])
    prot = parse_prot(a["prot"])
    st.backend.mprotect(span.start, span.len, prot)
    st.mprotects = _cut(getattr(st, "mprotects", []), span.start, span.end) + [(span.start, span.end, prot)]
    return _span_dict(span, prot=prot, prot_decoded=_prot_str(prot))


@command("mremap", "mremap(2) a range: grow, shrink or move it (flags as given; the regions follow).",
         "uffdctl mremap buf --size 128K --maymove",
         RANGE, Param("--size", "new_size (K/M/G)", required=True),
         Param("--maymove", "MREMAP_MAYMOVE", kind="flag"), Param("--fixed", "MREMAP_FIXED (needs --to)", kind="flag"),
         Param("--dontunmap", "MREMAP_DONTUNMAP: the old range stays mapped, empty", kind="flag"),
         Param("--to", "new_address: ADDR or REGION:PAGE (with --fixed or --dontunmap)"),
         Param("--name", "name of the new mapping (default: the region's own when it moves whole)"),
         kernel_name="mremap")
def cmd_mremap(st, a):
    span = parse_range(st, a["range"])
    src = span.region
    new_len = parse_size(a["size"], "--size")
    if new_len <= 0 or new_len % src.page_size:
        raise UsageError(f"--size {a['size']!r} must be a positive multiple of {src.name}'s page size "
                         f"({src.page_size})")
    flags = (uapi.MREMAP_MAYMOVE if a.get("maymove") else 0) | (uapi.MREMAP_FIXED if a.get("fixed") else 0) | \
            (uapi.MREMAP_DONTUNMAP if a.get("dontunmap") else 0)
    to = parse_addr(st, a["to"]) if a.get("to") else 0
    if a.get("fixed") and not a.get("to"):
        raise UsageError("--fixed needs --to ADDR (the new_address)")
    whole = span.start == src.addr and span.len == src.len
    may_move = bool(flags & (uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED))
    name = a.get("name")
    if name is not None and (not _NAME_OK.match(name) or name.startswith("__") or
                             (name in st.regions and name != src.name)):
        raise UsageError(f"bad or existing region name {name!r}")
    if may_move and (not whole or flags & uapi.MREMAP_DONTUNMAP) and name is None:
        raise UsageError("mremap of a part of a region, or with --dontunmap, may make a second mapping: "
                         "name it with --name")
    if flags & uapi.MREMAP_FIXED:
        _check_replace(st, to, to + new_len, "mremap --fixed")
    _blocked_in(st, span.start, span.end, "mremap")
    new = st.backend.mremap(span.start, span.len, new_len, flags, to)
    # the REMAP / UNMAP messages, located against the regions as they were
    st.collect_events()
    result_name = src.name
    if new == span.start:                       # in place
        if new_len < span.len:
            carve(st, span.start + new_len, span.end)
        elif new_len > span.len:
            src.len = span.start - src.addr + new_len
    else:
        remap_feature = bool((getattr(st.uffd, "features", 0) or 0) & uapi.Feature.EVENT_REMAP) \
            if st.uffd is not None else False
        moved_regs = [(k, m) for k, m in st.registrations.items()
                      if span.start <= k[0] and k[0] + k[1] <= span.end]
        moved_prot = [(max(s, span.start) - span.start + new, min(e, span.end) - span.start + new, p)
                      for s, e, p in getattr(st, "mprotects", ()) if s < span.end and span.start < e]
        keep_fd = st.backend.dup_fd(src.fd)
        if not flags & uapi.MREMAP_DONTUNMAP:
            carve(st, span.start, span.end)
        carve(st, new, new + new_len)
        result_name = name or src.name
        add_region(st, Region(result_name, new, new_len, src.memtype, src.page_size, keep_fd, src.prot, src.kind,
                              src.path))
        if moved_prot:     # the protection moves with the VMA
            st.mprotects = getattr(st, "mprotects", []) + moved_prot
        if remap_feature:  # mremap_userfaultfd_prep(): the ctx moves with the VMA only with EVENT_REMAP
            for (s, n), m in moved_regs:
                st.registrations[(s - span.start + new, n)] = m
    return {"old_address": span.start, "old_size": span.len, "new_size": new_len, "flags": flags,
            "new_address": new, "region": result_name, "moved": int(new != span.start)}


@command("msync", "msync(2) a range (default MS_SYNC).", "uffdctl msync f --invalidate",
         RANGE, Param("--async", "MS_ASYNC", kind="flag"), Param("--sync", "MS_SYNC (the default)", kind="flag"),
         Param("--invalidate", "MS_INVALIDATE", kind="flag"), kernel_name="msync")
def cmd_msync(st, a):
    span = parse_range(st, a["range"])
    flags = (uapi.MS_ASYNC if a.get("async") else 0) | (uapi.MS_INVALIDATE if a.get("invalidate") else 0)
    if a.get("sync") or not a.get("async"):
        flags |= uapi.MS_SYNC
    st.backend.msync(span.start, span.len, flags)
    return _span_dict(span, flags=flags)


@command("mlock", "mlock2(2) a range (faults it in, unless --onfault).", "uffdctl mlock buf:0-1 --onfault",
         RANGE, Param("--onfault", "MLOCK_ONFAULT: lock pages as they fault in", kind="flag"), kernel_name="mlock2")
def cmd_mlock(st, a):
    span = parse_range(st, a["range"])
    flags = uapi.MLOCK_ONFAULT if a.get("onfault") else 0
    if not flags:
        refuse_blocking(st, span, bool(span.region.prot & uapi.PROT_WRITE) and not span.region.memtype.shared,
                        "mlock")
    st.backend.mlock(span.start, span.len, flags)
    return _span_dict(span, flags=flags)


@command("munlock", "munlock(2) a range.", "uffdctl munlock buf", RANGE, kernel_name="munlock")
def cmd_munlock(st, a):
    span = parse_range(st, a["range"])
    st.backend.munlock(span.start, span.len)
    return _span_dict(span)


@command("swap", "A real swap device: on (a swapfile made, mkswap'd, swapon'd; root), off (swapoff and "
         "removed), status. Always off and removed at session/run end.", "uffdctl swap on --size 64M",
         Param("action", "on | off | status", metavar="[on|off|status]"),
         Param("--size", "with on: the swapfile's size (default 64M)"),
         Param("--dir", "with on: a directory on a disk filesystem (default /var/tmp)"),
         kernel_name="swapon")
def cmd_swap(st, a):
    action = a.get("action") or "status"
    if action not in ("on", "off", "status"):
        raise UsageError(f"swap {action!r}: say on, off or status")
    if action != "on" and (a.get("size") or a.get("dir")):
        raise UsageError("--size and --dir go with swap on")
    if action == "on":
        size = parse_size(a.get("size") or "64M", "--size")
        if size <= 0 or size % PAGE:
            raise UsageError(f"--size {a.get('size')!r} must be a positive multiple of 4K")
        return st.backend.swap_on(size, a.get("dir"))
    if action == "off":
        return st.backend.swap_off()
    return st.backend.swap_status()


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def aligned_addr(st: SessionState, size: int, align: int) -> int:
    """A free address aligned to ``align`` with room for ``size``: reserve size+align, release it."""
    b = st.backend
    tmp = b.mmap(size + align, "anon", name=f"__align{os.getpid()}")
    try:
        return align_up(tmp.addr, align)
    finally:
        b.munmap(tmp.addr, tmp.len)


# -- mmap with addresses, alignment, THP, files, SysV ------------------------------------------------
def mmap_ext(st: SessionState, a: dict) -> dict:
    """``mmap`` with --align / --addr [--fixed] / --thp / --prot / the file and SysV types."""
    from ..backend import HPAGE_SIZE, MemType
    from .commands import EXTRA_TYPES, _mem_total
    size = parse_size(a["size"])
    if size <= 0:
        raise UsageError(f"size {a['size']!r} must be > 0")
    if size > _mem_total():
        raise UsageError(f"size {a['size']!r} is beyond this machine's memory ({_mem_total() >> 20} MiB)")
    kind = a.get("type") or "anon"
    hugetlb = kind in ("hugetlb", "hugetlb-private", "sysv-hugetlb")
    page = HPAGE_SIZE if hugetlb else PAGE
    if size % page:
        raise UsageError(f"size {a['size']!r} is not a multiple of the {kind} page size ({page})")
    name = a.get("name")
    if name is not None and (not _NAME_OK.match(name) or name.startswith("__") or name in st.regions):
        raise UsageError(f"bad or existing region name {name!r}: letters, digits, _ . - (not starting with a "
                         f"digit or __)")
    if kind in ("file", "file-private"):
        if not a.get("path"):
            raise UsageError(f"--type {kind} needs --path FILE|DIR")
        parent = a["path"] if os.path.isdir(a["path"]) else (os.path.dirname(os.path.abspath(a["path"])))
        if not os.path.isdir(parent):
            raise UsageError(f"--path {a['path']!r}: no directory {parent}")
    elif a.get("path"):
        raise UsageError("--path goes with --type file or file-private")
    if a.get("fixed") and not a.get("addr"):
        raise UsageError("--fixed needs --addr")
    if a.get("addr") and a.get("align"):
        raise UsageError("--addr and --align exclude each other")
    if a.get("thp") and (hugetlb or kind in ("sysv",)):
        raise UsageError(f"--thp is for anon, shmem and file regions, not {kind}")
    prot = parse_prot(a["prot"]) if a.get("prot") is not None else uapi.PROT_READ | uapi.PROT_WRITE
    align = parse_size(a["align"], "--align") if a.get("align") else 0
    if a.get("thp") and not align and not a.get("addr"):
        align = HPAGE_SIZE
    if align and (align < PAGE or align & (align - 1)):
        raise UsageError(f"--align {a['align']!r} must be a power of two >= 4K")
    if a.get("thp") and kind in ("shmem", "shmem-private"):
        _shmem_thp_allowed()
    addr = parse_addr(st, a["addr"]) if a.get("addr") else None
    if addr is not None and addr % page:
        raise UsageError(f"--addr 0x{addr:x} is not aligned to the page size ({page})")
    if a.get("fixed"):
        _check_replace(st, addr, addr + size, "mmap --fixed")
        _blocked_in(st, addr, addr + size, "mmap --fixed")
    b = st.backend
    for attempt in range(8):
        at = aligned_addr(st, size, align) if align else addr
        try:
            r = _map(st, kind, size, name, prot, at, bool(a.get("fixed")), bool(a.get("thp")), a.get("path"))
            break
        except OSError as e:
            import errno
            # another thread of the process took the aligned hole between reserve and map: try again
            if align and e.errno == errno.EEXIST and attempt < 7:
                continue
            raise
    if a.get("fixed"):
        # UNMAP messages, located against the regions being replaced.  A region the new mapping covers
        # entirely is gone; one it covers in part keeps its name over the whole range (still all mapped,
        # as the selftests' 2-page calls across the pieces expect); the new region is the innermost name.
        st.collect_events()
        breg = _backend_regions(st)
        for old in [x for x in st.regions.values() if r.addr <= x.addr and x.end <= r.end]:
            del st.regions[old.name]
            if breg.get(old.name) is old:
                del breg[old.name]
                st.backend.close_fd(old.fd)
    forget_range(st, r.addr, r.end)
    st.regions[r.name] = r
    d = r.to_dict()
    if a.get("thp"):
        d["thp"] = 1
    if prot != uapi.PROT_READ | uapi.PROT_WRITE:
        d["prot"] = prot
    return d


def _map(st, kind, size, name, prot, addr, fixed, thp, path):
    b = st.backend
    if kind in ("file", "file-private"):
        r = b.mmap_file(size, path, kind == "file", name=name, prot=prot, addr=addr, fixed=fixed)
        if thp:
            b.check_advice(uapi.MADV_HUGEPAGE, "hugepage")
            b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
        return r
    if kind in ("sysv", "sysv-hugetlb"):
        if fixed:
            raise UsageError("--fixed is not for SysV shm (shmat has SHM_REMAP; not offered)")
        return b.mmap_sysv(size, kind == "sysv-hugetlb", name=name, prot=prot, addr=addr)
    if fixed:
        return b.mmap_fixed(size, kind, name, prot, addr) if not thp else _thp(b, b.mmap_fixed(size, kind, name,
                                                                                               prot, addr))
    if thp:
        if b.name == "kernel":
            return b.mmap(size, kind, name=name, prot=prot, addr=addr, thp=True)
        b.check_advice(uapi.MADV_HUGEPAGE, "hugepage")
    return b.mmap(size, kind, name=name, prot=prot, addr=addr)


def _thp(b, r):
    b.check_advice(uapi.MADV_HUGEPAGE, "hugepage")
    b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    return r


THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"


def _shmem_thp_allowed() -> None:
    from ..errors import Unsupported
    try:
        with open(f"{THP_SYSFS}/shmem_enabled") as f:
            text = f.read()
    except OSError:
        raise Unsupported("no THP here: /sys/kernel/mm/transparent_hugepage/shmem_enabled is missing") from None
    cur = _knob(text)
    if cur == "deny":
        raise Unsupported(f"shmem THP is off here: {THP_SYSFS}/shmem_enabled is [deny]")
    if cur != "never":
        return
    sizes = []
    for d in sorted(os.listdir(THP_SYSFS)) if os.path.isdir(THP_SYSFS) else ():
        try:
            with open(f"{THP_SYSFS}/{d}/shmem_enabled") as f:
                if _knob(f.read()) in ("always", "within_size", "advise"):
                    sizes.append(d)
        except OSError:
            continue
    if not sizes:
        raise Unsupported(f"shmem THP is off here: {THP_SYSFS}/shmem_enabled is [never] and no "
                          f"hugepages-*kB/shmem_enabled allows it (MADV_HUGEPAGE needs advise, within_size or "
                          f"always; uffdctl never writes sysfs)")


def _knob(text: str) -> str:
    m = re.search(r"\[(\w[\w-]*)\]", text)
    return m.group(1) if m else text.strip()


def munmap_range(st: SessionState, text: str) -> dict:
    span = parse_range(st, text)
    _blocked_in(st, span.start, span.end, "munmap")
    st.backend.munmap(span.start, span.len)
    st.collect_events()        # UNMAP messages, located against the regions as they were
    changed = carve(st, span.start, span.end)
    return {"start": span.start, "len": span.len, "name": span.region.name, "regions": changed}


def src_from_file(st: SessionState, a: dict, length: int) -> tuple[int, str]:
    """COPY's source bytes from a file: read (by Python, from the file: not registered memory) into the
    scratch buffer."""
    path = a["from_file"]
    off = parse_size(a.get("offset") or 0, "--offset")
    try:
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read(length)
    except OSError as e:
        raise UsageError(f"--from-file {path!r}: {e.strerror or e}") from None
    if len(data) < length:
        raise UsageError(f"--from-file {path!r}: {len(data)} bytes from offset {off}, the destination needs {length}")
    buf = st.scratch(length)
    st.backend.write(buf.addr, data)
    return buf.addr, f"file {path}+{off:#x}"


_SCAN_RAW = re.compile(r"^([A-Za-z_][\w.-]*:\d+|0x[0-9a-fA-F]+|\d+)\+(0x[0-9a-fA-F]+|\d+[KMGkmg]?)$")


@dataclass
class RawSpan:
    """A scan range that need not lie in a region (PAGEMAP_SCAN only reads, unless WP_MATCHING, which touches
    only uffd-wp-async registered VMAs)."""
    start: int
    len: int
    region: Region | None = None

    @property
    def end(self) -> int:
        return self.start + self.len


def scan_span(st: SessionState, text):
    """parse_range, or START+LEN (START 0xADDR or REGION:PAGE; LEN may be 0), anywhere, unaligned."""
    m = _SCAN_RAW.match(str(text).strip()) if text is not None else None
    if m is None:
        return parse_range(st, text)
    try:
        return parse_range(st, text)
    except UsageError:
        pass
    start, length = parse_addr(st, m.group(1)), parse_size(m.group(2), "length")
    if start < 0 or start + length > (1 << 64):
        raise UsageError(f"range {text}: outside the 64-bit address space")
    return RawSpan(start, length, st.region_at(start))


def alias_aligned(st: SessionState, reg: Region, name: str, align_text) -> Region:
    align = parse_size(align_text, "--align")
    if align < PAGE or align & (align - 1):
        raise UsageError(f"--align {align_text!r} must be a power of two >= 4K")
    for attempt in range(8):
        at = aligned_addr(st, reg.len, align)
        try:
            return st.backend.alias_at(reg, name, at)
        except OSError as e:
            import errno
            if e.errno == errno.EEXIST and attempt < 7:
                continue
            raise
    raise AssertionError("unreachable")


__all__ = ["parse_addr", "locate", "locate_event", "carve", "add_region", "read_span", "vmas_of", "check_access",
           "would_block", "refuse_blocking", "per_page", "parse_int"]
