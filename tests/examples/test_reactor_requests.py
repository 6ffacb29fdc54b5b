"""The reactor example runs: a relay reactor answers, the second device sees answers live."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.e2e
def test_reactor_requests_example_answers_every_request_on_both_devices(
    run_example: Callable[..., str],
) -> None:
    out = run_example("reactor_requests.py")
    assert "phone sees q2: 6 * 7 = 42" in out
    assert "all answered: yes" in out
    assert "('q1', '4'), ('q2', '42'), ('q3', '7')" in out
