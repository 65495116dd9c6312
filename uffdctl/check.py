"""``uffdctl check``: what userfaultfd can do on this machine, and why not.

:func:`run_checks` probes the running kernel through :class:`~uffdctl.kernel.KernelBackend`
and returns a dict of results plus verdicts; :func:`render` prints the verdict lines
(in the manner of ``criu check``).  Each verdict is ``ok``, ``unsupported`` (a
property of this host: a config option off, no huge pages reserved) or ``broken``
(a probe failed in a way the kernel should not).

Exit code: 1 if anything is broken, else 4 if anything is unsupported here, else 0.
On a kernel without CONFIG_MEM_SOFT_DIRTY, or with no huge pages reserved, the
answer is 4 — "works, but not everything is available here".
"""
from __future__ import annotations

import errno as E
import os
import platform

from . import uapi
from .backend import MemType

OK, UNSUPPORTED, BROKEN, NA = "ok", "unsupported", "broken", "n/a"

# memory type x register mode, as uffd_register_ioctls_test loops them
MODES = ("missing", "wp", "minor", "missing,wp", "missing,minor", "wp,minor", "missing,wp,minor")

# the feature bit that says a mode works on a memory type (spec 3.3; the bits are informational)
_MODE_FEATURE = {
    ("missing", False, False): 0,
    ("missing", True, False): uapi.Feature.MISSING_SHMEM,
    ("missing", True, True): uapi.Feature.MISSING_HUGETLBFS,
    ("wp", False, False): uapi.Feature.PAGEFAULT_FLAG_WP,
    ("wp", True, False): uapi.Feature.WP_HUGETLBFS_SHMEM,
    ("wp", True, True): uapi.Feature.WP_HUGETLBFS_SHMEM,
    ("minor", True, False): uapi.Feature.MINOR_SHMEM,
    ("minor", True, True): uapi.Feature.MINOR_HUGETLBFS,
}


def _verdict(check: str, status: str, message: str) -> dict:
    return {"check": check, "status": status, "message": message}


def _sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def register_reason(memtype: MemType, mode: int, err: int) -> str:
    """Why UFFDIO_REGISTER refused (vma_can_userfault and friends, spec 3.2/3.3)."""
    if err == E.EINVAL and mode & uapi.RegisterMode.MINOR and memtype is MemType.ANON:
        return "vma_can_userfault: MINOR needs shmem/hugetlb"
    if err == E.EINVAL:
        return "vma_can_userfault refused this mode on this memory type"
    if err == E.EPERM:
        return "the VMA has no VM_MAYWRITE"
    if err == E.EBUSY:
        return "the VMA is registered with another uffd"
    return os.strerror(err)


def _expected_failure(memtype: MemType, mode: int) -> bool:
    return bool(mode & uapi.RegisterMode.MINOR) and memtype is MemType.ANON


OPEN_METHODS = (("syscall", "syscall", 0), ("user-mode-only", "syscall", uapi.UFFD_USER_MODE_ONLY),
                ("/dev/userfaultfd", "dev", 0))
NOBODY = 65534


def _try_open(via: str, flags: int) -> int:
    """0 if a uffd opens this way (and is closed again), else the errno."""
    from ._native import load
    _ffi, lib = load()
    fn = lib.uffdctl_userfaultfd if via == "syscall" else lib.uffdctl_dev_userfaultfd
    fd = fn(uapi.O_CLOEXEC | uapi.O_NONBLOCK | flags)
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


def probe_open() -> list[dict]:
    """Each way of opening a uffd, as this process: ok, or the errno, why, and the cure."""
    from .kernel import open_error_hint
    out = []
    for label, via, flags in OPEN_METHODS:
        err = _try_open(via, flags)
        out.append({"via": label, "ok": int(not err), "errno": E.errorcode.get(err, err) if err else None,
                    "hint": open_error_hint(err, via) if err else None})
    return out


def probe_open_unprivileged(uid: int = NOBODY) -> list[dict] | None:
    """probe_open() in a child that dropped to ``uid`` (only when we are root): what a user can do."""
    import json
    if os.getuid() != 0:
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no threads, just syscalls
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, json.dumps(probe_open()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return json.loads(data) if status == 0 and data else None


def probe_register(b, features: int) -> list[dict]:
    from .errors import Unsupported
    rows = []
    u = b.userfaultfd()
    try:
        u.api(0)
        for mt in MemType:
            try:
                size = 2 << 20 if mt.hugetlb else 4 * uapi.PAGE_SIZE
                r = b.mmap(size, mt, name=f"__check_{mt.value}")
            except Unsupported as e:
                for m in MODES:
                    rows.append({"memtype": mt.value, "mode": m, "status": UNSUPPORTED, "ioctls": None,
                                 "ioctls_decoded": None, "errno": None, "reason": e.reason})
                continue
            except OSError as e:
                for m in MODES:
                    rows.append({"memtype": mt.value, "mode": m, "status": UNSUPPORTED, "ioctls": None,
                                 "ioctls_decoded": None, "errno": E.errorcode.get(e.errno, e.errno),
                                 "reason": f"mmap failed: {os.strerror(e.errno)}"})
                continue
            try:
                for m in MODES:
                    mode = uapi.RegisterMode.parse(m)
                    row = {"memtype": mt.value, "mode": m, "ioctls": None, "ioctls_decoded": None,
                           "errno": None, "reason": None}
                    try:
                        ioctls = u.register(r.addr, r.len, mode)
                        u.unregister(r.addr, r.len)
                        row.update(status=OK, ioctls=ioctls, ioctls_decoded=uapi.Ioctl.decode(ioctls))
                    except OSError as e:
                        row.update(errno=E.errorcode.get(e.errno, e.errno), reason=register_reason(mt, mode, e.errno))
                        if _expected_failure(mt, mode):
                            row["status"] = NA
                        else:
                            needed = 0
                            for single in m.split(","):
                                needed |= _MODE_FEATURE.get((single, mt.file_backed, mt.hugetlb), 0)
                            row["status"] = BROKEN if needed & features == needed else UNSUPPORTED
                    rows.append(row)
            finally:
                b.munmap(r.addr, r.len)
    finally:
        u.close()
    return rows


def _kernel_facts() -> dict:
    """uname, the upstream version (Debian's sublevel from /proc/version) and the emulator profile that is this
    kernel's twin (what `uffdctl repro` runs beside it)."""
    from .kernel import running_version_str
    from .registry import describe_twin, twin_profile
    k = {"release": platform.release(), "machine": platform.machine(), "version": running_version_str()}
    k["emulator_twin"] = twin_profile(k["release"], k["version"])
    k["emulator_twin_description"] = describe_twin(k["emulator_twin"])
    return k


def run_checks() -> dict:
    """Probe everything; never raises for a property of the host."""
    from ._native import available
    res: dict = {"kernel": _kernel_facts(), "verdicts": []}
    v = res["verdicts"]
    ok, why = available()
    if not ok:
        v.append(_verdict("native", UNSUPPORTED, why))
        return _finish(res)
    from .kernel import meminfo
    from .pagemap import probe_scan_categories
    from .registry import open_backend
    b = open_backend("kernel", probe=False)
    try:
        # how a uffd can be opened, and why not
        res["open"] = probe_open()
        opened = [o["via"] for o in res["open"] if o["ok"]]
        if opened:
            v.append(_verdict("open", OK, "userfaultfd opens via " + ", ".join(opened) +
                              "".join(f"; {o['via']}: {o['errno']} ({o['hint']})" for o in res["open"] if not o["ok"])))
            if opened == ["user-mode-only"]:
                v.append(_verdict("kernel-mode faults", UNSUPPORTED,
                                  "only UFFD_USER_MODE_ONLY uffds open for this user (uffdctl uses them): faults "
                                  "the kernel takes itself (a syscall writing the range) are not handled; cure: "
                                  "sysctl vm.unprivileged_userfaultfd=1, CAP_SYS_PTRACE, or access to "
                                  "/dev/userfaultfd"))
            res["open_unprivileged"] = probe_open_unprivileged()
            if res["open_unprivileged"] is not None:
                ok_u = [o["via"] for o in res["open_unprivileged"] if o["ok"]]
                v.append(_verdict(f"open as uid {NOBODY}", OK, "opens via " + (", ".join(ok_u) or "nothing") + "".join(
                    f"; {o['via']}: {o['errno']} ({o['hint']})" for o in res["open_unprivileged"] if not o["ok"])))
        else:
            v.append(_verdict("open", UNSUPPORTED, "; ".join(f"{o['via']}: {o['errno']} - {o['hint']}"
                                                             for o in res["open"])))
            return _finish(res)
        # UFFDIO_API
        with b.userfaultfd() as u:
            api = u.api(0)
        res["api"] = api.to_dict()
        names = uapi.Feature.decode(api.features)
        known = len([f for f in uapi.Feature])
        v.append(_verdict("features", OK, f"UFFDIO_API features 0x{api.features:x} ({len(names)}/{known}): "
                          + " ".join(n.replace("UFFD_FEATURE_", "") for n in names)))
        # memory types x register modes
        rows = probe_register(b, api.features)
        res["register"] = rows
        bad = [r for r in rows if r["status"] == BROKEN]
        unsup = [r for r in rows if r["status"] == UNSUPPORTED]
        good = [r for r in rows if r["status"] == OK]
        msg = f"{len(good)}/{len(rows)} memory type x mode pairs register"
        na: dict = {}
        for r in rows:
            if r["status"] == NA:
                na.setdefault((r["memtype"], r["errno"], r["reason"]), []).append(r["mode"])
        for (mt, err, why), modes in na.items():
            msg += f"; n/a as expected on {mt}: {' '.join(modes)} -> {err} ({why})"
        reasons = sorted({f"{r['memtype']}: {r['reason']}" for r in unsup})
        if reasons:
            msg += "; unsupported: " + "; ".join(reasons)
        if bad:
            msg += "; BROKEN: " + "; ".join(f"{r['mode']} on {r['memtype']}: {r['errno']}" for r in bad)
        v.append(_verdict("register", BROKEN if bad else (UNSUPPORTED if unsup else OK), msg))
        # soft-dirty round trip
        sd = b.soft_dirty()
        res["soft_dirty"] = sd.to_dict()
        if sd.available:
            v.append(_verdict("soft-dirty", OK, sd.reason))
        elif "did not clear" in sd.reason:
            v.append(_verdict("soft-dirty", BROKEN, sd.reason))
        else:
            v.append(_verdict("soft-dirty", UNSUPPORTED, f"not available ({sd.reason})"))
        # PAGEMAP_SCAN categories
        scratch = b.mmap(uapi.PAGE_SIZE, MemType.ANON, name="__check_scan")
        try:
            cats = probe_scan_categories(b, scratch.addr)
        finally:
            b.munmap(scratch.addr, scratch.len)
        res["pagemap_scan"] = {"categories": cats}
        have = [c for c, y in cats.items() if y]
        if not have:
            v.append(_verdict("pagemap-scan", UNSUPPORTED, "PAGEMAP_SCAN is not available (kernel < 6.7)"))
        else:
            missing = [c for c, y in cats.items() if not y]
            v.append(_verdict("pagemap-scan", OK, f"{len(have)}/{len(cats)} categories: " + " ".join(have)
                              + (f" (not accepted: {' '.join(missing)})" if missing else "")))
        # huge pages
        mi = meminfo()
        hp = {"HugePages_Total": mi.get("HugePages_Total", 0), "HugePages_Free": mi.get("HugePages_Free", 0),
              "HugePages_Rsvd": mi.get("HugePages_Rsvd", 0), "Hugepagesize": mi.get("Hugepagesize", 0) * 1024}
        # a free page that a reservation holds cannot back a new mapping (hugetlb_reserve_pages() counts
        # resv_huge_pages against free_huge_pages); reservations can outlive every mapping (seen here)
        hp["usable"] = max(0, hp["HugePages_Free"] - hp["HugePages_Rsvd"])
        res["hugetlb"] = hp
        size = f"{hp['Hugepagesize'] >> 10} KiB"
        if hp["HugePages_Total"] and hp["usable"]:
            v.append(_verdict("hugetlb", OK, f"{hp['HugePages_Total']} pages reserved "
                                             f"({hp['usable']} usable of {hp['HugePages_Free']} free, {size})"))
        elif hp["HugePages_Total"]:
            v.append(_verdict("hugetlb", UNSUPPORTED,
                              f"{hp['HugePages_Total']} pages reserved, none usable: reservations hold all "
                              f"{hp['HugePages_Free']} free (HugePages_Rsvd={hp['HugePages_Rsvd']}; "
                              f"sysctl vm.nr_hugepages={hp['HugePages_Total'] + 1} or more adds usable ones)"))
        else:
            v.append(_verdict("hugetlb", UNSUPPORTED, "0 pages reserved (HugePages_Total=0; "
                                                      "sysctl vm.nr_hugepages=N reserves some)"))
        # sysctls (informational)
        unpriv = _sysctl("vm.unprivileged_userfaultfd")
        res["sysctl"] = {"vm.unprivileged_userfaultfd": None if unpriv is None else int(unpriv)}
        try:
            st = os.stat("/dev/userfaultfd")
            res["sysctl"]["dev_userfaultfd_mode"] = oct(st.st_mode & 0o777)
        except OSError:
            res["sysctl"]["dev_userfaultfd_mode"] = None
        meaning = {"0": "unprivileged users need UFFD_USER_MODE_ONLY, CAP_SYS_PTRACE or /dev/userfaultfd access",
                   "1": "any user may open a uffd that handles kernel faults too"}.get(unpriv, "not present")
        v.append(_verdict("vm.unprivileged_userfaultfd", OK, f"{unpriv}: {meaning}"))
    finally:
        b.close()
    return _finish(res)


def _finish(res: dict) -> dict:
    st = {x["status"] for x in res["verdicts"]}
    res["exit"] = 1 if BROKEN in st else 4 if UNSUPPORTED in st else 0
    return res


def render(res: dict, verbose: bool = False) -> str:
    k = res["kernel"]
    lines = [f"kernel: {k['release']} {k['machine']}" + (f" ({k['version']})" if k.get("version") else "")]
    if k.get("emulator_twin_description"):
        lines.append(f"emulator twin: {k['emulator_twin_description']}")
    tag = {OK: "ok", UNSUPPORTED: "UNSUPPORTED", BROKEN: "BROKEN", NA: "n/a"}
    for x in res["verdicts"]:
        lines.append(f"{x['check']}: {tag[x['status']]}: {x['message']}")
    if verbose and res.get("register"):
        lines.append("register matrix (memtype mode -> ioctls | errno reason):")
        for r in res["register"]:
            got = ("|".join(n.replace("_UFFDIO_", "") for n in r["ioctls_decoded"]) if r["status"] == OK
                   else f"{r['status']} {r['errno'] or ''} {r['reason']}")
            lines.append(f"  {r['memtype']:16s} {r['mode']:18s} {got}")
    n_unsup = sum(1 for x in res["verdicts"] if x["status"] == UNSUPPORTED)
    if res["exit"] == 0:
        lines.append("Looks good.")
    elif res["exit"] == 4:
        lines.append(f"Looks good, but {n_unsup} thing{'s' if n_unsup > 1 else ''} "
                     f"{'are' if n_unsup > 1 else 'is'} unsupported here (exit 4).")
    else:
        lines.append("Something is broken (exit 1).")
    return "\n".join(lines)
