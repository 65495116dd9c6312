"""What the host offers: QEMU, a static busybox, apt, and an accelerator that really works."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from . import Unavailable
from .elf import is_static

QEMU = "qemu-system-x86_64"
# tool -> Debian package that provides it
PACKAGES = {QEMU: "qemu-system-x86", "busybox": "busybox-static"}


_T0 = time.monotonic()


def log(msg: str) -> None:
    """One line on stderr, with the seconds since vmtest started."""
    print(f"vmtest [{time.monotonic() - _T0:5.1f}s]: {msg}", file=sys.stderr, flush=True)


def find_qemu(override: str | None = None) -> str | None:
    if override:
        return override if os.access(override, os.X_OK) else shutil.which(override)
    return shutil.which(QEMU)


def find_static_busybox() -> str | None:
    """A statically linked busybox (the guest has no libc before the 9p mount)."""
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if cand and os.path.isfile(cand) and is_static(cand):
            return cand
    return None


def missing_tools(qemu: str | None = None) -> list[str]:
    out = []
    if not find_qemu(qemu):
        out.append(QEMU)
    if not find_static_busybox():
        out.append("busybox")
    return out


def apt_install(packages: list[str]) -> None:
    """apt-get install as root; raise Unavailable saying exactly what to do otherwise."""
    cmd = f"apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0:
        raise Unavailable(f"missing {', '.join(packages)}; install them as root: {cmd}")
    if not shutil.which("apt-get"):
        raise Unavailable(f"missing {', '.join(packages)} and no apt-get on this host to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(packages)} (apt-get)")
    for attempt in ("install", "update+install"):
        if attempt == "update+install":
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode == 0:
            return
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    raise Unavailable(f"apt-get could not install {' '.join(packages)}: {last}")


def ensure_tools(qemu: str | None = None, install: bool = True) -> tuple[str, str]:
    """(qemu path, static busybox path), installing the Debian packages when allowed."""
    missing = missing_tools(qemu)
    if missing and qemu and QEMU in missing:
        raise Unavailable(f"--qemu {qemu}: not an executable")
    if missing:
        pkgs = [PACKAGES[t] for t in missing]
        if not install:
            raise Unavailable(f"missing {', '.join(missing)} (packages {' '.join(pkgs)}; "
                              "run without --no-install, as root, to install them)")
        apt_install(pkgs)
        still = missing_tools(qemu)
        if still:
            raise Unavailable(f"still missing after installing {' '.join(pkgs)}: {', '.join(still)}")
    return find_qemu(qemu), find_static_busybox()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kvm_usable(sysfs: str = "/sys/module", dev: str = "/dev/kvm", flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether a stock guest can run under KVM here, and why (not).

    An openable /dev/kvm is not enough: on a host that is itself a PVM guest the
    device belongs to kvm_pvm, which runs only PVM-aware guest kernels (a stock
    kernel aborts or crawls).  Hardware KVM needs vmx/svm and kvm_intel/kvm_amd.
    """
    if not os.path.exists(dev):
        return False, f"{dev} does not exist"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"{dev} is not read-writable by this user"
    if os.path.isdir(os.path.join(sysfs, "kvm_pvm")):
        return False, "the host's KVM is kvm_pvm (this host is itself a PVM guest): stock guests abort or crawl"
    flags = cpu_flags() if flags is None else flags
    if not flags & {"vmx", "svm"}:
        return False, "the CPU offers no vmx/svm (no nested virtualisation)"
    for mod in ("kvm_intel", "kvm_amd"):
        if os.path.isdir(os.path.join(sysfs, mod)):
            return True, f"{mod} loaded and {dev} usable"
    return False, "neither kvm_intel nor kvm_amd is loaded"


def choose_accel(requested: str = "auto") -> tuple[str, str]:
    """("kvm"|"tcg", reason)."""
    if requested == "tcg":
        return "tcg", "requested"
    ok, why = kvm_usable()
    if requested == "kvm":
        if not ok:
            raise Unavailable(f"--accel kvm: {why}")
        return "kvm", why
    return ("kvm", why) if ok else ("tcg", f"TCG because {why}")
