"""Fixtures of the fault-injection tests: real relay processes (the sync tests' RelayProcess),
integrity checks, and the switch between the CI and the long versions.

``CRSYNC_LONG_FAULTS=1`` runs the long versions (minutes of faults, more peers, more kills);
without it every test here is sized for CI.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync.conftest import RelayFactory, RelayProcess, relay_processes

LONG = os.environ.get("CRSYNC_LONG_FAULTS", "") not in ("", "0")


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file (opened read-write so a WAL is recovered)."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """``relay_factory(*extra_args, dev=False, name="relay", data_dir=None)``: a relay process
    (stopped, SIGKILL if need be, at the end of the test)."""
    with relay_processes(tmp_path, strict_stop=False) as make:
        yield make


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A relay that requires tokens."""
    return relay_factory()
