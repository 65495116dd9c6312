"""The userfaultfd / PAGEMAP_SCAN / pagemap uapi as plain Python values.

Kernel names, kernel values (include/uapi/linux/userfaultfd.h, include/uapi/linux/fs.h,
fs/proc/task_mmu.c).  Pure Python so the emulator and ``--help`` need no compiled
module; tests/test_bindings.py checks every value here against uffdctl._uffd and
against the spec.
"""
from __future__ import annotations

import enum

PAGE_SIZE = 4096
PAGE_SHIFT = 12

UFFD_API = 0xAA
UFFDIO = 0xAA
USERFAULTFD_IOC = 0xAA
UFFD_USER_MODE_ONLY = 1

O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000

# ioctl numbers (x86-64 _IOC encoding)
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _IOWR(typ, nr, size):
    return _IOC(_IOC_READ | _IOC_WRITE, typ, nr, size)


def _IOR(typ, nr, size):
    return _IOC(_IOC_READ, typ, nr, size)


_UFFDIO_REGISTER = 0x00
_UFFDIO_UNREGISTER = 0x01
_UFFDIO_WAKE = 0x02
_UFFDIO_COPY = 0x03
_UFFDIO_ZEROPAGE = 0x04
_UFFDIO_MOVE = 0x05
_UFFDIO_WRITEPROTECT = 0x06
_UFFDIO_CONTINUE = 0x07
_UFFDIO_POISON = 0x08
_UFFDIO_API = 0x3F

# struct sizes (x86-64)
SIZEOF = {
    "uffdio_api": 24,
    "uffdio_range": 16,
    "uffdio_register": 32,
    "uffdio_copy": 40,
    "uffdio_zeropage": 32,
    "uffdio_writeprotect": 24,
    "uffdio_continue": 32,
    "uffdio_poison": 32,
    "uffdio_move": 40,
    "uffd_msg": 32,
    "page_region": 24,
    "pm_scan_arg": 96,
}

USERFAULTFD_IOC_NEW = _IOC(_IOC_NONE, USERFAULTFD_IOC, 0x00, 0)
UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, 24)
UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, 32)
UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, 16)
UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO_WAKE, 16)
UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO_COPY, 40)
UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, 32)
UFFDIO_MOVE = _IOWR(UFFDIO, _UFFDIO_MOVE, 40)
UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, 24)
UFFDIO_CONTINUE = _IOWR(UFFDIO, _UFFDIO_CONTINUE, 32)
UFFDIO_POISON = _IOWR(UFFDIO, _UFFDIO_POISON, 32)
PROCFS_IOCTL_MAGIC = ord("f")
PAGEMAP_SCAN = _IOWR(PROCFS_IOCTL_MAGIC, 16, 96)

IOCTL_NUMBERS = {
    "UFFDIO_API": UFFDIO_API,
    "UFFDIO_REGISTER": UFFDIO_REGISTER,
    "UFFDIO_UNREGISTER": UFFDIO_UNREGISTER,
    "UFFDIO_WAKE": UFFDIO_WAKE,
    "UFFDIO_COPY": UFFDIO_COPY,
    "UFFDIO_ZEROPAGE": UFFDIO_ZEROPAGE,
    "UFFDIO_MOVE": UFFDIO_MOVE,
    "UFFDIO_WRITEPROTECT": UFFDIO_WRITEPROTECT,
    "UFFDIO_CONTINUE": UFFDIO_CONTINUE,
    "UFFDIO_POISON": UFFDIO_POISON,
    "USERFAULTFD_IOC_NEW": USERFAULTFD_IOC_NEW,
    "PAGEMAP_SCAN": PAGEMAP_SCAN,
}


class _Flag(enum.IntFlag):
    """IntFlag whose str() is the kernel's spelling, e.g. UFFD_FEATURE_MOVE|…"""

    @classmethod
    def decode(cls, value: int) -> list[str]:
        prefix = _PREFIX.get(cls, "")
        names = [prefix + m.name for m in cls if m.value and value & m.value == m.value]
        rest = value & ~sum(m.value for m in cls)
        if rest:
            names.append(hex(rest))
        return names

    @classmethod
    def parse(cls, text: str) -> int:
        """'missing,wp' or 'MISSING|WP' or 'UFFDIO_REGISTER_MODE_WP' or '0x3' -> int."""
        value = 0
        for tok in text.replace("|", ",").split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                value |= int(tok, 0)
                continue
            except ValueError:
                pass
            key = tok.upper().replace("-", "_")
            if key.startswith(_PREFIX.get(cls, "")):
                key = key[len(_PREFIX.get(cls, "")):]
            try:
                value |= cls[key].value
            except KeyError:
                valid = ", ".join(m.name.lower() for m in cls)
                raise ValueError(f"unknown {cls.__name__} {tok!r} (valid: {valid})") from None
        return value


_PREFIX: dict = {}  # class -> the kernel's name prefix


class Feature(_Flag):
    PAGEFAULT_FLAG_WP = 1 << 0
    EVENT_FORK = 1 << 1
    EVENT_REMAP = 1 << 2
    EVENT_REMOVE = 1 << 3
    MISSING_HUGETLBFS = 1 << 4
    MISSING_SHMEM = 1 << 5
    EVENT_UNMAP = 1 << 6
    SIGBUS = 1 << 7
    THREAD_ID = 1 << 8
    MINOR_HUGETLBFS = 1 << 9
    MINOR_SHMEM = 1 << 10
    EXACT_ADDRESS = 1 << 11
    WP_HUGETLBFS_SHMEM = 1 << 12
    WP_UNPOPULATED = 1 << 13
    POISON = 1 << 14
    WP_ASYNC = 1 << 15
    MOVE = 1 << 16


_PREFIX[Feature] = "UFFD_FEATURE_"
FEATURES_6_18 = 0x1FFFF


class RegisterMode(_Flag):
    MISSING = 1 << 0
    WP = 1 << 1
    MINOR = 1 << 2


_PREFIX[RegisterMode] = "UFFDIO_REGISTER_MODE_"


class CopyMode(_Flag):
    DONTWAKE = 1 << 0
    WP = 1 << 1


_PREFIX[CopyMode] = "UFFDIO_COPY_MODE_"


class ZeropageMode(_Flag):
    DONTWAKE = 1 << 0


_PREFIX[ZeropageMode] = "UFFDIO_ZEROPAGE_MODE_"


class WriteprotectMode(_Flag):
    WP = 1 << 0
    DONTWAKE = 1 << 1


_PREFIX[WriteprotectMode] = "UFFDIO_WRITEPROTECT_MODE_"


class ContinueMode(_Flag):
    DONTWAKE = 1 << 0
    WP = 1 << 1


_PREFIX[ContinueMode] = "UFFDIO_CONTINUE_MODE_"


class PoisonMode(_Flag):
    DONTWAKE = 1 << 0


_PREFIX[PoisonMode] = "UFFDIO_POISON_MODE_"


class MoveMode(_Flag):
    DONTWAKE = 1 << 0
    ALLOW_SRC_HOLES = 1 << 1


_PREFIX[MoveMode] = "UFFDIO_MOVE_MODE_"


class Ioctl(_Flag):
    """Bits of uffdio_api.ioctls / uffdio_register.ioctls: 1 << _UFFDIO_*."""

    REGISTER = 1 << _UFFDIO_REGISTER
    UNREGISTER = 1 << _UFFDIO_UNREGISTER
    WAKE = 1 << _UFFDIO_WAKE
    COPY = 1 << _UFFDIO_COPY
    ZEROPAGE = 1 << _UFFDIO_ZEROPAGE
    MOVE = 1 << _UFFDIO_MOVE
    WRITEPROTECT = 1 << _UFFDIO_WRITEPROTECT
    CONTINUE = 1 << _UFFDIO_CONTINUE
    POISON = 1 << _UFFDIO_POISON
    API = 1 << _UFFDIO_API


_PREFIX[Ioctl] = "_UFFDIO_"

UFFD_API_IOCTLS = Ioctl.REGISTER | Ioctl.UNREGISTER | Ioctl.API
UFFD_API_RANGE_IOCTLS = (Ioctl.WAKE | Ioctl.COPY | Ioctl.ZEROPAGE | Ioctl.MOVE
                         | Ioctl.WRITEPROTECT | Ioctl.CONTINUE | Ioctl.POISON)
UFFD_API_RANGE_IOCTLS_BASIC = (Ioctl.WAKE | Ioctl.COPY | Ioctl.WRITEPROTECT
                               | Ioctl.CONTINUE | Ioctl.POISON)


class Event(enum.IntEnum):
    PAGEFAULT = 0x12
    FORK = 0x13
    REMAP = 0x14
    REMOVE = 0x15
    UNMAP = 0x16


class PagefaultFlag(_Flag):
    WRITE = 1 << 0
    WP = 1 << 1
    MINOR = 1 << 2


_PREFIX[PagefaultFlag] = "UFFD_PAGEFAULT_FLAG_"


class PageCategory(_Flag):
    """PAGEMAP_SCAN categories (PAGE_IS_*)."""

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7
    GUARD = 1 << 8


_PREFIX[PageCategory] = "PAGE_IS_"
PM_SCAN_CATEGORIES_6_18 = 0x1FF

PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1

# /proc/PID/pagemap entry bits (fs/proc/task_mmu.c)
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# /proc/PID/clear_refs values (enum clear_refs_types)
CLEAR_REFS_ALL = 1
CLEAR_REFS_ANON = 2
CLEAR_REFS_MAPPED = 3
CLEAR_REFS_SOFT_DIRTY = 4
CLEAR_REFS_MM_HIWATER_RSS = 5

# mmap / madvise (asm-generic / x86-64)
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_HUGETLB, MAP_FIXED_NOREPLACE = 0x4000, 0x40000, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
MADV_DONTNEED, MADV_FREE, MADV_REMOVE = 4, 8, 9
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 102, 103
# mmops: the rest of the mm surface (asm-generic/mman-common.h)
PROT_EXEC = 4
MADV_WILLNEED, MADV_HUGEPAGE, MADV_COLD, MADV_PAGEOUT = 3, 14, 20, 21
MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_COLLAPSE = 22, 23, 25
MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4
MLOCK_ONFAULT = 1
MFD_CLOEXEC, MFD_HUGETLB = 0x1, 0x4
# the hugetlb page size of a mapping / memfd: log2(size) << 26 (MAP_HUGE_2MB, MAP_HUGE_1GB; MFD_HUGE_*)
MAP_HUGE_SHIFT = MFD_HUGE_SHIFT = 26

# where a fault message's event name comes from
EVENT_NAMES = {e.value: e.name.lower() for e in Event}


# -- the 2022 access/write hint RFC (Nadav Amit; never merged) ----------------------------------------------
# uffdctl-private values: the emulator's rfc-hints profiles accept them, and so does a kernel built with
# patches/6.1/rfc-hints*.patch (scripts/vmtest); every released kernel answers EINVAL.
UFFDIO_COPY_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_COPY_MODE_WRITE_LIKELY = 1 << 3
UFFDIO_ZEROPAGE_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_ZEROPAGE_MODE_WRITE_LIKELY = 1 << 3
UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY = 1 << 3
RFC_HINT_IOCTLS = ("COPY", "ZEROPAGE", "WRITEPROTECT")


def rfc_hint_modes(ioctl: str) -> dict[str, int]:
    """The RFC hint bits of UFFDIO_<ioctl> by name (access_likely, write_likely); {} for other ioctls."""
    if ioctl not in RFC_HINT_IOCTLS:
        return {}
    return {h: globals()[f"UFFDIO_{ioctl}_MODE_{h.upper()}"] for h in ("access_likely", "write_likely")}
