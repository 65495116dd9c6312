"""The real kernel's side of the wider mm surface: MAP_FIXED, regular files, SysV shm, msync, mlock,
smaps VMAs and swap.  Mixed into :class:`uffdctl.kernel.KernelBackend`; each method overrides a
``NotModelled`` default of :class:`uffdctl.backend.Backend`.  Thin: one syscall, its errno.
"""
from __future__ import annotations

import errno as E
import os

from . import _libc, swap, uapi
from .types import MemType, Region, size_name
from .errors import Unsupported, UsageError, uffd_error


def parse_smaps(text: str, start: int, end: int) -> list[dict]:
    """The /proc/PID/smaps entries overlapping [start, end): start, end, perms, path, flags and every
    ``Key: N kB`` field in bytes (``Rss``, ``AnonHugePages``, ``Swap``, ``Locked``, ...)."""
    out, cur = [], None
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and head.replace("-", "").isalnum() and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            parts = line.split(None, 5)
            cur = {"start": lo, "end": hi, "perms": parts[1], "path": parts[5] if len(parts) > 5 else "",
                   "flags": []}
            if lo < end and start < hi:
                out.append(cur)
            continue
        if cur is None or ":" not in line:
            continue
        k, v = line.split(":", 1)
        if k == "VmFlags":
            cur["flags"] = v.split()
        else:
            p = v.split()
            if p and p[0].isdigit():
                cur[k] = int(p[0]) * (1024 if len(p) > 1 and p[1] == "kB" else 1)
            elif k == "THPeligible" and p:
                cur[k] = int(p[0])
    return out


def meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def hugepages_total() -> int:
    return meminfo().get("HugePages_Total", 0)


def _hpage_size() -> int:
    return meminfo().get("Hugepagesize", 2048) * 1024


HUGEPAGES_SYSFS = "/sys/kernel/mm/hugepages"


def hugetlb_sizes() -> list[int]:
    """The hugetlb page sizes this kernel has (hstates: /sys/kernel/mm/hugepages/hugepages-<N>kB)."""
    try:
        names = os.listdir(HUGEPAGES_SYSFS)
    except OSError:
        return []
    return sorted(int(n[len("hugepages-"):-2]) * 1024 for n in names if n.startswith("hugepages-") and
                  n.endswith("kB"))


def hugetlb_pool(size: int) -> dict:
    """One hstate's pool: nr_hugepages free_hugepages resv_hugepages surplus_hugepages (0 when absent)."""
    out = {}
    for k in ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages"):
        try:
            with open(f"{HUGEPAGES_SYSFS}/hugepages-{size // 1024}kB/{k}") as f:
                out[k] = int(f.read())
        except OSError:
            out[k] = 0
    return out




def hugetlb_page_flags(page_size: int | None) -> tuple[int, int]:
    """(the page size, the MFD_HUGE_* / MAP_HUGE_* bits) of a hugetlb mapping; the default hstate for None.
    Raises UsageError for a size this kernel has no hstate of, Unsupported for an empty pool."""
    default = _hpage_size()
    if page_size is None or page_size == default:
        return default, 0
    sizes = hugetlb_sizes()
    if page_size not in sizes:
        raise UsageError(f"no hugetlb page size {size_name(page_size)} on this kernel (sizes: "
                         f"{', '.join(size_name(s) for s in sizes) or 'none'}: /sys/kernel/mm/hugepages)")
    pool = hugetlb_pool(page_size)
    if pool["nr_hugepages"] + pool["surplus_hugepages"] == 0:
        raise Unsupported(f"no {size_name(page_size)} huge pages reserved",
                          f"reserve some with: echo N > {HUGEPAGES_SYSFS}/hugepages-{page_size // 1024}kB/"
                          f"nr_hugepages (1G pages need contiguous memory: at boot, hugepagesz=1G hugepages=N)")
    return page_size, (page_size.bit_length() - 1) << uapi.MFD_HUGE_SHIFT


class KernelMm:
    """Mixin for KernelBackend (uses its ``_lib``, ``_regions`` and the Backend bookkeeping helpers)."""

    MODELLED_ADVICE = None  # the kernel: every advice is the kernel's to judge

    def thp_knob(self, knob):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{knob}") as f:
                return f.read().strip()
        except OSError:
            return None

    def mappings(self, start, end):
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                if lo < end and start < hi:
                    parts = line.split(None, 5)
                    what = parts[5].strip() if len(parts) > 5 else ""
                    for slo, shi, desc in self.own_stacks():   # name what /proc/self/maps leaves anonymous
                        if slo < hi and lo < shi:
                            what = desc
                    out.append((lo, hi, what))
        return out

    def dup_fd(self, fd):
        return None if fd is None else os.dup(fd)

    def close_fd(self, fd):
        if fd is not None:
            os.close(fd)

    def alias_at(self, region, name, addr):
        name = self._alias_name(region, name)
        a = self._lib.uffdctl_mmap(addr, region.len, uapi.PROT_READ | uapi.PROT_WRITE,
                                   uapi.MAP_SHARED | uapi.MAP_FIXED_NOREPLACE, region.fd, 0)
        if a < 0:
            raise uffd_error(-a, "mmap", addr, region.len)
        return self._add_region(Region(name, a, region.len, region.memtype, region.page_size, None))

    def mmap_fixed(self, len, memtype, name, prot, addr, page_size=None):
        return self.mmap(len, memtype, name=name, prot=prot, addr=addr, fixed=True, page_size=page_size)

    def mmap_file(self, len, path, shared, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None,
                  fixed=False):
        import tempfile
        name = self._region_name(name)
        self._check_len(len, uapi.PAGE_SIZE, addr)
        flags = (uapi.MAP_SHARED if shared else uapi.MAP_PRIVATE) | self._map_fixed(addr, len, fixed)
        created = None
        if os.path.isdir(path):
            # a fresh file on that filesystem, unlinked at once: nothing is left behind, even on SIGKILL
            fd, tmp = tempfile.mkstemp(prefix=f"uffdctl-{name}-", dir=path)
            os.unlink(tmp)
            os.ftruncate(fd, len)
            shown = f"{tmp} (deleted)"
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = path
                os.ftruncate(fd, len)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise uffd_error(e.errno, "open", None, len, message=path) from None
            shown = path
        a = self._lib.uffdctl_mmap(addr or 0, len, prot, flags, fd, 0)
        if a < 0:
            os.close(fd)
            if created:
                os.unlink(created)
            raise uffd_error(-a, "mmap", addr, len, message=shown)
        r = Region(name, a, len, MemType.SHMEM if shared else MemType.SHMEM_PRIVATE, uapi.PAGE_SIZE, fd, prot,
                   kind="file" if shared else "file-private", path=shown)
        if created:
            self._created_files[name] = created
        return self._add_region(r)

    def mmap_shared_anon(self, len, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None, fixed=False):
        """MAP_SHARED|MAP_ANONYMOUS: the kernel backs it with a shmem file of its own (shmem_zero_setup()),
        so it is shmem to userfaultfd (vma_is_shmem()) and to pagemap (PM_FILE), with no fd to alias."""
        name = self._region_name(name)
        self._check_len(len, uapi.PAGE_SIZE, addr)
        flags = uapi.MAP_SHARED | uapi.MAP_ANONYMOUS | self._map_fixed(addr, len, fixed)
        a = self._lib.uffdctl_mmap(addr or 0, len, prot, flags, -1, 0)
        if a < 0:
            raise uffd_error(-a, "mmap", addr, len)
        return self._add_region(Region(name, a, len, MemType.SHMEM, uapi.PAGE_SIZE, None, prot,
                                       kind="shared-anon"))

    def mmap_sysv(self, len, hugetlb, name=None, prot=uapi.PROT_READ | uapi.PROT_WRITE, addr=None):
        name = self._region_name(name)
        page = uapi.PAGE_SIZE
        if hugetlb:
            page = _hpage_size()
            if hugepages_total() == 0:
                raise Unsupported("HugePages_Total=0: no huge pages reserved",
                                  "reserve some with: sysctl vm.nr_hugepages=N")
        self._check_len(len, page, addr)
        shmid = _libc.shmget(len, hugetlb)
        if shmid < 0:
            raise uffd_error(-shmid, "shmget", None, len)
        try:
            a = _libc.shmat(shmid, addr or 0, not prot & uapi.PROT_WRITE)
        finally:
            _libc.shm_rmid(shmid)   # the segment goes when the last attach does
        if a < 0:
            raise uffd_error(-a, "shmat", addr, len)
        return self._add_region(Region(name, a, len, MemType.HUGETLB if hugetlb else MemType.SHMEM, page, None,
                                       prot, kind="sysv-hugetlb" if hugetlb else "sysv"))

    def msync(self, addr, len, flags):
        r = _libc.msync(addr, len, flags)
        if r < 0:
            raise uffd_error(-r, "msync", addr, len)

    def mlock(self, addr, len, flags=0):
        r = _libc.mlock2(addr, len, flags)
        if r < 0:
            raise uffd_error(-r, "mlock2", addr, len)

    def munlock(self, addr, len):
        r = _libc.munlock(addr, len)
        if r < 0:
            raise uffd_error(-r, "munlock", addr, len)

    def lru_drain(self) -> None:
        """Drain every CPU's LRU folio batches (a folio still in another CPU's batch is not on the LRU,
        and MADV_PAGEOUT / MADV_COLD skip it: mm/madvise.c, folio_isolate_lru()).  The session's toucher
        threads run on any CPU, so reclaim advice drains first.

        move_pages(2) drains them all in one call (do_pages_move() -> lru_cache_disable()).  A kernel without
        CONFIG_NUMA has no move_pages (ENOSYS: the tiny kernels `vmtest build` makes); then this thread runs
        on each CPU the process may use in turn and calls MADV_COLD on a page of its own there: madvise_cold() starts
        with lru_add_drain() of the CPU it runs on."""
        if getattr(self, "_drain_page", None) is None:
            r = self.mmap(uapi.PAGE_SIZE, MemType.ANON, name=f"__lru_drain{os.getpid()}")
            self.write(r.addr, b"\1")
            self._drain_page = r
        addr = self._drain_page.addr
        err = _libc.move_pages_here(addr)
        if err == -E.ENOSYS:
            mask = os.sched_getaffinity(0)
            try:
                for cpu in range(os.cpu_count() or 1):   # not only this thread's mask: the others' may differ
                    try:
                        os.sched_setaffinity(0, {cpu})
                    except OSError:                       # offline, or outside our cpuset: none of ours ran there
                        continue
                    self.madvise(addr, uapi.PAGE_SIZE, uapi.MADV_COLD)
            finally:
                os.sched_setaffinity(0, mask)
        elif err < 0:
            raise uffd_error(-err, "move_pages", addr, uapi.PAGE_SIZE,
                             message="draining the LRU batches before reclaim advice")

    def smaps_vmas(self, start, end):
        with open("/proc/self/smaps") as f:
            return parse_smaps(f.read(), start, end)

    # -- swap -------------------------------------------------------------------------------
    def swap_on(self, size, directory=None):
        d = swap.on(size, directory)
        self._swapfiles.append(d["filename"])
        return d

    def swap_off(self):
        if not self._swapfiles:
            raise uffd_error(E.ENOENT, "swapoff", message="no swapfile of this session is on")
        out = []
        while self._swapfiles:
            out.append(swap.off(self._swapfiles[-1]))
            self._swapfiles.pop()
        return {"removed": out}

    def swap_status(self):
        mine = set(self._swapfiles)
        return {"swaps": [dict(s, mine=int(s["filename"] in mine)) for s in swap.active()],
                "mine": list(self._swapfiles)}

    def _close_mm(self) -> None:
        """At backend close: every swapfile off and removed, every file we created removed."""
        for path in list(self._swapfiles):
            try:
                swap.off(path)
            except Exception:
                pass
        self._swapfiles.clear()
        for path in self._created_files.values():
            try:
                os.unlink(path)
            except OSError:
                pass
        self._created_files.clear()

    def _forget_region(self, name: str) -> None:
        path = self._created_files.pop(name, None)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
