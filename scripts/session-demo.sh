#!/bin/sh
# A fault resolved by hand, from the shell, with a uffdctl session:
# register a range, start a write that blocks in a userfault, look at the
# message, resolve it with UFFDIO_COPY, and watch the pagemap change.
#
#   scripts/session-demo.sh            (uses `uffdctl` from PATH, or $UFFDCTL)
#
# Exits non-zero if any step does not show what it should (CI runs it:
# tests/test_cli_demo.py).
set -eu
U=${UFFDCTL:-uffdctl}
made=
if [ -z "${UFFDCTL_RUNTIME_DIR:-}" ]; then
    UFFDCTL_RUNTIME_DIR=$(mktemp -d /tmp/uffdctl-demo.XXXXXX); made=1
fi
export UFFDCTL_RUNTIME_DIR
S=demo$$
export UFFDCTL_SESSION=$S
cleanup() {
    $U session stop "$S" >/dev/null 2>&1 || true
    [ -z "$made" ] || rm -rf "$UFFDCTL_RUNTIME_DIR"
}
trap cleanup EXIT

step() { printf '\n$ uffdctl %s\n' "$*"; $U "$@"; }
fail() { echo "session-demo: FAILED: $*" >&2; exit 1; }

step session start --name "$S" --backend "${UFFDCTL_BACKEND:-kernel}"
step mmap --size 64K --type anon --name buf
step register buf --mode missing
step pagemap buf:3
out=$(step touch buf:3 --write); echo "$out"
echo "$out" | grep -q BLOCKED || fail "the write did not block"
out=$(step events); echo "$out"
echo "$out" | grep -q "pagefault WRITE .* buf:3" || fail "no write fault message for buf:3"
step faults
step copy buf:3 --fill 0x41
out=$(step wait --timeout 5); echo "$out"
echo "$out" | grep -q "finished" || fail "the write did not finish after UFFDIO_COPY"
out=$(step pagemap buf:3); echo "$out"
echo "$out" | tail -1 | awk '{ exit !($3 == "1") }' || fail "page 3 is not present after UFFDIO_COPY"
step pagemap buf --map
step session stop "$S"
echo
echo "session-demo: ok"
