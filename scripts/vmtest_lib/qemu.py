"""One QEMU run: the command line, streaming the guest's output, the time limit, and cleanup.

QEMU runs in its own process group (``start_new_session``) with
``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with vmtest even on SIGKILL; on a
timeout, Ctrl-C, SIGTERM/SIGHUP or any error :func:`run` kills the whole group
(SIGTERM, then SIGKILL) before returning or re-raising.  Nothing is left behind.

The time limit (``--timeout``) is a cap on the guest's own time, not on the wall clock: the seconds a
thread of the group spent runnable but waiting for a host CPU (its run-queue delay,
``/proc/PID/task/TID/schedstat``) are not charged.  Under TCG on a 2-core machine shared with other
work the wall time of a column stretches with the load; its charged time does not, so one cap fits a
quiet and a loaded machine.  A wall-clock backstop (:data:`BACKSTOP` times the cap) still ends any run.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import Unavailable
from .host import log
from .kernelpkg import Kernel

PR_SET_PDEATHSIG = 1
STATUS_TIMEOUT = 124        # as timeout(1)
STATUS_NO_REPORT = 125      # the guest never reported an exit status

BACKSTOP = 4.0              # the wall-clock limit, as a multiple of the (charged-time) cap

# The scratch disk: a sparse raw image in the run directory, ext4 made on the host (mkfs.ext4 takes well
# under a second; in the guest, under TCG, far longer), attached as virtio-blk and mounted by /init at
# SCRATCH_MOUNT.  The overlay (tmpfs upper, the host's / over 9p below) cannot hold a swapfile --
# swapon(2) is EINVAL there, as on tmpfs -- so the guest's `swap on` makes its swapfiles here
# (UFFDCTL_SWAP_DIR, guest.py).  /var/tmp and /tmp stay on the overlay: regular files there are what the
# differential's file regions were validated against in the guests (on ext4 the 6.1 guest's pageout of a
# dirty shared file page keeps it where the emulator's 6.1 profile drops it: not modelled yet).
SCRATCH_MOUNT = "/mnt/scratch"
SCRATCH_SIZE = 2 << 30      # sparse: the host stores only what the guest writes

_live: set[int] = set()     # process groups started and not yet reaped


@dataclass
class VM:
    qemu: str
    kernel: Kernel
    initramfs: str
    accel: str = "tcg"
    smp: int = 1
    mem: str = "2G"
    timeout: float = 900.0
    extra_append: list[str] = field(default_factory=list)
    scratch: int | None = None     # scratch disk bytes; None: one when the kernel can mount it (ext4, virtio-blk)

    @property
    def scratch_size(self) -> int:
        if self.scratch is not None:
            return self.scratch
        return SCRATCH_SIZE if self.kernel.scratch_disk else 0

    @property
    def no_scratch_reason(self) -> str:
        """Why this guest has no scratch disk ("" when it has one): the guest's UFFDCTL_VM_NO_SCRATCH."""
        if self.scratch_size:
            return ""
        if self.scratch == 0:
            return "vmtest was asked for no scratch disk"
        return f"kernel {self.kernel.release} cannot mount vmtest's ext4 scratch disk: {self.kernel.scratch_reason}"

    def append(self, share: str, scratch: bool = False) -> str:
        args = ["console=ttyS0", "loglevel=4", "panic=-1", "mitigations=off", "8250.nr_uarts=1",
                "random.trust_cpu=on", f"vmtest.share={share}"]
        if scratch:
            args.append(f"vmtest.scratch={SCRATCH_MOUNT}")
        return " ".join(args + self.extra_append)

    def argv(self, run_dir: str, share: str, scratch: str | None = None) -> list[str]:
        """The QEMU command line.  ``run_dir`` holds the host-side files, ``share`` is shared read-write,
        ``scratch`` is the scratch disk's image (see :func:`make_scratch`)."""
        accel = "kvm" if self.accel == "kvm" else "tcg,thread=multi"
        cpu = "host" if self.accel == "kvm" else "max"
        disk = ["-drive", f"file={scratch},if=none,id=scratch,format=raw,cache=unsafe,discard=unmap",
                "-device", "virtio-blk-pci,drive=scratch"] if scratch else []
        return [
            self.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "pc", "-accel", accel, "-cpu", cpu, "-smp", str(self.smp), "-m", self.mem,
            "-kernel", self.kernel.image_path, "-initrd", self.initramfs,
            "-append", self.append(share, bool(scratch)),
            "-serial", f"file:{os.path.join(run_dir, 'console.log')}",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"file,id=out,path={os.path.join(run_dir, 'out.log')}",
            "-device", "virtserialport,bus=vser0.0,chardev=out,name=out",
            "-chardev", f"file,id=status,path={os.path.join(run_dir, 'status')}",
            "-device", "virtserialport,bus=vser0.0,chardev=status,name=status",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=share,path={share},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=share,mount_tag=vmtest_share",
        ] + disk


def find_mkfs() -> str | None:
    return shutil.which("mkfs.ext4") or next((p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4")
                                               if os.path.exists(p)), None)


def make_scratch(run_dir: str, size: int) -> str:
    """A sparse ext4 image of ``size`` bytes in ``run_dir``.  A guest that should have the disk never boots
    without it (its swap cases would turn UNSUPPORTED unseen): Unavailable, with why and the cure."""
    mkfs = find_mkfs()
    if mkfs is None:
        raise Unavailable("no mkfs.ext4 for the guest's scratch disk (apt-get install e2fsprogs)")
    path = os.path.join(run_dir, "scratch.img")
    with open(path, "wb") as f:
        f.truncate(size)
    # lazy_journal_init: the journal is not zeroed (a fresh image reads zeros anyway); the inode tables are
    # left to the guest's mount option noinit_itable (no ext4lazyinit thread eating a TCG vCPU)
    p = subprocess.run([mkfs, "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-L", "vmtest-scratch",
                        path], capture_output=True, text=True)
    if p.returncode:
        os.unlink(path)
        raise Unavailable(f"mkfs.ext4 {path} failed ({(p.stderr.strip().splitlines() or ['?'])[-1]}): "
                          "the guest would have no scratch disk")
    return path


@dataclass
class Result:
    status: int                # the guest command's exit status, or STATUS_TIMEOUT / STATUS_NO_REPORT
    seconds: float
    timed_out: bool = False
    qemu_status: int | None = None
    console_tail: str = ""
    qemu_stderr: str = ""
    clock: "Clock | None" = None

    def cap_message(self, cap: float) -> str:
        """Why the run was stopped, in one line: the cap, the wall time, the time spent waiting for a CPU."""
        c = self.clock
        if c is None:
            return f"timeout after {cap:.0f} s"
        why = "the wall-clock backstop" if c.backstop_hit else "its cap"
        return (f"stopped at {why}: {c.charged:.0f} s charged of a {cap:.0f} s cap (wall {c.wall:.0f} s, "
                f"{c.waited:.0f} s of it waiting for a host CPU; load average {c.load_start:.1f} at the start, "
                f"{os.getloadavg()[0]:.1f} now); raise --timeout")

    @property
    def reported(self) -> bool:
        return not self.timed_out and self.status != STATUS_NO_REPORT


def _pdeathsig():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d))
    return out


def kill_group(pgid: int, grace: float = 3.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds.

    ``proc`` (the group leader, our child) is reaped on the way, so a zombie leader does not count as alive.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if proc is not None:
                proc.poll()
            if not group_members(pgid):
                _live.discard(pgid)
                return
            time.sleep(0.05)
    _live.discard(pgid)


def kill_all() -> None:
    """Kill every QEMU this process started and has not reaped (atexit, signal handlers)."""
    for pgid in list(_live):
        kill_group(pgid, grace=1.0)


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def spawn(argv: list[str], log_path: str, cwd: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own process group, stdout and stderr to ``log_path``; it dies with us."""
    with open(log_path, "wb") as log_f:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f, cwd=cwd,
                             start_new_session=True, preexec_fn=_pdeathsig)
    _live.add(p.pid)
    return p


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) the live processes of group ``pgid`` have used."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in group_members(pgid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / tck


def group_wait(pgid: int) -> float:
    """Seconds the most-delayed live thread of group ``pgid`` has spent runnable without a CPU (schedstat's
    second field; under TCG that is the vCPU thread, the one the guest's progress depends on)."""
    worst = 0
    for pid in group_members(pgid):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    worst = max(worst, int(f.read().split()[1]))
            except (OSError, ValueError, IndexError):
                continue
    return worst / 1e9


@dataclass
class Clock:
    """A run's time: wall, waited (run-queue delay, never decreasing) and charged = wall - waited."""
    t0: float = field(default_factory=time.monotonic)
    wall: float = 0.0
    waited: float = 0.0
    cpu: float = 0.0                # CPU time used: charged - cpu is time the guest sat idle (sleeping, timers)
    backstop_hit: bool = False
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def charged(self) -> float:
        return self.wall - self.waited

    def tick(self, pgid: int) -> None:
        self.wall = time.monotonic() - self.t0
        self.waited = min(self.wall, max(self.waited, group_wait(pgid)))
        self.cpu = max(self.cpu, group_cpu(pgid))

    def over(self, cap: float) -> bool:
        self.backstop_hit = self.wall > cap * BACKSTOP
        return self.charged > cap or self.backstop_hit


def supervise(proc: subprocess.Popen, out_path: str, timeout: float, stream=None,
              clock: Clock | None = None) -> tuple[int | None, bool]:
    """Stream ``out_path`` to ``stream`` while ``proc`` runs; kill its group when its charged time passes
    ``timeout`` (see the module's docstring; ``clock`` receives the accounting) or on any exception.

    Returns (QEMU exit status or None if killed, timed_out).
    """
    stream = stream if stream is not None else sys.stdout.buffer
    clock = clock if clock is not None else Clock()
    next_tick = 0.0
    timed_out = False
    rc = None
    try:
        with open(out_path, "ab+") as f:
            f.seek(0)

            def pump():
                data = f.read()
                if data:
                    stream.write(data)
                    stream.flush()

            while True:
                try:
                    rc = proc.wait(0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                pump()
                now = time.monotonic()
                if now >= next_tick:          # /proc walk once a second; the wall time every 0.1 s
                    clock.tick(proc.pid)
                    next_tick = now + 1.0
                else:
                    clock.wall = now - clock.t0
                if clock.over(timeout):
                    timed_out = True
                    break
            pump()
    finally:
        if proc.poll() is None or group_members(proc.pid):
            kill_group(proc.pid, proc=proc)
            proc.wait()
        _live.discard(proc.pid)
    return rc, timed_out


def run(vm: VM, run_dir: str, share: str, stream=None) -> Result:
    """Boot, run ``share/guest.sh`` in the guest, stream its output; the guest's exit status."""
    out_path = os.path.join(run_dir, "out.log")
    status_path = os.path.join(run_dir, "status")
    for p in (out_path, status_path):
        open(p, "wb").close()
    scratch = make_scratch(run_dir, vm.scratch_size) if vm.scratch_size else None
    argv = vm.argv(run_dir, share, scratch)
    with open(os.path.join(run_dir, "qemu.cmd"), "w") as f:
        f.write(shlex.join(argv) + "\n")
    t0 = time.monotonic()
    proc = spawn(argv, os.path.join(run_dir, "qemu.stderr"))
    clock = Clock()
    rc, timed_out = supervise(proc, out_path, vm.timeout, stream, clock)
    secs = time.monotonic() - t0
    res = Result(STATUS_NO_REPORT, secs, timed_out, rc, tail(os.path.join(run_dir, "console.log")),
                 tail(os.path.join(run_dir, "qemu.stderr")), clock=clock)
    if timed_out:
        res.status = STATUS_TIMEOUT
        log(f"QEMU killed: {res.cap_message(vm.timeout)}")
        return res
    try:
        with open(status_path) as f:
            res.status = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        log(f"the guest reported no exit status (QEMU exit {rc}); console tail:\n{res.console_tail}\n"
            f"{res.qemu_stderr}")
    return res


def run_here(argv: list[str], run_dir: str, timeout: float, stream=None) -> Result:
    """Run ``argv`` on the host under the same supervision as a VM (the matrix's host column)."""
    out_path = os.path.join(run_dir, "out.log")
    t0 = time.monotonic()
    proc = spawn(argv, out_path)
    clock = Clock()
    rc, timed_out = supervise(proc, out_path, timeout, stream, clock)
    res = Result(STATUS_TIMEOUT if timed_out else rc, time.monotonic() - t0, timed_out, rc, clock=clock)
    if timed_out:
        log(f"{argv[0]} killed: {res.cap_message(timeout)}")
    return res
