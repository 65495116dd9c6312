"""The ``uffdctl run`` language: session commands one per line, plus ``expect``.

Each line is parsed from the command table (uffdctl.session.argv: the same
parameters the CLI subcommand declares) and run in-process against one
:class:`~uffdctl.session.state.SessionState` (no daemon).
``#`` starts a comment (``#N`` right after ``expect event`` is a message number).
The script stops at the first failure, naming the line.

``expect`` forms::

    expect pagemap RANGE key=value ...   every page of RANGE (keys: present swap file uffd_wp soft_dirty
                                         exclusive guard zero marker pfn)
    expect faults THREAD minor=+1 major=0   faults taken by the thread's finished touches (the
                                         kernel's count around each access); +N: change since the
                                         previous ``expect faults`` of that thread
    expect errno EEXIST                  the previous command failed with this errno (name or number)
    expect error errno=EEXIST done=-17 ioctl=UFFDIO_ZEROPAGE   fields of the previous command's error
    expect result key=value ...          fields of the previous command's result (dotted keys, list indices)
    expect event [#N] key=value ...      the newest message in the log (or message N); flags=WRITE|WP,
                                         address/start/end/from/to=REGION:PAGE
    expect events count=N [key=value ...]   how many messages of the log match
    expect data RANGE byte=0x41|zero|crc32=X|hex=..   the bytes of RANGE (read GIL-free by a session thread)
    expect scan RANGE [scan options] regions=N walk_end=buf:4 r0.categories=written,present
    expect vma RANGE flags=um,uw,!mr count=1 KEY=VALUE   each VMA overlapping RANGE (/proc/self/smaps)
    expect addr A OP B | expect addr A aligned=2M   relations between addresses
    expect proc NAME key=value ...       a process of the session (alive exited signaled code signal
                                         signal_name pid; see fork, waitpid)

Values that name an address (``buf:3``, ``buf:3+0x10``, ``buf:4`` for the end of a 4-page region)
are resolved against the session's regions; event fields also match the region:page they named
when the message was logged (so ``from=buf:0`` holds after ``buf`` moved).

Variables: ``set NAME=VALUE``, ``${NAME}``, ``$((arithmetic))``, ``${result.KEY}`` (the previous
result), ``uffdctl run --var NAME=VALUE``.  A bounded loop: ``repeat N [--var I]`` ... ``end``.

A failing command is allowed only when the next line is ``expect errno`` or ``expect error``.
"""
from __future__ import annotations

import ast
import errno as _errno
import json
import operator
import re
import shlex
import sys

from .errors import NotModelled, ScriptError, UffdctlError, UsageError, exit_code_of
from .errors import to_wire as error_dict
from .session.argv import HelpRequested, parse_argv
from .session.commands import COMMANDS, execute
from .session.state import SessionState

MAX_REPEAT = 1_000_000
DATA_READ_TIMEOUT_S = 60.0   # a bound for ``expect data`` reads, never reached by a read that can finish


def _usage(lineno, line, msg) -> ScriptError:
    return ScriptError(lineno, line, msg, 2, "UsageError")


def _value(text: str):
    if text.lower() in ("true", "false"):
        return int(text.lower() == "true")
    try:
        return int(text, 0)
    except ValueError:
        return text


def _pairs(lineno, line, toks) -> list[tuple[str, str]]:
    out = []
    for t in toks:
        if "=" not in t:
            raise _usage(lineno, line, f"expected key=value, got {t!r}")
        k, v = t.split("=", 1)
        out.append((k, v))
    if not out:
        raise _usage(lineno, line, "nothing to expect (give key=value pairs)")
    return out


# -- lexing: comments, variables, arithmetic -------------------------------------------------
def strip_comment(raw: str) -> str:
    """Cut a ``#`` comment: a ``#`` outside quotes at the start of a word, unless a digit follows
    (``#3`` is a message number)."""
    quote = None
    for i, c in enumerate(raw):
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                continue
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or raw[i - 1].isspace()) and not raw[i + 1:i + 2].isdigit():
            return raw[:i]
    return raw


_VAR = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_NAME = re.compile(r"^[A-Za-z_]\w*$")
_ARITH_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
              ast.Div: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift,
              ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
              ast.BitXor: operator.xor, ast.Pow: operator.pow}


def arith(expr: str) -> int:
    """Integer arithmetic (+ - * / % << >> & | ^ **, parentheses, 0x numbers, K/M/G suffixes)."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)([KMG])\b",
                  lambda m: str(int(m.group(1), 0) << {"K": 10, "M": 20, "G": 30}[m.group(2)]), expr)

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _ARITH_OPS:
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and (b > 64 or b < 0):
                raise ValueError("exponent out of range")
            if isinstance(n.op, (ast.LShift,)) and b > 64:
                raise ValueError("shift out of range")
            return _ARITH_OPS[type(n.op)](a, b)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd, ast.Invert)):
            v = ev(n.operand)
            return -v if isinstance(n.op, ast.USub) else (~v if isinstance(n.op, ast.Invert) else v)
        raise ValueError(f"not integer arithmetic: {expr!r}")
    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError) as e:
        raise ValueError(f"bad arithmetic {expr!r}: {e}") from None


_KEY_PART = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


def _key_parts(key: str) -> list[str]:
    """``regions[1].start`` -> ["regions", "1", "start"] (``regions.1.start`` too; [-1] is the last)."""
    parts, pos = [], 0
    for m in _KEY_PART.finditer(key):
        if m.start() != pos and key[pos:m.start()] != ".":
            return [key]              # malformed ("a..b", "a[x]"): no such field
        parts.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()
    return parts if pos == len(key) and parts else [key]


def _absent(obj, key: str) -> str:
    """Why ``key`` reaches nothing in ``obj``: the first part that is missing, and what is there instead."""
    cur, path = obj, ""
    for part in _key_parts(key):
        shown = path or "the result"
        if isinstance(cur, dict):
            if part not in cur:
                why = f"{shown} has no field {part!r} (fields: {', '.join(map(str, cur)) or 'none'})"
                if not path and cur.get("finished") == 0 and "touch" in cur:   # what a finished touch adds
                    why += f": touch #{cur['touch']} has not finished (still blocked)"
                return why
            cur = cur[part]
            path = f"{path}.{part}" if path else part
        elif isinstance(cur, list):
            if not part.lstrip("-").isdigit():
                return f"{shown} is a list of {len(cur)}: index it as {shown}[N]"
            if not -len(cur) <= int(part) < len(cur):
                return f"{shown} has {len(cur)} item(s): no [{part}]"
            cur = cur[int(part)]
            path = f"{path}[{part}]"
        else:
            return f"{shown} is {cur!r}, not a list or an object: no {part!r} in it"
    return f"no field {key!r}"


def _dotted(obj, key: str):
    """obj["a"]["b"][0] for ``a.b.0`` or ``a.b[0]`` (negative indices from the end); KeyError (the class) when
    absent."""
    cur = obj
    for part in _key_parts(key):
        if isinstance(cur, dict):
            cur = cur.get(part, KeyError)
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return KeyError
        if cur is KeyError:
            return KeyError
    return cur


# -- addresses ------------------------------------------------------------------------------
def resolve_addr(st: SessionState, text: str) -> int:
    """``buf:3``, ``buf:3+0x10``, ``0x7f...``, ``buf:4`` (the end of a 4-page region), ``child/buf:3`` (a region
    of another process of the session); raises UsageError."""
    from .session.commands import parse_addr
    return parse_addr(st, text)


def _looks_like_addr(text: str) -> bool:
    return bool(re.match(r"^([A-Za-z_][\w.-]*/)?[A-Za-z_][\w.-]*:\d+([+-](0x[0-9a-fA-F]+|\d+)[KMG]?)*$", text))


_FIELD_FLAGS = {"flags": "PagefaultFlag", "categories": "PageCategory", "mode": "RegisterMode",
                "ioctls": "Ioctl", "features": "Feature"}


def _plain(name: str, result: dict, local: dict) -> str:
    return json.dumps(result, default=str)


class Interpreter:
    """Runs a script's lines against one state.  ``echo(text)``, when given, receives each line as it runs with
    its result drawn by ``render(name, result, local)`` (the CLI passes its table renderer)."""

    def __init__(self, state: SessionState, echo=None, variables: dict | None = None, render=None):
        self.st = state
        self.echo = echo
        self.render = render or _plain
        self.last_error: BaseException | None = None
        self.last_result: dict | None = None
        self.baseline: dict[str, tuple[int, int]] = {}
        self.log: list[dict] = []
        self.vars: dict[str, str] = dict(variables or {})
        self._quiet = 0          # > 0 inside repeat iterations after the first: no log, no echo
        self._parsed: dict = {}  # tokens -> parse_argv() result
        self.on_record = None    # called with every log entry (uffdctl.repro.sidebyside)
        self._split: dict = {}   # expanded text -> tokens
        self._iter: list[int] = []

    # -- variables ----------------------------------------------------------------------------
    def expand(self, lineno: int, line: str, text: str) -> str:
        def var(m):
            name = m.group(1)
            if name.startswith("result."):
                v = _dotted(self.last_result or {}, name[len("result."):])
                if v is KeyError:
                    raise _usage(lineno, line, f"${{{name}}}: the previous result has no such field")
                return str(int(v) if isinstance(v, bool) else v)
            if name not in self.vars:
                raise _usage(lineno, line, f"undefined variable ${{{name}}} (set {name}=VALUE, or run --var)")
            return self.vars[name]
        text = _VAR.sub(var, text)
        while "$((" in text:
            i = text.index("$((")
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if depth != 0 or text[j - 1] != ")":
                raise _usage(lineno, line, "unbalanced $(( ))")
            try:
                val = arith(text[i + 3:j - 1])
            except ValueError as e:
                raise _usage(lineno, line, str(e)) from None
            text = text[:i] + str(val) + text[j + 1:]
        return text

    def set_var(self, lineno, line, toks):
        if len(toks) != 1 or "=" not in toks[0]:
            raise _usage(lineno, line, "set NAME=VALUE")
        name, val = toks[0].split("=", 1)
        if not _NAME.match(name) or name == "result":
            raise _usage(lineno, line, f"bad variable name {name!r}")
        self.vars[name] = val
        self._record(lineno, line, {"line": lineno, "text": line, "set": {name: val}},
                     f"{lineno:>4}: {line}  ({name}={val})")

    # -- one line -----------------------------------------------------------------------------
    def _record(self, lineno, line, entry, echo: str | None = None):
        if self._quiet:
            return
        self.log.append(entry)
        if self.on_record is not None:
            self.on_record(entry)
        if self.echo and echo is not None:
            self.echo(echo)

    def command(self, lineno: int, line: str, toks: list[str]) -> None:
        name = toks[0]
        if name not in COMMANDS:
            raise _usage(lineno, line, f"unknown command {name!r}")
        key = tuple(toks)
        try:
            cached = self._parsed.get(key)
            if cached is None:    # a repeat loop parses each distinct line once
                if len(self._parsed) > 4096:
                    self._parsed.clear()
                cached = self._parsed[key] = parse_argv(name, toks[1:])
            cmd, args, local = cached
            args, local = dict(args), dict(local)
        except HelpRequested as e:
            raise _usage(lineno, line, str(e)) from None
        except UsageError as e:
            raise _usage(lineno, line, f"{name}: {e}") from None
        if name == "touch":
            self.st.thread(args.get("thread") or "main")
        if "main" not in self.st.thread_names:
            self.st.thread("main")
        self.last_error, self.last_result = None, None
        try:
            self.last_result = execute(self.st, name, args)
        except UsageError as e:
            raise _usage(lineno, line, str(e)) from None
        except Exception as e:
            self.last_error = e
        text = None
        if self.echo and not self._quiet:
            if self.last_error is None:
                text = self.render(name, self.last_result, local)
            else:
                text = f"error: {error_dict(self.last_error)['message']}"
            text = f"{lineno:>4}: {line}" + ("\n" + _indent(text) if text else "")
        self._record(lineno, line, {"line": lineno, "text": line, "result": self.last_result,
                                    "error": error_dict(self.last_error) if self.last_error else None}, text)

    def expect(self, lineno: int, line: str, toks: list[str]) -> None:
        kinds = "pagemap, faults, errno, error, result, event, events, data, scan, vma, addr"
        if not toks:
            raise _usage(lineno, line, f"expect what? ({kinds})")
        kind, rest = toks[0], toks[1:]
        fn = getattr(self, f"_expect_{kind}", None)
        if fn is None:
            raise _usage(lineno, line, f"unknown expectation {kind!r} ({kinds})")
        if kind not in ("errno", "error") and self.last_error is not None:
            raise ScriptError(lineno, line, f"the previous command failed: {error_dict(self.last_error)['message']}")
        if isinstance(self.last_error, NotModelled):   # no errno to expect: what the emulator cannot say
            e = self.last_error
            raise ScriptError(lineno, line, error_dict(e)["message"], exit_code_of(e), type(e).__name__, error_dict(e))
        try:
            with self.st.addressing():   # a range may name its process: expect pagemap child/buf:0 ...
                fn(lineno, line, rest)
        except ScriptError:
            raise
        except UsageError as e:
            raise _usage(lineno, line, str(e)) from None
        except Exception as e:   # NotModelled, a failed read of /proc, ...
            raise ScriptError(lineno, line, error_dict(e)["message"], exit_code_of(e), type(e).__name__,
                              error_dict(e)) from None
        self._record(lineno, line, {"line": lineno, "text": line, "ok": True}, f"{lineno:>4}: {line}  ok")

    def _expect_errno(self, lineno, line, rest):
        if len(rest) != 1:
            raise _usage(lineno, line, "expect errno NAME (e.g. EEXIST) or NUMBER")
        want = rest[0]
        code = getattr(_errno, want.upper(), None) if not want.isdigit() else int(want)
        if code is None:
            raise _usage(lineno, line, f"unknown errno {want!r}")
        got = getattr(self.last_error, "errno", None) if self.last_error is not None else None
        if got != code:
            actual = "success" if self.last_error is None else \
                f"{_errno.errorcode.get(got, got)} ({error_dict(self.last_error)['message']})"
            raise ScriptError(lineno, line, f"expected errno {_errno.errorcode.get(code, code)}, actual: {actual}")
        self.last_error = None  # consumed

    def _expect_error(self, lineno, line, rest):
        pairs = _pairs(lineno, line, rest)
        if self.last_error is None:
            raise ScriptError(lineno, line, "expected the previous command to fail, actual: success")
        d = error_dict(self.last_error)
        for k, v in pairs:
            if k == "errno" and not v.lstrip("-").isdigit():
                if getattr(_errno, v.upper(), None) is None:
                    raise _usage(lineno, line, f"unknown errno {v!r}")
        self._match(lineno, line, "error", d, pairs)
        self.last_error = None  # consumed

    def _expect_pagemap(self, lineno, line, rest):
        from .session.commands import pagemap_entries
        if not rest:
            raise _usage(lineno, line, "expect pagemap RANGE key=value ...")
        span = self._range(lineno, line, rest[0])
        pairs = _pairs(lineno, line, rest[1:])
        diffs = []
        for e in pagemap_entries(self.st, span):
            for k, v in pairs:
                if k not in e:
                    raise _usage(lineno, line, f"unknown pagemap field {k!r}")
                if e[k] != _value(v):
                    diffs.append(f"page {e['index']} (0x{e['addr']:x}) {k}: expected {v}, actual {e[k]}")
        if diffs:
            more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
            raise ScriptError(lineno, line, "; ".join(diffs[:4]) + more)

    def _range(self, lineno, line, text):
        from .session.commands import parse_range
        try:
            return parse_range(self.st, text)
        except UsageError as e:
            raise _usage(lineno, line, str(e)) from None

    def _expect_faults(self, lineno, line, rest):
        if not rest:
            raise ScriptError(lineno, line, "expect faults THREAD minor=+N major=N", 2, "UsageError")
        if "/" in rest[0]:   # PROC/THREAD: a thread of another process of the session
            proc, thread = rest[0].split("/", 1)
            try:
                with self.st.addressing(proc):
                    return self._expect_faults_of(lineno, line, thread, rest[0], rest[1:])
            except UsageError as e:
                raise ScriptError(lineno, line, str(e), 2, "UsageError") from None
        return self._expect_faults_of(lineno, line, rest[0], rest[0], rest[1:])

    def _expect_proc(self, lineno, line, rest):
        if not rest:
            raise ScriptError(lineno, line, "expect proc NAME key=value ...", 2, "UsageError")
        name, pairs = rest[0], _pairs(lineno, line, rest[1:])
        p = self.st.procs.get(name)
        if p is None:
            raise ScriptError(lineno, line, f"unknown process {name!r} (processes: {', '.join(self.st.procs) or 'none'})",
                              2, "UsageError")
        d = {"pid": p.pid, "alive": int(p.alive)}
        d.update({"exited": 0, "signaled": 0, "code": None, "signal": None, "signal_name": None})
        if p.exit:
            d.update(p.exit)
        self._match(lineno, line, f"process {name}", d, pairs)

    def _expect_faults_of(self, lineno, line, name, label, rest):
        pairs = _pairs(lineno, line, rest)
        if name not in self.st.thread_names:
            raise _usage(lineno, line, f"unknown thread {name!r} (threads: {', '.join(self.st.thread_names)})")
        now = self.st.access_faults(name)
        base = self.baseline.get(label, (0, 0))
        for k, v in pairs:
            idx = {"minor": 0, "minflt": 0, "major": 1, "majflt": 1}.get(k)
            if idx is None:
                raise _usage(lineno, line, f"unknown fault counter {k!r} (minor, major)")
            try:
                want = int(v, 0)
            except ValueError:
                raise _usage(lineno, line, f"bad count {v!r}") from None
            rel = v[0] in "+-"
            got = now[idx] - base[idx] if rel else now[idx]
            if got != want:
                what = "change" if rel else "value"
                raise ScriptError(lineno, line, f"thread {label} {k}: expected {what} {v}, actual "
                                                f"{'%+d' % got if rel else got}")
        self.baseline[label] = now

    def _expect_result(self, lineno, line, rest):
        pairs = _pairs(lineno, line, rest)
        self._match(lineno, line, "result", self.last_result or {}, pairs)

    # -- the message log ------------------------------------------------------------------------
    def _events(self) -> list[dict]:
        with self.st.lock:
            self.st.collect_events()
            return list(self.st.events)

    def _expect_event(self, lineno, line, rest):
        evs = self._events()
        if rest and rest[0].startswith("#"):
            try:
                seq = int(rest[0][1:])
            except ValueError:
                raise _usage(lineno, line, f"bad message number {rest[0]!r} (#N)") from None
            rest = rest[1:]
            pairs = _pairs(lineno, line, rest)
            ev = next((e for e in evs if e["seq"] == seq), None)
            if ev is None:
                raise ScriptError(lineno, line, f"expected message #{seq}, actual: the log has "
                                                f"{len(evs)} message(s){self._event_summary(evs)}")
        else:
            pairs = _pairs(lineno, line, rest)
            if not evs:
                raise ScriptError(lineno, line, "expected an event, actual: the log is empty")
            ev = evs[-1]
        self._match(lineno, line, f"event #{ev['seq']}", ev, pairs)

    @staticmethod
    def _event_summary(evs) -> str:
        if not evs:
            return ""
        return " (" + ", ".join(f"#{e['seq']} {e['event']}" for e in evs[-6:]) + ")"

    def _expect_events(self, lineno, line, rest):
        pairs = _pairs(lineno, line, rest)
        count = [v for k, v in pairs if k == "count"]
        if len(count) != 1:
            raise _usage(lineno, line, "expect events count=N [key=value ...] (count= once)")
        try:
            want = int(count[0], 0)
        except ValueError:
            raise _usage(lineno, line, f"bad count {count[0]!r}") from None
        since = 0
        filters = []
        for k, v in pairs:
            if k == "count":
                continue
            if k == "since":
                try:
                    since = int(v.lstrip("#"), 0)
                except ValueError:
                    raise _usage(lineno, line, f"bad since {v!r} (a message number)") from None
                continue
            filters.append((k, v))
        got = [e for e in self._events() if e["seq"] > since
               and all(self._field_ok(lineno, line, e, k, v, strict=False) for k, v in filters)]
        if len(got) != want:
            what = " ".join(f"{k}={v}" for k, v in filters) or "any"
            raise ScriptError(lineno, line, f"messages matching {what}: expected {want}, actual {len(got)}"
                                            f"{self._event_summary(got)}")

    # -- memory contents --------------------------------------------------------------------------
    def _expect_data(self, lineno, line, rest):
        import zlib
        if len(rest) < 2:
            raise _usage(lineno, line, "expect data RANGE byte=0x41 | zero | crc32=0x... | hex=...")
        span = self._range(lineno, line, rest[0])
        checks = []
        for t in rest[1:]:
            if t == "zero":
                checks.append(("byte", "0"))
            elif "=" in t:
                k, v = t.split("=", 1)
                if k not in ("byte", "crc32", "hex", "len"):
                    raise _usage(lineno, line, f"unknown data check {k!r} (byte, zero, crc32, hex)")
                checks.append((k, v))
            else:
                raise _usage(lineno, line, f"expected byte=B, zero, crc32=X or hex=H, got {t!r}")
        from .session.commands import read_span
        try:
            data = read_span(self.st, span, DATA_READ_TIMEOUT_S)
        except UsageError as e:
            raise ScriptError(lineno, line, str(e)) from None
        except Exception as e:
            raise ScriptError(lineno, line, f"reading {rest[0]}: {error_dict(e)['message']}") from None
        for k, v in checks:
            if k == "byte":
                try:
                    b = int(v, 0)
                except ValueError:
                    raise _usage(lineno, line, f"bad byte {v!r}") from None
                if not 0 <= b <= 255:
                    raise _usage(lineno, line, f"byte {v!r} is not 0-255")
                bad = [i for i, x in enumerate(data) if x != b]
                if bad:
                    i = bad[0]
                    page = (span.start + i - span.region.addr) // span.region.page_size
                    raise ScriptError(lineno, line, f"{len(bad)} byte(s) differ from 0x{b:02x}: first at offset "
                                                    f"0x{i:x} ({span.region.name}:{page}): 0x{data[i]:02x}")
            elif k == "crc32":
                got = zlib.crc32(data)
                try:
                    want = int(v, 16) if not v.lower().startswith("0x") else int(v, 0)
                except ValueError:
                    raise _usage(lineno, line, f"bad crc32 {v!r}") from None
                if got != want:
                    raise ScriptError(lineno, line, f"crc32: expected 0x{want:08x}, actual 0x{got:08x}")
            elif k == "hex":
                try:
                    want = bytes.fromhex(v)
                except ValueError:
                    raise _usage(lineno, line, f"bad hex {v!r}") from None
                if data[:len(want)] != want:
                    raise ScriptError(lineno, line, f"first {len(want)} bytes: expected {want.hex()}, "
                                                    f"actual {data[:len(want)].hex()}")

    # -- PAGEMAP_SCAN and VMAs --------------------------------------------------------------------
    def _expect_scan(self, lineno, line, rest):
        if not rest:
            raise _usage(lineno, line, "expect scan RANGE [scan options] regions=N walk_end=ADDR r0.categories=...")
        opts = [t for t in rest if "=" not in t or t.startswith("--")]
        pairs = _pairs(lineno, line, [t for t in rest if "=" in t and not t.startswith("--")])
        try:
            _, args, _ = parse_argv("scan", opts)
        except (UsageError, HelpRequested) as e:
            raise _usage(lineno, line, f"scan: {e}") from None
        try:
            res = execute(self.st, "scan", args)
        except UsageError as e:
            raise _usage(lineno, line, str(e)) from None
        except Exception as e:
            raise ScriptError(lineno, line, f"PAGEMAP_SCAN failed: {error_dict(e)['message']}") from None
        view = dict(res)
        view["regions"] = len(res["regions"])
        for i, r in enumerate(res["regions"]):
            view[f"r{i}"] = r
        for k, v in pairs:
            if k.startswith("r") and k[1:].split(".")[0].isdigit() and _dotted(view, k) is KeyError:
                raise ScriptError(lineno, line, f"scan: {k}: there is no region {k.split('.')[0]} "
                                                f"(regions: {_fmt_regions(self.st, res['regions'])})")
        self._match(lineno, line, "scan", view, pairs,
                    extra=lambda: f" (regions: {_fmt_regions(self.st, res['regions'])}, "
                                  f"walk_end {self._where(res['walk_end'], True)})")

    def _expect_vma(self, lineno, line, rest):
        if len(rest) < 2:
            raise _usage(lineno, line, "expect vma RANGE flags=um,uw [count=N] [Smaps_Field=VALUE]")
        span = self._range(lineno, line, rest[0])
        pairs = _pairs(lineno, line, rest[1:])
        from .session.commands import vmas_of
        vmas = vmas_of(self.st, span)
        diffs = []
        for k, v in pairs:
            if k == "count":
                if len(vmas) != _value(v):
                    diffs.append(f"count: expected {v}, actual {len(vmas)} ("
                                 + ", ".join(f"{self._where(m['start'])}-{self._where(m['end'], True)}"
                                             for m in vmas) + ")")
                continue
            for m in vmas:
                where = f"vma {self._where(m['start'])}-{self._where(m['end'], True)}"
                if k == "flags":
                    have = set(m["flags"])
                    for f in v.split(","):
                        f = f.strip()
                        if not f:
                            continue
                        neg = f[0] in "!-"
                        f = f.lstrip("!-")
                        if (f in have) == neg:
                            diffs.append(f"{where}: VmFlags {'has' if neg else 'lacks'} {f} "
                                         f"(VmFlags: {' '.join(m['flags'])})")
                    continue
                if k not in m:
                    raise _usage(lineno, line, f"unknown vma field {k!r} (flags, count, "
                                               f"{', '.join(x for x in m if x not in ('flags',))})")
                want = _size_or_value(v)
                if m[k] != want:
                    diffs.append(f"{where}: {k}: expected {v}, actual {m[k]}")
        if diffs:
            raise ScriptError(lineno, line, "; ".join(diffs[:4]) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4
                                                                     else ""))

    def _expect_addr(self, lineno, line, rest):
        ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge}
        try:
            if len(rest) == 2 and rest[1].startswith("aligned="):
                a = resolve_addr(self.st, rest[0])
                al = _size_or_value(rest[1].split("=", 1)[1])
                if not isinstance(al, int) or al <= 0:
                    raise _usage(lineno, line, f"bad alignment {rest[1]!r}")
                if a % al:
                    raise ScriptError(lineno, line, f"{rest[0]} = 0x{a:x} is not aligned to 0x{al:x} "
                                                    f"(offset 0x{a % al:x})")
                return
            if len(rest) != 3 or rest[1] not in ops:
                raise _usage(lineno, line, "expect addr A OP B (OP: == != < <= > >=) or expect addr A aligned=SIZE")
            a, b = resolve_addr(self.st, rest[0]), resolve_addr(self.st, rest[2])
        except UsageError as e:
            raise _usage(lineno, line, str(e)) from None
        if not ops[rest[1]](a, b):
            raise ScriptError(lineno, line, f"expected {rest[0]} {rest[1]} {rest[2]}, actual 0x{a:x} vs 0x{b:x} "
                                            f"(difference {a - b:+#x})")

    # -- matching ---------------------------------------------------------------------------------
    def _where(self, addr, end: bool = False) -> str:
        if not isinstance(addr, int):
            return str(addr)
        loc = self.st.locate(addr, end) if hasattr(self.st, "locate") else None
        return f"0x{addr:x}" + (f" ({loc})" if loc else "")

    def _field_ok(self, lineno, line, obj, k, v, strict=True):
        """Does obj's field k match the expected text v?  strict: an absent field is an error."""
        cur = _dotted(obj, k.rstrip("&"))
        if cur is KeyError:
            if strict:
                raise ScriptError(lineno, line, f"no field {k!r} (fields: {', '.join(map(str, obj))})")
            return False
        return self._equal(lineno, line, obj, k, cur, v)

    def _mask(self, lineno, line, k, v) -> int:
        """The bits of ``k&=v``: a number, or names of the field's flags."""
        from . import uapi
        last = k.split(".")[-1]
        try:
            return int(v, 0)
        except ValueError:
            pass
        if last in _FIELD_FLAGS:
            try:
                return getattr(uapi, _FIELD_FLAGS[last]).parse(v)
            except ValueError as e:
                raise _usage(lineno, line, f"{k}: {e}") from None
        raise _usage(lineno, line, f"{k}&={v}: a mask is a number or flag names")

    def _equal(self, lineno, line, obj, k, actual, v) -> bool:
        actual = int(actual) if isinstance(actual, bool) else actual
        if k.endswith("&"):       # key&=MASK: every bit of MASK is set
            mask = self._mask(lineno, line, k[:-1], v)
            return isinstance(actual, int) and actual & mask == mask
        last = k.split(".")[-1]
        if actual == _value(v) or str(actual) == v:
            return True
        if isinstance(actual, int):
            if last == "errno":
                code = getattr(_errno, v.upper(), None)
                return code == actual
            if last in _FIELD_FLAGS and not v.lstrip("-").isdigit():
                from . import uapi
                cls = getattr(uapi, _FIELD_FLAGS[last])
                try:
                    return cls.parse(v) == actual
                except ValueError as e:
                    raise _usage(lineno, line, f"{k}: {e}") from None
            if _looks_like_addr(v):
                try:
                    if resolve_addr(self.st, v) == actual:
                        return True
                except UsageError:
                    pass
                at = obj.get("at", {}) if isinstance(obj, dict) else {}
                return at.get(last) == v
            sz = _size_or_value(v)
            if isinstance(sz, int):
                return sz == actual
        return False

    def _match(self, lineno, line, what, obj, pairs, extra=None):
        diffs = []
        for k, v in pairs:
            cur = _dotted(obj, k.rstrip("&"))
            if cur is KeyError:
                raise ScriptError(lineno, line, f"{what} {k.rstrip('&')}: " +
                                  _absent(obj, k.rstrip("&")).replace("the result", what))
            if not self._equal(lineno, line, obj, k, cur, v):
                shown = self._where(cur) if isinstance(cur, int) and (_looks_like_addr(v) or cur > 0xffff) else cur
                if k.rstrip("&").split(".")[-1] in _FIELD_FLAGS and isinstance(cur, int):
                    dec = obj.get(k.rstrip("&") + "_decoded") if isinstance(obj, dict) else None
                    shown = f"{cur:#x}" + (f" ({'|'.join(dec) or '0'})" if dec is not None else "")
                diffs.append(f"{k}: expected {v}, actual {shown}")
        if diffs:
            raise ScriptError(lineno, line, f"{what} " + "; ".join(diffs) + (extra() if extra else ""))

    # -- a whole script -------------------------------------------------------------------------
    def parse(self, text: str) -> list:
        return parse_script(text)

    def _tokens(self, lineno, line) -> list[str]:
        text = self.expand(lineno, line, line) if "$" in line else line
        toks = self._split.get(text)
        if toks is not None:
            return list(toks)
        if len(self._split) > 4096:
            self._split.clear()
        try:
            toks = self._split[text] = shlex.split(text)
            return list(toks)
        except ValueError as e:
            raise _usage(lineno, line, f"cannot parse line: {e}") from None

    def run_block(self, block: list) -> None:
        for n, node in enumerate(block):
            if node[0] == "repeat":
                self._repeat(node)
                continue
            lineno, line = node
            toks = self._tokens(lineno, line)
            if not toks:
                continue
            if toks[0] == "expect":
                self.expect(lineno, line, toks[1:])
                continue
            if toks[0] == "set":
                self.set_var(lineno, line, toks[1:])
                continue
            self.command(lineno, line, toks)
            if self.last_error is not None:
                nxt = block[n + 1] if n + 1 < len(block) else None
                nxt_toks = nxt[1].split()[:2] if nxt is not None and nxt[0] != "repeat" else []
                if nxt_toks not in (["expect", "errno"], ["expect", "error"]):
                    e = self.last_error
                    raise ScriptError(lineno, line, error_dict(e)["message"], exit_code_of(e), type(e).__name__,
                                      error_dict(e))

    def _repeat(self, node) -> None:
        _, lineno, line, body = node
        toks = self._tokens(lineno, line)[1:]
        var = None
        if len(toks) == 3 and toks[1] == "--var":
            var = toks[2]
            toks = toks[:1]
        if len(toks) != 1 or (var is not None and not _NAME.match(var)):
            raise _usage(lineno, line, "repeat N [--var NAME] ... end")
        try:
            count = int(toks[0], 0)
        except ValueError:
            raise _usage(lineno, line, f"bad repeat count {toks[0]!r}") from None
        if not 0 <= count <= MAX_REPEAT:
            raise _usage(lineno, line, f"repeat count {count} out of range (0-{MAX_REPEAT})")
        self._record(lineno, line, {"line": lineno, "text": line, "repeat": count})
        self._iter.append(0)
        try:
            for i in range(count):
                self._iter[-1] = i
                if var:
                    self.vars[var] = str(i)
                if i == 1:
                    self._quiet += 1
                self.run_block(body)
        except ScriptError as e:
            if e.iteration is None:
                e.iteration = list(self._iter)
            raise
        finally:
            if count > 1:
                self._quiet -= 1
            self._iter.pop()
        self._record(lineno, line, {"line": lineno, "text": "end", "iterations": count},
                     f"{'':>4}  (repeat at line {lineno}: {count} iteration(s) ok)")

    def run(self, text: str) -> dict:
        tree = self.parse(text)
        self.run_block(tree)
        return {"ok": True, "lines": self.log}


def parse_script(text: str) -> list:
    """Lines into a tree: ``(lineno, line)`` or ``["repeat", lineno, line, body]``.  Malformed structure
    (an unmatched repeat/end, an unparsable line) raises ScriptError before anything runs."""
    root: list = []
    stack: list[tuple[list, int, str]] = []
    cur = root
    for i, raw in enumerate(text.splitlines(), 1):
        body = strip_comment(raw).strip()
        if not body:
            continue
        head = body.split(None, 1)[0]
        if head == "repeat":
            node = ["repeat", i, body, []]
            cur.append(node)
            stack.append((cur, i, body))
            cur = node[3]
        elif head == "end" and body == "end":
            if not stack:
                raise _usage(i, body, "end without repeat")
            cur = stack.pop()[0]
        else:
            try:
                shlex.split(body)
            except ValueError as e:
                raise _usage(i, body, f"cannot parse line: {e}") from None
            cur.append((i, body))
    if stack:
        _, i, body = stack[-1]
        raise _usage(i, body, "repeat without end")
    return root


def _size_or_value(text: str):
    from .session.commands import parse_size
    v = _value(text)
    if isinstance(v, int):
        return v
    try:
        return parse_size(text)
    except UsageError:
        return v


def _fmt_regions(st, regions) -> str:
    if not regions:
        return "none"
    out = []
    for r in regions[:6]:
        s, e = r["start"], r["end"]
        ls = st.locate(s) if hasattr(st, "locate") else None
        le = st.locate(e, end=True) if hasattr(st, "locate") else None
        cats = "|".join(c.replace("PAGE_IS_", "").lower() for c in r.get("categories_decoded", []))
        out.append(f"{ls or hex(s)}..{le or hex(e)} {cats or '0'}")
    return "; ".join(out) + (" ..." if len(regions) > 6 else "")


def _indent(text: str) -> str:
    return "\n".join("      " + ln for ln in text.splitlines())


def parse_vars(pairs) -> dict:
    """``--var NAME=VALUE`` options into a dict (UsageError on a malformed one)."""
    out = {}
    for p in pairs or ():
        if "=" not in p or not _NAME.match(p.split("=", 1)[0]):
            raise UsageError(f"bad --var {p!r}: expected NAME=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def read_script(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(0, "", f"cannot read {path}: {getattr(e, 'strerror', None) or e}", 2, "UsageError") \
            from None


def backend_line(info: dict) -> str:
    """The text output's first line: which backend the script runs on, and why (``-j`` has it as
    ``backend``): a run on the model never reads as a run on this kernel."""
    what = (f"emu (the emulator, profile {info.get('profile')})" if info.get("backend") == "emu"
            else f"kernel {info.get('release')}")
    return f"# backend: {what}; {info.get('reason')}; soft-dirty: {info.get('soft_dirty_reason')}"


def run_text(text: str, path: str, backend="auto", profile: str | None = None, echo=None, render=None,
             soft_dirty: bool | None = None, notice=None, variables: dict | None = None,
             user_mode_only: bool = False) -> dict:
    """Run a script's text on one backend; returns ``{"ok", "file", "backend", "lines", ["error", "exit"]}``.

    ``backend``/``profile``/``soft_dirty`` go to the one opener (uffdctl.registry); the result's ``backend``
    says which backend ran and why, and ``notice(line)`` receives the one line to print on stderr when
    ``auto`` did not give the kernel.
    """
    st = SessionState(backend, profile, name="run", soft_dirty=soft_dirty, user_mode_only=user_mode_only)
    it = Interpreter(st, echo, variables, render)
    info = None
    try:
        st.open()
        info = st.backend_info()
        if notice is not None and st.notice():
            notice(st.notice())
        if echo is not None:
            echo(backend_line(info))
        res = it.run(text)
        res.update(file=path, backend=info, exit=0)
        return res
    except ScriptError as e:
        return {"ok": False, "file": path, "backend": info, "lines": it.log, "error": e.to_dict(),
                "exit": e.exit_code}
    except UffdctlError as e:  # the backend cannot open here (BackendUnavailable, UsageError), ...
        return {"ok": False, "file": path, "backend": info, "lines": it.log, "error": error_dict(e),
                "exit": exit_code_of(e)}
    finally:
        st.close()


def run_file(path: str, backend: str = "auto", profile: str | None = None, echo=None, render=None,
             soft_dirty: bool | None = None, notice=None, variables: dict | None = None,
             user_mode_only: bool = False) -> dict:
    """Run a script file (see run_text).  Malformed input that prevents the run from starting (unreadable
    file) raises ScriptError."""
    return run_text(read_script(path), path, backend, profile, echo, render, soft_dirty, notice, variables,
                    user_mode_only)
