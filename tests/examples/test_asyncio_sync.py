"""The asyncio example runs under plain ``asyncio.run`` and converges (so it cannot rot)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.e2e
def test_asyncio_example_syncs_two_devices_with_a_live_list(
    run_example: Callable[..., str],
) -> None:
    out = run_example("asyncio_sync.py")
    assert "converged: yes" in out
    # the live list showed the merge, then the phone's own edit
    assert "phone shows: ['buy milk', 'call mum']" in out
    assert "  phone: [('t1', 'buy milk', 1), ('t2', 'call mum', 0)]" in out
    assert "the lock was released" in out
