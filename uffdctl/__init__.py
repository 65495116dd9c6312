"""uffdctl: poke userfaultfd and watch what the kernel does to page tables.

The public API, importable from here (each name is loaded on first use, so
``import uffdctl`` loads neither cffi nor a backend)::

    from uffdctl import open_backend, HandlerPolicy, PageExists, uapi

    b = open_backend("kernel")        # or "emu" (profile="5.19", soft_dirty=False), or "auto"

- :func:`open_backend` (uffdctl.registry): the one opener; ``b.selection`` says which backend opened and why
- the types (uffdctl.types): ``MemType``, ``Region``, ``UffdMsg``, ``HandlerPolicy``, the result dataclasses
- the errors (uffdctl.errors): ``UffdctlError`` and every class under it (``UffdError``, ``PageExists``,
  ``RetryLater``, ..., ``Unsupported``, ``NotModelled``, ``UsageError``, ``SessionGone``)
- the modules ``uapi`` (kernel names and values), ``pagemap``, ``ops``

Layers, bottom to top (imports flow downwards only; the README's layer table is the rule and
tests/test_layers.py enforces it):

- ``uffdctl.uapi``, ``uffdctl.errors``      kernel names and values; the exception family (leaves)
- ``uffdctl.types``                         shared types, message decoding (imports only uapi)
- ``uffdctl._native``                       the compiled cffi module (uffdctl._uffd), loaded lazily
- ``uffdctl.backend``                       the interface both backends implement
- ``uffdctl.kernel`` + ``uffdctl.handler``  the real kernel;  ``uffdctl.emu``  the emulator
- ``uffdctl.ops``, ``uffdctl.pagemap``      services over the interface
- ``uffdctl.registry``                      the one opener of backends
- ``uffdctl.check``, ``uffdctl.session``, ``uffdctl.script``, ``uffdctl.repro``   the command table and its users
- ``uffdctl.cli``                           the command line (click)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODULES = ("uapi", "pagemap", "ops", "errors", "types", "backend", "registry")
_TYPES = ("MemType", "Region", "UffdMsg", "UffdioApi", "AccessResult", "ScanResult", "HandlerPolicy",
          "HandledEvent", "SoftDirtyProbe", "BackendSelection", "PAGE_SIZE", "HPAGE_SIZE")
_ERRORS = ("UffdctlError", "UffdError", "PageExists", "RetryLater", "InvalidArgument", "NotFound", "BadAddress",
           "Busy", "PermissionDenied", "MmGone", "OutOfMemory", "Unsupported", "BackendUnavailable",
           "FeatureMissing", "NotModelled", "UsageError", "ProtocolError", "SessionGone", "RuntimeDirError",
           "ScriptError", "RemoteError")
_WHERE = {"open_backend": "registry", "Backend": "backend", "Uffd": "backend",
          **{n: "types" for n in _TYPES}, **{n: "errors" for n in _ERRORS}}

__all__ = sorted(("__version__",) + _MODULES + tuple(_WHERE))


def __getattr__(name: str):
    if name in _MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
    elif name in _WHERE:
        mod = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = mod
    return mod


def __dir__():
    return __all__
