"""Alembic: migrations of a tracked SQLite database keep syncing
(``pip install 'crsync[sqlalchemy]'``).

Alembic's batch mode (``op.batch_alter_table``, or ``render_as_batch=True``) rebuilds a table
for any change SQLite cannot ``ALTER`` in place, which drops crsync's capture triggers with the
old table; ``op.add_column`` keeps them but the new column is not captured yet. crsync re-adopts
such tables at its next read anyway; :func:`migrations` does it as soon as the migrations ran,
tracks the tables the migrations created for the app's models, and stops replicating the
tracked tables they dropped that the models no longer declare. In ``env.py``::

    from crsync.contrib.alembic import include_name, migrations

    def run_migrations_online() -> None:
        connectable = engine_from_config(...)
        with connectable.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,      # SQLite: rebuild instead of unsupported ALTERs
                include_name=include_name,  # autogenerate never drops crsync's tables
            )
            with migrations(connection, target_metadata):
                with context.begin_transaction():
                    context.run_migrations()

See docs/guides/sqlalchemy-alembic.md for what a rebuild costs and how devices on the old and
the new schema sync while an upgrade rolls out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import crsync
from crsync import Database, SchemaError
from crsync.contrib import is_crsync_table, require
from crsync.contrib import sqlalchemy as crsync_sa

require("alembic", "sqlalchemy", "crsync.contrib.alembic")
_sa = require("sqlalchemy", "sqlalchemy", "crsync.contrib.alembic")

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["include_name", "migrations", "retrack"]

log = logging.getLogger(__name__)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An ``include_name`` hook for ``context.configure``: autogenerate ignores crsync's own
    tables (``crsync_*``, ``<table>__crsync``), so it never emits ``drop_table`` for them."""
    return not (type_ == "table" and name is not None and is_crsync_table(name))


@contextlib.contextmanager
def migrations(bind: Connection | Engine, *models: Any) -> Iterator[Database]:
    """Wrap Alembic's migration run in ``env.py``: when the block ends, tracked tables are
    re-adopted and the models' new tables tracked (see :func:`retrack`).

    ``bind`` is the connection Alembic migrates with (or its engine); ``models`` the app's
    ``target_metadata`` (or tables, mapped classes), used to find the tables to track. Yields
    the :class:`crsync.Database` used (its own connection on the same file).

    If a migration fails, the tables of the migrations that ran are re-adopted all the same,
    then the migration's error propagates.

    Raises:
        UnsupportedDatabaseError: the database is not a SQLite file.
        SchemaError: after the migrations, a tracked table cannot replicate any more (a
            migration renamed it, or gave it a UNIQUE constraint or a foreign key...): the
            message names the table and the fix. The migrations stay applied (SQLite commits
            DDL as it goes); fix the schema with another migration.
    """
    db = crsync_sa.connect(bind)
    try:
        try:
            before: list[str] | None = db.tracked_tables()
        except SchemaError:
            before = None  # already broken; maybe these migrations fix it: checked after
        try:
            yield db
        except BaseException:
            _commit(bind)
            try:
                retrack(db, *models, previously_tracked=before)
            except crsync.CrsyncError as exc:
                log.error("crsync.alembic.retrack_failed error=%s", exc)
            raise
        _commit(bind)
        retrack(db, *models, previously_tracked=before)
    finally:
        db.close()


def _commit(bind: Connection | Engine) -> None:
    """End the transaction Alembic's connection may still hold (a version-table query
    autobegins one), so crsync's connection can write."""
    if isinstance(bind, _sa.Connection) and bind.in_transaction():
        bind.commit()


def retrack(
    db: Database, *models: Any, previously_tracked: list[str] | None = None
) -> list[str]:
    """Bring tracking up to date after migrations ran (without :func:`migrations`).

    - Tracked tables that no longer exist and that ``models`` no longer declare are untracked
      (their delete records were sent already; devices on the old schema keep them). Only with
      ``models`` and ``previously_tracked`` given.
    - Tracked tables rebuilt or altered are re-adopted at once (:meth:`Database.tracked_tables`).
    - The tables of ``models`` that exist are tracked (new ones from the migrations included).

    Returns:
        The tracked tables.

    Raises:
        SchemaError: a tracked table cannot be re-adopted (the message says what to do).
    """
    if models and previously_tracked:
        declared = {t.name.lower() for t in crsync_sa.replicated_tables(*models)}
        for name in previously_tracked:
            if name.lower() not in declared and not _exists(db, name):
                db.untrack(name)
                log.warning("crsync.alembic.untracked table=%s reason=dropped", name)
    db.tracked_tables()
    if models:
        crsync_sa.track(db, *models, missing_ok=True)
    return db.tracked_tables()


def _exists(db: Database, name: str) -> bool:
    row = db.conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    return row is not None
