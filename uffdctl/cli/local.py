"""Commands that run locally: ``check``, ``run FILE`` and the ``session`` group."""
from __future__ import annotations

import click

from . import Globals


def _g() -> Globals:
    return click.get_current_context().find_object(Globals)


BACKEND = click.option("--backend", type=click.Choice(["auto", "kernel", "emu"]), default="auto",
                       envvar="UFFDCTL_BACKEND", show_default=True, help="kernel, emulator, or kernel if it can serve")
PROFILE = click.option("--profile", default=None,
                       help="emulator profile (6.18, 5.19, rfc-hints, ..., or a release: 6.1.176 is 6.1 less the "
                            "stable backports it lacks); with --backend auto: the emulator")
SOFT_DIRTY = click.option("--soft-dirty", type=click.Choice(["on", "off"]), default=None,
                          help="emulator: model CONFIG_MEM_SOFT_DIRTY on or off (default on); with --backend "
                               "auto: the emulator")


USER_MODE_ONLY = click.option("--user-mode-only", is_flag=True,
                              help="kernel: open the uffd with UFFD_USER_MODE_ONLY (what an unprivileged user "
                                   "gets under vm.unprivileged_userfaultfd=0; used then without asking)")


def _sd(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def _notice(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="also print the register matrix")
def check(verbose):
    """What userfaultfd can do here: open methods, features, memory types x modes,
    soft-dirty, PAGEMAP_SCAN, huge pages, sysctls.  Verdict lines in the manner of
    `criu check`.

    \b
    Exit codes: 0 everything works; 1 something is broken (a probe failed in a way
    the kernel should not); 4 something is unsupported here (e.g. soft-dirty with
    CONFIG_MEM_SOFT_DIRTY off, or hugetlb with 0 huge pages reserved) - on this
    host that is the expected answer.

    \b
    Example:
      uffdctl check        # verdicts
      uffdctl check -p     # everything, as pretty JSON
    """
    from ..check import render, run_checks
    g = _g()
    res = run_checks()
    if g.out.json:
        g.out.result("check", res)
    else:
        click.echo(render(res, verbose))
    if res["exit"]:
        raise click.exceptions.Exit(res["exit"])


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--backend", type=click.Choice(["auto", "kernel", "emu", "both"]), default="auto",
              envvar="UFFDCTL_BACKEND", show_default=True,
              help="kernel, emulator, kernel if it can serve, or both side by side (as uffdctl repro FILE)")
@PROFILE
@SOFT_DIRTY
@USER_MODE_ONLY
@click.option("-q", "--quiet", is_flag=True, help="print only failures")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
              help="set a script variable (${NAME}); repeatable")
def run(file, backend, profile, soft_dirty, user_mode_only, quiet, variables):
    """Run a script of session commands, one per line, in this process (no daemon).

    `#` starts a comment.  `expect` lines assert state and print an expected/actual
    diff; the script stops at the first failure, naming the line.

    \b
      expect pagemap buf:0 present=1 uffd_wp=0 soft_dirty=1
      expect faults main minor=+1      (+N: change since the last expect faults)
      expect errno EEXIST              (the previous command failed with EEXIST)
      expect result copy=4096 blocked=0
      expect event event=pagefault region=buf page=3

    \b
    Example:
      printf 'mmap --size 16K --name buf\\nexpect result len=16384\\n' | uffdctl run -
      uffdctl run my.uffd          (docs/cli.md has a full example script)
    """
    from ..script import ScriptError, parse_vars, run_file
    from ..session.state import UsageError
    g = _g()
    if backend == "both":
        from .repro import side_by_side
        return side_by_side(g.out, file, "both", tuple(p for p in (profile or "").split(",") if p), variables, None)
    try:
        variables = parse_vars(variables)
    except UsageError as e:
        raise click.UsageError(str(e)) from None
    try:
        from .output import render
        res = run_file(file, backend=backend, profile=profile, echo=None if (g.out.json or quiet) else click.echo,
                       render=render, soft_dirty=_sd(soft_dirty), notice=_notice, variables=variables,
                       user_mode_only=user_mode_only)
    except ScriptError as e:
        g.out.error(e.to_dict(), "uffdctl run")
        raise click.exceptions.Exit(e.exit_code) from None
    if g.out.json:
        g.out.result("run", res)
    elif not res["ok"]:
        g.out.error(res["error"], "uffdctl run")
    if not res["ok"]:
        raise click.exceptions.Exit(res["exit"])


@click.group()
def session():
    """Start, list, inspect and stop session daemons.

    \b
    Example:
      uffdctl session start --name demo --backend kernel
      uffdctl session list
    """


@session.command("start")
@click.option("--name", default=None, help="session name (default s0, s1, ...)")
@BACKEND
@PROFILE
@SOFT_DIRTY
@USER_MODE_ONLY
def session_start(name, backend, profile, soft_dirty, user_mode_only):
    """Start a detached process that owns a uffd, regions and a fault handler, serving a Unix socket.

    \b
    Example:
      uffdctl session start --name demo
    """
    from ..session import client
    r = client.start(name, backend, profile, _sd(soft_dirty), user_mode_only)
    notice = r.get("selection", {}).get("notice")
    if notice:
        _notice(notice)
    _g().out.result("session-start", r)


@session.command("list")
def session_list():
    """Sessions with pid, uptime, RSS, backend and regions; dead ones are reported gone and cleaned.

    \b
    Example:
      uffdctl session list -j
    """
    from ..session import client
    _g().out.result("session-list", {"sessions": client.listing()})


@session.command("status")
@click.argument("name", required=False)
def session_status(name):
    """What a session owns (backend, uffd features, regions, threads, blocked touches).

    \b
    Example:
      uffdctl session status demo
    """
    from ..session import client
    _g().out.result("status", client.call(name or _g().session, "status"))


@session.command("stop")
@click.argument("name", required=False)
def session_stop(name):
    """Stop a session: blocked faults are woken, the socket and pid file removed.

    \b
    Example:
      uffdctl session stop demo
    """
    from ..session import client
    _g().out.result("session-stop", client.stop(name or _g().session))
