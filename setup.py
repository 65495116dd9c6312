"""Build hook: compiles uffdctl._uffd with cffi (API mode) where it can.

The extension is optional: where it cannot be built (not Linux, no compiler)
the package still installs, and uffdctl says that only the emulation backend
is available.
"""
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ext_modules = []
if sys.platform.startswith("linux") and os.environ.get("UFFDCTL_NO_EXTENSION") != "1":
    try:
        sys.path.insert(0, os.path.join(HERE, "cdefs"))
        from _ffi_build import ffibuilder

        ext = ffibuilder.distutils_extension(tmpdir=os.path.join("build", "cffi"))
        ext.optional = True
        ext_modules.append(ext)
        from setuptools import Extension

        # KernelUffd's per-call fast path (cdefs/uffdctl_fastpath.c); optional: the cffi wrappers serve without it
        ext_modules.append(Extension("uffdctl._fastpath", ["cdefs/uffdctl_fastpath.c"], include_dirs=["cdefs"],
                                     depends=["cdefs/uffd_uapi.h", "cdefs/uffdctl_readfirst.h",
                                              "cdefs/uffdctl_slotoff.h"], extra_compile_args=["-O2", "-Wall"],
                                     optional=True))
        # the emulator's per-fault objects made by slot offset (cdefs/uffdctl_slots.c); optional: the Python
        # constructors serve without it
        ext_modules.append(Extension("uffdctl._slots", ["cdefs/uffdctl_slots.c"], include_dirs=["cdefs"],
                                     depends=["cdefs/uffdctl_slotoff.h"], extra_compile_args=["-O2", "-Wall"],
                                     optional=True))
    except Exception as e:  # cffi or a compiler missing: emulator only
        print(f"uffdctl: not building the native extension ({e}); only the emulation backend will be available",
              file=sys.stderr)



class build_py_with_help_index(build_py):
    """Also write uffdctl/cli/help-index.marshal: the command listing of ``uffdctl --help``, so that it
    need not load the command table (uffdctl.cli.helpindex).  Built by importing the package just
    copied into build_lib; where that fails (click absent from an isolated build) --help builds the
    listing itself, as before."""

    def run(self):
        super().run()
        out = os.path.abspath(os.path.join(self.build_lib, "uffdctl", "cli", "help-index.marshal"))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from uffdctl.cli.helpindex import write; "
                "write(sys.argv[2])")
        r = subprocess.run([sys.executable, "-c", code, os.path.abspath(self.build_lib), out], capture_output=True,
                           text=True, cwd=self.build_lib, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        if r.returncode != 0:
            print(f"uffdctl: no --help index ({r.stderr.strip().splitlines()[-1:]}); --help builds its listing "
                  "each time", file=sys.stderr)


setup(ext_modules=ext_modules, cmdclass={"build_py": build_py_with_help_index})
