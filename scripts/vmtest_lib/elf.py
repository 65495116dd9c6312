"""Just enough ELF64 to read a kernel module's .modinfo and tell a static binary."""
from __future__ import annotations

import struct

ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3


def _header(data: bytes):
    if data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    # e_phoff, e_shoff at 0x20/0x28; e_phentsize..e_shstrndx at 0x36
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return phoff, phentsize, phnum, shoff, shentsize, shnum, shstrndx


def section(data: bytes, name: str) -> bytes | None:
    """Contents of the section called ``name`` (None if absent)."""
    _, _, _, shoff, shentsize, shnum, shstrndx = _header(data)

    def sh(i):  # sh_name, sh_offset, sh_size
        base = shoff + i * shentsize
        (nm,) = struct.unpack_from("<I", data, base)
        off, size = struct.unpack_from("<QQ", data, base + 0x18)
        return nm, off, size

    _, stroff, _ = sh(shstrndx)
    want = name.encode()
    for i in range(shnum):
        nm, off, size = sh(i)
        end = data.index(b"\0", stroff + nm)
        if data[stroff + nm:end] == want:
            return data[off:off + size]
    return None


def modinfo(data: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a module's .modinfo (last one wins, as modinfo -F shows the first)."""
    raw = section(data, ".modinfo") or b""
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.decode(errors="replace").split("=", 1)
            out.setdefault(k, v)
    return out


def is_static(path: str) -> bool:
    """True when the executable has no PT_INTERP (no dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
        phoff, phentsize, phnum, *_ = _header(head)
    except (OSError, ValueError, struct.error):
        return False
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 4 > len(head):
            return False
        (p_type,) = struct.unpack_from("<I", head, base)
        if p_type == PT_INTERP:
            return False
    return True
