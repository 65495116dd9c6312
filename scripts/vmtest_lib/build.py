"""Build a kernel from Debian's ``linux-source-X`` with uffdctl's config fragment and patches.

Layout under the cache (``--cache``, default ``$XDG_CACHE_HOME/uffdctl-vmtest``)::

    src/linux-source-6.1_6.1.192-3/      the unpacked tarball, pristine (never built in, never patched)
    build/KEY/src/                       a hard-linked copy of it with the patches applied
    build/KEY/obj/                       the ``O=`` tree: .config, vmlinux, include/config/kernel.release
    build/KEY/build.json                 what was built: source, patches, fragment, seconds
    build/KEY/build.log                  make's output
    ccache/                              shared by every build: a patched variant recompiles only what it touches
    kernels/built_KEY/                   the bootable kernel (vmlinux hard link, config, kernel.json, initramfs)

``KEY`` hashes the source package version, the fragment and every patch (names and contents), so a
changed patch or fragment builds anew and an unchanged one is taken from the cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from . import Unavailable, host
from .host import log
from .kernelpkg import Kernel, read_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAGMENT = os.path.join(REPO, "patches", "uffdctl.config")
SOURCES = {"6.1": "linux-source-6.1", "6.12": "linux-source-6.12"}
# What a kernel build needs on a Debian host besides gcc/make (libssl-dev for certs, libelf-dev for objtool).
BUILD_PACKAGES = {"flex": "flex", "bison": "bison", "bc": "bc", "ccache": "ccache", "xz": "xz-utils",
                  "perl": "perl"}
BUILD_HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


# -- the fragment -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    name: str
    value: str          # "y", "m", "n" (is not set) or a string/number as written
    need: bool          # in a "need" section (doctor reports it) rather than a "prefer"/"saves" one
    why: str = ""       # the comment lines above it


def fragment_text(path: str = FRAGMENT) -> str:
    with open(path) as f:
        return f.read()


def parse_fragment(text: str) -> list[Option]:
    """The options of a Kconfig fragment, with their section: ``# -- need`` (doctor reports them),
    ``# -- prefer`` / ``# -- saves`` (applied by ``vmtest build``, not required of other kernels)."""
    out, need, why, after_option = [], True, [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# --"):
            need = s.split(":")[0].split()[-1] == "need"
            why = []
            continue
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", s) or re.fullmatch(r"# (CONFIG_\w+) is not set", s)
        if m:   # the comment block above a run of options explains each of them
            val = m.group(2) if m.lastindex == 2 else "n"
            out.append(Option(m.group(1), val.strip('"'), need, " ".join(why)))
            after_option = True
        elif s.startswith("#"):
            if after_option:
                why, after_option = [], False
            why.append(s.lstrip("# "))
        elif not s:
            why, after_option = [], False
    return out


def check_config(config: dict[str, str], options: list[Option] | None = None,
                 modules_ok: bool = False) -> list[str]:
    """Problems of a kernel config against the fragment's "need" options, one line each.

    ``modules_ok``: an option wanted ``y`` may be ``m`` (vmtest loads the guest's modules: 9p, virtio,
    overlay)."""
    options = parse_fragment(fragment_text()) if options is None else options
    problems = []
    for o in options:
        if not o.need:
            continue
        have = config.get(o.name, "n")
        if have == o.value or (o.value == "y" and have == "m" and modules_ok):
            continue
        state = "missing" if o.name not in config else f"={have}"
        problems.append(f"{o.name}: {state}, want ={o.value}" + (f" -- {o.why}" if o.why else ""))
    return problems


# -- the source -------------------------------------------------------------------------------

def installed_version(pkg: str) -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", pkg], capture_output=True, text=True)
    parts = r.stdout.split()
    return parts[-1] if r.returncode == 0 and "installed" in parts[:3] and len(parts) == 4 else None


def apt_install_retrying(packages: list[str], tries: int = 20, wait: float = 15.0) -> None:
    """host.apt_install, waiting for the dpkg lock another apt-get may hold (bounded: tries x wait)."""
    for i in range(tries):
        try:
            host.apt_install(packages)
            return
        except Unavailable as e:
            if "lock" not in str(e).lower() or i == tries - 1:
                raise
            log(f"dpkg lock held by another apt-get; retrying in {wait:.0f} s ({i + 1}/{tries})")
            time.sleep(wait)


def ensure_build_tools(install: bool) -> None:
    missing = sorted({p for t, p in BUILD_PACKAGES.items() if not shutil.which(t)}
                     | {p for f, p in BUILD_HEADERS.items() if not os.path.exists(f)})
    if not shutil.which("gcc") or not shutil.which("make"):
        missing += ["gcc", "make"]
    if missing:
        if not install:
            raise Unavailable(f"kernel build tools missing: packages {' '.join(missing)} (run without --no-install)")
        apt_install_retrying(missing)


def ensure_source(series: str, cache: str, install: bool = True) -> tuple[str, str, str]:
    """(package, Debian version, unpacked tree) of ``linux-source-SERIES``: installed with apt-get when missing,
    unpacked once into the cache."""
    if series not in SOURCES:
        raise ValueError(f"--source {series!r}: expected one of {', '.join(SOURCES)}")
    pkg = SOURCES[series]
    version = installed_version(pkg)
    if version is None:
        if not install:
            raise Unavailable(f"{pkg} is not installed (apt-get install {pkg}; or run without --no-install)")
        apt_install_retrying([pkg])
        version = installed_version(pkg)
        if version is None:
            raise Unavailable(f"apt-get install {pkg} did not install it")
    tarball = f"/usr/src/{pkg}.tar.xz"
    if not os.path.exists(tarball):
        raise Unavailable(f"{pkg} {version} is installed but {tarball} is missing")
    tree = os.path.join(cache, "src", f"{pkg}_{version}")
    if os.path.exists(os.path.join(tree, ".vmtest-unpacked")):
        return pkg, version, tree
    os.makedirs(os.path.dirname(tree), exist_ok=True)
    log(f"unpacking {tarball} ({version}) into {tree}")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(tree), prefix=".unpack-") as tmp:
        subprocess.run(["nice", "-n", "19", "tar", "-xf", tarball, "-C", tmp], check=True)
        top = os.path.join(tmp, pkg)
        if not os.path.isdir(top):
            raise Unavailable(f"{tarball} has no top directory {pkg}/")
        with open(os.path.join(top, ".vmtest-unpacked"), "w") as f:
            f.write(version + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        os.rename(top, tree)
    return pkg, version, tree


# -- patches ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Patch:
    path: str
    name: str           # file name without .patch
    sha256: str         # of the whole file (recorded)
    profile: str = ""   # "Emulator-Profile:" in the patch's description: the emulator twin of the built kernel
    label: str = ""     # "Vmtest-Label:" in the description: the column's short name (default: name)
    switches: tuple = ()  # "Emulator-Switches: NAME=1 ...": profile switches the patch turns (the twin's)
    flips: tuple = ()     # "Vmtest-Flips: SCENARIO/CASE=VERDICT": the reproductions the patch changes
    diff_sha256: str = ""  # of the diff alone (from its first "--- " line): what the build depends on

    @classmethod
    def read(cls, path: str) -> "Patch":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"--patch {path}: {e.strerror}") from None
        head = data.split(b"\n---\n", 1)[0].decode(errors="replace")
        if b"\n+++ " not in data and not data.startswith(b"+++ "):
            raise ValueError(f"--patch {path}: not a unified diff (no +++ line)")
        prof = re.search(r"^Emulator-Profile:\s*(\S+)", head, re.M)
        label = re.search(r"^Vmtest-Label:\s*(\S+)", head, re.M)
        switches = tuple(tuple(kv.split("=", 1)) for line in re.findall(r"^Emulator-Switches:(.*)$", head, re.M)
                         for kv in line.split() if "=" in kv)
        flips = tuple(tuple(x.strip() for x in line.split("=", 1))
                      for line in re.findall(r"^Vmtest-Flips:(.*)$", head, re.M) if "=" in line)
        name = re.sub(r"\.(patch|diff)$", "", os.path.basename(path))
        m = re.search(rb"^--- ", data, re.M)
        diff = data[m.start():] if m else data
        return cls(os.path.abspath(path), name, hashlib.sha256(data).hexdigest(),
                   prof.group(1) if prof else "", label.group(1) if label else "", switches, flips,
                   hashlib.sha256(diff).hexdigest())

    def record(self) -> dict:
        """What build.json keeps of the patch."""
        return {"name": self.name, "file": os.path.relpath(self.path, REPO)
                if self.path.startswith(REPO + os.sep) else self.path, "sha256": self.sha256}


def fragment_digest(fragment: str) -> str:
    """What of the fragment a build depends on: its options and values (comments and sections do not count)."""
    opts = [(o.name, o.value) for o in parse_fragment(fragment)]
    return hashlib.sha256(json.dumps(opts).encode()).hexdigest()


def build_key(pkg: str, version: str, fragment: str, patches: list[Patch], base: str = "tiny") -> str:
    """The cache key: what the built kernel depends on.  A patch counts by its diff alone: its description and
    its Vmtest-*/Emulator-* headers are metadata (read from the file at every use), so correcting them does
    not rebuild."""
    h = hashlib.sha256(json.dumps({"source": pkg, "version": version, "fragment": fragment_digest(fragment),
                                   "patches": [(p.name, p.diff_sha256) for p in patches], "base": base}).encode())
    return h.hexdigest()[:16]


def build_name(series: str, patches: list[Patch]) -> str:
    """``6.1`` or ``6.1+931298e103c2-backport+...``: the column label of a built kernel."""
    return "+".join([series] + [p.label or p.name for p in patches])


# -- building ---------------------------------------------------------------------------------

@dataclass
class Build:
    name: str
    key: str
    source: str
    version: str
    patches: list[dict] = field(default_factory=list)
    fragment_sha256: str = ""
    release: str = ""
    seconds: float = 0.0
    jobs: int = 0
    profile: str = ""
    base: str = "defconfig"
    switches: dict = field(default_factory=dict)
    flips: dict = field(default_factory=dict)
    ccache: str = ""
    dir: str = ""

    @property
    def obj(self) -> str:
        return os.path.join(self.dir, "obj")

    def take_metadata(self, patches: list[Patch], save: bool = False) -> "Build":
        """The patches' current headers (the key ignores them): the emulator twin is the last patch that names
        a profile (a fix on top of a series names the fixed one), switches and flips are the union."""
        profiles = [p.profile for p in patches if p.profile]
        new = {"patches": [p.record() for p in patches], "profile": profiles[-1] if profiles else "",
               "switches": {k: v for p in patches for k, v in p.switches},
               "flips": {k: v for p in patches for k, v in p.flips}}
        if any(getattr(self, k) != v for k, v in new.items()):
            self.__dict__.update(new)
            if save:
                self.save()
        return self

    def save(self) -> None:
        d = dict(self.__dict__)
        d.pop("dir")
        with open(os.path.join(self.dir, "build.json"), "w") as f:
            json.dump(d, f, indent=1)

    @classmethod
    def load(cls, d: str) -> "Build | None":
        try:
            with open(os.path.join(d, "build.json")) as f:
                b = cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        b.dir = d
        return b if os.path.exists(os.path.join(b.obj, "vmlinux")) else None


def _run(cmd: list[str], log_f, cwd: str | None = None, env: dict | None = None) -> None:
    log_f.write(("$ " + " ".join(cmd) + "\n").encode())
    log_f.flush()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BuildFailed(f"{' '.join(cmd[:6])}... exited {r.returncode}", log_f.name)


class BuildFailed(Exception):
    def __init__(self, msg: str, log_path: str):
        super().__init__(msg)
        self.log_path = log_path


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return ""


def patched_files(patch: Patch) -> list[str]:
    """The paths a unified diff writes (``+++ b/PATH``), relative to the tree."""
    with open(patch.path, errors="replace") as f:
        return [m.group(1) for m in re.finditer(r"^\+\+\+ b/(\S+)", f.read(), re.M)]


def apply_patches(tree: str, patches: list[Patch], log_f) -> None:
    for p in patches:
        r = subprocess.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-d", tree, "-i",
                            p.path], stdout=log_f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise ValueError(f"--patch {p.path} does not apply to {os.path.basename(tree)} (see {log_f.name})")


def prepare_tree(pristine: str, dest: str, patches: list[Patch], log_f) -> None:
    """``dest`` = a hard-linked copy of the pristine tree with ``patches`` applied in order.

    GNU patch writes each file it changes anew (a new inode), so the pristine tree is never modified."""
    tmp = dest + ".new"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["cp", "-al", pristine, tmp], log_f)
    try:
        apply_patches(tmp, patches, log_f)
    except ValueError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, dest)


def reset_tree(pristine: str, tree: str, files: list[str]) -> None:
    """Undo earlier patches in a work tree: each file they wrote becomes a fresh *copy* of the pristine one
    (a new mtime, so make rebuilds what the patch had changed; a hard link would carry the old mtime and
    make would keep the patched objects), or is removed when the patch had created it."""
    for rel in files:
        dst, orig = os.path.join(tree, rel), os.path.join(pristine, rel)
        if os.path.lexists(dst):
            os.unlink(dst)
        if os.path.exists(orig):
            shutil.copyfile(orig, dst)
            shutil.copymode(orig, dst)


# Where the configuration starts.  "tiny": the kernel's own minimal QEMU guest (make tinyconfig +
# kernel/configs/kvm_guest.config), then the fragment: about a third of defconfig's objects.
# "defconfig": x86_64_defconfig, as virtme-ng does; on this 2-core host shared by the team its cold
# build did not finish in the time a session has (8-17 objects a minute at nice 19).
BASES = ("tiny", "defconfig")


def configure(src: str, obj: str, fragment: str, log_f, base: str = "tiny") -> list[str]:
    """BASE + the fragment + olddefconfig in ``obj``; returns the fragment's "need" options the result lacks."""
    os.makedirs(obj, exist_ok=True)
    frag = os.path.join(obj, "uffdctl.config")
    with open(frag, "w") as f:
        f.write(fragment)
    _run(["make", "-s", "-C", src, f"O={obj}", "tinyconfig" if base == "tiny" else "defconfig"], log_f)
    extra = [os.path.join(src, "kernel/configs/kvm_guest.config")] if base == "tiny" else []
    _run([os.path.join(src, "scripts/kconfig/merge_config.sh"), "-m", "-O", obj,
          os.path.join(obj, ".config"), *extra, frag], log_f, cwd=src)
    _run(["make", "-s", "-C", src, f"O={obj}", "olddefconfig"], log_f)
    config = read_config(os.path.join(obj, ".config"))
    lost = []
    for o in parse_fragment(fragment):
        have = config.get(o.name, "n")
        if have != o.value:
            if o.need:
                lost.append(f"{o.name}={have} (fragment: {o.value})")
            else:
                log(f"note: {o.name}={have} after olddefconfig (the fragment has it only as a preference)")
    return lost


def ccache_env(cache: str, base: str) -> dict[str, str]:
    return dict(os.environ, CCACHE_DIR=os.path.join(cache, "ccache"), CCACHE_BASEDIR=base,
                CCACHE_MAXSIZE="8G", CCACHE_SLOPPINESS="time_macros,include_file_mtime,include_file_ctime",
                KBUILD_BUILD_TIMESTAMP="1970-01-01", KBUILD_BUILD_USER="uffdctl", KBUILD_BUILD_HOST="vmtest")


def ccache_stats(env: dict) -> dict[str, int]:
    r = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("\t")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def build(series: str, patch_paths: list[str], cache: str, install: bool = True, jobs: int | None = None,
          fragment_path: str = FRAGMENT, force: bool = False, base: str = "tiny") -> Build:
    """Build (or take from the cache) ``vmlinux`` of ``linux-source-SERIES`` + BASE + fragment + patches.

    Every build of one source and base shares one work tree (``build/work_SOURCE_VERSION_BASE/``): the
    previous build's patches are undone, this one's applied, and make rebuilds only what they touch (a
    patched variant takes minutes).  The result -- vmlinux, .config, kernel.release, build.json -- is kept
    per key in ``build/KEY/obj``, a tree ``--kernel-dir`` boots."""
    if series not in SOURCES:
        raise ValueError(f"--source {series!r}: expected one of {', '.join(SOURCES)}")
    if base not in BASES:
        raise ValueError(f"--base {base!r}: expected one of {', '.join(BASES)}")
    patches = [Patch.read(p) for p in patch_paths]
    fragment = fragment_text(fragment_path)
    ensure_build_tools(install)
    pkg, version, pristine = ensure_source(series, cache, install)
    key = build_key(pkg, version, fragment, patches, base)
    name = build_name(series, patches)
    d = os.path.join(cache, "build", key)
    if not force:
        done = Build.load(d)
        if done is not None:
            log(f"built:{name}: cached ({done.release}, built in {done.seconds:.0f} s) in {d}")
            return done.take_metadata(patches, save=True)
    os.makedirs(os.path.join(d, "obj", "include", "config"), exist_ok=True)
    b = Build(name, key, pkg, version, [], fragment_digest(fragment), base=base, dir=d)
    b.take_metadata(patches)
    jobs = jobs or os.cpu_count() or 1
    work = os.path.join(cache, "build", f"work_{pkg}_{version}_{base}")
    src, obj = os.path.join(work, "src"), os.path.join(work, "obj")
    env = ccache_env(cache, os.path.join(cache, "build"))
    log_path = os.path.join(d, "build.log")
    with locked_build(cache):
        done = None if force else Build.load(d)      # built by another vmtest while this one waited
        if done is not None:
            log(f"built:{name}: cached ({done.release}, built in {done.seconds:.0f} s) in {d}")
            return done.take_metadata(patches, save=True)
        return _build_locked(b, patches, fragment, pristine, src, obj, work, jobs, env, log_path, base, pkg,
                             version, name, key)


def _build_locked(b, patches, fragment, pristine, src, obj, work, jobs, env, log_path, base, pkg, version, name,
                  key) -> Build:
    t0 = time.monotonic()
    with open(log_path, "wb") as log_f:
        try:
            if not os.path.isdir(src):
                log(f"built:{name}: work tree {work} (hard links to {pristine})")
                os.makedirs(work, exist_ok=True)
                prepare_tree(pristine, src, [], log_f)
            state = _json(os.path.join(work, "state.json"))
            reset_tree(pristine, src, state.get("files", []))
            with open(os.path.join(work, "state.json"), "w") as f:
                json.dump({"files": [], "config": state.get("config")}, f)
            apply_patches(src, patches, log_f)
            with open(os.path.join(work, "state.json"), "w") as f:
                json.dump({"files": sorted({x for p in patches for x in patched_files(p)}),
                           "config": state.get("config")}, f)
            want = fragment_digest(fragment)
            if state.get("config") != want or not os.path.exists(os.path.join(obj, ".config")):
                lost = configure(src, obj, fragment, log_f, base)
                if lost:
                    raise Unavailable(f"{pkg} {version}: the fragment's options did not survive olddefconfig: "
                                      f"{'; '.join(lost)}")
                st = _json(os.path.join(work, "state.json"))
                st["config"] = want
                with open(os.path.join(work, "state.json"), "w") as f:
                    json.dump(st, f)
            log(f"built:{name}: make -j{jobs} vmlinux in {obj} (nice 19, ccache {env['CCACHE_DIR']}); "
                f"log {log_path}")
            before = ccache_stats(env)
            # LOCALVERSION on the command line, not CONFIG_LOCALVERSION: autoconf.h stays identical between
            # variants, so only the patched files and what includes utsrelease.h are rebuilt.
            _run(["nice", "-n", "19", "make", "-C", src, f"O={obj}", f"-j{jobs}", "CC=ccache gcc",
                  "HOSTCC=ccache gcc", f"LOCALVERSION=-vmtest-{key[:8]}", "vmlinux"], log_f, env=env)
            for rel in ("vmlinux", ".config", "include/config/kernel.release"):
                tmp = os.path.join(b.obj, rel + ".tmp")
                shutil.copyfile(os.path.join(obj, rel), tmp)
                os.replace(tmp, os.path.join(b.obj, rel))
        except BuildFailed as e:
            raise Unavailable(f"built:{name}: {e}; last lines of {e.log_path}:\n{_tail(e.log_path)}") from None
    after = ccache_stats(env)
    hits = sum(after.get(k, 0) - before.get(k, 0) for k in ("direct_cache_hit", "preprocessed_cache_hit"))
    miss = after.get("cache_miss", 0) - before.get("cache_miss", 0)
    b.seconds = round(time.monotonic() - t0, 1)
    b.jobs = jobs
    b.ccache = f"{hits} hits, {miss} misses"
    with open(os.path.join(b.obj, "include/config/kernel.release")) as f:
        b.release = f.read().strip()
    b.save()
    log(f"built:{name}: {b.release} in {b.seconds:.0f} s (-j{jobs}, ccache {b.ccache})")
    return b


@contextlib.contextmanager
def locked_build(cache: str):
    """One build at a time per cache (they share work trees); not the fetch lock, so fetching is not held up."""
    os.makedirs(os.path.join(cache, "build"), exist_ok=True)
    with open(os.path.join(cache, "build", ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def all_builds(cache: str) -> list[Build]:
    root = os.path.join(cache, "build")
    out = []
    for k in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        b = Build.load(os.path.join(root, k))
        if b:
            out.append(b)
    return out


def find_build(cache: str, name: str) -> Build:
    """``--kernel built:NAME``: the newest cached build called NAME (or whose key starts with NAME)."""
    cands = [b for b in all_builds(cache) if b.name == name or b.key.startswith(name)]
    if not cands:
        have = ", ".join(sorted({b.name for b in all_builds(cache)})) or "none"
        raise Unavailable(f"no built kernel {name!r} in {cache} (built: {have}; "
                          "scripts/vmtest build --source SERIES [--patch FILE ...])")
    return max(cands, key=lambda b: os.path.getmtime(os.path.join(b.dir, "build.json")))
