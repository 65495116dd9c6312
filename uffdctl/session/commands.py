"""The session commands: one function per command, ``fn(state, args) -> dict``.

This is the only place their semantics live.  The daemon calls them for socket
requests, ``uffdctl run`` calls them in-process, and the CLI builds its click
subcommands from the same table (:data:`COMMANDS`), so a command's options are
declared once (:class:`Param`).  Importable without click or cffi.

Arguments arrive as a dict of plain JSON values (strings for ranges and sizes,
which are parsed here, against the session's regions).  Every command issues
exactly the ioctl asked for and reports the kernel's result field; a failing
ioctl raises :class:`~uffdctl.errors.UffdError` with ``done`` (partial progress
is never dropped).  Bad input raises :class:`UsageError` (exit 2) before
anything is changed.
"""
from __future__ import annotations

import errno
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import uapi
from ..errors import RemoteErrorLike, UffdError, Unsupported, UsageError, exit_code_of, uffd_error
from ..errors import to_wire as error_dict   # the wire/JSON form of any error (the name this module used)
from ..types import HPAGE_SIZE, HandlerPolicy, MemType, Region
from . import uffds
from .state import SessionState, locate, locate_event

PAGE = uapi.PAGE_SIZE
TOUCH_DECIDE_S = 0.2     # touch without --wait: how long to wait before saying "blocked"
MAX_PAGEMAP_ENTRIES = 1 << 16  # per-page entries up to this; above it runs, counts and symbols only


# -- parsing ---------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGTPEkmgtpe]?)(i?[Bb])?\s*$")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}


def parse_size(text: Any, what: str = "size") -> int:
    """``64K``, ``2M``, ``1G``, ``1T``, ``2P``, ``1E``, ``4096``, ``0x1000`` -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected a number with an optional K/M/G/T/P/E suffix "
                         f"(64K, 2M, 0x1000)")
    return int(m.group(1), 0) * _SUFFIX[m.group(2).upper()]


def parse_int(text: Any, what: str) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    try:
        return int(str(text), 0)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: expected an integer (decimal or 0x hex)") from None


@dataclass
class Span:
    """A resolved range: bytes [start, start+len) inside ``region`` (pages in region units)."""

    start: int
    len: int
    region: Region
    proc: str = "self"     # the process whose mm the range is in (uffdctl.session.multi)

    @property
    def end(self) -> int:
        return self.start + self.len

    @property
    def first_page(self) -> int:
        return (self.start - self.region.addr) // self.region.page_size

    def to_dict(self) -> dict:
        return {"start": self.start, "len": self.len, "region": self.region.name}


_RAW = re.compile(r"^(0x[0-9a-fA-F]+|\d+)\+(.+)$")
_NAMED = re.compile(r"^([A-Za-z_][\w.-]*)(?::(\d+)(?:-(\d+))?)?$")


def parse_range(st: SessionState, text: Any, proc: str | None = None) -> Span:
    """``REGION``, ``REGION:3``, ``REGION:0-15`` (pages, inclusive) or raw ``0xADDR+LEN``, optionally
    prefixed by a process, ``child/buf:3`` (which the command then addresses).  ``proc``: resolve in that
    process whatever the command addresses (COPY's source is always in the session's own mm).

    Every range must lie inside one of the session's regions and be aligned to its
    page size: a range outside them could hit the daemon's own memory.
    """
    if text is None or str(text).strip() == "":
        raise UsageError("missing range: expected REGION[:PAGES] or 0xADDR+LEN")
    text = str(text).strip()
    if "/" in text:
        pname, text = text.split("/", 1)
        if proc is not None and pname != proc:
            raise UsageError(f"range {pname}/{text}: must be in process {proc}")
        st.address_proc(pname)
        proc = pname
    if proc is not None:
        with st.addressing(proc):
            return _parse_range(st, text, proc)
    return _parse_range(st, text, st.cur_proc_name)


def _parse_range(st: SessionState, text: str, proc: str) -> Span:
    m = _RAW.match(text)
    if m:
        start = int(m.group(1), 0)
        length = parse_size(m.group(2), "length")
        reg = st.region_at(start)
        if reg is None:
            raise UsageError(f"range {text}: 0x{start:x} is not inside any region of this session "
                             f"(regions: {', '.join(st.regions) or 'none'})")
        if start % reg.page_size or length % reg.page_size:
            raise UsageError(f"range {text}: start and length must be aligned to the page size "
                             f"({reg.page_size}) of region {reg.name}")
        if length <= 0:
            raise UsageError(f"range {text}: length must be > 0")
        if start + length > reg.end:
            raise UsageError(f"range {text}: ends 0x{start + length:x}, past the end of region {reg.name} "
                             f"(0x{reg.end:x})")
        return Span(start, length, reg, proc)
    m = _NAMED.match(text)
    if not m:
        raise UsageError(f"bad range {text!r}: expected REGION, REGION:N, REGION:A-B or 0xADDR+LEN")
    name, a, b = m.group(1), m.group(2), m.group(3)
    reg = st.regions.get(name)
    if reg is None:
        raise UsageError(f"unknown region {name!r} (regions: {', '.join(st.regions) or 'none; use mmap'})")
    if a is None:
        return Span(reg.addr, reg.len, reg, proc)
    first = int(a)
    last = int(b) if b is not None else first
    if last < first:
        raise UsageError(f"range {text}: pages {first}-{last} are reversed")
    if last >= reg.pages:
        raise UsageError(f"range {text}: page {last} is outside region {name} (pages 0-{reg.pages - 1})")
    return Span(reg.page(first), (last - first + 1) * reg.page_size, reg, proc)


def parse_flags(cls, text: Any, what: str) -> int:
    if text is None or text == "":
        return 0
    try:
        return cls.parse(str(text))
    except ValueError as e:
        raise UsageError(f"bad {what}: {e}") from None


# -- the command table -----------------------------------------------------------------
@dataclass
class Param:
    """One argument or option, declared once for the CLI, the daemon and ``run``.

    ``decl``: ``"range"`` (positional) or ``"--size"``; kinds: str, int, float, flag,
    switch (``--on/--off``: True/False/None), choice.  ``local``: rendering only,
    never sent to the session.
    """

    decl: str
    help: str = ""
    kind: str = "str"
    required: bool = False
    default: Any = None
    choices: tuple = ()
    local: bool = False
    metavar: str | None = None

    @property
    def positional(self) -> bool:
        return not self.decl.startswith("-")

    @property
    def dest(self) -> str:
        d = self.decl.split("/")[0].lstrip("-")
        return d.replace("-", "_")


@dataclass
class Command:
    name: str
    fn: Callable[[SessionState, dict], dict]
    help: str
    example: str
    params: list[Param] = field(default_factory=list)
    locked: bool = True       # run under the state lock (touch manages the lock itself)
    kernel_name: str = ""


COMMANDS: dict[str, Command] = {}


# Every command can address another process of the session (--proc, or a range child/buf:3) and every
# command that uses a uffd names it (--uffd); see uffdctl.session.multi.
PROC = Param("--proc", "the process to act in (default: the session itself, 'self'; see fork)")
UFFD = Param("--uffd", "the uffd to use (default u0 of the process; see uffd open)")
_UFFD_COMMANDS = {"handler", "events", "read"}


def command(name: str, help: str, example: str, *params: Param, locked: bool = True, kernel_name: str = ""):
    def deco(fn):
        ps = list(params)
        if not any(p.dest == "proc" for p in ps):
            ps.append(PROC)
        if (kernel_name.startswith("UFFDIO") or name in _UFFD_COMMANDS) and not any(p.dest == "uffd" for p in ps):
            ps.append(UFFD)
        COMMANDS[name] = Command(name, fn, help, example, ps, locked, kernel_name)
        return fn
    return deco


RANGE = Param("range", "REGION[:PAGES] (buf, buf:3, buf:0-15) or 0xADDR+LEN", required=True, metavar="RANGE")
DONTWAKE = Param("--dontwake", "set the *_MODE_DONTWAKE bit: the faulting thread stays blocked until wake",
                 kind="flag")
HINTS = (Param("--access-likely", "RFC hint ACCESS_LIKELY (never merged; emulator profile rfc-hints only)",
               kind="flag"),
         Param("--write-likely", "RFC hint WRITE_LIKELY (never merged; emulator profile rfc-hints only)",
               kind="flag"))


def execute(st: SessionState, name: str, args: dict | None) -> dict:
    """Run one command against the state: the one entry point of both transports."""
    cmd = COMMANDS.get(name)
    if cmd is None:
        raise UsageError(f"unknown command {name!r}")
    args = dict(args or {})
    known = {p.dest for p in cmd.params}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UsageError(f"{name}: unknown argument(s) {', '.join(unknown)}")
    for p in cmd.params:
        args.setdefault(p.dest, p.default)
        if p.required and args[p.dest] in (None, ""):
            raise UsageError(f"{name}: missing {p.decl}")
    with st.lock:
        uffds.finish_ops(st)  # the bookkeeping of --thread system calls that returned meanwhile
    with st.addressing(args.pop("proc", None), args.pop("uffd", None)):
        if not cmd.locked:
            out = cmd.fn(st, args)
        else:
            with st.lock:
                out = cmd.fn(st, args)
    with st.lock:
        st.collect_events()   # a barrier: blocking events (REMOVE, UNMAP, REMAP, FORK) are in the log now
        st.last_result = out
    return out


def _hint_bits(st: SessionState, args: dict, ioctl: str) -> int:
    """The never-merged RFC hint mode bits: only the emulator's ``rfc-hints`` profile has them."""
    wanted = [h for h in ("access_likely", "write_likely") if args.get(h)]
    if not wanted:
        return 0
    modes = st.backend.hint_modes(ioctl)          # the backend says which it accepts (none on a real kernel)
    if not modes and not st.backend.hint_modes("COPY"):
        raise Unsupported(f"--{wanted[0].replace('_', '-')} is an emulator-only RFC hint (never merged)",
                          "start the session with --backend emu --profile rfc-hints")
    bits = 0
    for h in wanted:
        if h not in modes:
            raise Unsupported(f"the emulator has no {h.upper()} mode for UFFDIO_{ioctl}")
        bits |= modes[h]
    return bits


RESUME = (Param("--resume", "resume after short counts (EAGAIN) until the range is done (uffdctl.ops)",
                 kind="flag"),
          Param("--skip-existing", "with --resume: wake and step over pages that exist (EEXIST)", kind="flag"))


def _issue(a: dict, span: Span, single: Callable[[], int], ranged: str, *args) -> tuple[int, dict]:
    """One ioctl, exactly as asked, or with --resume the uffdctl.ops loop (each call counted in ``ops``)."""
    if not (a.get("resume") or a.get("skip_existing")):
        return single(), {}
    from .. import ops
    r = getattr(ops, ranged)(*args, page=span.region.page_size, skip_existing=bool(a.get("skip_existing")))
    return r.done, {"ops": r.to_dict()}


def _span_dict(span: Span, **kw) -> dict:
    d = {"start": span.start, "len": span.len}
    d.update(kw)
    return d


# -- mappings --------------------------------------------------------------------------
_NAME_OK = re.compile(r"^[A-Za-z_][\w.-]{0,63}$")   # at most 64 characters


EXTRA_TYPES = ("file", "file-private", "sysv", "sysv-hugetlb", "shared-anon")   # mapped by their own Backend methods


@command("mmap", "Map a new region (anon, shmem, shmem-private, hugetlb, hugetlb-private, file, file-private, "
         "sysv, sysv-hugetlb, shared-anon: MAP_SHARED|MAP_ANONYMOUS, shmem to the kernel).",
         "uffdctl mmap --size 4M --align 2M --thp --name huge    (1 GiB pages: uffdctl mmap --size 1G --type "
         "hugetlb --page-size 1G)",
         Param("--size", "length, with K/M/G suffix", required=True),
         Param("--type", "memory type", kind="choice", choices=tuple(m.value for m in MemType) + EXTRA_TYPES,
               default="anon"),
         Param("--noreserve", "kernel: MAP_NORESERVE (no commit charge: a mapping larger than RAM + swap; "
                              "touching more than the machine holds then ends in SIGBUS/OOM)", kind="flag"),
         Param("--name", "region name (default r0, r1, ...)"),
         Param("--path", "--type file/file-private: a file (created if missing, removed at the end if created) or "
                         "a directory (a fresh unlinked file on that filesystem)"),
         Param("--align", "start address aligned to this (e.g. 2M)"),
         Param("--addr", "map at this address (ADDR or REGION:PAGE): MAP_FIXED_NOREPLACE, or MAP_FIXED with --fixed"),
         Param("--fixed", "with --addr: MAP_FIXED (replaces the session's regions there: UNMAP events)", kind="flag"),
         Param("--thp", "MADV_HUGEPAGE (anon: default --align 2M) instead of the default MADV_NOHUGEPAGE",
               kind="flag"),
         Param("--prot", "none | read,write,exec (default read,write)"),
         Param("--page-size", "hugetlb: the huge page size, 2M or 1G (MFD_HUGE_2MB / MFD_HUGE_1GB; default the "
                              "default hstate's, Hugepagesize in /proc/meminfo)"),
         Param("--thread", "issue mmap(2) from this session thread and return after 0.2 s like touch (with --fixed: "
               "blocked=1 while the UNMAP message of what it replaces waits to be read); wait waits for it"))
def cmd_mmap(st, a):
    if a.get("type") in EXTRA_TYPES or a.get("align") or a.get("addr") or a.get("fixed") or a.get("thp") \
            or a.get("path") or a.get("prot") is not None or a.get("page_size") is not None or a.get("thread"):
        return mmap_ext(st, a)
    size = parse_size(a["size"])
    if size <= 0:
        raise UsageError(f"size {a['size']!r} must be > 0")
    if size >= 1 << 47:
        raise UsageError(f"size {a['size']!r} does not fit the x86-64 user address space (128 TiB)")
    memtype = MemType(a["type"])
    page = uapi.PAGE_SIZE
    if memtype.hugetlb:
        page = HPAGE_SIZE
    if size % page:
        raise UsageError(f"size {a['size']!r} is not a multiple of the {memtype.value} page size ({page})")
    name = a.get("name")
    if name is not None:
        if not _NAME_OK.match(name) or name.startswith("__"):
            raise UsageError(f"bad region name {name[:80]!r}{'...' if len(name) > 80 else ''}: letters, digits, "
                             f"_ . - (not starting with a digit or __), at most 64 characters")
        if name in st.regions:
            raise UsageError(f"region {name!r} exists")
    r = st.backend.mmap(size, memtype, name=name, **({"noreserve": True} if a.get("noreserve") else {}))
    forget_range(st, r.addr, r.end)     # nothing of an earlier mapping at these addresses applies
    st.regions[r.name] = r
    return r.to_dict()


@command("alias", "Map a region's file a second time (shmem/hugetlb): populate the page cache for continue.",
         "uffdctl alias buf --name cache",
         Param("region", "a shmem or hugetlb region", required=True, metavar="REGION"),
         Param("--name", "name of the alias"),
         Param("--align", "start address aligned to this (e.g. 2M: a PMD-mappable alias)"))
def cmd_alias(st, a):
    reg = st.regions.get(a["region"])
    if reg is None:
        raise UsageError(f"unknown region {a['region']!r} (regions: {', '.join(st.regions) or 'none'})")
    if not reg.memtype.file_backed:
        raise UsageError(f"region {reg.name} is anon: there is no file to alias")
    if reg.kind == "shared-anon":
        raise UsageError(f"region {reg.name} is shared-anon: its shmem file (shmem_zero_setup()) has no fd to "
                         f"alias; use --type shmem (a memfd) for a second mapping")
    name = a.get("name") or f"{reg.name}-alias"
    if not _NAME_OK.match(name) or name in st.regions:
        raise UsageError(f"bad or existing region name {name!r}")
    if a.get("align"):
        r = alias_aligned(st, reg, name, a["align"])
    else:
        r = st.backend.alias(reg, name=name)
    st.regions[r.name] = r
    return dict(r.to_dict(), alias_of=reg.name)


@command("munmap", "Unmap a region, or any range of one (the regions are carved to match).", "uffdctl munmap buf:2-3",
         Param("region", "REGION, or a range REGION:A-B / 0xADDR+LEN", required=True, metavar="RANGE"),
         Param("--thread", "issue munmap(2) from this session thread and return after 0.2 s like touch (blocked=1 "
               "while its UNMAP message waits to be read, with handler --unread); wait waits for it"))
def cmd_munmap(st, a):
    if a["region"] not in st.regions and a["region"] is not None and (":" in str(a["region"]) or
                                                                       "+" in str(a["region"])):
        return munmap_range(st, a["region"], a)
    reg = st.regions.get(a["region"])
    if reg is None:
        raise UsageError(f"unknown region {a['region']!r} (munmap takes a region name; regions: "
                         f"{', '.join(st.regions) or 'none'})")
    for t in st.pending_touches():
        if t.start < reg.end and reg.addr < t.start + t.len:
            # the woken access would retry on an unmapped address: SIGSEGV for the whole session
            raise UsageError(f"touch #{t.id} (thread {t.thread}) is blocked in region {reg.name}: resolve it first")

    def finish(_):
        st.regions.pop(reg.name, None)
        for key in [k for k in st.registrations if reg.addr <= k[0] < reg.end]:
            del st.registrations[key]
        forget_range(st, reg.addr, reg.end)
        return {"start": reg.addr, "len": reg.len, "name": reg.name}
    return issue(st, a, "munmap", reg.addr, reg.len, lambda b: b.munmap(reg.addr, reg.len), finish)


def _registered_mode(st: SessionState, reg: Region) -> int:
    """What this session registered over the region (its own bookkeeping: used only where the backend
    cannot say what the kernel keeps per VMA)."""
    mode = 0
    for (s, n), m in st.registrations.items():
        if s < reg.end and reg.addr < s + n:
            mode |= m
    return mode


def region_vmas(st: SessionState, reg: Region) -> list[dict]:
    """The region's VMAs with the registration the kernel keeps on each (as smaps VmFlags um/uw/ui show it):
    registering or unregistering part of a region splits its VMA, and each part has its own mode."""
    vmas = st.backend.uffd_vmas(reg.addr, reg.end)
    if vmas is None:
        m = _registered_mode(st, reg)
        vmas = [(reg.addr, reg.end, m)]
    return [{"start": s, "end": e, "first_page": (s - reg.addr) // reg.page_size,
             "last_page": (e - reg.addr) // reg.page_size - 1, "mode": m,
             "mode_decoded": uapi.RegisterMode.decode(m)} for s, e, m in vmas]


@command("regions", "List the session's regions (with Private_Dirty from the memory maps).", "uffdctl regions")
def cmd_regions(st, a):
    out = []
    for r in st.regions.values():
        d = r.to_dict()
        vmas = region_vmas(st, r)
        modes = {v["mode"] for v in vmas}
        mode = modes.pop() if len(modes) == 1 else None     # None: the parts differ (see vmas)
        from ..pagemap import read as pm_read
        present = pm_read(st.backend, r.addr, r.len // PAGE).counts()["present"]
        try:
            pd = st.backend.smaps_private_dirty(r.addr)
        except Exception:
            pd = None
        d.update(mode=mode, mode_decoded=uapi.RegisterMode.decode(mode) if mode is not None else None, vmas=vmas,
                 present=present, private_dirty=pd)
        out.append(d)
    return {"regions": out}


# -- userfaultfd -----------------------------------------------------------------------
@command("api", "UFFDIO_API on a uffd (the session's, opened on first need, or --uffd NAME): negotiate the "
         "features. Works once per uffd: a second call is issued and answered 'already initialised' (EINVAL).",
         "uffdctl api --features thread_id,wp_unpopulated    (negative test: uffdctl api --uffd u2 --api 0xab)",
         Param("--features", "UFFD_FEATURE_* names, comma separated (thread_id,wp_async,...) or a raw number "
               "(unknown bits are passed through)"),
         Param("--api", "raw uffdio_api.api (default UFFD_API, 0xaa)"),
         kernel_name="UFFDIO_API")
def cmd_api(st, a):
    features = parse_flags(uapi.Feature, a.get("features"), "--features")
    api = parse_int(a["api"], "--api") if a.get("api") is not None else uapi.UFFD_API
    return uffds.api_command(st, features, api, a.get("features") is not None)


@command("register", "UFFDIO_REGISTER a range with modes missing, wp, minor.",
         "uffdctl register buf --mode missing,wp",
         RANGE, Param("--mode", "missing, wp, minor (comma separated)", required=True),
         kernel_name="UFFDIO_REGISTER")
def cmd_register(st, a):
    span = parse_range(st, a["range"])
    mode = parse_flags(uapi.RegisterMode, a["mode"], "--mode")
    ioctls = st.get_uffd().register(span.start, span.len, mode)
    st.registrations[(span.start, span.len)] = mode
    return _span_dict(span, mode=mode, mode_decoded=uapi.RegisterMode.decode(mode), ioctls=ioctls,
                      ioctls_decoded=uapi.Ioctl.decode(ioctls))


@command("unregister", "UFFDIO_UNREGISTER a range.", "uffdctl unregister buf", RANGE,
         kernel_name="UFFDIO_UNREGISTER")
def cmd_unregister(st, a):
    span = parse_range(st, a["range"])
    st.get_uffd().unregister(span.start, span.len)
    for key in [k for k in st.registrations if k[0] < span.end and span.start < k[0] + k[1]]:
        del st.registrations[key]
    return _span_dict(span)


def _src_span(st: SessionState, a: dict, length: int) -> tuple[int, str]:
    """COPY's source: a range of the session, or the scratch buffer filled with --fill."""
    if a.get("from_file"):
        return src_from_file(st, a, length)
    if a.get("src"):
        src = parse_range(st, a["src"], proc="self")   # the ioctl reads it from the session's own mm
        if src.len < length:
            raise UsageError(f"--src {a['src']} has {src.len} bytes, the destination needs {length}")
        return src.start, src.region.name
    fill = parse_int(a.get("fill") if a.get("fill") is not None else 0xAA, "--fill")
    if not 0 <= fill <= 255:
        raise UsageError(f"--fill {fill} is not a byte (0-255)")
    buf = st.scratch(length)
    st.self_backend.write(buf.addr, bytes([fill]) * length)
    return buf.addr, f"fill 0x{fill:02x}"


@command("copy", "UFFDIO_COPY: install pages copied from --src (a range) or a buffer of --fill bytes.",
         "uffdctl copy buf:3 --fill 0x41",
         RANGE, Param("--src", "source range (REGION[:PAGES] or 0xADDR+LEN)"),
         Param("--fill", "source byte when no --src (default 0xaa)"),
         Param("--from-file", "source bytes from this file (from --offset; the range's length)"),
         Param("--offset", "with --from-file: byte offset into the file (default 0)"), DONTWAKE,
         Param("--wp", "UFFDIO_COPY_MODE_WP: install write-protected", kind="flag"), *HINTS, *RESUME,
         kernel_name="UFFDIO_COPY")
def cmd_copy(st, a):
    span = parse_range(st, a["range"])
    mode = (uapi.CopyMode.DONTWAKE if a.get("dontwake") else 0) | (uapi.CopyMode.WP if a.get("wp") else 0)
    mode |= _hint_bits(st, a, "COPY")
    u = st.get_uffd()
    src, what = _src_span(st, a, span.len)
    done, extra = _issue(a, span, lambda: u.copy(span.start, src, span.len, int(mode)), "copy_range",
                         u, span.start, src, span.len, int(mode))
    return dict({"dst": span.start, "src": src, "len": span.len, "mode": int(mode), "copy": done, "source": what},
                **extra)


@command("zeropage", "UFFDIO_ZEROPAGE: map the zero page.", "uffdctl zeropage buf:0-3",
         RANGE, DONTWAKE, *HINTS, *RESUME, kernel_name="UFFDIO_ZEROPAGE")
def cmd_zeropage(st, a):
    span = parse_range(st, a["range"])
    mode = (uapi.ZeropageMode.DONTWAKE if a.get("dontwake") else 0) | _hint_bits(st, a, "ZEROPAGE")
    u = st.get_uffd()
    done, extra = _issue(a, span, lambda: u.zeropage(span.start, span.len, int(mode)), "zeropage_range",
                         u, span.start, span.len, int(mode))
    return _span_dict(span, mode=int(mode), zeropage=done, **extra)


@command("continue", "UFFDIO_CONTINUE: map the page cache page (minor faults, shmem/hugetlb).",
         "uffdctl continue buf:0",
         RANGE, DONTWAKE, Param("--wp", "UFFDIO_CONTINUE_MODE_WP", kind="flag"), *RESUME,
         kernel_name="UFFDIO_CONTINUE")
def cmd_continue(st, a):
    span = parse_range(st, a["range"])
    u = st.get_uffd()
    mode = (uapi.ContinueMode.DONTWAKE if a.get("dontwake") else 0) | (uapi.ContinueMode.WP if a.get("wp") else 0)
    done, extra = _issue(a, span, lambda: u.continue_(span.start, span.len, int(mode)), "continue_range",
                         u, span.start, span.len, int(mode))
    return _span_dict(span, mode=int(mode), mapped=done, **extra)


@command("writeprotect", "UFFDIO_WRITEPROTECT: --on protects, --off un-protects (and wakes unless --dontwake).",
         "uffdctl writeprotect buf --on",
         RANGE, Param("--on/--off", "protect or un-protect", kind="switch"), DONTWAKE, *HINTS,
         kernel_name="UFFDIO_WRITEPROTECT")
def cmd_writeprotect(st, a):
    span = parse_range(st, a["range"])
    if a.get("on") is None:
        raise UsageError("writeprotect: say --on or --off")
    mode = (uapi.WriteprotectMode.WP if a["on"] else 0) | (uapi.WriteprotectMode.DONTWAKE if a.get("dontwake") else 0)
    mode |= _hint_bits(st, a, "WRITEPROTECT")
    u = st.get_uffd()
    u.writeprotect(span.start, span.len, int(mode))
    return _span_dict(span, mode=int(mode))


@command("wake", "UFFDIO_WAKE: wake threads blocked on faults in the range.", "uffdctl wake buf:3",
         RANGE, kernel_name="UFFDIO_WAKE")
def cmd_wake(st, a):
    span = parse_range(st, a["range"])
    st.get_uffd().wake(span.start, span.len)
    return _span_dict(span)


@command("poison", "UFFDIO_POISON: install poison markers (access -> SIGBUS).", "uffdctl poison buf:5",
         RANGE, DONTWAKE, kernel_name="UFFDIO_POISON")
def cmd_poison(st, a):
    span = parse_range(st, a["range"])
    u = st.get_uffd()
    mode = int(uapi.PoisonMode.DONTWAKE) if a.get("dontwake") else 0
    return _span_dict(span, mode=mode, updated=u.poison(span.start, span.len, mode))


@command("move", "UFFDIO_MOVE: move pages from --src into the range (anon).",
         "uffdctl move buf:0-1 --src stage:0-1",
         RANGE, Param("--src", "source range", required=True), DONTWAKE,
         Param("--allow-src-holes", "UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES", kind="flag"), kernel_name="UFFDIO_MOVE")
def cmd_move(st, a):
    span = parse_range(st, a["range"])
    src = parse_range(st, a["src"])
    if src.len != span.len:
        raise UsageError(f"move: --src has {src.len} bytes, the destination {span.len}")
    u = st.get_uffd()
    mode = (uapi.MoveMode.DONTWAKE if a.get("dontwake") else 0) | \
           (uapi.MoveMode.ALLOW_SRC_HOLES if a.get("allow_src_holes") else 0)
    done = u.move(span.start, src.start, span.len, int(mode))
    return {"dst": span.start, "src": src.start, "len": span.len, "mode": int(mode), "move": done}


_POLICY_HELP = ("missing-fault policy: queue (wait for the user), zeropage, copy (from --src), fill (--fill byte)")


@command("handler", "Show or set the fault handler's policy (default: queue, faults wait for the user).",
         "uffdctl handler --policy zeropage",
         Param("--policy", _POLICY_HELP, kind="choice", choices=HandlerPolicy.MISSING),
         Param("--wp", "wp-fault policy", kind="choice", choices=HandlerPolicy.WP),
         Param("--minor", "minor-fault policy", kind="choice", choices=HandlerPolicy.MINOR),
         Param("--src", "source range for --policy copy (in the session's own memory)"),
         Param("--dst", "with --src: the region the source lines up with (default: the one registered region)"),
         Param("--fill", "byte for --policy fill"),
         Param("--read/--unread", "--unread: leave messages unread in the uffd (faults and events stay pending, "
               "the mm operation that raised an event stays blocked); --read resumes", kind="switch"))
def cmd_handler(st, a):
    p = st.policy
    warning = None
    if any(a.get(k) is not None for k in ("policy", "wp", "minor", "src", "fill", "dst")):
        kw = dict(missing=a.get("policy") or p.missing, wp=a.get("wp") or p.wp, minor=a.get("minor") or p.minor,
                  base=p.base, src=p.src, fill=p.fill, page_size=p.page_size, copy_mode=p.copy_mode)
        if a.get("src") or a.get("dst"):
            if not a.get("src"):
                raise UsageError("--dst goes with --src")
            src_span = parse_range(st, a["src"], proc="self")   # the handler's ioctl reads the session's memory
            dst_span = parse_range(st, a["dst"]) if a.get("dst") else None
            base, src, n, warning = uffds.handler_copy_source(st, src_span, dst_span, a["src"])
            kw.update(src=src, base=base)
            kw["src_len"] = n
        if a.get("fill") is not None:
            fill = parse_int(a["fill"], "--fill")
            if not 0 <= fill <= 255:
                raise UsageError(f"--fill {fill} is not a byte (0-255)")
            kw["fill"] = fill
        if kw["missing"] == "copy" and not kw["src"]:
            raise UsageError("--policy copy needs --src RANGE")
        src_len = kw.pop("src_len", None)
        pol = HandlerPolicy(**kw)
        if src_len is not None:
            pol.src_len = src_len   # read by the native handler (bounds of the copy source)
        st.start_handler(pol)
    if a.get("read") is not None:
        uffds.set_unread(st, not a["read"])
    p = st.policy
    out = {"uffd": st.slot.name, "missing": p.missing, "wp": p.wp, "minor": p.minor, "src": p.src,
           "base": p.base, "fill": p.fill, "running": int(st.handler is not None), "unread": int(st.slot.unread),
           "stats": st.handler.stats() if st.handler is not None else None}
    if warning:
        out["warning"] = warning
    return out


# -- threads and accesses --------------------------------------------------------------
@command("touch", "Access a range from a thread of the session (one byte per page); it may block on a fault.",
         "uffdctl touch buf:3 --write",
         RANGE, Param("--read", "read access", kind="flag"), Param("--write", "write access", kind="flag"),
         Param("--wait", "wait until the access finishes (or --timeout)", kind="flag"),
         Param("--timeout", "seconds to wait with --wait (default: forever)", kind="float"),
         Param("--thread", "thread name (default main)", default="main"),
         Param("--fill", "byte written by --write (default 0x01)"),
         locked=False)
def cmd_touch(st, a):
    if bool(a.get("read")) == bool(a.get("write")):
        raise UsageError("touch: say --read or --write (one of them)")
    thread = a.get("thread") or "main"
    if not _NAME_OK.match(thread):
        raise UsageError(f"bad thread name {thread!r}")
    timeout = a.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0):
        raise UsageError(f"bad --timeout {timeout!r}: a finite number of seconds >= 0")
    fill = parse_int(a["fill"], "--fill") if a.get("fill") is not None else 1
    if not 0 <= fill <= 255:
        raise UsageError(f"--fill {fill} is not a byte (0-255)")
    with st.lock:
        span = parse_range(st, a["range"])
        check_access(st, span, bool(a.get("write")), "touch")
        busy = st.busy_touch(thread)
        if busy is not None:
            raise UsageError(f"thread {thread} is still blocked in touch #{busy.id} at 0x{busy.start:x}: "
                             f"resolve that fault or use --thread NAME")
        t = st.new_touch(thread, span.start, span.len, bool(a.get("write")), fill)
    t.access.wait(timeout if a.get("wait") else TOUCH_DECIDE_S)
    with st.lock:
        d = t.to_dict()
        d["tid"] = st.backend.thread(thread).tid
        return d


@command("wait", "Wait for a touch (default: the last one) to finish.", "uffdctl wait 3 --timeout 5",
         Param("touch", "touch number (default: the last)", kind="int", metavar="[TOUCH]"),
         Param("--timeout", "seconds (default 10)", kind="float", default=10.0),
         locked=False)
def cmd_wait(st, a):
    with st.lock:
        tid = a.get("touch") or (max(st.touches) if st.touches else None)
        t = st.touches.get(tid) if tid is not None else None
        if t is None:
            raise UsageError(f"no touch #{tid}" if tid else "no touch yet")
    timeout = a.get("timeout")
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0:
        raise UsageError(f"bad --timeout {timeout!r}: a finite number of seconds >= 0")
    t.access.wait(timeout)
    with st.lock:
        uffds.finish_op(st, t)
        return dict(t.to_dict(), tid=st.backend.thread(t.thread).tid)


def _blocked_at(st: SessionState, t, tid: int) -> int:
    """Where a blocked touch waits: the address of the newest fault message of its thread inside the touch
    (its ptid, UFFD_FEATURE_THREAD_ID), else the touch's start (no message names it yet)."""
    st.collect_events()
    for e in reversed(st.events):
        if e.get("event") == "pagefault" and e.get("ptid") == tid and t.start <= e["address"] < t.start + t.len \
                and e.get("seq", 0) >= t.first_seq:
            return e["address"] & ~(t.page_size - 1)
    return t.start


@command("faults", "Per-thread fault counters and what each thread is blocked on. minflt/majflt: the thread's "
         "/proc counters; access_minflt/access_majflt: summed over its finished touches.",
         "uffdctl faults")
def cmd_faults(st, a):
    out = []
    if "main" not in st.thread_names:
        st.thread("main")
    for name in st.thread_names:
        th = st.backend.thread(name)
        minflt, majflt = th.faults()
        amin, amaj = st.access_faults(name)
        busy = st.busy_touch(name)
        out.append({"thread": name, "tid": th.tid, "minflt": minflt, "majflt": majflt,
                    "access_minflt": amin, "access_majflt": amaj,
                    "blocked": int(busy is not None), "touch": busy.id if busy else None,
                    "address": _blocked_at(st, busy, th.tid) if busy else None})
    return {"threads": out}


@command("touches", "The touches made so far: finished or still blocked, with their fault counts.",
         "uffdctl touches")
def cmd_touches(st, a):
    return {"touches": [t.to_dict() for t in st.touches.values()]}


@command("events", "The message log: faults and events the handler read, with seq numbers (the message's "
         "place in the stream: never renumbered). The handler's log keeps the newest 65536 messages and the "
         "session's too; messages overwritten before they were read show as one 'dropped' entry with the count "
         "and why (their faults were still resolved by the policy).",
         "uffdctl events --since 3",
         Param("--since", "only events with seq > N", kind="int", default=0),
         Param("--last", "only the newest N events", kind="int"),
         Param("--follow", "keep printing new events (Ctrl-C stops)", kind="flag", local=True),
         Param("--count", "with --follow: stop after N events", kind="int", local=True))
def cmd_events(st, a):
    since = a.get("since") or 0
    if not isinstance(since, int) or since < 0:
        raise UsageError(f"bad --since {since!r}")
    last = a.get("last")
    if last is not None and (not isinstance(last, int) or last <= 0):
        raise UsageError(f"bad --last {last!r}: a positive number of events")
    st.collect_events()
    evs = [e for e in st.events if e["seq"] > since]
    ctx = st.addressing_ctx()
    if ctx.uffd is not None:       # --uffd U: that uffd's messages only
        evs = [e for e in evs if e.get("uffd") == st.slot_name()]
    elif ctx.proc is not None:     # --proc P: the messages of P's uffds
        evs = [e for e in evs if e.get("proc") == ctx.proc]
    if last is not None:
        evs = evs[-last:]
    d = {"events": evs, "next": st.events[-1]["seq"] if st.events else 0}
    if st.events_dropped:
        d["dropped"] = {"count": st.events_dropped, "reason": "older than the newest 65536 entries the session "
                                                              "keeps"}
    return d


# -- /proc -----------------------------------------------------------------------------
def pagemap_entries(st: SessionState, span: Span, view=None) -> list[dict]:
    from ..pagemap import read as pm_read
    zero = st.learn_zero_pfn()
    out = []
    base = span.region.addr
    for e in (view if view is not None else pm_read(st.backend, span.start, span.len // PAGE)):
        d = e.to_dict()
        d["index"] = (e.addr - base) // PAGE
        d["zero"] = int(bool(e.present and zero and e.pfn == zero))
        d["marker"] = int(e.marker)
        d["symbol"] = e.symbol(zero)
        out.append(d)
    return out


def pagemap_runs(span: Span, view) -> list[dict]:
    """Run-length summary: consecutive pages with the same pagemap flags, one dict per run."""
    from ..pagemap import flag_names
    base = span.region.addr
    return [{"index": (view.addr - base) // PAGE + i, "addr": view.addr + i * PAGE, "pages": n,
             "flags": flag_names(bits)} for i, n, bits in view.runs()]


@command("pagemap", "Decode /proc/self/pagemap of the session for a range (--map: one cell per page). Gives a "
         f"run-length summary of the flags (runs) and counts; per-page entries up to {MAX_PAGEMAP_ENTRIES} pages.",
         "uffdctl pagemap buf --map",
         RANGE, Param("--map", "a grid picture, one character per page", kind="flag", local=True))
def cmd_pagemap(st, a):
    from ..pagemap import read as pm_read
    span = parse_range(st, a["range"])
    npages = span.len // PAGE
    view = pm_read(st.backend, span.start, npages)  # one read into an array, whatever the size
    zero = st.learn_zero_pfn()
    out = {"start": span.start, "len": span.len, "region": span.region.name, "zero_pfn": zero,
           "index": (span.start - span.region.addr) // PAGE, "pages": npages, "counts": view.counts(),
           "runs": pagemap_runs(span, view)}
    if npages <= MAX_PAGEMAP_ENTRIES:
        out["entries"] = pagemap_entries(st, span, view)
    else:
        out["symbols"] = view.symbols(zero)
    return out


# --thread on a system call that may block until its event is read (handler --unread): proc_commands
THREAD_OPT = Param("--thread", "issue the system call from this session thread and return after 0.2 s like touch "
                   "(blocked=1 while it waits, e.g. for its REMOVE message to be read); wait waits for it")


def maybe_async(st, a, what, span, call):
    return uffds.maybe_async(st, a, what, span, call, TOUCH_DECIDE_S)


def issue(st, a, what, start, len, call, finish) -> dict:
    """call(backend) -> value, then finish(value) -> the command's result; with --thread T from session thread
    T (blocked=1 while the call waits, e.g. munmap for its UNMAP message to be read), finish once it returned
    (at the next command, or wait)."""
    return uffds.maybe_async(st, a, what, Span(start, len, None), call, TOUCH_DECIDE_S, finish)


MADVICE = {"dontneed": uapi.MADV_DONTNEED, "free": uapi.MADV_FREE, "remove": uapi.MADV_REMOVE,
           "guard-install": uapi.MADV_GUARD_INSTALL, "guard-remove": uapi.MADV_GUARD_REMOVE,
           # mmops: THP, reclaim and populate
           "hugepage": uapi.MADV_HUGEPAGE, "nohugepage": uapi.MADV_NOHUGEPAGE, "collapse": uapi.MADV_COLLAPSE,
           "pageout": uapi.MADV_PAGEOUT, "cold": uapi.MADV_COLD, "willneed": uapi.MADV_WILLNEED,
           "populate_read": uapi.MADV_POPULATE_READ, "populate_write": uapi.MADV_POPULATE_WRITE}
# fork behaviour (proc): the child lacks a DONTFORK VMA; a WIPEONFORK one is empty in the child
MADVICE.update({"dontfork": 10, "dofork": 11, "wipeonfork": 18, "keeponfork": 19})


@command("madvise", "madvise(2) a range: dontneed (REMOVE event), free (clean but writable), remove, "
         "guard-install / guard-remove (guard markers), hugepage / nohugepage / collapse (THP), pageout / cold "
         "(reclaim; pageout of anon needs swap: swap on), willneed, populate_read / populate_write, "
         "dontfork / dofork / wipeonfork / keeponfork.",
         "uffdctl madvise buf --advice pageout",
         RANGE, Param("--advice", "the advice", kind="choice", choices=tuple(MADVICE), required=True),
         Param("--no-drain", "pageout/cold: do not drain the per-CPU LRU batches first (folios still in another "
                             "CPU's batch are skipped by the kernel)", kind="flag"),
         THREAD_OPT)
def cmd_madvise(st, a):
    span = parse_range(st, a["range"])
    advice = MADVICE[a["advice"]]
    st.backend.check_advice(advice, a["advice"])
    if a["advice"] in ("populate_read", "populate_write") and not a.get("thread"):
        refuse_blocking(st, span, a["advice"] == "populate_write", f"madvise {a['advice']}")
    # MADV_FREE too: a folio still in another CPU's lru_add batch is not on the LRU, so lru_lazyfree_fn() skips
    # it and it stays swap-backed (a later pageout swaps it instead of discarding it)
    if a["advice"] in ("pageout", "cold", "free") and not a.get("no_drain"):
        st.backend.lru_drain()
    pending = maybe_async(st, a, "madvise", span, lambda b: b.madvise(span.start, span.len, advice))
    if pending is not None:   # --thread: it may stay blocked until its event is read
        return dict(pending, advice=a["advice"])
    return _span_dict(span, advice=a["advice"])


@command("clear-refs", "Write 1-5 to /proc/self/clear_refs (4: clear soft-dirty).", "uffdctl clear-refs 4",
         Param("value", "1 all, 2 anon, 3 mapped, 4 soft-dirty, 5 mm hiwater rss", kind="int", required=True,
               metavar="[1-5]"))
def cmd_clear_refs(st, a):
    v = a["value"]
    if not isinstance(v, int) or not 1 <= v <= 5:
        raise UsageError(f"clear-refs value {v!r} must be 1-5")
    st.backend.clear_refs(v)
    return {"value": v}


@command("scan", "PAGEMAP_SCAN a range (continuing from walk_end); categories by PAGE_IS_* name.",
         "uffdctl scan buf --category-mask present",
         RANGE,
         Param("--category-mask", "all of these (written,file,present,swapped,pfnzero,huge,soft_dirty,guard,...)"),
         Param("--category-anyof-mask", "any of these"),
         Param("--category-inverted", "invert these categories"),
         Param("--return-mask", "categories to return (default all)"),
         Param("--max-pages", "stop after N pages (up to 2^64-1; -1 is 2^64-1)", kind="int", default=0),
         Param("--flags", "raw pm_scan_arg.flags bits OR'd in (negative tests: unknown bits -> EINVAL)"),
         Param("--wp-matching", "PM_SCAN_WP_MATCHING: write-protect the matching pages", kind="flag"),
         Param("--check-wpasync", "PM_SCAN_CHECK_WPASYNC", kind="flag"),
         Param("--vec-len", "vec_len: regions per ioctl (default 512)", kind="int"),
         Param("--once", "one ioctl, no continuation from walk_end (its return value is in n)", kind="flag"),
         Param("--null-vec", "with --once: vec = NULL whatever --vec-len says (negative test: NULL with vec_len > 0 "
                             "is EINVAL)", kind="flag"),
         kernel_name="PAGEMAP_SCAN")
def cmd_scan(st, a):
    from ..pagemap import scan_all
    span = scan_span(st, a["range"])
    cat = {k: parse_flags(uapi.PageCategory, a.get(k), "--" + k.replace("_", "-"))
           for k in ("category_mask", "category_anyof_mask", "category_inverted")}
    ret = parse_flags(uapi.PageCategory, a.get("return_mask"), "--return-mask") if a.get("return_mask") \
        else uapi.PM_SCAN_CATEGORIES_6_18
    flags = (uapi.PM_SCAN_WP_MATCHING if a.get("wp_matching") else 0) | \
            (uapi.PM_SCAN_CHECK_WPASYNC if a.get("check_wpasync") else 0)
    U64 = (1 << 64) - 1
    if a.get("flags") is not None:      # raw pm_scan_arg.flags, OR'd in (unknown bits: the kernel's EINVAL)
        raw = parse_int(a["flags"], "--flags")
        if not -(1 << 63) <= raw <= U64:
            raise UsageError(f"--flags {a['flags']!r} does not fit in 64 bits")
        flags |= raw & U64
    max_pages = a.get("max_pages") or 0
    if not isinstance(max_pages, int) or not -(1 << 63) <= max_pages <= U64:
        raise UsageError(f"bad --max-pages {max_pages!r}")
    max_pages &= U64                    # -1: ULLONG_MAX, as the selftests pass it
    vec_len = a.get("vec_len")
    if vec_len is not None and (not isinstance(vec_len, int) or vec_len < 0):
        raise UsageError(f"bad --vec-len {vec_len!r}")
    if a.get("null_vec") and not a.get("once"):
        raise UsageError("--null-vec goes with --once (one ioctl, as given)")
    if a.get("once"):
        res = st.backend.pagemap_scan(span.start, span.end, flags=flags, return_mask=ret, max_pages=max_pages,
                                      vec_len=512 if vec_len is None else vec_len,
                                      **({"null_vec": True} if a.get("null_vec") else {}), **cat)
    else:
        res = scan_all(st.backend, span.start, span.end, flags=flags, return_mask=ret, max_pages=max_pages,
                       **({"vec_len": vec_len} if vec_len else {}), **cat)
    d = res.to_dict()
    d["n"] = len(res.regions)
    d.update(start=span.start, len=span.len, flags=flags, return_mask=ret, **cat)
    return d


# Range forms scan accepts beyond parse_range (read-only, so safe outside the regions): START+LEN with
# START an address (0x7f.., REGION:PAGE) and LEN possibly 0, with no alignment or region check
# (the kernel's own EINVALs are the point).


@command("status", "What the session owns: backend, uffd, regions, handler, threads, events.", "uffdctl status")
def cmd_status(st, a):
    b = st.backend
    info = st.backend_info()
    return {"name": st.name, "backend": b.name, "profile": info["profile"], "selection": info,
            "uptime_s": round(time.time() - st.started, 3),
            "uffd": None if st.uffd is None else {
                "fd": st.uffd.fileno(), "features": st.requested_features,
                "features_decoded": uapi.Feature.decode(st.requested_features or 0)},
            "regions": sorted(st.regions), "threads": list(st.thread_names),
            "blocked": sorted(t.id for t in st.pending_touches()),
            "events": len(st.events), "policy": {"missing": st.policy.missing, "wp": st.policy.wp,
                                                 "minor": st.policy.minor}}


# == mmops: the wider mm surface (mremap, mprotect, msync, mlock, swap; mmap --align/--addr/--thp, files,
# SysV; the helpers the script language uses to look at memory).  What an mm operation unmaps is carved
# out of the session's regions (a piece that no longer starts at its region's start is named NAME.K, K
# its first page in the old region, so page numbers never shift under a name); what it maps is a region.
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
    m = re.match(r"^([A-Za-z_][\w.-]*)/(.+)$", s)
    if m and hasattr(st, "addressing"):       # child/buf:3: a region of another process of the session
        with st.addressing(m.group(1)):
            return parse_addr(st, m.group(2))
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


# -- region bookkeeping --------------------------------------------------------------------------
def _backend_regions(st: SessionState) -> dict:
    return getattr(st.backend, "_regions", {})


def _dup_fd(st: SessionState, fd):
    """A second handle on a region piece's file (the backend's; a child process keeps the one it has)."""
    if fd is None:
        return None
    try:
        return st.backend.dup_fd(fd)
    except Unsupported:
        return fd


def _close_fd(st: SessionState, fd) -> None:
    if fd is None:
        return
    try:
        st.backend.close_fd(fd)
    except Unsupported:
        pass


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
                          _dup_fd(st, r.fd), r.prot, r.kind, r.path)
        if r.addr < start:
            r.len = start - r.addr          # the head keeps the name
        else:
            del st.regions[r.name]
            if breg.get(r.name) is r:
                del breg[r.name]
                _close_fd(st, r.fd)
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
    for t in st.pending_touches():
        if t.start < end and start < t.start + t.len:
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
    if _covered_by_regions(st, start, end):
        return
    for lo, hi, what_is in st.backend.mappings(start, end):
        if not _covered_by_regions(st, max(lo, start), min(hi, end)):
            raise UsageError(f"{what}: 0x{start:x}-0x{end:x} overlaps memory that is not one of the session's "
                             f"regions ({what_is or 'anonymous'} at {lo:#x}-{hi:#x})")


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
    if st.cur_proc is not None:
        # a forked child has one thread (fork() copies only the caller): it reads, when it is not blocked
        busy = st.busy_touch("main")
        if busy is not None:
            raise UsageError(f"reading {locate(st, span.start)}: process {st.cur_proc_name}'s one thread is "
                             f"blocked in touch #{busy.id} at 0x{busy.start:x}; resolve that fault first")
        th = st.backend.thread("main")
    else:
        th = st.backend.thread(f"__data{n}")
    acc = th.access(span.start, span.len, False, want_data=True)
    if not acc.wait(timeout):
        if st.cur_proc is None:
            st._data_reader = n + 1   # that thread stays blocked until the session ends
        raise UsageError(f"reading {locate(st, span.start)} is still blocked in a userfault after {timeout:g} s")
    r = acc.result()
    if r.sigbus:
        raise UsageError(f"reading {locate(st, span.start)}: SIGBUS at 0x{r.fault_addr:x} (si_code {r.si_code})")
    return r.data or b""


def vmas_of(st: SessionState, span: Span) -> list[dict]:
    return st.backend.smaps_vmas(span.start, span.end)


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
         Param("--thread", "issue mremap(2) from this session thread and return after 0.2 s like touch (blocked=1 "
               "while its REMAP/UNMAP message waits to be read, with handler --unread); wait waits for it"),
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
    return issue(st, a, "mremap", span.start, span.len,
                 lambda b: b.mremap(span.start, span.len, new_len, flags, to),
                 lambda new: _mremapped(st, span, src, new, new_len, flags, whole, name))


def _mremapped(st, span, src, new, new_len, flags, whole, name) -> dict:
    """mremap's bookkeeping once the kernel has moved (or resized) the range."""
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
        breg = _backend_regions(st)
        if not flags & uapi.MREMAP_DONTUNMAP:
            carve(st, span.start, span.end)
        carve(st, new, new + new_len)
        result_name = name or src.name
        moved = breg.get(src.name)
        if whole and not flags & uapi.MREMAP_DONTUNMAP and moved is not None and moved is not src \
                and (moved.addr, moved.len) == (new, new_len):
            # the backend's own bookkeeping already moved the region (Backend._remap_regions): share it
            if result_name != src.name:
                del breg[src.name]
                moved.name = result_name
            add_region(st, moved)
        else:
            add_region(st, Region(result_name, new, new_len, src.memtype, src.page_size, _dup_fd(st, src.fd),
                                  src.prot, src.kind, src.path))
        if moved_prot:     # the protection moves with the VMA
            st.mprotects = getattr(st, "mprotects", []) + moved_prot
        if remap_feature:  # mremap_userfaultfd_prep(): the ctx moves with the VMA only with EVENT_REMAP
            for (s, n), m in moved_regs:
                st.registrations[(s - span.start + new, n)] = m
    breg = _backend_regions(st)
    for n, r in list(st.regions.items()):     # one Region object per name for the session and the backend
        other = breg.get(n)
        if other is not None and other is not r and (other.addr, other.len) == (r.addr, r.len):
            st.regions[n] = other
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
         RANGE, Param("--onfault", "MLOCK_ONFAULT: lock pages as they fault in", kind="flag"),
         Param("--thread", "issue mlock2(2) from this session thread and return after 0.2 s like touch (blocked=1 "
               "while it waits in a fault of a registered range for you to resolve); wait waits for it"),
         kernel_name="mlock2")
def cmd_mlock(st, a):
    span = parse_range(st, a["range"])
    flags = uapi.MLOCK_ONFAULT if a.get("onfault") else 0
    if not flags and not a.get("thread"):
        refuse_blocking(st, span, bool(span.region.prot & uapi.PROT_WRITE) and not span.region.memtype.shared,
                        "mlock")
    return issue(st, a, "mlock", span.start, span.len, lambda b: b.mlock(span.start, span.len, flags),
                 lambda _: _span_dict(span, flags=flags))


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
    size = parse_size(a["size"])
    if size <= 0:
        raise UsageError(f"size {a['size']!r} must be > 0")
    if size >= 1 << 47:
        raise UsageError(f"size {a['size']!r} does not fit the x86-64 user address space (128 TiB)")
    if a.get("noreserve"):
        raise UsageError("--noreserve goes with a plain mmap (not with --align/--addr/--thp/--prot/--thread/"
                         "file/sysv)")
    kind = a.get("type") or "anon"
    hugetlb = kind in ("hugetlb", "hugetlb-private", "sysv-hugetlb")
    page = HPAGE_SIZE if hugetlb else PAGE
    page_size = None
    if a.get("page_size") is not None:
        if kind not in ("hugetlb", "hugetlb-private"):
            raise UsageError(f"--page-size is for --type hugetlb or hugetlb-private, not {kind}")
        page = page_size = parse_size(a["page_size"], "--page-size")
        if page_size < PAGE or page_size & (page_size - 1):
            raise UsageError(f"--page-size {a['page_size']!r} is not a power of two >= 4K (2M, 1G)")
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
    if a.get("thp") and kind in ("shmem", "shmem-private", "shared-anon"):
        _shmem_thp_allowed(st.backend)
    addr = parse_addr(st, a["addr"]) if a.get("addr") else None
    if addr is not None and addr % page:
        raise UsageError(f"--addr 0x{addr:x} is not aligned to the page size ({page})")
    if a.get("fixed"):
        _check_replace(st, addr, addr + size, "mmap --fixed")
        _blocked_in(st, addr, addr + size, "mmap --fixed")

    def finish(r):
        if a.get("fixed"):
            st.collect_events()     # UNMAP messages, located against the regions being replaced
            carve(st, r.addr, r.end)
            _backend_regions(st)[r.name] = r
        forget_range(st, r.addr, r.end)
        st.regions[r.name] = r
        d = r.to_dict()
        if a.get("thp"):
            d["thp"] = 1
        if prot != uapi.PROT_READ | uapi.PROT_WRITE:
            d["prot"] = prot
        return d
    if a.get("thread"):
        if align:
            raise UsageError("mmap --thread goes with --addr (one mmap(2) call), not --align (a reservation first)")
        if st.cur_proc is not None:
            raise UsageError("mmap --thread is for the session itself (a child maps with its own loop)")
        return issue(st, a, "mmap", addr or 0, size,
                     lambda b: _map(st, kind, size, name, prot, addr, bool(a.get("fixed")), bool(a.get("thp")),
                                    a.get("path"), page_size), finish)
    for attempt in range(8):
        at = aligned_addr(st, size, align) if align else addr
        try:
            r = _map(st, kind, size, name, prot, at, bool(a.get("fixed")), bool(a.get("thp")), a.get("path"),
                     page_size)
            break
        except OSError as e:
            import errno
            # another thread of the process took the aligned hole between reserve and map: try again
            if align and e.errno == errno.EEXIST and attempt < 7:
                continue
            raise
    return finish(r)


def _map(st, kind, size, name, prot, addr, fixed, thp, path, page_size=None):
    b = st.backend
    if kind == "shared-anon":
        r = b.mmap_shared_anon(size, name=name, prot=prot, addr=addr, fixed=fixed)
        return _thp(b, r) if thp else r
    if page_size is not None:
        if fixed:
            return b.mmap_fixed(size, kind, name, prot, addr, page_size=page_size)
        return b.mmap(size, kind, name=name, prot=prot, addr=addr, page_size=page_size)
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
    if thp:     # MADV_HUGEPAGE clears the MADV_NOHUGEPAGE an anon mmap gets
        b.check_advice(uapi.MADV_HUGEPAGE, "hugepage")
        r = b.mmap(size, kind, name=name, prot=prot, addr=addr)
        try:
            b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
        except Exception:
            b.munmap(r.addr, r.len)
            raise
        r.kind = "thp" if kind == "anon" else r.kind
        return r
    return b.mmap(size, kind, name=name, prot=prot, addr=addr)


def _thp(b, r):
    b.check_advice(uapi.MADV_HUGEPAGE, "hugepage")
    b.madvise(r.addr, r.len, uapi.MADV_HUGEPAGE)
    return r


THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"


def _shmem_thp_allowed(b) -> None:
    """Does the backend's kernel (the host's sysfs, or a model's own knobs) let a memfd take THPs?"""
    from ..errors import Unsupported
    text = b.thp_knob("shmem_enabled")
    if text is None:
        raise Unsupported("no THP here: /sys/kernel/mm/transparent_hugepage/shmem_enabled is missing")
    cur = _knob(text)
    if cur == "deny":
        raise Unsupported(f"shmem THP is off here: {THP_SYSFS}/shmem_enabled is [deny]")
    if cur != "never":
        return
    sizes = [f"hugepages-{kb}kB" for kb in (8 << i for i in range(9))
             if _knob(b.thp_knob(f"hugepages-{kb}kB/shmem_enabled") or "[never]") in ("always", "within_size", "advise")]
    if not sizes:
        raise Unsupported(f"shmem THP is off here: {THP_SYSFS}/shmem_enabled is [never] and no "
                          f"hugepages-*kB/shmem_enabled allows it (MADV_HUGEPAGE needs advise, within_size or "
                          f"always; uffdctl never writes sysfs)")


def _knob(text: str) -> str:
    m = re.search(r"\[(\w[\w-]*)\]", text)
    return m.group(1) if m else text.strip()


def munmap_range(st: SessionState, text: str, a: dict | None = None) -> dict:
    span = parse_range(st, text)
    _blocked_in(st, span.start, span.end, "munmap")

    def finish(_):
        st.collect_events()        # UNMAP messages, located against the regions as they were
        changed = carve(st, span.start, span.end)
        return {"start": span.start, "len": span.len, "name": span.region.name, "regions": changed}
    return issue(st, a or {}, "munmap", span.start, span.len, lambda b: b.munmap(span.start, span.len), finish)


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


_OFF = r"[+-](?:0x[0-9a-fA-F]+|\d+[KMGkmg]?)"
# START+LEN; START may carry offsets (mem:0+0xff000+8K: two 4 KiB pages inside a huge page)
_SCAN_RAW = re.compile(rf"^((?:[A-Za-z_][\w.-]*/)?[A-Za-z_][\w.-]*:\d+(?:{_OFF})*|0x[0-9a-fA-F]+|\d+)"
                       r"\+(0x[0-9a-fA-F]+|\d+[KMGkmg]?)$")


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
    """parse_range, or START+LEN (START 0xADDR or REGION:PAGE[+OFF]; LEN may be 0), anywhere, unaligned."""
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


__all__ = ["COMMANDS", "Command", "Param", "RemoteErrorLike", "SessionState", "Span", "UsageError", "error_dict",
           "execute", "exit_code_of", "parse_addr", "parse_range", "parse_size"]

