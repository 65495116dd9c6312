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

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import uapi
from ..errors import RemoteErrorLike, Unsupported, UsageError, exit_code_of
from ..errors import to_wire as error_dict   # the wire/JSON form of any error (the name this module used)
from ..types import HPAGE_SIZE, HandlerPolicy, MemType, Region
from .state import SessionState

PAGE = uapi.PAGE_SIZE
TOUCH_DECIDE_S = 0.2     # touch without --wait: how long to wait before saying "blocked"
MAX_PAGEMAP_ENTRIES = 1 << 16  # per-page entries up to this; above it runs, counts and symbols only


# -- parsing ---------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGTkmgt]?)(i?[Bb])?\s*$")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: Any, what: str = "size") -> int:
    """``64K``, ``2M``, ``1G``, ``4096``, ``0x1000`` -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected a number with an optional K/M/G suffix (64K, 2M, 0x1000)")
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


def parse_range(st: SessionState, text: Any) -> Span:
    """``REGION``, ``REGION:3``, ``REGION:0-15`` (pages, inclusive) or raw ``0xADDR+LEN``.

    Every range must lie inside one of the session's regions and be aligned to its
    page size: a range outside them could hit the daemon's own memory.
    """
    if text is None or str(text).strip() == "":
        raise UsageError("missing range: expected REGION[:PAGES] or 0xADDR+LEN")
    text = str(text).strip()
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
        return Span(start, length, reg)
    m = _NAMED.match(text)
    if not m:
        raise UsageError(f"bad range {text!r}: expected REGION, REGION:N, REGION:A-B or 0xADDR+LEN")
    name, a, b = m.group(1), m.group(2), m.group(3)
    reg = st.regions.get(name)
    if reg is None:
        raise UsageError(f"unknown region {name!r} (regions: {', '.join(st.regions) or 'none; use mmap'})")
    if a is None:
        return Span(reg.addr, reg.len, reg)
    first = int(a)
    last = int(b) if b is not None else first
    if last < first:
        raise UsageError(f"range {text}: pages {first}-{last} are reversed")
    if last >= reg.pages:
        raise UsageError(f"range {text}: page {last} is outside region {name} (pages 0-{reg.pages - 1})")
    return Span(reg.page(first), (last - first + 1) * reg.page_size, reg)


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


def command(name: str, help: str, example: str, *params: Param, locked: bool = True, kernel_name: str = ""):
    def deco(fn):
        COMMANDS[name] = Command(name, fn, help, example, list(params), locked, kernel_name)
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
    if not cmd.locked:
        out = cmd.fn(st, args)
    else:
        with st.lock:
            out = cmd.fn(st, args)
    with st.lock:
        st.collect_events()
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
def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


_NAME_OK = re.compile(r"^[A-Za-z_][\w.-]*$")


EXTRA_TYPES = ("file", "file-private", "sysv", "sysv-hugetlb")   # mmops: mapped by their own Backend methods


@command("mmap", "Map a new region (anon, shmem, shmem-private, hugetlb, hugetlb-private, file, file-private, "
         "sysv, sysv-hugetlb).",
         "uffdctl mmap --size 4M --align 2M --thp --name huge",
         Param("--size", "length, with K/M/G suffix", required=True),
         Param("--type", "memory type", kind="choice", choices=tuple(m.value for m in MemType) + EXTRA_TYPES,
               default="anon"),
         Param("--name", "region name (default r0, r1, ...)"),
         Param("--path", "--type file/file-private: a file (created if missing, removed at the end if created) or "
                         "a directory (a fresh unlinked file on that filesystem)"),
         Param("--align", "start address aligned to this (e.g. 2M)"),
         Param("--addr", "map at this address (ADDR or REGION:PAGE): MAP_FIXED_NOREPLACE, or MAP_FIXED with --fixed"),
         Param("--fixed", "with --addr: MAP_FIXED (replaces the session's regions there: UNMAP events)", kind="flag"),
         Param("--thp", "MADV_HUGEPAGE (anon: default --align 2M) instead of the default MADV_NOHUGEPAGE",
               kind="flag"),
         Param("--prot", "none | read,write,exec (default read,write)"))
def cmd_mmap(st, a):
    from . import mmcommands as mm
    if a.get("type") in EXTRA_TYPES or a.get("align") or a.get("addr") or a.get("fixed") or a.get("thp") \
            or a.get("path") or a.get("prot") is not None:
        return mm.mmap_ext(st, a)
    size = parse_size(a["size"])
    if size <= 0:
        raise UsageError(f"size {a['size']!r} must be > 0")
    if size > _mem_total():
        raise UsageError(f"size {a['size']!r} is beyond this machine's memory ({_mem_total() >> 20} MiB)")
    memtype = MemType(a["type"])
    page = uapi.PAGE_SIZE
    if memtype.hugetlb:
        page = HPAGE_SIZE
    if size % page:
        raise UsageError(f"size {a['size']!r} is not a multiple of the {memtype.value} page size ({page})")
    name = a.get("name")
    if name is not None:
        if not _NAME_OK.match(name) or name.startswith("__"):
            raise UsageError(f"bad region name {name!r}: letters, digits, _ . - (not starting with a digit or __)")
        if name in st.regions:
            raise UsageError(f"region {name!r} exists")
    r = st.backend.mmap(size, memtype, name=name)
    from .mmcommands import forget_range
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
    name = a.get("name") or f"{reg.name}-alias"
    if not _NAME_OK.match(name) or name in st.regions:
        raise UsageError(f"bad or existing region name {name!r}")
    if a.get("align"):
        from .mmcommands import alias_aligned
        r = alias_aligned(st, reg, name, a["align"])
    else:
        r = st.backend.alias(reg, name=name)
    st.regions[r.name] = r
    return dict(r.to_dict(), alias_of=reg.name)


@command("munmap", "Unmap a region, or any range of one (the regions are carved to match).", "uffdctl munmap buf:2-3",
         Param("region", "REGION, or a range REGION:A-B / 0xADDR+LEN", required=True, metavar="RANGE"))
def cmd_munmap(st, a):
    if a["region"] not in st.regions and a["region"] is not None and (":" in str(a["region"]) or
                                                                       "+" in str(a["region"])):
        from . import mmcommands as mm
        return mm.munmap_range(st, a["region"])
    reg = st.regions.get(a["region"])
    if reg is None:
        raise UsageError(f"unknown region {a['region']!r} (munmap takes a region name; regions: "
                         f"{', '.join(st.regions) or 'none'})")
    for t in st.touches.values():
        if not t.access.done and t.start < reg.end and reg.addr < t.start + t.len:
            # the woken access would retry on an unmapped address: SIGSEGV for the whole session
            raise UsageError(f"touch #{t.id} (thread {t.thread}) is blocked in region {reg.name}: resolve it first")
    st.backend.munmap(reg.addr, reg.len)
    del st.regions[reg.name]
    for key in [k for k in st.registrations if reg.addr <= k[0] < reg.end]:
        del st.registrations[key]
    from .mmcommands import forget_range
    forget_range(st, reg.addr, reg.end)
    return {"start": reg.addr, "len": reg.len, "name": reg.name}


def _registered_mode(st: SessionState, reg: Region) -> int:
    mode = 0
    for (s, n), m in st.registrations.items():
        if s < reg.end and reg.addr < s + n:
            mode |= m
    return mode


@command("regions", "List the session's regions (with Private_Dirty from the memory maps).", "uffdctl regions")
def cmd_regions(st, a):
    out = []
    for r in st.regions.values():
        d = r.to_dict()
        mode = _registered_mode(st, r)
        from ..pagemap import read as pm_read
        present = pm_read(st.backend, r.addr, r.len // PAGE).counts()["present"]
        try:
            pd = st.backend.smaps_private_dirty(r.addr)
        except Exception:
            pd = None
        d.update(mode=mode, mode_decoded=uapi.RegisterMode.decode(mode),
                 present=present, private_dirty=pd)
        out.append(d)
    return {"regions": out}


# -- userfaultfd -----------------------------------------------------------------------
@command("api", "UFFDIO_API: open the session's uffd with these features (once per uffd).",
         "uffdctl api --features thread_id,wp_unpopulated",
         Param("--features", "UFFD_FEATURE_* names, comma separated (thread_id,wp_async,...) or a number"),
         kernel_name="UFFDIO_API")
def cmd_api(st, a):
    features = parse_flags(uapi.Feature, a.get("features"), "--features")
    if st.uffd is None:
        st.get_uffd(features if a.get("features") is not None else None)
        return st.api_result.to_dict()
    # a second UFFDIO_API on the same fd: issue it, the kernel answers (EINVAL since 5.x)
    return st.uffd.api(features).to_dict()


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
        from . import mmcommands as mm
        return mm.src_from_file(st, a, length)
    if a.get("src"):
        src = parse_range(st, a["src"])
        if src.len < length:
            raise UsageError(f"--src {a['src']} has {src.len} bytes, the destination needs {length}")
        return src.start, src.region.name
    fill = parse_int(a.get("fill") if a.get("fill") is not None else 0xAA, "--fill")
    if not 0 <= fill <= 255:
        raise UsageError(f"--fill {fill} is not a byte (0-255)")
    buf = st.scratch(length)
    st.backend.write(buf.addr, bytes([fill]) * length)
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
         Param("--src", "source range for --policy copy"),
         Param("--fill", "byte for --policy fill"))
def cmd_handler(st, a):
    p = st.policy
    if any(a.get(k) is not None for k in ("policy", "wp", "minor", "src", "fill")):
        kw = dict(missing=a.get("policy") or p.missing, wp=a.get("wp") or p.wp, minor=a.get("minor") or p.minor,
                  base=p.base, src=p.src, fill=p.fill, page_size=p.page_size, copy_mode=p.copy_mode)
        if a.get("src"):
            src = parse_range(st, a["src"])
            kw.update(src=src.start, base=src.region.addr)
        if a.get("fill") is not None:
            fill = parse_int(a["fill"], "--fill")
            if not 0 <= fill <= 255:
                raise UsageError(f"--fill {fill} is not a byte (0-255)")
            kw["fill"] = fill
        if kw["missing"] == "copy" and not kw["src"]:
            raise UsageError("--policy copy needs --src RANGE")
        st.start_handler(HandlerPolicy(**kw))
    p = st.policy
    return {"missing": p.missing, "wp": p.wp, "minor": p.minor, "src": p.src, "fill": p.fill,
            "running": int(st.handler is not None),
            "stats": st.handler.stats() if st.handler is not None else None}


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
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise UsageError(f"bad --timeout {timeout!r}")
    fill = parse_int(a["fill"], "--fill") if a.get("fill") is not None else 1
    if not 0 <= fill <= 255:
        raise UsageError(f"--fill {fill} is not a byte (0-255)")
    with st.lock:
        span = parse_range(st, a["range"])
        from .mmcommands import check_access
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
    if not isinstance(timeout, (int, float)) or timeout < 0:
        raise UsageError(f"bad --timeout {timeout!r}")
    t.access.wait(timeout)
    with st.lock:
        return dict(t.to_dict(), tid=st.backend.thread(t.thread).tid)


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
                    "address": busy.start if busy else None})
    return {"threads": out}


@command("touches", "The touches made so far: finished or still blocked, with their fault counts.",
         "uffdctl touches")
def cmd_touches(st, a):
    return {"touches": [t.to_dict() for t in st.touches.values()]}


@command("events", "The message log: faults and events the handler read, with seq numbers.",
         "uffdctl events --since 3",
         Param("--since", "only events with seq > N", kind="int", default=0),
         Param("--follow", "keep printing new events (Ctrl-C stops)", kind="flag", local=True),
         Param("--count", "with --follow: stop after N events", kind="int", local=True))
def cmd_events(st, a):
    since = a.get("since") or 0
    if not isinstance(since, int) or since < 0:
        raise UsageError(f"bad --since {since!r}")
    st.collect_events()
    evs = [e for e in st.events if e["seq"] > since]
    return {"events": evs, "next": st.events[-1]["seq"] if st.events else 0}


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


MADVICE = {"dontneed": uapi.MADV_DONTNEED, "free": uapi.MADV_FREE, "remove": uapi.MADV_REMOVE,
           "guard-install": uapi.MADV_GUARD_INSTALL, "guard-remove": uapi.MADV_GUARD_REMOVE,
           # mmops: THP, reclaim and populate
           "hugepage": uapi.MADV_HUGEPAGE, "nohugepage": uapi.MADV_NOHUGEPAGE, "collapse": uapi.MADV_COLLAPSE,
           "pageout": uapi.MADV_PAGEOUT, "cold": uapi.MADV_COLD, "willneed": uapi.MADV_WILLNEED,
           "populate_read": uapi.MADV_POPULATE_READ, "populate_write": uapi.MADV_POPULATE_WRITE}


@command("madvise", "madvise(2) a range: dontneed (REMOVE event), free (clean but writable), remove, "
         "guard-install / guard-remove (guard markers), hugepage / nohugepage / collapse (THP), pageout / cold "
         "(reclaim; pageout of anon needs swap: swap on), willneed, populate_read / populate_write.",
         "uffdctl madvise buf --advice pageout",
         RANGE, Param("--advice", "the advice", kind="choice", choices=tuple(MADVICE), required=True),
         Param("--no-drain", "pageout/cold: do not drain the per-CPU LRU batches first (folios still in another "
                             "CPU's batch are skipped by the kernel)", kind="flag"))
def cmd_madvise(st, a):
    span = parse_range(st, a["range"])
    st.backend.check_advice(MADVICE[a["advice"]], a["advice"])
    if a["advice"] in ("populate_read", "populate_write"):
        from . import mmcommands as mm
        mm.refuse_blocking(st, span, a["advice"] == "populate_write", f"madvise {a['advice']}")
    if a["advice"] in ("pageout", "cold") and not a.get("no_drain"):
        st.backend.lru_drain()
    st.backend.madvise(span.start, span.len, MADVICE[a["advice"]])
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
         kernel_name="PAGEMAP_SCAN")
def cmd_scan(st, a):
    from ..pagemap import scan_all
    from .mmcommands import scan_span
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
    if a.get("once"):
        res = st.backend.pagemap_scan(span.start, span.end, flags=flags, return_mask=ret, max_pages=max_pages,
                                      vec_len=512 if vec_len is None else vec_len, **cat)
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
            "blocked": sorted(t.id for t in st.touches.values() if not t.access.done),
            "events": len(st.events), "policy": {"missing": st.policy.missing, "wp": st.policy.wp,
                                                 "minor": st.policy.minor}}


def parse_addr(st: SessionState, text: Any) -> int:
    """An address: REGION:PAGE (``buf:4`` = the end of a 4-page region), REGION, 0xADDR, +/- offsets."""
    from .mmcommands import parse_addr as _p
    return _p(st, text)


from . import mmcommands  # noqa: E402,F401  (registers mremap, mprotect, msync, mlock, munlock, swap)

__all__ = ["COMMANDS", "Command", "Param", "RemoteErrorLike", "SessionState", "Span", "UsageError", "error_dict",
           "execute", "exit_code_of", "parse_addr", "parse_range", "parse_size"]
