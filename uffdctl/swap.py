"""A real swap device for MADV_PAGEOUT tests: a swapfile made, enabled and removed by uffdctl.

``on(size)`` creates ``uffdctl-swap-<pid>-<n>.img`` (0600) on a disk filesystem
(default /var/tmp; tmpfs cannot hold a swapfile), allocates it (posix_fallocate:
no holes, as swapon requires), runs ``mkswap`` and calls swapon(2).  ``off(path)``
calls swapoff(2) and removes the file.  Needs root (CAP_SYS_ADMIN); anything
else is a one-line :class:`~uffdctl.errors.Unsupported` with the reason.

A process killed before it could clean up leaves its swapfile enabled: every
``on()`` first swaps off and removes the swapfiles of pids that are gone.
"""
from __future__ import annotations

import errno as E
import os
import re
import shutil
import subprocess

from .errors import Unsupported, uffd_error

DEFAULT_DIR = "/var/tmp"          # or $UFFDCTL_SWAP_DIR (scripts/vmtest sets it to the guest's scratch disk)
_NAME = re.compile(r"^uffdctl-swap-(\d+)-\d+\.img$")
# statfs(2) f_type of filesystems whose files swapon(2) refuses with EINVAL: their address_space_operations
# have neither ->swap_activate nor ->bmap, so setup_swap_extents() -> generic_swapfile_activate() fails at
# bmap() (mm/swapfile.c, mm/page_io.c).  Overlayfs measured in the vmtest guests (6.1.192: EINVAL on an
# overlay with a tmpfs upper layer); its ovl_aops has only ->direct_IO.
NO_SWAPFILE = {0x01021994: "tmpfs", 0x858458F6: "ramfs", 0x794C7630: "overlayfs", 0x01021997: "9p (v9fs)"}
_counter = 0


def active() -> list[dict]:
    """/proc/swaps as dicts (filename, type, size and used in bytes, priority)."""
    out = []
    try:
        with open("/proc/swaps") as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) >= 5:
                    out.append({"filename": p[0].replace("\\040", " "), "type": p[1], "size": int(p[2]) * 1024,
                                "used": int(p[3]) * 1024, "priority": int(p[4])})
    except OSError:
        pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(directory: str = DEFAULT_DIR) -> list[str]:
    """Swap off and remove uffdctl swapfiles whose creating pid is gone; returns what was removed."""
    removed = []
    on = {s["filename"] for s in active()}
    candidates = set()
    for path in on:
        if _NAME.match(os.path.basename(path)):
            candidates.add(path)
    try:
        for n in os.listdir(directory):
            if _NAME.match(n):
                candidates.add(os.path.join(directory, n))
    except OSError:
        pass
    for path in sorted(candidates):
        pid = int(_NAME.match(os.path.basename(path)).group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        if path in on:
            from . import _libc
            _libc.swapoff(path)
        try:
            os.unlink(path)
        except OSError:
            pass
        removed.append(path)
    return removed


def fs_type(directory: str) -> int | None:
    """statfs(2)'s f_type of ``directory`` (None if it cannot be read)."""
    from . import _libc
    t = _libc.statfs_type(directory)
    return None if t < 0 else t & 0xFFFFFFFF


def swap_dir() -> str:
    return os.environ.get("UFFDCTL_SWAP_DIR") or DEFAULT_DIR


def cannot_hold_swapfile(directory: str | None = None) -> str | None:
    """Why a swapfile in ``directory`` (default: :func:`swap_dir`) cannot be swapped on, or None if it may."""
    directory = directory or swap_dir()
    name = NO_SWAPFILE.get(fs_type(directory))
    if name is None:
        return None
    return f"{directory} is on {name}, which cannot hold a swapfile (swapon(2): EINVAL, no bmap/swap_activate)"


def swap_cure() -> str:
    cure = "give --dir on a disk filesystem (ext4, xfs; default /var/tmp)"
    if os.environ.get("UFFDCTL_IN_VM") == "1":
        cure += ("; scripts/vmtest gives the guest an ext4 scratch disk for swapfiles (UFFDCTL_SWAP_DIR) when its "
                 "kernel has ext4 and virtio_blk (built in or as modules) and the host has mkfs.ext4 (e2fsprogs)")
    return cure


def _fs_check(directory: str) -> None:
    why = cannot_hold_swapfile(directory)
    if why:
        raise Unsupported(why, swap_cure())


SWAP_FLAG_PREFER, SWAP_FLAG_PRIO_MASK = 0x8000, 0x7FFF


def on(size: int, directory: str | None = None, priority: int | None = None) -> dict:
    """Create, mkswap and swapon a swapfile; returns ``{"filename", "size", ...}``.  ``priority``
    (SWAP_FLAG_PREFER): used before every device of lower priority (a test's pages never land on another
    process's swapfile, which could be swapped off under them)."""
    global _counter
    directory = directory or swap_dir()
    if os.geteuid() != 0:
        raise Unsupported("swap on needs root: swapon(2) needs CAP_SYS_ADMIN", "run as root")
    if size < 40 * 4096:
        raise uffd_error(E.EINVAL, "swapon", None, size, message="a swapfile needs at least 40 pages")
    if not os.path.isdir(directory):
        raise uffd_error(E.ENOENT, "swapon", message=f"no directory {directory}")
    mkswap = shutil.which("mkswap") or ("/sbin/mkswap" if os.path.exists("/sbin/mkswap") else None)
    if mkswap is None:
        raise Unsupported("mkswap (util-linux) is not installed", "apt-get install util-linux")
    _fs_check(directory)
    cleanup_stale(directory)
    _counter += 1
    path = os.path.join(directory, f"uffdctl-swap-{os.getpid()}-{_counter}.img")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        p = subprocess.run([mkswap, path], capture_output=True, text=True, timeout=60)
        if p.returncode:
            msg = ((p.stderr or p.stdout).strip().splitlines() or ["mkswap failed"])[-1]
            raise uffd_error(E.EINVAL, "mkswap", message=msg)
        from . import _libc
        flags = 0 if priority is None else SWAP_FLAG_PREFER | (priority & SWAP_FLAG_PRIO_MASK)
        r = _libc.swapon(path, flags)
        if r < 0:
            raise uffd_error(-r, "swapon", None, size, message=path)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return {"filename": path, "size": size, "active": _entry(path)}


def _entry(path: str) -> dict | None:
    return next((s for s in active() if s["filename"] == path), None)


def off(path: str) -> dict:
    """swapoff and remove one swapfile made by on()."""
    from . import _libc
    if _entry(path) is not None:
        r = _libc.swapoff(path)
        if r < 0:   # keep the file: an unlinked active swapfile could never be swapped off by name
            raise uffd_error(-r, "swapoff", message=path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return {"filename": path, "removed": 1}
