"""Where sessions live: ``$UFFDCTL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/uffdctl``, else ``/run/uffdctl``.

The directory is 0700 (created so, and refused if another uid owns it or others
can enter it); each session has ``NAME.sock`` (0600), ``NAME.pid`` and ``NAME.log``.
"""
from __future__ import annotations

import os
import re
import stat

from ..errors import RuntimeDirError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def runtime_dir() -> str:
    d = os.environ.get("UFFDCTL_RUNTIME_DIR")
    if d:
        return d
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "uffdctl") if xdg else "/run/uffdctl"


def ensure_dir() -> str:
    d = runtime_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"runtime directory {d} belongs to uid {st.st_uid}, not {os.getuid()}")
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


def log_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"{name}.log")


def names() -> list[str]:
    d = runtime_dir()
    try:
        entries = os.listdir(d)
    except OSError:
        return []
    out = {e.rsplit(".", 1)[0] for e in entries if e.endswith((".sock", ".pid", ".log"))}
    return sorted(n for n in out if NAME_RE.match(n))
