"""libc calls the compiled helpers do not wrap (msync, mlock2, SysV shm, swapon, statfs), through cffi's ABI mode.

cffi releases the GIL around every call, so an ``mlock`` that faults in registered
memory blocks without the GIL, as the accesses do.  Each wrapper returns the
call's value or ``-errno``.
"""
from __future__ import annotations

import cffi

_ffi = cffi.FFI()
_ffi.cdef("""
int msync(void *addr, size_t len, int flags);
int mlock2(const void *addr, size_t len, unsigned int flags);
int munlock(const void *addr, size_t len);
int shmget(int key, size_t size, int shmflg);
void *shmat(int shmid, const void *shmaddr, int shmflg);
int shmctl(int shmid, int cmd, void *buf);
int swapon(const char *path, int swapflags);
int swapoff(const char *path);
int statfs(const char *path, void *buf);
long syscall(long number, ...);
""")
_lib = None

IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0
SHM_HUGETLB, SHM_RDONLY = 0o4000, 0o10000


def lib():
    global _lib
    if _lib is None:
        _lib = _ffi.dlopen(None)
    return _lib


def _ret(r: int) -> int:
    return -_ffi.errno if r < 0 else r


def msync(addr: int, len: int, flags: int) -> int:
    return _ret(lib().msync(_ffi.cast("void *", addr), len, flags))


def mlock2(addr: int, len: int, flags: int) -> int:
    return _ret(lib().mlock2(_ffi.cast("void *", addr), len, flags))


def munlock(addr: int, len: int) -> int:
    return _ret(lib().munlock(_ffi.cast("void *", addr), len))


def shmget(size: int, hugetlb: bool) -> int:
    return _ret(lib().shmget(IPC_PRIVATE, size, IPC_CREAT | 0o600 | (SHM_HUGETLB if hugetlb else 0)))


def shmat(shmid: int, addr: int, readonly: bool) -> int:
    p = lib().shmat(shmid, _ffi.cast("void *", addr), SHM_RDONLY if readonly else 0)
    a = int(_ffi.cast("intptr_t", p))
    return -_ffi.errno if a == -1 else a


def shm_rmid(shmid: int) -> int:
    return _ret(lib().shmctl(shmid, IPC_RMID, _ffi.NULL))


SYS_move_pages = 279  # x86-64


def move_pages_here(addr: int) -> int:
    """move_pages(2) of one page of ours to the node it is on: nothing moves, but the kernel drains every
    CPU's LRU folio batches first (do_pages_move() -> lru_cache_disable()).  Returns 0 or -errno."""
    f = _ffi
    pages = f.new("void *[1]", [f.cast("void *", addr)])
    status = f.new("int[1]", [-1])
    r = lib().syscall(SYS_move_pages, f.cast("int", 0), f.cast("unsigned long", 1), pages, f.NULL, status,
                      f.cast("int", 0))
    if r < 0:
        return -f.errno
    if status[0] < 0:
        return status[0]
    nodes = f.new("int[1]", [status[0]])
    r = lib().syscall(SYS_move_pages, f.cast("int", 0), f.cast("unsigned long", 1), pages, nodes, status,
                      f.cast("int", 0))
    return -f.errno if r < 0 else 0


def swapon(path: str, flags: int = 0) -> int:
    return _ret(lib().swapon(path.encode(), flags))


def swapoff(path: str) -> int:
    return _ret(lib().swapoff(path.encode()))


TMPFS_MAGIC, RAMFS_MAGIC, OVERLAYFS_MAGIC = 0x01021994, 0x858458F6, 0x794C7630   # include/uapi/linux/magic.h


def statfs_type(path: str) -> int:
    """statfs(2) ``f_type`` of the filesystem ``path`` is on (its superblock magic), or -errno."""
    buf = _ffi.new("long[16]")            # struct statfs: f_type first (__fsword_t), 120 bytes on x86-64
    r = lib().statfs(path.encode(), buf)
    return -_ffi.errno if r < 0 else buf[0]


def overlay_upperdir(path: str) -> str | None:
    """The upperdir of the overlay mount ``path`` is on (its super options in /proc/self/mountinfo), or None."""
    import os
    real, best, upper = os.path.realpath(path), "", None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        mnt, fields = pre.split()[4].replace("\\040", " "), post.split()
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best = mnt
            opts = fields[2].split(",") if fields[:1] == ["overlay"] and len(fields) > 2 else []
            upper = next((o[9:] for o in opts if o.startswith("upperdir=")), None)
    return upper


def on_tmpfs(path: str) -> bool:
    """``path`` is on tmpfs or ramfs: a file there is shmem (shmem_file_operations), not page cache of a disk.

    On an overlay a file is made in (or copied up to) the upper layer, and ovl_mmap() maps that real file
    (vma_set_file(vma, realfile); call_mmap()): on a tmpfs upper layer its VMA is vma_is_shmem() -- the
    scripts/vmtest guest's /var/tmp is such an overlay.  An upper layer this mount namespace cannot reach
    counts as a disk."""
    t = statfs_type(path)
    if t == OVERLAYFS_MAGIC:
        upper = overlay_upperdir(path)
        t = statfs_type(upper) if upper else -1
    return t in (TMPFS_MAGIC, RAMFS_MAGIC)
