"""scripts/vmtest: boot a stock distribution kernel under QEMU and run uffdctl's tests in it.

The host (6.18) has no CONFIG_MEM_SOFT_DIRTY; the distribution's generic kernels
have it.  This package fetches one (``apt-get download``), builds a tiny busybox
initramfs that mounts the host's ``/`` read-only over virtio-9p with a tmpfs
overlay, boots it (PVH ``vmlinux`` entry, TCG unless KVM really works), runs a
command in the chroot with the checkout and its venv at their host paths, streams
its output over a virtio-serial port and returns its exit status.

Modules, in layering order:

- ``host``       what the host has: tools, apt, accelerators; installs what is missing
- ``kernelpkg``  choose, download, unpack and cache a ``linux-image-*-amd64`` package
- ``initramfs``  newc cpio writer and the guest's ``/init``
- ``qemu``       one QEMU run: command line, streaming, timeout, no process left behind
- ``matrix``     the kernel matrix: the same selection in guests and on the host, one table
- ``cli``        the command line (``scripts/vmtest --help``)

Only the standard library is used, so the script runs before any venv exists.
"""


class Unavailable(Exception):
    """vmtest cannot run here; the message says why and what cures it (exit status 4)."""

    exit_code = 4
