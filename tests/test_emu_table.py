"""The shared case table (tests/cases.py) on the emulator, ids like ``copy-wp-shmem-emu``.

``emu`` is the host's model: profile 6.18 with CONFIG_MEM_SOFT_DIRTY off, the
configuration the table's expectations were measured on.  ``emu-sd`` runs the
same table with soft-dirty on (the emulator's default): every case passes
except the ones that assert a raw pagemap entry of 0 for a hole or a moved-away
page, which a soft-dirty kernel reports with bit 55 set (VM_SOFTDIRTY is set on
every new mapping, spec §5.2); those are strict xfails naming the reason.
"""
from __future__ import annotations

import pytest

from cases import CASES, Ctx
from conftest import feature_reason
from uffdctl.backend import MemType
from uffdctl.emu import EmuBackend

# cases whose expectation is CONFIG_MEM_SOFT_DIRTY=n (they read bit 55 of a fresh mapping as 0)
NEEDS_SOFT_DIRTY_OFF = {("wp-none", MemType.ANON), ("move", MemType.ANON)}

# cases that fork the test process itself: the emulated mm has no child process
NEEDS_A_PROCESS = {"event-fork"}


def _marks(case, mt, sd):
    if case.name in NEEDS_A_PROCESS:
        return [pytest.mark.xfail(strict=True, reason="os.fork() of the test process: the emulator models "
                                  "one mm and does not emulate fork (EVENT_FORK)")]
    if sd and (case.name, mt) in NEEDS_SOFT_DIRTY_OFF:
        return [pytest.mark.xfail(strict=True, reason="asserts pagemap bit 55 = 0 on a fresh mapping; "
                                  "soft-dirty kernels set it (VM_SOFTDIRTY)")]
    return []


PARAMS = [pytest.param(case, mt, sd, id=f"{case.name}-{mt.value}-{'emu-sd' if sd else 'emu'}",
                       marks=_marks(case, mt, sd))
          for sd in (False, True) for case in CASES for mt in MemType if mt in case.mem_targets]


@pytest.mark.parametrize("case,memtype,soft_dirty", PARAMS)
def test_case(case, memtype, soft_dirty):
    b = EmuBackend(profile="6.18", soft_dirty=soft_dirty)
    try:
        assert feature_reason(b, case.features_required) is None   # the 6.18 profile offers everything
        case.fn(Ctx(b, memtype, case))
    finally:
        b.close()
