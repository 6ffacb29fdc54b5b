"""Running an example the way its README says: ``python examples/<script> --keep DIR``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def run_example(tmp_path: Path) -> Callable[..., str]:
    """``run_example("two_devices.py", timeout=120)``: run that example as a process keeping its
    files in ``tmp_path``, assert it exited 0 (its output in the message), return its stdout."""

    def run(script: str, *, timeout: float = 120) -> str:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--keep", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    return run
