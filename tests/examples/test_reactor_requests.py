"""The reactor example runs: a relay reactor answers, the second device sees answers live."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_reactor_requests_example_answers_every_request_on_both_devices(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reactor_requests.py"), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "phone sees q2: 6 * 7 = 42" in proc.stdout
    assert "all answered: yes" in proc.stdout
    assert "('q1', '4'), ('q2', '42'), ('q3', '7')" in proc.stdout
