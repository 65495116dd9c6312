"""Where sessions live: ``$UFFDCTL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/uffdctl``, else ``/run/uffdctl``
for root and ``/tmp/uffdctl-UID`` for any other user (who cannot create /run/uffdctl).

The directory is 0700 (created so, and refused if another uid owns it or others
can enter it); each session has ``NAME.sock`` (0600), ``NAME.pid``, ``NAME.log``
and ``NAME.lock``.  A name belongs to whoever holds ``flock(NAME.lock)``: the
daemon takes it before it touches any of the name's files and holds it for its
whole life (the kernel drops it when the process dies, however it dies), and
stale files are removed only by someone holding it.  So two ``session start
--name X`` at once give one daemon, and the loser removes nothing of the winner's.
"""
from __future__ import annotations

import fcntl
import os
import re
import stat
import time

from ..errors import RuntimeDirError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def runtime_dir() -> str:
    d = os.environ.get("UFFDCTL_RUNTIME_DIR")
    if d:
        return d
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "uffdctl")
    return "/run/uffdctl" if os.getuid() == 0 else f"/tmp/uffdctl-{os.getuid()}"


_CURE = "cure: set UFFDCTL_RUNTIME_DIR to a directory of your own; it is created 0700"


def ensure_dir() -> str:
    """The runtime directory, created 0700 if missing; RuntimeDirError (naming the cure) if it cannot be made
    or is not ours."""
    d = runtime_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.stat(d)
    except OSError as e:
        raise RuntimeDirError(f"cannot create the session runtime directory {d}: {e.strerror} ({_CURE})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"session runtime directory {d} is not a directory ({_CURE})")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"session runtime directory {d} belongs to uid {st.st_uid}, not {os.getuid()} "
                              f"({_CURE})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)
    return d


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"bad session name {name!r}: letters, digits, _ . - (at most 64)")
    return name


def sock_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{name}.sock")


def pid_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{name}.pid")


def read_pid(name: str) -> int | None:
    """The pid the session ``name`` wrote in its pid file (None: no file, empty or not a number)."""
    try:
        with open(pid_path(name)) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def log_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{name}.log")


def lock_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{name}.lock")


def claim(name: str, wait: float = 0.0) -> int | None:
    """Take the name's lock: an fd holding ``flock(LOCK_EX)`` on ``NAME.lock``, or None if another process
    holds it (after retrying for ``wait`` seconds: a client checking for stale files holds it for a moment)."""
    path = lock_path(name)
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
            continue
        try:     # its previous holder may have unlinked the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release(name: str, fd: int) -> None:
    """Give the name back (the lock file goes too: whoever opened it meanwhile retries on a fresh one)."""
    try:
        os.unlink(lock_path(name))
    except OSError:
        pass
    os.close(fd)


def names() -> list[str]:
    d = runtime_dir()
    try:
        entries = os.listdir(d)
    except OSError:
        return []
    out = {e.rsplit(".", 1)[0] for e in entries if e.endswith((".sock", ".pid", ".log"))}
    return sorted(n for n in out if NAME_RE.match(n))
