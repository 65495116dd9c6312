"""Lazy access to the compiled cffi module uffdctl._uffd."""
from __future__ import annotations

import functools
import sys

from .errors import BackendUnavailable


@functools.lru_cache(maxsize=None)
def load():
    """Return (ffi, lib); raise BackendUnavailable saying why the native module is missing."""
    if not sys.platform.startswith("linux"):
        raise BackendUnavailable(f"not Linux ({sys.platform}): only the emulation backend is available",
                                 "use --backend emu")
    try:
        from ._uffd import ffi, lib  # type: ignore[import-not-found]
    except ImportError as e:
        raise BackendUnavailable(
            f"native extension uffdctl._uffd is not built ({e}): only the emulation backend is available",
            "reinstall with a C compiler and cffi present, or use --backend emu") from None
    return ffi, lib


def available() -> tuple[bool, str]:
    try:
        load()
        return True, "uffdctl._uffd loaded"
    except BackendUnavailable as e:
        return False, str(e)
