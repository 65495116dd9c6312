"""Run shell commands in a booted guest: the share directory and its ``guest.sh``."""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field

from . import qemu

# The guest's environment starts empty (busybox init); this is what a login would give.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PYTHONUNBUFFERED": "1",
    "UFFDCTL_IN_VM": "1",
}


def guest_env(vm: qemu.VM) -> dict[str, str]:
    """BASE_ENV, plus the scratch disk: swapfiles go there (the overlay cannot hold one), and the tests learn
    whether the guest has it -- UFFDCTL_VM_SCRATCH (the mount point), else UFFDCTL_VM_NO_SCRATCH (why not),
    so a swap case is UNSUPPORTED only where vmtest said why, and a failure where the disk should be."""
    if vm.scratch_size:
        return dict(BASE_ENV, UFFDCTL_SWAP_DIR=qemu.SCRATCH_MOUNT, UFFDCTL_VM_SCRATCH=qemu.SCRATCH_MOUNT)
    return dict(BASE_ENV, UFFDCTL_VM_NO_SCRATCH=vm.no_scratch_reason)


def script(cwd: str, env: dict[str, str], body: str, base: dict[str, str] | None = None) -> str:
    """guest.sh: environment (``base`` then ``env``), working directory, then ``body`` (its exit status is
    the script's)."""
    lines = ["#!/bin/sh", "# written by scripts/vmtest"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in {**(base or {}), **env}.items()]
    lines += [f"cd {shlex.quote(cwd)} || exit 125", body]
    return "\n".join(lines) + "\n"


@dataclass
class Job:
    """A run directory on the host: ``share/`` is visible in the guest at the same path (read-write).

    With ``vm`` None the script runs here instead (the matrix's host column), under the same supervision:
    own process group, streamed output, time limit, nothing left behind.
    """

    vm: qemu.VM | None
    timeout: float = 900.0
    keep: bool = False
    base: str | None = None
    run_dir: str = field(init=False, default="")

    def __enter__(self):
        self.run_dir = tempfile.mkdtemp(prefix="uffdctl-vmtest-", dir=self.base)
        os.makedirs(self.share)
        return self

    def __exit__(self, *exc):
        if not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def share(self) -> str:
        return os.path.join(self.run_dir, "share")

    def run(self, body: str, cwd: str, env: dict[str, str] | None = None, stream=None) -> qemu.Result:
        path = os.path.join(self.share, "guest.sh")
        with open(path, "w") as f:
            base = guest_env(self.vm) if self.vm else None
            f.write(script(cwd, env or {}, body, base))
        if self.vm:
            return qemu.run(self.vm, self.run_dir, self.share, stream)
        return qemu.run_here(["/bin/sh", path], self.run_dir, self.timeout, stream)
