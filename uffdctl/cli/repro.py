"""``uffdctl repro``: the 2022 thread's reproductions (uffdctl.repro)."""
from __future__ import annotations

import click


def _split(values) -> tuple:
    return tuple(p for v in values for p in v.split(",") if p)


@click.command()
@click.argument("name", metavar="NAME|all|list")
@click.option("--backend", type=click.Choice(["kernel", "emu", "both"]), default="both", show_default=True,
              help="the real kernel, the emulator, or both side by side (the emulator twin of the kernel "
                   "runs the same steps; differing steps are marked)")
@click.option("--profile", "profiles", multiple=True, metavar="P",
              help="emulator profile(s), repeatable or comma separated "
                   "(default: 5.19,6.1,6.18,rfc-hints,rfc-hints-fixed; soft-dirty on)")
@click.option("--case", "cases", multiple=True, metavar="ID", help="only these cases of the scenario(s)")
@click.option("-v", "--verbose", is_flag=True, help="print the step trace of every profile, not only the kernel's")
@click.option("--scenario-dir", metavar="DIR", type=click.Path(file_okay=False, exists=True),
              help="run the *.uffd scenarios of DIR instead of the packaged ones (e.g. an edited copy)")
def repro(name, backend, profiles, cases, verbose, scenario_dir):
    """Reproduce the 2022 linux-mm thread's bugs: per-page traces and verdicts.

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
    Example:
      uffdctl repro list
      uffdctl repro unprotect-extra-fault --backend both
      uffdctl repro all --backend emu --profile 5.19,6.18
      uffdctl repro all -j            # the whole trace, stamped with release and soft-dirty
    """
    from .. import repro as R
    from ..repro import render
    from . import Globals
    g = click.get_current_context().find_object(Globals)
    out = g.out if g is not None else None
    try:
        scenarios = R.load_all(scenario_dir)
    except R.ScenarioError as e:
        raise click.UsageError(str(e)) from None
    names = [s.name for s in scenarios]
    if name == "list":
        rows = [{"name": s.name, "title": s.title, "cases": [c.id for c in s.cases], "spec": s.spec,
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
    from ..registry import emulator_profiles
    PROFILES = emulator_profiles()
    profs = _split(profiles) or R.DEFAULT_PROFILES
    badp = [p for p in profs if p not in PROFILES]
    if badp:
        raise click.UsageError(f"unknown profile(s) {', '.join(badp)} (valid: {', '.join(PROFILES)})")
    if backend == "kernel" and profiles:
        raise click.UsageError("--profile is for the emulator: use --backend emu or both")
    rep = R.run(chosen, backend, profs, _split(cases))
    if out is not None and out.json:
        out.result("repro", rep.to_dict())
    else:
        click.echo(render.report(rep, chosen, verbose))
    if rep.exit:
        raise click.exceptions.Exit(rep.exit)
