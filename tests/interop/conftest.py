"""Fixtures for tests that run against the real cr-sqlite 0.16.0 (see crsqlite.py).

CI installs the Node side (`npm ci --prefix tests/interop`), so these tests are expected to
run there; they skip only on a machine without node or without tests/interop/node_modules.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from crsqlite import CrDb, CrSqlitePeerProcess, node_harness_missing_reason

_names = itertools.count(1)


@pytest.fixture(scope="session")
def crsqlite_peer() -> Iterator[CrSqlitePeerProcess]:
    """One Node process for the whole session; tests isolate themselves by database name."""
    reason = node_harness_missing_reason()
    if reason and os.environ.get("CRSYNC_REQUIRE_INTEROP"):
        pytest.fail(f"CRSYNC_REQUIRE_INTEROP is set but the Node harness is missing: {reason}")
    if reason:
        pytest.skip(f"cr-sqlite Node harness unavailable: {reason}")
    with CrSqlitePeerProcess() as peer:
        yield peer


@pytest.fixture
def cr_open(crsqlite_peer: CrSqlitePeerProcess) -> Iterator[Callable[..., CrDb]]:
    """Factory: ``cr_open(site_id=None) -> CrDb`` with a fresh database, dropped afterwards."""
    opened: list[str] = []

    def open_db(site_id: bytes | None = None) -> CrDb:
        name = f"db{next(_names)}"
        db = crsqlite_peer.open(name, site_id=site_id)
        opened.append(name)
        return db

    yield open_db
    for name in opened:
        try:
            crsqlite_peer.drop(name)
        except Exception:
            # A test that killed or broke the peer already failed for that reason.
            pass
