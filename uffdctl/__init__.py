"""uffdctl: poke userfaultfd and watch what the kernel does to page tables.

Layers (thin, in this order):

- ``uffdctl.uapi``     kernel names and values, pure Python
- ``uffdctl._native``  the compiled cffi module (uffdctl._uffd), loaded lazily
- ``uffdctl.backend``  the interface both backends implement
- ``uffdctl.kernel``   the real kernel;  ``uffdctl.emu``  the emulator
- ``uffdctl.ops``      policy: resume on EAGAIN, wake on EEXIST
- ``uffdctl.cli``      the command line

Importing the package loads neither cffi nor a backend.
"""
__version__ = "0.1.0"
