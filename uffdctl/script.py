"""The ``uffdctl run`` language: session commands one per line, plus ``expect``.

Each line is parsed from the command table (uffdctl.session.argv: the same
parameters the CLI subcommand declares) and run in-process against one :class:`~uffdctl.session.state.SessionState` (no daemon).
``#`` starts a comment.  The script stops at the first failure, naming the line.

``expect`` forms::

    expect pagemap RANGE key=value ...   every page of RANGE (keys: present swap file uffd_wp soft_dirty
                                         exclusive guard zero marker pfn)
    expect faults THREAD minor=+1 major=0   faults taken by the thread's finished touches (the
                                         kernel's count around each access); +N: change since the
                                         previous ``expect faults`` of that thread
    expect errno EEXIST                  the previous command failed with this errno (name or number)
    expect result key=value ...          fields of the previous command's result (dotted keys)
    expect event key=value ...           the newest message in the log
    expect proc NAME key=value ...       a process of the session (alive exited signaled code signal
                                         signal_name pid; see fork, waitpid)

A failing command is allowed only when the next line is ``expect errno``.
"""
from __future__ import annotations

import errno as _errno
import json
import shlex
import sys

from .errors import ScriptError, UffdctlError, UsageError, exit_code_of
from .errors import to_wire as error_dict
from .session.argv import HelpRequested, parse_argv
from .session.commands import COMMANDS, execute
from .session.state import SessionState


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
            raise ScriptError(lineno, line, f"expected key=value, got {t!r}", 2, "UsageError")
        k, v = t.split("=", 1)
        out.append((k, v))
    if not out:
        raise ScriptError(lineno, line, "nothing to expect (give key=value pairs)", 2, "UsageError")
    return out


def _plain(name: str, result: dict, local: dict) -> str:
    return json.dumps(result, default=str)


class Interpreter:
    """Runs a script's lines against one state.  ``echo(text)``, when given, receives each line as it runs with
    its result drawn by ``render(name, result, local)`` (the CLI passes its table renderer)."""

    def __init__(self, state: SessionState, echo=None, render=None):
        self.st = state
        self.echo = echo
        self.render = render or _plain
        self.last_error: BaseException | None = None
        self.last_result: dict | None = None
        self.baseline: dict[str, tuple[int, int]] = {}
        self.log: list[dict] = []

    # -- one line -----------------------------------------------------------------------------
    def command(self, lineno: int, line: str, toks: list[str]) -> None:
        name = toks[0]
        if name not in COMMANDS:
            raise ScriptError(lineno, line, f"unknown command {name!r}", 2, "UsageError")
        try:
            cmd, args, local = parse_argv(name, toks[1:])
        except HelpRequested as e:
            raise ScriptError(lineno, line, str(e), 2, "UsageError") from None
        except UsageError as e:
            raise ScriptError(lineno, line, f"{name}: {e}", 2, "UsageError") from None
        if name == "touch":
            self.st.thread(args.get("thread") or "main")
        if "main" not in self.st.thread_names:
            self.st.thread("main")
        self.last_error, self.last_result = None, None
        try:
            self.last_result = execute(self.st, name, args)
        except UsageError as e:
            raise ScriptError(lineno, line, str(e), 2, "UsageError") from None
        except Exception as e:
            self.last_error = e
        if self.echo:
            if self.last_error is None:
                text = self.render(name, self.last_result, local)
            else:
                text = f"error: {error_dict(self.last_error)['message']}"
            self.echo(f"{lineno:>4}: {line}" + ("\n" + _indent(text) if text else ""))
        self.log.append({"line": lineno, "text": line, "result": self.last_result,
                         "error": error_dict(self.last_error) if self.last_error else None})

    def expect(self, lineno: int, line: str, toks: list[str]) -> None:
        if not toks:
            raise ScriptError(lineno, line, "expect what? (pagemap, faults, errno, result, event)", 2, "UsageError")
        kind, rest = toks[0], toks[1:]
        fn = getattr(self, f"_expect_{kind}", None)
        if fn is None:
            raise ScriptError(lineno, line, f"unknown expectation {kind!r} (pagemap, faults, errno, result, event)",
                              2, "UsageError")
        if kind != "errno" and self.last_error is not None:
            raise ScriptError(lineno, line, f"the previous command failed: {error_dict(self.last_error)['message']}")
        with self.st.addressing():   # a range may name its process: expect pagemap child/buf:0 ...
            fn(lineno, line, rest)
        if self.echo:
            self.echo(f"{lineno:>4}: {line}  ok")
        self.log.append({"line": lineno, "text": line, "ok": True})

    def _expect_errno(self, lineno, line, rest):
        if len(rest) != 1:
            raise ScriptError(lineno, line, "expect errno NAME (e.g. EEXIST) or NUMBER", 2, "UsageError")
        want = rest[0]
        code = getattr(_errno, want.upper(), None) if not want.isdigit() else int(want)
        if code is None:
            raise ScriptError(lineno, line, f"unknown errno {want!r}", 2, "UsageError")
        got = getattr(self.last_error, "errno", None) if self.last_error is not None else None
        if got != code:
            actual = "success" if self.last_error is None else \
                f"{_errno.errorcode.get(got, got)} ({error_dict(self.last_error)['message']})"
            raise ScriptError(lineno, line, f"expected errno {_errno.errorcode.get(code, code)}, actual: {actual}")
        self.last_error = None  # consumed

    def _expect_pagemap(self, lineno, line, rest):
        from .session.commands import pagemap_entries, parse_range
        if not rest:
            raise ScriptError(lineno, line, "expect pagemap RANGE key=value ...", 2, "UsageError")
        try:
            span = parse_range(self.st, rest[0])
        except UsageError as e:
            raise ScriptError(lineno, line, str(e), 2, "UsageError") from None
        pairs = _pairs(lineno, line, rest[1:])
        diffs = []
        for e in pagemap_entries(self.st, span):
            for k, v in pairs:
                if k not in e:
                    raise ScriptError(lineno, line, f"unknown pagemap field {k!r}", 2, "UsageError")
                if e[k] != _value(v):
                    diffs.append(f"page {e['index']} (0x{e['addr']:x}) {k}: expected {v}, actual {e[k]}")
        if diffs:
            more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
            raise ScriptError(lineno, line, "; ".join(diffs[:4]) + more)

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
            raise ScriptError(lineno, line, f"unknown thread {name!r} (threads: {', '.join(self.st.thread_names)})",
                              2, "UsageError")
        now = self.st.access_faults(name)
        base = self.baseline.get(label, (0, 0))
        for k, v in pairs:
            idx = {"minor": 0, "minflt": 0, "major": 1, "majflt": 1}.get(k)
            if idx is None:
                raise ScriptError(lineno, line, f"unknown fault counter {k!r} (minor, major)", 2, "UsageError")
            try:
                want = int(v, 0)
            except ValueError:
                raise ScriptError(lineno, line, f"bad count {v!r}", 2, "UsageError") from None
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

    def _expect_event(self, lineno, line, rest):
        pairs = _pairs(lineno, line, rest)
        with self.st.lock:
            self.st.collect_events()
            if not self.st.events:
                raise ScriptError(lineno, line, "expected an event, actual: the log is empty")
            self._match(lineno, line, "event", self.st.events[-1], pairs)

    @staticmethod
    def _match(lineno, line, what, obj, pairs):
        diffs = []
        for k, v in pairs:
            cur = obj
            for part in k.split("."):
                cur = cur.get(part, KeyError) if isinstance(cur, dict) else KeyError
            if cur is KeyError:
                raise ScriptError(lineno, line, f"{what} has no field {k!r} (fields: {', '.join(obj)})")
            actual = int(cur) if isinstance(cur, bool) else cur
            if actual != _value(v) and str(actual) != v:
                diffs.append(f"{k}: expected {v}, actual {actual}")
        if diffs:
            raise ScriptError(lineno, line, f"{what} " + "; ".join(diffs))

    # -- a whole script -------------------------------------------------------------------------
    def run(self, text: str) -> dict:
        lines = text.splitlines()
        parsed = []
        for i, raw in enumerate(lines, 1):
            try:
                toks = shlex.split(raw, comments=True)
            except ValueError as e:
                raise ScriptError(i, raw.strip(), f"cannot parse line: {e}", 2, "UsageError") from None
            if toks:
                parsed.append((i, raw.strip(), toks))
        for n, (lineno, line, toks) in enumerate(parsed):
            if toks[0] == "expect":
                self.expect(lineno, line, toks[1:])
                continue
            self.command(lineno, line, toks)
            nxt = parsed[n + 1][2] if n + 1 < len(parsed) else []
            if self.last_error is not None and nxt[:2] != ["expect", "errno"]:
                e = self.last_error
                raise ScriptError(lineno, line, error_dict(e)["message"], exit_code_of(e), type(e).__name__,
                                  error_dict(e))
        return {"ok": True, "lines": self.log}


def _indent(text: str) -> str:
    return "\n".join("      " + ln for ln in text.splitlines())


def run_file(path: str, backend: str = "auto", profile: str | None = None, echo=None, render=None,
             soft_dirty: bool | None = None, notice=None, user_mode_only: bool = False) -> dict:
    """Run a script file; returns ``{"ok", "file", "backend", "lines", ["error", "exit"]}``.

    ``backend``/``profile``/``soft_dirty`` go to the one opener (uffdctl.registry); the result's ``backend``
    says which backend ran and why, and ``notice(line)`` receives the one line to print on stderr when
    ``auto`` did not give the kernel.  Malformed input that prevents the run from starting (unreadable
    file) raises ScriptError.
    """
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(0, "", f"cannot read {path}: {getattr(e, 'strerror', None) or e}", 2, "UsageError") \
            from None
    st = SessionState(backend, profile, name="run", soft_dirty=soft_dirty, user_mode_only=user_mode_only)
    it = Interpreter(st, echo, render)
    info = None
    try:
        st.open()
        info = st.backend_info()
        if notice is not None and st.notice():
            notice(st.notice())
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
