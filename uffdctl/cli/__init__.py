"""The ``uffdctl`` command line.

Start-up stays light: the root group loads a subcommand only when it runs, ``--help``
lists them from the index the install wrote (uffdctl.cli.helpindex) without loading
the command table, and nothing here imports cffi or opens a uffd until a command runs
(tests/test_cli.py and tests/test_cli_help.py check).  Session commands are built from the one
command table (uffdctl.session.commands) and sent to the session daemon.

Exit codes: 0 ok, 1 operation or expectation failed, 2 usage error, 4 unsupported here.
"""
from __future__ import annotations

import os
import sys

import click

EPILOG = """\b
Example (a fault resolved by hand):
  uffdctl session start --name demo
  uffdctl mmap --size 64K --name buf
  uffdctl register buf --mode missing
  uffdctl touch buf:3 --write        # blocks in a fault
  uffdctl events
  uffdctl copy buf:3 --fill 0x41     # resolves it
  uffdctl pagemap buf --map
  uffdctl session stop

\b
Exit codes: 0 ok, 1 operation or expectation failed, 2 usage error, 4 unsupported here.
Shell completion: eval "$(_UFFDCTL_COMPLETE=bash_source uffdctl)" (zsh_source, fish_source).
"""

LOCAL = {
    "check": ("uffdctl.cli.local", "check"),
    "run": ("uffdctl.cli.local", "run"),
    "session": ("uffdctl.cli.local", "session"),
    "repro": ("uffdctl.cli.repro", "repro"),
    "stress": ("uffdctl.cli.stress", "stress"),
}


class Globals:
    def __init__(self, json_mode: bool, pretty: bool, session: str | None):
        from .output import Emitter
        self.out = Emitter(json_mode, pretty)
        self.session = session


class LazyGroup(click.Group):
    """Subcommands imported on demand (click's documented LazyGroup pattern): a command's module is
    imported only when that command runs, and ``--help`` lists the commands from the index the
    install wrote (uffdctl.cli.helpindex) without loading the command table."""

    _listing: dict | None = None   # while formatting from the index: name -> a help-only stub command

    def list_commands(self, ctx):
        if self._listing is not None:
            return list(self._listing)
        from ..session.commands import COMMANDS
        return sorted(set(LOCAL) | set(COMMANDS))

    def get_command(self, ctx, name):
        if self._listing is not None:
            return self._listing.get(name)
        if name in LOCAL:
            import importlib
            mod, attr = LOCAL[name]
            return getattr(importlib.import_module(mod), attr)
        from ..session.commands import COMMANDS
        if name in COMMANDS:
            from .build import build
            return build(name, _send)
        return None

    def get_help(self, ctx):
        """The root page straight from the index when click would render it at a width it holds."""
        if ctx.parent is None and ctx.terminal_width is None and ctx.max_content_width is None:
            from click import formatting
            if formatting.FORCED_WIDTH is None:
                from .helpindex import rendered
                text = rendered(ctx.info_name)
                if text is not None:
                    return text
        return super().get_help(ctx)

    def format_commands(self, ctx, formatter):
        from .helpindex import load
        entries = load()
        if entries is None:     # no index, or a source changed since it was written: the slow way
            return super().format_commands(ctx, formatter)
        self._listing = {name: click.Command(name, help=help, short_help=short, hidden=hidden, deprecated=dep)
                         for name, help, short, hidden, dep in entries}
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = None


def _send(cmd, args, local):
    """Callback of every session command: send to the daemon, print the result."""
    from ..session import client
    g = click.get_current_context().find_object(Globals)
    if cmd.name == "events" and local.get("follow"):
        return _follow(g, args, local)
    if cmd.name in ("touch", "wait") and (args.get("wait") or cmd.name == "wait") and not g.out.json \
            and sys.stderr.isatty():
        r = _with_progress(g, cmd.name, args)
    else:
        r = client.call(g.session, cmd.name, args)
    g.out.result(cmd.name, r, local)


def _with_progress(g, name, args):
    """A long touch --wait / wait on a terminal: every UFFDCTL_PROGRESS_S seconds (default 1) one stderr line
    with the time so far and the toucher's fault count and state (the session answers `faults` while the
    access runs); the line is cleared when it ends.  Never in -j, never into a pipe."""
    import threading
    import time
    from ..session import client
    every = float(os.environ.get("UFFDCTL_PROGRESS_S", "1"))
    done, box = threading.Event(), {}

    def call():
        try:
            box["r"] = client.call(g.session, name, args)
        except BaseException as e:      # handed to the main thread
            box["e"] = e
        finally:
            done.set()
    threading.Thread(target=call, daemon=True).start()
    t0, shown = time.monotonic(), False
    while not done.wait(every):
        try:
            rows = client.call(g.session, "faults", timeout=max(every, 1))["threads"]
        except Exception:       # the session is busy or went away: the main call reports that
            continue
        th = next((x for x in rows if x["thread"] == (args.get("thread") or "main")), None) or \
            next((x for x in rows if x["blocked"]), None)
        if th is None:
            continue
        state = f"blocked in a fault at 0x{th['address']:x}" if th["blocked"] and th.get("address") else "running"
        sys.stderr.write(f"\r\x1b[K{name}: {time.monotonic() - t0:.0f} s, thread {th['thread']}: "
                         f"{th['minflt']} minor faults, {state}")
        sys.stderr.flush()
        shown = True
    if shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    if "e" in box:
        raise box["e"]
    return box["r"]


def _follow(g, args, local):
    import time
    from ..session import client
    since, seen, count = args.get("since", 0), 0, local.get("count")
    name = client.resolve(g.session)
    with client.Client(name) as c:
        while True:
            r = c.call("events", {"since": since})
            for e in r["events"]:
                if g.out.json:
                    print(__import__("json").dumps(e), flush=True)
                else:
                    g.out.result("events", {"events": [e]})
                since = e["seq"]
                seen += 1
                if count and seen >= count:
                    return
            time.sleep(0.05)


def _complete_sessions(ctx, param, incomplete):
    from ..session import paths
    return [n for n in paths.names() if n.startswith(incomplete)]


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-j", "--json", "json_mode", is_flag=True,
              help="one JSON document per command (errors too); may also follow the command")
@click.option("-p", "--pretty", is_flag=True, help="pretty JSON (implies -j); may also follow the command")
@click.option("--session", "-s", envvar="UFFDCTL_SESSION", metavar="NAME", shell_complete=_complete_sessions,
              help="session to talk to (env UFFDCTL_SESSION; default: the only one running)")
@click.version_option(package_name="uffdctl")
@click.pass_context
def cli(ctx, json_mode, pretty, session):
    """Drive userfaultfd from the shell and watch what the kernel does to page tables.

    A session (uffdctl session start) owns a uffd, its regions, a fault handler and
    threads; the commands below, named after the kernel's ioctls, act on it.
    """
    ctx.obj = Globals(json_mode, pretty, session)


_OUT_FLAGS = ("-j", "--json", "-p", "--pretty")


def _hoist(argv: list[str]) -> list[str]:
    """-j/-p may come anywhere (``uffdctl check -p``): move them before the subcommand."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in _OUT_FLAGS]
    rest = [a for a in argv[:end] if a not in _OUT_FLAGS]
    return flags + rest + argv[end:]


def _json_mode(argv) -> tuple[bool, bool]:
    pretty = any(a in ("-p", "--pretty") for a in argv)
    return any(a in ("-j", "--json") for a in argv) or pretty, pretty


def main(argv=None) -> int:
    """Entry point: every error is one line (or {"error": ...} with -j) and an exit code."""
    argv = _hoist(list(sys.argv[1:] if argv is None else argv))
    if os.environ.get("_UFFDCTL_COMPLETE"):
        return cli.main(argv, prog_name="uffdctl")
    out = _LazyEmitter(argv)
    try:
        rv = cli.main(argv, prog_name="uffdctl", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None and not out.json:
            click.echo(e.ctx.get_help())           # a bare group: its help, as a usage error
            return 2
        cmd = e.ctx.command_path if e.ctx else "uffdctl"
        out.error({"type": "UsageError", "errno": None, "ioctl": None, "message": e.format_message()}, cmd)
        return 2
    except click.Abort:
        out.error({"type": "Aborted", "errno": None, "ioctl": None, "message": "aborted"})
        return 130
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``uffdctl run FILE | head``): stop quietly, as cat does; point stdout at
        # /dev/null so the interpreter's final flush does not print a second error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except Exception as e:
        from ..errors import exit_code_of, to_wire
        if os.environ.get("UFFDCTL_DEBUG") == "1":
            raise
        out.error(to_wire(e))
        return exit_code_of(e)


class _LazyEmitter:
    """The error printer of main(), imported (uffdctl.cli.output: json, shutil) only when an error is printed."""

    def __init__(self, argv):
        self.json, self._pretty = _json_mode(argv)
        self._e = None

    def error(self, *a, **kw):
        if self._e is None:
            from .output import Emitter
            self._e = Emitter(self.json, self._pretty)
        return self._e.error(*a, **kw)


def entry() -> None:
    sys.exit(main())
