"""PostgreSQL fixtures shared by test directories (``from store.pg_fixtures import
pg_server`` in a conftest): one private server per test session and conftest, see
:mod:`store.pg_server`. Without the PostgreSQL binaries (or psycopg) they skip with the reason,
unless ``CRSYNC_REQUIRE_PG=1`` (CI), where they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from .pg_server import PostgresUnavailable, PrivatePostgres

REQUIRE_PG = os.environ.get("CRSYNC_REQUIRE_PG") == "1"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server for the session (skips where PostgreSQL is absent)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        if REQUIRE_PG:
            raise
        pytest.skip(f"psycopg is not installed ({exc}): pip install 'crsync[postgres]'")
    try:
        server = PrivatePostgres()
    except PostgresUnavailable as exc:
        if REQUIRE_PG:
            pytest.fail(f"CRSYNC_REQUIRE_PG=1 but {exc}")
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_database(pg_server: PrivatePostgres) -> Iterator[Any]:
    """A :class:`crsync_relay.pg_store.PgDatabase` on a fresh database of the server."""
    from crsync_relay.pg_store import PgDatabase

    db = PgDatabase(pg_server.create_database("crsync_store_tests"), max_size=12)
    try:
        yield db
    finally:
        db.close()
