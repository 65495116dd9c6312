"""Kernels that are not Debian packages: an image file, an ``O=`` build tree, a ``vmtest build`` result.

Each becomes a :class:`~.kernelpkg.Kernel` in the cache (``kernels/local_HASH/``), keyed by the image's
contents, so the initramfs is built once per kernel:

- ``--kernel-image PATH`` (``--modules DIR``): a ``vmlinux`` (booted through its PVH entry note) or a
  ``bzImage``; its release is read from the image, its config from an embedded ``IKCONFIG``, a
  ``config-RELEASE``, ``.config`` or ``config`` next to it, or nowhere (then vmtest cannot tell whether soft-dirty is
  configured, and says so);
- ``--kernel-dir BUILD``: ``BUILD/vmlinux`` when it has the PVH note, else ``arch/x86/boot/bzImage``;
  ``.config``; ``include/config/kernel.release``; the modules listed in ``modules.order``;
- ``--kernel built:NAME``: the tree ``scripts/vmtest build`` left, labelled with its patches.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import struct

from . import Unavailable
from .elf import ELF_MAGIC
from .host import log
from .kernelpkg import (REQUIRED_CONFIG, ROOT_MODULES, Kernel, extract_vmlinux, module_closure,
                        module_name, read_config, read_module)

XEN_ELFNOTE_PHYS32_ENTRY = 18   # the PVH entry point note (name "Xen"), emitted with CONFIG_PVH
PT_NOTE = 4
IKCFG_ST, IKCFG_ED = b"IKCFG_ST", b"IKCFG_ED"
KEEP_CONFIG = set(REQUIRED_CONFIG) | {"CONFIG_MEM_SOFT_DIRTY", "CONFIG_PVH", "CONFIG_PTE_MARKER_UFFD_WP",
                                      "CONFIG_HAVE_ARCH_USERFAULTFD_WP", "CONFIG_CHECKPOINT_RESTORE",
                                      "CONFIG_MODULES", "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_HUGETLBFS"}


# -- reading images ---------------------------------------------------------------------------

def has_pvh_note(data: bytes) -> bool:
    """Whether an ELF64 vmlinux carries XEN_ELFNOTE_PHYS32_ENTRY (QEMU's -kernel boots it directly)."""
    if data[:4] != ELF_MAGIC or len(data) < 64:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type, = struct.unpack_from("<I", data, base)
        if p_type != PT_NOTE:
            continue
        off, = struct.unpack_from("<Q", data, base + 8)
        size, = struct.unpack_from("<Q", data, base + 32)
        pos, end = off, off + size
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def is_bzimage(data: bytes) -> bool:
    return len(data) > 0x210 and data[0x202:0x206] == b"HdrS"


def image_release(data: bytes) -> str | None:
    """``uname -r`` of a bzImage (its header's kernel_version string) or a vmlinux (the linux_banner)."""
    if is_bzimage(data):
        ptr, = struct.unpack_from("<H", data, 0x20E)
        if ptr:
            s = data[ptr + 0x200:ptr + 0x200 + 256].split(b"\0")[0].decode(errors="replace")
            if s.split():
                return s.split()[0]
    m = re.search(rb"Linux version (\S+) \(", data)
    return m.group(1).decode(errors="replace") if m else None


def embedded_config(data: bytes) -> dict[str, str] | None:
    """The config of a kernel built with CONFIG_IKCONFIG (gzip between IKCFG_ST and IKCFG_ED)."""
    i = data.find(IKCFG_ST)
    if i < 0:
        return None
    j = data.find(IKCFG_ED, i)
    try:
        text = gzip.decompress(data[i + len(IKCFG_ST):j]).decode(errors="replace")
    except (OSError, EOFError):
        return None
    return {m.group(1): m.group(2) for m in re.finditer(r"^(CONFIG_\w+)=(.*)$", text, re.M)}


# -- modules ----------------------------------------------------------------------------------

def modules_from_dir(moddir: str, release: str | None) -> tuple[dict[str, str], set[str]]:
    """(name -> .ko path, built-in names) of a ``--modules DIR``: a ``lib/modules/RELEASE`` directory,
    or a root that contains one (``make modules_install INSTALL_MOD_PATH=DIR``)."""
    if not os.path.isdir(moddir):
        raise ValueError(f"--modules {moddir}: not a directory")
    for cand in ([os.path.join(moddir, "lib/modules", release), os.path.join(moddir, release)] if release else []):
        if os.path.isdir(cand):
            moddir = cand
            break
    index, builtin = {}, set()
    for root, _dirs, files in os.walk(moddir):
        for fn in files:
            name = module_name(fn)
            if name:
                index.setdefault(name, os.path.join(root, fn))
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            builtin = {module_name(os.path.basename(x.strip())) for x in f if x.strip()}
    except OSError:
        pass
    return index, builtin


def modules_from_build(build: str) -> dict[str, str]:
    """name -> .ko of an ``O=`` tree, from its ``modules.order`` (``fs/9p/9p.ko``; 6.2+ lists ``.o``)."""
    index = {}
    try:
        with open(os.path.join(build, "modules.order")) as f:
            lines = [x.strip() for x in f if x.strip()]
    except OSError:
        return index
    for rel in lines:
        ko = re.sub(r"\.o$", ".ko", rel)
        path = os.path.join(build, ko)
        if os.path.exists(path):
            index[module_name(os.path.basename(ko))] = path
    return index


def builtin_from_config(config: dict[str, str]) -> set[str]:
    """The guest modules a config builds in (so the initramfs needs no .ko for them)."""
    opts = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_console": "CONFIG_VIRTIO_CONSOLE",
            "9pnet_virtio": "CONFIG_NET_9P_VIRTIO", "9p": "CONFIG_9P_FS", "overlay": "CONFIG_OVERLAY_FS",
            "9pnet": "CONFIG_NET_9P", "virtio": "CONFIG_VIRTIO", "virtio_ring": "CONFIG_VIRTIO",
            "netfs": "CONFIG_NETFS_SUPPORT", "fscache": "CONFIG_FSCACHE"}
    return {m for m, o in opts.items() if config.get(o) == "y"}


# -- the cache entry --------------------------------------------------------------------------

def _store(cache: str, key: str, image_bytes: bytes, image_name: str, config_path: str | None,
           config: dict[str, str], index: dict[str, str], builtin: set[str], **fields) -> Kernel:
    dest = os.path.join(cache, "kernels", f"local_{key}")
    k = Kernel.load(dest)
    if k is not None:
        for name, v in fields.items():
            setattr(k, name, v)
        k.save()
        return k
    need = [m for m in ROOT_MODULES if m.replace("-", "_") not in builtin]
    order = []
    if need and index:
        order = module_closure(index, builtin, roots=need)
    elif need and config:
        missing = [o for o in REQUIRED_CONFIG if config.get(o) not in ("y", "m")]
        if missing:
            raise Unavailable(f"{fields.get('package')}: the guest needs {', '.join(missing)} (built in or as "
                              "modules); see scripts/vmtest config")
        raise Unavailable(f"{fields.get('package')}: {', '.join(need)} are modules (=m) in its config: pass "
                          "--modules DIR (or build them in: scripts/vmtest config)")
    staging = dest + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "modules"))
    with open(os.path.join(staging, image_name), "wb") as f:
        f.write(image_bytes)
    if config_path:
        shutil.copy(config_path, os.path.join(staging, "config"))
    files = []
    for name in order:
        with open(os.path.join(staging, "modules", f"{name}.ko"), "wb") as f:
            f.write(read_module(index[name]))
        files.append(f"{name}.ko")
    keep = {o: v for o, v in config.items() if o in KEEP_CONFIG}
    k = Kernel(dir=staging, image=image_name, modules=files, config=keep, **fields)
    k.save()
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(staging, dest)
    k.dir = dest
    return k


def _bootable(path: str, data: bytes, config: dict[str, str]) -> tuple[bytes, str]:
    """(image bytes, "vmlinux"|"vmlinuz"): a PVH vmlinux as is, a bzImage decompressed when its payload has
    the PVH note (twice as fast under TCG), else the bzImage."""
    if data[:4] == ELF_MAGIC:
        if not has_pvh_note(data):
            raise Unavailable(f"{path}: this vmlinux has no PVH entry note (CONFIG_PVH off), so QEMU cannot boot "
                              "it directly: pass its arch/x86/boot/bzImage instead")
        return data, "vmlinux"
    if not is_bzimage(data):
        raise ValueError(f"{path}: neither an ELF vmlinux nor a bzImage")
    inner = extract_vmlinux(data)
    if inner is not None and has_pvh_note(inner):
        return inner, "vmlinux"
    return data, "vmlinuz"


def from_image(path: str, cache: str, modules: str | None = None) -> Kernel:
    """``--kernel-image PATH`` [``--modules DIR``]."""
    if not os.path.isfile(path):
        raise ValueError(f"--kernel-image {path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    release = image_release(data)
    config, config_path = embedded_config(data) or {}, None
    here = os.path.dirname(os.path.abspath(path))
    for cand in ([os.path.join(here, f"config-{release}")] if release else []) + [os.path.join(here, ".config"),
                                                                                     os.path.join(here, "config")]:
        if not config and os.path.isfile(cand):
            config, config_path = read_config(cand), cand
    image, name = _bootable(path, data, config)
    index, builtin = modules_from_dir(modules, release) if modules else ({}, set())
    builtin |= builtin_from_config(config)
    if not config and not index:
        builtin |= set(ROOT_MODULES)   # no way to know: assume built in; /init says so if 9p is missing
        log(f"{path}: no config found (no IKCONFIG, no config-{release}, .config or config beside it): assuming the "
            "guest drivers are built in and soft-dirty is unknown")
    key = hashlib.sha256(data + (modules or "").encode() + repr(sorted(config.items())).encode()).hexdigest()[:16]
    return _store(cache, key, image, name, config_path, config, index, builtin, package=f"image:{path}",
                  version=release or "?", release=release or "?", title=_title(release, "image"))


def from_build_dir(build: str, cache: str, title: str | None = None, **fields) -> Kernel:
    """``--kernel-dir BUILD``: an ``O=`` tree (or the source tree of an in-tree build)."""
    if not os.path.isdir(build):
        raise ValueError(f"--kernel-dir {build}: not a directory")
    cfg = os.path.join(build, ".config")
    if not os.path.isfile(cfg):
        raise ValueError(f"--kernel-dir {build}: no .config (not a kernel build tree)")
    config = read_config(cfg)
    try:
        with open(os.path.join(build, "include/config/kernel.release")) as f:
            release = f.read().strip()
    except OSError:
        raise ValueError(f"--kernel-dir {build}: no include/config/kernel.release (never built?)") from None
    vmlinux = os.path.join(build, "vmlinux")
    bz = os.path.join(build, "arch/x86/boot/bzImage")
    data = None
    if os.path.isfile(vmlinux):
        with open(vmlinux, "rb") as f:
            data = f.read()
        if not has_pvh_note(data):
            data = None
    if data is None:
        if not os.path.isfile(bz):
            raise Unavailable(f"--kernel-dir {build}: no vmlinux with a PVH note (CONFIG_PVH) and no "
                              "arch/x86/boot/bzImage: build one (make vmlinux with CONFIG_PVH=y, or make bzImage)")
        with open(bz, "rb") as f:
            data = f.read()
    image, name = _bootable(vmlinux if data[:4] == ELF_MAGIC else bz, data, config)
    index = modules_from_build(build)
    builtin = builtin_from_config(config)
    key = hashlib.sha256(image + repr(sorted(config.items())).encode()).hexdigest()[:16]
    return _store(cache, key, image, name, cfg, config, index, builtin, package=fields.pop("package", f"dir:{build}"),
                  version=release, release=release, title=title or _title(release, "dir"), **fields)


def from_build(b, cache: str) -> Kernel:
    """``--kernel built:NAME``: a :class:`~.build.Build`, labelled ``built:NAME``."""
    return from_build_dir(b.obj, cache, title=f"built:{b.name}", package=f"built:{b.name}",
                          patches=[p["name"] for p in b.patches], emu_profile=b.profile,
                          emu_switches=dict(b.switches), flips=dict(b.flips))


def _title(release: str | None, kind: str) -> str:
    m = re.match(r"\d+\.\d+(\.\d+)?", release or "")
    return f"{kind}:{release}" if release and not m else (f"{release} ({kind})" if release else kind)
