"""Talk to session daemons: start, find, call, stop.  No click here.

A session is *live* when its pid file names a running ``uffdctl.session.server``
and its socket accepts; otherwise it is *gone* and its files are removed (a
SIGKILLed daemon leaves a socket behind: the next ``session start`` or ``list``
cleans it).
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

from ..errors import RemoteErrorLike, SessionGone, UsageError, from_wire
from . import paths, protocol

START_TIMEOUT_S = 30.0


def _pid_is_server(pid: int | None, name: str | None = None) -> bool:
    """Is ``pid`` a live session server (named ``name``)?  A recycled pid is not."""
    if not pid:
        return False
    try:
        import psutil
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = p.cmdline()
        return "uffdctl.session.server" in cmd and (name is None or ["--name", name] == cmd[cmd.index("--name"):][:2])
    except Exception:  # NoSuchProcess, AccessDenied
        return False


def clean(name: str, log: bool = False) -> bool:
    """Remove the name's files if no daemon holds the name (True), else leave them (False)."""
    fd = paths.claim(name)
    if fd is None:
        return False
    try:
        for p in (paths.sock_path(name), paths.pid_path(name)) + ((paths.log_path(name),) if log else ()):
            try:
                os.unlink(p)
            except OSError:
                pass
    finally:
        paths.release(name, fd)
    return True


def state_of(name: str) -> str:
    """"live", "starting" (a daemon holds the name, not serving yet), or "gone" (stale files removed)."""
    pid = paths.read_pid(name)
    if _pid_is_server(pid, name) and os.path.exists(paths.sock_path(name)):
        return "live"
    if not clean(name):
        return "starting"
    return "gone"


def _forget(name: str) -> None:
    clean(name, log=True)


def live_names() -> list[str]:
    return [n for n in paths.names() if state_of(n) == "live"]


def _checked(name: str) -> str:
    try:
        return paths.check_name(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def resolve(name: str | None) -> str:
    """The session to talk to: the given one, else the only live one."""
    if name:
        st = state_of(_checked(name))
        if st != "live":
            if os.path.exists(paths.log_path(name)):
                raise SessionGone(f"session {name!r} is gone (its process died; stale socket removed)")
            raise SessionGone(f"session {name!r} is not running (start it: uffdctl session start --name {name})")
        return name
    names = live_names()
    if not names:
        gone = [n for n in paths.names() if state_of(n) == "gone"]
        if gone:
            raise SessionGone(f"no session is running: {', '.join(gone)} died (stale socket removed; "
                              f"uffdctl session list reports it)")
        raise SessionGone("no session is running (start one: uffdctl session start)")
    if len(names) > 1:
        raise UsageError(f"several sessions are running ({', '.join(names)}): pick one with --session or "
                         f"UFFDCTL_SESSION")
    return names[0]


class Client:
    def __init__(self, name: str, timeout: float | None = None):
        self.name = name
        self._id = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(paths.sock_path(name))
        except OSError as e:
            self.sock.close()
            state = state_of(name)
            raise SessionGone(f"session {name!r} cannot be reached ({e.strerror}); it is {state}") from None
        self._f = self.sock.makefile("rb")

    def call(self, op: str, args: dict | None = None) -> dict:
        self._id += 1
        msg = {"v": protocol.VERSION, "id": self._id, "op": op, "args": args or {}}
        try:
            self.sock.sendall(protocol.encode(msg))
            line = self._f.readline()   # responses are not limited: the server is our own uid
        except OSError as e:
            raise SessionGone(f"session {self.name!r} went away during {op} ({e})") from None
        if not line:
            raise SessionGone(f"session {self.name!r} closed the connection during {op} (did it die?)")
        resp = json.loads(line)
        if not resp.get("ok"):
            raise from_wire(resp.get("error") or {}, resp.get("exit", 1))   # the server's own class
        return resp["result"]

    def close(self):
        self._f.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(name: str | None, op: str, args: dict | None = None, timeout: float | None = None) -> dict:
    with Client(resolve(name), timeout) as c:
        return c.call(op, args)


def _free_name() -> str:
    taken = set(paths.names())
    i = 0
    while f"s{i}" in taken:
        i += 1
    return f"s{i}"


def start(name: str | None = None, backend: str = "auto", profile: str | None = None,
          soft_dirty: bool | None = None, user_mode_only: bool = False) -> dict:
    """Spawn a daemon; return once its socket listens (or raise its one-line error).  The result's
    ``selection`` says which backend the daemon opened and why (``notice``: the line to show after a
    fallback)."""
    paths.ensure_dir()
    name = _checked(_free_name() if name is None else name)
    if state_of(name) != "gone":
        raise UsageError(f"session {name!r} is already running (pid {paths.read_pid(name)})")
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "uffdctl.session.server", "--name", name, "--backend", backend,
           "--ready-fd", str(w)]
    if profile:
        cmd += ["--profile", profile]
    if soft_dirty is not None:
        cmd += ["--soft-dirty", "on" if soft_dirty else "off"]
    if user_mode_only:
        cmd += ["--user-mode-only"]
    with open(paths.log_path(name), "ab") as log:
        os.chmod(paths.log_path(name), 0o600)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,), cwd="/",
                                start_new_session=True, close_fds=True)
    os.close(w)
    deadline = time.monotonic() + START_TIMEOUT_S
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                proc.kill()
                proc.wait(5)
                raise SessionGone(f"session {name!r} did not become ready in {START_TIMEOUT_S:.0f} s "
                                  f"(log: {paths.log_path(name)})")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    if not buf.strip():
        proc.wait(5)
        clean(name)              # its stale files, if it left any (and no other daemon holds the name)
        raise SessionGone(f"session {name!r} exited during start-up (status {proc.returncode}; "
                          f"log: {paths.log_path(name)})")
    msg = json.loads(buf.split(b"\n", 1)[0])
    if not msg.get("ok"):
        proc.wait(5)
        _forget(name)
        raise from_wire(msg.get("error") or {}, msg.get("exit", 1))
    return {"name": name, "pid": msg["pid"], "socket": msg["socket"], "backend": msg["backend"],
            "selection": msg.get("selection") or {}, "log": paths.log_path(name)}


def stop(name: str | None) -> dict:
    name = resolve(name)
    pid = paths.read_pid(name)
    with Client(name, timeout=10) as c:
        c.call("stop")
    deadline = time.monotonic() + 10
    while _pid_is_server(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _pid_is_server(pid):
        os.kill(pid, 9)
    _forget(name)
    return {"name": name, "pid": pid, "stopped": 1}


def listing() -> list[dict]:
    """Every session in the runtime directory: live ones with psutil numbers, gone ones reported and cleaned."""
    out = []
    for name in paths.names():
        pid = paths.read_pid(name)
        st = state_of(name)
        if st != "live":
            out.append({"name": name, "state": st, "pid": pid})
            if st == "gone":  # reported once: the log goes too
                _forget(name)
            continue
        d = {"name": name, "state": "live", "pid": pid}
        try:
            import psutil
            p = psutil.Process(pid)
            d.update(uptime_s=round(time.time() - p.create_time(), 1), rss=p.memory_info().rss)
        except Exception:
            pass
        try:
            s = call(name, "status", timeout=5)
            d.update(backend=s["backend"], regions=len(s["regions"]), blocked=len(s["blocked"]))
        except Exception as e:
            d.update(state="unresponsive", error=str(e))
        out.append(d)
    return out
