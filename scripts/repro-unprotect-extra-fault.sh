#!/bin/sh
# repro-unprotect-extra-fault.sh: Write-unprotect leaves the PTE read-only: the next write takes an extra fault
#
# Generated from uffdctl/repro/scenarios/unprotect-extra-fault.uffd by `python -m uffdctl.repro.shell scripts`;
# edit the scenario, not this file (tests/test_repro_shell.py compares them).
#
# Thread: Nadav Amit, 2022-06-27: mwriteprotect_range() should use MM_CP_TRY_CHANGE_WRITABLE when
# !wp to proactively make entries writable.
# Cites: 5.19-6.2: mwriteprotect_range() un-protects without MM_CP_TRY_CHANGE_WRITABLE; 931298e103c2
# (6.3); the shmem case: vma_wants_writenotify() keeps vm_page_prot read-only, so the PTE stays
# read-only; measured: Δminflt of the write after WP off
# REPRODUCED means: after UFFDIO_WRITEPROTECT on then off, the first write to the (already written)
# page takes a minor fault
#
# Usage: scripts/repro-unprotect-extra-fault.sh [CASE ...]    (cases: anon, shmem, anon-softdirty; default all)
#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)
# Each case runs in a fresh session; after the last step the watched page's pagemap entry
# (buf:0) and the regions' Private_Dirty are printed; each touch prints its minor faults.
# `uffdctl repro unprotect-extra-fault` runs the same steps with the per-step state and a verdict.
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
    step mmap --size 4K --type anon --name spare
    step touch buf:0 --write --wait    # populate: present, writable, dirty
    step register buf --mode wp
    if tagged softdirty; then step clear-refs 4; fi    # soft-dirty tracking on: the PTE is now clean for soft-dirty
    if tagged softdirty; then step touch spare:0 --write --wait; fi    # absorb the toucher's own stack faults after clear-refs 4
    step writeprotect buf:0 --on    # UFFDIO_WRITEPROTECT mode=WP
    step writeprotect buf:0 --off ${HINT}    # mode=0 (HINT: an RFC hint mode bit): is the PTE writable again?
    step touch buf:0 --write --wait    # count this write's faults
    step pagemap buf:0    # the watched page after the last step
    step regions                # Private_Dirty
}

# case anon: anon private, exclusive page
# REPRODUCED when fault >= 1
case_anon() { HINT=''; TYPE='anon'; TAGS='anon'; start anon; steps; stop; }

# case shmem: shmem (memfd) MAP_SHARED
# REPRODUCED when fault >= 1
case_shmem() { HINT=''; TYPE='shmem'; TAGS='shmem'; start shmem; steps; stop; }

# case anon-softdirty: anon private with soft-dirty tracking active (clear-refs 4 first): the fault
# is kept on purpose
# REPRODUCED when fault >= 1
case_anon_softdirty() { HINT=''; TYPE='anon'; TAGS='softdirty'; start anon-softdirty; steps; stop; }

[ $# -gt 0 ] || set -- anon shmem anon-softdirty
for c in "$@"; do
    case $c in
    anon) printf '\n== unprotect-extra-fault/anon\n'; case_anon ;;
    shmem) printf '\n== unprotect-extra-fault/shmem\n'; case_shmem ;;
    anon-softdirty) printf '\n== unprotect-extra-fault/anon-softdirty\n'; case_anon_softdirty ;;
    *) echo "repro-unprotect-extra-fault.sh: unknown case $c (cases: anon shmem anon-softdirty)" >&2; exit 2 ;;
    esac
done
