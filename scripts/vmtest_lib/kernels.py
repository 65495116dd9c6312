"""``scripts/vmtest kernels`` (``make test-kernels``): a fix commit and the RFC's rule on real kernels.

Builds Debian's linux-source-6.1 four times (``vmtest build``: unpatched, + uffdctl's backport of
931298e103c2, + the RFC reconstruction, + the reconstruction and its fix), boots each and Debian's own
6.1.192 package, runs the soft-dirty tests (with the differential against each kernel's emulator twin),
the reproductions and criu_demo.py, and checks what the issue asserts:

- ``backport``: against the unpatched build, exactly the reproductions the patch declares (Vmtest-Flips)
  change, to the declared verdicts; everything else is unchanged;
- ``rfc``: clean-writable-escapes-softdirty/anon REPRODUCED on the reconstruction, NOT REPRODUCED on the
  fixed one, and test_differential_this_kernel (the emulator's rfc-hints / rfc-hints-fixed profiles against
  those kernels) PASS on both;
- ``criu``: in Debian's 6.1 guest uffdctl's consumer LOSES the write and CRIU restores it; with the
  backport the consumer loses nothing.

``--record`` writes the outcome to docs/vmtest-kernels.json and the table into docs/vmtest.md (between
the ``kernels-table`` markers); tests/test_kernels.py holds the documentation to the record.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time

from . import build, initramfs, host, kernelpkg, localkernel, matrix, qemu
from .host import log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
P61 = os.path.join(REPO, "patches", "6.1")
RECORD = os.path.join(REPO, "docs", "vmtest-kernels.json")
DOC = os.path.join(REPO, "docs", "vmtest.md")
BEGIN, END = "<!-- kernels-table: begin (scripts/vmtest kernels --record) -->", "<!-- kernels-table: end -->"

# (role, patches): the columns after Debian's package.
BUILDS = (("built", []),
          ("backport", ["931298e103c2-backport.patch"]),
          ("rfc", ["rfc-hints.patch"]),
          ("rfc-fixed", ["rfc-hints.patch", "rfc-hints-fix.patch"]))
DIFF_TEST = "test_softdirty.py::test_differential_this_kernel"
RFC_ROW = "repro: clean-writable-escapes-softdirty/anon [kernel]"


def base(verdict: str) -> str:
    return verdict.split(" (")[0].split(",")[0]


def repro_kernel_rows(col: dict) -> dict[str, str]:
    return {k: base(v["verdict"]) for k, v in col["verdicts"].items()
            if k.startswith("repro: ") and k.endswith("[kernel]")}


def assertions(cols: dict[str, dict], flips: dict[str, str]) -> list[dict]:
    """What the issue asserts, each {name, ok, detail}, from the columns' to_dict() by role."""
    out = []

    def add(name, ok, detail):
        out.append({"name": name, "ok": bool(ok), "detail": detail})

    b, p = repro_kernel_rows(cols["built"]), repro_kernel_rows(cols["backport"])
    changed = {k[len("repro: "):-len(" [kernel]")]: (b.get(k), p.get(k)) for k in sorted(set(b) | set(p))
               if b.get(k) != p.get(k)}
    want = {k: v for k, v in flips.items()}
    add("backport flips exactly the declared reproductions",
        set(changed) == set(want) and all(changed[k][1] == want[k] for k in want),
        "; ".join(f"{k}: {x} -> {y}" for k, (x, y) in changed.items()) or "nothing changed")
    for role, verdict in (("rfc", "REPRODUCED"), ("rfc-fixed", "NOT REPRODUCED")):
        got = base(cols[role]["verdicts"].get(RFC_ROW, {}).get("verdict", "-"))
        add(f"{role}: clean-writable-escapes-softdirty/anon {verdict}", got == verdict, got)
        d = cols[role]["verdicts"].get(DIFF_TEST, {})
        add(f"{role}: the emulator's {cols[role].get('twin')} profile held to the kernel (zero divergences)",
            d.get("verdict") == "PASS", d.get("verdict", "-") + (f": {d.get('reason')}" if d.get("reason") else ""))
    deb = cols["debian"]["verdicts"]
    for mode in ("wp-onoff", "unregister"):
        c = deb.get(f"criu-demo: consumer/{mode}", {}).get("verdict", "-")
        r = deb.get(f"criu-demo: criu/{mode}", {}).get("verdict", "-")
        add(f"Debian 6.1, {mode}: uffdctl's consumer loses the write, CRIU restores it", c == "LOST" and
            r == "RESTORED 'B'", f"consumer {c}, criu {r}")
        bp = cols["backport"]["verdicts"].get(f"criu-demo: consumer/{mode}", {}).get("verdict", "-")
        add(f"backport, {mode}: the consumer loses nothing", bp == "NOT LOST", bp)
    return out


def render(record: dict) -> str:
    """The table for docs/vmtest.md: reproductions, the differential and criu_demo rows by kernel."""
    roles = [c["role"] for c in record["columns"]]
    cols = {c["role"]: c for c in record["columns"]}
    rows = []
    for c in record["columns"]:
        for k in c["verdicts"]:
            if (k.startswith("repro: ") and k.endswith("[kernel]") or k.startswith("criu-demo: ")
                    or k == DIFF_TEST) and k not in rows:
                rows.append(k)
    head = ["kernel:"] + [cols[r]["label"] for r in roles]
    body = [[k.replace(" [kernel]", "")] + [cols[r]["verdicts"].get(k, {}).get("verdict", "-") for r in roles]
            for k in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in body]
    lines += ["", "| build | patches | build time (nice 19, -j2, ccache) | in this run |", "|---|---|---|---|"]
    for bd in record["builds"]:
        here = bd.get("this_run_seconds")
        here = "-" if here is None else f"from the cache ({here:.0f} s)" if bd.get("cached") else f"built ({here:.0f} s)"
        lines.append(f"| built:{bd['name']} ({bd['release']}) | {', '.join(bd['patches']) or 'none'} | "
                     f"{bd['seconds']:.0f} s ({bd['ccache']}) | {here} |")
    lines += ["", f"`make test-kernels` wall time: {record['seconds']:.0f} s "
              f"(builds {record['build_seconds']:.0f} s, columns {record['columns_seconds']:.0f} s"
              + (f", {record['parallel']} at a time, cap {record['cap']:.0f} s of guest time per column, "
                 f"load average {record['load_start']} at the start" if "parallel" in record else "") + ")"]
    waits = [f"{c['label']} {c['seconds']:.0f} s ({c.get('waited', 0):.0f} s waiting for a CPU)"
             for c in record["columns"]]
    lines.append("Columns, wall: " + "; ".join(waits))
    if record.get("note"):
        lines.append(f"({record['note']})")
    lines.append("")
    lines += [f"- {'OK' if a['ok'] else 'FAILED'}: {a['name']} ({a['detail']})" for a in record["assertions"]]
    return "\n".join(lines)


def write_doc(record: dict, path: str = DOC) -> None:
    with open(path) as f:
        text = f.read()
    block = f"{BEGIN}\n{render(record)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


CAP = 1800.0   # charged seconds per column: the guest's own time (qemu.Clock), so a loaded machine does not eat it


def cli_cap(args) -> float:
    return args.timeout if args.timeout is not None else CAP


def run(args, run_columns, make_plan) -> int:
    t0 = time.monotonic()
    load_start = round(os.getloadavg()[0], 1)
    builds, this_run = [], {}
    for role, names in BUILDS:
        t = time.monotonic()
        builds.append((role, build.build("6.1", [os.path.join(P61, n) for n in names], args.cache,
                                         install=not args.no_install)))
        this_run[role] = round(time.monotonic() - t, 1)
    build_seconds = time.monotonic() - t0
    qemu_bin, busybox = host.ensure_tools(args.qemu, install=not args.no_install)
    if not args.no_install and os.geteuid() == 0 and not shutil.which("criu"):
        host.apt_install(["criu", "iproute2"])
    accel, _why = host.choose_accel(args.accel)
    with kernelpkg.locked(args.cache):
        kernels = [("debian", kernelpkg.get_kernel(args.cache, series="6.1", refresh=not args.no_install))]
        kernels += [(role, localkernel.from_build(b, args.cache)) for role, b in builds]
        vms = [qemu.VM(qemu_bin, k, initramfs.build(k, busybox), accel=accel, smp=args.smp, mem=args.mem,
                       timeout=cli_cap(args)) for _r, k in kernels]
    args.tests = args.tests or [f"tests/{DIFF_TEST}"]
    plan = make_plan(args)
    role_of = {id(k): r for r, k in kernels}
    columns, col_seconds = run_columns(args, plan, vms, host=False,
                                       criu=lambda k: "full" if role_of.get(id(k)) == "debian" else "consumer")
    builds = [(r, build.Build.load(b.dir) or b) for r, b in builds]   # as recorded on disk (the build's own time)
    cols = {}
    for (role, _k), c in zip(kernels, columns):
        cols[role] = {**c.to_dict(), "role": role}
    flips = dict(builds[1][1].flips)
    record = {"seconds": round(time.monotonic() - t0, 1), "build_seconds": round(build_seconds, 1),
              "columns_seconds": round(col_seconds, 1),
              "builds": [{"role": r, "name": b.name, "release": b.release, "seconds": b.seconds, "ccache": b.ccache,
                          "patches": [p["name"] for p in b.patches], "this_run_seconds": this_run[r],
                          "cached": this_run[r] < b.seconds} for r, b in builds],
              "parallel": args.parallel, "cap": cli_cap(args), "load_start": load_start,
              "columns": list(cols.values())}
    record["assertions"] = assertions(cols, flips)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(record, f, indent=1)
    print("\n== kernels ==\n" + matrix.render(columns) + "\n\n" + render(record))
    if args.record:
        with open(RECORD, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        write_doc(record)
        log(f"recorded in {os.path.relpath(RECORD, REPO)} and {os.path.relpath(DOC, REPO)}")
    ok = all(a["ok"] for a in record["assertions"])
    print(f"\nvmtest kernels: {'OK' if ok else 'FAILED'} in {record['seconds']:.0f} s; artifacts in {args.out}")
    return 0 if ok else 1
