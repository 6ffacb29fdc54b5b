"""The change feed: sealed versions of this database and the changes recorded in them.

crsync's internal storage API for live queries (:mod:`crsync.live`): sealing, one consistent
snapshot, which tracked tables changed between two versions, and the changes themselves.
Not part of the public API (apps use :meth:`Database.changes` and
:meth:`Database.changes_feed`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from .change import Change

if TYPE_CHECKING:
    from .database import Database


def seal(db: Database) -> int:
    """Seal the open version if it holds changes; return the last sealed version. Every write
    committed after this carries a higher version. Reloads the registry of tracked tables if
    the schema changed."""
    return db._seal()


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[sqlite3.Connection]:
    """A read transaction on ``db.conn``: one consistent snapshot."""
    with db._read() as conn:
        yield conn


def tracked_names(db: Database) -> list[str]:
    """Names of the tracked tables as of the last :func:`seal` (no schema check)."""
    return list(db._tracked)


def changed_tables(db: Database, since: int, upto: int) -> set[str]:
    """Tracked tables (as named in :func:`tracked_names`) with changes at a version in
    ``(since, upto]``."""
    conn = db.conn
    return {
        name
        for name, tr in db._tracked.items()
        if conn.execute(
            f"SELECT 1 FROM {tr.meta} WHERE dbv > ? AND dbv <= ? LIMIT 1", (since, upto)
        ).fetchone()
        is not None
    }


def read_changes(db: Database, since: int, upto: int, tables: Collection[str]) -> list[Change]:
    """The changes of ``tables`` (named as in :func:`tracked_names`) at a version in
    ``(since, upto]``, table by table, unsorted. Call inside :func:`snapshot`."""
    db._sync_site()
    changes: list[Change] = []
    for name, tr in db._tracked.items():
        if name in tables:
            db._read_table(tr, since, upto, -1, changes)
    return changes
