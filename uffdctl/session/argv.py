"""One command line of the table's language, parsed from its :class:`~uffdctl.session.commands.Param` list.

``uffdctl run`` scripts and the reproductions' steps are lines of the same
commands the CLI offers; this parser reads them straight from the command table
(no click), so the interpreter and the reproductions sit below the command line,
not on it.  It accepts what the CLI accepts for the same command (options in any
order, ``--opt VALUE`` and ``--opt=VALUE``, flags, ``--on/--off`` switches,
choices, int/float conversion, ``--`` ending the options) and words its errors
as the CLI does; tests/test_script.py holds the two to the same answers.
"""
from __future__ import annotations

from ..errors import HelpRequested, UsageError
from .commands import COMMANDS, Command, Param


def _convert(p: Param, value: str):
    label = p.metavar if p.positional and p.metavar else (p.decl.split("/")[0] if not p.positional else p.dest.upper())
    if p.kind == "int":
        try:
            return int(value, 10)
        except ValueError:
            raise UsageError(f"Invalid value for '{label}': {value!r} is not a valid integer.") from None
    if p.kind == "float":
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"Invalid value for '{label}': {value!r} is not a valid float.") from None
    if p.kind == "choice" and value not in p.choices:
        raise UsageError(f"Invalid value for '{label}': {value!r} is not one of "
                         f"{', '.join(repr(c) for c in p.choices)}.")
    return value


def _options(cmd: Command) -> dict[str, tuple[Param, object]]:
    """``--name`` -> (param, the value a bare flag/switch sets, or None if it takes a value)."""
    out: dict[str, tuple[Param, object]] = {}
    for p in cmd.params:
        if p.positional:
            continue
        if p.kind == "switch":
            on, _, off = p.decl.partition("/")
            out[on] = (p, True)
            if off:
                out[off] = (p, False)
        elif p.kind == "flag":
            out[p.decl] = (p, True)
        else:
            out[p.decl] = (p, None)
    return out


def parse_argv(name: str, argv: list[str]) -> tuple[Command, dict, dict]:
    """(command, request args without defaults, local rendering options) for one line ``name ARGV...``.

    Raises :class:`~uffdctl.errors.UsageError` (``HelpRequested`` for ``--help``); what is given equals what
    the CLI would send for the same words.
    """
    cmd = COMMANDS.get(name)
    if cmd is None:
        raise UsageError(f"unknown command {name!r}")
    opts = _options(cmd)
    positionals = [p for p in cmd.params if p.positional]
    values: dict = {}
    pos: list[str] = []
    toks = list(argv)
    i, options_done = 0, False
    while i < len(toks):
        t = toks[i]
        i += 1
        if options_done or not t.startswith("-") or t == "-":
            pos.append(t)
            continue
        if t == "--":
            options_done = True
            continue
        if t == "--help":
            raise HelpRequested("--help is not a script command")
        key, eq, inline = t.partition("=")
        if key not in opts:
            raise UsageError(f"No such option: {key}")
        p, bare = opts[key]
        if bare is not None:
            if eq:
                raise UsageError(f"Option '{key}' does not take a value.")
            values[p.dest] = bare
            continue
        if eq:
            raw = inline
        else:
            if i >= len(toks):
                raise UsageError(f"Option '{key}' requires an argument.")
            raw = toks[i]
            i += 1
        values[p.dest] = _convert(p, raw)
    if len(pos) > len(positionals):
        extra = pos[len(positionals):]
        raise UsageError(f"Got unexpected extra argument{'s' if len(extra) > 1 else ''} ({' '.join(extra)})")
    for p, raw in zip(positionals, pos):
        values[p.dest] = _convert(p, raw)
    for p in cmd.params:
        if p.required and p.dest not in values:
            if p.positional:
                raise UsageError(f"Missing argument '{p.metavar or p.dest.upper()}'.")
            raise UsageError(f"Missing option '{p.decl.split('/')[0]}'.")
    args, local = {}, {}
    for p in cmd.params:
        if p.local:
            local[p.dest] = values.get(p.dest, p.default if p.kind != "flag" else False)
        elif p.dest in values and values[p.dest] is not None and not (values[p.dest] is False and p.kind == "flag"):
            args[p.dest] = values[p.dest]
    return cmd, args, local


__all__ = ["parse_argv", "HelpRequested"]
