"""Kernel-version profiles: small named tables of switches (each with the kernel commit that flips it).

Each profile is a :class:`Profile` — a handful of booleans naming the kernel
change that flips them — never a copy of code.  The model (``mm/``,
``fs/userfaultfd.py``) asks ``profile.<switch>`` at the one place the kernel's
behaviour forks.  ``CONFIG_MEM_SOFT_DIRTY`` is not part of a profile: it is its
own switch (``EmuBackend(soft_dirty=...)``).

The two ``rfc-hints*`` profiles model Nadav Amit's 2022 access/write-hint RFC
(Nadav Amit's 2022 RFC series of userfaultfd access/write hints), which was **never merged**: the mode bits below are private to
uffdctl and are not kernel ABI.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from .. import uapi

# Never-merged RFC hint modes (uffdctl-private values; documented in docs/emulator.md).
from ..uapi import (UFFDIO_COPY_MODE_ACCESS_LIKELY, UFFDIO_COPY_MODE_WRITE_LIKELY,  # noqa: F401 (re-exported)
                    UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY, UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY,
                    UFFDIO_ZEROPAGE_MODE_ACCESS_LIKELY, UFFDIO_ZEROPAGE_MODE_WRITE_LIKELY)
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
    # -- the rest of the mm surface (fork, mremap, mprotect, THP, swap, files), per version.  Data for the
    # model; where the fact is not measured on a real kernel of that series the comment says so.
    # fork, copy_nonpresent_pte(): a uffd-wp marker reaches a child whose VMA is not uffd-wp (no EVENT_FORK)
    # only before "mm/uffd: fix pte marker when fork() without fork event" (6.2; 6.1.11) [5.19: source history].
    fork_wp_marker_without_event: bool = False
    # fork: a poison / swapin-error marker reaches a child without EVENT_FORK.  6.2+ copy_pte_marker() always
    # copies it (host 6.18 measured); 6.1.192 copies only when the child VMA is uffd-wp; 5.19 [source history].
    fork_poison_marker_without_event: bool = True
    # vma_needs_copy(): "uffd_wp|anon_vma" (5.19-6.18.36: userfaultfd_wp(dst) or PFNMAP/MIXEDMAP or
    # src->anon_vma) or "copy_on_fork" (6.18.37+, 35e247032606 / "make VM_MAYBE_GUARD copy-on-fork":
    # dst VM_COPY_ON_FORK flags incl. VM_MAYBE_GUARD, or src->anon_vma).  Either way a shared VMA without
    # EVENT_FORK gives the child no PTEs unless it ever had a guard region.
    vma_needs_copy: str = "copy_on_fork"
    # 867a43a34ff8 "userfaultfd: use per-vma locks in userfaultfd operations" (6.9): uffd_lock_vma() /
    # find_vma_and_prepare_anon() give a private VMA an anon_vma before any check, so even an mfill that
    # fails ENOENT (range not registered) prepares one, and a later fork copies its PTEs (vma_needs_copy());
    # before, __mcopy_atomic() prepared it only once the checks passed [measured: 6.1.192 guest, seed 130].
    uffd_lock_vma_prepares_anon: bool = True
    # 0cef0bb836e3 "mm: clear uffd-wp PTE/PMD state on mremap()" (6.13; 6.12.11, 6.1.191): PTEs moved out of
    # a VMA whose ctx lacks EVENT_REMAP lose their uffd-wp bits and markers; before, they kept them.
    mremap_clear_uffd_wp: bool = True
    # fork, copy_hugetlb_page_range(): a present huge PTE's uffd-wp bit is cleared for a child VMA without
    # uffd-wp (no EVENT_FORK) only since 5a2f8d22ace4 "mm/hugetlb: fix uffd-wp during fork()" (6.4; its
    # 6.1-stable backport failed to apply).  Before, the child kept it [measured: 6.1.192 guest keeps it].
    fork_hugetlb_clears_uffd_wp: bool = True
    # 6.17 "mm/mremap: permit mremap() move of multiple VMAs": MREMAP_FIXED without resizing may span VMAs
    # and holes (uffd-registered ones excepted: EFAULT there); before, EFAULT for any range past one VMA.
    mremap_multi_vma: bool = True
    # bf14d4a05387 "mm: propagate VM_SOFTDIRTY on merge" (6.19; 6.18.37): a merged VMA is VM_SOFTDIRTY if
    # either input was (soft-dirty selftest test_merge); before, the neighbour's flag wins.
    vm_softdirty_sticky_merge: bool = True
    # do_swap_page() maps an exclusive anon page writable on a *read* swap-in (VM_WRITE, not uffd-wp, no
    # soft-dirty wp): 6.12 and later (host 6.18 measured: 0 faults on the next write); 6.1.192: write only.
    swapin_read_writable: bool = True
    # swap_writepage() (6.12, 0ca0c24e3211 "mm: store zero pages to be swapped out in a bitmap"): a zero-filled
    # folio is not written, only marked in the zeromap, so reclaim frees it at once and its swap-in is a major
    # fault into a new page [measured on 6.18 by the differential]; before, it was written and stayed in the
    # swap cache like any other.
    swap_zeromap: bool = True
    # 354dffd29575 "mm: support batched unmap for lazyfree large folios during reclamation" (6.16): a PTE-mapped
    # lazyfree large folio is unmapped as one batch -- all discarded, or all kept when one PTE is dirty
    # [measured on 6.18]; before, try_to_unmap_one() went PTE by PTE, discarding up to the first dirty one
    # [measured: 6.12.117 guest, test_madvise_of_a_pte_mapped_thp_by_version].
    lazyfree_batch_unmap: bool = True
    # madvise_folio_pte_batch() ("mm: madvise: avoid split during MADV_PAGEOUT and MADV_COLD" and "mm/madvise:
    # optimize lazyfreeing with mTHP in madvise_free", 6.10): the PTE loops of MADV_COLD / PAGEOUT / FREE split
    # a PTE-mapped large folio only when the range (or the PTEs left) cover it in part, and skip one mapped
    # elsewhere.  Before, they split every one whose page is mapped once (COLD/PAGEOUT: page_mapcount(page);
    # FREE: folio_estimated_sharers(), the first page's) and stop the PMD's loop ("break") at one that is not
    # [measured: 6.1.192 guest, a MADV_FREE of a whole PTE-mapped THP then PAGEOUT keeps only its redirtied
    # pages; 6.12 source has the batch].
    madvise_folio_pte_batch: bool = True
    # MADV_COLLAPSE (6.1; khugepaged's uffd rules: a none PTE in an armed VMA -> EBUSY, a uffd-wp PTE -> EINVAL).
    madv_collapse: bool = True
    # "mm/khugepaged: check again on anon uffd-wp during isolation" (6.3; 6.1.26).
    khugepaged_uffd_wp_recheck: bool = True
    # "mm/userfaultfd: propagate uffd-wp bit when PTE-mapping the huge zeropage" (6.3; 6.1.21).
    huge_zeropage_split_keeps_uffd_wp: bool = True
    # f1eb1bacfba9 (6.3): pte/pmd_mkuffd_wp() also write-protect; before, installers wrprotect explicitly
    # (same resulting PTE).
    mkuffd_wp_wrprotects: bool = True
    # anon mTHP (6.8): large anon folios, order 0 whenever userfaultfd_armed(vma) (alloc_anon_folio()).
    mthp: bool = True
    # per-size shmem THP knobs, hugepages-*kB/shmem_enabled (6.11) [source history].
    shmem_mthp: bool = True
    # "mm: allocate THP on hugezeropage wp-fault" (6.13): a write to the huge zero PMD maps a THP (measured on
    # 6.18); before, the PMD is split and the write gets a 4 KiB page [source history, not measured].
    huge_zero_wp_thp: bool = True
    # "mm: remap unused subpages to shared zeropage when splitting isolated thp" (6.12): splitting an anon large
    # folio maps its zero-filled pages to the shared zero page, keeping uffd-wp / soft-dirty (6.12.54) [measured
    # on 6.18: MADV_PAGEOUT / MADV_COLD of part of a THP leaves 511 zero-page PTEs].
    thp_split_zero_remap: bool = True
    # CONFIG_PT_RECLAIM (6.14, x86-64): MADV_DONTNEED frees a PTE table it left empty when it covered the whole
    # PMD (zap_details.reclaim_pt) [measured on 6.18: a read there then maps the huge zero PMD; found by the
    # differential at seed 903]; 6.12 and before keep the table [source history].
    pt_reclaim: bool = True
    # "fs/proc/task_mmu: remove per-page mapcount dependency for PM_MMAP_EXCLUSIVE (CONFIG_NO_PAGE_MAPCOUNT)"
    # (6.15): pagemap_pmd_range() asks __folio_page_mapped_exclusively(folio, page) of the PMD's head page for
    # all 512 entries (before: folio_precise_page_mapcount() of page + idx) [measured on 6.18, PAGE_MAPCOUNT=y:
    # a child's COW of the head page of a shared THP sets X on all of the parent's PMD, of another page none].
    pagemap_pmd_head_mapcount: bool = True
    # "mm: Copy-on-Write (COW) reuse support for PTE-mapped THP" (6.15): a write fault on a page of a PTE-mapped
    # anon THP that no other mm maps any more reuses it (__wp_can_reuse_large_anon_folio()) [measured on 6.18
    # by the differential]; 6.12 and 6.1 copy it ("if (folio_test_large(folio)) return false" in 6.12's
    # wp_can_reuse_anon_folio(); 6.1's "folio_ref_count(folio) > 1 + folio_test_swapcache(folio)" fails while
    # another page of the folio is mapped -- its reuse of a large folio's last mapped page is not modelled).
    wp_reuse_large_anon: bool = True
    # Large folios in a disk file's page cache (ext4, 6.16): page_cache_ra_order() adds the readahead window's
    # folios itself, and marks PG_readahead where the unclamped window says (measured on 6.18 by the
    # differential); without them (6.12 and before on ext4) do_page_cache_ra() marks the clamped window [source].
    filemap_large_folios: bool = True
    # userfaultfd_release() resets uffd-wp PTEs and markers of the closed ctx ("mm/userfaultfd: reset ptes
    # when close() for wr-protected ones", 6.2; 6.1.191).  5.19: they stay.
    release_resets_wp: bool = True
    # Register modes by backing (vma_can_userfault()): anon, shmem (memfd, tmpfs, MAP_SHARED|MAP_ANONYMOUS,
    # /dev/zero) and hugetlb take every mode; other files and SysV shm (shm_vm_ops is not shmem) only WP with
    # UFFD_FEATURE_WP_ASYNC, so it follows ``features`` (6.7+); MINOR only on shmem/hugetlb.
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


# What 5.19 lacks of the later mm-surface changes (fork markers and the vma_needs_copy() era, mremap's
# uffd-wp clearing, MADV_COLLAPSE, mTHP, read swap-in writable, release() resetting uffd-wp).
_MM_5_19 = dict(fork_wp_marker_without_event=True, fork_poison_marker_without_event=True,
                uffd_lock_vma_prepares_anon=False,
                vma_needs_copy="uffd_wp|anon_vma", mremap_clear_uffd_wp=False, mremap_multi_vma=False,
                vm_softdirty_sticky_merge=False,
                swapin_read_writable=False, madv_collapse=False, khugepaged_uffd_wp_recheck=False,
                huge_zeropage_split_keeps_uffd_wp=False, mkuffd_wp_wrprotects=False, mthp=False, shmem_mthp=False,
                huge_zero_wp_thp=False, thp_split_zero_remap=False, pt_reclaim=False, release_resets_wp=False,
                swap_zeromap=False, pagemap_pmd_head_mapcount=False, fork_hugetlb_clears_uffd_wp=False,
                wp_reuse_large_anon=False, filemap_large_folios=False, lazyfree_batch_unmap=False,
                madvise_folio_pte_batch=False)
# Debian's 6.1.192 carries the stable backports named in the fields' comments (6.1.11, 6.1.21, 6.1.26,
# 6.1.191); what it does not have: poison markers copied without EVENT_FORK, read swap-in writable, mTHP.
_MM_6_1 = dict(_MM_5_19, fork_wp_marker_without_event=False, fork_poison_marker_without_event=False,
               mremap_clear_uffd_wp=True, madv_collapse=True, khugepaged_uffd_wp_recheck=True,
               huge_zeropage_split_keeps_uffd_wp=True, release_resets_wp=True)
# 6.2 (end of life before the 2025 mremap fix): the fork-marker fix and copy_pte_marker() are in; the
# 6.1.21/6.1.26 backports went to 6.1.y and 6.3, not 6.2.y [source history, not measured].
_MM_6_2 = dict(_MM_5_19, fork_wp_marker_without_event=False, madv_collapse=True, release_resets_wp=True)

_5_19 = Profile("5.19", "5.19.0", FEATURES_5_19, uffd_wp_range_vm_page_prot=False,
                writenotify_uffd_wp=False, can_change_writable_needs_dirty=True, mprotect_try_change_writable=False,
                per_vma_lock=False, wp_multi_vma=False, pte_marker_swp_type=0x1E, **_MM_5_19)
_6_18 = Profile("6.18", "6.18.44", uapi.FEATURES_6_18, uffd_wp_range_vm_page_prot=True,
                writenotify_uffd_wp=True, can_change_writable_needs_dirty=False, continue_mode_wp=True,
                move_dirty_from_src=True, early_eagain_result=True, guard_markers=True, pagemap_guard_bit=True,
                install_over_guard=True, pagemap_scan=True, scan_written_any_vma=True)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    _5_19,
    # 51d3d5eb74ff is in 6.1.192 (vma_wants_writenotify()'s "write faults for uffd-wp tracking", and
    # userfaultfd_set_vm_flags()): a read fault of a uffd-wp shared VMA maps read-only, the write faults
    # [measured: 6.1.192 guest, differential seed 152].
    replace(_5_19, name="6.1", release="6.1.192", mprotect_try_change_writable=True, writenotify_uffd_wp=True,
            **_MM_6_1),
    replace(_5_19, name="6.2", release="6.2.0", writenotify_uffd_wp=True, can_change_writable_needs_dirty=False,
            mprotect_try_change_writable=True, **_MM_6_2),
    # Debian 13 / RHEL 10: held to Debian's 6.12.117 in the vmtest guest (tests/data/kernels/6.12.117.json).
    # Before 6.18: no guard regions (6.13), neither the 6.18.37 sticky VM_SOFTDIRTY nor the copy-on-fork
    # VMA flags.  Two 6.15 fixes *are* in 6.12.117 (stable backports, measured in the guest): MOVE's dst is
    # dirty only if the src was (75cb1cca2c88: a MOVE of a clean MADV_FREE page left Private_Dirty 0), and
    # an early EAGAIN writes -EAGAIN into the result field (95567729173e: COPY with a REMOVE event unread).
    replace(_6_18, name="6.12", release="6.12.117",
            guard_markers=False, pagemap_guard_bit=False, install_over_guard=False,
            vma_needs_copy="uffd_wp|anon_vma", vm_softdirty_sticky_merge=False, huge_zero_wp_thp=False,
            pt_reclaim=False, pagemap_pmd_head_mapcount=False, wp_reuse_large_anon=False, filemap_large_folios=False,
            mremap_multi_vma=False,      # 6.17 [source history, not measured in the 6.12 guest]
            lazyfree_batch_unmap=False),
    _6_18,
    replace(_6_18, name="7.3", release="7.3.4", install_over_guard=False, scan_written_any_vma=False),
    replace(_5_19, name="rfc-hints", release="5.19.0-rfc-hints", hints="rfc", mprotect_try_change_writable=True,
            can_change_writable_needs_dirty=False),
    replace(_5_19, name="rfc-hints-fixed", release="5.19.0-rfc-hints-fixed", hints="rfc-fixed",
            mprotect_try_change_writable=True,
            can_change_writable_needs_dirty=False),
)}
DEFAULT_PROFILE = "6.18"

# Stable backports whose first sublevel is known, per series: (sublevel, the change, {switch: (before, after)}).
# A profile named by a full release, "6.1.176", is its series' profile (which is held to the series'
# ``release``, 6.1.192) with every backport of a later sublevel taken back: a stable kernel is its series
# plus what was backported by then.  Found by the 6.1.176 guest (Debian's 6.1.0-50): its mremap() keeps a
# moved PTE's uffd-wp bit, where 6.1.192's clears it.  Measured here: the two 6.1.191 entries (6.1.176 against
# 6.1.192, tests/data/kernels/); the other sublevels are the ones the switches' comments above cite (stable
# history, no kernel of those sublevels booted here).  Backports of an unrecorded sublevel stay as the
# series' profile has them (those of 6.12's two 6.15 fixes are among them).
STABLE_BACKPORTS: dict[str, list[tuple[int, str, dict]]] = {
    "6.1": [
        (8, "51d3d5eb74ff (vma_wants_writenotify(): write faults for uffd-wp tracking)",
         {"writenotify_uffd_wp": (False, True)}),
        (11, "mm/uffd: fix pte marker when fork() without fork event", {"fork_wp_marker_without_event": (True, False)}),
        (21, "mm/userfaultfd: propagate uffd-wp bit when PTE-mapping the huge zeropage",
         {"huge_zeropage_split_keeps_uffd_wp": (False, True)}),
        (26, "mm/khugepaged: check again on anon uffd-wp during isolation",
         {"khugepaged_uffd_wp_recheck": (False, True)}),
        (191, "0cef0bb836e3 mm: clear uffd-wp PTE/PMD state on mremap()", {"mremap_clear_uffd_wp": (False, True)}),
        (191, "mm/userfaultfd: reset ptes when close() for wr-protected ones", {"release_resets_wp": (False, True)}),
    ],
    "6.12": [
        (11, "0cef0bb836e3 mm: clear uffd-wp PTE/PMD state on mremap()", {"mremap_clear_uffd_wp": (False, True)}),
    ],
    "6.18": [
        (37, "35e247032606 make VM_MAYBE_GUARD copy-on-fork",
         {"vma_needs_copy": ("uffd_wp|anon_vma", "copy_on_fork")}),
        (37, "bf14d4a05387 mm: propagate VM_SOFTDIRTY on merge", {"vm_softdirty_sticky_merge": (False, True)}),
    ],
}


def split_release(name: str) -> tuple[str, int] | None:
    """("6.1", 176) for "6.1.176" (a trailing "-suffix" allowed), None for a name without a sublevel."""
    m = re.fullmatch(r"(\d+\.\d+)\.(\d+)(?:[-+~][\w.+~-]*)?", name)
    return (m.group(1), int(m.group(2))) if m else None


def taken_back(series: str, sublevel: int) -> list[tuple[int, str, dict]]:
    """The backports of ``series`` that ``series.sublevel`` does not have yet."""
    return [b for b in STABLE_BACKPORTS.get(series, ()) if b[0] > sublevel]


def series_of(name: str) -> str:
    """The profile a release profile derives from ("6.1" for "6.1.176"); any other name is its own."""
    sr = split_release(name) if name not in PROFILES else None
    return sr[0] if sr and sr[0] in PROFILES else name


def profile_names_help() -> str:
    return f"{', '.join(PROFILES)}, or a release of a series such as 6.1.176"


def get_profile(name: str, **switches) -> Profile:
    """A profile by name ("6.1", "6.18", "rfc-hints", ...) or by a release of a series ("6.1.176": the 6.1
    profile less the stable backports after 6.1.176, see STABLE_BACKPORTS), with ``switches`` overridden."""
    p = PROFILES.get(name)
    if p is None:
        sr = split_release(name)
        if sr is None or sr[0] not in PROFILES:
            raise ValueError(f"unknown emulator profile {name!r} (valid: {profile_names_help()})")
        series, sub = sr
        back = {k: before for _, _, sw in taken_back(series, sub) for k, (before, _after) in sw.items()}
        p = replace(PROFILES[series], name=name, release=name, **back)
    return p.with_(**switches) if switches else p


def is_profile(name: str) -> bool:
    try:
        get_profile(name)
    except ValueError:
        return False
    return True
