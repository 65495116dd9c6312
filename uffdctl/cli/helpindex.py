"""``uffdctl --help`` without loading the command table.

``uffdctl --help`` lists every command with its short help.  Getting those means importing the
whole command table (uffdctl.session.commands and everything it imports), which costs more than
click itself; and click's text wrapping of the page costs as much again.  So the install writes
them down (setup.py's build step calls :func:`write`): ``help-index.marshal`` beside this module
holds each command's help texts, the root page as click renders it at every width it can have
(50..78 columns), and the CRC32 and size of every source file that building them imported
(uffdctl's and click's), with the Python version.  :func:`load` / :func:`rendered` answer only
while every one of those files is unchanged (an editable install that has moved on, click
upgraded, a file missing: None), and the group then does it the slow way, which prints the same
text.  ``UFFDCTL_NO_HELP_INDEX=1`` forces the slow way.  tests/test_cli_help.py holds the two ways
to the same output.

marshal and zlib are built into the interpreter: reading the index imports nothing.
"""
from __future__ import annotations

import marshal
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
INDEX = os.path.join(HERE, "help-index.marshal")
VERSION = 2
WIDTHS = range(50, 79)   # click's page width: max(min(columns, 80) - 2, 50)


def _crc(path: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return zlib.crc32(data), len(data)


def entries_of(group, ctx) -> list[tuple]:
    """(name, help, short_help, hidden, deprecated) of every command ``group`` lists, the slow way."""
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None:
            out.append((name, cmd.help, cmd.short_help, bool(cmd.hidden), cmd.deprecated))
    return out


def build(group, ctx) -> dict:
    """The index: the listing, the root page per width, and the sources they were built from (the
    uffdctl and click modules imported meanwhile)."""
    import click
    entries = entries_of(group, ctx)
    pages = {}
    for w in WIDTHS:
        with click.Context(group, info_name=ctx.info_name, **{**group.context_settings, "terminal_width": w}) as c:
            pages[w] = group.get_help(c)
    files = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        top = name.partition(".")[0]
        if top in ("uffdctl", "click") and path and path.endswith(".py"):
            rel = os.path.relpath(path, PKG)
            crc = _crc(path)
            if crc is not None:
                files[path if rel.startswith("..") else rel] = crc
    return {"version": VERSION, "python": sys.version, "entries": entries, "info_name": ctx.info_name,
            "pages": pages, "files": files}


def write(path: str = INDEX) -> dict:
    """Build the index with a fresh root group and write it (atomically) to ``path``."""
    import click
    from . import cli
    with click.Context(cli, info_name="uffdctl") as ctx:
        doc = build(cli, ctx)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(marshal.dumps(doc))
    os.replace(tmp, path)
    return doc


_CACHE: dict = {}


def _doc(path: str) -> dict | None:
    """The index at ``path`` if it is current (every source unchanged), else None; read once."""
    if path in _CACHE:
        return _CACHE[path]
    doc = None
    try:
        if os.environ.get("UFFDCTL_NO_HELP_INDEX") != "1":
            with open(path, "rb") as f:
                d = marshal.loads(f.read())
            if d.get("version") == VERSION and d.get("python") == sys.version and \
                    all(_crc(os.path.join(PKG, rel)) == tuple(crc) for rel, crc in d["files"].items()):
                doc = d
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
        doc = None
    _CACHE[path] = doc
    return doc


def load(path: str = INDEX) -> list[tuple] | None:
    """The listing, if the index exists and every source it was built from is unchanged; else None."""
    doc = _doc(path)
    return None if doc is None else [tuple(e) for e in doc["entries"]]


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (as click's HelpFormatter asks it)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 80
        columns = columns or 80
    return columns


def rendered(info_name: str, path: str = INDEX) -> str | None:
    """The root page as click would render it for a context with no width of its own, else None."""
    doc = _doc(path)
    if doc is None or doc.get("info_name") != info_name:
        return None
    return doc["pages"].get(max(min(_columns(), 80) - 2, 50))


if __name__ == "__main__":      # python -m uffdctl.cli.helpindex [PATH]: (re)write the index
    d = write(sys.argv[1] if len(sys.argv) > 1 else INDEX)
    print(f"{len(d['entries'])} commands, {len(d['files'])} source files")
