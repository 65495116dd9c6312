"""Scenario files: ``uffdctl/repro/scenarios/NAME.uffd``.

A scenario is written once, as the steps of the ``uffdctl run`` language (the
session commands, one per line) under a small TOML header in ``#:`` comment
lines.  The header names the scenario, quotes the thread, says what
"REPRODUCED" means as an expression over the observed state of the watched page
after the last step (``symptom``), and lists the expected verdict per kernel
version / emulator profile, each with its source (a kernel commit or function, or a
measurement)::

    #: name = "unprotect-extra-fault"
    #: watch = "buf:0"
    #: symptom = "fault >= 1"
    #: [[case]]
    #: id = "anon"
    #: vars = { TYPE = "anon" }
    #: expect = [ { release = "5.19-6.2", verdict = "REPRODUCED", source = "931298e103c2 (6.3); measured: Δminflt" } ]
    mmap --size 8K --type ${TYPE} --name buf
    [softdirty] clear-refs 4          # only in the cases tagged softdirty

``${VAR}`` is replaced by the case's ``vars`` over the header's (the generated shell scripts use
the same text as shell variables); a line starting with ``[tag,...]`` runs only
in cases carrying one of those tags (a case's tags default to its id).
"""
from __future__ import annotations

import ast
import pathlib
import re
import shlex
import string
import tomllib
from dataclasses import dataclass, field
from importlib import resources

VERDICTS = ("REPRODUCED", "NOT REPRODUCED", "UNSUPPORTED")
NEEDS = ("soft_dirty", "tlb", "wp_async", "move", "hints")
OBSERVABLES = ("present", "write", "dirty", "soft_dirty", "uffd_wp", "exclusive", "private_dirty", "written",
               "fault", "flushes", "faults")
_TAGS = re.compile(r"^\[([\w,.-]+)\]\s+(.*)$")


class ScenarioError(ValueError):
    """A malformed scenario file (a bug in the scenario, not in the kernel)."""


@dataclass(frozen=True)
class Step:
    lineno: int
    text: str                 # after ${VAR} substitution, without the tag prefix or comment
    comment: str = ""

    @property
    def tokens(self) -> list[str]:
        return shlex.split(self.text)


@dataclass
class Rule:
    """One expectation: the first rule whose conditions all hold gives the expected verdict."""

    verdict: str
    source: str
    release: str | None = None          # "5.19-6.2", "6.3-", "-6.6", "6.18"
    profile: str | None = None          # an emulator profile name (kernel runs have none)
    backend: str | None = None
    soft_dirty: bool | None = None

    def matches(self, facts: dict) -> bool:
        if self.profile is not None and facts.get("profile") != self.profile:
            return False
        if self.backend is not None and facts.get("backend") != self.backend:
            return False
        if self.soft_dirty is not None and bool(facts.get("soft_dirty")) != self.soft_dirty:
            return False
        if self.release is not None and not release_in(facts.get("release", ""), self.release):
            return False
        return True

    def describe(self) -> str:
        conds = [f"{k}={v}" for k in ("release", "profile", "backend", "soft_dirty")
                 if (v := getattr(self, k)) is not None]
        return " ".join(conds) or "any"


@dataclass
class Case:
    id: str
    title: str
    vars: dict
    tags: tuple
    symptom: str
    needs: tuple
    fallback: dict | None
    rules: list
    profiles: tuple
    switches: dict


@dataclass
class Scenario:
    name: str
    title: str
    thread: str
    spec: str
    reproduced: str
    watch: str
    body: list                     # (lineno, raw line) of the script part
    cases: list = field(default_factory=list)
    path: str = ""
    header: dict = field(default_factory=dict)

    def case(self, cid: str) -> Case:
        for c in self.cases:
            if c.id == cid:
                return c
        raise KeyError(f"scenario {self.name} has no case {cid!r} (cases: {', '.join(c.id for c in self.cases)})")

    def tagged_lines(self):
        """(lineno, tags or None, code, comment) of every step line, ``${VAR}`` left as written."""
        for lineno, raw in self.body:
            code, comment = split_comment(raw)
            if not code:
                continue
            m = _TAGS.match(code)
            yield (lineno, tuple(m.group(1).split(",")), m.group(2), comment) if m else (lineno, None, code, comment)

    def lines(self, case: Case):
        """(lineno, code, comment) of the case's lines: tag filter applied."""
        for lineno, tags, code, comment in self.tagged_lines():
            if tags is None or set(tags) & set(case.tags):
                yield lineno, code, comment

    def steps(self, case: Case) -> list[Step]:
        """The steps of one case: tag filter applied, ``${VAR}`` substituted."""
        out = []
        for lineno, code, comment in self.lines(case):
            try:
                text = " ".join(string.Template(code).substitute(case.vars).split())   # an empty ${VAR} leaves no gap
            except (KeyError, ValueError) as e:
                raise ScenarioError(f"{self.name}:{lineno}: case {case.id}: no value for {e}") from None
            out.append(Step(lineno, text, comment))
        return out

    def expectation(self, case: Case, facts: dict) -> Rule | None:
        for r in case.rules:
            if r.matches(facts):
                return r
        return None


def split_comment(raw: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment), honouring shell quoting."""
    in_q = None
    for i, ch in enumerate(raw):
        if in_q:
            if ch == in_q:
                in_q = None
        elif ch in "'\"":
            in_q = ch
        elif ch == "#":
            return raw[:i].strip(), raw[i + 1:].strip()
    return raw.strip(), ""


def _version(text: str) -> tuple[int, int] | None:
    m = re.match(r"^\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def release_in(release: str, spec: str) -> bool:
    """``6.18.44-fc`` in ``"6.3-"`` (from 6.3), ``"5.19-6.2"``, ``"-6.6"`` or ``"6.18"``."""
    v = _version(release)
    if v is None:
        return False
    if "-" not in spec:
        return v == _version(spec)
    lo, hi = spec.split("-", 1)
    return (not lo or v >= _version(lo)) and (not hi or v <= _version(hi))


# -- symptoms: a tiny expression language over the observables ---------------------------------
_ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare, ast.Name, ast.Load,
            ast.Constant, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class Unobservable(Exception):
    """The symptom names something this backend cannot observe (value None)."""


def check_expr(text: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ScenarioError(f"{where}: bad symptom {text!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ScenarioError(f"{where}: symptom {text!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id not in OBSERVABLES:
            raise ScenarioError(f"{where}: symptom {text!r}: unknown observable {node.id!r} "
                                f"(known: {', '.join(OBSERVABLES)})")
    return tree


def evaluate(text: str, obs: dict) -> bool:
    """Evaluate a symptom against one observation; Unobservable if it needs a value the backend lacks."""
    tree = check_expr(text, "symptom")
    missing = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and obs.get(n.id) is None})
    if missing:
        raise Unobservable(", ".join(missing))
    return bool(eval(compile(tree, "<symptom>", "eval"), {"__builtins__": {}}, dict(obs)))


# -- loading ---------------------------------------------------------------------------------------
def parse(text: str, path: str = "<scenario>", bodies: dict | None = None) -> Scenario:
    """Parse one file; ``bodies`` (name -> body) serves a header's ``steps = "OTHER"`` (reuse its steps)."""
    head, body = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#:"):
            head.append(raw[3:] if raw.startswith("#: ") else raw[2:])
        elif raw.strip():
            body.append((lineno, raw))
    try:
        h = tomllib.loads("\n".join(head))
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: header: {e}") from None
    for key in ("name", "title", "thread", "cites", "reproduced", "watch", "symptom"):
        if key not in h:
            raise ScenarioError(f"{path}: header lacks {key!r}")
    if h.get("steps"):
        if body:
            raise ScenarioError(f"{path}: steps = {h['steps']!r} and steps of its own")
        if h["steps"] not in (bodies or {}):
            raise ScenarioError(f"{path}: steps = {h['steps']!r}: no such scenario")
        body = bodies[h["steps"]]
    sc = Scenario(h["name"], h["title"], h["thread"], h["cites"], h["reproduced"], h["watch"], body,
                  path=path, header=h)
    defaults = {k: h.get(k) for k in ("symptom", "needs", "fallback", "expect", "profiles", "switches")}
    for raw_case in h.get("case") or [{"id": "default"}]:
        c = dict(defaults)
        c.update(raw_case)
        cid = c["id"]
        where = f"{path}: case {cid}"
        rules = []
        for r in c.get("expect") or []:
            if r.get("verdict") not in VERDICTS:
                raise ScenarioError(f"{where}: expectation verdict {r.get('verdict')!r} (valid: {', '.join(VERDICTS)})")
            if not r.get("source"):
                raise ScenarioError(f"{where}: expectation {r} has no source (a kernel commit or function, or a measurement)")
            unknown = set(r) - {"verdict", "source", "release", "profile", "backend", "soft_dirty"}
            if unknown:
                raise ScenarioError(f"{where}: expectation keys {sorted(unknown)} unknown")
            rules.append(Rule(**r))
        needs = tuple(c.get("needs") or ())
        bad = set(needs) - set(NEEDS)
        if bad:
            raise ScenarioError(f"{where}: unknown needs {sorted(bad)} (known: {', '.join(NEEDS)})")
        check_expr(c["symptom"], where)
        if c.get("fallback"):
            check_expr(c["fallback"]["symptom"], where + " fallback")
        case = Case(cid, c.get("title", ""), {**(h.get("vars") or {}), **(raw_case.get("vars") or {})},
                    tuple(c.get("tags") or (cid,)),
                    c["symptom"], needs, c.get("fallback"), rules, tuple(c.get("profiles") or ()),
                    dict(c.get("switches") or {}))
        sc.cases.append(case)
        for st in sc.steps(case):          # every line substitutes, and is a known command
            _check_step(st, where)
    return sc


def _check_step(step: Step, where: str) -> None:
    from ..session.commands import COMMANDS
    toks = step.tokens
    if not toks:
        return
    if toks[0] == "expect":
        raise ScenarioError(f"{where}:{step.lineno}: scenarios observe, they do not assert (no expect lines): "
                            "the verdict comes from the symptom")
    if toks[0] not in COMMANDS:
        raise ScenarioError(f"{where}:{step.lineno}: unknown command {toks[0]!r}")


def _files(directory: str | None = None):
    root = pathlib.Path(directory) if directory else resources.files(__package__).joinpath("scenarios")
    return sorted((p for p in root.iterdir() if p.name.endswith(".uffd")), key=lambda p: p.name)


_ORDER = ("copy-dirties", "unprotect-extra-fault", "clean-writable-escapes-softdirty", "wp-clean-flush",
          "softdirty-lost-wp-shmem")


def load_all(directory: str | None = None) -> list[Scenario]:
    """Every packaged scenario (or every ``*.uffd`` of ``directory``), in the issue's order (then by name)."""
    try:
        files = _files(directory)
    except OSError as e:
        raise ScenarioError(f"cannot read scenarios from {directory}: {e.strerror}") from None
    texts = {p.name[:-5]: (p.read_text(encoding="utf-8"), f"scenarios/{p.name}") for p in files}
    own = {n: parse(t, path) for n, (t, path) in texts.items() if not _borrows(t)}
    bodies = {s.name: s.body for s in own.values()}
    out = list(own.values()) + [parse(t, path, bodies) for n, (t, path) in texts.items() if _borrows(t)]
    rank = {n: i for i, n in enumerate(_ORDER)}
    return sorted(out, key=lambda s: (rank.get(s.name, len(rank)), s.name))


def _borrows(text: str) -> bool:
    return any(ln.startswith("#: steps") for ln in text.splitlines())


def load(name: str) -> Scenario:
    for s in load_all():
        if s.name == name:
            return s
    raise KeyError(name)
