"""Build uffdctl._uffd (cffi API mode, compiled at install time).

Not shipped and never imported at run time (as cryptography keeps _cffi_src
out of its wheel).  The preamble is the project's own uapi header plus the C
helpers; the build host's <linux/userfaultfd.h> is never included.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_read("uffd_cdef.h"))
ffibuilder.set_source(
    "uffdctl._uffd",
    "#ifndef _GNU_SOURCE\n#define _GNU_SOURCE\n#endif\n" '#include "uffd_uapi.h"\n' + _read("uffdctl_helpers.c") + _read("uffdctl_proc.c"),
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
