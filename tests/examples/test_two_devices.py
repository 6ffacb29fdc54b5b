"""The README's main job runs and converges (so the example cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_two_devices_example_converges_through_a_real_relay(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "two_devices.py"), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "converged: yes" in proc.stdout
    last = [
        line for line in proc.stdout.splitlines() if line.strip().startswith(("laptop:", "phone:"))
    ]
    laptop, phone = last[-2], last[-1]
    assert laptop.split(":", 1)[1] == phone.split(":", 1)[1]
