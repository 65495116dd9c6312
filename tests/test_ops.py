"""uffdctl.ops: resume after partial progress, step over existing pages."""
from __future__ import annotations

import pytest

from conftest import TABLE_BACKENDS, make_backend
from uffdctl import ops, pagemap
from uffdctl.errors import PageExists

P = 4096


@pytest.mark.parametrize("backend_name", TABLE_BACKENDS)
def test_copy_range_resumes_and_skips(backend_name):
    b = make_backend(backend_name)
    try:
        r = b.mmap(8 * P, "anon")
        src = b.mmap(8 * P, "anon")
        b.write(src.addr, bytes(range(8)) * P)
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, 1)
        u.copy(r.addr + 2 * P, src.addr + 2 * P, P)  # page 2 exists
        u.copy(r.addr + 5 * P, src.addr + 5 * P, P)  # page 5 exists
        with pytest.raises(PageExists):
            ops.copy_range(u, r.addr + 2 * P, src.addr + 2 * P, 2 * P)
        res = ops.copy_range(u, r.addr, src.addr, r.len, skip_existing=True)
        assert res.done == 6 * P
        assert res.existed == [r.addr + 2 * P, r.addr + 5 * P]
        # calls: [0,2) short -> EAGAIN, 2 exists, [3,5) short, 5 exists, [6,8) whole
        assert res.calls == 5
        assert all(e.present for e in pagemap.read(b, r.addr, 8))
        assert b.read(r.addr, 8 * P) == bytes(range(8)) * P
    finally:
        b.close()


@pytest.mark.parametrize("backend_name", TABLE_BACKENDS)
def test_zeropage_range_no_progress_guard(backend_name):
    b = make_backend(backend_name)
    try:
        r = b.mmap(4 * P, "anon")
        u = b.userfaultfd()
        u.api(0)
        u.register(r.addr, r.len, 1)
        assert ops.zeropage_range(u, r.addr, r.len).done == 4 * P
        res = ops.zeropage_range(u, r.addr, r.len, skip_existing=True)
        assert res.done == 0 and len(res.existed) == 4
    finally:
        b.close()
