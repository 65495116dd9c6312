"""The command listing of ``uffdctl --help`` without loading the command table.

``uffdctl --help`` lists every command with its short help.  Getting those means importing the
whole command table (uffdctl.session.commands and everything it imports), which costs more than
click itself.  So the install writes the listing down (setup.py's build step calls :func:`write`):
``help-index.marshal`` beside this module holds each command's help texts, and the CRC32 and size
of every uffdctl source file that building the listing imported.  :func:`load` gives the listing
only while every one of those files is unchanged (an editable install that has moved on, a file
missing: None), and the group then builds the listing the slow way, which prints the same text.
tests/test_cli_help.py holds the two ways to the same output.

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
VERSION = 1


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
    """The index: the listing, and the sources it was built from (the uffdctl modules it imported)."""
    entries = entries_of(group, ctx)
    files = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if (name == "uffdctl" or name.startswith("uffdctl.")) and path and path.endswith(".py"):
            rel = os.path.relpath(path, PKG)
            crc = _crc(path)
            if crc is not None and not rel.startswith(".."):
                files[rel] = crc
    return {"version": VERSION, "entries": entries, "files": files}


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


def load(path: str = INDEX) -> list[tuple] | None:
    """The listing, if the index exists and every source it was built from is unchanged; else None."""
    try:
        with open(path, "rb") as f:
            doc = marshal.loads(f.read())
        if doc.get("version") != VERSION:
            return None
        for rel, crc in doc["files"].items():
            if _crc(os.path.join(PKG, rel)) != tuple(crc):
                return None
        return [tuple(e) for e in doc["entries"]]
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
        return None


if __name__ == "__main__":      # python -m uffdctl.cli.helpindex [PATH]: (re)write the index
    d = write(sys.argv[1] if len(sys.argv) > 1 else INDEX)
    print(f"{len(d['entries'])} commands, {len(d['files'])} source files")
