#!/bin/sh
# repro-clean-writable-escapes-softdirty.sh: The RFC's write-unprotect maps the page writable without soft-dirty: a later write goes untracked
#
# Generated from uffdctl/repro/scenarios/clean-writable-escapes-softdirty.uffd by `python -m uffdctl.repro.shell scripts`;
# edit the scenario, not this file (tests/test_repro_shell.py compares them).
#
# Thread: Nadav Amit, 2022-06-27: there is a bug in my code ... I do need to fix my code so it would
# not write-unprotect memory if soft-dirty is enabled and UFFD_FLAGS_WRITE_LIKELY is not provided.
# Cites: the 2022 RFC's patch 02/14 (MM_CP_TRY_CHANGE_WRITABLE on un-protect; the fix: only with
# WRITE_LIKELY); can_change_pte_writable() and vma_soft_dirty_enabled() (mm/mprotect.c); measured:
# soft-dirty after clear_refs 4, WP on, WP off, write
# REPRODUCED means: after clear-refs 4, WP on and off, a write to the page leaves it NOT soft-dirty:
# an incremental dump would miss the write (lost data)
#
# Usage: scripts/repro-clean-writable-escapes-softdirty.sh [CASE ...]    (cases: anon, write-likely; default all)
#   UFFDCTL=/path/to/uffdctl   UFFDCTL_BACKEND=kernel|emu   UFFDCTL_PROFILE=5.19 (emulator profile)
# Each case runs in a fresh session; after the last step the watched page's pagemap entry
# (buf:0) and the regions' Private_Dirty are printed; each touch prints its minor faults.
# `uffdctl repro clean-writable-escapes-softdirty` runs the same steps with the per-step state and a verdict.
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

# case anon: anon private: write, clear-refs 4, WP on, WP off, write
# REPRODUCED when soft_dirty == 0
case_anon() { HINT=''; TYPE='anon'; TAGS='softdirty'; start anon; steps; stop; }

# case write-likely: the same with WRITE_LIKELY on the un-protect: writable and marked dirty/soft-
# dirty at once (no fault, nothing lost)
# REPRODUCED when soft_dirty == 0
case_write_likely() { case ${UFFDCTL_PROFILE:-} in rfc-hints*) ;; *) echo 'skipped: needs UFFDCTL_BACKEND=emu UFFDCTL_PROFILE=rfc-hints or rfc-hints-fixed (the hints were never merged)'; return 0 ;; esac; HINT='--write-likely'; TYPE='anon'; TAGS='softdirty'; start write-likely; steps; stop; }

[ $# -gt 0 ] || set -- anon write-likely
for c in "$@"; do
    case $c in
    anon) printf '\n== clean-writable-escapes-softdirty/anon\n'; case_anon ;;
    write-likely) printf '\n== clean-writable-escapes-softdirty/write-likely\n'; case_write_likely ;;
    *) echo "repro-clean-writable-escapes-softdirty.sh: unknown case $c (cases: anon write-likely)" >&2; exit 2 ;;
    esac
done
