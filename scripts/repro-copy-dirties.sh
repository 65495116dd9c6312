#!/bin/sh
# repro-copy-dirties.sh: UFFDIO_COPY marks a page the process never wrote dirty and soft-dirty
#
# Generated from uffdctl/repro/scenarios/copy-dirties.uffd by `python -m uffdctl.repro.shell scripts`;
# edit the scenario, not this file (tests/test_repro_shell.py compares them).
#
# Thread: Nadav Amit, 2022-06-27: marking the PTE as dirty (and soft-dirty) might be misleading,
# causing unnecessary userspace writeback of memory.
# Cites: 9ae0f87d009c (5.16, mfill_atomic_install_pte(): pte_mkdirty(), which sets _PAGE_SOFT_DIRTY
# on x86); measured on 6.18: Private_Dirty 4 kB and PAGE_IS_WRITTEN after one UFFDIO_COPY
# REPRODUCED means: right after the install, the untouched page reads soft-dirty (pagemap bit 55);
# where the kernel has no soft-dirty, smaps Private_Dirty (and, in case copy-written, PAGEMAP_SCAN
# PAGE_IS_WRITTEN) say the same
#
# Usage: scripts/repro-copy-dirties.sh [CASE ...]    (cases: copy, copy-wp, zeropage, continue, move, copy-written; default all)
#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)
# Each case runs in a fresh session; after the last step the watched page's pagemap entry
# (buf:0) and the regions' Private_Dirty are printed; each touch prints its minor faults.
# `uffdctl repro copy-dirties` runs the same steps with the per-step state and a verdict.
set -eu
U=${UFFDCTL:-uffdctl}
made=
if [ -z "${UFFDCTL_RUNTIME_DIR:-}" ]; then
    UFFDCTL_RUNTIME_DIR=$(mktemp -d /tmp/uffdctl-repro.XXXXXX); made=1
fi
export UFFDCTL_RUNTIME_DIR
S=
cleanup() {
    [ -z "$S" ] || $U session stop "$S" >/dev/null 2>&1 || true
    [ -z "$made" ] || rm -rf "$UFFDCTL_RUNTIME_DIR"
}
trap cleanup EXIT
step() { printf '$ uffdctl %s\n' "$*"; $U "$@"; }
tagged() { case " $TAGS " in *" $1 "*) return 0 ;; esac; return 1; }
start() {
    S=repro$$-$1
    export UFFDCTL_SESSION=$S
    $U session start --name "$S" --backend "${UFFDCTL_BACKEND:-kernel}" \
        ${UFFDCTL_PROFILE:+--profile "$UFFDCTL_PROFILE"} >/dev/null
}
stop() { $U session stop "$S" >/dev/null; S=; }

steps() {    # one case: its variables and TAGS are set by case_* below
    step mmap --size 8K --type ${TYPE} --name buf
    step mmap --size 4K --type anon --name spare    # written right after clear-refs 4 (see below)
    if tagged continue; then step alias buf --name cache; fi    # a second mapping of the same shmem file
    if tagged continue; then step touch cache:0 --write --wait; fi    # the page-cache page exists: written through the other mapping
    if tagged move; then step mmap --size 4K --type anon --name stage; fi
    if tagged move; then step touch stage:0 --write --wait; fi    # the page MOVE takes
    if tagged written; then step api --features thread_id,wp_async; fi    # async uffd-wp: the kernel's own dirty tracking (6.7+)
    step register buf --mode ${MODE}
    if tagged written; then step writeprotect buf --on; fi    # arm the tracker: every page of buf "not written"
    step clear-refs 4    # clear soft-dirty (a no-op without CONFIG_MEM_SOFT_DIRTY)
    step touch spare:0 --write --wait    # clear-refs 4 write-protects the toucher's stack too: take those faults here
    step ${INSTALL}    # install buf:0; the process never writes it
    if tagged written; then step scan buf --return-mask written; fi    # PAGEMAP_SCAN: which pages of buf count as written?
    step pagemap buf:0    # the watched page after the last step
    step regions                # Private_Dirty
}

# case copy: UFFDIO_COPY into a MISSING-registered anon page
# REPRODUCED when soft_dirty == 1 (without soft-dirty: private_dirty > 0)
case_copy() { TYPE='anon'; MODE='missing'; INSTALL='copy buf:0'; TAGS='copy'; start copy; steps; stop; }

# case copy-wp: UFFDIO_COPY with UFFDIO_COPY_MODE_WP (installed read-only + uffd-wp, still dirty)
# REPRODUCED when soft_dirty == 1 (without soft-dirty: private_dirty > 0)
case_copy_wp() { TYPE='anon'; MODE='missing,wp'; INSTALL='copy buf:0 --wp'; TAGS='copy-wp'; start copy-wp; steps; stop; }

# case zeropage: control: UFFDIO_ZEROPAGE maps the shared zero page, clean
# REPRODUCED when soft_dirty == 1 (without soft-dirty: private_dirty > 0)
case_zeropage() { TYPE='anon'; MODE='missing'; INSTALL='zeropage buf:0'; TAGS='zeropage'; start zeropage; steps; stop; }

# case continue: UFFDIO_CONTINUE of a shmem page written through another mapping
# REPRODUCED when soft_dirty == 1
case_continue() { TYPE='shmem'; MODE='minor'; INSTALL='continue buf:0'; TAGS='continue'; start continue; steps; stop; }

# case move: UFFDIO_MOVE of a page from another region (soft-dirty always)
# REPRODUCED when soft_dirty == 1
case_move() { TYPE='anon'; MODE='missing'; INSTALL='move buf:0 --src stage:0'; TAGS='move'; start move; steps; stop; }

# case copy-written: UFFDIO_COPY into a range tracked with async uffd-wp: PAGEMAP_SCAN calls the
# page written
# REPRODUCED when written == 1 and private_dirty > 0
case_copy_written() { TYPE='anon'; MODE='missing,wp'; INSTALL='copy buf:0'; TAGS='written'; start copy-written; steps; stop; }

[ $# -gt 0 ] || set -- copy copy-wp zeropage continue move copy-written
for c in "$@"; do
    case $c in
    copy) printf '\n== copy-dirties/copy\n'; case_copy ;;
    copy-wp) printf '\n== copy-dirties/copy-wp\n'; case_copy_wp ;;
    zeropage) printf '\n== copy-dirties/zeropage\n'; case_zeropage ;;
    continue) printf '\n== copy-dirties/continue\n'; case_continue ;;
    move) printf '\n== copy-dirties/move\n'; case_move ;;
    copy-written) printf '\n== copy-dirties/copy-written\n'; case_copy_written ;;
    *) echo "repro-copy-dirties.sh: unknown case $c (cases: copy copy-wp zeropage continue move copy-written)" >&2; exit 2 ;;
    esac
done
