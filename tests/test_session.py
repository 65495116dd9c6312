"""Session daemons: lifecycle, SIGKILL, other uids, concurrent clients, protocol errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import psutil

from conftest import require_kernel
from test_cli_support import BIN, Cli, cli, need_kernel, session  # noqa: F401  (fixtures)
from uffdctl.session import protocol


def _pid(c, name="t"):
    return int(open(os.path.join(c.rtdir, f"{name}.pid")).read())


def _raw(c, payload: bytes, name="t") -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(os.path.join(c.rtdir, f"{name}.sock"))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return [json.loads(ln) for ln in data.splitlines() if ln.strip()]


def test_runtime_dir_and_socket_modes(session):
    st = os.stat(session.rtdir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(session.rtdir, "t.sock")).st_mode) == 0o600
    assert _pid(session) == session.j("status")["pid"]


def test_sigkill_leaves_no_blocked_thread_and_no_stale_socket(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    assert c.j("touch", "buf:0", "--write")["blocked"] == 1
    pid = _pid(c)
    tids = {t.id for t in psutil.Process(pid).threads()}
    assert len(tids) >= 3                                  # main, the toucher, the handler
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    for tid in tids:                                       # every thread, the blocked one included, is gone
        assert not os.path.exists(f"/proc/{pid}/task/{tid}/stat") or \
            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert os.path.exists(os.path.join(c.rtdir, "t.sock"))  # the kernel does not remove it
    r = c.j("session", "list")
    assert r["sessions"] == [{"name": "t", "state": "gone", "pid": pid}]
    assert not os.path.exists(os.path.join(c.rtdir, "t.sock"))
    p = c("regions")
    assert p.returncode == 1 and "no session is running" in p.stderr and "Traceback" not in p.stderr
    r = c.j("session", "start", "--name", "t", "--backend", "kernel")   # the next start does not trip
    assert r["pid"] != pid
    assert c.j("status")["regions"] == []


def test_sigkill_then_start_without_list(cli):
    need_kernel()
    cli("session", "start", "--name", "t", "--backend", "kernel", check=0)
    os.kill(_pid(cli), signal.SIGKILL)
    time.sleep(0.1)
    cli("session", "start", "--name", "t", "--backend", "kernel", check=0)
    assert cli.j("status")["name"] == "t"
    cli("session", "stop", check=0)


def test_stop_wakes_a_blocked_touch_and_cleans_up(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    c("touch", "buf:0", "--write", check=0)
    pid = _pid(c)
    t0 = time.monotonic()
    r = c.j("session", "stop")
    assert r["stopped"] == 1 and time.monotonic() - t0 < 5
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert os.listdir(c.rtdir) == []


def test_a_waiting_command_does_not_block_other_clients(session):
    c = session
    c("register", "buf", "--mode", "missing", check=0)
    waiter = subprocess.Popen([BIN, "-j", "touch", "buf:2", "--write", "--wait", "--timeout", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env, cwd=c.cwd)
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not c.j("status")["blocked"]:
            time.sleep(0.05)
        t0 = time.monotonic()
        assert c.j("faults")["threads"][0]["blocked"] == 1
        assert c.j("events")["events"][-1]["page"] == 2
        assert time.monotonic() - t0 < 5                    # answered while the waiter waits
        assert waiter.poll() is None
        c.j("copy", "buf:2")
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    r = json.loads(out)
    assert waiter.returncode == 0 and r["finished"] == 1 and r["minflt"] >= 1


def test_session_selection(cli):
    need_kernel()
    cli("session", "start", "--name", "a", "--backend", "kernel", check=0)
    try:
        assert cli.j("status")["name"] == "a"                   # a single session is the default
        cli("session", "start", "--name", "b", "--backend", "kernel", check=0)
        p = cli("status", check=2)
        assert "several sessions" in p.stderr
        assert cli.j("--session", "b", "status")["name"] == "b"
        assert cli.j("status", env={"UFFDCTL_SESSION": "a"})["name"] == "a"
        assert {s["name"] for s in cli.j("session", "list")["sessions"]} == {"a", "b"}
    finally:
        cli("session", "stop", "a")
        cli("session", "stop", "b")


def test_protocol_errors_are_answered_and_change_nothing(session):
    c = session
    before = c.j("regions")
    r = _raw(c, b"this is not json\n")
    assert r[0]["ok"] is False and r[0]["error"]["type"] == "ProtocolError" and "not JSON" in r[0]["error"]["message"]
    r = _raw(c, b'[1, 2]\n{"v": 99, "op": "regions"}\n{"v": 1}\n{"v": 1, "op": "regions", "args": []}\n')
    assert [x["exit"] for x in r] == [2, 2, 2, 2]
    assert "version 99" in r[1]["error"]["message"]
    r = _raw(c, b'{"v": 1, "op": "mmap", "args": {"size": "4K", "bogus": 1}}\n')
    assert r[0]["exit"] == 2 and "bogus" in r[0]["error"]["message"]
    r = _raw(c, b"x" * (protocol.MAX_LINE + 10) + b"\n")
    assert r[0]["error"]["type"] == "ProtocolError" and "exceeds" in r[0]["error"]["message"]
    r = _raw(c, b'{"v": 1, "id": 5, "op": "regions"}\n')
    assert r[0]["ok"] is True and r[0]["id"] == 5
    assert c.j("regions") == before


def test_another_uid_is_refused(tmp_path):
    """Two layers: the 0700 directory stops another uid at connect(); with the directory and the
    socket opened up (test-only), the server's SO_PEERCRED check refuses it."""
    if shutil.which("setpriv") is None or os.getuid() != 0:
        require_kernel("needs root and setpriv to switch to another uid")
    need_kernel()
    base = tempfile.mkdtemp(prefix="uffdctl-uid-")       # under /tmp: reachable by another uid once opened
    c = Cli(os.path.join(base, "rt"), tmp_path)
    c("session", "start", "--name", "t", "--backend", "kernel", check=0)
    try:
        c("mmap", "--size", "16K", "--name", "buf", check=0)
        _other_uid_probe(c)
    finally:
        c("session", "stop", "t")
        shutil.rmtree(base, ignore_errors=True)


def _other_uid_probe(c):
    sock = os.path.join(c.rtdir, "t.sock")
    probe = ("import json, socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('CONNECT', e.errno); sys.exit(0)\n"
             # a request larger than the socket buffer: the write lasts until the server has read it all,
             # so a server that answered and closed first would fail it with EPIPE every time, not 1 in 3
             "s.sendall(json.dumps({'v': 1, 'id': 7, 'op': 'regions', 'args': {'pad': 'x' * 400000}}).encode()"
             " + b'\\n')\n"
             "print('REPLY', s.makefile().readline().strip())\n")
    setpriv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    py = next((x for x in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3"))
               if x and subprocess.run(setpriv + [x, "-c", "pass"], capture_output=True).returncode == 0), None)
    if py is None:
        require_kernel("no python3 interpreter that uid 65534 may execute")
    run = setpriv + [py, "-c", probe, sock]
    # 1. the directory alone
    p = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd="/")
    assert p.stdout.startswith("CONNECT 13"), p.stdout + p.stderr          # EACCES
    # 2. path opened up: the peer-credential check answers
    os.chmod(os.path.dirname(c.rtdir), 0o711)
    os.chmod(c.rtdir, 0o711)
    os.chmod(sock, 0o666)
    try:
        p = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd="/")
    finally:
        os.chmod(sock, 0o600)
        os.chmod(c.rtdir, 0o700)
    assert p.stdout.startswith("REPLY "), p.stdout + p.stderr
    reply = json.loads(p.stdout.split(" ", 1)[1])
    assert reply["ok"] is False and reply["error"]["type"] == "PermissionDenied" and reply["id"] == 7
    assert "uid 65534" in reply["error"]["message"]
    assert c.j("regions")["regions"][0]["name"] == "buf"                   # the owner still gets in
    assert "refused a client with uid 65534" in open(os.path.join(c.rtdir, "t.log")).read()


def test_emulator_session(cli):
    """--backend emu: the same commands; the RFC hints only under profile rfc-hints; bad profiles are usage errors."""
    p = cli("session", "start", "--name", "e", "--backend", "emu", "--profile", "no-such")
    assert p.returncode == 2 and "unknown emulator profile" in p.stderr and "Traceback" not in p.stderr
    assert cli.j("session", "list")["sessions"] == []
    r = cli.j("session", "start", "--name", "e", "--backend", "emu", "--profile", "rfc-hints")
    assert r["backend"] == "emu"
    try:
        cli.j("mmap", "--size", "16K", "--name", "buf")
        cli.j("register", "buf", "--mode", "missing")
        assert cli.j("touch", "buf:1", "--write")["blocked"] == 1
        assert cli.j("events")["events"][-1]["page"] == 1
        r = cli.j("copy", "buf:1", "--access-likely", "--write-likely")
        assert r["copy"] == 4096 and r["mode"] == 0b1100
        assert cli.j("wait")["finished"] == 1
        assert cli.j("pagemap", "buf:1")["entries"][0]["present"] == 1
        assert cli.j("status")["profile"] == "rfc-hints"
    finally:
        cli("session", "stop", "e", check=0)


def test_kernel_profile_is_rejected(cli):
    """An emulator option with the kernel backend is a usage error (exit 2), and no session starts."""
    p = cli("session", "start", "--name", "x", "--backend", "kernel", "--profile", "6.1")
    assert p.returncode == 2 and "emulator" in p.stderr and "Traceback" not in p.stderr
    assert cli.j("session", "list") == {"sessions": []}


def test_json_keys_of_session_commands(cli):
    need_kernel()
    r = cli.j("session", "start", "--name", "k", "--backend", "kernel")
    assert set(r) == {"name", "pid", "socket", "backend", "selection", "log"} and r["backend"] == "kernel"
    assert r["selection"]["backend"] == "kernel" and r["selection"]["requested"] == "kernel"
    assert set(cli.j("session", "status")) >= {"name", "backend", "pid", "rss", "socket", "uffd", "regions"}
    r = cli.j("session", "stop", "k")
    assert set(r) == {"name", "pid", "stopped"} and r["stopped"] == 1
    assert cli.j("session", "list") == {"sessions": []}


def _servers_of(rtdir: str) -> list:
    """Session daemons serving ``rtdir`` (other runtime directories, e.g. other test runs, are not ours)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "uffdctl.session.server" in (p.info["cmdline"] or []) and \
                    p.environ().get("UFFDCTL_RUNTIME_DIR") == rtdir:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_concurrent_starts_make_exactly_one_daemon(cli):
    """20 ``session start --name X`` at once: one daemon, the other 19 fail cleanly (one line, exit 2,
    nothing of the winner's removed), and after ``session stop`` no process is left (issue 11.3)."""
    n = 20
    procs = [subprocess.Popen([BIN, "session", "start", "--name", "x", "--backend", "emu"], env=cli.env,
                              cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [(p.wait(120), *p.communicate()) for p in procs]
    try:
        won = [o for o in outs if o[0] == 0]
        lost = [o for o in outs if o[0] != 0]
        assert len(won) == 1, outs
        for rc, out, err in lost:
            assert rc == 2 and "already running" in err and len(err.strip().splitlines()) == 1, (rc, out, err)
            assert "Traceback" not in err
        servers = _servers_of(cli.rtdir)
        assert len(servers) == 1, servers
        sessions = cli.j("session", "list")["sessions"]
        assert [(s["name"], s["state"]) for s in sessions] == [("x", "live")]
        assert cli.j("regions") == {"regions": []}            # the winner serves
    finally:
        cli("session", "stop", "x", check=0)
    deadline = time.time() + 10
    while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers):
        time.sleep(0.05)
    assert not [p for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert sorted(os.listdir(cli.rtdir)) == []
