"""Fixtures of the store-level suite: every test runs on both store backends.

``store`` is a :class:`crsync_relay.store.RelayStore` on a fresh SQLite file or a
:class:`crsync_relay.pg_store.PgRelayStore` with a fresh store id in a private PostgreSQL
server (one per test session, see :mod:`store.pg_server`). Without the PostgreSQL binaries
the PostgreSQL cases skip with the reason, unless ``CRSYNC_REQUIRE_PG=1`` (CI), where they
fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crsync_relay.store import RelayStore

from .pg_server import PostgresUnavailable, PrivatePostgres

REQUIRE_PG = os.environ.get("CRSYNC_REQUIRE_PG") == "1"

StoreFactory = Callable[..., Any]


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


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """``make_store(name="s", create=True)``: a store of the backend under test; the same
    name opens the same store again (a reopen), another name another store."""
    prefix = uuid.uuid4().hex[:12]
    if backend == "postgres":
        db = request.getfixturevalue("pg_database")

        def make_pg(name: str = "s", *, create: bool = True) -> Any:
            return db.open_store(f"t{prefix}-{name}", create=create)

        return make_pg

    def make_sqlite(name: str = "s", *, create: bool = True) -> Any:
        return RelayStore(tmp_path / f"{name}.store.sqlite3", create=create)

    return make_sqlite


@pytest.fixture
def store(make_store: StoreFactory) -> Any:
    """A fresh, empty store of the backend under test."""
    return make_store()
