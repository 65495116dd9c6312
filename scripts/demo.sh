#!/bin/sh
# make demo: what this machine can do (uffdctl check), then the 2022 linux-mm thread's
# reproductions on the real kernel and the emulator side by side, ending with the verdict
# table (scenario/case x kernel/profile).
#
#   scripts/demo.sh [VENV]        (default .venv; `make demo` passes its VENV)
#
# Exit status: non-zero only if a verdict contradicts its expectation (or a run broke).
# `uffdctl check` exits 4 on a machine where something is unsupported (soft-dirty off,
# no huge pages): that is expected here and does not fail the demo.
set -u
VENV=${1:-.venv}
U="$VENV/bin/uffdctl"
[ -x "$U" ] || { echo "demo: $U not found (run make install)" >&2; exit 2; }

printf '$ uffdctl check\n'
"$U" check
rc=$?
case $rc in
0) ;;
4) echo "(uffdctl check: exit 4 = something is unsupported here; expected on this machine)" ;;
*) echo "(uffdctl check: exit $rc; the reproductions below still run)" ;;
esac

printf '\n$ uffdctl repro all --backend both\n'
"$U" repro all --backend both
rc=$?
echo
if [ "$rc" -eq 0 ]; then
    echo "demo: every verdict matches its expectation"
else
    echo "demo: FAILED: a verdict contradicts its expectation (see the table above)" >&2
fi
exit "$rc"
