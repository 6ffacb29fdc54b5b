"""The Django example runs: two Django processes on their own files sync through a relay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_django_app_example_syncs_two_devices(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "django_app" / "app.py"), "--keep",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "  phone: ['buy milk', 'call mum']" in out
    assert out.splitlines()[-2] == "  laptop: ['buy milk', 'call mum']"
    assert out.rstrip().endswith("converged: yes")
