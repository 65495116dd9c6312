"""One error family: every class under UffdctlError with an exit code, one wire form, and the way back.

``except PageExists`` (and every other class) must work the same through a session as in-process:
the daemon sends ``errors.to_wire(e)`` and the client raises ``errors.from_wire(...)``, which rebuilds
the original class with its message, errno, ioctl, range and done.
"""
from __future__ import annotations

import errno
import json

import pytest

from conftest import _kernel_reason, require_kernel
from uffdctl import errors as E
from uffdctl.session import client
from uffdctl.session.commands import execute
from uffdctl.session.state import SessionState

EXAMPLES = [
    E.uffd_error(errno.EEXIST, "UFFDIO_COPY", 0x7f0000001000, 0x3000, -errno.EEXIST),
    E.uffd_error(errno.EAGAIN, "UFFDIO_COPY", 0x7f0000001000, 0x3000, 0x1000, message="mm changing"),
    E.uffd_error(errno.EINVAL, "UFFDIO_REGISTER", 0x1000, 0x2000),
    E.uffd_error(errno.ENOENT, "UFFDIO_CONTINUE", 0x1000, 0x1000, -errno.ENOENT),
    E.uffd_error(errno.EFAULT, "UFFDIO_MOVE"),
    E.uffd_error(errno.EBUSY, "UFFDIO_MOVE", 0x1000, 0x1000, -errno.EBUSY),
    E.uffd_error(errno.EPERM, "userfaultfd", message="unprivileged"),
    E.uffd_error(errno.EACCES, "/dev/userfaultfd"),
    E.uffd_error(errno.ESRCH, "UFFDIO_COPY", 0x1000, 0x1000, -errno.ESRCH),
    E.uffd_error(errno.ENOMEM, "UFFDIO_COPY", 0x1000, 0x1000, -errno.ENOMEM),
    E.uffd_error(errno.EIO, "UFFDIO_POISON", 0x1000, 0x1000),           # the base class (no errno subclass)
    E.Unsupported("soft-dirty is off", "a kernel with CONFIG_MEM_SOFT_DIRTY=y"),
    E.BackendUnavailable("cannot open a userfaultfd: EPERM"),
    E.FeatureMissing("UFFD_FEATURE_MOVE is not offered"),
    E.NotModelled("fork"),
    E.UsageError("bad size '12Q'"),
    E.HelpRequested("--help is not a script command"),
    E.ProtocolError("message is not JSON"),
    E.SessionGone("session 'x' is not running"),
    E.RuntimeDirError("runtime directory /run/uffdctl: EACCES (set UFFDCTL_RUNTIME_DIR)"),
    E.ScriptError(3, "copy buf:0", "UFFDIO_COPY: EEXIST", 1, "PageExists",
                  E.to_wire(E.uffd_error(errno.EEXIST, "UFFDIO_COPY", 0x1000, 0x1000, -17))),
    E.StressFailed("stress: page 7 lost an update"),
    E.ProcessError("process child (pid 7) is gone"),
    E.RemoteError({"type": "KeyError", "errno": None, "ioctl": None, "message": "'x'"}, 1),
]


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b), (type(a), type(b))
    assert str(a) == str(b)
    assert E.exit_code_of(a) == E.exit_code_of(b)
    for attr in ("errno", "ioctl", "start", "len", "done", "reason", "cure", "what", "lineno", "kind"):
        assert getattr(a, attr, None) == getattr(b, attr, None), attr


def test_every_class_is_under_one_base_with_an_exit_code():
    import uffdctl.cli  # noqa: F401  (import everything that could define an error class)
    import uffdctl.repro  # noqa: F401
    import uffdctl.script  # noqa: F401
    import uffdctl.stress  # noqa: F401
    classes = E._classes()
    strays = sorted(f"{c.__module__}.{c.__name__}" for c in classes.values()
                    if c.__module__ not in ("uffdctl", "uffdctl.errors"))
    assert strays == [], "error classes outside uffdctl/errors.py"
    for name in ("UsageError", "RemoteErrorLike", "RemoteError", "SessionGone", "ProtocolError",
                 "RuntimeDirError", "ScriptError", "UffdError", "Unsupported", "NotModelled"):
        cls = getattr(E, name)
        assert issubclass(cls, E.UffdctlError) and isinstance(cls.exit_code, int), name
    assert {c.__name__ for c in map(type, EXAMPLES)} >= set(classes) - {"UffdctlError"}, \
        "an error class without an example here: add one"
    # the old import paths still name the same classes
    from uffdctl.script import ScriptError
    from uffdctl.session.client import SessionGone
    from uffdctl.session.commands import RemoteErrorLike, UsageError
    from uffdctl.session.paths import RuntimeDirError
    from uffdctl.session.protocol import ProtocolError
    from uffdctl.session.state import UsageError as U2
    assert (ScriptError, SessionGone, RemoteErrorLike, UsageError, U2, RuntimeDirError, ProtocolError) == \
        (E.ScriptError, E.SessionGone, E.RemoteError, E.UsageError, E.UsageError, E.RuntimeDirError, E.ProtocolError)


@pytest.mark.parametrize("e", EXAMPLES, ids=lambda e: type(e).__name__ + "-" + str(getattr(e, "errno", "")))
def test_wire_round_trip_rebuilds_the_class(e):
    wire = json.loads(json.dumps(E.to_wire(e)))        # what travels is JSON
    assert wire["type"] and wire["message"] == str(e) and wire["exit"] == E.exit_code_of(e)
    back = E.from_wire(wire)
    _same(e, back)
    assert E.to_wire(back) == wire


def test_an_error_from_outside_the_family_travels_as_remote_error():
    wire = E.to_wire(KeyError("x"))
    back = E.from_wire(wire)
    assert isinstance(back, E.RemoteError) and back.type == "KeyError" and back.exit_code == 1
    assert isinstance(E.from_wire({"type": "NoSuchClass", "message": "m", "exit": 3}), E.RemoteError)
    assert E.from_wire({"type": "NoSuchClass", "message": "m", "exit": 3}).exit_code == 3


# -- through a session, exactly as in-process -----------------------------------------------------
STEPS = [("mmap", {"size": "16K", "name": "buf"}), ("register", {"range": "buf", "mode": "missing"}),
         ("copy", {"range": "buf:1", "fill": "0x41"})]
FAILING = [
    ("copy", {"range": "buf:1", "fill": "0x41"}, E.PageExists),             # the page exists: done = -EEXIST
    ("copy", {"range": "nosuch:0"}, E.UsageError),
    ("copy", {"range": "buf:2", "access_likely": True}, E.Unsupported),     # an RFC hint: no such profile here
    ("bogus", {}, E.UsageError),
]


def _in_process(backend: str) -> list[BaseException]:
    st = SessionState(backend, name="inproc")
    try:
        for op, args in STEPS:
            execute(st, op, args)
        out = []
        for op, args, _ in FAILING:
            with pytest.raises(E.UffdctlError) as ei:
                execute(st, op, args)
            out.append(ei.value)
        return out
    finally:
        st.close()


def _through_session(backend: str, tmp_path, monkeypatch) -> list[BaseException]:
    monkeypatch.setenv("UFFDCTL_RUNTIME_DIR", str(tmp_path / "rt"))
    client.start("errs", backend)
    try:
        for op, args in STEPS:
            client.call("errs", op, args, timeout=30)
        out = []
        for op, args, cls in FAILING:
            try:
                client.call("errs", op, args, timeout=30)
            except cls as e:                  # the point: the class itself, not a generic remote error
                out.append(e)
            else:
                pytest.fail(f"{op} {args} did not raise {cls.__name__} through the session")
        return out
    finally:
        client.stop("errs")


@pytest.mark.parametrize("backend", ["emu", "kernel"])
def test_except_page_exists_works_through_a_session(backend, tmp_path, monkeypatch):
    if backend == "kernel" and _kernel_reason():
        require_kernel(_kernel_reason())
    local = _in_process(backend)
    remote = _through_session(backend, tmp_path, monkeypatch)
    for (op, args, cls), a, b in zip(FAILING, local, remote):
        assert isinstance(a, cls) and isinstance(b, cls), (op, args, a, b)
        assert (type(a), a.exit_code, getattr(a, "errno", None), getattr(a, "ioctl", None),
                getattr(a, "done", None)) == \
               (type(b), b.exit_code, getattr(b, "errno", None), getattr(b, "ioctl", None), getattr(b, "done", None))
        if backend == "emu":          # the emulator places mappings the same way in every process
            assert str(a) == str(b)
    pe = remote[0]
    assert pe.errno == errno.EEXIST and pe.ioctl == "UFFDIO_COPY" and pe.done == -errno.EEXIST and pe.len == 4096
