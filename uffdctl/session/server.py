"""The session daemon: owns a :class:`SessionState` and serves commands on a Unix socket.

Started by ``uffdctl session start`` as ``python -m uffdctl.session.server`` in a new
session (``start_new_session``), stdio to ``NAME.log``.  It opens the backend first,
then binds ``NAME.sock`` (0600, in the 0700 runtime directory), writes ``NAME.pid``
and only then reports ready on ``--ready-fd`` — so ``session start`` returns once the
socket is listening, or with the daemon's one-line error.

One thread per client: a command that waits (``touch --wait``) holds no lock while
it waits, so other clients go on.  Every connection's peer uid (SO_PEERCRED) must be
ours.  SIGTERM or the ``stop`` op: close the uffd (every blocked fault is woken),
stop the threads, remove the socket and pid file.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback

from ..errors import PermissionDenied, ProtocolError, UffdctlError, UsageError, exit_code_of, to_wire
from . import paths, protocol
from .commands import execute
from .state import SessionState


def peer_uid(conn: socket.socket) -> tuple[int, int, int]:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)  # pid, uid, gid


class Server:
    def __init__(self, name: str, state: SessionState):
        self.name = name
        self.state = state
        self.stopping = threading.Event()
        self.sock: socket.socket | None = None
        self.sock_path = paths.sock_path(name)
        self.pid_path = paths.pid_path(name)

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        """Called holding the name's lock: a socket already there is a dead daemon's."""
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.sock_path)
        finally:
            os.umask(old)
        os.chmod(self.sock_path, 0o600)
        s.listen(16)
        s.settimeout(0.25)
        self.sock = s
        tmp = self.pid_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def cleanup(self) -> None:
        for p in (self.sock_path, self.pid_path):
            try:
                os.unlink(p)
            except OSError:
                pass
        if self.sock is not None:
            self.sock.close()
        try:
            self.state.close()
        except Exception:
            traceback.print_exc()

    # -- one client -----------------------------------------------------------------------
    def handle(self, conn: socket.socket) -> None:
        with conn:
            _pid, uid, _gid = peer_uid(conn)
            if uid != os.getuid():
                self.refuse(conn, _pid, uid)
                return
            f = conn.makefile("rb")
            while True:
                line = f.readline(protocol.MAX_LINE + 1)
                if not line:
                    return
                if len(line) > protocol.MAX_LINE and not line.endswith(b"\n"):
                    err = ProtocolError(f"message exceeds the limit of {protocol.MAX_LINE} bytes")
                    self._send(conn, protocol.error_response(None, err))
                    return
                if not line.strip():
                    continue
                resp = self.respond(line)
                if not self._send(conn, resp):
                    return
                if resp.get("ok") and resp.get("result", {}).get("stopping"):
                    self.stopping.set()
                    return

    REFUSE_READ_S = 5.0

    def refuse(self, conn: socket.socket, pid: int, uid: int) -> None:
        """Answer a client of another uid with PermissionDenied.  Its first request is read before the
        answer (for at most REFUSE_READ_S): closing on a client still sending would fail its write with
        EPIPE instead of giving it the reason."""
        rid = None
        try:
            conn.settimeout(self.REFUSE_READ_S)
            line = conn.makefile("rb").readline(protocol.MAX_LINE + 1)
            rid = protocol.decode_request(line).get("id")
        except (OSError, ProtocolError):
            pass
        err = PermissionDenied(errno.EPERM, "SO_PEERCRED",
                               message=f"uid {uid} may not use session {self.name} (owner uid {os.getuid()})")
        print(f"refused a client with uid {uid} (pid {pid})", flush=True)
        self._send(conn, protocol.error_response(rid, err))

    @staticmethod
    def _send(conn, obj) -> bool:
        try:
            conn.sendall(protocol.encode(obj))
            return True
        except OSError:
            return False

    def respond(self, line: bytes) -> dict:
        try:
            req = protocol.decode_request(line)
        except ProtocolError as e:
            return protocol.error_response(None, e)
        rid, op, args = req.get("id"), req["op"], req.get("args") or {}
        try:
            if op == "hello":
                result = {"version": protocol.VERSION, "name": self.name, "pid": os.getpid(),
                          "backend": self.state.backend.name}
            elif op == "stop":
                result = {"name": self.name, "pid": os.getpid(), "stopping": 1}
            elif op == "status":
                result = execute(self.state, "status", args)
                result.update(self.process_info())
            else:
                result = execute(self.state, op, args)
            return {"v": protocol.VERSION, "id": rid, "ok": True, "result": result}
        except Exception as e:  # every error goes back to the client as data
            if not isinstance(e, UffdctlError):
                traceback.print_exc()       # a bug: the traceback goes to the session's log
            return protocol.error_response(rid, e)

    def process_info(self) -> dict:
        import psutil
        p = psutil.Process()
        return {"pid": p.pid, "rss": p.memory_info().rss, "socket": self.sock_path}


CLAIM_WAIT_S = 1.0   # a client checking for stale files holds the name's lock for a moment


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uffdctl.session.server")
    ap.add_argument("--name", required=True)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--soft-dirty", choices=("on", "off"), default=None)
    ap.add_argument("--user-mode-only", action="store_true")
    ap.add_argument("--ready-fd", type=int, default=-1)
    ns = ap.parse_args(argv)

    def ready(obj):
        if ns.ready_fd >= 0:
            os.write(ns.ready_fd, (json.dumps(obj) + "\n").encode())
            os.close(ns.ready_fd)
            ns.ready_fd = -1

    state = SessionState(ns.backend, ns.profile, ns.name,
                         soft_dirty=None if ns.soft_dirty is None else ns.soft_dirty == "on",
                         user_mode_only=ns.user_mode_only)
    server = Server(ns.name, state)
    try:
        paths.ensure_dir()
        lock = paths.claim(ns.name, wait=CLAIM_WAIT_S)    # before any of the name's files is touched
        if lock is None:
            holder = paths.read_pid(ns.name)
            raise UsageError(f"session {ns.name!r} is already running" + (f" (pid {holder})" if holder else ""))
    except Exception as e:
        print(f"session {ns.name}: not started: {e}", flush=True)
        ready({"ok": False, "exit": exit_code_of(e), "error": to_wire(e)})
        return exit_code_of(e)
    try:
        state.open()
        server.bind()
    except Exception as e:
        ready({"ok": False, "exit": exit_code_of(e), "error": to_wire(e)})
        server.cleanup() if server.sock is not None else state.close()
        paths.release(ns.name, lock)
        return exit_code_of(e)
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print(f"session {ns.name}: pid {os.getpid()}, backend {state.backend.name}, socket {server.sock_path}",
          flush=True)
    selection = dict(state.backend_info(), notice=state.notice())
    if selection["notice"]:
        print(selection["notice"], flush=True)
    ready({"ok": True, "pid": os.getpid(), "socket": server.sock_path, "backend": state.backend.name,
           "selection": selection})
    try:
        server.serve_forever()
    finally:
        server.cleanup()
        paths.release(ns.name, lock)
        print(f"session {ns.name}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
