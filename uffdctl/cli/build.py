"""Click commands built from the session command table (uffdctl.session.commands.COMMANDS).

The same click objects parse the CLI's argv (then the request goes to the
daemon) and each line of a ``uffdctl run`` script (then it runs in-process), so a
command's options are declared once.
"""
from __future__ import annotations

import click

from ..session.commands import COMMANDS, Command, Param

_TYPES = {"str": str, "int": int, "float": float}


def click_param(p: Param) -> click.Parameter:
    if p.positional:
        return click.Argument([p.dest], required=p.required, type=_TYPES.get(p.kind, str),
                              metavar=p.metavar)
    if p.kind == "flag":
        return click.Option([p.decl], is_flag=True, default=False, help=p.help)
    if p.kind == "switch":
        return click.Option([p.decl], default=None, help=p.help)
    if p.kind == "choice":
        return click.Option([p.decl], type=click.Choice(p.choices), default=p.default, help=p.help,
                            show_default=p.default is not None)
    return click.Option([p.decl], type=_TYPES[p.kind], default=p.default, required=p.required, help=p.help,
                        show_default=p.default not in (None, 0, ""), metavar=p.metavar)


def doc(cmd: Command) -> str:
    text = cmd.help
    if cmd.kernel_name:
        text += f" (kernel: {cmd.kernel_name})"
    return text + f"\n\n\b\nExample:\n  {cmd.example}"


def split_args(cmd: Command, params: dict) -> tuple[dict, dict]:
    """(request args without defaults, local rendering options)."""
    local = {p.dest: params.get(p.dest) for p in cmd.params if p.local}
    args = {}
    for p in cmd.params:
        if p.local:
            continue
        v = params.get(p.dest)
        if v is None or (v is False and p.kind == "flag"):
            continue
        args[p.dest] = v
    return args, local


def build(name: str, callback) -> click.Command:
    """A click command for table entry ``name``; ``callback(cmd, args, local)`` runs it."""
    cmd = COMMANDS[name]

    def cb(**params):
        args, local = split_args(cmd, params)
        return callback(cmd, args, local)

    return click.Command(name, callback=cb, params=[click_param(p) for p in cmd.params], help=doc(cmd),
                         short_help=cmd.help.split(". ")[0].rstrip("."), no_args_is_help=False)


def parse_line(name: str, argv: list[str]) -> tuple[Command, dict, dict]:
    """Parse one script line's arguments with the command's click definition (raises click.UsageError)."""
    c = build(name, lambda *a: None)
    ctx = c.make_context(name, list(argv), resilient_parsing=False)
    cmd = COMMANDS[name]
    args, local = split_args(cmd, ctx.params)
    return cmd, args, local
