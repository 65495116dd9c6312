"""The case table (tests/cases.py) × memory types × backends, ids like ``copy-wp-shmem-kernel``."""
from __future__ import annotations

from cases import CASES, Ctx
from conftest import TABLE_BACKENDS, feature_reason, hugetlb_reason, make_backend, require_kernel
from uffdctl.backend import MemType


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    params, ids = [], []
    for case in CASES:
        for mt in MemType:
            if mt not in case.mem_targets:
                continue  # outside mem_targets: dropped, not skipped (as the selftests do)
            for be in TABLE_BACKENDS:
                params.append((case, mt, be))
                ids.append(f"{case.name}-{mt.value}-{be}")
    metafunc.parametrize("case,memtype,backend_name", params, ids=ids)


def test_case(case, memtype, backend_name):
    b = make_backend(backend_name)
    try:
        if memtype.hugetlb:
            reason = hugetlb_reason(b)
            if reason:
                require_kernel(reason)
        reason = feature_reason(b, case.features_required)
        if reason:
            require_kernel(reason)
        c = Ctx(b, memtype, case)
        case.fn(c)
    finally:
        b.close()
