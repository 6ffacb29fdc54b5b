"""The SQLAlchemy + Alembic example runs: an upgrade rolls out while both devices sync."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.e2e
@pytest.mark.slow
def test_sqlalchemy_app_example_rolls_out_an_upgrade_and_converges(
    run_example: Callable[..., str],
) -> None:
    out = run_example("sqlalchemy_app/app.py")
    assert "phone (v1) ('title', 'done'): [('buy milk', 1), ('call mum', 0)]" in out
    assert "phone keeps 2 change(s) for columns it lacks" in out
    final = "('title', 'done', 'due'): [('buy milk', 1, 'today'), ('call mum', 0, 'friday')]"
    assert f"  laptop {final}" in out
    assert f"  phone {final}" in out
    assert out.rstrip().endswith("converged: yes")
