"""Fixtures of the fault-injection tests: real relay processes (the sync tests' RelayProcess),
integrity checks, and the switch between the CI and the long versions.

``CRSYNC_LONG_FAULTS=1`` runs the long versions (minutes of faults, more peers, more kills);
without it every test here is sized for CI.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sync.conftest import RelayProcess

LONG = os.environ.get("CRSYNC_LONG_FAULTS", "") not in ("", "0")

RelayFactory = Callable[..., RelayProcess]


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
    started: list[RelayProcess] = []

    def make(
        *extra_args: str, dev: bool = False, name: str = "relay", data_dir: Path | None = None
    ) -> RelayProcess:
        secret_file = None
        if not dev:
            secret_file = tmp_path / f"{name}.secret"
            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)  # the relay refuses a secret others can read
        r = RelayProcess(data_dir or tmp_path / f"{name}-data", secret_file, tuple(extra_args))
        started.append(r)
        r.start()
        return r

    yield make
    for r in started:
        try:
            r.stop()
        except AssertionError:
            r.kill()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A relay that requires tokens."""
    return relay_factory()
