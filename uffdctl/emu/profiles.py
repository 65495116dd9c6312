"""Kernel-version profiles: small named tables of switches (spec §1.4).

Each profile is a :class:`Profile` — a handful of booleans naming the kernel
change that flips them — never a copy of code.  The model (``mm/``,
``fs/userfaultfd.py``) asks ``profile.<switch>`` at the one place the kernel's
behaviour forks.  ``CONFIG_MEM_SOFT_DIRTY`` is not part of a profile: it is its
own switch (``EmuBackend(soft_dirty=...)``).

The two ``rfc-hints*`` profiles model Nadav Amit's 2022 access/write-hint RFC
(spec §1.2), which was **never merged**: the mode bits below are private to
uffdctl and are not kernel ABI.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .. import uapi

# Never-merged RFC hint modes (uffdctl-private values; documented in docs/emulator.md).
UFFDIO_COPY_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_COPY_MODE_WRITE_LIKELY = 1 << 3
UFFDIO_ZEROPAGE_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_ZEROPAGE_MODE_WRITE_LIKELY = 1 << 3
UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY = 1 << 2
UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY = 1 << 3
HINT_MODES = UFFDIO_COPY_MODE_ACCESS_LIKELY | UFFDIO_COPY_MODE_WRITE_LIKELY

_F = uapi.Feature
FEATURES_5_19 = int(_F.PAGEFAULT_FLAG_WP | _F.EVENT_FORK | _F.EVENT_REMAP | _F.EVENT_REMOVE
                    | _F.MISSING_HUGETLBFS | _F.MISSING_SHMEM | _F.EVENT_UNMAP | _F.SIGBUS | _F.THREAD_ID
                    | _F.MINOR_HUGETLBFS | _F.MINOR_SHMEM | _F.EXACT_ADDRESS | _F.WP_HUGETLBFS_SHMEM)


@dataclass(frozen=True)
class Profile:
    name: str
    release: str
    features: int                       # what UFFDIO_API offers (POISON/MOVE also gate their ioctls)
    # mwriteprotect_range(): 5.19-6.2 pass vm_get_page_prot(vm_flags [& ~VM_WRITE]) and no
    # MM_CP_TRY_CHANGE_WRITABLE; 6.3+ (931298e103c2) pass vma->vm_page_prot and try the upgrade.
    uffd_wp_range_vm_page_prot: bool
    # 51d3d5eb74ff (6.2, 6.1.8): a shared VMA with VM_UFFD_WP gets a read-only vm_page_prot.
    writenotify_uffd_wp: bool
    # 64fe24a3e05e (6.0) required pte_dirty() for exclusive anon in can_change_pte_writable(); 6.2 dropped it.
    can_change_writable_needs_dirty: bool
    mprotect_try_change_writable: bool = True   # 64fe24a3e05e (6.0): mprotect() upgrades exclusive anon
    continue_mode_wp: bool = False      # UFFDIO_CONTINUE_MODE_WP (6.4)
    move_dirty_from_src: bool = False   # 75cb1cca2c88 (6.15): MOVE dst dirty = src dirty
    early_eagain_result: bool = False   # 95567729173e (6.15): early EAGAIN written into the result field
    guard_markers: bool = False         # MADV_GUARD_INSTALL (6.13)
    pagemap_guard_bit: bool = False     # PM_GUARD_REGION / PAGE_IS_GUARD (6.15)
    install_over_guard: bool = False    # pte_none_mostly(): COPY may overwrite a guard marker (6.13-6.18)
    pagemap_scan: bool = False          # PAGEMAP_SCAN (6.7)
    scan_written_any_vma: bool = False  # 6.18: PAGE_IS_WRITTEN for present/swap on any VMA (7.3: uffd-wp VMAs)
    # Per-VMA locks (6.4+): a userfault's first retry is an mmap_lock retry (minor); without them the
    # retry carries FAULT_FLAG_TRIED and mm_account_fault() counts it major [measured: 6.1.192 guest].
    per_vma_lock: bool = True
    # mwriteprotect_range() loops over the VMAs of the range (6.5+); before, the range had to lie in one
    # VMA (find_dst_vma) or the ioctl failed with ENOENT and protected nothing [measured: 6.1.192 guest].
    wp_multi_vma: bool = True
    # swap type pagemap shows for PTE markers (bits 0-4): 0x1f on 6.18, 0x1e on 6.1 [measured in guests].
    pte_marker_swp_type: int = 0x1F
    # 0cef0bb836e3 "mm: clear uffd-wp PTE/PMD state on mremap()" (6.13; 6.12.11, 6.1.191): PTEs moved out of
    # a VMA whose ctx lacks EVENT_REMAP lose their uffd-wp bits and markers; before, they kept them.
    mremap_clear_uffd_wp: bool = True
    # 6.17 "mm/mremap: permit mremap() move of multiple VMAs": MREMAP_FIXED without resizing may span VMAs
    # and holes (uffd-registered ones excepted: EFAULT there); before, EFAULT for any range past one VMA.
    mremap_multi_vma: bool = True
    hints: str | None = None            # None | "rfc" | "rfc-fixed": the 2022 access/write hints
    clean_wp_noflush: bool = False      # RFC 12/14: RW->RO of a clean PTE needs no TLB flush

    def with_(self, **switches) -> "Profile":
        """This profile with some switches overridden (unknown names raise)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(switches) - known)
        if bad:
            raise ValueError(f"unknown profile switch(es) {', '.join(bad)} (valid: {', '.join(sorted(known))})")
        return replace(self, **switches)

    def switches(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "release")}


_5_19 = Profile("5.19", "5.19.0", FEATURES_5_19, uffd_wp_range_vm_page_prot=False,
                writenotify_uffd_wp=False, can_change_writable_needs_dirty=True, mprotect_try_change_writable=False,
                per_vma_lock=False, wp_multi_vma=False, pte_marker_swp_type=0x1E, mremap_clear_uffd_wp=False,
                mremap_multi_vma=False)
_6_18 = Profile("6.18", "6.18.44", uapi.FEATURES_6_18, uffd_wp_range_vm_page_prot=True,
                writenotify_uffd_wp=True, can_change_writable_needs_dirty=False, continue_mode_wp=True,
                move_dirty_from_src=True, early_eagain_result=True, guard_markers=True, pagemap_guard_bit=True,
                install_over_guard=True, pagemap_scan=True, scan_written_any_vma=True)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    _5_19,
    replace(_5_19, name="6.1", release="6.1.0", mprotect_try_change_writable=True,
            mremap_clear_uffd_wp=True),    # held to Debian's 6.1.192, which has the 6.1.191 backport
    replace(_5_19, name="6.2", release="6.2.0", writenotify_uffd_wp=True, can_change_writable_needs_dirty=False,
            mprotect_try_change_writable=True),
    _6_18,
    replace(_6_18, name="7.3", release="7.3.4", install_over_guard=False, scan_written_any_vma=False),
    replace(_5_19, name="rfc-hints", release="5.19.0-rfc-hints", hints="rfc", mprotect_try_change_writable=True,
            can_change_writable_needs_dirty=False),
    replace(_5_19, name="rfc-hints-fixed", release="5.19.0-rfc-hints-fixed", hints="rfc-fixed",
            mprotect_try_change_writable=True,
            can_change_writable_needs_dirty=False),
)}
DEFAULT_PROFILE = "6.18"


def get_profile(name: str, **switches) -> Profile:
    try:
        p = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown emulator profile {name!r} (valid: {', '.join(PROFILES)})") from None
    return p.with_(**switches) if switches else p
