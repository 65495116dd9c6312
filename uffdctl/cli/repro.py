"""``uffdctl repro``: the 2022 thread's reproductions (uffdctl.repro)."""
from __future__ import annotations

import os

import click


def _split(values) -> tuple:
    return tuple(p for v in values for p in v.split(",") if p)


@click.command()
@click.argument("name", metavar="NAME|all|list|FILE")
@click.option("--backend", type=click.Choice(["kernel", "emu", "both"]), default="both", show_default=True,
              help="the real kernel, the emulator, or both side by side (the emulator twin of the kernel "
                   "runs the same steps; differing steps are marked)")
@click.option("--profile", "profiles", multiple=True, metavar="P",
              help="emulator profile(s), repeatable or comma separated "
                   "(default: 5.19,6.1,6.12,6.18,rfc-hints,rfc-hints-fixed; soft-dirty on)")
@click.option("--soft-dirty", "soft_dirty", type=click.Choice(["on", "off"]), default=None,
              help="the CONFIG_MEM_SOFT_DIRTY of the --profile runs (default on; the kernel's twin always "
                   "has the kernel's)")
@click.option("--case", "cases", multiple=True, metavar="ID", help="only these cases of the scenario(s)")
@click.option("-v", "--verbose", is_flag=True, help="print the step trace of every profile, not only the kernel's")
@click.option("--scenario-dir", metavar="DIR", type=click.Path(file_okay=False, exists=True),
              help="run the *.uffd scenarios of DIR instead of the packaged ones (e.g. an edited copy)")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="FILE: set a script variable")
@click.option("--watch", metavar="RANGE", help="FILE: show this page's pagemap symbol after every line")
def repro(name, backend, profiles, soft_dirty, cases, verbose, scenario_dir, variables, watch):
    """Reproduce the 2022 linux-mm thread's bugs: per-page traces and verdicts.
    Or run your own script (FILE, the `uffdctl run` language) side by side.

    Each scenario's steps (uffdctl/repro/scenarios/NAME.uffd, the `uffdctl run`
    language) run on the kernel and on emulator profiles; after every step the
    watched page's state is printed (pagemap bits, PTE W/D where the emulator knows
    them, Private_Dirty, PAGE_IS_WRITTEN, faults, TLB flushes).  The verdict,
    REPRODUCED / NOT REPRODUCED / UNSUPPORTED (with the reason), comes from what was
    observed; the expectation for that kernel or profile and its source are printed
    beside it.  The output ends with a verdict table (scenario × kernel/profile).

    \b
    Exit codes: 0 every verdict matches its expectation; 1 one contradicts it (or a
    run broke); 2 usage error.

    \b
    FILE: the script runs on the kernel, on its emulator twin and on the --profile
    profiles; per line, what each answered (ok, an errno, blocked, FAIL, - not
    reached; with --watch the page's pagemap symbol), lines that differ marked *,
    and a verdict per target: PASS, FAIL, UNSUPPORTED (exit 4 reasons such as
    "not modelled: mremap (emulator)"), ERROR.  Exit 0 when nothing failed and the
    kernel and its twin agree.  `uffdctl run FILE --backend both` is the same.

    \b
    Example:
      uffdctl repro list
      uffdctl repro unprotect-extra-fault --backend both
      uffdctl repro all --backend emu --profile 5.19,6.18
      uffdctl repro all --backend emu --profile 6.12 --soft-dirty off
      uffdctl repro all -j            # the whole trace, stamped with release and soft-dirty
      uffdctl repro my-bug.uffd --watch buf:3 --profile 6.1
    """
    from .. import repro as R
    from ..repro import render
    from . import Globals
    g = click.get_current_context().find_object(Globals)
    out = g.out if g is not None else None
    if os.path.isfile(name) or name.endswith(".uffd") or name == "-":
        return side_by_side(out, name, backend, _split(profiles), variables, watch, soft_dirty != "off")
    if variables or watch:
        raise click.UsageError("--var and --watch are for a script FILE")
    try:
        scenarios = R.load_all(scenario_dir)
    except R.ScenarioError as e:
        raise click.UsageError(str(e)) from None
    names = [s.name for s in scenarios]
    if name == "list":
        rows = [{"name": s.name, "title": s.title, "cases": [c.id for c in s.cases], "cites": s.spec,
                 "profiles": sorted({p for c in s.cases for p in c.profiles})} for s in scenarios]
        if out is not None and out.json:
            out.result("repro-list", {"scenarios": rows})
        else:
            for r in rows:
                click.echo(f"{r['name']:<34} {r['title']}\n{'':<34} cases: {', '.join(r['cases'])}")
        return
    if name != "all" and name not in names:
        raise click.UsageError(f"unknown scenario {name!r} (valid: all, list, {', '.join(names)})")
    chosen = scenarios if name == "all" else [s for s in scenarios if s.name == name]
    known_cases = {c.id for s in chosen for c in s.cases}
    bad = [c for c in _split(cases) if c not in known_cases]
    if bad:
        raise click.UsageError(f"unknown case(s) {', '.join(bad)} (valid: {', '.join(sorted(known_cases))})")
    from ..registry import emulator_profiles_help, is_emulator_profile
    profs = _split(profiles) or R.DEFAULT_PROFILES
    badp = [p for p in profs if not is_emulator_profile(p)]
    if badp:
        raise click.UsageError(f"unknown profile(s) {', '.join(badp)} (valid: {emulator_profiles_help()})")
    if backend == "kernel" and profiles:
        raise click.UsageError("--profile is for the emulator: use --backend emu or both")
    if backend == "kernel" and soft_dirty:
        raise click.UsageError("--soft-dirty is for the emulator: use --backend emu or both")
    rep = R.run(chosen, backend, profs, _split(cases), soft_dirty=soft_dirty != "off")
    if out is not None and out.json:
        out.result("repro", rep.to_dict())
    else:
        click.echo(render.report(rep, chosen, verbose))
    if rep.exit:
        raise click.exceptions.Exit(rep.exit)


def side_by_side(out, path, backend, profiles, variables, watch, soft_dirty=True):
    """``uffdctl repro FILE`` / ``uffdctl run FILE --backend both``."""
    from ..errors import ScriptError, UsageError
    from ..registry import emulator_profiles_help, is_emulator_profile
    from ..repro import sidebyside
    from ..script import parse_vars, read_script
    bad = [p for p in profiles if not is_emulator_profile(p)]
    if bad:
        raise click.UsageError(f"unknown profile(s) {', '.join(bad)} (valid: {emulator_profiles_help()})")
    if backend == "kernel" and profiles:
        raise click.UsageError("--profile is for the emulator: use --backend emu or both")
    try:
        variables = parse_vars(variables)
        text = read_script(path)
        rep = sidebyside.run(path, text, backend, profiles, variables, watch, soft_dirty)
    except (UsageError, ScriptError) as e:
        raise click.UsageError(str(e)) from None
    if out is not None and out.json:
        out.result("repro", rep.to_dict())
    else:
        click.echo(sidebyside.render(rep, watch))
    if rep.exit:
        raise click.exceptions.Exit(rep.exit)
