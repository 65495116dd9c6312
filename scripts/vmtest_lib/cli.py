"""scripts/vmtest command line.

    scripts/vmtest [OPTIONS] [matrix]           the kernel matrix (default): host + each kernel, one table
    scripts/vmtest [OPTIONS] run [-e K=V] -- CMD  run CMD in the guest (in the checkout); its exit status
    scripts/vmtest [OPTIONS] fetch              download/unpack the kernel(s), build the initramfs
    scripts/vmtest [OPTIONS] doctor             can it run here? why not? which config options are wrong?
    scripts/vmtest config                       print uffdctl's kernel config fragment
    scripts/vmtest build --source 6.1|6.12 [--patch FILE ...]   build Debian's linux-source-X (cached)
    scripts/vmtest kernels [--record]           make test-kernels: the 6.1 builds, the flips, CRIU, one table

Exit status: the command's (run), 0/1 (matrix: all verdicts good or not), 4 when vmtest cannot run here
(with the reason), 124 on timeout, 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from . import Unavailable, build, host, initramfs, kernelpkg, localkernel, matrix, qemu
from .guest import Job
from .host import log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL_ENV = "UFFDCTL_VMTEST_KERNEL"


class Terminated(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, _frame):
    raise Terminated(signum)


class Prefixed:
    """A byte stream that prefixes every line (columns of the matrix stream into one terminal).

    Whole lines only, under one lock: columns running side by side (``--parallel 2``) never mix within a line.
    """

    lock = threading.Lock()

    def __init__(self, out, prefix: str, tee=None):
        self.out, self.prefix, self.tee = out, prefix.encode(), tee
        self.pending = b""

    def write(self, data: bytes) -> None:
        if self.tee:
            self.tee.write(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        if lines:
            with self.lock:
                self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))

    def flush(self) -> None:
        with self.lock:
            self.out.flush()
        if self.tee:
            self.tee.flush()

    def finish(self) -> None:
        """The column ended: its last, unterminated line too."""
        if self.pending:
            with self.lock:
                self.out.write(self.prefix + self.pending + b"\n")
            self.pending = b""
        self.flush()


# -- options ----------------------------------------------------------------------------------

def add_common(p: argparse.ArgumentParser, sub: bool = False) -> None:
    """The options every command takes, before or after the command name."""
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)  # noqa: E731  (sub: keep the main's value)
    k = p.add_argument_group("kernel (repeat to build a matrix; default: $%s, else the newest "
                             "linux-image-*-amd64 of the apt sources)" % KERNEL_ENV)
    k.add_argument("--kernel", action="append", default=d([]), metavar="SERIES",
                   help="newest generic image of a series: 6.1, 6.12, or 'newest'; built:NAME for a kernel "
                        "`vmtest build` made (comma lists allowed)")
    k.add_argument("--kernel-image", action="append", default=d([]), metavar="PATH",
                   help="a kernel you built: vmlinux (with CONFIG_PVH) or bzImage")
    k.add_argument("--modules", default=d(None), metavar="DIR",
                   help="with --kernel-image: its modules (lib/modules/RELEASE, or a modules_install root)")
    k.add_argument("--kernel-dir", action="append", default=d([]), metavar="BUILD",
                   help="a kernel build tree (make O=BUILD): vmlinux or bzImage, .config, kernel.release, modules")
    k.add_argument("--kernel-pkg", action="append", default=d([]), metavar="NAME",
                   help="an exact package, e.g. linux-image-6.1.0-56-amd64")
    k.add_argument("--kernel-deb", action="append", default=d([]), metavar="FILE", help="a downloaded .deb")
    v = p.add_argument_group("virtual machine")
    v.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d("auto"),
                   help="auto: KVM only where a stock guest really runs under it, else TCG (default auto)")
    v.add_argument("--smp", type=int, default=d(1),
                   help="guest CPUs (default 1: under TCG on 2 host cores one vCPU boots and runs the matrix "
                        "faster than two)")
    v.add_argument("--mem", default=d("2G"))
    v.add_argument("--timeout", type=float, default=d(None),
                   help="cap per boot (and for the host column), in seconds of the guest's own time: time QEMU "
                        "waited for a host CPU is not charged, so a loaded machine stretches the wall time, not "
                        "the cap; a wall-clock backstop of %g x the cap ends any run (default 600; 3600 for a matrix "
                        "whose selection has tests/test_selftests.py, as the default one does; kernels: 1800)"
                   % qemu.BACKSTOP)
    v.add_argument("--parallel", type=int, default=d(None), metavar="N",
                   help="columns booted at once (default 1, kernels: 2; at most 2: TCG wants a host core per "
                        "guest)")
    v.add_argument("--qemu", default=d(None), help="QEMU binary (default: qemu-system-x86_64 on PATH)")
    g = p.add_argument_group("host")
    g.add_argument("--venv", default=d(os.path.join(REPO, ".venv")),
                   help="the project's venv, seen in the guest at the same path (default: the checkout's .venv)")
    g.add_argument("--cache", default=d(kernelpkg.default_cache()),
                   help=f"kernel cache (default {kernelpkg.default_cache()}; env UFFDCTL_VMTEST_CACHE)")
    g.add_argument("--no-install", action="store_true", default=d(False),
                   help="never run apt-get install (QEMU, busybox-static) or apt-get update")
    g.add_argument("--keep", action="store_true", default=d(False), help="keep the run directories (printed)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/vmtest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See docs/vmtest.md.")
    add_common(p)
    sub = p.add_subparsers(dest="cmd", metavar="{matrix,run,fetch,doctor,config,build,kernels}")
    m = sub.add_parser("matrix", help="the kernel matrix (default)")
    m.add_argument("--tests", nargs="+", metavar="PATH",
                   help="pytest selection (default: %s)" % " ".join(matrix.DEFAULT_TESTS))
    m.add_argument("--no-host", action="store_true", help="no host column")
    m.add_argument("--out", default=os.path.join(REPO, "build", "vmtest"),
                   help="artifacts: per-column logs and results, matrix.txt, matrix.json (default %(default)s)")
    m.add_argument("-q", "--quiet", action="store_true", help="do not stream the columns' output")
    m.add_argument("--diff-examples", type=int, default=300, metavar="N",
                   help="random sequences of the differential test in each column (default %(default)s)")
    m.add_argument("-k", dest="select", default="", metavar="EXPR",
                   help="pytest -k EXPR within the selection, e.g. -k 'soft-dirty and kernel'")
    m.add_argument("--no-repro", action="store_true", help="no `uffdctl repro all` step (a targeted run)")
    m.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="environment of every column (repeat); the host's %s are passed on when set"
                        % ", ".join(matrix.FORWARD_ENV[:1]) + " and the other test knobs (docs/vmtest.md)")
    r = sub.add_parser("run", help="run a command in the guest")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("--cwd", default=REPO, help="working directory in the guest (default: the checkout)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    f = sub.add_parser("fetch", help="download and unpack the kernel(s), build the initramfs")
    d = sub.add_parser("doctor", help="say whether vmtest can run here, and why not")
    sub.add_parser("config", help="print uffdctl's kernel config fragment (patches/uffdctl.config)")
    b = sub.add_parser("build", help="build Debian's linux-source-X with the fragment and patches (cached)")
    b.add_argument("--source", required=True, metavar="SERIES", help="6.1 or 6.12 (Debian's linux-source-X)")
    b.add_argument("--patch", action="append", default=[], metavar="FILE", help="apply FILE (repeat; in order)")
    b.add_argument("--jobs", "-j", type=int, default=None, help="make -j (default: every core)")
    b.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    b.add_argument("--base", choices=build.BASES, default="tiny",
                   help="tiny: tinyconfig + kvm_guest.config (default); defconfig: x86_64_defconfig "
                        "(about three times the objects)")
    kk = sub.add_parser("kernels", help="make test-kernels: build the 6.1 variants, boot them, assert the flips")
    kk.add_argument("--out", default=os.path.join(REPO, "build", "vmtest", "kernels"))
    kk.add_argument("--tests", nargs="+", metavar="PATH",
                    help="pytest selection (default: tests/%s, the differential against each kernel's twin; "
                         "the rest of tests/test_softdirty.py runs in make test-vm's columns)" % kernels_diff_test())
    kk.add_argument("--record", action="store_true",
                    help="write docs/vmtest-kernels.json and the table in docs/vmtest.md")
    kk.add_argument("-q", "--quiet", action="store_true")
    kk.add_argument("--diff-examples", type=int, default=60, metavar="N",
                    help="differential sequences per column, seeds 1..N (default %(default)s)")
    for sp in (m, r, f, d, b, kk):
        add_common(sp, sub=True)
    return p


def kernels_diff_test() -> str:
    from .kernels import DIFF_TEST
    return DIFF_TEST


def kernel_specs(args) -> list[tuple[str, str]]:
    specs = [("deb", d) for d in args.kernel_deb] + [("pkg", n) for n in args.kernel_pkg]
    specs += [("image", p) for p in args.kernel_image] + [("dir", p) for p in args.kernel_dir]
    for s in args.kernel:
        for x in (x.strip() for x in s.split(",")):
            if x.startswith("built:"):
                if not x[6:]:
                    raise ValueError("--kernel built:NAME: no NAME (scripts/vmtest doctor lists the built kernels)")
                specs.append(("built", x[6:]))
            elif x:
                if x != "newest" and not re.fullmatch(r"\d+\.\d+", x):
                    raise ValueError(f"kernel series {x!r}: expected MAJOR.MINOR (e.g. 6.1) or 'newest'")
                specs.append(("series", x))
    if args.modules and not args.kernel_image:
        raise ValueError("--modules goes with --kernel-image (a --kernel-dir's modules come from its modules.order)")
    if not specs:
        specs = [("series", x.strip()) for x in os.environ.get(KERNEL_ENV, "newest").split(",") if x.strip()]
    return specs


LOCAL_KINDS = ("image", "dir", "built")


def get_kernel(args, kind: str, val: str) -> kernelpkg.Kernel:
    if kind == "image":
        return localkernel.from_image(val, args.cache, args.modules)
    if kind == "dir":
        return localkernel.from_build_dir(val, args.cache)
    if kind == "built":
        return localkernel.from_build(build.find_build(args.cache, val), args.cache)
    what = {"deb": {"deb": val}, "pkg": {"pkg": val}, "series": {"series": val}}[kind]
    return kernelpkg.get_kernel(args.cache, refresh=not args.no_install, **what)


def get_kernels(args) -> list[kernelpkg.Kernel]:
    return [get_kernel(args, kind, val) for kind, val in kernel_specs(args)]


def check_scratch(k: kernelpkg.Kernel) -> None:
    """A Debian kernel package (its config has virtio_blk and ext4) boots only with the scratch disk: without
    it its guest's swap cases would turn UNSUPPORTED unseen.  Any other kernel without it (vmtest build's tiny
    configs; --kernel-image/--kernel-dir, whose cache entry keeps only the modules that reach the host) boots
    without it, and the guest's UFFDCTL_VM_NO_SCRATCH says why."""
    if not k.title and k.scratch_expected and not k.scratch_disk:
        raise Unavailable(f"{k.package}: the guest would have no scratch disk (swap cases UNSUPPORTED): "
                          f"{k.scratch_reason} (scripts/vmtest fetch unpacks a package's modules again; "
                          "--kernel-image takes --modules)")
    if k.scratch_disk and qemu.find_mkfs() is None:
        raise Unavailable(f"no mkfs.ext4 for the scratch disk of {k.package}'s guest (apt-get install e2fsprogs)")


def prepare(args) -> list[qemu.VM]:
    """Tools, accelerator, kernels, initramfs: one VM description per kernel."""
    # What the user typed is checked before anything is installed or fetched: a bad option or a local image
    # that cannot boot is refused the same way on a host with QEMU and on one without.
    specs = kernel_specs(args)
    with kernelpkg.locked(args.cache):
        local = {i: get_kernel(args, kind, val) for i, (kind, val) in enumerate(specs) if kind in LOCAL_KINDS}
    qemu_bin, busybox = host.ensure_tools(args.qemu, install=not args.no_install)
    accel, why = host.choose_accel(args.accel)
    vms = []
    with kernelpkg.locked(args.cache):
        kernels = [local[i] if i in local else get_kernel(args, kind, val) for i, (kind, val) in enumerate(specs)]
        built = [(k, initramfs.build(k, busybox)) for k in kernels]
    for k, initrd in built:
        check_scratch(k)
        vms.append(qemu.VM(qemu_bin, k, initrd, accel=accel, smp=args.smp, mem=args.mem, timeout=cap(args)))
        log(f"kernel {k.package} {k.version} ({k.release}; {'vmlinux/PVH' if k.pvh else 'bzImage'}; "
            f"soft-dirty {'y' if k.soft_dirty else 'n'}); accel {accel} ({why})")
    return vms


# -- commands ---------------------------------------------------------------------------------

def cmd_run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ValueError("run: no command (scripts/vmtest run -- CMD ...)")
    env = parse_env(args.env, "run")
    body = shlex.join(command)
    venv_bin = os.path.join(os.path.abspath(args.venv), "bin")
    if os.path.isdir(venv_bin):
        body = f'export PATH={shlex.quote(venv_bin)}:"$PATH"\n{body}'
    status = 0
    for vm in prepare(args):
        with Job(vm, keep=args.keep) as job:
            res = job.run(body, args.cwd, env)
            if args.keep:
                log(f"run directory kept: {job.run_dir}")
        log(f"{vm.kernel.label}: exit {res.status} after {res.seconds:.1f} s")
        status = status or res.status
    return status


def parse_env(pairs: list[str], cmd: str) -> dict[str, str]:
    env = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"{cmd}: --env {kv!r}: expected K=V")
        env[k] = v
    return env


def make_plan(args) -> matrix.Plan:
    venv = os.path.abspath(args.venv)
    if not os.access(os.path.join(venv, "bin", "pytest"), os.X_OK):
        raise Unavailable(f"no pytest in the venv {venv}: run make install VENV={args.venv} first "
                          "(or pass --venv)")
    tests = args.tests or list(matrix.DEFAULT_TESTS)
    bin_ = os.path.join(venv, "bin")
    probe = subprocess.run([os.path.join(bin_, "python"), "-c",
                            "from uffdctl.emu import PROFILES; print(' '.join(PROFILES))"],
                           capture_output=True, text=True, cwd="/")
    profiles = tuple(probe.stdout.split()) if probe.returncode == 0 else ()
    repro = not getattr(args, "no_repro", False) and os.access(os.path.join(bin_, "uffdctl"), os.X_OK) and \
        subprocess.run([os.path.join(bin_, "uffdctl"), "repro", "--help"], capture_output=True, cwd="/").returncode == 0
    env = dict(matrix.forwarded_env(), **parse_env(getattr(args, "env", []), args.cmd or "matrix"))
    if env:
        log("every column's environment: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    return matrix.Plan(venv, tests, repro=repro, profiles=profiles, diff_examples=args.diff_examples, env=env,
                       select=getattr(args, "select", ""))


# The default selection (with the ported selftests) took 592 s of the 6.12 guest's own time and 526 s of the
# 6.1 guest's on a quiet machine (`make test-vm ARGS='--kernel 6.12,6.1 --parallel 2'`, 2026-12-02), but
# 600 s charged stopped the 6.1 column at 40 % beside two busy loops and `make test` (under load a charged
# second of TCG does less): a cap of about six times the quiet need.
SELFTEST_CAP = 3600.0


def cap(args, default: float = 600.0) -> float:
    """--timeout, else the default: SELFTEST_CAP when the matrix's selection has tests/test_selftests.py."""
    if args.timeout is not None:
        return args.timeout
    tests = getattr(args, "tests", None) or (matrix.DEFAULT_TESTS if args.cmd == "matrix" else ())
    if any(os.path.basename(t.split("::")[0]) == "test_selftests.py" for t in tests):
        return SELFTEST_CAP
    return default


def last_step(out_log: str) -> str:
    """The guest's last ``== vmtest step NAME`` line: where a stopped column was."""
    steps = [line.split()[-1] for line in qemu.tail(out_log, 400).splitlines() if line.startswith("== vmtest step ")]
    return steps[-1] if steps else "boot"


def run_column(args, plan: matrix.Plan, vm: qemu.VM | None, criu) -> matrix.Column:
    """One column (``vm`` None: the host): its artifacts under args.out, its verdicts collected."""
    col = matrix.Column("host" if vm is None else vm.kernel.label, "host" if vm is None else "vm")
    k = vm.kernel if vm else None
    if k is not None and k.title:
        col.fixed_label = True
        col.flips, col.twin = dict(k.flips), k.emu_profile
    with Job(vm, timeout=cap(args), keep=args.keep) as job:
        body, env = plan.script(job.share, soft_dirty=k.soft_dirty if k else False, guest=vm is not None,
                                profile=k.emu_profile if k else "", switches=k.emu_switches if k else None,
                                criu=criu(k) if k else "")
        log(f"column {col.label}: {'booting ' + vm.kernel.package if vm else 'running on the host'}")
        with open(os.path.join(job.run_dir, "column.log"), "wb") as tee:
            stream = Prefixed(sys.stdout.buffer, f"[{col.label}] ", tee) if not args.quiet else tee
            res = job.run(body, REPO, env, stream=stream)
            if isinstance(stream, Prefixed):
                stream.finish()
        col.seconds = res.seconds
        col.share = job.share
        if res.timed_out:
            col.problem = f"in step {last_step(os.path.join(job.run_dir, 'out.log'))}: {res.cap_message(cap(args))}"
            log(f"column {col.label}: {col.problem}")
        elif not res.reported:
            col.problem = "the guest reported no exit status (see console.log)"
        if res.clock is not None:
            col.waited, col.cpu = round(res.clock.waited, 1), round(res.clock.cpu, 1)
        matrix.collect(col)
        dest = os.path.join(args.out, col.label.replace(" ", "-").replace(":", "_"))
        shutil.rmtree(dest, ignore_errors=True)
        # not the scratch disk: copytree would write its 2 GiB of holes out in full
        shutil.copytree(job.run_dir, dest, ignore=shutil.ignore_patterns("guest.sh", "scratch.img"))
    log(f"column {col.label}: {col.seconds:.0f} s wall ({col.waited:.0f} s waiting for a host CPU; "
        f"{col.cpu:.0f} s CPU)")
    return col


def check_parallel(args) -> None:
    if getattr(args, "parallel", 1) is None:
        args.parallel = 2 if args.cmd == "kernels" else 1
    if not 1 <= getattr(args, "parallel", 1) <= 2:
        raise ValueError(f"--parallel {args.parallel}: expected 1 or 2 (one host core per TCG guest, and "
                         "the machine is shared)")


def run_columns(args, plan: matrix.Plan, vms: list[qemu.VM], host: bool, criu=lambda k: "") -> tuple[list, float]:
    """The columns (the host first), ``args.parallel`` at a time; returns them in order and the wall time."""
    check_parallel(args)
    os.makedirs(args.out, exist_ok=True)
    t_all = time.monotonic()
    targets: list[qemu.VM | None] = ([None] if host else []) + vms
    if args.parallel == 1:
        return [run_column(args, plan, vm, criu) for vm in targets], time.monotonic() - t_all
    with ThreadPoolExecutor(args.parallel, thread_name_prefix="column") as pool:
        futs = [pool.submit(run_column, args, plan, vm, criu) for vm in targets]
        try:
            while True:     # wake up often: the main thread takes the signals (Ctrl-C, SIGTERM)
                done, pending = wait(futs, timeout=0.5, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() for f in done):
                    break
        except BaseException:
            qemu.kill_all()
            raise
        finally:
            for f in futs:
                f.cancel()
        if any(f.exception() for f in done):
            qemu.kill_all()
        columns = [f.result() for f in futs]
    return columns, time.monotonic() - t_all


def cmd_matrix(args) -> int:
    plan = make_plan(args)
    vms = prepare(args)
    columns, total = run_columns(args, plan, vms, host=not args.no_host)
    table = matrix.render(columns)
    with open(os.path.join(args.out, "matrix.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "matrix.json"), "w") as f:
        json.dump({**matrix.to_json(columns), "seconds": round(total, 1)}, f, indent=1)
    print("\n== kernel matrix ==\n" + table)
    ok = all(c.ok for c in columns)
    print(f"\nvmtest: {'OK' if ok else 'FAILED'} in {total:.1f} s; artifacts in {args.out}")
    return 0 if ok else 1


def cmd_kernels(args) -> int:
    from . import kernels
    return kernels.run(args, run_columns, make_plan)


def cmd_fetch(args) -> int:
    for vm in prepare(args):
        k = vm.kernel
        print(f"{k.package} {k.version} release={k.release} image={k.image_path} initramfs={vm.initramfs}")
    return 0


def cmd_doctor(args) -> int:
    ok = True
    missing = host.missing_tools(args.qemu)
    for t in (host.QEMU, "busybox"):
        state = "missing" if t in missing else "ok"
        print(f"{t}: {state}" + (f" (apt-get install {host.PACKAGES[t]})" if t in missing else ""))
    accel, why = host.choose_accel("auto")
    print(f"accelerator: {accel} ({why})")
    for kind, val in kernel_specs(args):
        try:
            if kind == "series":
                pkg, ver = kernelpkg.resolve_package(val, refresh=False)
                print(f"kernel {val}: {pkg} {ver}")
                cached = kernelpkg.cached_kernels(args.cache, pkg=pkg)
                config = read_full_config(cached[-1]) if cached else None
                ok = doctor_config(f"{pkg} {ver}", config, modules_ok=True) and ok
            elif kind in ("image", "dir", "built"):
                k = get_kernels(argparse.Namespace(**{**vars(args), "kernel": [f"built:{val}"] if kind == "built"
                                                      else [], "kernel_image": [val] if kind == "image" else [],
                                                      "kernel_dir": [val] if kind == "dir" else [],
                                                      "kernel_deb": [], "kernel_pkg": []}))[0]
                print(f"kernel {kind} {val}: {k.release} ({'vmlinux/PVH' if k.pvh else 'bzImage'}; "
                      f"{len(k.modules)} module(s) for the initramfs)")
                ok = doctor_config(k.label, read_full_config(k), modules_ok=bool(k.modules)) and ok
            else:
                print(f"kernel {kind} {val}")
        except Unavailable as e:
            cached = kernelpkg.cached_kernels(args.cache, val) if kind == "series" else []
            print(f"kernel {val}: {e}" + (f" (cached: {cached[-1].package})" if cached else ""))
            ok = ok and bool(cached)
    for k in kernelpkg.cached_kernels(args.cache):
        print(f"cached: {k.package} {k.version} in {k.dir}")
    for b in build.all_builds(args.cache):
        print(f"built: built:{b.name} {b.release} ({b.seconds:.0f} s to build) in {b.dir}")
    if missing and (args.no_install or os.geteuid() != 0):
        ok = False
    return 0 if ok else Unavailable.exit_code


def read_full_config(k: kernelpkg.Kernel) -> dict[str, str] | None:
    path = os.path.join(k.dir, "config")
    return kernelpkg.read_config(path) if os.path.exists(path) else None


def doctor_config(label: str, config: dict[str, str] | None, modules_ok: bool) -> bool:
    """Print every option of uffdctl's fragment that ``config`` lacks or sets wrong; True when none."""
    if config is None:
        print(f"  config of {label}: unknown (no .config/IKCONFIG; scripts/vmtest fetch caches a package's)")
        return True
    problems = build.check_config(config, modules_ok=modules_ok)
    for p in problems:
        print(f"  config {label}: {p}")
    if not problems:
        print(f"  config of {label}: every option uffdctl's tests need is set (scripts/vmtest config)")
    return not problems


def cmd_config(args) -> int:
    sys.stdout.write(build.fragment_text())
    return 0


def cmd_build(args) -> int:
    b = build.build(args.source, args.patch, args.cache, install=not args.no_install, jobs=args.jobs,
                    force=args.force, base=args.base)
    k = localkernel.from_build(b, args.cache)
    patches = ", ".join(p["name"] for p in b.patches) or "no patches"
    print(f"built:{b.name} {b.release} ({b.source} {b.version}; {patches}) in {b.seconds:.0f} s "
          f"(-j{b.jobs}, ccache {b.ccache or '?'}); boot it with --kernel built:{b.name}; tree {b.obj}; "
          f"image {k.image_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    # Ctrl-C must always stop QEMU, even when started from a shell that runs background jobs with
    # SIGINT ignored (Python then leaves it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit.register(qemu.kill_all)
    cmd = {"run": cmd_run, "fetch": cmd_fetch, "doctor": cmd_doctor, "config": cmd_config,
           "build": cmd_build, "kernels": cmd_kernels}.get(args.cmd, cmd_matrix)
    if args.cmd is None:
        args = parser().parse_args((argv if argv is not None else sys.argv[1:]) + ["matrix"])
    try:
        check_parallel(args)
        return cmd(args)
    except Unavailable as e:
        log(f"cannot run here: {e}")
        return Unavailable.exit_code
    except ValueError as e:
        log(f"error: {e}")
        return 2
    except BrokenPipeError:  # stdout closed (| head): stop quietly, QEMU already killed by supervise()
        qemu.kill_all()
        return 141
    except KeyboardInterrupt:
        qemu.kill_all()
        log("interrupted; no QEMU left running")
        return 130
    except Terminated as e:
        qemu.kill_all()
        log(f"terminated by signal {e.signum}; no QEMU left running")
        return 128 + e.signum
