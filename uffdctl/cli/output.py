"""Output: human tables by default, one JSON document with ``-j`` (``-p`` pretty).

bpftool's convention: in JSON mode stdout stays parseable, errors included
(``{"error": {...}}``); in human mode results go to stdout and ``uffdctl: error: ...``
(one line) to stderr.  Renderers are plain functions (no click), shared by the
CLI and ``uffdctl run``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

LEGEND = (". none  P present  D present+soft-dirty  W present+uffd-wp  Z zero page  "
          "M uffd-wp marker  X other marker (poison)  G guard  S swap  s soft-dirty (not present)")


def columns() -> int | None:
    """The width to fit: $COLUMNS when set, else the terminal's when stdout is one; None (no limit) when the
    output goes to a pipe or file, so that scripts parsing it get the same layout whatever the caller's tty."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size((80, 24)).columns
    return None


def ruler(n: int) -> str:
    """A column ruler for a grid of n cells: the cell number every 16, a ``+`` every 8 in between."""
    out = [" "] * n
    for i in range(0, n, 8):
        mark = str(i) if i % 16 == 0 else "+"
        if i + len(mark) <= n:
            out[i:i + len(mark)] = mark
    return "".join(out).rstrip()


def wrap_items(head: str, items: list[str], width: int) -> list[str]:
    """Items joined by two spaces, wrapped at ``width`` (never inside an item), continuation lines indented."""
    lines, cur = [], head
    for it in items:
        it = it.strip()
        if not it:
            continue
        sep = "" if cur == head else "  "
        if len(cur) + len(sep) + len(it) > width and cur != head:
            lines.append(cur)
            cur, sep = " " * len(head), ""
        cur += sep + it
    lines.append(cur)
    return lines


def dumps(obj, pretty: bool = False) -> str:
    return json.dumps(obj, indent=2 if pretty else None, sort_keys=False, default=str)


def _hex(v):
    return f"0x{v:x}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """Columns (key, header); ints in address-ish columns shown in hex by the caller."""
    cells = [[h for _, h in cols]] + [[str(r.get(k, "")) if r.get(k) is not None else "-" for k, _ in cols]
                                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _flag(v) -> str:
    return "1" if v else "."


def render_pagemap(r: dict, opts: dict) -> str:
    ents = r.get("entries")
    if opts.get("map"):
        syms = "".join(e["symbol"] for e in ents) if ents is not None else r["symbols"]
        width = columns()
        per = 64 if width is None else max(16, min(64, (width - 8) // 16 * 16))   # groups of 16 that fit
        lines = [f"{r['region']} 0x{r['start']:x}: {len(syms)} pages, {per}/row"]
        if width is not None:          # a person is reading: a column ruler over the grid
            lines.append("        " + ruler(per))
        for i in range(0, len(syms), per):
            lines.append(f"{r['index'] + i:6d}  {syms[i:i + per]}")
        lines += wrap_items("legend: ", LEGEND.split("  "), width or 1 << 30)
        return "\n".join(lines)
    if ents is None:  # a large range: the run-length summary
        head = (f"{r['region']} 0x{r['start']:x} {r['pages']} pages in {len(r['runs'])} runs; "
                + " ".join(f"{k}={v}" for k, v in r["counts"].items() if v))
        rows = [{"addr": _hex(u["addr"]), "index": u["index"], "pages": u["pages"],
                 "flags": ",".join(u["flags"]) or "-"} for u in r["runs"]]
        return head + "\n" + table(rows, [(k, k) for k in ("addr", "index", "pages", "flags")])
    rows = [{"addr": _hex(e["addr"]), "index": e["index"], "present": _flag(e["present"]), "swap": _flag(e["swap"]),
             "file": _flag(e["file"]), "uffd_wp": _flag(e["uffd_wp"]), "soft_dirty": _flag(e["soft_dirty"]),
             "exclusive": _flag(e["exclusive"]), "guard": _flag(e["guard"]), "zero": _flag(e["zero"]),
             "pfn": _hex(e["pfn"]) if e["pfn"] else "-"} for e in ents]
    keys = ("addr", "index", "present", "swap", "file", "uffd_wp", "soft_dirty", "exclusive", "guard", "zero", "pfn")
    text = table(rows, [(k, k) for k in keys])
    if columns() is not None and max(map(len, text.splitlines())) > columns():   # the kernel's short names (fs/proc/task_mmu.c PM_*)
        short = {"present": "P", "swap": "S", "file": "F", "uffd_wp": "WP", "soft_dirty": "SD", "exclusive": "EX",
                 "guard": "G", "zero": "Z"}
        text = "\n".join([table(rows, [(k, short.get(k, k)) for k in keys])] + wrap_items(
            "", "P present  S swap  F file/shared-anon  WP uffd-wp  SD soft-dirty  EX exclusive  G guard  "
                "Z zero page".split("  "), columns() or 1 << 30))
    return text


def _event_line(e: dict) -> str:
    if e["event"] == "dropped":
        return f"#{e['first_seq']}-#{e['last_seq']} dropped: {e['count']} messages not in the log: {e['reason']}"
    where = f" {e['region']}:{e['page']}" if "region" in e else ""
    if e["event"] == "pagefault":
        flags = "|".join(f.replace("UFFD_PAGEFAULT_FLAG_", "") for f in e.get("flags_decoded", [])) or "flags=0"
        return (f"#{e['seq']} pagefault {flags} address=0x{e['address']:x}{where} ptid={e.get('ptid', 0)} "
                f"action={e.get('action')}" + (f" err={e['err']}" if e.get("err") else ""))
    at = e.get("at", {})
    rest = " ".join(f"{k}={_hex(v)}" + (f"({at[k]})" if k in at else "")
                    for k, v in e.items() if k not in ("seq", "event", "ts_ns", "action", "err", "result", "at"))
    return f"#{e['seq']} {e['event']} {rest}"


def render_touch(r: dict) -> str:
    kind = "write" if r["write"] else "read"
    where = f" of process {r['proc']}" if r.get("proc", "self") != "self" else ""
    if r.get("op"):   # a system call issued with --thread (proc_commands.maybe_async)
        head = f"#{r['touch']} {r['op']} 0x{r['start']:x}+{r['len']:#x} by thread {r['thread']}{where}"
        if r.get("blocked"):
            return head + ": BLOCKED in the kernel (its event not read yet? see read, handler --read); wait waits"
        if "error" in r:
            return head + f": failed: {r['error']}"
        return head + f": returned {r.get('ret', 0)}"
    head = f"touch #{r['touch']} {kind} 0x{r['start']:x}+{r['len']:#x} by thread {r['thread']}{where}"
    if r.get("blocked"):
        return head + " (tid %s): BLOCKED in a fault; resolve it (copy/zeropage/continue/wake/writeprotect --off)" \
            % r.get("tid")
    if "error" in r:
        return head + f": failed: {r['error']}"
    return head + f": finished, minflt={r['minflt']} majflt={r['majflt']}" + \
        (f" SIGBUS si_code={r['si_code']} addr=0x{r['fault_addr']:x}" if r.get("sigbus") else "") + \
        (f" SIGSEGV si_code={r['si_code']} addr=0x{r['fault_addr']:x}" if r.get("sigsegv") else "") + \
        f" ({r['ns'] / 1000:.0f} us)"


def render_kv(r: dict) -> str:
    out = []
    for k, v in r.items():
        if isinstance(v, list):
            v = ",".join(map(str, v)) if v and not isinstance(v[0], dict) else (f"{len(v)} items" if v else "-")
        elif isinstance(v, dict):
            v = " ".join(f"{a}={_hex(b) if a in ('start', 'addr') else b}" for a, b in v.items())
        elif k in ("start", "dst", "src", "addr", "address", "ioctls", "features", "len", "mode", "zero_pfn") \
                and isinstance(v, int):
            v = _hex(v)
        out.append(f"{k}: {v}")
    return "\n".join(out)


def describe_backend(sel: dict | None) -> str:
    """``kernel 6.18.44 (soft-dirty off)`` / ``emulator, profile 5.19 (soft-dirty on), auto: fallback: why``."""
    if not sel:
        return "-"
    if sel.get("backend") == "kernel":
        s = f"kernel {sel.get('release')}"
    else:
        s = f"emulator, profile {sel.get('profile')} (models {sel.get('release')})"
    s += f", soft-dirty {'on' if sel.get('soft_dirty') else 'off'}"
    if sel.get("user_mode_only"):
        s += ", UFFD_USER_MODE_ONLY uffds"
    if sel.get("requested") == "auto":
        s += f"; auto: {'fallback: ' if sel.get('fallback') else ''}{sel.get('reason')}"
    return s


def _modes(decoded) -> str:
    return "|".join(m.replace("UFFDIO_REGISTER_MODE_", "").lower() for m in decoded or ()) or "-"


def _region_modes(x: dict) -> str:
    """One mode when the whole region has it; else per VMA, by pages: ``0-2:missing|wp 3:- 4-15:missing|wp``."""
    if x.get("mode") is not None or not x.get("vmas"):
        return _modes(x.get("mode_decoded"))
    return " ".join((f"{v['first_page']}" if v["first_page"] == v["last_page"] else
                     f"{v['first_page']}-{v['last_page']}") + ":" + _modes(v["mode_decoded"]) for v in x["vmas"])


def render_status(r: dict) -> str:
    u = r.get("uffd")
    lines = [f"session {r['name']}: {describe_backend(r.get('selection'))}",
             f"uptime: {r['uptime_s']:.1f} s" + (f", pid {r['pid']}" if "pid" in r else "") +
             (f", rss {r['rss'] >> 10} KiB" if "rss" in r else ""),
             "uffd: " + ("not opened yet (the first command that needs one opens it)" if u is None else
                         f"fd {u['fd']}, features " + ("|".join(f.replace("UFFD_FEATURE_", "")
                                                                for f in u["features_decoded"]) or "none")),
             "regions: " + (", ".join(r["regions"]) or "none"),
             "threads: " + (", ".join(r["threads"]) or "none"),
             "blocked touches: " + (", ".join(f"#{t}" for t in r["blocked"]) or "none"),
             f"events: {r['events']}",
             "policy: " + " ".join(f"{k}={v}" for k, v in r["policy"].items())]
    if "socket" in r:
        lines.append(f"socket: {r['socket']}")
    return "\n".join(lines)


def render(name: str, r: dict, opts: dict | None = None) -> str:
    """Human rendering of one command's result."""
    opts = opts or {}
    if name == "pagemap":
        return render_pagemap(r, opts)
    if name == "events":
        return "\n".join(_event_line(e) for e in r["events"]) or "(no events)"
    if name in ("touch", "wait"):
        return render_touch(r)
    if name == "touches":
        return "\n".join(render_touch(t) for t in r["touches"]) or "(no touches)"
    if name == "regions":
        rows = [dict(x, start=_hex(x["start"]), len=_hex(x["len"]), mode=_region_modes(x)) for x in r["regions"]]
        return table(rows, [("name", "NAME"), ("start", "START"), ("len", "LEN"), ("type", "TYPE"),
                            ("mode", "REGISTERED"), ("present", "PRESENT"), ("private_dirty", "PRIVATE_DIRTY")]) \
            if rows else "(no regions)"
    if name == "faults":
        rows = [dict(x, blocked=f"touch #{x['touch']} at 0x{x['address']:x}" if x["blocked"] else "-")
                for x in r["threads"]]
        return table(rows, [("thread", "THREAD"), ("tid", "TID"), ("minflt", "MINFLT"), ("majflt", "MAJFLT"),
                            ("access_minflt", "ACCESS_MINFLT"), ("access_majflt", "ACCESS_MAJFLT"),
                            ("blocked", "BLOCKED")])
    if name == "scan":
        lines = [f"walk_end: 0x{r['walk_end']:x}"]
        for x in r["regions"]:
            cats = "|".join(c.replace("PAGE_IS_", "") for c in x["categories_decoded"]) or "-"
            lines.append(f"0x{x['start']:x}-0x{x['end']:x}  {(x['end'] - x['start']) // 4096:6d} pages  {cats}")
        return "\n".join(lines)
    if name == "status":
        return render_status(r)
    if name == "session-start":
        return (f"session {r['name']} started: pid {r['pid']}, {describe_backend(r.get('selection'))}\n"
                f"socket: {r['socket']}\nlog: {r['log']}")
    if name == "session-list":
        rows = [dict(x, uptime=f"{x['uptime_s']:.0f}s" if "uptime_s" in x else "-",
                     rss=f"{x['rss'] >> 10}K" if "rss" in x else "-") for x in r["sessions"]]
        return table(rows, [("name", "NAME"), ("state", "STATE"), ("pid", "PID"), ("uptime", "UPTIME"),
                            ("rss", "RSS"), ("backend", "BACKEND"), ("regions", "REGIONS"),
                            ("blocked", "BLOCKED")]) if rows else "(no sessions)"
    return render_kv(r)


class Emitter:
    """Prints results and errors in the chosen mode."""

    def __init__(self, json_mode: bool = False, pretty: bool = False):
        self.json = json_mode or pretty
        self.pretty = pretty

    def result(self, name: str, r: dict, opts: dict | None = None) -> None:
        if self.json:
            print(dumps(r, self.pretty), flush=True)
        else:
            text = render(name, r, opts)
            if text:
                print(text, flush=True)

    def error(self, err: dict, prefix: str = "uffdctl") -> None:
        if self.json:
            print(dumps({"error": err}, self.pretty), flush=True)
        else:
            msg = " ".join(str(err.get("message") or err.get("type")).split())
            print(f"{prefix}: error: {msg}", file=sys.stderr, flush=True)
