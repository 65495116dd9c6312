#!/bin/sh
# repro-softdirty-lost-wp-shmem.sh: shmem: uffd-wp on/off makes the PTE writable behind soft-dirty's back (fixed in 6.3)
#
# Generated from uffdctl/repro/scenarios/softdirty-lost-wp-shmem.uffd by `python -m uffdctl.repro.shell scripts`;
# edit the scenario, not this file (tests/test_repro_shell.py compares them).
#
# Thread: the write-unprotect policy of the 2022-06-27 mail; David Hildenbrand's December 2022
# follow-up (931298e103c2, with 51d3d5eb74ff)
# Cites: 5.19-6.2: uffd_wp_range() un-protects with vm_get_page_prot(vm_flags), writable for
# MAP_SHARED; 51d3d5eb74ff, 931298e103c2 (6.3, <20221223155616.297723-2-david@redhat.com>:
# vma->vm_page_prot instead)
# REPRODUCED means: after write, clear-refs 4, uffd-wp on and off, a second write leaves the shmem
# page NOT soft-dirty (the write escapes tracking)
#
# Usage: scripts/repro-softdirty-lost-wp-shmem.sh [CASE ...]    (cases: wp-onoff, unregister; default all)
#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)
# Each case runs in a fresh session; after the last step the watched page's pagemap entry
# (buf:0) and the regions' Private_Dirty are printed; each touch prints its minor faults.
# `uffdctl repro softdirty-lost-wp-shmem` runs the same steps with the per-step state and a verdict.
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
    step mmap --size 8K --type shmem --name buf
    step mmap --size 4K --type anon --name spare
    step touch buf:0 --write --wait    # the shmem page exists, dirty
    step clear-refs 4    # soft-dirty tracking on: buf:0 clean, write-protected
    step touch spare:0 --write --wait    # absorb the toucher's own stack faults after clear-refs 4
    step register buf --mode wp
    if tagged wp-onoff; then step writeprotect buf:0 --on; fi
    if tagged wp-onoff; then step writeprotect buf:0 --off; fi
    if tagged unregister; then step unregister buf; fi
    step touch buf:0 --write --wait    # must set soft-dirty again
    step pagemap buf:0    # the watched page after the last step
    step regions                # Private_Dirty
}

# case wp-onoff: UFFDIO_WRITEPROTECT on, then off
# REPRODUCED when soft_dirty == 0
case_wp_onoff() { TAGS='wp-onoff'; start wp-onoff; steps; stop; }

# case unregister: UFFDIO_REGISTER (wp), then UFFDIO_UNREGISTER
# REPRODUCED when soft_dirty == 0
case_unregister() { TAGS='unregister'; start unregister; steps; stop; }

[ $# -gt 0 ] || set -- wp-onoff unregister
for c in "$@"; do
    case $c in
    wp-onoff) printf '\n== softdirty-lost-wp-shmem/wp-onoff\n'; case_wp_onoff ;;
    unregister) printf '\n== softdirty-lost-wp-shmem/unregister\n'; case_unregister ;;
    *) echo "repro-softdirty-lost-wp-shmem.sh: unknown case $c (cases: wp-onoff unregister)" >&2; exit 2 ;;
    esac
done
