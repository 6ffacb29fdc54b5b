"""The asyncio example runs under plain ``asyncio.run`` and converges (so it cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_asyncio_example_syncs_two_devices_with_a_live_list(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "asyncio_sync.py"), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "converged: yes" in out
    # the live list showed the merge, then the phone's own edit
    assert "phone shows: ['buy milk', 'call mum']" in out
    assert "  phone: [('t1', 'buy milk', 1), ('t2', 'call mum', 0)]" in out
    assert "the lock was released" in out
