"""Build hook: compiles uffdctl._uffd with cffi (API mode) where it can.

The extension is optional: where it cannot be built (not Linux, no compiler)
the package still installs, and uffdctl says that only the emulation backend
is available.
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
ext_modules = []
if sys.platform.startswith("linux") and os.environ.get("UFFDCTL_NO_EXTENSION") != "1":
    try:
        sys.path.insert(0, os.path.join(HERE, "cdefs"))
        from _ffi_build import ffibuilder

        ext = ffibuilder.distutils_extension(tmpdir=os.path.join("build", "cffi"))
        ext.optional = True
        ext_modules.append(ext)
    except Exception as e:  # cffi or a compiler missing: emulator only
        print(f"uffdctl: not building the native extension ({e}); only the emulation backend will be available",
              file=sys.stderr)

setup(ext_modules=ext_modules)
