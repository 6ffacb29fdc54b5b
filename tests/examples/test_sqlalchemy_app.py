"""The SQLAlchemy + Alembic example runs: an upgrade rolls out while both devices sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_sqlalchemy_app_example_rolls_out_an_upgrade_and_converges(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sqlalchemy_app" / "app.py"), "--keep",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "phone (v1) ('title', 'done'): [('buy milk', 1), ('call mum', 0)]" in out
    assert "phone keeps 2 change(s) for columns it lacks" in out
    final = "('title', 'done', 'due'): [('buy milk', 1, 'today'), ('call mum', 0, 'friday')]"
    assert f"  laptop {final}" in out
    assert f"  phone {final}" in out
    assert out.rstrip().endswith("converged: yes")
