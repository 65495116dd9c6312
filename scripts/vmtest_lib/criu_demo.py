"""Who loses the shmem write that escapes soft-dirty: a soft-dirty consumer that trusts pagemap, not CRIU.

Run in a guest (``scripts/vmtest run -- python3 scripts/vmtest_lib/criu_demo.py``), as root.  Both halves
track the same process (criu/target.c: one page of memfd shmem, MAP_SHARED, filled with 'A'):

``consumer``  uffdctl's own minimal incremental dumper: copy the page, ``clear_refs 4`` (as CRIU's pre-dump
              does), let the target register uffd-wp, toggle it (or unregister) and write 'B', then copy
              again only what pagemap calls soft-dirty (bit 55).  On 6.1 the write leaves bit 55 clear: the
              incremental image keeps 'A' while the process has 'B' -- the write is LOST.
``criu``      ``criu pre-dump --track-mem``, the same uffd-wp cycle and write, ``criu dump --prev-images-dir
              --track-mem``, ``criu restore``: the restored process has 'B' -- CRIU is right anyway, because it
              re-reads memfd shared memory in full at every dump (criu/memfd.c dump_one_memfd_shmem; its
              pagemap-based shmem tracking is off by default, criu/shmem.c: "Disable pagemap based shmem
              changes tracking by default because it has bugs").

Prints one JSON object (``--json``) or lines; exit 0 when every half ran (whatever it found), 1 otherwise.
Standard library only: the guest runs it with the host's python3.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_C = os.path.join(HERE, "criu", "target.c")
PM_SOFT_DIRTY = 1 << 55
PM_PRESENT = 1 << 63
PAGE = 4096
WAIT = 30.0


class DemoError(Exception):
    pass


def pagemap(pid: int, addr: int) -> int:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        return struct.unpack("<Q", f.read(8))[0]


def read_page(pid: int, addr: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(PAGE)


def clear_refs(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("4")


class Target:
    """The tracked process: started detached (own session, stdio /dev/null), driven by signals."""

    def __init__(self, exe: str, mode: str, workdir: str):
        self.status = os.path.join(workdir, f"status-{mode}")
        self.proc = subprocess.Popen([exe, mode, self.status], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
        self.pid = self.proc.pid
        self.addr = int(self.wait("ready").split()[1], 16)

    def wait(self, prefix: str, pid_alive: int | None = None) -> str:
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            try:
                with open(self.status) as f:
                    s = f.read()
                if s.startswith(prefix):
                    return s
                if s.startswith("error"):
                    raise DemoError(f"target: {s}")
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise DemoError(f"target did not report {prefix!r} within {WAIT:.0f} s")

    def signal(self, sig: int, pid: int | None = None) -> None:
        os.unlink(self.status)
        os.kill(pid or self.pid, sig)

    def kill(self, pid: int | None = None) -> None:
        for p in {self.pid, pid} - {None}:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def consumer(exe: str, mode: str, workdir: str) -> dict:
    t = Target(exe, mode, workdir)
    try:
        if not pagemap(t.pid, t.addr) & PM_SOFT_DIRTY:   # the page was just written: soft-dirty if the kernel has it
            return {"mode": mode, "verdict": "UNSUPPORTED",
                    "reason": "a freshly written page reads soft-dirty 0: CONFIG_MEM_SOFT_DIRTY off"}
        image = read_page(t.pid, t.addr)                 # the full (pre-)dump
        clear_refs(t.pid)                                # soft-dirty tracking starts
        sd_before = bool(pagemap(t.pid, t.addr) & PM_SOFT_DIRTY)
        t.signal(signal.SIGUSR1)
        t.wait("written")
        pm = pagemap(t.pid, t.addr)
        sd = bool(pm & PM_SOFT_DIRTY)
        if sd:                                           # the incremental dump: only soft-dirty pages
            image = read_page(t.pid, t.addr)
        live = read_page(t.pid, t.addr)
        lost = image != live
        return {"mode": mode, "soft_dirty_after_clear_refs": sd_before, "soft_dirty_after_write": sd,
                "pagemap": f"0x{pm:016x}", "image": chr(image[0]), "live": chr(live[0]),
                "verdict": "LOST" if lost else "NOT LOST"}
    finally:
        t.kill()


def criu(exe: str, mode: str, workdir: str) -> dict:
    crit = shutil.which("criu")
    if not crit:
        raise DemoError("criu is not installed (apt-get install criu)")
    pre, dump = os.path.join(workdir, f"pre-{mode}"), os.path.join(workdir, f"dump-{mode}")
    os.makedirs(pre)
    os.makedirs(dump)
    subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True)
    t = Target(exe, mode, workdir)
    restored = None
    try:
        def run(*args, d):
            r = subprocess.run([crit, *args, "-D", d, "-o", f"{args[0]}.log", "-v4"], capture_output=True,
                               text=True, timeout=120)
            if r.returncode != 0:
                try:
                    with open(os.path.join(d, f"{args[0]}.log")) as f:
                        tail = " / ".join(f.read().splitlines()[-4:])
                except OSError:
                    tail = r.stderr.strip()
                raise DemoError(f"criu {args[0]} exited {r.returncode}: {tail}")

        run("pre-dump", "-t", str(t.pid), "--track-mem", d=pre)
        t.signal(signal.SIGUSR1)
        t.wait("written")
        sd = bool(pagemap(t.pid, t.addr) & PM_SOFT_DIRTY)
        run("dump", "-t", str(t.pid), "--track-mem", "--prev-images-dir", os.path.relpath(pre, dump), d=dump)
        t.proc.wait(10)                                  # criu dump kills the task
        pidfile = os.path.join(workdir, f"restored-{mode}.pid")
        run("restore", "-d", "--pidfile", pidfile, d=dump)
        with open(pidfile) as f:
            restored = int(f.read().split()[0])
        t.signal(signal.SIGUSR2, restored)
        content = t.wait("content").split()[1]
        shmem = sorted(f for f in os.listdir(dump) if f.startswith(("pagemap-shmem", "pages-")))
        return {"mode": mode, "soft_dirty_after_write": sd, "restored": content,
                "verdict": "RESTORED 'B'" if content == "B" else f"RESTORED {content!r} (wrong)",
                "dump_images": shmem}
    finally:
        t.kill(restored)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-criu", action="store_true", help="only uffdctl's consumer (kernels without CRIU's needs)")
    ap.add_argument("--modes", default="wp-onoff,unregister")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("criu_demo: needs root (clear_refs of another process, criu)", file=sys.stderr)
        return 4
    work = tempfile.mkdtemp(prefix="uffdctl-criu-")
    exe = os.path.join(work, "target")
    r = subprocess.run(["gcc", "-O2", "-o", exe, TARGET_C], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"criu_demo: cannot compile {TARGET_C}: {r.stderr.strip()}", file=sys.stderr)
        return 4
    out, ok = {"release": os.uname().release, "consumer": {}, "criu": {}}, True
    for mode in args.modes.split(","):
        for half, fn in (("consumer", consumer), ("criu", criu)):
            if half == "criu" and args.no_criu:
                continue
            try:
                out[half][mode] = fn(exe, mode, work)
            except (DemoError, OSError, subprocess.SubprocessError) as e:
                out[half][mode] = {"mode": mode, "verdict": "ERROR", "error": str(e)}
                ok = False
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for half in ("consumer", "criu"):
            for mode, res in out[half].items():
                print(f"{half:8} {mode:10} {res['verdict']:14} " +
                      " ".join(f"{k}={v}" for k, v in res.items() if k not in ("mode", "verdict")))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
