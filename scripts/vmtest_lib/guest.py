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


def script(cwd: str, env: dict[str, str], body: str) -> str:
    """guest.sh: environment, working directory, then ``body`` (its exit status is the guest's)."""
    lines = ["#!/bin/sh", "# written by scripts/vmtest; runs in the guest's chroot"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in {**BASE_ENV, **env}.items()]
    lines += [f"cd {shlex.quote(cwd)} || exit 125", body]
    return "\n".join(lines) + "\n"


@dataclass
class Job:
    """A run directory on the host: ``share/`` is visible in the guest at the same path (read-write)."""

    vm: qemu.VM
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
        with open(os.path.join(self.share, "guest.sh"), "w") as f:
            f.write(script(cwd, env or {}, body))
        return qemu.run(self.vm, self.run_dir, self.share, stream)
