"""The soak benchmark runs end to end in --quick mode and reports nothing lost (no timings
checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.slow
def test_quick_soak_writes_a_report_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = out.read_text()
    assert "**0 lost**" in report
    assert "0 peers stopped on an error" in report
    assert "| t (s) | writes/s |" in report
