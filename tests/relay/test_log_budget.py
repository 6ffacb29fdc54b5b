"""Refusal log lines are budgeted (security review L1): a client refused in a loop cannot
flood the relay's log; what is left out is counted."""

from __future__ import annotations

import logging

import pytest
from crsync_relay import session


def test_refusal_lines_over_the_budget_are_counted_not_written(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(session.time, "monotonic", lambda: now[0])
    budget = session._LogBudget(per_second=10, burst=5)
    allowed = [budget.allow() for _ in range(50)]
    assert allowed == [True] * 5 + [False] * 45
    caplog.set_level(logging.WARNING, logger="crsync_relay.session")
    now[0] += 1.0  # ten lines' worth of budget comes back
    assert budget.allow()
    assert "relay.log_suppressed lines=45" in caplog.text
    assert sum(budget.allow() for _ in range(20)) == 4  # burst cap: 5 in all
