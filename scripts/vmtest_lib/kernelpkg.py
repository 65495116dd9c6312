"""Choose, download, unpack and cache a stock ``linux-image-*-amd64`` kernel.

Cache layout (``--cache``, default ``$XDG_CACHE_HOME/uffdctl-vmtest``)::

    debs/NAME_VERSION_amd64.deb          removed once unpacked
    kernels/NAME_VERSION/kernel.json     what follows, described
    kernels/NAME_VERSION/vmlinux         decompressed ELF, booted through its PVH entry
                        /vmlinuz         (only if the payload could not be decompressed)
                        /config
                        /modules/*.ko    9p, virtio, overlay and their dependencies, load order in kernel.json;
                                         virtio_blk and ext4 for the scratch disk (qemu.py) when shipped
                        /initramfs-*.cpio

Only the generic flavour can be used: the ``-cloud`` flavour has no 9p.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import asdict, dataclass, field

from . import Unavailable
from .elf import ELF_MAGIC, modinfo
from .host import log

# What the initramfs needs to reach the host's / and talk to the host.
ROOT_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")
# Loaded too when the package has them: CRIU 3.17 refuses to start without nf_tables (kerndat checks
# nftables set concatenation), and scripts/vmtest_lib/criu_demo.py runs CRIU in the 6.1 guest.
# libcrc32c (nf_tables' dependency) asks the crypto API for "crc32c" at load: a softdep, not in depends=;
# so does ext4 (metadata_csum), so crc32c_generic comes first.
# virtio_blk + ext4: the guest's scratch disk (an ext4 image the host made, mounted at /mnt/scratch): a disk
# filesystem for regular-file mappings and for swapfiles (swapon(2) refuses a file on overlayfs, 9p or tmpfs).
OPTIONAL_MODULES = ("crc32c_generic", "nf_tables", "virtio_blk", "ext4")
# Bumped when the set of unpacked modules changes: older cache entries are unpacked again.
LAYOUT = 3
# Config options without which the guest cannot work (y or m).
REQUIRED_CONFIG = ("CONFIG_NET_9P", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS", "CONFIG_OVERLAY_FS",
                   "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_DEVTMPFS", "CONFIG_USERFAULTFD")

# linux-image-6.1.0-56-amd64, linux-image-6.12.117+deb12-amd64 (not -cloud-, -rt-, -dbg, meta packages)
PKG_RE = re.compile(r"^linux-image-(\d+)\.(\d+)\.(\d+)(?:-(\d+))?(?:\+deb\d+)?-amd64$")

# Compressed payload magics in a bzImage, tried in this order.
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextlib.contextmanager
def locked(cache: str):
    """Serialise cache updates between concurrent vmtest runs (download, unpack, initramfs)."""
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_cache() -> str:
    return os.environ.get("UFFDCTL_VMTEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uffdctl-vmtest")


@dataclass
class Kernel:
    """An unpacked kernel ready to boot."""

    package: str
    version: str            # Debian package version (6.1.192-2)
    release: str            # uname -r (6.1.0-56-amd64)
    dir: str
    image: str              # file name in dir: vmlinux (PVH entry) or vmlinuz
    modules: list[str] = field(default_factory=list)   # file names in dir/modules, load order
    config: dict[str, str] = field(default_factory=dict)  # the options vmtest looks at
    # Kernels that are not Debian packages (localkernel.py): the column title, and for `vmtest build`
    # results the patches, the emulator twin (profile + switches) and the verdicts the patches flip.
    title: str = ""
    patches: list[str] = field(default_factory=list)
    emu_profile: str = ""
    emu_switches: dict[str, str] = field(default_factory=dict)
    flips: dict[str, str] = field(default_factory=dict)
    layout: int = 1           # LAYOUT of the unpacking that made this entry (packages only)

    @property
    def pvh(self) -> bool:
        return self.image == "vmlinux"

    @property
    def image_path(self) -> str:
        return os.path.join(self.dir, self.image)

    SCRATCH_NEEDS = (("CONFIG_VIRTIO_BLK", "virtio_blk"), ("CONFIG_EXT4_FS", "ext4"))

    def _full_config(self) -> dict[str, str]:
        path = os.path.join(self.dir, "config")
        return read_config(path) if os.path.exists(path) else self.config

    @property
    def scratch_disk(self) -> bool:
        """The guest can mount an ext4 virtio-blk disk: both built in (config y) or shipped here as modules."""
        return not self.scratch_reason

    @property
    def scratch_reason(self) -> str:
        """Why the guest cannot mount the scratch disk ("" when it can)."""
        cfg, why = self._full_config(), []
        for opt, mod in self.SCRATCH_NEEDS:
            v = cfg.get(opt)
            if v == "y" or (v == "m" and f"{mod}.ko" in self.modules):
                continue
            why.append(f"{opt}=m but no {mod}.ko in {self.dir}" if v == "m" else f"{opt} is not set")
        return "; ".join(why)

    @property
    def scratch_expected(self) -> bool:
        """Its config has what the scratch disk needs (y or m): a guest of it without the disk is an error
        (a cache entry or --modules that lost the modules), not a property of the kernel."""
        cfg = self._full_config()
        return all(cfg.get(opt) in ("y", "m") for opt, _ in self.SCRATCH_NEEDS)

    @property
    def soft_dirty(self) -> bool:
        return self.config.get("CONFIG_MEM_SOFT_DIRTY") == "y"

    @property
    def label(self) -> str:
        """Short column title: the upstream version from the package version (6.1.192), or the title of a
        kernel that is not a package (``built:6.1+backport-931298e103c2``)."""
        if self.title:
            return self.title
        return self.version.split("-")[0].split(":")[-1]

    def save(self) -> None:
        # Fields added since the first layout are written only when set, and the layout goes to its own
        # file, so a vmtest of an older checkout sharing the cache still reads a package's kernel.json.
        d = asdict(self)
        for k in ("title", "patches", "emu_profile", "emu_switches", "flips", "layout"):
            if not d.get(k) or k == "layout":
                d.pop(k, None)
        with open(os.path.join(self.dir, "kernel.json"), "w") as f:
            json.dump(d, f, indent=1)
        with open(os.path.join(self.dir, "layout"), "w") as f:
            f.write(f"{self.layout}\n")

    @classmethod
    def load(cls, d: str) -> "Kernel | None":
        try:
            with open(os.path.join(d, "kernel.json")) as f:
                k = cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        k.dir = d
        try:
            with open(os.path.join(d, "layout")) as f:
                k.layout = int(f.read().strip() or 1)
        except (OSError, ValueError):
            k.layout = 1
        ok = os.path.exists(k.image_path) and all(os.path.exists(os.path.join(d, "modules", m)) for m in k.modules)
        return k if ok else None


# -- choosing a package ----------------------------------------------------------------------

def pkg_key(name: str) -> tuple[int, ...] | None:
    m = PKG_RE.match(name)
    return tuple(int(x or 0) for x in m.groups()) if m else None


def pick_package(names: list[str], series: str) -> str | None:
    """Newest generic amd64 image among ``names``: ``series`` "newest" or "MAJOR.MINOR" (e.g. "6.1")."""
    want = None
    if series != "newest":
        if not re.fullmatch(r"\d+\.\d+", series):
            raise ValueError(f"kernel series {series!r}: expected MAJOR.MINOR (e.g. 6.1) or 'newest'")
        want = tuple(int(x) for x in series.split("."))
    keyed = [(k, n) for n in names if (k := pkg_key(n)) and (want is None or k[:2] == want)]
    return max(keyed)[1] if keyed else None


def apt_package_names() -> list[str]:
    if not shutil.which("apt-cache"):
        raise Unavailable("no apt-cache on this host: pass --kernel-deb FILE (a linux-image-*-amd64 .deb)")
    r = subprocess.run(["apt-cache", "pkgnames", "linux-image-"], capture_output=True, text=True)
    return r.stdout.split()


def apt_version(pkg: str) -> str | None:
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", pkg], capture_output=True, text=True)
    m = re.search(r"^Version: (\S+)", r.stdout, re.M)
    return m.group(1) if m else None


def apt_update() -> bool:
    """apt-get update, as root only (a fresh machine may have no package lists yet)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    log("apt-get update (no matching package in the current lists)")
    return subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def resolve_package(series: str, pkg: str | None = None, refresh: bool = True) -> tuple[str, str]:
    """(package, version) from the configured apt sources (with ``refresh``, updated once if they know none)."""
    if pkg is None:
        names = apt_package_names()
        pkg = pick_package(names, series)
        if pkg is None and refresh and apt_update():
            names = apt_package_names()
            pkg = pick_package(names, series)
        if pkg is None:
            have = sorted({".".join(map(str, k[:2])) for n in names if (k := pkg_key(n))})
            raise Unavailable(f"no linux-image-{series if series != 'newest' else '*'}-amd64 package in the "
                              f"configured apt sources (series available: {', '.join(have) or 'none'}; "
                              "run apt-get update, or pass --kernel-deb FILE)")
    version = apt_version(pkg)
    if version is None and refresh and apt_update():
        version = apt_version(pkg)
    if version is None:
        raise Unavailable(f"package {pkg} is not in the configured apt sources (apt-cache show found nothing)")
    return pkg, version


# -- unpacking --------------------------------------------------------------------------------

def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (the payload is the first stream that decompresses to ELF)."""
    def candidates(magic):
        i = bzimage.find(magic)
        while i >= 0:
            yield i
            i = bzimage.find(magic, i + 1)

    for i in candidates(XZ_MAGIC):
        try:
            out = lzma.LZMADecompressor().decompress(bzimage[i:])
        except lzma.LZMAError:
            continue
        if out[:4] == ELF_MAGIC:
            return out
    for i in candidates(GZIP_MAGIC):
        try:
            out = zlib.decompressobj(31).decompress(bzimage[i:])
        except zlib.error:
            continue
        if out[:4] == ELF_MAGIC:
            return out
    if shutil.which("zstd"):
        for i in candidates(ZSTD_MAGIC):
            r = subprocess.run(["zstd", "-dcq"], input=bzimage[i:], capture_output=True)
            if r.stdout[:4] == ELF_MAGIC:
                return r.stdout
    return None


def read_config(path: str) -> dict[str, str]:
    out = {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            m = re.match(r"^(CONFIG_\w+)=(.*)$", line.strip())
            if m:
                out[m.group(1)] = m.group(2)
    return out


MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(filename: str) -> str | None:
    for suf in MODULE_SUFFIXES:
        if filename.endswith(suf):
            return filename[:-len(suf)].replace("-", "_")
    return None


def read_module(path: str) -> bytes:
    """A module's ELF bytes (Debian compresses modules with xz since 6.x; gzip and zstd also occur)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        if not shutil.which("zstd"):
            raise Unavailable(f"{os.path.basename(path)} is zstd-compressed and there is no zstd to unpack it")
        return subprocess.run(["zstd", "-dcq", path], capture_output=True, check=True).stdout
    return data


def module_closure(index: dict[str, str], builtin: set[str], roots=ROOT_MODULES) -> list[str]:
    """Module names in load order (dependencies first), from each .ko's ``depends=``."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]):
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise Unavailable(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise Unavailable(f"kernel module {name} is neither built in nor shipped in the package")
        deps = modinfo(read_module(index[name])).get("depends", "")
        for d in filter(None, deps.split(",")):
            visit(d, chain + (name,))
        seen.add(name)
        order.append(name)

    for r in roots:
        visit(r, ())
    return order


def unpack(deb: str, dest: str, package: str, version: str) -> Kernel:
    """Unpack the parts of a linux-image .deb that vmtest needs into ``dest``."""
    if not shutil.which("dpkg-deb"):
        raise Unavailable("dpkg-deb is needed to unpack the kernel package")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".unpack-") as tmp:
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        boot = os.path.join(tmp, "boot")
        images = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-")) if os.path.isdir(boot) else []
        if not images:
            raise Unavailable(f"{os.path.basename(deb)} contains no boot/vmlinuz-*: not a kernel image package")
        release = images[-1][len("vmlinuz-"):]
        config = read_config(os.path.join(boot, f"config-{release}"))
        missing = [o for o in REQUIRED_CONFIG if config.get(o) not in ("y", "m")]
        if missing:
            raise Unavailable(f"{package} lacks {', '.join(missing)} (the -cloud flavour has no 9p): "
                              "use a generic linux-image-*-amd64")
        moddir = next((p for p in (os.path.join(tmp, "lib/modules", release), os.path.join(tmp, "usr/lib/modules",
                                                                                           release))
                       if os.path.isdir(p)), None)
        if moddir is None:
            raise Unavailable(f"{package}: no lib/modules/{release} in the package")
        index = {}
        for root, _dirs, files in os.walk(moddir):
            for fn in files:
                name = module_name(fn)
                if name:
                    index[name] = os.path.join(root, fn)
        builtin = set()
        try:
            with open(os.path.join(moddir, "modules.builtin")) as f:
                builtin = {module_name(os.path.basename(line.strip())) for line in f if line.strip()}
        except OSError:
            pass
        order = module_closure(index, builtin)
        extra = [m for m in OPTIONAL_MODULES if m in index]
        order += [m for m in module_closure(index, builtin | set(order), roots=extra) if m not in order]

        staging = dest + ".new"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(os.path.join(staging, "modules"))
        with open(os.path.join(boot, images[-1]), "rb") as f:
            bz = f.read()
        vmlinux = extract_vmlinux(bz)
        if vmlinux is not None:
            image = "vmlinux"
            with open(os.path.join(staging, image), "wb") as f:
                f.write(vmlinux)
        else:
            image = "vmlinuz"
            log(f"{package}: could not decompress the kernel payload; booting the bzImage (about 2x slower)")
            shutil.copy(os.path.join(boot, images[-1]), os.path.join(staging, image))
        shutil.copy(os.path.join(boot, f"config-{release}"), os.path.join(staging, "config"))
        files = []
        for name in order:
            fn = f"{name}.ko"
            with open(os.path.join(staging, "modules", fn), "wb") as f:
                f.write(read_module(index[name]))
            files.append(fn)
        keep = {k: v for k, v in config.items() if k in REQUIRED_CONFIG or k in (
            "CONFIG_MEM_SOFT_DIRTY", "CONFIG_PVH", "CONFIG_PTE_MARKER_UFFD_WP", "CONFIG_HAVE_ARCH_USERFAULTFD_WP")}
        k = Kernel(package, version, release, staging, image, files, keep, layout=LAYOUT)
        k.save()
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(staging, dest)
        k.dir = dest
        return k


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", s)


def download(pkg: str, version: str, debs: str) -> str:
    """apt-get download into ``debs``; returns the .deb path."""
    os.makedirs(debs, exist_ok=True)
    log(f"downloading {pkg} {version} (apt-get download)")
    cmd = ["apt-get", "download", "-q", f"{pkg}={version}"]
    if os.geteuid() == 0:
        cmd[2:2] = ["-o", "APT::Sandbox::User=root"]
    r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
    found = [f for f in os.listdir(debs) if f.startswith(f"{pkg}_") and f.endswith(".deb")]
    if r.returncode != 0 or not found:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise Unavailable(f"apt-get download {pkg}={version} failed: {last}")
    return os.path.join(debs, sorted(found)[-1])


def deb_fields(deb: str) -> tuple[str, str]:
    r = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Version"], capture_output=True, text=True)
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    if r.returncode != 0 or "Package" not in fields:
        raise Unavailable(f"{deb}: not a Debian package ({r.stderr.strip() or 'dpkg-deb -f failed'})")
    return fields["Package"], fields.get("Version", "0")


def get_kernel(cache: str, series: str = "6.1", pkg: str | None = None, deb: str | None = None,
               refresh: bool = True) -> Kernel:
    """The kernel to boot, from the cache when it is there (downloading and unpacking otherwise).
    ``refresh``: may run apt-get update when the package lists know no such package."""
    kdir = os.path.join(cache, "kernels")
    if deb:
        if not os.path.isfile(deb):
            raise Unavailable(f"--kernel-deb {deb}: no such file")
        pkg, version = deb_fields(deb)
    else:
        try:
            pkg, version = resolve_package(series, pkg, refresh)
        except Unavailable:
            cached = cached_kernels(cache, series if pkg is None else None, pkg)
            if not cached:
                raise
            log(f"apt cannot resolve the kernel; using the cached {cached[-1].package} {cached[-1].version}")
            return cached[-1]
    dest = os.path.join(kdir, _safe(f"{pkg}_{version}"))
    k = Kernel.load(dest)
    if k and k.layout >= LAYOUT:
        return k
    if k:
        log(f"{pkg}: cached with an older module set (layout {k.layout} < {LAYOUT}): unpacking again")
    if deb:
        return unpack(deb, dest, pkg, version)
    path = download(pkg, version, os.path.join(cache, "debs"))
    log(f"unpacking {os.path.basename(path)}")
    try:
        return unpack(path, dest, pkg, version)
    finally:
        os.unlink(path)


def cached_kernels(cache: str, series: str | None = None, pkg: str | None = None) -> list[Kernel]:
    kdir = os.path.join(cache, "kernels")
    out = []
    for d in sorted(os.listdir(kdir)) if os.path.isdir(kdir) else []:
        k = Kernel.load(os.path.join(kdir, d))
        if not k or (pkg and k.package != pkg):
            continue
        key = pkg_key(k.package)
        if series and series != "newest" and (not key or ".".join(map(str, key[:2])) != series):
            continue
        out.append(k)
    return sorted(out, key=lambda k: pkg_key(k.package) or ())
