"""``uffdctl stress MEMTYPE MiB BOUNCES``: the kernel's uffd-stress, served by uffdctl's handler."""
from __future__ import annotations

import click

from . import Globals

MEMTYPES = ("anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private")  # uffdctl.stress.MEMTYPES


@click.command()
@click.argument("memtype", type=click.Choice(MEMTYPES))
@click.argument("mib", type=click.IntRange(min=1))
@click.argument("bounces", type=click.IntRange(min=1))
@click.option("--cpus", type=click.IntRange(min=1, max=256), default=None,
              help="threads of each kind (default: online CPUs, as the selftest)")
def stress(memtype, mib, bounces, cpus):
    """The kernel's userfaultfd stress test (selftests/mm/uffd-stress.c), same arguments and output,
    with uffdctl's native fault handler serving the faults.  Kernel backend only.

    \b
    Per bounce and CPU: a locking thread (a mutex and a counter in every page of the
    registered area), a background UFFDIO_COPY thread (write-protecting half way when
    uffd-wp is available) and a uffdctl handler thread (MISSING -> copy, WP -> unprotect).
    The mode of a bounce is the number of bounces left: bit 1 random pages, 2 racing
    faults, 4 verify every page after the bounce, 8 poll (else blocking read).  A lost
    update stops the run with exit status 1, naming the page.

    \b
    Example:
      uffdctl stress anon 100 32
      uffdctl -j stress shmem 64 16      # per-bounce counts and userfaults/s as JSON
    """
    from ..stress import run
    g = click.get_current_context().find_object(Globals)
    res = run(memtype, mib, bounces, nr_cpus=cpus, progress=None if g.out.json else click.echo)
    if g.out.json:
        g.out.result("stress", res.to_dict())
    else:
        s = res.ns / 1e9
        click.echo(f"{res.userfaults} userfaults in {s:.3f} s of bounces: {res.userfaults / s:.0f} userfaults/s "
                   f"({res.nr_cpus} CPUs, {res.page_size}-byte pages, uffd-wp {'on' if res.wp else 'off'})")
