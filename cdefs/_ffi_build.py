"""Build uffdctl._uffd (cffi API mode, compiled at install time).

Not shipped and never imported at run time (as cryptography keeps _cffi_src
out of its wheel).  The preamble is the project's own uapi header plus the
helpers' shared header; the helpers are separate C files, one per concern
(uffdctl_helpers.h lists them), compiled and linked into the same module.  The
build host's <linux/userfaultfd.h> is never included.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

# One file per concern; uffdctl_helpers.h is what they share and what Python's cdef mirrors.
HELPERS = ("uffdctl_sys.c", "uffdctl_access.c", "uffdctl_handler.c", "uffdctl_pagemap.c",
           "uffdctl_stress.c", "uffdctl_bench.c",
           "uffdctl_proc.c")  # processes of a session (proc)


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _source(name):
    # setuptools wants sources relative to setup.py (the working directory of a build);
    # ffibuilder.compile() changes directory, so it gets absolute paths.
    path = os.path.join(HERE, name)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") or __name__ == "__main__" else rel


ffibuilder = FFI()
ffibuilder.cdef(_read("uffd_cdef.h"))
ffibuilder.set_source(
    "uffdctl._uffd",
    "#ifndef _GNU_SOURCE\n#define _GNU_SOURCE\n#endif\n" '#include "uffd_uapi.h"\n#include "uffdctl_helpers.h"\n#include "uffdctl_proc.h"\n',
    sources=[_source(n) for n in HELPERS],
    depends=[_source(n) for n in ("uffd_uapi.h", "uffdctl_helpers.h", "uffdctl_proc.h", "uffdctl_readfirst.h")],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-Werror=implicit-function-declaration"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
