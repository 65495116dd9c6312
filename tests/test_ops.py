"""uffdctl.ops: resume after partial progress, step over existing pages."""
from __future__ import annotations

import pytest

from conftest import registered
from uffdctl import ops, pagemap
from uffdctl.errors import PageExists

P = 4096


def test_copy_range_resumes_and_skips(any_backend):
    b = any_backend
    r, u = registered(b, 8)
    src = b.mmap(8 * P, "anon")
    b.write(src.addr, bytes(range(8)) * P)
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


def test_zeropage_range_skips_existing(any_backend):
    r, u = registered(any_backend)
    assert ops.zeropage_range(u, r.addr, r.len).done == 4 * P
    res = ops.zeropage_range(u, r.addr, r.len, skip_existing=True)
    assert res.done == 0 and len(res.existed) == 4
