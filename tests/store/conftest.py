"""Fixtures of the store-level suite: every test runs on both store backends.

``store`` is a :class:`crsync_relay.store.RelayStore` on a fresh SQLite file or a
:class:`crsync_relay.pg_store.PgRelayStore` with a fresh store id in a private PostgreSQL
server (one per test session, see :mod:`store.pg_server`). Without the PostgreSQL binaries
the PostgreSQL cases skip with the reason, unless ``CRSYNC_REQUIRE_PG=1`` (CI), where they
fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crsync_relay.store import RelayStore

from .pg_fixtures import REQUIRE_PG, pg_database, pg_server

__all__ = ["REQUIRE_PG", "pg_database", "pg_server"]

StoreFactory = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """``make_store(name="s", create=True, **options)``: a store of the backend under test;
    the same name opens the same store again (a reopen), another name another store.
    ``options``: ``clock``, ``default_max_offline`` (both backends take them)."""
    prefix = uuid.uuid4().hex[:12]
    if backend == "postgres":
        db = request.getfixturevalue("pg_database")

        def make_pg(name: str = "s", *, create: bool = True, **options: Any) -> Any:
            return db.open_store(f"t{prefix}-{name}", create=create, **options)

        return make_pg

    def make_sqlite(name: str = "s", *, create: bool = True, **options: Any) -> Any:
        return RelayStore(tmp_path / f"{name}.store.sqlite3", create=create, **options)

    return make_sqlite


@pytest.fixture
def store(make_store: StoreFactory) -> Any:
    """A fresh, empty store of the backend under test."""
    return make_store()
