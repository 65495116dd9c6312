#!/bin/sh
# repro-wp-clean-flush.sh: Write-protecting a clean writable PTE flushes the TLB (the RFC would skip it)
#
# Generated from uffdctl/repro/scenarios/wp-clean-flush.uffd by `python -m uffdctl.repro.shell scripts`;
# edit the scenario, not this file (tests/test_repro_shell.py compares them).
#
# Thread: Nadav Amit, 2022-06-27: if the PTE is non-dirty then you should be able to avoid a flush,
# even if the PTE is writable.
# Cites: pte_flags_need_flush() (arch/x86/include/asm/tlbflush.h: _PAGE_RW is flush_on_change;
# mainline has no clean RW->RO exemption); the 2022 RFC's patch 12/14; measured: tlb:tlb_flush
# events of one UFFDIO_WRITEPROTECT
# REPRODUCED means: UFFDIO_WRITEPROTECT of a clean, writable PTE issues a TLB flush (counted by the
# emulator's TLB model, or tracefs tlb:tlb_flush events of the calling thread)
#
# Usage: scripts/repro-wp-clean-flush.sh [CASE ...]    (cases: clean; default all)
#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)
# Each case runs in a fresh session; after the last step the watched page's pagemap entry
# (buf:0) and the regions' Private_Dirty are printed; each touch prints its minor faults.
# `uffdctl repro wp-clean-flush` runs the same steps with the per-step state and a verdict.
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
    step mmap --size 8K --type anon --name buf
    step touch buf:0 --write --wait    # present, writable, dirty
    step madvise buf:0 --advice free    # MADV_FREE: the PTE stays writable but is made clean
    step register buf --mode wp
    step writeprotect buf:0 --on    # RW -> RO of a clean PTE: count the TLB flushes of this step
    step pagemap buf:0    # the watched page after the last step
    step regions                # Private_Dirty
}

# case clean: anon page written, then MADV_FREE (clean, still writable), then WP
# REPRODUCED when flushes >= 1
case_clean() { TAGS='clean'; start clean; steps; stop; }

[ $# -gt 0 ] || set -- clean
for c in "$@"; do
    case $c in
    clean) printf '\n== wp-clean-flush/clean\n'; case_clean ;;
    *) echo "repro-wp-clean-flush.sh: unknown case $c (cases: clean)" >&2; exit 2 ;;
    esac
done
